//! The package store: every `.deb` a build used, kept by its sha256, and the apt repositories
//! made from it.
//!
//! * **Store** (`$CAIRN_CACHE_DIR/packages/<sha256>.deb`): content-addressed, so two locks that
//!   share a package share its file, a file is never replaced by another, and a download lands
//!   under its name only after its size and sha256 matched the lock (temp file, then rename;
//!   two builds fetching the same package at once both succeed). `<sha256>.control` beside it
//!   caches the package's control paragraph (derived data; rebuilt when missing).
//! * **Fetching** ([`fetch`]): a package is looked up by its archive path (`pool/…`) in each
//!   [`PackageSource`] in turn, then in the mirrors, then in the fallback sources. Nothing a
//!   source says is trusted: the size and sha256 come from the lock.
//! * **Repository** ([`write_repo`]): a flat apt repository of exactly a set of locked
//!   packages: `pool/…` (the archives' own paths, so main and security never collide),
//!   `Packages` and `Release` at the top, usable as
//!   `deb [trusted=yes] URL ./`. Builds install from one made in their work directory, so an
//!   online and an offline build of a lock install the very same bytes the same way;
//!   `cairn store export` writes one for a USB stick or a static web server.
//!
//! Layout of an exported store (`cairn store export LOCK... --to DIR`):
//!
//! | path | content |
//! |---|---|
//! | `pool/main/…`, `pool/updates/main/…` | the `.deb` files, at their archive paths |
//! | `Packages` | one paragraph per package: its control fields + `Filename`, `Size`, `SHA256` |
//! | `Release` | suite and codename, architectures, and the sha256 of `Packages` |
//! | `locks/<sha256>.lock` | the locks it was exported for (informational) |

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::definition::PackageSource;
use crate::ioerr::{io_err, IoError};
use crate::packages::lock::{LockedPackage, Mirrors};

/// Problems with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// IO on a named file.
    #[error(transparent)]
    Io(#[from] IoError),
    /// `dpkg-deb` could not read a package.
    #[error("reading the control fields of {path} with dpkg-deb: {detail}")]
    Control {
        /// The `.deb`.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A stored file no longer matches its name.
    #[error("{path} does not match its sha256 (the store is damaged)\n  hint: delete the file; the next build fetches it again")]
    Damaged {
        /// The file.
        path: PathBuf,
    },
    /// An export target that is not a store.
    #[error("{0} is not empty and holds no Packages file: refusing to write a store into it\n  hint: name an empty directory or an earlier export")]
    NotAStore(PathBuf),
}

/// One package that could not be had, and why (the last source's answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unobtainable {
    /// The package.
    pub package: LockedPackage,
    /// What the sources said.
    pub why: String,
}

impl std::fmt::Display for Unobtainable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.package.describe(), self.why)
    }
}

/// Where packages may come from, in the order they are tried.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Package stores, tried first.
    pub stores: Vec<PackageSource>,
    /// The Debian mirrors (none when building from package stores alone).
    pub mirrors: Option<Mirrors>,
    /// Tried last, e.g. a dated snapshot archive (`{resolved}` already filled in).
    pub fallback: Vec<PackageSource>,
}

impl Sources {
    /// Every location to try for `p`, in order.
    pub fn locations(&self, p: &LockedPackage) -> Vec<String> {
        let mut v = Vec::new();
        // A local file by its path; a remote one by its URL, percent-encoded.
        let url = |u: &str| match u.strip_prefix("file://").or_else(|| u.strip_prefix("file:")) {
            Some(dir) => Path::new(dir).join(&p.path).display().to_string(),
            None => format!("{u}/{}", url_path(&p.path)),
        };
        let under = |s: &PackageSource| match s {
            PackageSource::Dir(d) => d.join(&p.path).display().to_string(),
            PackageSource::Url(u) => url(u),
        };
        v.extend(self.stores.iter().map(under));
        if let Some(m) = &self.mirrors {
            v.push(url(m.url(p.archive)));
        }
        v.extend(self.fallback.iter().map(under));
        v
    }

    /// A short description for progress lines.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.stores.iter().map(ToString::to_string).collect();
        if let Some(m) = &self.mirrors {
            parts.push(m.main.clone());
            parts.push(m.security.clone());
        }
        parts.extend(self.fallback.iter().map(|s| format!("{s} (fallback)")));
        parts.join(", ")
    }
}

/// Percent-encode everything in a path but letters, digits and `/._-` (for URLs and apt's
/// `copy://` sources).
pub fn url_path(p: &str) -> String {
    let mut s = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"/._-".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The content-addressed package store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A name for a temporary file no other process or thread uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}{}-{}-{nanos:x}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

impl Store {
    /// The store under `dir` (created when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { root: dir.into() }
    }

    /// Its directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the package with this sha256 lives.
    pub fn deb(&self, sha256: &str) -> PathBuf {
        self.root.join(format!("{sha256}.deb"))
    }

    /// Whether the store holds `p` (by name and size; contents are checked where they are used).
    pub fn has(&self, p: &LockedPackage) -> bool {
        fs::metadata(self.deb(&p.sha256)).is_ok_and(|m| m.is_file() && m.len() == p.size)
    }

    /// Get every package of `want` the store lacks from `sources` (four at a time). Returns
    /// how many were fetched and the packages no source had.
    pub fn fetch(
        &self,
        want: &[LockedPackage],
        sources: &Sources,
        log: &mut dyn FnMut(&str),
    ) -> Result<(usize, Vec<Unobtainable>), StoreError> {
        fs::create_dir_all(&self.root).map_err(io_err("creating", &self.root))?;
        let missing: Vec<&LockedPackage> = want.iter().filter(|p| !self.has(p)).collect();
        if missing.is_empty() {
            return Ok((0, Vec::new()));
        }
        let bytes: u64 = missing.iter().map(|p| p.size).sum();
        log(&format!(
            "packages: fetching {} of {} ({}) from {}",
            missing.len(),
            want.len(),
            crate::build::human(bytes),
            sources.describe()
        ));
        let queue = Mutex::new(missing.into_iter());
        let failed = Mutex::new(Vec::new());
        let fetched = AtomicUsize::new(0);
        let io_failure: Mutex<Option<StoreError>> = Mutex::new(None);
        // A package of a few hundred MiB over a slow link, not an endless trickle.
        let agent = http_agent(std::time::Duration::from_secs(30 * 60));
        let started = std::time::Instant::now();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                    let Some(p) = next else { break };
                    let mut why = String::from("no source to try");
                    let mut got = false;
                    for loc in sources.locations(p) {
                        match self.fetch_one(p, &loc, &agent) {
                            Ok(()) => {
                                got = true;
                                break;
                            }
                            Err(FetchError::Io(e)) => {
                                *io_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.into());
                                return;
                            }
                            Err(FetchError::Source(w)) => why = format!("{w} ({loc})"),
                        }
                    }
                    if got {
                        fetched.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.lock().unwrap_or_else(|e| e.into_inner()).push(Unobtainable {
                            package: p.clone(),
                            why,
                        });
                    }
                });
            }
        });
        if let Some(e) = io_failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        let mut failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
        failed.sort_by(|a, b| a.package.name.cmp(&b.package.name));
        let n = fetched.into_inner();
        log(&format!(
            "packages: fetched {n} in {:.1}s{}",
            started.elapsed().as_secs_f64(),
            if failed.is_empty() {
                String::new()
            } else {
                format!(", {} not to be had", failed.len())
            }
        ));
        Ok((n, failed))
    }

    /// Fetch `p` from one location into the store.
    fn fetch_one(&self, p: &LockedPackage, loc: &str, agent: &ureq::Agent) -> Result<(), FetchError> {
        let mut reader: Box<dyn Read> = if loc.starts_with("http://") || loc.starts_with("https://") {
            match agent.get(loc).call() {
                Ok(r) => Box::new(r.into_body().into_reader()),
                Err(ureq::Error::StatusCode(code)) => return Err(FetchError::Source(format!("HTTP {code}"))),
                Err(e) => return Err(FetchError::Source(e.to_string())),
            }
        } else {
            let path = loc
                .strip_prefix("file://")
                .or_else(|| loc.strip_prefix("file:"))
                .unwrap_or(loc);
            match fs::File::open(path) {
                Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => Box::new(f),
                Ok(_) => return Err(FetchError::Source("not a regular file".into())),
                Err(e) => return Err(FetchError::Source(e.to_string())),
            }
        };
        let tmp = self.root.join(unique(".fetch-"));
        let result = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| FetchError::Io(io_err("creating", &tmp)(e)))?;
            let mut h = Sha256::new();
            let mut n = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let k = reader.read(&mut buf).map_err(|e| FetchError::Source(e.to_string()))?;
                if k == 0 {
                    break;
                }
                n += k as u64;
                if n > p.size {
                    return Err(FetchError::Source(format!("larger than the lock's {} bytes", p.size)));
                }
                h.update(&buf[..k]);
                f.write_all(&buf[..k])
                    .map_err(|e| FetchError::Io(io_err("writing", &tmp)(e)))?;
            }
            if n != p.size {
                return Err(FetchError::Source(format!("{n} bytes, the lock says {}", p.size)));
            }
            let got = hex::encode(h.finalize());
            if got != p.sha256 {
                return Err(FetchError::Source(format!("sha256 {got}, the lock says {}", p.sha256)));
            }
            f.sync_all().map_err(|e| FetchError::Io(io_err("writing", &tmp)(e)))?;
            let to = self.deb(&p.sha256);
            fs::rename(&tmp, &to).map_err(|e| FetchError::Io(io_err("moving into the store", &to)(e)))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Check a stored package's sha256 against `p`.
    pub fn verify(&self, p: &LockedPackage) -> Result<(), StoreError> {
        let path = self.deb(&p.sha256);
        if sha256_file(&path)? != p.sha256 {
            return Err(StoreError::Damaged { path });
        }
        Ok(())
    }

    /// The control paragraph of a stored package (cached beside it).
    pub fn control(&self, p: &LockedPackage) -> Result<String, StoreError> {
        let cached = self.root.join(format!("{}.control", p.sha256));
        if let Ok(t) = fs::read_to_string(&cached) {
            return Ok(t);
        }
        let deb = self.deb(&p.sha256);
        let o = std::process::Command::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| StoreError::Control {
                path: deb.clone(),
                detail: format!("{e} (apt-get install dpkg)"),
            })?;
        if !o.status.success() {
            return Err(StoreError::Control {
                path: deb,
                detail: String::from_utf8_lossy(&o.stderr).trim().to_string(),
            });
        }
        let text = String::from_utf8(o.stdout).map_err(|_| StoreError::Control {
            path: deb.clone(),
            detail: "the control file is not UTF-8".into(),
        })?;
        let fields = control_fields(&text);
        let same = |k: &str, v: &str| fields.get(k).map(String::as_str) == Some(v);
        if !same("Package", &p.name) || !same("Version", &p.version) || !same("Architecture", &p.architecture) {
            return Err(StoreError::Control {
                path: deb,
                detail: format!("it is not {}", p.describe()),
            });
        }
        let text = format!("{}\n", text.trim_end());
        let tmp = self.root.join(unique(".control-"));
        fs::write(&tmp, &text).map_err(io_err("writing", &tmp))?;
        fs::rename(&tmp, &cached).map_err(io_err("writing", &cached))?;
        Ok(text)
    }
}

enum FetchError {
    /// The source did not have it (or had something else); try the next.
    Source(String),
    /// Local IO failed: stop.
    Io(IoError),
}

/// A control paragraph's top-level fields (continuation lines dropped).
fn control_fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with([' ', '\t']))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, IoError> {
    let mut f = fs::File::open(path).map_err(io_err("opening", path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io_err("reading", path))?;
    Ok(hex::encode(h.finalize()))
}

/// How a repository gets its `.deb` files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Hard links into the store where possible (a build's own scratch repository).
    Link,
    /// Copies, written atomically and checked (an export that leaves this machine).
    Copy,
}

/// Write a flat apt repository of `packages` (all in `store`) into `dir`. Each package's
/// sha256 is checked on the way. The index files are written last, so a reader never sees
/// an index naming a file that is not there yet.
pub fn write_repo(
    store: &Store,
    packages: &[LockedPackage],
    suite: &str,
    dir: &Path,
    placement: Placement,
) -> Result<(), StoreError> {
    let mut sorted: Vec<&LockedPackage> = packages.iter().collect();
    sorted.sort();
    sorted.dedup_by(|a, b| a.sha256 == b.sha256 && a.path == b.path);
    let mut index = String::new();
    for p in &sorted {
        let from = store.deb(&p.sha256);
        let to = dir.join(&p.path);
        let parent = to.parent().expect("a pool path has a directory");
        fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        match placement {
            Placement::Link => {
                store.verify(p)?;
                let _ = fs::remove_file(&to);
                if fs::hard_link(&from, &to).is_err() {
                    fs::copy(&from, &to).map_err(io_err("copying to", &to))?;
                }
            }
            Placement::Copy => {
                let present =
                    fs::metadata(&to).is_ok_and(|m| m.len() == p.size) && sha256_file(&to).is_ok_and(|h| h == p.sha256);
                if !present {
                    store.verify(p)?;
                    let tmp = parent.join(unique(".part-"));
                    fs::copy(&from, &tmp).map_err(io_err("copying to", &tmp))?;
                    if sha256_file(&tmp)? != p.sha256 {
                        let _ = fs::remove_file(&tmp);
                        return Err(StoreError::Damaged { path: to });
                    }
                    fs::rename(&tmp, &to).map_err(io_err("writing", &to))?;
                }
            }
        }
        index.push_str(&store.control(p)?);
        index.push_str(&format!(
            "Filename: {}\nSize: {}\nSHA256: {}\n\n",
            p.path, p.size, p.sha256
        ));
    }
    let packages_sha = hex::encode(Sha256::digest(index.as_bytes()));
    let release = format!(
        "Origin: Cairn\nLabel: Cairn package store\nSuite: {suite}\nCodename: {suite}\n\
         Architectures: amd64 all\nDescription: the Debian packages of Cairn locks (cairn store export)\n\
         SHA256:\n {packages_sha} {} Packages\n",
        index.len()
    );
    for (name, text) in [("Packages", index), ("Release", release)] {
        let path = dir.join(name);
        cairn_signing::write_file_atomic(&path, text.as_bytes(), 0o644).map_err(io_err("writing", &path))?;
    }
    Ok(())
}

/// What an export wrote.
#[derive(Debug)]
pub struct Exported {
    /// Packages in the repository.
    pub packages: usize,
    /// Their total size.
    pub bytes: u64,
    /// Files removed because no lock names them any more.
    pub removed: usize,
}

/// `cairn store export`: a repository of every package of `locks` in `dir`, which must be
/// empty, missing, or an earlier export (whose pool files no given lock names are removed).
pub fn export(
    store: &Store,
    locks: &[(PathBuf, crate::packages::lock::Lock)],
    dir: &Path,
) -> Result<Exported, StoreError> {
    if dir.exists() {
        let empty = fs::read_dir(dir).map_err(io_err("listing", dir))?.next().is_none();
        if !empty && !dir.join("Packages").is_file() {
            return Err(StoreError::NotAStore(dir.to_owned()));
        }
    }
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let mut all: Vec<LockedPackage> = locks.iter().flat_map(|(_, l)| l.package.iter().cloned()).collect();
    all.sort();
    all.dedup();
    let suite = locks.first().map(|(_, l)| l.suite.as_str()).unwrap_or("bookworm");
    write_repo(store, &all, suite, dir, Placement::Copy)?;
    let locks_dir = dir.join("locks");
    fs::create_dir_all(&locks_dir).map_err(io_err("creating", &locks_dir))?;
    for (_, l) in locks {
        let text = l.render();
        let path = locks_dir.join(format!("{}.lock", hex::encode(Sha256::digest(text.as_bytes()))));
        cairn_signing::write_file_atomic(&path, text.as_bytes(), 0o644).map_err(io_err("writing", &path))?;
    }
    // Drop pool files no lock names (an earlier export of other locks).
    let keep: std::collections::HashSet<PathBuf> = all.iter().map(|p| dir.join(&p.path)).collect();
    let mut removed = 0;
    let mut stack = vec![dir.join("pool")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let e = e.map_err(io_err("listing", &d))?;
            let path = e.path();
            let ft = e.file_type().map_err(io_err("reading", &path))?;
            if ft.is_dir() {
                stack.push(path);
            } else if !keep.contains(&path) {
                fs::remove_file(&path).map_err(io_err("removing", &path))?;
                removed += 1;
            }
        }
    }
    Ok(Exported {
        packages: all.len(),
        bytes: all.iter().map(|p| p.size).sum(),
        removed,
    })
}

/// The HTTP client packages are fetched with: the platform's trusted roots for https
/// mirrors, at most 30 s to connect, and the whole of one transfer bounded by `deadline`.
fn http_agent(deadline: std::time::Duration) -> ureq::Agent {
    use ureq::tls::{RootCerts, TlsConfig};
    ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(30).min(deadline)))
        .timeout_global(Some(deadline))
        .tls_config(TlsConfig::builder().root_certs(RootCerts::PlatformVerifier).build())
        .build()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::lock::Archive;

    #[test]
    fn locations_in_order_and_encoded() {
        let p = LockedPackage {
            name: "libc6".into(),
            version: "2.36-9+deb12u4".into(),
            architecture: "amd64".into(),
            size: 1,
            sha256: "00".repeat(32),
            archive: Archive::Security,
            path: "pool/updates/main/g/glibc/libc6_2.36-9+deb12u4_amd64.deb".into(),
        };
        let s = Sources {
            stores: vec![
                PackageSource::Dir("/media/usb".into()),
                PackageSource::Url("http://store".into()),
                PackageSource::Url("file:///srv/store".into()),
            ],
            mirrors: Some(Mirrors {
                main: "http://m/debian".into(),
                security: "http://m/debian-security".into(),
            }),
            fallback: vec![PackageSource::Url(
                "http://snap/debian-security/20261202T000000Z".into(),
            )],
        };
        assert_eq!(
            s.locations(&p),
            [
                "/media/usb/pool/updates/main/g/glibc/libc6_2.36-9+deb12u4_amd64.deb",
                "http://store/pool/updates/main/g/glibc/libc6_2.36-9%2Bdeb12u4_amd64.deb",
                "/srv/store/pool/updates/main/g/glibc/libc6_2.36-9+deb12u4_amd64.deb",
                "http://m/debian-security/pool/updates/main/g/glibc/libc6_2.36-9%2Bdeb12u4_amd64.deb",
                "http://snap/debian-security/20261202T000000Z/pool/updates/main/g/glibc/libc6_2.36-9%2Bdeb12u4_amd64.deb",
            ]
        );
    }

    #[test]
    fn fetch_checks_size_and_hash_and_keeps_nothing_wrong() {
        let src = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let store = Store::new(cache.path().join("packages"));
        let body = b"not really a deb".to_vec();
        let path = "pool/main/h/hello/hello_1.0_all.deb";
        fs::create_dir_all(src.path().join("pool/main/h/hello")).unwrap();
        fs::write(src.path().join(path), &body).unwrap();
        let good = LockedPackage {
            name: "hello".into(),
            version: "1.0".into(),
            architecture: "all".into(),
            size: body.len() as u64,
            sha256: hex::encode(Sha256::digest(&body)),
            archive: Archive::Main,
            path: path.into(),
        };
        let sources = Sources {
            stores: vec![
                PackageSource::Dir(src.path().join("nothing-here")),
                PackageSource::Dir(src.path().to_owned()),
            ],
            ..Sources::default()
        };
        let mut wrong_hash = good.clone();
        wrong_hash.name = "hello-bad".into();
        wrong_hash.sha256 = "11".repeat(32);
        let mut wrong_size = good.clone();
        wrong_size.name = "hello-short".into();
        wrong_size.size -= 1;
        wrong_size.sha256 = "22".repeat(32);
        let mut lines = Vec::new();
        let (n, failed) = store
            .fetch(&[good.clone(), wrong_hash, wrong_size], &sources, &mut |l| {
                lines.push(l.to_string())
            })
            .unwrap();
        assert_eq!(n, 1);
        let why: Vec<String> = failed.iter().map(ToString::to_string).collect();
        assert!(why[0].starts_with("hello-bad 1.0 (all): sha256 "), "{why:?}");
        assert!(why[1].contains("larger than the lock's"), "{why:?}");
        assert!(store.has(&good));
        store.verify(&good).unwrap();
        // Only the good package is in the store: no temp files, no wrong content.
        let names: Vec<String> = fs::read_dir(store.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [format!("{}.deb", good.sha256)]);
        // A second fetch has nothing to do.
        let (n, failed) = store.fetch(&[good], &sources, &mut |_| {}).unwrap();
        assert_eq!((n, failed.len()), (0, 0));
    }
}
