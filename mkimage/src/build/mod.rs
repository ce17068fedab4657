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

pub mod layout;
mod outputs;
pub mod plan;

use plan::EspSource;
pub use plan::{KeyChoice, KeyPlan, Overrides, Plan};

use crate::ioerr::{io_err, IoError};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_signing::bundle::{self, BundleError, BundleManifest};
use cairn_signing::manifest::{self, BuildKind, DataRange, Disk, Manifest, PartitionEntry, Payload};
use cairn_signing::{KeyError, PrivateKey};
use sha2::{Digest, Sha256};

use crate::definition::{Artifact, ArtifactSource, Definition, ModulePolicy, OutputFormat, RootSource, Size};
use crate::formats::ext4::{self, Ext4Spec};
use crate::formats::fat::{FatError, FatSpec};
use crate::formats::squashfs::{self, PackError, SquashfsSpec};
use crate::formats::uki::{self, UkiError, UkiParts};
use crate::gpt::{Gpt, GptError};
use crate::guid::Guid;
use crate::packages::debian::{self, DebianError, LockMode};
use crate::tools::{self, ToolError};
use crate::tree::customize;
use crate::tree::kconfig;
use crate::tree::rootfs::{Tree, TreeError, TreeStats};
use crate::verity::{self, VerityParams};
use layout::{Layout, Role};

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
    Modules(#[from] crate::tree::modules::ModulesError),
    /// `SOURCE_DATE_EPOCH` is not a number.
    #[error("SOURCE_DATE_EPOCH='{0}' is not a number of seconds\n  hint: unset it or set it to e.g. $(git log -1 --format=%ct)")]
    Epoch(String),
    /// A command-line value the build cannot take.
    #[error("{flag} {why}")]
    Override {
        /// The flag.
        flag: &'static str,
        /// What is wrong with its value.
        why: String,
    },
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
            what: "Cairn binary",
            path: p,
            source: io::Error::from(io::ErrorKind::NotFound),
            hint: "build the workspace (`cargo build --release`) so cairn-node and cairn-keyserver sit beside cairn",
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

/// A finished build, for the summary.
pub struct BuildReport {
    /// The signed manifest.
    pub manifest: Manifest,
    /// The output directory.
    pub out: PathBuf,
    /// Time per stage.
    pub stages: Vec<(&'static str, Duration)>,
    /// The key used.
    pub key: KeyPlan,
    /// Whether this build created it (the development key, on first use).
    pub key_created: bool,
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
    pub modules: Vec<crate::tree::modules::TrimReport>,
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
    if def.formats.contains(&OutputFormat::RawZst) && !t.contains(&"zstd") {
        t.push("zstd");
    }
    if def.formats.contains(&OutputFormat::Qcow2) {
        t.push("qemu-img");
    }
    if def.formats.contains(&OutputFormat::Iso) {
        t.extend(["xorriso", "mkfs.fat", "mmd", "mcopy", "sgdisk", "sfdisk"]);
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

/// Copy `len` bytes of `src` into `disk` at `offset` (in the kernel, with
/// `copy_file_range`, where the file systems allow).
fn copy_into(src: &Path, disk: &mut File, offset: u64, len: u64) -> Result<(), BuildError> {
    let f = File::open(src).map_err(io_err("opening", src))?;
    disk.seek(SeekFrom::Start(offset)).map_err(io_err("writing", src))?;
    let n = io::copy(&mut f.take(len), disk).map_err(io_err("writing", src))?;
    if n != len {
        return Err(BuildError::Output(
            src.to_owned(),
            format!("holds {n} bytes, not {len}"),
        ));
    }
    Ok(())
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

/// Load the planned key; the development key is created on first use.
fn load_key(key: &KeyPlan) -> Result<(PrivateKey, bool), BuildError> {
    match &key.choice {
        KeyChoice::Development(p) if !p.exists() => {
            // A public key left without its private half is useless: replace both.
            let k = PrivateKey::generate();
            k.write_pair(p, &public_path_for(p), true)?;
            Ok((k, true))
        }
        c => Ok((PrivateKey::read(c.path())?, false)),
    }
}

/// What the check stage read: every input the later stages need from outside the tree.
struct Inputs {
    stub: Vec<u8>,
    /// The plan's ESP files that come from files, by path.
    esp_files: std::collections::HashMap<PathBuf, Vec<u8>>,
    key: PrivateKey,
    key_created: bool,
}

/// Stage 1: tools, inputs, the key; nothing is built before all of them are there.
fn check(plan: &Plan) -> Result<Inputs, BuildError> {
    tools::require(&plan.tools)?;
    let stub = read_input(
        &plan.def.stub,
        "EFI stub",
        "apt-get install systemd-boot-efi, or set [kernel] stub",
    )?;
    let mut esp_files = std::collections::HashMap::new();
    for (_, from) in &plan.esp {
        if let EspSource::File(p) = from {
            let bytes = read_input(
                p,
                "systemd-boot",
                "apt-get install systemd-boot-efi, or set [boot] systemd-boot",
            )?;
            esp_files.insert(p.clone(), bytes);
        }
    }
    let (key, key_created) = load_key(&plan.key)?;
    Ok(Inputs {
        stub,
        esp_files,
        key,
        key_created,
    })
}

/// Create the staging directory beside the output directory (so the final moves are
/// renames), after removing those of builds that were killed.
fn staging(out: &Path) -> Result<(Staging, PathBuf), BuildError> {
    if out.exists() && !out.is_dir() {
        return Err(BuildError::Output(
            out.to_owned(),
            "exists and is not a directory".into(),
        ));
    }
    let out_name = out
        .file_name()
        .ok_or_else(|| BuildError::Output(out.to_owned(), "needs a final path component".into()))?
        .to_string_lossy()
        .into_owned();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_err("creating", &parent))?;
    let prefix = format!(".{out_name}.cairn-staging-");
    if let Ok(rd) = fs::read_dir(&parent) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let dead = name
                .strip_prefix(&prefix)
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !crate::packages::cache::process_alive(pid));
            if dead {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = parent.join(format!("{prefix}{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir).map_err(io_err("creating", &dir))?;
    Ok((Staging { dir, keep: false }, parent))
}

/// The root tree with everything the image carries, the kernel and initrd that boot it,
/// and what went into it.
struct RootTree {
    tree: Tree,
    boot: Boot,
    report: TreeReport,
}

/// The kernel and initrd for the UKI.
struct Boot {
    kernel: Vec<u8>,
    initrd: Vec<u8>,
}

/// What went into the tree, for the summary.
struct TreeReport {
    debian: Option<DebianReport>,
    modules: Vec<crate::tree::modules::TrimReport>,
    units: Vec<String>,
    kubelet: Option<String>,
    /// What the SBOM lists besides the image.
    components: Vec<crate::sbom::Component>,
    /// The Debian suite, for the SBOM's purls.
    suite: Option<String>,
}

/// The Debian packages of `lock` as SBOM components, each with the license its copyright
/// file in `tree` declares (`usr/share/doc/NAME/copyright`; a doc directory that is a
/// symlink to a sibling, as Debian allows for packages of one source, is followed once).
fn debian_components(
    tree: &Tree,
    lock: &crate::packages::lock::Lock,
) -> Result<Vec<crate::sbom::Component>, BuildError> {
    use crate::sbom::copyright::{self, Declared};
    use crate::tree::tarstream::Kind;
    let mut out = Vec::new();
    for p in &lock.package {
        let mut doc = format!("usr/share/doc/{}", p.name);
        if let Some(Kind::Symlink(t)) = tree.get(&doc).map(|h| &h.kind) {
            let t = t.strip_prefix("./").unwrap_or(t);
            if !t.is_empty() && !t.contains('/') && t != ".." && t != "." {
                doc = format!("usr/share/doc/{t}");
            }
        }
        let license = match tree.read_file(&format!("{doc}/copyright"))? {
            Some(text) => copyright::declared(&text),
            None => Declared::NoAssertion("the package has no copyright file in the image"),
        };
        out.push(crate::sbom::Component {
            origin: crate::sbom::Origin::Debian,
            name: p.name.clone(),
            version: Some(p.version.clone()),
            architecture: Some(p.architecture.clone()),
            sha256: Some(p.sha256.clone()),
            download: Some(format!(
                "{}/{}",
                lock.mirrors.url(p.archive).trim_end_matches('/'),
                p.path
            )),
            license,
        });
    }
    Ok(out)
}

/// Stage 2: the root tree: the Debian tree (or a directory or tarball), Cairn's changes,
/// trimmed modules, units, the agent, the kubelet, overlays, os-release and keys.
fn root_tree(
    plan: &Plan,
    key: &PrivateKey,
    scratch: &Path,
    stages: &mut Stages,
    log: &mut dyn FnMut(&str),
) -> Result<RootTree, BuildError> {
    let def = &plan.def;
    let epoch = plan.epoch;
    let mut debian = None;
    let mut components = Vec::new();
    let mut suite = None;
    // A cached Debian tree's content is fixed by its key: work derived from it alone may be
    // kept beside it for the next build.
    let mut tree_cache = None;
    let (mut tree, tree_kernel, tree_initrd) = match &def.root {
        RootSource::Directory(d) => {
            log(&format!("root tree: indexing {}", d.display()));
            (Tree::from_dir(d)?, None, None)
        }
        RootSource::Tarball(p) => {
            log(&format!("root tree: indexing {}", p.display()));
            let tar = decompress(p, scratch)?;
            (Tree::from_tar(&tar)?, None, None)
        }
        RootSource::Debian(spec) => {
            let inputs = debian::TreeInputs {
                dracut_modules: &def.dracut_modules,
                drivers: &def.initrd_drivers,
                epoch,
            };
            let mode = plan.packages.as_ref().map_or(LockMode::Follow, |p| p.mode);
            let prepared = debian::prepare(spec, &def.file, &inputs, mode, &Default::default(), log)?;
            stages.lap("debian");
            log(&format!("root tree: indexing {} packages", prepared.lock.package.len()));
            let mut tree = Tree::from_tar(&prepared.tar)?;
            tree_cache = prepared.tar.parent().map(Path::to_owned);
            check_kernel_config(&tree, log)?;
            let c = customize::debian_root(&mut tree, epoch)?;
            components = debian_components(&tree, &prepared.lock)?;
            suite = Some(prepared.lock.suite.clone());
            log(&format!(
                "root tree: removed {} entries an image must not carry, {} /var entries moved to the factory copy",
                c.removed, c.factory_var
            ));
            debian = Some(DebianReport {
                cache_hit: prepared.cache_hit,
                key: prepared.key.clone(),
                packages: prepared.lock.package.len(),
                downloaded: prepared.downloaded,
                lock: spec.lock.clone(),
                lock_written: prepared.lock_written.clone(),
                moved: prepared.moves.len(),
                build_seconds: prepared.build_seconds,
            });
            (tree, Some(prepared.kernel), Some(prepared.initrd))
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
    let mut modules = Vec::new();
    if let ModulePolicy::Trim { classes, extra } = &def.modules {
        let keep = kconfig::parse_keep(kconfig::CAIRN_FRAGMENT).expect("the shipped fragment parses (unit-tested)");
        let rules: Vec<String> = keep
            .into_iter()
            .filter(|(c, _)| classes.contains(c))
            .flat_map(|(_, r)| r)
            .collect();
        let scratch = scratch.join("depmod");
        let reuse = tree_cache
            .as_deref()
            .map(|d| crate::tree::modules::reuse_dir(d, &rules, extra));
        modules = crate::tree::modules::trim(&mut tree, &rules, extra, &scratch, reuse.as_deref(), epoch)?;
        if scratch.exists() {
            fs::remove_dir_all(&scratch).map_err(|e| BuildError::Output(scratch.clone(), e.to_string()))?;
        }
        for r in &modules {
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
    // Cairn's own binaries.
    for (file, what, name, hint) in [
        (
            &plan.agent,
            "node agent",
            "cairn-node",
            "build it with `cargo build --release -p cairn-node`",
        ),
        (
            &plan.keyserver,
            "keyserver",
            "cairn-keyserver",
            "build it with `cargo build --release -p cairn-keyserver`",
        ),
    ] {
        if let Some(p) = file {
            let bytes = read_input(p, what, hint)?;
            components.push(crate::sbom::Component {
                origin: crate::sbom::Origin::Cairn,
                name: name.to_string(),
                version: Some(env!("CARGO_PKG_VERSION").to_string()),
                architecture: None,
                sha256: Some(hex::encode(Sha256::digest(&bytes))),
                download: None,
                license: crate::sbom::copyright::Declared::Expression {
                    spdx: env!("CARGO_PKG_LICENSE").to_string(),
                    refs: vec![],
                },
            });
            tree.add_file(&format!("usr/bin/{name}"), 0o755, bytes, epoch)?;
        }
    }
    // systemd never starts with the clock before this file's time, and the key agent
    // refuses to enroll on a clock before it: the image cannot have been built later than
    // it runs (a board without a hardware clock starts in 1970). Only a real build time
    // goes there: systemd also treats a clock more than 15 years past this time as wrong
    // and sets it back, so the 1980 default epoch would throw every node's clock back to
    // systemd's own build date.
    if epoch > DEFAULT_EPOCH {
        tree.add_file("usr/lib/clock-epoch", 0o644, Vec::new(), epoch)?;
    }
    let kubelet = match &def.kubelet {
        None => None,
        Some(a) => {
            let bytes = fetch_artifact(a, scratch)?;
            components.push(crate::sbom::Component {
                origin: crate::sbom::Origin::Artifact,
                name: "kubelet".into(),
                version: None,
                architecture: None,
                sha256: Some(hex::encode(a.sha256)),
                download: match &a.source {
                    ArtifactSource::Url(u) => Some(u.clone()),
                    ArtifactSource::Path(_) => None,
                },
                license: crate::sbom::copyright::Declared::NoAssertion(
                    "a pinned artifact: Cairn knows its hash, not its license",
                ),
            });
            tree.add_file("usr/bin/kubelet", 0o755, bytes, epoch)?;
            Some(hex::encode(a.sha256))
        }
    };
    for o in &def.overlays {
        log(&format!("root tree: overlay {}", o.display()));
        tree.overlay_dir(o)?;
    }
    tree.add_file("usr/lib/os-release", 0o644, plan.os_release.clone().into_bytes(), epoch)?;
    tree.add_symlink("etc/os-release", "../usr/lib/os-release", epoch)?;
    tree.add_file(
        layout::IMAGE_PUBLIC_KEY_PATH,
        0o644,
        key.public().to_pem().into_bytes(),
        epoch,
    )?;
    if let Some(pem) = &def.node_config_key {
        tree.add_file(layout::NODE_CONFIG_KEY_PATH, 0o644, pem.clone().into_bytes(), epoch)?;
    }
    tree.normalize(epoch)?;
    Ok(RootTree {
        tree,
        boot: Boot { kernel, initrd },
        report: TreeReport {
            debian,
            modules,
            units,
            kubelet,
            components,
            suite,
        },
    })
}

/// The packed root.
struct Packed {
    path: PathBuf,
    size: u64,
    stats: TreeStats,
    skipped: Vec<String>,
}

/// Stage 3: stream the tree into a squashfs file and check it fits its slot.
fn pack(plan: &Plan, mut tree: Tree, scratch: &Path, log: &mut dyn FnMut(&str)) -> Result<Packed, BuildError> {
    let stats = tree.stats();
    let skipped = std::mem::take(&mut tree.skipped);
    log(&format!(
        "squashfs: packing {} entries, {} of file data (zstd level {}{})",
        stats.entries,
        human(stats.data_bytes),
        plan.level,
        if plan.kind == BuildKind::Development {
            ", --dev"
        } else {
            ""
        }
    ));
    let path = scratch.join("root.squashfs");
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
    let size = squashfs::pack(
        &tree,
        &SquashfsSpec {
            out: &path,
            level: plan.level,
            block_size: plan.def.block_size.0,
            epoch: plan.epoch,
        },
        &mut progress,
    )
    .map_err(|e| match e {
        PackError::Tree(t) => BuildError::Tree(t),
        PackError::Tool(t) => BuildError::Tool(t),
    })?;
    let slot = plan.layout.get(Role::RootA).entry.size();
    if size > slot {
        let need = size.div_ceil(1 << 24) << 24; // next 16 MiB
        return Err(BuildError::RootTooBig {
            size: Size(size),
            slot: Size(slot),
            over: Size(size - slot),
            need: Size(need),
            file: match plan.def.root_size_line {
                Some(l) => format!("{}:{l}", plan.def.file.display()),
                None => plan.def.file.display().to_string(),
            },
        });
    }
    Ok(Packed {
        path,
        size,
        stats,
        skipped,
    })
}

/// The root's dm-verity tree and what it was made from.
struct Verity {
    hash_device: Vec<u8>,
    root_hash: [u8; 32],
    salt: [u8; 32],
    root_sha: [u8; 32],
}

/// Stage 4: salt = sha256 over the squashfs (so it follows the content), then the tree.
fn verity(packed: &Packed) -> Result<Verity, BuildError> {
    let mut f = File::open(&packed.path).map_err(io_err("opening", &packed.path))?;
    let root_sha = sha256_range(&mut f, 0, packed.size).map_err(io_err("hashing", &packed.path))?;
    let salt: [u8; 32] = Sha256::new()
        .chain_update(b"cairn verity salt v1\0")
        .chain_update(root_sha)
        .finalize()
        .into();
    let params = VerityParams {
        salt,
        uuid: Guid::derive("verity superblock", &salt).0,
    };
    f.seek(SeekFrom::Start(0)).map_err(io_err("reading", &packed.path))?;
    let t = verity::build(&mut f, packed.size, &params).map_err(io_err("hashing", &packed.path))?;
    Ok(Verity {
        hash_device: t.hash_device,
        root_hash: t.root_hash,
        salt,
        root_sha,
    })
}

/// The ESP as regions of bytes, and where the UKI landed in it.
struct Esp {
    regions: Vec<(u64, Vec<u8>)>,
    uki_offset: u64,
    uki_size: u64,
    uki_sha: [u8; 32],
    /// The live ISO's ESP files (the live UKI in the UKI's place), when it is asked for.
    live: Option<Vec<(String, Vec<u8>)>>,
}

/// Stages 5 and 6: the UKI (stub, kernel, initrd, command line with the root hash,
/// os-release), then the FAT32 ESP with the plan's files.
fn esp(
    plan: &Plan,
    inputs: &Inputs,
    boot: Boot,
    root_hash: &[u8; 32],
    stages: &mut Stages,
    log: &mut dyn FnMut(&str),
) -> Result<Esp, BuildError> {
    log("uki: assembling the unified kernel image");
    // One kernel, initrd and stub; the command line is what differs between the disk's
    // UKI and the live ISO's.
    let build_uki = |cmdline: &str| {
        uki::build(&UkiParts {
            stub: &inputs.stub,
            osrel: plan.os_release.as_bytes(),
            cmdline: cmdline.as_bytes(),
            linux: &boot.kernel,
            initrd: &boot.initrd,
        })
        .map(|(uki, _)| uki)
        .map_err(BuildError::Uki)
    };
    let cmdline = plan.cmdline(&hex::encode(root_hash));
    let uki = build_uki(&cmdline)?;
    // The live ISO's UKI: the same, with the live words at the end of its command line.
    let live_uki = if plan.def.formats.contains(&OutputFormat::Iso) {
        let live_words = crate::formats::iso::LIVE_WORDS.join(" ");
        Some(build_uki(&format!("{cmdline} {live_words}"))?)
    } else {
        None
    };
    stages.lap("uki");

    log("esp: writing FAT32");
    let part = plan.layout.get(Role::Esp).entry.clone();
    let uki_size = uki.len() as u64;
    let uki_sha: [u8; 32] = Sha256::digest(&uki).into();
    let mut uki = Some(uki);
    let mut uki_path = String::new();
    let mut files = Vec::new();
    let mut live = live_uki.map(|u| (Some(u), Vec::new()));
    for (path, from) in &plan.esp {
        let bytes = match from {
            EspSource::File(p) => inputs.esp_files[p].clone(),
            EspSource::Text(t) => t.clone().into_bytes(),
            EspSource::Uki => {
                uki_path = path.clone();
                if let Some((u, files)) = &mut live {
                    files.push((path.clone(), u.take().expect("one UKI in the plan")));
                }
                uki.take().expect("one UKI in the plan")
            }
        };
        if let Some((_, files)) = &mut live {
            if !matches!(from, EspSource::Uki) {
                files.push((path.clone(), bytes.clone()));
            }
        }
        files.push((path.clone(), bytes));
    }
    let fat = FatSpec {
        size: part.size(),
        label: "ESP".into(),
        volume_id: u32::from_le_bytes(
            Guid::derive("esp volume id", root_hash).0[..4]
                .try_into()
                .expect("4 bytes"),
        ),
        hidden_sectors: part.first_lba as u32,
        epoch: plan.epoch,
        files,
    }
    .build()
    .map_err(BuildError::Esp)?;
    let uki_offset = part.offset() + fat.extents[&uki_path].0;
    let regions = fat
        .regions
        .into_iter()
        .map(|(off, b)| (part.offset() + off, b))
        .collect();
    Ok(Esp {
        regions,
        uki_offset,
        uki_size,
        uki_sha,
        live: live.map(|(_, files)| files),
    })
}

/// Stage 7, the one place that writes `disk.raw`: the partition table, the ESP, the root
/// and its verity tree in slot A, and the ext4 state file system.
fn write_disk(
    layout: &Layout,
    path: &Path,
    scratch: &Path,
    packed: &Packed,
    v: &Verity,
    esp: &Esp,
    epoch: u64,
) -> Result<(), BuildError> {
    let mut disk = File::create(path).map_err(io_err("creating", path))?;
    disk.set_len(layout.disk_size).map_err(io_err("sizing", path))?;
    let gpt = Gpt::new(
        layout.disk_guid,
        layout.disk_size,
        layout.partitions.iter().map(|p| p.entry.clone()).collect(),
    )
    .map_err(BuildError::Gpt)?;
    for (off, bytes) in gpt.render() {
        disk.write_all_at(&bytes, off)
            .map_err(io_err("writing partition table to", path))?;
    }
    for (off, bytes) in &esp.regions {
        disk.write_all_at(bytes, *off).map_err(io_err("writing ESP to", path))?;
    }
    copy_into(
        &packed.path,
        &mut disk,
        layout.get(Role::RootA).entry.offset(),
        packed.size,
    )?;
    disk.write_all_at(&v.hash_device, layout.get(Role::VerityA).entry.offset())
        .map_err(io_err("writing verity tree to", path))?;
    disk.sync_all().map_err(io_err("syncing", path))?;
    drop(disk);
    let state = layout.get(Role::State).entry.clone();
    ext4::format(&Ext4Spec {
        disk: path,
        offset: state.offset(),
        size: state.size(),
        label: "state",
        uuid: Guid::derive("state filesystem", &v.root_hash),
        hash_seed: Guid::derive("state hash seed", &v.root_hash),
        epoch,
        scratch,
    })?;
    let _ = fs::remove_file(scratch.join("mke2fs.conf"));
    Ok(())
}

/// Stage 8: the manifest from the plan, the stages' hashes and the disk's data map.
fn manifest(
    plan: &Plan,
    layout: &Layout,
    key: &PrivateKey,
    disk: &Path,
    packed: &Packed,
    v: &Verity,
    esp: &Esp,
) -> Result<Manifest, BuildError> {
    let f = File::open(disk).map_err(io_err("opening", disk))?;
    let data = cairn_disk::extents::map(&f, layout.disk_size).map_err(io_err("mapping", disk))?;
    Ok(Manifest {
        format: manifest::FORMAT,
        name: plan.def.name.clone(),
        version: plan.def.version.clone(),
        architecture: plan.def.architecture.clone(),
        build: plan.kind,
        source_date_epoch: plan.epoch,
        root_hash: hex::encode(v.root_hash),
        verity_salt: hex::encode(v.salt),
        signing_key: key.public().fingerprint(),
        development_key: plan.key.choice.is_development(),
        disk: Disk {
            file: DISK_FILE.into(),
            size: layout.disk_size,
            guid: layout.disk_guid.to_string(),
            data: data
                .into_iter()
                .map(|r| DataRange {
                    offset: r.offset,
                    size: r.size,
                    sha256: hex::encode(r.sha256),
                })
                .collect(),
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
                offset: layout.get(Role::RootA).entry.offset(),
                size: packed.size,
                sha256: hex::encode(v.root_sha),
            },
            Payload {
                name: "verity".into(),
                offset: layout.get(Role::VerityA).entry.offset(),
                size: v.hash_device.len() as u64,
                sha256: hex::encode(Sha256::digest(&v.hash_device)),
            },
            Payload {
                name: "uki".into(),
                offset: esp.uki_offset,
                size: esp.uki_size,
                sha256: hex::encode(esp.uki_sha),
            },
        ],
    })
}

/// Move the finished files into the output directory: a rename of the whole staging
/// directory when it is new, else one rename per file, the manifest last.
fn commit(staging: &mut Staging, out: &Path, parent: &Path, files: &[&str], stale: &[&str]) -> Result<(), BuildError> {
    for f in files {
        let p = staging.dir.join(f);
        File::open(&p)
            .and_then(|f| f.sync_all())
            .map_err(io_err("syncing", &p))?;
    }
    if !out.exists() {
        fs::rename(&staging.dir, out).map_err(io_err("moving the build into", out))?;
        staging.keep = true;
    } else {
        // The signed list first: without it, a stale output is an unlisted file.
        for f in stale.iter().rev() {
            let p = out.join(f);
            match fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("removing the stale", &p)(e).into()),
                _ => {}
            }
        }
        for f in files {
            fs::rename(staging.dir.join(f), out.join(f)).map_err(io_err("moving the build into", out))?;
        }
    }
    if let Ok(d) = File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Stage times for the summary.
struct Stages {
    done: Vec<(&'static str, Duration)>,
    t: Instant,
}

impl Stages {
    fn lap(&mut self, name: &'static str) {
        self.done.push((name, self.t.elapsed()));
        self.t = Instant::now();
    }
}

/// Execute `plan`. `log` receives progress lines.
pub fn build(plan: &Plan, log: &mut dyn FnMut(&str)) -> Result<BuildReport, BuildError> {
    let mut stages = Stages {
        done: Vec::new(),
        t: Instant::now(),
    };
    log("checking inputs");
    let inputs = check(plan)?;
    if inputs.key_created {
        log(&format!(
            "created the development signing key {}",
            plan.key.choice.path().display()
        ));
    }
    let (mut staging, parent) = staging(&plan.out)?;
    let scratch = staging.dir.clone();
    stages.lap("check");

    let RootTree { tree, boot, report } = root_tree(plan, &inputs.key, &scratch, &mut stages, log)?;
    stages.lap("root tree");

    let packed = pack(plan, tree, &scratch, log)?;
    stages.lap("squashfs");

    log("verity: hashing the root filesystem");
    let v = verity(&packed)?;
    let mut layout = plan.layout.clone();
    layout::assign_ids(&mut layout, &v.root_hash);
    stages.lap("verity");

    let esp = esp(plan, &inputs, boot, &v.root_hash, &mut stages, log)?;
    stages.lap("esp");

    log("disk: partition table, partitions, state file system");
    let disk_path = scratch.join(DISK_FILE);
    write_disk(&layout, &disk_path, &scratch, &packed, &v, &esp, plan.epoch)?;
    let _ = fs::remove_file(&packed.path);
    stages.lap("disk");

    log("manifest: mapping the disk image's data and signing");
    let manifest = manifest(plan, &layout, &inputs.key, &disk_path, &packed, &v, &esp)?;
    let bytes = manifest.to_bytes();
    let mpath = scratch.join(MANIFEST_FILE);
    fs::write(&mpath, &bytes).map_err(io_err("writing", &mpath))?;
    let spath = scratch.join(SIGNATURE_FILE);
    fs::write(&spath, inputs.key.sign(&bytes)).map_err(io_err("writing", &spath))?;
    stages.lap("manifest");

    log("bundle: update.cairn for running nodes");
    if let Some(k) = &plan.next_key {
        log(&format!("bundle: announces the next release key {}", k.fingerprint()));
    }
    write_bundle(
        &manifest,
        &disk_path,
        &scratch.join(bundle::FILE),
        &inputs.key,
        plan.next_key.as_ref(),
    )?;
    stages.lap("bundle");

    let (sbom, counts) = crate::sbom::document(
        &crate::sbom::Image {
            name: &manifest.name,
            version: &manifest.version,
            architecture: &manifest.architecture,
            root_hash: &manifest.root_hash,
            epoch: plan.epoch,
            suite: report.suite.as_deref(),
        },
        &report.components,
    );
    log(&format!(
        "sbom: {} Debian packages ({} with a license read from their copyright file), {} other components",
        counts.debian, counts.debian_licensed, counts.other
    ));
    let extra = outputs::write(
        &scratch,
        &plan.def.formats,
        &outputs::Signed {
            manifest: &manifest,
            bytes: &bytes,
            key: &inputs.key,
        },
        &sbom,
        esp.live.as_deref(),
        log,
    )?;
    stages.lap("outputs");

    // The manifest after the files it names, the outputs' list after the manifest it
    // names: a reader never sees a list or manifest whose files are not there yet. What
    // an earlier build into the same directory wrote and this one did not is removed
    // first, so no stale bmap sits beside a new disk.
    let (extra_files, extra_list): (Vec<&str>, Vec<&str>) = extra
        .iter()
        .partition(|f| **f != cairn_signing::outputs::FILE && **f != cairn_signing::outputs::SIGNATURE_FILE);
    let mut files = extra_files;
    files.extend([DISK_FILE, bundle::FILE, SIGNATURE_FILE, MANIFEST_FILE]);
    files.extend(extra_list);
    let stale: Vec<&str> = outputs::all_files()
        .into_iter()
        .filter(|f| !files.contains(f))
        .collect();
    commit(&mut staging, &plan.out, &parent, &files, &stale)?;
    drop(staging);

    Ok(BuildReport {
        manifest,
        out: plan.out.clone(),
        stages: stages.done,
        key: plan.key.clone(),
        key_created: inputs.key_created,
        tree: packed.stats,
        squashfs_size: packed.size,
        skipped: packed.skipped,
        layout,
        debian: report.debian,
        units: report.units,
        kubelet: report.kubelet,
        modules: report.modules,
        node_config_key: plan.node_config_key.clone(),
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
        development_build: m.build == BuildKind::Development,
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
