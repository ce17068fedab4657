//! Shared fixtures for the artifact tests: a root tarball with every kind of entry, fake
//! kernel and initrd, a fixed signing key, a definition, and helpers to run `cairn` and
//! the reference tools.
#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

pub const EPOCH: u64 = 1_700_000_000;
/// `security.capability` value granting cap_net_raw (VFS_CAP_REVISION_2, permitted bit 13).
pub const CAP_NET_RAW: [u8; 20] = [1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

pub fn cairn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
}

/// Panic with an install hint when a reference tool is missing: these tests must not
/// pass by skipping. `.ci/run` installs them.
pub fn require(tools: &[&str]) {
    for t in tools {
        let found = std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                    .any(|d| d.join(t).is_file())
            })
            .unwrap_or(false);
        assert!(
            found,
            "reference tool {t} is missing; run .ci/run or install the packages it lists"
        );
    }
}

pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn header(path: &str, ty: tar::EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(ty);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_size(size);
    h.set_mtime(if path.starts_with("usr") {
        1_900_000_000
    } else {
        1_600_000_000
    });
    h
}

/// Write a root tarball that exercises every kind of entry Cairn must keep.
pub fn write_root_tar(path: &Path) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    let dir = |b: &mut tar::Builder<fs::File>, p: &str, mode: u32, uid: u64| {
        let mut h = header(p, tar::EntryType::Directory, mode, uid, uid, 0);
        b.append_data(&mut h, p, &[][..]).unwrap();
    };
    dir(&mut b, "./", 0o755, 0);
    for d in ["usr/", "usr/bin/", "dev/", "etc/", "home/"] {
        dir(&mut b, d, 0o755, 0);
    }
    dir(&mut b, "home/user/", 0o700, 1000);
    let file = |b: &mut tar::Builder<fs::File>, p: &str, mode: u32, uid: u64, data: &[u8]| {
        let mut h = header(p, tar::EntryType::Regular, mode, uid, uid, data.len() as u64);
        b.append_data(&mut h, p, data).unwrap();
    };
    // A file capability travels as a pax record before its entry.
    let key = "SCHILY.xattr.security.capability";
    let mut rec = Vec::new();
    let body = key.len() + CAP_NET_RAW.len() + 3;
    let len = body + (body + 2).to_string().len();
    rec.extend_from_slice(format!("{len} {key}=").as_bytes());
    rec.extend_from_slice(&CAP_NET_RAW);
    rec.push(b'\n');
    let mut xh = header("usr/bin/ping", tar::EntryType::XHeader, 0o644, 0, 0, rec.len() as u64);
    b.append_data(&mut xh, "PaxHeaders/ping", &rec[..]).unwrap();
    file(&mut b, "usr/bin/ping", 0o755, 0, b"\x7fELF ping");
    file(&mut b, "usr/bin/su", 0o4755, 0, b"setuid");
    file(&mut b, "usr/bin/zz", 0o755, 0, b"hard linked");
    let mut h = header("usr/bin/aa", tar::EntryType::Link, 0o755, 0, 0, 0);
    b.append_link(&mut h, "usr/bin/aa", "usr/bin/zz").unwrap();
    let mut big = Vec::with_capacity(3 << 20);
    let mut x: u64 = 1;
    while big.len() < 3 << 20 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        big.extend_from_slice(&x.to_le_bytes()[..4]);
        big.extend_from_slice(b"text");
    }
    file(&mut b, "home/user/data", 0o600, 1000, &big);
    file(&mut b, "etc/empty", 0o644, 0, b"");
    for (p, ty, maj, min) in [
        ("dev/null", tar::EntryType::Char, 1, 3),
        ("dev/sda", tar::EntryType::Block, 8, 0),
    ] {
        let mut h = header(p, ty, 0o660, 0, 6, 0);
        h.set_device_major(maj).unwrap();
        h.set_device_minor(min).unwrap();
        b.append_data(&mut h, p, &[][..]).unwrap();
    }
    let mut h = header("dev/initctl", tar::EntryType::Fifo, 0o600, 0, 0, 0);
    b.append_data(&mut h, "dev/initctl", &[][..]).unwrap();
    let mut h = header("etc/link", tar::EntryType::Symlink, 0o777, 0, 0, 0);
    b.append_link(&mut h, "etc/link", "../usr/bin/su").unwrap();
    let long = format!("usr/{}deep-file", "nested-directory/".repeat(8));
    file(&mut b, &long, 0o644, 0, b"long path");
    b.finish().unwrap();
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// A fixture with a tarball root, an overlay, fake kernel/initrd and a release key.
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        write_root_tar(&p.join("root.tar"));
        fs::create_dir_all(p.join("overlay/etc/cairn")).unwrap();
        fs::write(p.join("overlay/etc/motd"), "welcome to cairn\n").unwrap();
        fs::write(p.join("overlay/etc/cairn/node.conf"), "x=1\n").unwrap();
        fs::write(p.join("vmlinuz"), vec![0x4b; 1_500_000]).unwrap();
        fs::write(p.join("initrd.img"), vec![0x49; 700_000]).unwrap();
        let key = cairn_signing::PrivateKey::from_bytes([42; 32]);
        key.write_pair(&p.join("release.pem"), &p.join("release.pub"), false)
            .unwrap();
        let f = Fixture { dir };
        f.write_definition("");
        f
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write_definition(&self, extra: &str) {
        let text = format!(
            r#"version = 1

[image]
name = "test"
version = "1.2.3"

[root]
source = "root.tar"
overlays = ["overlay"]

[kernel]
image = "vmlinuz"
initrd = "initrd.img"
cmdline = ["console=ttyS0", "quiet"]

[partitions]
esp-size = "64M"
root-size = "32M"
state-size = "32M"

[signing]
key = "release.pem"
{extra}"#
        );
        fs::write(self.path("image.toml"), text).unwrap();
    }

    /// `cairn build image.toml --out <out>` with a fixed epoch and a private XDG dir.
    pub fn build(&self, out: &str) -> Output {
        cairn()
            .current_dir(self.dir.path())
            .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
            .env("XDG_DATA_HOME", self.path("xdg"))
            .args(["build", "image.toml", "--out", out])
            .output()
            .unwrap()
    }

    pub fn build_ok(&self, out: &str) -> PathBuf {
        let o = self.build(out);
        assert!(
            o.status.success(),
            "build failed:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        self.path(out)
    }
}

pub fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap()
}

/// Copy a byte range of a file into a new file.
pub fn extract(disk: &Path, offset: u64, len: u64, to: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(disk).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut v = vec![0u8; len as usize];
    f.read_exact(&mut v).unwrap();
    fs::write(to, v).unwrap();
}

/// `(offset, size)` of the manifest entry in `list` whose `key` is `value`.
fn range(m: &serde_json::Value, list: &str, key: &str, value: &str) -> (u64, u64) {
    let e = m[list]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e[key] == value)
        .unwrap_or_else(|| panic!("no {list} entry with {key} = {value}"));
    (e["offset"].as_u64().unwrap(), e["size"].as_u64().unwrap())
}

pub fn partition(m: &serde_json::Value, label: &str) -> (u64, u64) {
    range(m, "partitions", "label", label)
}

pub fn payload(m: &serde_json::Value, name: &str) -> (u64, u64) {
    range(m, "payloads", "name", name)
}

/// Copy payload `name` of the build in `out` into the file `to`.
pub fn extract_payload(out: &Path, name: &str, to: &Path) {
    let (offset, len) = payload(&manifest(out), name);
    extract(&out.join("disk.raw"), offset, len, to);
}

/// Tests that need root (loop devices, device nodes, mmdebstrap's root mode) call this
/// first; it says why they are skipped elsewhere. CI runs as root, so they run there.
pub fn skip_without_root(why: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("skipping: {why}");
    true
}

/// One tar entry as compared between source and image: everything but the data is
/// spelled out, the data is hashed. Hard links become the file they share plus the set of
/// paths sharing it, so the direction of a link does not matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desc {
    pub kind: String,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub content: String,
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub links: Vec<String>,
}

pub fn describe_tar(path: &Path) -> BTreeMap<String, Desc> {
    let mut ar = tar::Archive::new(fs::File::open(path).unwrap());
    let mut out = BTreeMap::new();
    let mut hard: Vec<(String, String)> = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let p = raw
            .trim_start_matches("./")
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_string();
        let h = e.header().clone();
        let mut xattrs = Vec::new();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                let x = x.unwrap();
                if let Some(n) = x.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.push((n.to_string(), x.value_bytes().to_vec()));
                }
            }
        }
        xattrs.sort();
        let link = e
            .link_name_bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let (kind, content) = match h.entry_type() {
            tar::EntryType::Regular => {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut v).unwrap();
                ("file".to_string(), hex::encode(Sha256::digest(&v)))
            }
            tar::EntryType::Directory => ("dir".into(), String::new()),
            tar::EntryType::Symlink => ("symlink".into(), link),
            tar::EntryType::Link => {
                hard.push((p.clone(), link.trim_start_matches("./").to_string()));
                continue;
            }
            tar::EntryType::Char | tar::EntryType::Block => (
                format!("{:?}", h.entry_type()),
                format!(
                    "{},{}",
                    h.device_major().unwrap().unwrap(),
                    h.device_minor().unwrap().unwrap()
                ),
            ),
            tar::EntryType::Fifo => ("fifo".into(), String::new()),
            other => panic!("unexpected entry type {other:?} for {p}"),
        };
        let d = Desc {
            kind,
            mode: h.mode().unwrap() & 0o7777,
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            content,
            xattrs,
            links: vec![],
        };
        out.insert(p, d);
    }
    for (p, target) in hard {
        let mut d = out
            .get(&target)
            .unwrap_or_else(|| panic!("{p} links to missing {target}"))
            .clone();
        let mut group = vec![p.clone(), target.clone()];
        group.sort();
        d.links = group.clone();
        out.get_mut(&target).unwrap().links = group.clone();
        out.insert(p, d);
    }
    out
}

/// Run the SPDX validator (`pyspdxtools`, PyPI spdx-tools) on `path`: (valid, what it said).
pub fn spdx_valid(path: &Path) -> (bool, String) {
    require(&["pyspdxtools"]);
    let o = Command::new("pyspdxtools").arg("-i").arg(path).output().unwrap();
    let said = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    (o.status.success() && !said.contains("invalid"), said)
}
