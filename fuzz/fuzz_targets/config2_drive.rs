//! An OpenStack config drive: bytes split into meta_data.json and network_data.json.
#![no_main]

use cairn_node::drive::{self, DriveFiles, Format};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |b| *b == 0);
    let mut files = DriveFiles::default();
    for name in ["openstack/latest/meta_data.json", "openstack/latest/network_data.json"] {
        if let Some(p) = parts.next() {
            files.files.insert(name.into(), p.to_vec());
        }
    }
    let _ = drive::parse(Format::ConfigDrive, &files, None, 1);
});
