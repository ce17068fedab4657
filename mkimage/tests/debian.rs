//! The Debian stage's errors, end to end through mmdebstrap: a package that does not exist
//! and a mirror that does not answer each stop `cairn lock` with one message that names
//! them, and leave no lock behind. mmdebstrap's root mode needs root; the first test also
//! reaches the Debian archive (it fails within seconds, before any download).

mod common;

use std::fs;

use common::*;

fn lock_fails(packages: &str, mirror: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mirrors = match mirror {
        Some(m) => format!("mirror = \"{m}/debian\"\nsecurity-mirror = \"{m}/debian-security\"\n"),
        None => String::new(),
    };
    fs::write(
        dir.path().join("image.toml"),
        format!(
            "version = 1\n[image]\nname = \"t\"\nversion = \"1\"\n[root.debian]\nsuite = \"bookworm\"\n{mirrors}packages = [{packages}]\n"
        ),
    )
    .unwrap();
    let o = cairn()
        .current_dir(dir.path())
        .env("CAIRN_CACHE_DIR", dir.path().join("cache"))
        .args(["lock", "image.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        !dir.path().join("cairn.lock").exists(),
        "a failed lock must not write cairn.lock"
    );
    let leftovers: Vec<_> = fs::read_dir(dir.path().join("cache"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.iter().all(|n| n == "debs"),
        "work directories left in the cache: {leftovers:?}"
    );
    stderr
}

#[test]
fn unknown_package_is_named() {
    if skip_without_root("mmdebstrap's root mode needs root") {
        return;
    }
    require(&["mmdebstrap"]);
    let e = lock_fails("\"systemd\", \"cairn-no-such-package\"", None);
    assert!(
        e.contains("package 'cairn-no-such-package' is not in Debian bookworm (main)"),
        "{e}"
    );
    assert!(e.contains("apt-cache policy cairn-no-such-package"), "{e}");
}

#[test]
fn silent_mirror_is_named() {
    if skip_without_root("mmdebstrap's root mode needs root") {
        return;
    }
    require(&["mmdebstrap"]);
    // Nothing listens on the discard port.
    let e = lock_fails("\"systemd\"", Some("http://127.0.0.1:9"));
    assert!(e.contains("the Debian mirror http://127.0.0.1:9/debian"), "{e}");
    assert!(e.contains("does not answer"), "{e}");
}
