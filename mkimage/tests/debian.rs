//! The Debian stage end to end, with the real archive, apt and mmdebstrap (root, network):
//!
//! * a package that does not exist and a mirror that does not answer each stop `cairn lock`
//!   with one message that names them, and leave no lock and nothing in the cache behind;
//! * a lock pinning a version no mirror serves: `--locked` refuses and names it, writing
//!   nothing; a plain build re-resolves, keeps every other version and lists what moved;
//! * the default image's lock exported as a package store rebuilds, with no network at all
//!   (a network namespace of its own) and an empty cache, into a `disk.raw` byte-identical
//!   to the online build's.
//!
//! They share the machine's cache (`CAIRN_CACHE_DIR`) where they can, as users do: the store
//! and the default image's tree are what every other Debian test needs too.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    let cache = dir.path().join("cache");
    let o = cairn()
        .current_dir(dir.path())
        .env("CAIRN_CACHE_DIR", &cache)
        .args(["lock", "image.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        !dir.path().join("cairn.lock").exists(),
        "a failed lock must not write cairn.lock"
    );
    assert_cache_clean(&cache);
    stderr
}

/// Nothing but the cache lock, the store and empty work and tree folders.
fn assert_cache_clean(cache: &Path) {
    for e in fs::read_dir(cache).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        match name.as_str() {
            "lock" | "packages" => {}
            "work" | "trees" => {
                let left: Vec<_> = fs::read_dir(e.path())
                    .unwrap()
                    .flatten()
                    .map(|e| e.file_name())
                    .collect();
                assert!(left.is_empty(), "{name}/ keeps {left:?} after a failed run");
            }
            _ => panic!("a failed run left {name} in the cache"),
        }
    }
}

#[test]
fn unknown_package_is_named() {
    if skip_without_root("mmdebstrap's root mode needs root") {
        return;
    }
    require(&["mmdebstrap", "apt-get"]);
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
    require(&["mmdebstrap", "apt-get"]);
    // Nothing listens on the discard port.
    let e = lock_fails("\"systemd\"", Some("http://127.0.0.1:9"));
    assert!(e.contains("the Debian mirror http://127.0.0.1:9/debian"), "{e}");
    assert!(e.contains("does not answer"), "{e}");
}

/// A copy of the default image's definition and lock in a directory of its own, with the
/// overlays and units it names beside it (links to the workspace's).
struct DefaultImage {
    dir: tempfile::TempDir,
}

/// The tests on the default image run one at a time: the first builds the shared cache's tree,
/// the next finds it there.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl DefaultImage {
    fn new() -> DefaultImage {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("images")).unwrap();
        for f in ["node.toml", "cairn.lock"] {
            fs::copy(ws.join("images").join(f), dir.path().join("images").join(f)).unwrap();
        }
        for d in ["overlays", "units"] {
            std::os::unix::fs::symlink(ws.join(d), dir.path().join(d)).unwrap();
        }
        DefaultImage { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn lock(&self) -> String {
        fs::read_to_string(self.path("images/cairn.lock")).unwrap()
    }

    /// `cairn ARGS` in the copy, with a fixed epoch and development key.
    fn cairn(&self, args: &[&str]) -> Command {
        let mut c = cairn();
        c.current_dir(self.dir.path())
            .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
            .env("XDG_DATA_HOME", self.path("xdg"))
            .args(args);
        c
    }
}

fn output(mut c: Command) -> (bool, String) {
    let o = c.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

/// The lock's entry for `name`: (version, sha256).
fn entry(lock: &str, name: &str) -> (String, String) {
    let v: toml::Value = toml::from_str(lock).unwrap();
    let p = v["package"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("{name} is not in the lock"));
    (
        p["version"].as_str().unwrap().into(),
        p["sha256"].as_str().unwrap().into(),
    )
}

#[test]
fn a_lock_the_mirror_no_longer_serves_is_followed_or_refused() {
    if skip_without_root("mmdebstrap's root mode needs root") {
        return;
    }
    require(&["mmdebstrap", "apt-get"]);
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let img = DefaultImage::new();
    // Bring the copy's lock up to date first (the committed one may have gone stale).
    let (ok, log) = output(img.cairn(&["lock", "images/node.toml"]));
    assert!(ok, "{log}");
    let current = img.lock();
    let (zstd_version, zstd_sha) = entry(&current, "zstd");
    // Pin zstd to a version no mirror has ever served (as a superseded one looks).
    let start = current.find("name = \"zstd\"\n").expect("zstd in the lock");
    let end = current[start..].find("\n\n").map_or(current.len(), |e| start + e);
    let block = &current[start..end];
    let fake = block
        .replace(&zstd_version, "1.5.4+dfsg2-99")
        .replace(&zstd_sha, &"5".repeat(64));
    let stale = format!("{}{fake}{}", &current[..start], &current[end..]);
    assert_ne!(stale, current);
    fs::write(img.path("images/cairn.lock"), &stale).unwrap();

    // --locked: refused, the package named with the hint, nothing written.
    let (ok, log) = output(img.cairn(&["build", "images/node.toml", "--locked", "--out", "out"]));
    assert!(!ok, "{log}");
    assert!(log.contains("pins 1 package(s) that no source serves"), "{log}");
    assert!(log.contains("zstd 1.5.4+dfsg2-99 (amd64): HTTP 404"), "{log}");
    assert!(
        log.contains("hint: run `cairn lock images/node.toml --update`"),
        "{log}"
    );
    assert_eq!(img.lock(), stale, "--locked must not touch the lock");
    assert!(!img.path("out").exists(), "--locked left an output behind");
    let staging: Vec<_> = fs::read_dir(img.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("staging"))
        .collect();
    assert!(staging.is_empty(), "{staging:?}");

    // The default: re-resolved with every other version kept, the move listed.
    let (ok, log) = output(img.cairn(&["lock", "images/node.toml"]));
    assert!(ok, "{log}");
    assert!(
        log.contains("images/cairn.lock is stale: no source serves 1 of its packages any more (zstd)"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "1 moved\n      Updating zstd 1.5.4+dfsg2-99 -> {zstd_version}"
        )),
        "{log}"
    );
    let after = img.lock();
    assert_eq!(entry(&after, "zstd"), (zstd_version, zstd_sha));
    let body = |t: &str| {
        t.lines()
            .filter(|l| !l.starts_with("resolved"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(body(&after), body(&current), "only zstd may move back");
}

#[test]
fn an_exported_store_rebuilds_the_image_offline_byte_identical() {
    if skip_without_root("mmdebstrap's root mode and a network namespace need root") {
        return;
    }
    require(&["mmdebstrap", "apt-get", "unshare"]);
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let img = DefaultImage::new();
    let (ok, log) = output(img.cairn(&["lock", "images/node.toml"]));
    assert!(ok, "{log}");
    let (ok, log) = output(img.cairn(&["build", "images/node.toml", "--locked", "--out", "online"]));
    assert!(ok, "{log}");

    let (ok, log) = output(img.cairn(&["store", "export", "images/cairn.lock", "--to", "store"]));
    assert!(ok, "{log}");
    let packages = fs::read_to_string(img.path("store/Packages")).unwrap();
    let lock: toml::Value = toml::from_str(&img.lock()).unwrap();
    let count = lock["package"].as_array().unwrap().len();
    assert!(log.contains(&format!("exported {count} packages")), "{log}");
    assert_eq!(
        packages.matches("\nSHA256: ").count(),
        count,
        "the store holds exactly the locked packages"
    );

    // No network at all, an empty cache: only the store can serve.
    let mut c = Command::new("unshare");
    c.current_dir(img.dir.path())
        .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
        .env("XDG_DATA_HOME", img.path("xdg"))
        .env("CAIRN_CACHE_DIR", img.path("empty-cache"))
        .args(["--net", "--"])
        .arg(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "build",
            "images/node.toml",
            "--locked",
            "--package-source",
            "store",
            "--out",
            "offline",
        ]);
    let (ok, log) = output(c);
    assert!(ok, "{log}");
    assert!(
        log.contains("packages: fetched"),
        "the offline build fetched from the store: {log}"
    );
    for f in ["disk.raw", "manifest.json", "update.cairn", "sbom.spdx.json"] {
        let sha = |d: &str| {
            let o = run_ok(Command::new("sha256sum").arg(img.path(d).join(f)));
            o.split_whitespace().next().unwrap().to_string()
        };
        assert_eq!(
            sha("online"),
            sha("offline"),
            "{f} differs between the online and the offline build"
        );
    }
    // The SBOM lists every locked package with its .deb's sha256, passes a real SPDX
    // validator, and reads licenses from the packages' copyright files.
    let sbom_path = img.path("online/sbom.spdx.json");
    let (ok, said) = spdx_valid(&sbom_path);
    assert!(ok, "{said}");
    let sbom: serde_json::Value = serde_json::from_slice(&fs::read(&sbom_path).unwrap()).unwrap();
    let debs: Vec<&serde_json::Value> = sbom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["SPDXID"].as_str().unwrap().starts_with("SPDXRef-deb-"))
        .collect();
    assert_eq!(debs.len(), count, "one SBOM package per locked package");
    for p in lock["package"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let listed = debs
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not in the SBOM"));
        assert_eq!(listed["versionInfo"], p["version"].as_str().unwrap(), "{name}");
        assert_eq!(
            listed["checksums"][0]["checksumValue"],
            p["sha256"].as_str().unwrap(),
            "{name}"
        );
    }
    let zstd = debs.iter().find(|d| d["name"] == "zstd").unwrap();
    assert!(
        zstd["licenseDeclared"].as_str().unwrap().contains("BSD-3-Clause"),
        "zstd's copyright file declares BSD-3-clause: {zstd}"
    );
    let licensed = debs.iter().filter(|d| d["licenseDeclared"] != "NOASSERTION").count();
    assert!(
        licensed * 4 > count * 3,
        "only {licensed} of {count} packages with a license"
    );
    assert!(
        log.contains(&format!("sbom: {count} Debian packages ({licensed} with a license")),
        "{log}"
    );

    // The export is a repository apt itself reads: the index names files that are there.
    for line in packages.lines().filter_map(|l| l.strip_prefix("Filename: ")) {
        assert!(img.path("store").join(line).is_file(), "{line}");
    }
}
