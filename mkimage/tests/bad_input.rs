//! Bad input: each mistake gives one clear error that names the place and the fix, and
//! leaves the output directory as it was (no half-written files, no staging leftovers).

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// Files and directories directly under `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Run a build that must fail; return stderr and check nothing was left behind.
fn failing_build(f: &Fixture, extra_env: &[(&str, &str)]) -> String {
    let before = listing(f.dir.path());
    let mut cmd = cairn();
    cmd.current_dir(f.dir.path())
        .env("XDG_DATA_HOME", f.path("xdg"))
        .args(["build", "image.toml", "--out", "out"]);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "must fail with exit 1:\n{stderr}");
    assert!(
        stderr.starts_with("error: ") || stderr.contains("\nerror: "),
        "{stderr}"
    );
    let after: Vec<String> = listing(f.dir.path()).into_iter().filter(|n| n != "xdg").collect();
    let before: Vec<String> = before.into_iter().filter(|n| n != "xdg").collect();
    assert_eq!(after, before, "the failed build left files behind:\n{stderr}");
    stderr
}

#[test]
fn missing_definition() {
    let f = Fixture::new();
    fs::remove_file(f.path("image.toml")).unwrap();
    let e = failing_build(&f, &[]);
    assert!(e.contains("image.toml: cannot read the image definition"), "{e}");
    assert!(e.contains("hint:"), "{e}");
}

#[test]
fn malformed_definition_names_the_line() {
    let f = Fixture::new();
    fs::write(
        f.path("image.toml"),
        "version = 1\n[image]\nname = \"x\nversion = \"1\"\n",
    )
    .unwrap();
    let e = failing_build(&f, &[]);
    assert!(e.contains("image.toml:3:"), "{e}");
}

#[test]
fn unknown_key_names_the_line_and_the_valid_keys() {
    let f = Fixture::new();
    f.write_definition("[squashfs]\ncompresion = \"zstd\"\n");
    let e = failing_build(&f, &[]);
    assert!(e.contains("image.toml:24:1: unknown field `compresion`"), "{e}");
    assert!(
        e.contains("expected one of") && e.contains("hint: remove or rename the key"),
        "{e}"
    );
}

#[test]
fn root_that_does_not_fit_says_by_how_much() {
    let f = Fixture::new();
    // 20 MiB of incompressible data in a 16 MiB slot.
    let mut data = Vec::with_capacity(20 << 20);
    let mut x: u64 = 7;
    while data.len() < 20 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    fs::write(f.path("overlay/etc/big"), data).unwrap();
    let def = fs::read_to_string(f.path("image.toml"))
        .unwrap()
        .replace("root-size = \"32M\"", "root-size = \"16M\"");
    fs::write(f.path("image.toml"), def).unwrap();
    let e = failing_build(&f, &[]);
    assert!(e.contains("more than a root slot holds (16 MiB)"), "{e}");
    assert!(
        e.contains("raise `root-size` under [partitions] in image.toml:18 to at least 32 MiB"),
        "{e}"
    );
}

#[test]
fn unreadable_key() {
    let f = Fixture::new();
    fs::write(
        f.path("release.pem"),
        "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = failing_build(&f, &[]);
    assert!(
        e.contains("release.pem is not an ed25519 private key") && e.contains("cairn keygen"),
        "{e}"
    );
    fs::remove_file(f.path("release.pem")).unwrap();
    let e = failing_build(&f, &[]);
    assert!(e.contains("reading private key") && e.contains("release.pem"), "{e}");
}

#[test]
fn missing_tool_names_the_package() {
    let f = Fixture::new();
    // A PATH without squashfs-tools-ng.
    let bin = f.path("bin");
    fs::create_dir(&bin).unwrap();
    let e = failing_build(&f, &[("PATH", bin.to_str().unwrap())]);
    assert!(e.contains("missing tools: tar2sqfs"), "{e}");
    assert!(e.contains("apt-get install squashfs-tools-ng"), "{e}");
}

#[test]
fn bad_epoch_is_refused() {
    let f = Fixture::new();
    let e = failing_build(&f, &[("SOURCE_DATE_EPOCH", "yesterday")]);
    assert!(e.contains("SOURCE_DATE_EPOCH='yesterday'"), "{e}");
}

#[test]
fn failure_midway_keeps_the_previous_output() {
    let f = Fixture::new();
    let out = f.build_ok("out");
    let old = fs::read(out.join("manifest.json")).unwrap();
    // A tarball that ends in the middle of an entry fails while packing.
    let tar = fs::read(f.path("root.tar")).unwrap();
    fs::write(f.path("root.tar"), &tar[..tar.len() / 2]).unwrap();
    let e = failing_build(&f, &[]);
    assert!(e.contains("root.tar"), "{e}");
    assert_eq!(
        fs::read(out.join("manifest.json")).unwrap(),
        old,
        "the previous build is untouched"
    );
    assert_eq!(
        listing(&out),
        [
            "disk.raw",
            "manifest.json",
            "manifest.json.sig",
            "outputs.json",
            "outputs.json.sig",
            "sbom.spdx.json",
            "update.cairn"
        ]
    );
}

#[test]
fn plan_writes_nothing_and_shows_the_layout() {
    let f = Fixture::new();
    let before = listing(f.dir.path());
    let o = cairn()
        .current_dir(f.dir.path())
        .env("XDG_DATA_HOME", f.path("xdg"))
        .args(["build", "image.toml", "--plan"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for needle in [
        "esp",
        "root-a",
        "verity-a",
        "root-b",
        "verity-b",
        "state",
        "roothash=<root hash> rd.shell=0 rd.emergency=reboot rd.timeout=120 console=ttyS0 quiet",
        "release.pem (from the definition; sha256:",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    assert_eq!(listing(f.dir.path()), before, "--plan wrote something");
    // A plan whose key the build could not read fails as the build would.
    fs::write(f.path("release.pem"), "").unwrap();
    let o = cairn()
        .current_dir(f.dir.path())
        .args(["build", "image.toml", "--plan"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("release.pem is not an ed25519 private key"),
        "{err}"
    );
    assert!(err.contains("the file is empty"), "{err}");
}

#[test]
fn build_without_out_is_a_usage_error() {
    let f = Fixture::new();
    let o = cairn()
        .current_dir(f.dir.path())
        .args(["build", "image.toml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--out <DIR>"));
}

#[test]
fn cli_reference_in_docs_matches_the_binary() {
    let o = cairn().arg("help-markdown").output().unwrap();
    let generated = String::from_utf8(o.stdout).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cli.md");
    let doc = fs::read_to_string(&path).unwrap();
    assert!(
        doc == generated,
        "docs/cli.md is stale: run `cargo run -q --bin cairn -- help-markdown > docs/cli.md`"
    );
}

#[test]
fn kubelet_artifact_must_match_its_pin() {
    let f = Fixture::new();
    fs::write(f.path("kubelet"), b"#!/bin/sh\necho kubelet\n").unwrap();
    // A pin that is not the file's sha256.
    let pinned = "6e3f1c8e8b1c5b2bd3a3a1c0f7ab1fe6b0dbd0b1b1ab4f9b1a3a2e5b8f3d0c41";
    f.write_definition(&format!("[kubelet]\npath = \"kubelet\"\nsha256 = \"{pinned}\"\n"));
    let e = failing_build(&f, &[]);
    assert!(
        e.contains("kubelet sha256 mismatch: the definition pins 6e3f1c8e"),
        "{e}"
    );
    assert!(e.contains("hint: fix [kubelet] sha256"), "{e}");
}

#[test]
fn keys_are_never_overwritten_by_their_public_half() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    // `cairn keygen k.pub` would put the private key and then the public key in one file.
    let o = cairn().current_dir(p).args(["keygen", "k.pub"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("would hold both the private and the public key"),
        "{err}"
    );
    assert!(!p.join("k.pub").exists());
    // A development key whose private half is gone is made anew, not refused with a hint
    // to a --force that `cairn build` does not have.
    let f = Fixture::new();
    let text = fs::read_to_string(f.path("image.toml"))
        .unwrap()
        .replace("[signing]\nkey = \"release.pem\"\n", "");
    fs::write(f.path("image.toml"), text).unwrap();
    fs::create_dir_all(f.path("xdg/cairn")).unwrap();
    fs::write(f.path("xdg/cairn/dev-key.pub"), "stale").unwrap();
    let out = f.build_ok("out");
    assert!(out.join("disk.raw").is_file());
    let public = cairn_signing::PublicKey::read(&f.path("xdg/cairn/dev-key.pub")).unwrap();
    let private = cairn_signing::PrivateKey::read(&f.path("xdg/cairn/dev-key.pem")).unwrap();
    assert_eq!(private.public(), public);
}

#[test]
fn a_killed_builds_staging_is_swept_by_the_next() {
    let f = Fixture::new();
    // What a build killed by Ctrl-C leaves (pid 0 is never a live process's).
    fs::create_dir_all(f.path(".out.cairn-staging-0/depmod")).unwrap();
    fs::write(f.path(".out.cairn-staging-0/root.sqfs"), vec![0u8; 4096]).unwrap();
    f.build_ok("out");
    let left: Vec<String> = listing(f.dir.path())
        .into_iter()
        .filter(|n| n.contains("staging"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
