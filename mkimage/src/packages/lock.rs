//! `cairn.lock`: the exact Debian packages of an image, and what moved when it was re-resolved.
//!
//! A lock answers one package request (suite, components, packages; see [`request_hash`]) and
//! names every package the root installs with the exact version, architecture, size and sha256
//! of its `.deb`, and where the archive keeps it (`archive` = `main` or `security`, `path` under
//! that archive, e.g. `pool/main/a/adduser/adduser_3.134_all.deb`). With those, a build gets
//! every package by its path from a mirror, a package store (`cairn store export`) or a dated
//! snapshot archive, checks it against the sha256, and needs no index. `resolved` records when
//! the lock was resolved (UTC), so a snapshot archive of that moment can be named as a source.
//!
//! Every value is checked when the lock is read: a lock is committed next to a definition and
//! may come from anyone, and its names reach file names, URLs and mmdebstrap's command line.
//!
//! ```toml
//! version = 2
//! suite = "bookworm"
//! request = "3c31…"              # sha256 of the request it answers
//! resolved = "2026-12-02T07:40:12Z"
//!
//! [mirrors]
//! main = "http://deb.debian.org/debian"
//! security = "http://deb.debian.org/debian-security"
//!
//! [[package]]
//! name = "adduser"
//! version = "3.134"
//! architecture = "all"
//! size = 1352
//! sha256 = "c24f…"
//! archive = "main"
//! path = "pool/main/a/adduser/adduser_3.134_all.deb"
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::definition::DebianSpec;
use crate::ioerr::{io_err, IoError};

/// The lock file format this Cairn writes and reads.
pub const LOCK_VERSION: u32 = 2;

/// Packages every Debian root gets besides the requested ones: what builds the initrd.
pub const IMPLIED_PACKAGES: &[&str] = &["dracut", "zstd"];

/// Problems reading a lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// IO on the lock file.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The lock does not parse or holds a value it must not.
    #[error("{path}: {detail}\n  hint: {hint}")]
    Bad {
        /// The lock file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
        /// How to fix it.
        hint: &'static str,
    },
    /// A lock of an older format (it records no archive paths): a plain build re-resolves it.
    #[error("{path}: lock format {version} does not record where each package lives (this Cairn reads format {LOCK_VERSION})\n  hint: a plain `cairn build` re-resolves and rewrites it; or run `cairn lock DEFINITION --update`")]
    OldFormat {
        /// The lock file.
        path: PathBuf,
        /// Its format.
        version: u32,
    },
}

/// Archive URLs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Mirrors {
    /// The main archive (suite and suite-updates).
    pub main: String,
    /// The security archive (suite-security).
    pub security: String,
}

impl Mirrors {
    /// The base URL of `archive`.
    pub fn url(&self, archive: Archive) -> &str {
        match archive {
            Archive::Main => &self.main,
            Archive::Security => &self.security,
        }
    }
}

/// Which Debian archive a package comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Archive {
    /// The main archive (the suite and its -updates suite).
    Main,
    /// The security archive.
    Security,
}

/// One pinned package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LockedPackage {
    /// Package name.
    pub name: String,
    /// Exact version (with its epoch, if any).
    pub version: String,
    /// `amd64` or `all`.
    pub architecture: String,
    /// Size of the `.deb` in bytes.
    pub size: u64,
    /// sha256 of the `.deb`, lower-case hex.
    pub sha256: String,
    /// The archive holding it.
    pub archive: Archive,
    /// Its path under the archive (the index's `Filename`).
    pub path: String,
}

impl LockedPackage {
    /// `name version arch`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {} ({})", self.name, self.version, self.architecture)
    }

    /// The file name apt gives this package (the epoch's ':' escaped).
    pub fn deb_file_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.architecture
        )
    }

    fn check(&self) -> Result<(), String> {
        let who = || format!("package {:?}", self.name);
        if !valid_package_name(&self.name) {
            return Err(format!("{}: not a Debian package name", who()));
        }
        if !valid_version(&self.version) {
            return Err(format!("{}: version {:?} is not a Debian version", who(), self.version));
        }
        if !(self.architecture == "all"
            || (!self.architecture.is_empty()
                && self.architecture.len() <= 32
                && self
                    .architecture
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')))
        {
            return Err(format!("{}: architecture {:?} is not valid", who(), self.architecture));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!("{}: sha256 is not 64 lower-case hex digits", who()));
        }
        if self.size == 0 || self.size > MAX_DEB_SIZE {
            return Err(format!(
                "{}: size {} is not between 1 byte and {} MiB",
                who(),
                self.size,
                MAX_DEB_SIZE >> 20
            ));
        }
        if !valid_pool_path(&self.path) {
            return Err(format!(
                "{}: path {:?} is not a relative pool/… path of plain names",
                who(),
                self.path
            ));
        }
        Ok(())
    }
}

/// The largest `.deb` a lock may name (the biggest Debian packages are a few hundred MiB).
pub const MAX_DEB_SIZE: u64 = 2 << 30;

/// A Debian package name: lower-case letters, digits, `+`, `-`, `.`; at least two characters,
/// starting with a letter or digit.
pub fn valid_package_name(s: &str) -> bool {
    s.len() >= 2
        && s.len() <= 128
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
}

/// A Debian version: `[epoch:]upstream[-revision]` of letters, digits and `.+~-:`.
pub fn valid_version(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b".+~-:".contains(&b))
}

/// A relative path under an archive: `pool/…`, segments of letters, digits and `.+~-_%`,
/// none of them `.` or `..`, ending in `.deb`.
pub fn valid_pool_path(s: &str) -> bool {
    s.len() <= 512
        && s.starts_with("pool/")
        && s.ends_with(".deb")
        && s.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b".+~-_%".contains(&b))
        })
}

/// `cairn.lock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Lock {
    /// Format version ([`LOCK_VERSION`]).
    pub version: u32,
    /// The suite.
    pub suite: String,
    /// sha256 of the request this lock answers (see [`request_hash`]).
    pub request: String,
    /// When the lock was resolved, UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub resolved: String,
    /// The mirrors it was resolved against.
    pub mirrors: Mirrors,
    /// Every installed package, sorted by name.
    pub package: Vec<LockedPackage>,
}

impl Lock {
    /// Read a lock file; `Ok(None)` when it does not exist.
    pub fn load(path: &Path) -> Result<Option<Lock>, LockError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading", path)(e).into()),
        };
        Lock::parse(&text, path).map(Some)
    }

    /// Parse and check a lock's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Lock, LockError> {
        let bad = |detail: String, hint: &'static str| LockError::Bad {
            path: path.to_owned(),
            detail,
            hint,
        };
        const REGENERATE: &str = "regenerate it with `cairn lock DEFINITION --update`";
        #[derive(Deserialize)]
        struct Version {
            version: Option<u32>,
        }
        match toml::from_str::<Version>(text) {
            Ok(Version {
                version: Some(LOCK_VERSION),
            }) => {}
            Ok(Version { version: Some(v) }) if v < LOCK_VERSION => {
                return Err(LockError::OldFormat {
                    path: path.to_owned(),
                    version: v,
                })
            }
            Ok(Version { version: Some(v) }) => {
                return Err(bad(
                    format!("lock format {v} is newer than this Cairn reads ({LOCK_VERSION})"),
                    "use the Cairn that wrote it, or regenerate it with `cairn lock DEFINITION --update`",
                ))
            }
            Ok(Version { version: None }) => return Err(bad("no `version` key".into(), REGENERATE)),
            Err(e) => return Err(bad(e.to_string(), REGENERATE)),
        }
        let lock: Lock = toml::from_str(text).map_err(|e| bad(e.to_string(), REGENERATE))?;
        lock.check().map_err(|d| bad(d, REGENERATE))?;
        Ok(lock)
    }

    /// Every value a lock holds, checked.
    fn check(&self) -> Result<(), String> {
        if !valid_package_name(&self.suite) {
            return Err(format!("suite {:?} is not a suite name", self.suite));
        }
        if self.request.len() != 64 || !self.request.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("request is not a sha256".into());
        }
        if cairn_signing::time::parse_utc(&self.resolved).is_none() {
            return Err(format!(
                "resolved {:?} is not a UTC time like 2026-12-02T07:40:12Z",
                self.resolved
            ));
        }
        for m in [&self.mirrors.main, &self.mirrors.security] {
            crate::definition::check_source_url(m)?;
        }
        if self.package.is_empty() {
            return Err("no packages".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.package {
            p.check()?;
            if !seen.insert(&p.name) {
                return Err(format!("package {:?} is listed twice", p.name));
            }
        }
        Ok(())
    }

    /// The file's text: a comment header, then TOML.
    pub fn render(&self) -> String {
        let body = toml::to_string(self).expect("a lock always serializes");
        format!(
            "# Generated by `cairn lock`: the exact Debian packages of this image.\n\
             # Commit it next to the definition; refresh with `cairn lock DEFINITION --update`.\n\n{body}"
        )
    }

    /// Name → package.
    pub fn by_name(&self) -> BTreeMap<&str, &LockedPackage> {
        self.package.iter().map(|p| (p.name.as_str(), p)).collect()
    }

    /// `resolved` in the form dated snapshot archives use (`20261202T074012Z`).
    pub fn snapshot_stamp(&self) -> String {
        self.resolved.replace(['-', ':'], "")
    }
}

/// Format a Unix time as `YYYY-MM-DDTHH:MM:SSZ`.
pub use cairn_signing::time::format_utc;

/// sha256 of the package request: suite, components, kernel package, and the requested
/// plus implied packages, sorted. A lock answers one request.
pub fn request_hash(spec: &DebianSpec) -> String {
    let text = format!(
        "suite={}\ncomponents={}\npackages={}\n",
        spec.suite,
        spec.components.join(","),
        include_list(spec).join(",")
    );
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The requested packages: the definition's, the kernel and [`IMPLIED_PACKAGES`], sorted.
pub fn include_list(spec: &DebianSpec) -> Vec<String> {
    let mut v: Vec<String> = spec.packages.clone();
    v.push(spec.kernel_package.clone());
    v.extend(IMPLIED_PACKAGES.iter().map(|s| s.to_string()));
    v.sort();
    v.dedup();
    v
}

/// One line of what changed between two locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Move {
    /// A package moved to another version (or its file changed).
    Updated {
        /// Name.
        name: String,
        /// Old version.
        from: String,
        /// New version.
        to: String,
    },
    /// A package is new.
    Added {
        /// Name.
        name: String,
        /// Version.
        version: String,
    },
    /// A package is gone.
    Removed {
        /// Name.
        name: String,
        /// Version.
        version: String,
    },
}

impl std::fmt::Display for Move {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Move::Updated { name, from, to } if from == to => {
                write!(f, "Changed  {name} {from} (another file under the same version)")
            }
            Move::Updated { name, from, to } => write!(f, "Updating {name} {from} -> {to}"),
            Move::Added { name, version } => write!(f, "Adding   {name} {version}"),
            Move::Removed { name, version } => write!(f, "Removing {name} {version}"),
        }
    }
}

/// What moved from `old` to `new`, by package name.
pub fn diff(old: &Lock, new: &Lock) -> Vec<Move> {
    let (a, b) = (old.by_name(), new.by_name());
    let mut moves = Vec::new();
    for (name, p) in &a {
        match b.get(name) {
            None => moves.push(Move::Removed {
                name: name.to_string(),
                version: p.version.clone(),
            }),
            Some(q) if q.version != p.version || q.sha256 != p.sha256 => moves.push(Move::Updated {
                name: name.to_string(),
                from: p.version.clone(),
                to: q.version.clone(),
            }),
            _ => {}
        }
    }
    for (name, q) in &b {
        if !a.contains_key(name) {
            moves.push(Move::Added {
                name: name.to_string(),
                version: q.version.clone(),
            });
        }
    }
    moves.sort_by(|x, y| move_name(x).cmp(move_name(y)));
    moves
}

fn move_name(m: &Move) -> &str {
    match m {
        Move::Updated { name, .. } | Move::Added { name, .. } | Move::Removed { name, .. } => name,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Lock {
        Lock {
            version: LOCK_VERSION,
            suite: "bookworm".into(),
            request: "ab".repeat(32),
            resolved: "2026-12-02T07:40:12Z".into(),
            mirrors: Mirrors {
                main: "http://m/debian".into(),
                security: "http://m/debian-security".into(),
            },
            package: vec![
                LockedPackage {
                    name: "base-files".into(),
                    version: "12.4+deb12u5".into(),
                    architecture: "amd64".into(),
                    size: 70_000,
                    sha256: "00".repeat(32),
                    archive: Archive::Main,
                    path: "pool/main/b/base-files/base-files_12.4+deb12u5_amd64.deb".into(),
                },
                LockedPackage {
                    name: "libc6".into(),
                    version: "1:2.36-9+deb12u4".into(),
                    architecture: "amd64".into(),
                    size: 2_000_000,
                    sha256: "11".repeat(32),
                    archive: Archive::Security,
                    path: "pool/updates/main/g/glibc/libc6_2.36-9+deb12u4_amd64.deb".into(),
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let lock = sample();
        let p = Path::new("cairn.lock");
        assert_eq!(Lock::parse(&lock.render(), p).unwrap(), lock);
        assert_eq!(lock.package[1].deb_file_name(), "libc6_1%3a2.36-9+deb12u4_amd64.deb");
        assert_eq!(lock.snapshot_stamp(), "20261202T074012Z");
        let dir = tempfile::tempdir().unwrap();
        assert!(Lock::load(&dir.path().join("none")).unwrap().is_none());
    }

    #[test]
    fn hostile_values_are_refused() {
        let p = Path::new("x/cairn.lock");
        type Edit = Box<dyn Fn(&mut Lock)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "path",
                Box::new(|l| l.package[0].path = "pool/../../etc/passwd.deb".into()),
            ),
            ("path", Box::new(|l| l.package[0].path = "/etc/x.deb".into())),
            ("path", Box::new(|l| l.package[0].path = "pool/main/a\nb.deb".into())),
            ("path", Box::new(|l| l.package[0].path = "pool/main/a/./b.deb".into())),
            (
                "not a Debian package name",
                Box::new(|l| l.package[0].name = "a,b".into()),
            ),
            (
                "not a Debian package name",
                Box::new(|l| l.package[0].name = "-x".into()),
            ),
            ("version", Box::new(|l| l.package[0].version = "1.0\0".into())),
            ("version", Box::new(|l| l.package[0].version = "1 2".into())),
            ("architecture", Box::new(|l| l.package[0].architecture = "../x".into())),
            ("sha256", Box::new(|l| l.package[0].sha256 = "AB".repeat(32))),
            ("size", Box::new(|l| l.package[0].size = 0)),
            ("size", Box::new(|l| l.package[0].size = MAX_DEB_SIZE + 1)),
            ("listed twice", Box::new(|l| l.package[1].name = "base-files".into())),
            ("resolved", Box::new(|l| l.resolved = "yesterday".into())),
            ("resolved", Box::new(|l| l.resolved = "2026-13-02T07:40:12Z".into())),
            ("mirror", Box::new(|l| l.mirrors.main = "http://m/\ndeb".into())),
            ("suite", Box::new(|l| l.suite = "a b".into())),
        ];
        for (want, edit) in cases {
            let mut l = sample();
            edit(&mut l);
            let text = l.render();
            let e = Lock::parse(&text, p).unwrap_err().to_string();
            assert!(e.contains(want) && e.starts_with("x/cairn.lock: "), "{want}: {e}");
        }
    }

    #[test]
    fn old_and_new_formats_say_what_to_do() {
        let p = Path::new("cairn.lock");
        let e = Lock::parse("version = 1\nsuite = \"bookworm\"\n", p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lock format 1") && e.contains("plain `cairn build` re-resolves"),
            "{e}"
        );
        let e = Lock::parse("version = 3\n", p).unwrap_err().to_string();
        assert!(e.contains("newer than this Cairn"), "{e}");
        let e = Lock::parse("version = 2\nsuite = 3\n", p).unwrap_err().to_string();
        assert!(e.contains("regenerate"), "{e}");
    }

    #[test]
    fn diff_names_every_move() {
        let old = sample();
        let mut new = sample();
        new.package[0].version = "12.4+deb12u6".into();
        new.package.remove(1);
        new.package.push(LockedPackage {
            name: "zstd".into(),
            ..old.package[0].clone()
        });
        let moves: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(
            moves,
            [
                "Updating base-files 12.4+deb12u5 -> 12.4+deb12u6",
                "Removing libc6 1:2.36-9+deb12u4",
                "Adding   zstd 12.4+deb12u5"
            ]
        );
        assert!(diff(&old, &old).is_empty());
    }
}
