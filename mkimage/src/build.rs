//! `cairn build`: the pipeline from a validated definition to a signed disk image.
//!
//! Order (each stage timed for the summary):
//!
//! 1. **check**: tools on PATH, input files readable, signing key loaded (or the
//!    development key created), layout valid — before any work;
//! 2. **root tree**: index the source, lay the overlays over it, add Cairn's files
//!    (`os-release`, the release public key), normalize;
//! 3. **squashfs**: stream the tree into `tar2sqfs`;
//! 4. **verity**: salt = sha256 over the squashfs (so it follows the content), hash tree;
//! 5. **uki**: stub + kernel + initrd + `roothash=` command line + os-release;
//! 6. **esp**: FAT32 with systemd-boot, `loader.conf` and the UKI;
//! 7. **disk**: GPT, partitions' contents, ext4 state;
//! 8. **manifest**: hashes of the disk and payloads, signed.
//!
//! Everything is written under a staging directory beside the output directory and moved
//! into place only when complete; on any error the staging directory is removed and the
//! output directory is left as it was.

use crate::ioerr::{io_err, IoError};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_signing::bundle::{self, BundleError, BundleManifest};
use cairn_signing::manifest::{self, Disk, Manifest, PartitionEntry, Payload};
use cairn_signing::{KeyError, PrivateKey};
use sha2::{Digest, Sha256};

use crate::customize;
use crate::debian::{self, DebianError, LockMode};
use crate::definition::{
    Artifact, ArtifactSource, Compression, Definition, ModulePolicy, NodeAgent, RootSource, SigningKey, Size,
};
use crate::ext4::{self, Ext4Spec};
use crate::fat::{FatError, FatSpec};
use crate::gpt::{Gpt, GptError};
use crate::guid::Guid;
use crate::kconfig;
use crate::plan::{self, Layout, Role};
use crate::rootfs::{Tree, TreeError, TreeStats};
use crate::squashfs::{self, PackError, SquashfsSpec};
use crate::tools::{self, ToolError};
use crate::uki::{self, UkiError, UkiParts};
use crate::verity::{self, VerityParams};

/// Default timestamp when `SOURCE_DATE_EPOCH` is not set: 1980-01-01 00:00:00 UTC, the
/// earliest time FAT can store. Builds are reproducible without any setting.
pub const DEFAULT_EPOCH: u64 = 315_532_800;

/// File names in the output directory.
pub const DISK_FILE: &str = "disk.raw";
/// The manifest.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Its detached signature.
pub const SIGNATURE_FILE: &str = "manifest.json.sig";

/// Why a build stopped.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An external tool.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// Reading or combining the root tree.
    #[error("root tree")]
    Tree(#[from] TreeError),
    /// Signing key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// IO on a named file.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The root does not fit its slot.
    #[error(
        "the root filesystem is {size}, {over} more than a root slot holds ({slot})\n  hint: raise `root-size` under [partitions] in {file} to at least {need}"
    )]
    RootTooBig {
        /// Squashfs size.
        size: Size,
        /// Slot size.
        slot: Size,
        /// Overshoot.
        over: Size,
        /// Suggested size.
        need: Size,
        /// Definition file and line.
        file: String,
    },
    /// The ESP contents do not fit.
    #[error("the ESP does not fit\n  hint: raise `esp-size` under [partitions]")]
    Esp(#[source] FatError),
    /// The UKI could not be assembled.
    #[error("building the unified kernel image")]
    Uki(#[source] UkiError),
    /// Writing the update bundle.
    #[error("writing the update bundle")]
    Bundle(#[source] BundleError),
    /// The partition table is inconsistent.
    #[error("partition table")]
    Gpt(#[source] GptError),
    /// A required input is missing.
    #[error("{what} {path}: {source}\n  hint: {hint}")]
    Input {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
        /// How to fix it.
        hint: &'static str,
    },
    /// The output directory cannot be used.
    #[error("output {0}: {1}")]
    Output(PathBuf, String),
    /// The kernel lacks options Cairn needs.
    #[error("the kernel config /{path} lacks options Cairn needs:\n{missing}\n  hint: pick a kernel package built with them (see kernel-config/cairn.config)")]
    KernelConfig {
        /// The config file in the tree.
        path: String,
        /// One line per missing option.
        missing: String,
    },
    /// Preparing the Debian root.
    #[error(transparent)]
    Debian(#[from] DebianError),
    /// A pinned artifact does not match its hash.
    #[error("{what} sha256 mismatch: the definition pins {expected}, the file is {found}\n  hint: fix [kubelet] sha256 or the file")]
    ArtifactHash {
        /// Which artifact.
        what: &'static str,
        /// Pinned hash.
        expected: String,
        /// Actual hash.
        found: String,
    },
    /// Trimming kernel modules.
    #[error("trimming kernel modules")]
    Modules(#[from] crate::modules::ModulesError),
    /// `SOURCE_DATE_EPOCH` is not a number.
    #[error("SOURCE_DATE_EPOCH='{0}' is not a number of seconds\n  hint: unset it or set it to e.g. $(git log -1 --format=%ct)")]
    Epoch(String),
}

/// Choices made outside the definition (CLI flags and environment), which win over it.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Output directory.
    pub out: PathBuf,
    /// Signing key from `--key`, overriding the definition.
    pub key: Option<PathBuf>,
    /// `SOURCE_DATE_EPOCH` as read from the environment.
    pub source_date_epoch: Option<String>,
    /// Where the development key lives (normally [`dev_key_path`]).
    pub dev_key: PathBuf,
    /// Follow the mirror, insist on the lock (`--locked`), or refresh it (`cairn lock --update`).
    pub lock_mode: LockMode,
    /// Where packages come from (`--package-source`).
    pub packages: debian::PackageOptions,
    /// The public key the next releases will be signed with (`--next-key`), announced in the
    /// bundle under this release's signature.
    pub next_key: Option<PathBuf>,
}

/// What the Debian stage did, for the summary.
#[derive(Debug, Clone)]
pub struct DebianReport {
    /// The tree came from the cache.
    pub cache_hit: bool,
    /// Its cache key.
    pub key: String,
    /// Installed packages.
    pub packages: usize,
    /// Packages downloaded by this build.
    pub downloaded: usize,
    /// The lock file.
    pub lock: PathBuf,
    /// Why the lock was written, if it was.
    pub lock_written: Option<String>,
    /// How many packages moved when it was.
    pub moved: usize,
    /// Seconds mmdebstrap took for this tree (when it was cached, for a cache hit).
    pub build_seconds: f64,
}

/// Check the tree's kernel config (`/boot/config-*`) against Cairn's requirements.
fn check_kernel_config(tree: &Tree, log: &mut dyn FnMut(&str)) -> Result<(), BuildError> {
    let Some(path) = tree.paths().find(|p| p.starts_with("boot/config-")).cloned() else {
        log("kernel config: no /boot/config-* in the tree, not checked");
        return Ok(());
    };
    let text = tree.read_file(&path)?.unwrap_or_default();
    let reqs = kconfig::parse_fragment(kconfig::CAIRN_FRAGMENT).expect("the shipped fragment parses (unit-tested)");
    let missing = kconfig::check(&reqs, &kconfig::parse_config(&String::from_utf8_lossy(&text)));
    if missing.is_empty() {
        log(&format!(
            "kernel config: /{path} has all {} options Cairn needs",
            reqs.len()
        ));
        Ok(())
    } else {
        Err(BuildError::KernelConfig {
            path,
            missing: kconfig::render_missing(&missing),
        })
    }
}

/// A file next to the running `cairn` executable.
pub fn beside_cairn(name: &str) -> Result<PathBuf, BuildError> {
    let exe = std::env::current_exe().map_err(io_err("finding", Path::new("the cairn executable")))?;
    let p = exe.with_file_name(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(BuildError::Input {
            what: "node agent",
            path: p,
            source: io::Error::from(io::ErrorKind::NotFound),
            hint: "build the workspace (`cargo build --release`) so cairn-node sits beside cairn",
        })
    }
}

/// Read a pinned artifact and check its sha256.
fn fetch_artifact(a: &Artifact, scratch: &Path) -> Result<Vec<u8>, BuildError> {
    let bytes = match &a.source {
        ArtifactSource::Path(p) => read_input(p, "kubelet", "point [kubelet] path at the pinned binary")?,
        ArtifactSource::Url(u) => {
            tools::require(&["curl"])?;
            let to = scratch.join("kubelet.download");
            let mut cmd = std::process::Command::new("curl");
            cmd.args(["-fsSL", "--retry", "3", "-o"]).arg(&to).arg(u);
            tools::run(&mut cmd, "curl")?;
            fs::read(&to).map_err(io_err("reading", &to))?
        }
    };
    let got: [u8; 32] = Sha256::digest(&bytes).into();
    if got != a.sha256 {
        return Err(BuildError::ArtifactHash {
            what: "kubelet",
            expected: hex::encode(a.sha256),
            found: hex::encode(got),
        });
    }
    Ok(bytes)
}

/// The per-user development key: `$XDG_DATA_HOME/cairn/dev-key.pem`, falling back to
/// `~/.local/share/cairn/dev-key.pem`; its public half is `dev-key.pub` beside it.
pub fn dev_key_path() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    base.join("cairn").join("dev-key.pem")
}

/// The public key file that goes with a private key file: same name, `.pub` extension.
pub fn public_path_for(private: &Path) -> PathBuf {
    private.with_extension("pub")
}

/// The effective epoch: `SOURCE_DATE_EPOCH` if set, else [`DEFAULT_EPOCH`].
pub fn effective_epoch(env: Option<&str>) -> Result<u64, BuildError> {
    match env {
        None | Some("") => Ok(DEFAULT_EPOCH),
        Some(v) => v.trim().parse().map_err(|_| BuildError::Epoch(v.to_string())),
    }
}

/// What the signing key is and where it came from.
pub enum KeyChoice {
    /// A configured key.
    Release(PathBuf),
    /// The development key, and whether this build created it.
    Development(PathBuf, bool),
}

/// Resolve the signing key by precedence: `--key`, the definition, the development key.
pub fn signing_key_source(def: &Definition, opts: &BuildOptions) -> KeyChoice {
    match (&opts.key, &def.signing) {
        (Some(k), _) => KeyChoice::Release(k.clone()),
        (None, SigningKey::File(k)) => KeyChoice::Release(k.clone()),
        (None, SigningKey::Development) => KeyChoice::Development(opts.dev_key.clone(), false),
    }
}

fn load_key(choice: KeyChoice) -> Result<(PrivateKey, KeyChoice), BuildError> {
    match choice {
        KeyChoice::Release(p) => Ok((PrivateKey::read(&p)?, KeyChoice::Release(p))),
        KeyChoice::Development(p, _) => {
            if p.exists() {
                Ok((PrivateKey::read(&p)?, KeyChoice::Development(p, false)))
            } else {
                // A public key left without its private half is useless: replace both.
                let key = PrivateKey::generate();
                key.write_pair(&p, &public_path_for(&p), true)?;
                Ok((key, KeyChoice::Development(p, true)))
            }
        }
    }
}

/// A finished build, for the summary.
pub struct BuildReport {
    /// The signed manifest.
    pub manifest: Manifest,
    /// The output directory.
    pub out: PathBuf,
    /// Time per stage.
    pub stages: Vec<(&'static str, Duration)>,
    /// The key used.
    pub key: KeyChoice,
    /// Entries and bytes in the root tree.
    pub tree: TreeStats,
    /// Squashfs size.
    pub squashfs_size: u64,
    /// Entries left out of the tree.
    pub skipped: Vec<String>,
    /// The layout with identifiers.
    pub layout: Layout,
    /// The Debian stage, for Debian roots.
    pub debian: Option<DebianReport>,
    /// Cairn units installed.
    pub units: Vec<String>,
    /// sha256 of the kubelet baked in, if one was pinned.
    pub kubelet: Option<String>,
    /// What module trimming kept, per kernel (empty with `modules = "all"`).
    pub modules: Vec<crate::modules::TrimReport>,
    /// Fingerprint of the key config drives must be signed with, if the image pins one.
    pub node_config_key: Option<String>,
}

/// Removes the staging directory unless the build committed it.
struct Staging {
    dir: PathBuf,
    keep: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn read_input(path: &Path, what: &'static str, hint: &'static str) -> Result<Vec<u8>, BuildError> {
    fs::read(path).map_err(|source| BuildError::Input {
        what,
        path: path.to_owned(),
        source,
        hint,
    })
}

/// Tools the build runs for this definition.
pub fn required_tools(def: &Definition) -> Vec<&'static str> {
    let mut t = vec!["tar2sqfs", "mkfs.ext4"];
    if matches!(def.modules, ModulePolicy::Trim { .. }) {
        t.push("depmod");
    }
    if let RootSource::Tarball(p) = &def.root {
        t.extend(decompressor(p));
    }
    t
}

/// The tool that unpacks a compressed tarball, by its name; `None` for a plain `.tar`.
fn decompressor(tarball: &Path) -> Option<&'static str> {
    let n = tarball.to_string_lossy();
    [(".zst", "zstd"), (".xz", "xz"), (".gz", "gzip"), (".tgz", "gzip")]
        .into_iter()
        .find_map(|(ext, tool)| n.ends_with(ext).then_some(tool))
}

fn decompress(src: &Path, staging: &Path) -> Result<PathBuf, BuildError> {
    let Some(tool) = decompressor(src) else {
        return Ok(src.to_owned());
    };
    let out = staging.join("root.tar");
    let file = File::create(&out).map_err(io_err("creating", &out))?;
    let mut cmd = std::process::Command::new(tool);
    cmd.args(["-d", "-c"]).arg(src).stdout(file);
    tools::run(&mut cmd, tool)?;
    Ok(out)
}

/// Copy `len` bytes of `src` into `disk` at `offset`, returning their sha256.
fn copy_into(src: &Path, disk: &File, offset: u64, len: u64) -> Result<[u8; 32], BuildError> {
    let mut f = File::open(src).map_err(io_err("opening", src))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut done = 0u64;
    while done < len {
        let n = f.read(&mut buf).map_err(io_err("reading", src))?;
        if n == 0 {
            break;
        }
        let n = n.min((len - done) as usize);
        h.update(&buf[..n]);
        disk.write_all_at(&buf[..n], offset + done)
            .map_err(io_err("writing", src))?;
        done += n as u64;
    }
    Ok(h.finalize().into())
}

/// sha256 of a byte range of a file. Holes in a sparse file are not read: their zeros
/// are fed to the hash from memory (`SEEK_DATA`/`SEEK_HOLE`), which makes hashing a
/// mostly empty disk image several times faster. The result is the plain sha256.
pub fn sha256_range(file: &mut File, offset: u64, len: u64) -> io::Result<[u8; 32]> {
    use rustix::fs::{seek, SeekFrom as Whence};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let zeros = vec![0u8; 4 << 20];
    let end = offset + len;
    let mut at = offset;
    while at < end {
        // Where the next data starts (end of file if there is none), and where it stops.
        let data = match seek(&*file, Whence::Data(at)) {
            Ok(d) => d.min(end),
            Err(rustix::io::Errno::NXIO) => end,
            Err(_) => at, // no hole support: read everything
        };
        while at < data {
            let n = (data - at).min(zeros.len() as u64) as usize;
            h.update(&zeros[..n]);
            at += n as u64;
        }
        if at >= end {
            break;
        }
        let hole = match seek(&*file, Whence::Hole(at)) {
            Ok(x) => x.min(end),
            Err(_) => end,
        };
        file.seek(SeekFrom::Start(at))?;
        while at < hole {
            let want = (hole - at).min(buf.len() as u64) as usize;
            file.read_exact(&mut buf[..want])?;
            h.update(&buf[..want]);
            at += want as u64;
        }
    }
    Ok(h.finalize().into())
}

/// Bytes as MiB with one decimal.
pub fn human(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// Run the whole build. `log` receives progress lines.
pub fn build(def: &Definition, opts: &BuildOptions, log: &mut dyn FnMut(&str)) -> Result<BuildReport, BuildError> {
    let mut stages = Vec::new();
    let mut t = Instant::now();
    let lap = |name: &'static str, stages: &mut Vec<(&'static str, Duration)>, t: &mut Instant| {
        stages.push((name, t.elapsed()));
        *t = Instant::now();
    };

    // 1. check
    log("checking inputs");
    let epoch = effective_epoch(opts.source_date_epoch.as_deref())?;
    tools::require(&required_tools(def))?;
    let stub = read_input(
        &def.stub,
        "EFI stub",
        "apt-get install systemd-boot-efi, or set [kernel] stub",
    )?;
    let sd_boot = read_input(
        &def.systemd_boot,
        "systemd-boot",
        "apt-get install systemd-boot-efi, or set [boot] systemd-boot",
    )?;
    let agent = match &def.node_agent {
        None => None,
        Some(NodeAgent::Path(p)) => Some(p.clone()),
        Some(NodeAgent::BesideCairn) => Some(beside_cairn("cairn-node")?),
    };
    let mut layout = plan::layout(def);
    Gpt::new(
        Guid::NIL,
        layout.disk_size,
        layout.partitions.iter().map(|p| p.entry.clone()).collect(),
    )
    .map_err(BuildError::Gpt)?;
    let (key, key_choice) = load_key(signing_key_source(def, opts))?;
    let next_key = match &opts.next_key {
        None => None,
        Some(p) => Some(cairn_signing::PublicKey::read(p)?),
    };
    if let KeyChoice::Development(p, true) = &key_choice {
        log(&format!("created the development signing key {}", p.display()));
    }

    // Staging beside the output directory, so the final moves are renames.
    let out = opts.out.clone();
    if out.exists() && !out.is_dir() {
        return Err(BuildError::Output(out, "exists and is not a directory".into()));
    }
    let out_name = out
        .file_name()
        .ok_or_else(|| BuildError::Output(out.clone(), "needs a final path component".into()))?
        .to_string_lossy()
        .into_owned();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_err("creating", &parent))?;
    // A build that was killed (Ctrl-C) left its staging directory: remove those whose
    // process is gone.
    let prefix = format!(".{out_name}.cairn-staging-");
    if let Ok(rd) = fs::read_dir(&parent) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let dead = name
                .strip_prefix(&prefix)
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !crate::cache::process_alive(pid));
            if dead {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let staging_dir = parent.join(format!("{prefix}{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging_dir);
    fs::create_dir(&staging_dir).map_err(io_err("creating", &staging_dir))?;
    let mut staging = Staging {
        dir: staging_dir.clone(),
        keep: false,
    };
    lap("check", &mut stages, &mut t);

    // 2. Debian packages (cached) and the root tree
    let mut debian_report = None;
    let (mut tree, tree_kernel, tree_initrd) = match &def.root {
        RootSource::Directory(d) => {
            log(&format!("root tree: indexing {}", d.display()));
            (Tree::from_dir(d)?, None, None)
        }
        RootSource::Tarball(p) => {
            log(&format!("root tree: indexing {}", p.display()));
            let tar = decompress(p, &staging_dir)?;
            (Tree::from_tar(&tar)?, None, None)
        }
        RootSource::Debian(spec) => {
            let inputs = debian::TreeInputs {
                dracut_modules: &def.dracut_modules,
                drivers: &def.initrd_drivers,
                epoch,
            };
            let prepared = debian::prepare(spec, &def.file, &inputs, opts.lock_mode, &opts.packages, log)?;
            lap("debian", &mut stages, &mut t);
            log(&format!("root tree: indexing {} packages", prepared.lock.package.len()));
            let mut tree = Tree::from_tar(&prepared.tar)?;
            check_kernel_config(&tree, log)?;
            let c = customize::debian_root(&mut tree, epoch)?;
            log(&format!(
                "root tree: removed {} entries an image must not carry, {} /var entries moved to the factory copy",
                c.removed, c.factory_var
            ));
            let (k, i) = (prepared.kernel.clone(), prepared.initrd.clone());
            debian_report = Some(DebianReport {
                cache_hit: prepared.cache_hit,
                key: prepared.key.clone(),
                packages: prepared.lock.package.len(),
                downloaded: prepared.downloaded,
                lock: spec.lock.clone(),
                lock_written: prepared.lock_written.clone(),
                moved: prepared.moves.len(),
                build_seconds: prepared.build_seconds,
            });
            (tree, Some(k), Some(i))
        }
    };
    let kernel_path = def
        .kernel
        .clone()
        .or(tree_kernel)
        .expect("definition validation ensures a kernel");
    let initrd_path = def
        .initrd
        .clone()
        .or(tree_initrd)
        .expect("definition validation ensures an initrd");
    let kernel = read_input(&kernel_path, "kernel", "set [kernel] image to a bzImage")?;
    let initrd = read_input(&initrd_path, "initrd", "set [kernel] initrd")?;
    let mut module_reports = Vec::new();
    if let ModulePolicy::Trim { classes, extra } = &def.modules {
        let keep = kconfig::parse_keep(kconfig::CAIRN_FRAGMENT).expect("the shipped fragment parses (unit-tested)");
        let rules: Vec<String> = keep
            .into_iter()
            .filter(|(c, _)| classes.contains(c))
            .flat_map(|(_, r)| r)
            .collect();
        let scratch = staging_dir.join("depmod");
        module_reports = crate::modules::trim(&mut tree, &rules, extra, &scratch, epoch)?;
        if scratch.exists() {
            fs::remove_dir_all(&scratch).map_err(|e| BuildError::Output(scratch.clone(), e.to_string()))?;
        }
        for r in &module_reports {
            log(&format!(
                "kernel modules {}: kept {} of {} ({} of {}) for classes {}{}",
                r.kver,
                r.kept,
                r.before,
                human(r.kept_bytes),
                human(r.before_bytes),
                classes.join(" "),
                if extra.is_empty() {
                    String::new()
                } else {
                    format!(" + {}", extra.join(" "))
                }
            ));
            for u in &r.unmatched {
                log(&format!(
                    "kernel modules {}: class rule {u} matches no module (built in?)",
                    r.kver
                ));
            }
        }
    }
    let mut units = Vec::new();
    if let Some(dir) = &def.units {
        units = customize::install_units(&mut tree, dir, epoch)?;
        log(&format!("root tree: installed and enabled {} Cairn units", units.len()));
    }
    if let Some(agent) = &agent {
        let bytes = read_input(
            agent,
            "node agent",
            "build it with `cargo build --release -p cairn-node`",
        )?;
        tree.add_file("usr/bin/cairn-node", 0o755, bytes, epoch)?;
    }
    let kubelet = match &def.kubelet {
        None => None,
        Some(a) => {
            let bytes = fetch_artifact(a, &staging_dir)?;
            tree.add_file("usr/bin/kubelet", 0o755, bytes, epoch)?;
            Some(hex::encode(a.sha256))
        }
    };
    for o in &def.overlays {
        log(&format!("root tree: overlay {}", o.display()));
        tree.overlay_dir(o)?;
    }
    let os_release = plan::render_os_release(&def.name, &def.version);
    tree.add_file("usr/lib/os-release", 0o644, os_release.clone().into_bytes(), epoch)?;
    tree.add_symlink("etc/os-release", "../usr/lib/os-release", epoch)?;
    tree.add_file(
        plan::IMAGE_PUBLIC_KEY_PATH,
        0o644,
        key.public().to_pem().into_bytes(),
        epoch,
    )?;
    if let Some(pem) = &def.node_config_key {
        tree.add_file(plan::NODE_CONFIG_KEY_PATH, 0o644, pem.clone().into_bytes(), epoch)?;
    }
    tree.normalize(epoch)?;
    let stats = tree.stats();
    let skipped = std::mem::take(&mut tree.skipped);
    lap("root tree", &mut stages, &mut t);

    // 3. squashfs
    let Compression::Zstd(level) = def.compression;
    log(&format!(
        "squashfs: packing {} entries, {} of file data (zstd level {level})",
        stats.entries,
        human(stats.data_bytes)
    ));
    let sqfs_path = staging_dir.join("root.squashfs");
    let mut last = Instant::now();
    let total = stats.data_bytes.max(1);
    let mut progress = |done: u64| {
        if last.elapsed() >= Duration::from_secs(3) {
            last = Instant::now();
            log(&format!(
                "squashfs: {}% ({} of {})",
                done * 100 / total,
                human(done),
                human(total)
            ));
        }
    };
    let sqfs_size = squashfs::pack(
        &tree,
        &SquashfsSpec {
            out: &sqfs_path,
            level,
            block_size: def.block_size.0,
            epoch,
        },
        &mut progress,
    )
    .map_err(|e| match e {
        PackError::Tree(t) => BuildError::Tree(t),
        PackError::Tool(t) => BuildError::Tool(t),
    })?;
    drop(tree);
    let root_slot = layout.get(Role::RootA).entry.size();
    if sqfs_size > root_slot {
        let need = sqfs_size.div_ceil(1 << 24) << 24; // next 16 MiB
        return Err(BuildError::RootTooBig {
            size: Size(sqfs_size),
            slot: Size(root_slot),
            over: Size(sqfs_size - root_slot),
            need: Size(need),
            file: match def.root_size_line {
                Some(l) => format!("{}:{l}", def.file.display()),
                None => def.file.display().to_string(),
            },
        });
    }
    lap("squashfs", &mut stages, &mut t);

    // 4. verity (the disk file is created now so the squashfs is copied once, while hashed)
    log("verity: hashing the root filesystem");
    let disk_path = staging_dir.join(DISK_FILE);
    let disk = File::create(&disk_path).map_err(io_err("creating", &disk_path))?;
    disk.set_len(layout.disk_size).map_err(io_err("sizing", &disk_path))?;
    let root_offset = layout.get(Role::RootA).entry.offset();
    let sqfs_sha = copy_into(&sqfs_path, &disk, root_offset, sqfs_size)?;
    let salt: [u8; 32] = Sha256::new()
        .chain_update(b"cairn verity salt v1\0")
        .chain_update(sqfs_sha)
        .finalize()
        .into();
    let params = VerityParams {
        salt,
        uuid: Guid::derive("verity superblock", &salt).0,
    };
    let mut sqfs_file = File::open(&sqfs_path).map_err(io_err("opening", &sqfs_path))?;
    let tree_v = verity::build(&mut sqfs_file, sqfs_size, &params).map_err(io_err("hashing", &sqfs_path))?;
    drop(sqfs_file);
    let _ = fs::remove_file(&sqfs_path);
    let root_hash = tree_v.root_hash;
    plan::assign_ids(&mut layout, &root_hash);
    lap("verity", &mut stages, &mut t);

    // 5. UKI
    log("uki: assembling the unified kernel image");
    let cmdline = plan::render_cmdline(&hex::encode(root_hash), &def.cmdline);
    let (uki_bytes, _) = uki::build(&UkiParts {
        stub: &stub,
        osrel: os_release.as_bytes(),
        cmdline: cmdline.as_bytes(),
        linux: &kernel,
        initrd: &initrd,
    })
    .map_err(BuildError::Uki)?;
    lap("uki", &mut stages, &mut t);

    // 6. ESP
    log("esp: writing FAT32");
    let esp = layout.get(Role::Esp).entry.clone();
    let uki_name = plan::uki_file_name(&def.version);
    let uki_path = format!("EFI/Linux/{uki_name}");
    let uki_len = uki_bytes.len() as u64;
    let uki_sha: [u8; 32] = Sha256::digest(&uki_bytes).into();
    let fat = FatSpec {
        size: esp.size(),
        label: "ESP".into(),
        volume_id: u32::from_le_bytes(
            Guid::derive("esp volume id", &root_hash).0[..4]
                .try_into()
                .expect("4 bytes"),
        ),
        hidden_sectors: esp.first_lba as u32,
        epoch,
        files: vec![
            ("EFI/BOOT/BOOTX64.EFI".into(), sd_boot),
            (
                "loader/loader.conf".into(),
                plan::render_loader_conf(def.boot_timeout).into_bytes(),
            ),
            (uki_path.clone(), uki_bytes),
        ],
    }
    .build()
    .map_err(BuildError::Esp)?;
    for (off, bytes) in &fat.regions {
        disk.write_all_at(bytes, esp.offset() + off)
            .map_err(io_err("writing ESP to", &disk_path))?;
    }
    let uki_offset = esp.offset() + fat.extents[&uki_path].0;
    lap("esp", &mut stages, &mut t);

    // 7. disk: table, verity, state
    log("disk: partition table, verity tree, state file system");
    let gpt = Gpt::new(
        layout.disk_guid,
        layout.disk_size,
        layout.partitions.iter().map(|p| p.entry.clone()).collect(),
    )
    .map_err(BuildError::Gpt)?;
    for (off, bytes) in gpt.render() {
        disk.write_all_at(&bytes, off)
            .map_err(io_err("writing partition table to", &disk_path))?;
    }
    let verity_offset = layout.get(Role::VerityA).entry.offset();
    disk.write_all_at(&tree_v.hash_device, verity_offset)
        .map_err(io_err("writing verity tree to", &disk_path))?;
    disk.sync_all().map_err(io_err("syncing", &disk_path))?;
    drop(disk);
    let state = layout.get(Role::State).entry.clone();
    ext4::format(&Ext4Spec {
        disk: &disk_path,
        offset: state.offset(),
        size: state.size(),
        label: "state",
        uuid: Guid::derive("state filesystem", &root_hash),
        hash_seed: Guid::derive("state hash seed", &root_hash),
        epoch,
        scratch: &staging_dir,
    })?;
    let _ = fs::remove_file(staging_dir.join("mke2fs.conf"));
    lap("disk", &mut stages, &mut t);

    // 8. manifest
    log("manifest: hashing the disk image and signing");
    let mut disk = File::open(&disk_path).map_err(io_err("opening", &disk_path))?;
    let disk_sha = sha256_range(&mut disk, 0, layout.disk_size).map_err(io_err("hashing", &disk_path))?;
    let verity_sha: [u8; 32] = Sha256::digest(&tree_v.hash_device).into();
    let manifest = Manifest {
        format: manifest::FORMAT,
        name: def.name.clone(),
        version: def.version.clone(),
        architecture: def.architecture.clone(),
        source_date_epoch: epoch,
        root_hash: hex::encode(root_hash),
        verity_salt: hex::encode(salt),
        signing_key: key.public().fingerprint(),
        development_key: matches!(key_choice, KeyChoice::Development(..)),
        disk: Disk {
            file: DISK_FILE.into(),
            size: layout.disk_size,
            sha256: hex::encode(disk_sha),
            guid: layout.disk_guid.to_string(),
        },
        partitions: layout
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| PartitionEntry {
                number: i as u32 + 1,
                label: p.entry.name.clone(),
                type_guid: p.entry.type_guid.to_string(),
                uuid: p.entry.uuid.to_string(),
                offset: p.entry.offset(),
                size: p.entry.size(),
                attributes: p.entry.attributes,
            })
            .collect(),
        payloads: vec![
            Payload {
                name: "root".into(),
                offset: root_offset,
                size: sqfs_size,
                sha256: hex::encode(sqfs_sha),
            },
            Payload {
                name: "verity".into(),
                offset: verity_offset,
                size: tree_v.hash_device.len() as u64,
                sha256: hex::encode(verity_sha),
            },
            Payload {
                name: "uki".into(),
                offset: uki_offset,
                size: uki_len,
                sha256: hex::encode(uki_sha),
            },
        ],
    };
    let bytes = manifest.to_bytes();
    let sig = key.sign(&bytes);
    let mpath = staging_dir.join(MANIFEST_FILE);
    fs::write(&mpath, &bytes).map_err(io_err("writing", &mpath))?;
    let spath = staging_dir.join(SIGNATURE_FILE);
    fs::write(&spath, sig).map_err(io_err("writing", &spath))?;
    lap("manifest", &mut stages, &mut t);

    // 9. update bundle: the same payloads, signed for nodes to stream into a slot.
    log("bundle: update.cairn for running nodes");
    let bpath = staging_dir.join(bundle::FILE);
    if let Some(k) = &next_key {
        log(&format!("bundle: announces the next release key {}", k.fingerprint()));
    }
    write_bundle(&manifest, &disk_path, &bpath, &key, next_key.as_ref())?;
    lap("bundle", &mut stages, &mut t);

    // Commit.
    for f in [DISK_FILE, MANIFEST_FILE, SIGNATURE_FILE, bundle::FILE] {
        let p = staging_dir.join(f);
        File::open(&p)
            .and_then(|f| f.sync_all())
            .map_err(io_err("syncing", &p))?;
    }
    if !out.exists() {
        fs::rename(&staging_dir, &out).map_err(io_err("moving the build into", &out))?;
        staging.keep = true;
    } else {
        for f in [DISK_FILE, bundle::FILE, SIGNATURE_FILE, MANIFEST_FILE] {
            fs::rename(staging_dir.join(f), out.join(f)).map_err(io_err("moving the build into", &out))?;
        }
    }
    drop(staging);
    if let Ok(d) = File::open(&parent) {
        let _ = d.sync_all();
    }

    Ok(BuildReport {
        manifest,
        out,
        stages,
        key: key_choice,
        tree: stats,
        squashfs_size: sqfs_size,
        skipped,
        layout,
        debian: debian_report,
        units,
        kubelet,
        modules: module_reports,
        node_config_key: def
            .node_config_key
            .as_deref()
            .and_then(|pem| cairn_signing::PublicKey::from_pem(pem).ok())
            .map(|k| k.fingerprint()),
    })
}

/// The bundle manifest for an image manifest: same identity, hashes and sizes; offsets
/// are set when the bundle is written.
pub fn bundle_manifest(m: &Manifest, next_key: Option<&cairn_signing::PublicKey>) -> BundleManifest {
    BundleManifest {
        bundle_format: bundle::FORMAT,
        name: m.name.clone(),
        version: m.version.clone(),
        architecture: m.architecture.clone(),
        source_date_epoch: m.source_date_epoch,
        root_hash: m.root_hash.clone(),
        verity_salt: m.verity_salt.clone(),
        signing_key: m.signing_key.clone(),
        development_key: m.development_key,
        payloads: bundle::PAYLOADS
            .iter()
            .map(|n| {
                let p = m.payload(n).expect("a build manifest has every payload");
                Payload { offset: 0, ..p.clone() }
            })
            .collect(),
        next_signing_key: next_key.map(cairn_signing::PublicKey::to_hex),
    }
}

/// Write `update.cairn` at `path` from the payload ranges of `disk`.
fn write_bundle(
    m: &Manifest,
    disk: &Path,
    path: &Path,
    key: &PrivateKey,
    next_key: Option<&cairn_signing::PublicKey>,
) -> Result<BundleManifest, BuildError> {
    let mut sources = Vec::new();
    for n in bundle::PAYLOADS {
        let p = m.payload(n).expect("a build manifest has every payload");
        let mut f = File::open(disk).map_err(io_err("opening", disk))?;
        f.seek(SeekFrom::Start(p.offset)).map_err(io_err("reading", disk))?;
        sources.push(io::BufReader::with_capacity(1 << 20, f));
    }
    let mut refs: Vec<&mut dyn Read> = sources.iter_mut().map(|s| s as &mut dyn Read).collect();
    let file = File::create(path).map_err(io_err("creating", path))?;
    let mut out = io::BufWriter::with_capacity(1 << 20, file);
    let written = bundle::write(&mut out, bundle_manifest(m, next_key), key, &mut refs).map_err(|e| match e {
        BundleError::Io(source) => BuildError::from(io_err("writing", path)(source)),
        other => BuildError::Bundle(other),
    })?;
    out.into_inner()
        .map_err(|e| io_err("writing", path)(e.into_error()))?
        .sync_all()
        .map_err(io_err("syncing", path))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn sparse_hash_equals_plain_hash() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(&[7u8; 100_000], 9 << 20).unwrap();
        f.write_all_at(b"end", (64 << 20) - 3).unwrap();
        drop(f);
        let all = fs::read(&p).unwrap();
        let mut f = File::open(&p).unwrap();
        for (off, len) in [(0, 64 << 20), (1, 100), (5 << 20, 6 << 20), ((64 << 20) - 10, 10)] {
            let want: [u8; 32] = Sha256::digest(&all[off..off + len]).into();
            assert_eq!(
                sha256_range(&mut f, off as u64, len as u64).unwrap(),
                want,
                "{off}+{len}"
            );
        }
    }
}
