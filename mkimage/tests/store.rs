//! The package store and the cache without a network: packages built here with
//! `dpkg-deb --build`, served by a `file://` mirror, exported by two `cairn store export`
//! runs at once into one cache, the exports read back by apt itself, then `cairn cache` and
//! `cairn cache prune`. Hostile locks and targets are refused before anything is written.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use sha2::{Digest, Sha256};

/// A `.deb` made by dpkg-deb: (name, version, path under the mirror, size, sha256).
fn make_deb(mirror: &Path, name: &str, version: &str) -> (String, String, String, u64, String) {
    let build = tempfile::tempdir().unwrap();
    let root = build.path().join("root");
    fs::create_dir_all(root.join("DEBIAN")).unwrap();
    fs::create_dir_all(root.join("usr/share/doc").join(name)).unwrap();
    fs::write(
        root.join("usr/share/doc").join(name).join("README"),
        format!("{name} {version}\n"),
    )
    .unwrap();
    fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: Cairn tests <t@example.org>\n\
             Priority: optional\nSection: misc\nDescription: a package for the store tests\n more text\n"
        ),
    )
    .unwrap();
    let first = &name[..1];
    // Debian's file names leave out the epoch.
    let file_version = version.split_once(':').map_or(version, |(_, v)| v);
    let rel = format!("pool/main/{first}/{name}/{name}_{file_version}_all.deb");
    let out = mirror.join(&rel);
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    run_ok(
        Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group", "-Zxz"])
            .arg(&root)
            .arg(&out),
    );
    let data = fs::read(&out).unwrap();
    (
        name.into(),
        version.into(),
        rel,
        data.len() as u64,
        hex::encode(Sha256::digest(&data)),
    )
}

fn lock_text(mirror: &Path, debs: &[(String, String, String, u64, String)]) -> String {
    let mut s = format!(
        "version = 2\nsuite = \"bookworm\"\nrequest = \"{}\"\nresolved = \"2026-12-02T07:40:12Z\"\n\n\
         [mirrors]\nmain = \"file://{m}\"\nsecurity = \"file://{m}-security\"\n",
        "ab".repeat(32),
        m = mirror.display()
    );
    for (name, version, path, size, sha) in debs {
        s.push_str(&format!(
            "\n[[package]]\nname = \"{name}\"\nversion = \"{version}\"\narchitecture = \"all\"\nsize = {size}\n\
             sha256 = \"{sha}\"\narchive = \"main\"\npath = \"{path}\"\n"
        ));
    }
    s
}

struct Setup {
    dir: tempfile::TempDir,
    debs: Vec<(String, String, String, u64, String)>,
}

impl Setup {
    fn new() -> Setup {
        require(&["dpkg-deb", "apt-get"]);
        let dir = tempfile::tempdir().unwrap();
        let mirror = dir.path().join("mirror");
        let debs = vec![
            make_deb(&mirror, "hello", "1.0-1"),
            make_deb(&mirror, "libhello1", "2:1.0~rc1+dfsg-3"),
            make_deb(&mirror, "zz-tool", "0.1"),
        ];
        fs::write(dir.path().join("cairn.lock"), lock_text(&mirror, &debs)).unwrap();
        Setup { dir, debs }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn cairn(&self, args: &[&str]) -> Command {
        let mut c = cairn();
        c.current_dir(self.dir.path())
            .env("CAIRN_CACHE_DIR", self.path("cache"))
            .args(args);
        c
    }
}

fn output(c: &mut Command) -> (bool, String) {
    let o = c.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

/// apt, on a private configuration, reads the repository at `dir` and lists `package`.
fn apt_reads(dir: &Path, package: &str) -> String {
    let apt = tempfile::tempdir().unwrap();
    let a = apt.path();
    for sub in [
        "etc/apt.conf.d",
        "etc/preferences.d",
        "etc/sources.list.d",
        "state/lists/partial",
        "cache/archives/partial",
    ] {
        fs::create_dir_all(a.join(sub)).unwrap();
    }
    fs::write(a.join("status"), "").unwrap();
    fs::write(
        a.join("etc/sources.list"),
        format!("deb [trusted=yes] file:{} ./\n", dir.display()),
    )
    .unwrap();
    let d = a.display();
    fs::write(
        a.join("apt.conf"),
        format!(
            "Dir \"{d}/\";\nDir::Etc \"{d}/etc/\";\nDir::Etc::SourceList \"{d}/etc/sources.list\";\n\
             Dir::Etc::SourceParts \"{d}/etc/sources.list.d/\";\nDir::Etc::Parts \"{d}/etc/apt.conf.d/\";\n\
             Dir::Etc::PreferencesParts \"{d}/etc/preferences.d/\";\nDir::State \"{d}/state/\";\n\
             Dir::State::Status \"{d}/status\";\nDir::Cache \"{d}/cache/\";\nDebug::NoLocking \"true\";\n\
             APT::Sandbox::User \"root\";\nAPT::Architecture \"amd64\";\n"
        ),
    )
    .unwrap();
    let apt_get = |args: &[&str]| {
        run_ok(
            Command::new(args[0])
                .env("APT_CONFIG", a.join("apt.conf"))
                .args(&args[1..]),
        )
    };
    apt_get(&["apt-get", "update"]);
    apt_get(&["apt-get", "install", "--print-uris", "--yes", package])
}

#[test]
fn two_exports_at_once_share_the_store_and_apt_reads_them() {
    let s = Setup::new();
    let mut a = s
        .cairn(&["store", "export", "cairn.lock", "--to", "store-a"])
        .spawn()
        .unwrap();
    let mut b = s
        .cairn(&["store", "export", "cairn.lock", "--to", "store-b"])
        .spawn()
        .unwrap();
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    // The store holds each package once, under its sha256, and nothing half-written.
    let mut names: Vec<String> = fs::read_dir(s.path("cache/packages"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".deb"))
        .collect();
    names.sort();
    let mut want: Vec<String> = s.debs.iter().map(|d| format!("{}.deb", d.4)).collect();
    want.sort();
    assert_eq!(names, want);
    for tmp in fs::read_dir(s.path("cache/packages")).unwrap() {
        let n = tmp.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.starts_with('.'), "temp file {n} left in the store");
    }
    for store in ["store-a", "store-b"] {
        let dir = s.path(store);
        for d in &s.debs {
            assert_eq!(fs::read(dir.join(&d.2)).unwrap().len() as u64, d.3);
        }
        let uris = apt_reads(&dir, "libhello1");
        assert!(
            uris.contains(&format!("libhello1_2%3a1.0~rc1+dfsg-3_all.deb {}", s.debs[1].3)),
            "{uris}"
        );
    }
    // Exported again: nothing changes; into a folder that is no store: refused.
    let (ok, log) = output(&mut s.cairn(&["store", "export", "cairn.lock", "--to", "store-a"]));
    assert!(ok && log.contains("exported 3 packages"), "{log}");
    fs::create_dir(s.path("photos")).unwrap();
    fs::write(s.path("photos/cat.jpg"), "meow").unwrap();
    let (ok, log) = output(&mut s.cairn(&["store", "export", "cairn.lock", "--to", "photos"]));
    assert!(!ok && log.contains("holds no Packages file"), "{log}");
    assert_eq!(fs::read_dir(s.path("photos")).unwrap().count(), 1);
}

#[test]
fn an_export_needs_every_package_and_a_sound_lock() {
    let s = Setup::new();
    // A package the mirror lost: named, and no store written.
    fs::remove_file(s.path("mirror").join(&s.debs[2].2)).unwrap();
    let (ok, log) = output(&mut s.cairn(&["store", "export", "cairn.lock", "--to", "out"]));
    assert!(!ok, "{log}");
    assert!(
        log.contains("1 locked package(s) are neither in the store nor served"),
        "{log}"
    );
    assert!(log.contains("zz-tool 0.1 (all)"), "{log}");
    assert!(!s.path("out").exists());
    // Paths that leave the archive, and values that would become apt syntax, are refused.
    let good = fs::read_to_string(s.path("cairn.lock")).unwrap();
    for (bad, why) in [
        (
            good.replace("path = \"pool/main/h/hello/", "path = \"pool/../../../h/hello/"),
            "path",
        ),
        (
            good.replace("name = \"hello\"", "name = \"hello\\nPackage: evil\""),
            "not a Debian package name",
        ),
        (good.replace("main = \"file://", "main = \"file://x y "), "mirror"),
    ] {
        fs::write(s.path("bad.lock"), bad).unwrap();
        let (ok, log) = output(&mut s.cairn(&["store", "export", "bad.lock", "--to", "out"]));
        assert!(!ok && log.contains(why) && log.contains("bad.lock"), "{why}: {log}");
        assert!(!s.path("out").exists());
    }
}

#[test]
fn cache_lists_and_prunes_to_what_locks_need() {
    let s = Setup::new();
    let (ok, log) = output(&mut s.cairn(&["store", "export", "cairn.lock", "--to", "store"]));
    assert!(ok, "{log}");
    // Leftovers: a tree of another lock, a killed build's work folder, an older Cairn's cache.
    let other = fs::read_to_string(s.path("cairn.lock"))
        .unwrap()
        .replace("version = \"0.1\"", "version = \"0.2\"");
    fs::create_dir_all(s.path("cache/trees/0123abcd")).unwrap();
    fs::write(s.path("cache/trees/0123abcd/cairn.lock"), &other).unwrap();
    fs::write(s.path("cache/trees/0123abcd/root.tar"), vec![0u8; 4096]).unwrap();
    fs::write(s.path("cache/trees/0123abcd/complete"), "").unwrap();
    fs::create_dir_all(s.path("cache/work/0-7-dead")).unwrap();
    fs::write(s.path("cache/work/0-7-dead/root.tar"), vec![0u8; 8192]).unwrap();
    fs::create_dir_all(s.path("cache/debs")).unwrap();
    fs::write(s.path("cache/debs/old_1_all.deb"), vec![0u8; 100]).unwrap();

    let (ok, shown) = output(&mut s.cairn(&["cache"]));
    assert!(ok, "{shown}");
    assert!(shown.contains("3 stored .deb files"), "{shown}");
    assert!(
        shown.contains("0123abcd (3 packages, resolved 2026-12-02T07:40:12Z)"),
        "{shown}"
    );
    assert!(shown.contains("work/0-7-dead"), "{shown}");
    assert!(shown.contains("debs (an older Cairn's package cache)"), "{shown}");

    let (ok, log) = output(&mut s.cairn(&["cache", "prune", "cairn.lock"]));
    assert!(ok, "{log}");
    assert!(log.contains("(0 package(s), 1 tree(s), 2 leftover(s))"), "{log}");
    assert!(!s.path("cache/trees/0123abcd").exists() && !s.path("cache/debs").exists());
    assert_eq!(
        fs::read_dir(s.path("cache/packages"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".deb"))
            .count(),
        3
    );
    // With no lock to keep, everything goes.
    let (ok, log) = output(&mut s.cairn(&["cache", "prune"]));
    assert!(ok && log.contains("(3 package(s), 0 tree(s), 0 leftover(s))"), "{log}");
}
