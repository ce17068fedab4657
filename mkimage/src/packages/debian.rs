//! Debian roots: from a package request to a cached root tarball, through the lock and the
//! package store.
//!
//! 1. **Lock** ([`crate::packages::lock`]): `cairn.lock` beside the definition pins every package. A
//!    build with a lock that answers the request gets exactly those packages; without one (or
//!    when the request changed, or with `cairn lock --update`) apt resolves the request
//!    ([`crate::packages::resolve`]) and the lock is written.
//! 2. **Packages** ([`crate::packages::store`]): every locked `.deb` is fetched into the content-addressed
//!    store by its archive path — from the package stores named with `--package-source` (then
//!    from nothing else), else from the mirrors and the fallback sources — and checked against
//!    the lock's size and sha256.
//! 3. **Follow or refuse**: when some locked package can be had from no source (Debian's
//!    archives drop superseded versions within days), a plain build re-resolves with the old
//!    versions pinned where they are still served, rewrites the lock and lists what moved;
//!    `--locked` refuses and names every package it could not get, writing nothing.
//! 4. **Tree**: mmdebstrap installs from a flat repository made of exactly the locked files
//!    (`deb [trusted=yes] copy://…`, the trust being the lock's sha256), `essential` variant
//!    plus every locked package by name, so online and offline builds of one lock install the
//!    same bytes the same way, byte-identical. A customize hook (`rootfs/customize.sh`) builds
//!    the initrd with dracut inside the tree. The tarball (reproducible with
//!    `SOURCE_DATE_EPOCH`), kernel and initrd are cached under `trees/<key>`, keyed by the
//!    lock's packages, the hook, the dracut configuration and the epoch; a build whose key is
//!    there runs nothing.
//!
//! Everything runs in a scratch directory of the cache that is removed however the build
//! ends; the lock file is written last, after the tree is in the cache.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::definition::{DebianSpec, PackageSource};
use crate::ioerr::{io_err, IoError};
use crate::packages::cache::Cache;
use crate::packages::lock::{self, Lock, LockError, Mirrors, Move, LOCK_VERSION};
use crate::packages::store::{self, Placement, Sources, Store, StoreError, Unobtainable};

/// The customize hook, embedded so `cairn` works from any directory.
pub const CUSTOMIZE_HOOK: &str = include_str!("../../../rootfs/customize.sh");

/// Cairn's dracut module (`rootfs/dracut/95cairn`): the initrd puts the machine-id
/// saved on the state partition where the verified root's `/etc/machine-id` points, and
/// on a live boot from a CD-ROM shows the ISO's root partitions (`formats::iso`).
pub const DRACUT_MODULE: &[(&str, &str, u32)] = &[
    (
        "module-setup.sh",
        include_str!("../../../rootfs/dracut/95cairn/module-setup.sh"),
        0o755,
    ),
    (
        "cairn-machine-id.sh",
        include_str!("../../../rootfs/dracut/95cairn/cairn-machine-id.sh"),
        0o755,
    ),
    (
        "cairn-machine-id.service",
        include_str!("../../../rootfs/dracut/95cairn/cairn-machine-id.service"),
        0o644,
    ),
    (
        "cairn-live-cd.sh",
        include_str!("../../../rootfs/dracut/95cairn/cairn-live-cd.sh"),
        0o755,
    ),
    (
        "90-cairn-live.rules",
        include_str!("../../../rootfs/dracut/95cairn/90-cairn-live.rules"),
        0o644,
    ),
];

/// Problems preparing a Debian root.
#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    /// IO on a named file.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The lock file is unreadable or invalid.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The package store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A requested package is not in the archive.
    #[error("package '{package}' is not in Debian {suite} ({components}) at {mirror}\n  hint: check the name with `apt-cache policy {package}` and fix [root.debian] packages")]
    NoSuchPackage {
        /// The package.
        package: String,
        /// Suite searched.
        suite: String,
        /// Components searched.
        components: String,
        /// The mirror.
        mirror: String,
    },
    /// The mirror did not answer.
    #[error("the Debian mirror {mirror} does not answer: {detail}\n  hint: check the network, or set [root.debian] mirror to one that answers")]
    MirrorUnreachable {
        /// The mirror.
        mirror: String,
        /// What apt said.
        detail: String,
    },
    /// Locked packages no source serves, and the build may not (or cannot) re-resolve.
    #[error("{lock} pins {count} package(s) that no source serves:\n{list}\n  hint: {hint}", count = missing.len(), list = missing.iter().map(|m| format!("    {m}")).collect::<Vec<_>>().join("\n"))]
    Unobtainable {
        /// The lock file.
        lock: String,
        /// Every package that could not be had.
        missing: Vec<Unobtainable>,
        /// What to do.
        hint: String,
    },
    /// `--locked` (or a build from package stores) without a lock that answers the request.
    #[error("{lock}: {why}, and this build may not resolve packages\n  hint: {hint}")]
    NotLocked {
        /// The lock file.
        lock: String,
        /// What is wrong with it.
        why: String,
        /// What to do.
        hint: String,
    },
    /// A tool (apt, dpkg-deb) failed or is missing.
    #[error("{0}")]
    Tool(String),
    /// mmdebstrap failed.
    #[error("mmdebstrap failed ({status}):\n{tail}")]
    Mmdebstrap {
        /// Exit status.
        status: String,
        /// Its last lines of output.
        tail: String,
    },
    /// The tree holds other packages than the lock.
    #[error("the tree mmdebstrap built differs from {lock}: {detail}\n  hint: this is a bug in Cairn; `cairn lock DEFINITION --update` gets a fresh lock")]
    TreeDiffers {
        /// The lock file.
        lock: String,
        /// What differs.
        detail: String,
    },
    /// The tree has no kernel.
    #[error("the root tree has no kernel in /boot; is [root.debian] kernel a kernel image package?")]
    NoKernel,
}

/// Find the Debian mirrors the host's apt uses for `suite`, from one-line `.list` files and
/// deb822 `.sources` files. Falls back to deb.debian.org.
pub fn host_mirrors(suite: &str, apt_dir: &Path) -> Mirrors {
    let mut texts = Vec::new();
    if let Ok(t) = fs::read_to_string(apt_dir.join("sources.list")) {
        texts.push(("list", t));
    }
    if let Ok(rd) = fs::read_dir(apt_dir.join("sources.list.d")) {
        let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let kind = match f.extension().and_then(|e| e.to_str()) {
                Some("list") => "list",
                Some("sources") => "sources",
                _ => continue,
            };
            if let Ok(t) = fs::read_to_string(&f) {
                texts.push((kind, t));
            }
        }
    }
    // (uri, suites) pairs from both formats.
    let mut entries: Vec<(String, Vec<String>)> = Vec::new();
    for (kind, text) in &texts {
        if *kind == "list" {
            for line in text.lines() {
                let mut words = line.split_whitespace().filter(|w| !w.starts_with('['));
                if words.next() != Some("deb") {
                    continue;
                }
                if let (Some(uri), Some(s)) = (words.next(), words.next()) {
                    entries.push((uri.to_string(), vec![s.to_string()]));
                }
            }
        } else {
            for stanza in text.split("\n\n") {
                let field = |name: &str| {
                    stanza.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_string())
                    })
                };
                if field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb")) {
                    if let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) {
                        let suites: Vec<String> = suites.split_whitespace().map(str::to_string).collect();
                        for uri in uris.split_whitespace() {
                            entries.push((uri.to_string(), suites.clone()));
                        }
                    }
                }
            }
        }
    }
    let find = |want: &str| {
        entries
            .iter()
            .find(|(_, s)| s.iter().any(|x| x == want))
            .map(|(u, _)| u.trim_end_matches('/').to_string())
    };
    Mirrors {
        main: find(suite).unwrap_or_else(|| "http://deb.debian.org/debian".into()),
        security: find(&format!("{suite}-security")).unwrap_or_else(|| "http://deb.debian.org/debian-security".into()),
    }
}

/// The mirrors a build uses: the definition's, else the host's apt sources, else
/// deb.debian.org.
pub fn effective_mirrors(spec: &DebianSpec) -> Mirrors {
    let host = host_mirrors(&spec.suite, Path::new("/etc/apt"));
    let pick = |own: &Option<String>, host: String, default: &str| {
        own.clone().unwrap_or_else(|| {
            if crate::definition::check_source_url(&host).is_ok() {
                host
            } else {
                default.to_string()
            }
        })
    };
    Mirrors {
        main: pick(&spec.mirror, host.main, "http://deb.debian.org/debian"),
        security: pick(
            &spec.security_mirror,
            host.security,
            "http://deb.debian.org/debian-security",
        ),
    }
}

/// `/etc/dracut.conf.d/90-cairn.conf`.
pub fn render_dracut_conf(modules: &[String], drivers: &[String]) -> String {
    format!(
        "# Written by Cairn from the image definition's [initrd].\n\
         hostonly=\"no\"\nreproducible=\"yes\"\ncompress=\"zstd\"\n\
         dracutmodules=\" {} \"\nadd_dracutmodules+=\" cairn \"\ndrivers=\" {} \"\n",
        modules.join(" "),
        drivers.join(" ")
    )
}

/// How a build treats the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockMode {
    /// Use the lock; when it is missing, stale or no longer served, re-resolve and rewrite it.
    #[default]
    Follow,
    /// Use the lock as it is or fail (`--locked`); never resolve, never write it.
    Locked,
    /// Resolve the newest versions and rewrite the lock (`cairn lock --update`).
    Update,
}

/// A Debian root ready for the tree stage.
#[derive(Debug)]
pub struct Prepared {
    /// The root tarball (uncompressed).
    pub tar: PathBuf,
    /// The kernel from the tree's /boot.
    pub kernel: PathBuf,
    /// The initrd dracut built in the tree.
    pub initrd: PathBuf,
    /// The lock the tree matches.
    pub lock: Lock,
    /// Whether the tree came from the cache.
    pub cache_hit: bool,
    /// Why the lock file was written, if it was.
    pub lock_written: Option<String>,
    /// What moved against the previous lock, when it was rewritten.
    pub moves: Vec<Move>,
    /// Number of packages fetched by this run.
    pub downloaded: usize,
    /// The cache key.
    pub key: String,
    /// Seconds mmdebstrap took when this tree was built (now, or when it was cached).
    pub build_seconds: f64,
}

/// The inputs besides the lock that make a cached tree.
pub struct TreeInputs<'a> {
    /// dracut modules.
    pub dracut_modules: &'a [String],
    /// initrd drivers.
    pub drivers: &'a [String],
    /// SOURCE_DATE_EPOCH.
    pub epoch: u64,
}

/// The cache key of the tree a lock and its inputs make.
pub fn tree_key(lock: &Lock, inputs: &TreeInputs) -> String {
    let mut h = Sha256::new();
    h.update(b"cairn tree v2\0");
    for p in &lock.package {
        h.update(format!("{} {} {} {}\n", p.name, p.version, p.architecture, p.sha256));
    }
    h.update(CUSTOMIZE_HOOK.as_bytes());
    for (name, text, mode) in DRACUT_MODULE {
        h.update(format!("{name} {mode:o} {}\n", text.len()));
        h.update(text.as_bytes());
    }
    h.update(render_dracut_conf(inputs.dracut_modules, inputs.drivers).as_bytes());
    h.update(inputs.epoch.to_le_bytes());
    hex::encode(&h.finalize()[..16])
}

/// What the lock file says about the request, before anything is fetched.
#[derive(Debug)]
pub enum LockState {
    /// It answers the request.
    Current(Lock),
    /// It must be resolved anew, and why; with the old lock when there is one to pin from.
    Stale(String, Option<Lock>),
}

/// Read `spec`'s lock and compare it with the request.
pub fn lock_state(spec: &DebianSpec) -> Result<LockState, DebianError> {
    match Lock::load(&spec.lock) {
        Ok(Some(l)) if l.request == lock::request_hash(spec) => Ok(LockState::Current(l)),
        Ok(Some(l)) => Ok(LockState::Stale("the package request changed".into(), Some(l))),
        Ok(None) => Ok(LockState::Stale("there is no lock yet".into(), None)),
        Err(LockError::OldFormat { .. }) => Ok(LockState::Stale(
            "it is in an older format, which does not record where packages live".into(),
            None,
        )),
        Err(e) => Err(e.into()),
    }
}

/// Where a build takes packages from.
#[derive(Debug, Clone, Default)]
pub struct PackageOptions {
    /// Package stores from the command line; they replace the definition's.
    pub sources: Vec<PackageSource>,
}

/// Prepare the root: the lock, the packages, then the tree (from the cache when it is there).
pub fn prepare(
    spec: &DebianSpec,
    definition: &Path,
    inputs: &TreeInputs,
    mode: LockMode,
    packages: &PackageOptions,
    log: &mut dyn FnMut(&str),
) -> Result<Prepared, DebianError> {
    let cache = Cache::open();
    let _shared = cache.lock_shared(log)?;
    let work = cache.work_dir()?;
    let store = cache.store();
    let lock_name = spec.lock.display().to_string();
    let stores = if packages.sources.is_empty() {
        spec.package_sources.clone()
    } else {
        packages.sources.clone()
    };
    let offline = !stores.is_empty();
    let mirrors = effective_mirrors(spec);
    let sources_for = |lock: &Lock| sources(spec, &stores, &mirrors, lock);
    let update_hint = format!(
        "run `cairn lock {} --update`, or build without --locked",
        definition.display()
    );

    let state = match mode {
        LockMode::Update => LockState::Stale("--update".into(), Lock::load(&spec.lock).ok().flatten()),
        _ => lock_state(spec)?,
    };
    // The lock to build, why it was (re)written, and the lock it replaced.
    let (lock, rewritten, old, downloaded) = match state {
        LockState::Current(lock) => {
            let key = tree_key(&lock, inputs);
            if let Some(hit) = cached_tree(&cache, &key, &lock) {
                log(&format!("debian: cached tree {key} matches {lock_name}"));
                return Ok(hit);
            }
            let (n, missing) = store.fetch(&lock.package, &sources_for(&lock), log)?;
            if missing.is_empty() {
                (lock, None, None, n)
            } else if mode == LockMode::Locked || offline {
                return Err(DebianError::Unobtainable {
                    lock: lock_name,
                    missing,
                    hint: if offline {
                        format!(
                            "export a store that holds this lock (`cairn store export {} --to DIR`) and build from it",
                            spec.lock.display()
                        )
                    } else {
                        update_hint
                    },
                });
            } else {
                let why = format!(
                    "no source serves {} of its packages any more ({})",
                    missing.len(),
                    missing
                        .iter()
                        .map(|m| m.package.name.as_str())
                        .take(6)
                        .collect::<Vec<_>>()
                        .join(", ")
                        + if missing.len() > 6 { ", …" } else { "" }
                );
                log(&format!("debian: {lock_name} is stale: {why}; re-resolving"));
                let new = resolve_lock(spec, &mirrors, Some(&lock), work.path(), log)?;
                let (m, missing) = store.fetch(&new.package, &sources_for(&new), log)?;
                fail_if_missing(&lock_name, missing)?;
                (new, Some(why), Some(lock), n + m)
            }
        }
        LockState::Stale(why, old) => {
            if mode == LockMode::Locked || offline {
                return Err(DebianError::NotLocked {
                    lock: lock_name,
                    why,
                    hint: if offline {
                        "a package store only serves the packages of a lock: resolve one online first (`cairn lock DEFINITION`)".into()
                    } else {
                        update_hint
                    },
                });
            }
            log(&format!("debian: resolving {lock_name} ({why})"));
            let pins = if mode == LockMode::Update { None } else { old.as_ref() };
            let new = resolve_lock(spec, &mirrors, pins, work.path(), log)?;
            let (n, missing) = store.fetch(&new.package, &sources_for(&new), log)?;
            fail_if_missing(&lock_name, missing)?;
            (new, Some(why), old, n)
        }
    };

    let key = tree_key(&lock, inputs);
    let mut prepared = match cached_tree(&cache, &key, &lock) {
        Some(hit) => hit,
        None => {
            let built = run_mmdebstrap(spec, &lock, &store, inputs, work.path(), log)?;
            built.check_against(&lock, &lock_name)?;
            built.into_cache(&cache, &lock, &key)?
        }
    };
    prepared.downloaded = downloaded;
    if let Some(why) = rewritten {
        let moves = old.as_ref().map(|o| lock::diff(o, &lock)).unwrap_or_default();
        // The same packages again (say, --update with nothing new): the file stays as it is.
        let unchanged = old
            .as_ref()
            .is_some_and(|o| o.package == lock.package && o.request == lock.request && o.mirrors == lock.mirrors);
        if unchanged {
            log(&format!("debian: {lock_name} is up to date ({why}): no package moved"));
        } else {
            cairn_signing::write_file_atomic(&spec.lock, lock.render().as_bytes(), 0o644)
                .map_err(io_err("writing", &spec.lock))?;
            let mut block = format!("debian: wrote {lock_name} ({} packages; {why})", lock.package.len());
            if !moves.is_empty() {
                block.push_str(&format!(": {} moved", moves.len()));
                for m in &moves {
                    block.push_str(&format!("\n      {m}"));
                }
            }
            log(&block);
            prepared.lock_written = Some(why);
            prepared.moves = moves;
        }
    }
    Ok(prepared)
}

/// Where a build takes `lock`'s packages from: the package stores alone when there are any;
/// else the mirrors, then the fallback sources with `{resolved}` filled in from the lock.
pub fn sources(spec: &DebianSpec, stores: &[PackageSource], mirrors: &Mirrors, lock: &Lock) -> Sources {
    if !stores.is_empty() {
        return Sources {
            stores: stores.to_vec(),
            mirrors: None,
            fallback: Vec::new(),
        };
    }
    Sources {
        stores: Vec::new(),
        mirrors: Some(mirrors.clone()),
        fallback: spec
            .fallback_sources
            .iter()
            .map(|s| match s {
                PackageSource::Url(u) => PackageSource::Url(u.replace("{resolved}", &lock.snapshot_stamp())),
                PackageSource::Dir(d) => PackageSource::Dir(PathBuf::from(
                    d.display().to_string().replace("{resolved}", &lock.snapshot_stamp()),
                )),
            })
            .collect(),
    }
}

fn fail_if_missing(lock: &str, missing: Vec<Unobtainable>) -> Result<(), DebianError> {
    if missing.is_empty() {
        return Ok(());
    }
    Err(DebianError::Unobtainable {
        lock: lock.to_string(),
        missing,
        hint: "the mirror lists packages it does not serve (it may be updating): try again later, or set [root.debian] mirror to another".into(),
    })
}

/// Resolve the request into a new lock.
fn resolve_lock(
    spec: &DebianSpec,
    mirrors: &Mirrors,
    pins: Option<&Lock>,
    work: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Lock, DebianError> {
    let package = crate::packages::resolve::resolve(spec, mirrors, pins, work, log)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let lock = Lock {
        version: LOCK_VERSION,
        suite: spec.suite.clone(),
        request: lock::request_hash(spec),
        resolved: lock::format_utc(now),
        mirrors: mirrors.clone(),
        package,
    };
    // What apt's indexes said must make a valid lock too.
    Lock::parse(&lock.render(), &spec.lock)?;
    Ok(lock)
}

/// A complete cached tree for `key`, if there is one.
fn cached_tree(cache: &Cache, key: &str, lock: &Lock) -> Option<Prepared> {
    let dir = cache.trees().join(key);
    if !dir.join("complete").exists() {
        return None;
    }
    let build_seconds = fs::read_to_string(dir.join("build-seconds"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0.0);
    Some(Prepared {
        tar: dir.join("root.tar"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        lock: lock.clone(),
        cache_hit: true,
        lock_written: None,
        moves: Vec::new(),
        downloaded: 0,
        key: key.to_string(),
        build_seconds,
    })
}

/// An mmdebstrap run's results in the build's work directory.
struct Built {
    work: PathBuf,
    installed: Vec<(String, String, String)>,
    seconds: f64,
}

impl Built {
    /// The tree must hold exactly the lock's packages.
    fn check_against(&self, lock: &Lock, lock_name: &str) -> Result<(), DebianError> {
        let want: BTreeMap<&str, (&str, &str)> = lock
            .package
            .iter()
            .map(|p| (p.name.as_str(), (p.version.as_str(), p.architecture.as_str())))
            .collect();
        let have: BTreeMap<&str, (&str, &str)> = self
            .installed
            .iter()
            .map(|(n, v, a)| (n.as_str(), (v.as_str(), a.as_str())))
            .collect();
        let mut diffs = Vec::new();
        for (n, v) in &want {
            match have.get(n) {
                None => diffs.push(format!("{n} {} not installed", v.0)),
                Some(h) if h != v => diffs.push(format!("{n}: locked {}, installed {}", v.0, h.0)),
                _ => {}
            }
        }
        for (n, v) in &have {
            if !want.contains_key(n) {
                diffs.push(format!("{n} {} installed but not locked", v.0));
            }
        }
        if diffs.is_empty() {
            return Ok(());
        }
        diffs.truncate(8);
        Err(DebianError::TreeDiffers {
            lock: lock_name.to_string(),
            detail: diffs.join("; "),
        })
    }

    /// Move the tree into `trees/<key>`: assembled beside it, renamed into place whole. When
    /// another build got there first, its tree is used.
    fn into_cache(self, cache: &Cache, lock: &Lock, key: &str) -> Result<Prepared, DebianError> {
        let trees = cache.trees();
        fs::create_dir_all(&trees).map_err(io_err("creating", &trees))?;
        let staging = self.work.join("tree");
        fs::create_dir(&staging).map_err(io_err("creating", &staging))?;
        let boot = self.work.join("boot");
        let mut kernel = None;
        let mut initrd = None;
        for e in fs::read_dir(&boot).map_err(io_err("listing", &boot))? {
            let p = e.map_err(io_err("listing", &boot))?.path();
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if n.starts_with("vmlinuz-") {
                kernel = Some(p);
            } else if n.starts_with("initrd.img-") {
                initrd = Some(p);
            }
        }
        let (Some(k), Some(i)) = (kernel, initrd) else {
            return Err(DebianError::NoKernel);
        };
        for (from, to) in [
            (k, staging.join("vmlinuz")),
            (i, staging.join("initrd.img")),
            (self.work.join("root.tar"), staging.join("root.tar")),
        ] {
            fs::rename(&from, &to).map_err(io_err("moving into the cache", &to))?;
        }
        let write = |name: &str, data: String| {
            let p = staging.join(name);
            fs::write(&p, data).map_err(io_err("writing", &p))
        };
        write("cairn.lock", lock.render())?;
        write("build-seconds", format!("{:.1}\n", self.seconds))?;
        write("complete", String::new())?;
        let dir = trees.join(key);
        match fs::rename(&staging, &dir) {
            Ok(()) => {}
            Err(_) if dir.join("complete").exists() => {}
            Err(e) => {
                // An incomplete leftover (a killed older Cairn): replace it.
                let _ = fs::remove_dir_all(&dir);
                fs::rename(&staging, &dir).map_err(|_| io_err("moving into the cache", &dir)(e))?;
            }
        }
        let mut p = cached_tree(cache, key, lock).ok_or(DebianError::NoKernel)?;
        p.cache_hit = false;
        p.build_seconds = self.seconds;
        Ok(p)
    }
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// A local path as a `copy://` URI for apt's sources (percent-encoded).
fn copy_uri(p: &Path) -> String {
    format!("copy://{}", store::url_path(&p.display().to_string()))
}

fn run_mmdebstrap(
    spec: &DebianSpec,
    lock: &Lock,
    store: &Store,
    inputs: &TreeInputs,
    work: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Built, DebianError> {
    let repo = work.join("repo");
    store::write_repo(store, &lock.package, &lock.suite, &repo, Placement::Link)?;
    fs::create_dir_all(work.join("boot")).map_err(io_err("creating", work))?;
    let hook = work.join("customize.sh");
    fs::write(&hook, CUSTOMIZE_HOOK).map_err(io_err("writing", &hook))?;
    let module = work.join("95cairn");
    fs::create_dir_all(&module).map_err(io_err("creating", &module))?;
    for (name, text, mode) in DRACUT_MODULE {
        use std::os::unix::fs::PermissionsExt;
        let p = module.join(name);
        fs::write(&p, text).map_err(io_err("writing", &p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).map_err(io_err("writing", &p))?;
    }
    let dracut = work.join("90-cairn.conf");
    fs::write(&dracut, render_dracut_conf(inputs.dracut_modules, inputs.drivers))
        .map_err(io_err("writing", &dracut))?;

    let names: Vec<&str> = lock.package.iter().map(|p| p.name.as_str()).collect();
    let q = shell_quote;
    let mut cmd = Command::new("mmdebstrap");
    cmd.env("SOURCE_DATE_EPOCH", inputs.epoch.to_string())
        .env("LC_ALL", "C.UTF-8")
        .args(["--variant=essential", "--mode=auto", "--architectures=amd64", "--format=tar"])
        .arg(format!("--include={}", names.join(",")))
        .arg("--setup-hook=mkdir -p \"$1/etc/dracut.conf.d\" \"$1/usr/lib/dracut/modules.d\"")
        // Before the packages: the kernel's postinst already runs dracut with this config.
        .arg(format!("--setup-hook=copy-in {} /usr/lib/dracut/modules.d", q(&module)))
        .arg(format!("--setup-hook=upload {} /etc/dracut.conf.d/90-cairn.conf", q(&dracut)))
        .arg(format!("--customize-hook=sh {} \"$1\"", q(&hook)))
        .arg(format!("--customize-hook=copy-out /boot {}", q(work)))
        .arg(format!(
            "--customize-hook=chroot \"$1\" dpkg-query -W -f '${{db:Status-Abbrev}} ${{Package}} ${{Version}} ${{Architecture}}\\n' > {}",
            q(&work.join("installed.txt"))
        ))
        .arg(&spec.suite)
        .arg(work.join("root.tar"))
        .arg(format!("deb [trusted=yes] {} ./", copy_uri(&repo)));
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    log(&format!(
        "debian: mmdebstrap {} from the {} locked packages",
        spec.suite,
        names.len()
    ));
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(io_err("starting", "mmdebstrap (apt-get install mmdebstrap)"))?;
    // Merge both streams into one reader so the order is kept for error messages.
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let tx2 = tx.clone();
    let t1 = std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let t2 = std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send(l);
        }
    });
    let mut tail: Vec<String> = Vec::new();
    for line in rx {
        if let Some(step) = line.strip_prefix("I: ") {
            log(&format!("debian: {step} ({:.0}s)", started.elapsed().as_secs_f64()));
        }
        tail.push(line);
        if tail.len() > 400 {
            tail.drain(..200);
        }
    }
    let _ = (t1.join(), t2.join());
    let status = child.wait().map_err(io_err("waiting for", Path::new("mmdebstrap")))?;
    if !status.success() {
        let start = tail.len().saturating_sub(15);
        return Err(DebianError::Mmdebstrap {
            status: status.to_string(),
            tail: tail[start..].join("\n"),
        });
    }
    let text = fs::read_to_string(work.join("installed.txt")).map_err(io_err("reading", work))?;
    let installed: Vec<(String, String, String)> = text
        .lines()
        .filter(|l| l.starts_with("ii "))
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip(1);
            Some((w.next()?.to_string(), w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect();
    // Copy-out put /boot under work/boot/boot.
    let nested = work.join("boot/boot");
    let boot = work.join("boot");
    if nested.is_dir() {
        for e in fs::read_dir(&nested).map_err(io_err("listing", &nested))? {
            let p = e.map_err(io_err("listing", &nested))?.path();
            fs::rename(&p, boot.join(p.file_name().expect("a name"))).map_err(io_err("moving", &p))?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    log(&format!(
        "debian: {} packages installed in {seconds:.0}s",
        installed.len()
    ));
    Ok(Built {
        work: work.to_owned(),
        installed,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_from_both_apt_formats() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sources.list.d")).unwrap();
        fs::write(
            dir.path().join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
             Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n",
        )
        .unwrap();
        let m = host_mirrors("bookworm", dir.path());
        assert_eq!(m.main, "http://mirror.example/debian");
        assert_eq!(m.security, "http://security.example/debian-security");
        fs::write(
            dir.path().join("sources.list"),
            "deb [arch=amd64] http://list.example/debian bookworm main\n",
        )
        .unwrap();
        assert_eq!(host_mirrors("bookworm", dir.path()).main, "http://list.example/debian");
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            host_mirrors("bookworm", empty.path()).main,
            "http://deb.debian.org/debian"
        );
    }

    fn built(cache: &Cache, tag: &str) -> (Built, crate::packages::cache::WorkDir) {
        let work = cache.work_dir().unwrap();
        let w = work.path().to_owned();
        fs::create_dir_all(w.join("boot")).unwrap();
        fs::write(w.join("boot/vmlinuz-6.1.0-57-amd64"), format!("kernel {tag}")).unwrap();
        fs::write(w.join("boot/initrd.img-6.1.0-57-amd64"), "initrd").unwrap();
        fs::write(w.join("root.tar"), format!("root {tag}")).unwrap();
        let b = Built {
            work: w,
            installed: Vec::new(),
            seconds: 1.0,
        };
        (b, work)
    }

    #[test]
    fn two_builds_of_one_tree_at_once_both_succeed_with_one_tree() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path());
        let lock = lock_sample();
        let (a, wa) = built(&cache, "a");
        let (b, wb) = built(&cache, "b");
        let pa = a.into_cache(&cache, &lock, "k").unwrap();
        let pb = b.into_cache(&cache, &lock, "k").unwrap();
        assert_eq!(pa.tar, pb.tar);
        assert_eq!(fs::read_to_string(&pb.tar).unwrap(), "root a", "the first tree stays");
        assert!(cache.trees().join("k/complete").exists());
        drop((wa, wb));
        assert_eq!(fs::read_dir(dir.path().join("work")).unwrap().count(), 0);
        // An incomplete leftover under the key is replaced.
        fs::remove_file(cache.trees().join("k/complete")).unwrap();
        let (c, _wc) = built(&cache, "c");
        let pc = c.into_cache(&cache, &lock, "k").unwrap();
        assert_eq!(fs::read_to_string(&pc.tar).unwrap(), "root c");
    }

    fn lock_sample() -> Lock {
        crate::packages::lock::tests::sample()
    }

    fn sources_spec() -> DebianSpec {
        DebianSpec {
            suite: "bookworm".into(),
            mirror: None,
            security_mirror: None,
            components: vec!["main".into()],
            packages: vec!["systemd".into()],
            kernel_package: "linux-image-amd64".into(),
            lock: PathBuf::from("cairn.lock"),
            package_sources: Vec::new(),
            fallback_sources: vec![
                PackageSource::Url("https://snapshot.example/archive/debian/{resolved}".into()),
                PackageSource::Dir("/srv/snapshots/{resolved}".into()),
            ],
        }
    }

    #[test]
    fn stores_replace_mirrors_and_fallbacks_name_the_resolution_time() {
        let spec = sources_spec();
        let m = lock_sample().mirrors;
        let s = sources(&spec, &[], &m, &lock_sample());
        assert_eq!(s.mirrors, Some(m.clone()));
        assert_eq!(
            s.fallback,
            [
                PackageSource::Url("https://snapshot.example/archive/debian/20261202T074012Z".into()),
                PackageSource::Dir("/srv/snapshots/20261202T074012Z".into()),
            ]
        );
        let usb = [PackageSource::Dir("/media/usb".into())];
        let s = sources(&spec, &usb, &m, &lock_sample());
        assert_eq!((s.stores.as_slice(), s.mirrors, s.fallback.len()), (&usb[..], None, 0));
    }

    #[test]
    fn an_old_lock_is_stale_and_a_broken_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = sources_spec();
        spec.lock = dir.path().join("cairn.lock");
        std::fs::write(&spec.lock, "version = 1\nsuite = \"bookworm\"\n").unwrap();
        assert!(matches!(lock_state(&spec), Ok(LockState::Stale(why, None)) if why.contains("older format")));
        std::fs::write(&spec.lock, "version = 2\nsuite = 3\n").unwrap();
        assert!(lock_state(&spec).is_err());
        std::fs::remove_file(&spec.lock).unwrap();
        assert!(matches!(lock_state(&spec), Ok(LockState::Stale(why, None)) if why.contains("no lock")));
    }

    #[test]
    fn copy_uris_are_encoded() {
        assert_eq!(
            copy_uri(Path::new("/var/cache/a b/r+1")),
            "copy:///var/cache/a%20b/r%2B1"
        );
    }

    #[test]
    fn dracut_conf_golden() {
        assert_eq!(
            render_dracut_conf(&["systemd".into(), "base".into()], &["dm_verity".into()]),
            "# Written by Cairn from the image definition's [initrd].\nhostonly=\"no\"\nreproducible=\"yes\"\n\
             compress=\"zstd\"\ndracutmodules=\" systemd base \"\nadd_dracutmodules+=\" cairn \"\n\
             drivers=\" dm_verity \"\n"
        );
    }
}
