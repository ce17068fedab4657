//! The keyserver's audit log read back from disk (see cairn_keys::harness).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_keys::harness::audit_log(data));
