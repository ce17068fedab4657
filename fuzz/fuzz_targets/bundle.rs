//! update.cairn and index.json from a web server (see cairn_signing::harness).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_signing::harness::bundle(data));
