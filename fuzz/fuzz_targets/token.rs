//! A bootstrap token as a person or a drive gives it (see cairn_keys::harness).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_keys::harness::token(data));
