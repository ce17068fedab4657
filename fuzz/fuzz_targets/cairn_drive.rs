//! A whole CAIRN drive: the first byte picks which files exist, the rest is split between
//! node.toml and node.toml.sig; parsing with and without an image key must not panic.
#![no_main]

use cairn_node::drive::{self, DriveFiles, Format};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let cut = rest.len().min(64);
    let (sig, body) = rest.split_at(cut);
    let mut files = DriveFiles::default();
    if mode & 1 != 0 {
        files.files.insert("node.toml".into(), body.to_vec());
    }
    if mode & 2 != 0 {
        files.files.insert("node.toml.sig".into(), sig.to_vec());
    }
    let key = cairn_signing::PrivateKey::from_bytes([7; 32]).public();
    let _ = drive::parse(Format::Cairn, &files, None, 1);
    let _ = drive::parse(Format::Cairn, &files, Some(&key), 1);
});
