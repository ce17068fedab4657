//! Debian roots: mirrors, the lock file, the content-addressed cache, and mmdebstrap.
//!
//! A Debian root is built by Debian's own tool, `mmdebstrap`, into a tarball (reproducible
//! with `SOURCE_DATE_EPOCH`), with a customize hook (`rootfs/customize.sh`) that builds the
//! initrd with dracut inside the tree. The result is pinned and cached:
//!
//! * **Lock** (`cairn.lock` beside the definition): every installed package with its exact
//!   version, architecture and the sha256 of its `.deb`, plus a hash of the request
//!   (suite, components, packages) it answers. With a lock, mmdebstrap installs exactly
//!   those versions (apt pins at priority 1001) and the result is checked against it.
//!   Without one, or when the request changed, or with `cairn lock --update`, the newest
//!   versions are resolved and the lock is (re)written.
//! * **Cache** (`$CAIRN_CACHE_DIR`, else `$XDG_CACHE_HOME/cairn`, else `~/.cache/cairn`):
//!   `debs/` keeps every downloaded package (synced into mmdebstrap's apt cache, so a
//!   rebuild downloads nothing it has); `trees/<key>/` keeps the root tarball, kernel and
//!   initrd, keyed by the sha256 of the lock, the customize hook, the dracut
//!   configuration and the epoch. A build whose key is there does not run mmdebstrap.

use crate::ioerr::{io_err, IoError};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::definition::DebianSpec;

/// The customize hook, embedded so `cairn` works from any directory.
pub const CUSTOMIZE_HOOK: &str = include_str!("../../rootfs/customize.sh");

/// Packages every Debian root gets besides the requested ones: what builds the initrd.
pub const IMPLIED_PACKAGES: &[&str] = &["dracut", "zstd"];

/// The lock file format version.
pub const LOCK_VERSION: u32 = 1;

/// Problems preparing a Debian root.
#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    /// IO on a named file.
    #[error(transparent)]
    Io(#[from] IoError),
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
    /// A locked version is gone from the mirror, or a package changed under its version.
    #[error("the mirror no longer serves what {lock} pins: {detail}\n  hint: run `cairn lock {definition} --update` to move to the mirror's current versions")]
    LockDrift {
        /// The lock file.
        lock: String,
        /// The definition file.
        definition: String,
        /// What differs.
        detail: String,
    },
    /// mmdebstrap failed for another reason.
    #[error("mmdebstrap failed ({status}):\n{tail}")]
    Mmdebstrap {
        /// Exit status.
        status: String,
        /// Its last lines of output.
        tail: String,
    },
    /// The lock file does not parse.
    #[error("{path}: {detail}\n  hint: regenerate it with `cairn lock DEFINITION --update`")]
    BadLock {
        /// The lock file.
        path: PathBuf,
        /// The parser's message.
        detail: String,
    },
    /// The tree has no kernel.
    #[error("the root tree has no kernel in /boot; is [root.debian] kernel a kernel image package?")]
    NoKernel,
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

/// One pinned package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LockedPackage {
    /// Package name.
    pub name: String,
    /// Exact version.
    pub version: String,
    /// `amd64` or `all`.
    pub architecture: String,
    /// sha256 of the `.deb`.
    pub sha256: String,
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
    /// The mirrors it was resolved against.
    pub mirrors: Mirrors,
    /// Every installed package, sorted by name.
    pub package: Vec<LockedPackage>,
}

impl Lock {
    /// Read a lock file; `Ok(None)` when it does not exist.
    pub fn load(path: &Path) -> Result<Option<Lock>, DebianError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading", path)(e).into()),
        };
        let lock: Lock = toml::from_str(&text).map_err(|e| DebianError::BadLock {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        if lock.version != LOCK_VERSION {
            return Err(DebianError::BadLock {
                path: path.to_owned(),
                detail: format!(
                    "lock version {} is not supported (this Cairn writes {LOCK_VERSION})",
                    lock.version
                ),
            });
        }
        Ok(Some(lock))
    }

    /// The file's text: a comment header, then TOML.
    pub fn render(&self) -> String {
        let body = toml::to_string(self).expect("a lock always serializes");
        format!(
            "# Generated by `cairn lock`: the exact Debian packages of this image.\n\
             # Commit it next to the definition; refresh with `cairn lock DEFINITION --update`.\n\n{body}"
        )
    }

    /// The `(name, version, arch)` triples, for comparing with a built tree.
    pub fn triples(&self) -> BTreeMap<String, (String, String)> {
        self.package
            .iter()
            .map(|p| (p.name.clone(), (p.version.clone(), p.architecture.clone())))
            .collect()
    }
}

/// sha256 of the package request: suite, components, kernel package, and the requested
/// plus implied packages, sorted. A lock answers one request.
pub fn request_hash(spec: &DebianSpec) -> String {
    let mut pkgs: Vec<&str> = spec.packages.iter().map(String::as_str).collect();
    pkgs.push(&spec.kernel_package);
    pkgs.extend(IMPLIED_PACKAGES);
    pkgs.sort();
    pkgs.dedup();
    let text = format!(
        "suite={}\ncomponents={}\npackages={}\n",
        spec.suite,
        spec.components.join(","),
        pkgs.join(",")
    );
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The packages to pass to mmdebstrap's `--include`.
pub fn include_list(spec: &DebianSpec) -> Vec<String> {
    let mut v: Vec<String> = spec.packages.clone();
    v.push(spec.kernel_package.clone());
    v.extend(IMPLIED_PACKAGES.iter().map(|s| s.to_string()));
    v.sort();
    v.dedup();
    v
}

/// apt preferences that pin every locked package to its version.
pub fn render_pins(lock: &Lock) -> String {
    lock.package
        .iter()
        .map(|p| format!("Package: {}\nPin: version {}\nPin-Priority: 1001\n", p.name, p.version))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `/etc/dracut.conf.d/90-cairn.conf`.
pub fn render_dracut_conf(modules: &[String], drivers: &[String]) -> String {
    format!(
        "# Written by Cairn from the image definition's [initrd].\n\
         hostonly=\"no\"\nreproducible=\"yes\"\ncompress=\"zstd\"\n\
         dracutmodules=\" {} \"\ndrivers=\" {} \"\n",
        modules.join(" "),
        drivers.join(" ")
    )
}

/// File name apt gives a downloaded package (the epoch's ':' is escaped).
pub fn deb_file_name(p: &LockedPackage) -> String {
    format!("{}_{}_{}.deb", p.name, p.version.replace(':', "%3a"), p.architecture)
}

/// Where Cairn caches package downloads and root trees.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CAIRN_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("cairn");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/cairn"),
        None => PathBuf::from("/var/cache/cairn"),
    }
}

/// How to treat an existing lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockMode {
    /// Use the lock if it answers the request; resolve and write one otherwise.
    #[default]
    Use,
    /// Resolve the newest versions and rewrite the lock.
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
    pub lock_written: Option<&'static str>,
    /// Number of packages downloaded by this run.
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

fn tree_key(lock: &Lock, inputs: &TreeInputs) -> String {
    let mut h = Sha256::new();
    h.update(b"cairn tree v1\0");
    for p in &lock.package {
        h.update(format!("{} {} {} {}\n", p.name, p.version, p.architecture, p.sha256));
    }
    h.update(CUSTOMIZE_HOOK.as_bytes());
    h.update(render_dracut_conf(inputs.dracut_modules, inputs.drivers).as_bytes());
    h.update(inputs.epoch.to_le_bytes());
    hex::encode(&h.finalize()[..16])
}

fn sha256_file(path: &Path) -> Result<String, DebianError> {
    let mut f = fs::File::open(path).map_err(io_err("opening", path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io_err("reading", path))?;
    Ok(hex::encode(h.finalize()))
}

/// Prepare the root: from the cache when the lock's tree is there, else with mmdebstrap.
pub fn prepare(
    spec: &DebianSpec,
    definition: &Path,
    inputs: &TreeInputs,
    mode: LockMode,
    log: &mut dyn FnMut(&str),
) -> Result<Prepared, DebianError> {
    let cache = cache_dir();
    let request = request_hash(spec);
    let existing = Lock::load(&spec.lock)?;
    let reason = match (&existing, mode) {
        (_, LockMode::Update) => Some("--update"),
        (None, _) => Some("there was no lock"),
        (Some(l), _) if l.request != request => Some("the package request changed"),
        _ => None,
    };

    if reason.is_none() {
        let lock = existing.expect("checked");
        let key = tree_key(&lock, inputs);
        let dir = cache.join("trees").join(&key);
        if dir.join("complete").exists() {
            log(&format!("debian: cached tree {key} matches {}", spec.lock.display()));
            let build_seconds = fs::read_to_string(dir.join("build-seconds"))
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0.0);
            return Ok(Prepared {
                tar: dir.join("root.tar"),
                kernel: dir.join("vmlinuz"),
                initrd: dir.join("initrd.img"),
                lock,
                cache_hit: true,
                lock_written: None,
                downloaded: 0,
                key,
                build_seconds,
            });
        }
        let mirrors = lock.mirrors.clone();
        let built = run_mmdebstrap(spec, definition, &mirrors, Some(&lock), inputs, &cache, log)?;
        // The tree must be exactly the lock.
        let got = built.lock_from_tree(&lock.suite, &lock.request, &mirrors, &cache)?;
        if got.package != lock.package {
            let want = lock.triples();
            let have = got.triples();
            let mut diffs = Vec::new();
            for (n, v) in &want {
                match have.get(n) {
                    None => diffs.push(format!("{n} {} missing", v.0)),
                    Some(h) if h != v => diffs.push(format!("{n}: locked {}, got {}", v.0, h.0)),
                    _ => {}
                }
            }
            for (n, v) in &have {
                if !want.contains_key(n) {
                    diffs.push(format!("{n} {} not in the lock", v.0));
                }
            }
            if diffs.is_empty() {
                diffs.push("a package's sha256 differs from the lock".into());
            }
            diffs.truncate(8);
            return Err(DebianError::LockDrift {
                lock: spec.lock.display().to_string(),
                definition: definition.display().to_string(),
                detail: diffs.join("; "),
            });
        }
        return built.into_cache(&cache, lock, None, inputs);
    }

    let reason = reason.expect("some");
    let host = host_mirrors(&spec.suite, Path::new("/etc/apt"));
    let mirrors = Mirrors {
        main: spec.mirror.clone().unwrap_or(host.main),
        security: spec.security_mirror.clone().unwrap_or(host.security),
    };
    log(&format!("debian: resolving the newest packages ({reason})"));
    let built = run_mmdebstrap(spec, definition, &mirrors, None, inputs, &cache, log)?;
    let lock = built.lock_from_tree(&spec.suite, &request, &mirrors, &cache)?;
    let text = lock.render();
    cairn_signing::write_file_atomic(&spec.lock, text.as_bytes(), 0o644).map_err(io_err("writing", &spec.lock))?;
    log(&format!(
        "debian: wrote {} ({} packages)",
        spec.lock.display(),
        lock.package.len()
    ));
    built.into_cache(&cache, lock, Some(reason), inputs)
}

/// An mmdebstrap run's results in a work directory inside the cache.
struct Built {
    work: PathBuf,
    installed: Vec<(String, String, String)>,
    downloaded: usize,
    seconds: f64,
}

impl Built {
    fn lock_from_tree(&self, suite: &str, request: &str, mirrors: &Mirrors, cache: &Path) -> Result<Lock, DebianError> {
        let debs = cache.join("debs");
        let mut package = Vec::new();
        for (name, version, architecture) in &self.installed {
            let mut p = LockedPackage {
                name: name.clone(),
                version: version.clone(),
                architecture: architecture.clone(),
                sha256: String::new(),
            };
            let file = debs.join(deb_file_name(&p));
            p.sha256 = sha256_file(&file)?;
            package.push(p);
        }
        package.sort();
        Ok(Lock {
            version: LOCK_VERSION,
            suite: suite.into(),
            request: request.into(),
            mirrors: mirrors.clone(),
            package,
        })
    }

    fn into_cache(
        self,
        cache: &Path,
        lock: Lock,
        lock_written: Option<&'static str>,
        inputs: &TreeInputs,
    ) -> Result<Prepared, DebianError> {
        let key = tree_key(&lock, inputs);
        let dir = cache.join("trees").join(&key);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
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
            (k, dir.join("vmlinuz")),
            (i, dir.join("initrd.img")),
            (self.work.join("root.tar"), dir.join("root.tar")),
        ] {
            fs::rename(&from, &to).map_err(io_err("moving into the cache", &to))?;
        }
        fs::write(dir.join("cairn.lock"), lock.render()).map_err(io_err("writing", &dir))?;
        fs::write(dir.join("build-seconds"), format!("{:.1}\n", self.seconds)).map_err(io_err("writing", &dir))?;
        fs::write(dir.join("complete"), b"").map_err(io_err("writing", &dir))?;
        let _ = fs::remove_dir_all(&self.work);
        Ok(Prepared {
            tar: dir.join("root.tar"),
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            lock,
            cache_hit: false,
            lock_written,
            downloaded: self.downloaded,
            key,
            build_seconds: self.seconds,
        })
    }
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

fn run_mmdebstrap(
    spec: &DebianSpec,
    definition: &Path,
    mirrors: &Mirrors,
    pinned: Option<&Lock>,
    inputs: &TreeInputs,
    cache: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Built, DebianError> {
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).map_err(io_err("creating", &debs))?;
    let work = cache.join(format!("work-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(work.join("boot")).map_err(io_err("creating", &work))?;
    let hook = work.join("customize.sh");
    fs::write(&hook, CUSTOMIZE_HOOK).map_err(io_err("writing", &hook))?;
    let dracut = work.join("90-cairn.conf");
    fs::write(&dracut, render_dracut_conf(inputs.dracut_modules, inputs.drivers))
        .map_err(io_err("writing", &dracut))?;
    let pins = work.join("cairn-lock.pref");
    fs::write(&pins, pinned.map(render_pins).unwrap_or_default()).map_err(io_err("writing", &pins))?;
    let before: std::collections::HashSet<_> = fs::read_dir(&debs)
        .map_err(io_err("listing", &debs))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();

    let include = include_list(spec);
    let components = spec.components.join(" ");
    let sources = [
        format!("deb {} {} {components}", mirrors.main, spec.suite),
        format!("deb {} {}-updates {components}", mirrors.main, spec.suite),
        format!("deb {} {}-security {components}", mirrors.security, spec.suite),
    ];
    let q = shell_quote;
    let mut cmd = Command::new("mmdebstrap");
    cmd.env("SOURCE_DATE_EPOCH", inputs.epoch.to_string())
        .args(["--variant=minbase", "--mode=auto", "--architectures=amd64", "--format=tar"])
        .arg(format!("--components={}", spec.components.join(",")))
        .arg(format!("--include={}", include.join(",")))
        .arg("--skip=essential/unlink")
        .arg("--aptopt=Acquire::Retries \"3\"")
        .arg("--setup-hook=mkdir -p \"$1/var/cache/apt/archives\" \"$1/etc/dracut.conf.d\" \"$1/etc/apt/preferences.d\"")
        .arg(format!("--setup-hook=sync-in {} /var/cache/apt/archives/", q(&debs)))
        .arg(format!("--setup-hook=upload {} /etc/dracut.conf.d/90-cairn.conf", q(&dracut)))
        .arg(format!("--setup-hook=upload {} /etc/apt/preferences.d/cairn-lock", q(&pins)))
        .arg(format!("--customize-hook=sh {} \"$1\"", q(&hook)))
        .arg(format!("--customize-hook=copy-out /boot {}", q(&work)))
        .arg(format!(
            "--customize-hook=chroot \"$1\" dpkg-query -W -f '${{db:Status-Abbrev}} ${{Package}} ${{Version}} ${{Architecture}}\\n' > {}",
            q(&work.join("installed.txt"))
        ))
        .arg(format!("--customize-hook=sync-out /var/cache/apt/archives {}", q(&debs)))
        .arg(&spec.suite)
        .arg(work.join("root.tar"));
    for s in &sources {
        cmd.arg(s);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    log(&format!(
        "debian: mmdebstrap {} from {} ({} packages requested)",
        spec.suite,
        mirrors.main,
        include.len()
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
        let _ = fs::remove_dir_all(&work);
        let locked_by = pinned.map(|_| definition);
        return Err(classify_failure(spec, mirrors, locked_by, &tail, status.to_string()));
    }
    let text = fs::read_to_string(work.join("installed.txt")).map_err(io_err("reading", &work))?;
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
    let after = fs::read_dir(&debs)
        .map_err(io_err("listing", &debs))?
        .filter_map(|e| e.ok().map(|e| e.file_name()));
    let downloaded = after
        .filter(|n| !before.contains(n) && n.to_string_lossy().ends_with(".deb"))
        .count();
    log(&format!(
        "debian: {} packages installed, {downloaded} downloaded, in {:.0}s",
        installed.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(Built {
        work,
        installed,
        downloaded,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Turn mmdebstrap's output into the error a user can act on.
/// `locked_by` is the definition whose lock pinned the versions, if any.
fn classify_failure(
    spec: &DebianSpec,
    mirrors: &Mirrors,
    locked_by: Option<&Path>,
    lines: &[String],
    status: String,
) -> DebianError {
    for l in lines {
        if let Some(rest) = l.split("Unable to locate package ").nth(1) {
            return DebianError::NoSuchPackage {
                package: rest.trim().to_string(),
                suite: spec.suite.clone(),
                components: spec.components.join(","),
                mirror: mirrors.main.clone(),
            };
        }
        if let Some(rest) = l
            .split("Package '")
            .nth(1)
            .filter(|_| l.contains("has no installation candidate"))
        {
            return DebianError::NoSuchPackage {
                package: rest.split('\'').next().unwrap_or(rest).to_string(),
                suite: spec.suite.clone(),
                components: spec.components.join(","),
                mirror: mirrors.main.clone(),
            };
        }
    }
    let unreachable = [
        "Could not resolve",
        "Temporary failure resolving",
        "Failed to fetch",
        "Unable to connect",
        "Connection refused",
        "Connection failed",
        "No route to host",
    ];
    if let Some(l) = lines.iter().find(|l| unreachable.iter().any(|u| l.contains(u))) {
        let mirror = [&mirrors.main, &mirrors.security]
            .into_iter()
            .find(|m| l.contains(m.as_str()))
            .unwrap_or(&mirrors.main);
        return DebianError::MirrorUnreachable {
            mirror: mirror.clone(),
            detail: l.trim().to_string(),
        };
    }
    if let Some(definition) = locked_by {
        if let Some(l) = lines
            .iter()
            .find(|l| l.contains("but it is not going to be installed") || l.contains("was not found"))
        {
            return DebianError::LockDrift {
                lock: spec.lock.display().to_string(),
                definition: definition.display().to_string(),
                detail: l.trim().to_string(),
            };
        }
    }
    let start = lines.len().saturating_sub(15);
    DebianError::Mmdebstrap {
        status,
        tail: lines[start..].join("\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DebianSpec {
        DebianSpec {
            suite: "bookworm".into(),
            mirror: None,
            security_mirror: None,
            components: vec!["main".into()],
            packages: vec!["systemd".into(), "etcd-server".into(), "dracut".into()],
            kernel_package: "linux-image-amd64".into(),
            lock: PathBuf::from("cairn.lock"),
        }
    }

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

    #[test]
    fn request_hash_ignores_order_and_duplicates() {
        let a = spec();
        let mut b = spec();
        b.packages.reverse();
        b.packages.push("zstd".into());
        assert_eq!(request_hash(&a), request_hash(&b));
        b.packages.push("runc".into());
        assert_ne!(request_hash(&a), request_hash(&b));
        assert_eq!(
            include_list(&a),
            ["dracut", "etcd-server", "linux-image-amd64", "systemd", "zstd"]
        );
    }

    #[test]
    fn lock_round_trip_and_pins() {
        let lock = Lock {
            version: LOCK_VERSION,
            suite: "bookworm".into(),
            request: "ab".into(),
            mirrors: Mirrors {
                main: "http://m/debian".into(),
                security: "http://m/debian-security".into(),
            },
            package: vec![LockedPackage {
                name: "base-files".into(),
                version: "1:12.4+deb12u5".into(),
                architecture: "amd64".into(),
                sha256: "00".repeat(32),
            }],
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cairn.lock");
        fs::write(&p, lock.render()).unwrap();
        assert_eq!(Lock::load(&p).unwrap(), Some(lock.clone()));
        assert_eq!(
            render_pins(&lock),
            "Package: base-files\nPin: version 1:12.4+deb12u5\nPin-Priority: 1001\n"
        );
        assert_eq!(deb_file_name(&lock.package[0]), "base-files_1%3a12.4+deb12u5_amd64.deb");
        fs::write(&p, "version = 1\nsuite = 3\n").unwrap();
        assert!(matches!(Lock::load(&p), Err(DebianError::BadLock { .. })));
        assert_eq!(Lock::load(&dir.path().join("none")).unwrap(), None);
    }

    #[test]
    fn failures_are_classified() {
        let s = spec();
        let m = Mirrors {
            main: "http://m/debian".into(),
            security: "http://s/debian-security".into(),
        };
        let e = classify_failure(
            &s,
            &m,
            None,
            &["E: Unable to locate package etcd-servr".into()],
            "1".into(),
        );
        assert!(
            e.to_string().contains("package 'etcd-servr' is not in Debian bookworm"),
            "{e}"
        );
        let e = classify_failure(
            &s,
            &m,
            None,
            &[
                "W: Failed to fetch http://s/debian-security/dists/bookworm-security/InRelease  Could not resolve 's'"
                    .into(),
            ],
            "1".into(),
        );
        assert!(
            e.to_string()
                .contains("mirror http://s/debian-security does not answer"),
            "{e}"
        );
        let e = classify_failure(&s, &m, None, &["boom".into()], "exit status: 1".into());
        assert!(e.to_string().contains("boom"));
        let e = classify_failure(
            &s,
            &m,
            Some(Path::new("images/node.toml")),
            &["E: Version '1.2' for 'etcd-server' was not found".into()],
            "1".into(),
        );
        assert!(
            e.to_string().contains("run `cairn lock images/node.toml --update`"),
            "{e}"
        );
    }

    #[test]
    fn dracut_conf_golden() {
        assert_eq!(
            render_dracut_conf(&["systemd".into(), "base".into()], &["dm_verity".into()]),
            "# Written by Cairn from the image definition's [initrd].\nhostonly=\"no\"\nreproducible=\"yes\"\n\
             compress=\"zstd\"\ndracutmodules=\" systemd base \"\ndrivers=\" dm_verity \"\n"
        );
    }
}
