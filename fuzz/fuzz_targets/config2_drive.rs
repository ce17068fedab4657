//! An OpenStack config drive: bytes split into meta_data.json and network_data.json.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_node::harness::config2_drive(data));
