//! A whole CAIRN drive (see cairn_node::harness::cairn_drive).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_node::harness::cairn_drive(data));
