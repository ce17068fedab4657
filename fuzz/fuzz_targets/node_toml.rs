//! node.toml from a config drive: any bytes must give a config or an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = cairn_node::config::NodeConfig::parse(text, "node.toml") {
            // Whatever validates must render.
            let _ = cairn_node::render::plan(&c, text);
        }
    }
});
