//! `cairn check-kernel`: Debian's kernel config passes; one removed option fails, named.

mod common;

use std::fs;
use std::path::Path;

use common::*;

const DEBIAN: &str = "tests/fixtures/kernel-config/debian-6.1/config";

#[test]
fn debian_kernel_passes() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEBIAN);
    let out = run_ok(cairn().arg("check-kernel").arg(&config));
    assert!(out.contains("all 57 options Cairn needs are set"), "{out}");
}

#[test]
fn one_removed_option_is_named() {
    let config = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(DEBIAN)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (option, class) in [
        ("CONFIG_DM_VERITY", "verity"),
        ("CONFIG_WIREGUARD", "network"),
        ("CONFIG_USER_NS", "containers"),
    ] {
        let cut: String = config
            .lines()
            .filter(|l| !l.starts_with(&format!("{option}=")))
            .map(|l| format!("{l}\n"))
            .collect();
        let p = dir.path().join("config");
        fs::write(&p, cut).unwrap();
        let o = cairn().arg("check-kernel").arg(&p).output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(e.contains("lacks 1 of the 57 options"), "{e}");
        assert!(e.contains(&format!("{option} ({class}): needs")), "{e}");
    }
    // A module where built-in is required is reported too.
    let p = dir.path().join("config");
    fs::write(&p, config.replace("CONFIG_SQUASHFS_ZSTD=y", "CONFIG_SQUASHFS_ZSTD=m")).unwrap();
    let e = String::from_utf8_lossy(&cairn().arg("check-kernel").arg(&p).output().unwrap().stderr).into_owned();
    assert!(
        e.contains("CONFIG_SQUASHFS_ZSTD (verity): needs built in (=y), found =m"),
        "{e}"
    );
}
