//! Bytes from the network as the keyserver reads a request (see cairn_keyserver::serve).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_keyserver::serve::harness_request(data));
