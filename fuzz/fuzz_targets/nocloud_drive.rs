//! A NoCloud drive: bytes split into meta-data, user-data and network-config.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_node::harness::nocloud_drive(data));
