//! The keyserver's answer as the key agent reads it (see cairn_node::harness).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_node::harness::key_agent_answer(data));
