//! NoCloud and OpenStack config drives: each fixture (tests/fixtures/<format>/<scenario>/)
//! becomes the node.toml Cairn saves (golden: `expected.toml` beside the fixture;
//! `CAIRN_BLESS=1` rewrites), or one error naming the drive's file.

use std::path::Path;

use cairn_node::drive::{self, Decision, DriveFiles, Format, Saved};

fn fixture(format: &str, scenario: &str) -> (DriveFiles, std::path::PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format)
        .join(scenario);
    let f = if format == "nocloud" {
        Format::NoCloud
    } else {
        Format::ConfigDrive
    };
    let files = drive::read_dir(&dir, f).unwrap();
    (files, dir)
}

#[test]
fn cloud_drives_become_node_configs() {
    let bless = std::env::var_os("CAIRN_BLESS").is_some();
    for (format, f, scenario, host) in [
        ("nocloud", Format::NoCloud, "basic", "cloudy-1"),
        ("nocloud", Format::NoCloud, "network-v1", "v1-node-renamed"),
        ("nocloud", Format::NoCloud, "network-v2", "v2-node"),
        ("config-2", Format::ConfigDrive, "basic", "stack-1"),
    ] {
        let (files, dir) = fixture(format, scenario);
        let c = drive::parse(f, &files, None, 4).unwrap_or_else(|e| panic!("{format}/{scenario}: {e}"));
        assert_eq!(c.config.hostname, host, "{format}/{scenario}");
        assert_eq!(c.config.generation, 4);
        let golden = dir.join("expected.toml");
        if bless {
            std::fs::write(&golden, &c.text).unwrap();
        }
        assert_eq!(c.text, std::fs::read_to_string(&golden).unwrap(), "{format}/{scenario}");
    }
}

#[test]
fn bad_cloud_drives_name_the_file() {
    for (format, f, scenario, want) in [
        (
            "nocloud",
            Format::NoCloud,
            "malformed-yaml",
            "meta-data is not valid YAML",
        ),
        (
            "nocloud",
            Format::NoCloud,
            "no-instance-id",
            "meta-data has no instance-id",
        ),
        (
            "nocloud",
            Format::NoCloud,
            "bad-key",
            "[ssh] authorized-keys: the key's base64 part does not decode",
        ),
        (
            "config-2",
            Format::ConfigDrive,
            "malformed-json",
            "openstack/latest/meta_data.json is not valid JSON",
        ),
    ] {
        let (files, _) = fixture(format, scenario);
        let e = drive::parse(f, &files, None, 1).unwrap_err();
        assert!(
            e.message.contains(want),
            "{format}/{scenario}: wanted '{want}', got: {e}"
        );
    }
    let e = drive::parse(Format::NoCloud, &DriveFiles::default(), None, 1).unwrap_err();
    assert!(e.message.contains("meta-data is missing"), "{e}");
}

#[test]
fn a_changed_instance_id_counts_as_newer() {
    let (files, _) = fixture("nocloud", "basic");
    let c = drive::parse(Format::NoCloud, &files, None, 3).unwrap();
    let same = Saved {
        generation: 2,
        instance_id: Some("iid-basic-01".into()),
    };
    assert!(matches!(drive::decide(Some(&same), &c), Decision::Keep(w) if w.contains("already applied")));
    let other = Saved {
        generation: 2,
        instance_id: Some("iid-older".into()),
    };
    assert!(
        matches!(drive::decide(Some(&other), &c), Decision::Replace(w) if w.contains("instance-id iid-basic-01 is new"))
    );
    assert!(matches!(drive::decide(None, &c), Decision::Replace(_)));
}

#[test]
fn signed_only_images_refuse_cloud_drives() {
    let (files, _) = fixture("nocloud", "basic");
    let key = cairn_signing::PrivateKey::from_bytes([3; 32]).public();
    let e = drive::parse(Format::NoCloud, &files, Some(&key), 1).unwrap_err();
    assert!(e.message.contains("cannot be signed"), "{e}");
}
