//! A NoCloud drive: bytes split into meta-data, user-data and network-config.
#![no_main]

use cairn_node::drive::{self, DriveFiles, Format};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0);
    let mut files = DriveFiles::default();
    for name in ["meta-data", "user-data", "network-config"] {
        if let Some(p) = parts.next() {
            files.files.insert(name.into(), p.to_vec());
        }
    }
    let _ = drive::parse(Format::NoCloud, &files, None, 1);
});
