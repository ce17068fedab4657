//! node.toml from a config drive: any bytes must give a config or an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_node::harness::node_toml(data));
