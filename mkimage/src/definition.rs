//! The image definition (`image.toml`): parsed strictly, validated, defaults applied.
//!
//! Every error names the file, the line and column, and a fix. Paths in a definition are
//! relative to the directory of the definition file. See `docs/image-definition.md` for
//! the schema a user reads; this module is its single source of truth.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// The definition schema version this Cairn reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Where systemd-boot-efi puts the stub and the boot loader on Debian.
pub const DEFAULT_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// systemd-boot for x86-64.
pub const DEFAULT_SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

const MIB: u64 = 1 << 20;

/// A definition error with its place and a fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionError {
    /// The definition file.
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub at: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((l, c)) = self.at {
            write!(f, ":{l}:{c}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DefinitionError {}

/// A size in bytes, written as an integer or a string with a unit: `"512M"`, `"1G"`,
/// `"1GiB"`, `"300MiB"`, `"4096"`. Units are binary (K = 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    /// Parse the string form.
    pub fn parse(s: &str) -> Result<Size, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if unit.starts_with('.') {
            return Err(format!("'{s}' is not a whole number; write e.g. \"1536M\" for 1.5G"));
        }
        let n: u64 = num.parse().map_err(|_| format!("'{s}' is not a size"))?;
        let mult = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            u => return Err(format!("unknown unit '{u}' in '{s}'")),
        };
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| format!("'{s}' is too large"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        let text = if b >= 1 << 30 && b % (1 << 30) == 0 {
            format!("{} GiB", b >> 30)
        } else if b >= MIB && b % MIB == 0 {
            format!("{} MiB", b >> 20)
        } else if b >= MIB {
            format!("{:.1} MiB", b as f64 / MIB as f64)
        } else if b >= 1024 && b % 1024 == 0 {
            format!("{} KiB", b >> 10)
        } else if b >= 1024 {
            format!("{:.1} KiB", b as f64 / 1024.0)
        } else {
            format!("{b} B")
        };
        // Honour width and alignment, so sizes line up in tables.
        f.pad(&text)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size: a whole number of bytes or a string like \"512M\"")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n)
                    .map(Size)
                    .map_err(|_| E::custom(format!("a size cannot be negative ({n})")))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Size, E> {
                Err(E::custom(format!(
                    "sizes are whole numbers, not {n}; write e.g. \"1536M\" for 1.5G"
                )))
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Size, E> {
                Err(E::custom(format!("{b} is not a size; write e.g. \"512M\"")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Size, E> {
                Size::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// The file as written (serde's view); see [`Definition`] for the validated form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDefinition {
    version: Spanned<u32>,
    image: RawImage,
    root: RawRoot,
    #[serde(default)]
    kernel: RawKernel,
    #[serde(default)]
    initrd: RawInitrd,
    #[serde(default)]
    kubelet: Option<RawKubelet>,
    #[serde(default)]
    boot: RawBoot,
    #[serde(default)]
    partitions: RawPartitions,
    #[serde(default)]
    squashfs: RawSquashfs,
    #[serde(default)]
    signing: RawSigning,
    #[serde(default)]
    output: RawOutput,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawImage {
    name: Spanned<String>,
    version: Spanned<String>,
    #[serde(default)]
    architecture: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRoot {
    #[serde(default)]
    source: Option<Spanned<String>>,
    #[serde(default)]
    debian: Option<Spanned<RawDebian>>,
    #[serde(default)]
    overlays: Vec<Spanned<String>>,
    #[serde(default)]
    units: Option<Spanned<String>>,
    #[serde(default)]
    node_agent: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDebian {
    suite: Spanned<String>,
    #[serde(default)]
    mirror: Option<Spanned<String>>,
    #[serde(default)]
    security_mirror: Option<Spanned<String>>,
    #[serde(default)]
    components: Option<Vec<Spanned<String>>>,
    packages: Vec<Spanned<String>>,
    #[serde(default)]
    kernel: Option<Spanned<String>>,
    #[serde(default)]
    lock: Option<Spanned<String>>,
    #[serde(default)]
    package_sources: Vec<Spanned<String>>,
    #[serde(default)]
    fallback_sources: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawInitrd {
    #[serde(default)]
    drivers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    dracut_modules: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKubelet {
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    url: Option<Spanned<String>>,
    sha256: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKernel {
    #[serde(default)]
    image: Option<Spanned<String>>,
    #[serde(default)]
    initrd: Option<Spanned<String>>,
    #[serde(default)]
    cmdline: Vec<Spanned<String>>,
    #[serde(default)]
    stub: Option<Spanned<String>>,
    #[serde(default)]
    modules: Option<Spanned<String>>,
    #[serde(default)]
    module_classes: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    extra_modules: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBoot {
    #[serde(default)]
    systemd_boot: Option<Spanned<String>>,
    #[serde(default)]
    timeout: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPartitions {
    esp_size: Option<Spanned<Size>>,
    root_size: Option<Spanned<Size>>,
    state_size: Option<Spanned<Size>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSquashfs {
    compression: Option<Spanned<String>>,
    level: Option<Spanned<u32>>,
    block_size: Option<Spanned<Size>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSigning {
    key: Option<Spanned<String>>,
    #[serde(default)]
    node_config_key: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawOutput {
    formats: Option<Spanned<Vec<String>>>,
}

/// Where the root tree comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource {
    /// An existing directory.
    Directory(PathBuf),
    /// A tarball (`.tar`, `.tar.gz`, `.tar.xz`, `.tar.zst`).
    Tarball(PathBuf),
    /// Debian packages, installed by mmdebstrap and pinned by a lock file.
    Debian(DebianSpec),
}

impl RootSource {
    /// A short description for the plan and progress lines.
    pub fn describe(&self) -> String {
        match self {
            RootSource::Directory(p) | RootSource::Tarball(p) => p.display().to_string(),
            RootSource::Debian(d) => format!("Debian {} ({} packages requested)", d.suite, d.packages.len()),
        }
    }
}

/// Debian packages for the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianSpec {
    /// Suite, e.g. `bookworm`; its `-updates` and `-security` suites are added.
    pub suite: String,
    /// Main archive URL; `None` takes the host's apt configuration.
    pub mirror: Option<String>,
    /// Security archive URL; `None` takes the host's apt configuration.
    pub security_mirror: Option<String>,
    /// Archive components.
    pub components: Vec<String>,
    /// Requested packages (the kernel and the initrd tools are added).
    pub packages: Vec<String>,
    /// The kernel package.
    pub kernel_package: String,
    /// The lock file.
    pub lock: PathBuf,
    /// Package stores (`cairn store export`) to take every package from, instead of the
    /// mirrors: set, the build never asks a mirror (an air-gapped rebuild of a locked image).
    pub package_sources: Vec<PackageSource>,
    /// Sources tried after the mirrors for locked packages they no longer serve, e.g. a dated
    /// snapshot archive; `{resolved}` becomes the lock's resolution time (`20261202T074012Z`).
    pub fallback_sources: Vec<PackageSource>,
}

/// Where packages can be fetched by their archive path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageSource {
    /// A local directory (a store export, or a mounted archive).
    Dir(PathBuf),
    /// An http(s) or file URL.
    Url(String),
}

impl std::fmt::Display for PackageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PackageSource::Dir(d) => write!(f, "{}", d.display()),
            PackageSource::Url(u) => f.write_str(u),
        }
    }
}

impl PackageSource {
    /// Parse a `--package-source` value: a URL, or a directory relative to the working directory.
    pub fn from_arg(v: &str) -> Result<PackageSource, String> {
        if v.contains("://") || v.starts_with("file:") {
            check_source_url(v)?;
            Ok(PackageSource::Url(v.trim_end_matches('/').to_string()))
        } else if v.is_empty() || v.chars().any(char::is_control) {
            Err(format!("package source {v:?} is not a directory"))
        } else {
            Ok(PackageSource::Dir(PathBuf::from(v)))
        }
    }
}

/// A mirror or package source URL: `http://`, `https://` or `file:/`, then printable ASCII
/// without spaces, quotes or brackets (it lands in apt's sources and on command lines).
pub fn check_source_url(u: &str) -> Result<(), String> {
    let scheme_ok = ["http://", "https://", "file:/"].iter().any(|p| u.starts_with(p));
    let rest_ok = u.len() <= 1024
        && u.bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"'`<>[]{}|^\\".contains(&b));
    if !scheme_ok {
        Err(format!("mirror {u:?} is not an http(s) or file URL"))
    } else if !rest_ok {
        Err(format!(
            "mirror {u:?} holds a space, a control character, a quote or a bracket"
        ))
    } else {
        Ok(())
    }
}

/// Where a pinned artifact comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactSource {
    /// A local file.
    Path(PathBuf),
    /// An http(s) or file URL, fetched with curl.
    Url(String),
}

/// A file pinned by its sha256 (the kubelet, which Debian does not package).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Where it comes from.
    pub source: ArtifactSource,
    /// Its expected sha256.
    pub sha256: [u8; 32],
}

/// Where the node agent binary comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAgent {
    /// `cairn-node` next to the running `cairn` executable (one `cargo build` makes both).
    BesideCairn,
    /// A given file.
    Path(PathBuf),
}

/// The dracut modules that open a dm-verity root with systemd in the initrd.
pub const DEFAULT_DRACUT_MODULES: &[&str] = &[
    "systemd",
    "systemd-initrd",
    "systemd-veritysetup",
    "dracut-systemd",
    "base",
    "fs-lib",
    "rootfs-block",
    "udev-rules",
    "kernel-modules",
];

/// Kernel modules the initrd carries: virtio, SATA, NVMe, USB storage, dm-verity and the
/// file systems of the disk.
pub const DEFAULT_INITRD_DRIVERS: &[&str] = &[
    "virtio_blk",
    "virtio_pci",
    "virtio_scsi",
    "ahci",
    "nvme",
    "usb_storage",
    "uas",
    "xhci_pci",
    "ehci_pci",
    "sd_mod",
    "dm_verity",
    "squashfs",
    "ext4",
    "vfat",
];

/// Squashfs compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// zstd at a level from 1 to 22.
    Zstd(u32),
}

/// Which kernel modules the image ships.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModulePolicy {
    /// Every module the kernel package brings.
    All,
    /// Only what these kernel-config classes and extra paths need (plus dependencies).
    Trim {
        /// Classes of `kernel-config/cairn.config` whose `# keep:` rules apply.
        classes: Vec<String>,
        /// More module files or directories, relative to `/usr/lib/modules/<version>/`.
        extra: Vec<String>,
    },
}

/// What the build writes besides the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// `disk.raw`, the image to flash or boot.
    Raw,
}

/// Signing mode: a configured key, or the per-user development key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigningKey {
    /// A release key file (PKCS#8 PEM).
    File(PathBuf),
    /// Cairn's development key, created on first use.
    Development,
}

/// A validated image definition with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// The file it came from.
    pub file: PathBuf,
    /// Image name (`[a-z0-9-]`, starts with a letter).
    pub name: String,
    /// Image version.
    pub version: String,
    /// Architecture; only `x86-64` today.
    pub architecture: String,
    /// Root tree source.
    pub root: RootSource,
    /// Overlay directories, applied in order.
    pub overlays: Vec<PathBuf>,
    /// Kernel image; `None` takes the one the Debian root installs.
    pub kernel: Option<PathBuf>,
    /// Initrd; `None` builds one with dracut inside the Debian root.
    pub initrd: Option<PathBuf>,
    /// Directory of Cairn's systemd units to install and enable.
    pub units: Option<PathBuf>,
    /// The node agent to install as /usr/bin/cairn-node.
    pub node_agent: Option<NodeAgent>,
    /// dracut modules for the initrd.
    pub dracut_modules: Vec<String>,
    /// Kernel modules for the initrd.
    pub initrd_drivers: Vec<String>,
    /// The kubelet binary, if pinned.
    pub kubelet: Option<Artifact>,
    /// Kernel command line words added after Cairn's own (`roothash=`).
    pub cmdline: Vec<String>,
    /// Which kernel modules ship.
    pub modules: ModulePolicy,
    /// EFI stub for the UKI.
    pub stub: PathBuf,
    /// systemd-boot binary.
    pub systemd_boot: PathBuf,
    /// Boot menu timeout in seconds.
    pub boot_timeout: u32,
    /// ESP size.
    pub esp_size: Size,
    /// Size of each root slot.
    pub root_size: Size,
    /// State partition size in the image (it grows on first boot).
    pub state_size: Size,
    /// Squashfs compression.
    pub compression: Compression,
    /// Squashfs block size.
    pub block_size: Size,
    /// Signing key.
    pub signing: SigningKey,
    /// Public key (SPKI PEM) that node configs on config drives must be signed with; `None`
    /// accepts unsigned drives.
    pub node_config_key: Option<String>,
    /// Output formats.
    pub formats: Vec<OutputFormat>,
    /// Line of `[partitions] root-size` (or of `[partitions]`), for "does not fit" errors.
    pub root_size_line: Option<usize>,
}

/// Turn a byte offset into a 1-based (line, column).
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
    (line, col)
}

struct Ctx<'a> {
    file: &'a Path,
    src: &'a str,
    dir: &'a Path,
}

impl Ctx<'_> {
    fn err<T>(
        &self,
        span: Option<std::ops::Range<usize>>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Result<T, DefinitionError> {
        let hint: String = hint.into();
        Err(DefinitionError {
            file: self.file.to_owned(),
            at: span.map(|s| line_col(self.src, s.start)),
            message: message.into(),
            hint: (!hint.is_empty()).then_some(hint),
        })
    }

    fn module_policy(&self, k: &RawKernel) -> Result<ModulePolicy, DefinitionError> {
        let known = crate::tree::kconfig::parse_keep(crate::tree::kconfig::CAIRN_FRAGMENT)
            .expect("the shipped fragment parses (unit-tested)");
        let names = || known.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(", ");
        let trim = match &k.modules {
            None => true,
            Some(m) => match m.get_ref().as_str() {
                "trim" => true,
                "all" => false,
                other => {
                    return self.err(
                        Some(m.span()),
                        format!("modules = '{other}' is not a module policy"),
                        "use \"trim\" (only what the module classes need; the default) or \"all\"",
                    )
                }
            },
        };
        if !trim {
            if let Some(s) = k
                .module_classes
                .as_ref()
                .and_then(|c| c.first())
                .or(k.extra_modules.first())
            {
                return self.err(
                    Some(s.span()),
                    "module-classes and extra-modules only apply when modules = \"trim\"",
                    "drop them, or set modules = \"trim\"",
                );
            }
            return Ok(ModulePolicy::All);
        }
        let classes = match &k.module_classes {
            None => known.iter().map(|(c, _)| c.clone()).collect(),
            Some(list) => {
                let mut out = Vec::new();
                for c in list {
                    if !known.iter().any(|(k, _)| k == c.get_ref()) {
                        return self.err(
                            Some(c.span()),
                            format!("'{}' is not a module class", c.get_ref()),
                            format!("classes in kernel-config/cairn.config: {}", names()),
                        );
                    }
                    out.push(c.get_ref().clone());
                }
                out
            }
        };
        let mut extra = Vec::new();
        for e in &k.extra_modules {
            if let Err(why) = crate::tree::kconfig::valid_keep_rule(e.get_ref()) {
                return self.err(
                    Some(e.span()),
                    format!("extra-modules entry '{}': {why}", e.get_ref()),
                    "e.g. extra-modules = [\"kernel/drivers/net/ethernet/intel/\", \"kernel/drivers/block/nbd.ko\"]",
                );
            }
            extra.push(e.get_ref().clone());
        }
        Ok(ModulePolicy::Trim { classes, extra })
    }

    fn path(&self, s: &Spanned<String>) -> PathBuf {
        let p = Path::new(s.get_ref());
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.dir.join(p)
        }
    }

    fn root_source(&self, source: &Spanned<String>) -> Result<RootSource, DefinitionError> {
        let src_path = self.path(source);
        match std::fs::metadata(&src_path) {
            Ok(m) if m.is_dir() => Ok(RootSource::Directory(src_path)),
            Ok(m) if m.is_file() => {
                let n = src_path.to_string_lossy();
                if [".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.zst"]
                    .iter()
                    .any(|e| n.ends_with(e))
                {
                    Ok(RootSource::Tarball(src_path))
                } else {
                    self.err(
                        Some(source.span()),
                        format!("root source {n} is neither a directory nor a .tar, .tar.gz, .tar.xz or .tar.zst file"),
                        "point `source` at a directory or a tarball of the root tree",
                    )
                }
            }
            Ok(_) => self.err(
                Some(source.span()),
                format!("root source {} is not a file or directory", src_path.display()),
                "",
            ),
            Err(e) => self.err(
                Some(source.span()),
                format!("root source {}: {e}", src_path.display()),
                "point `source` at an existing directory or tarball (paths are relative to the definition file)",
            ),
        }
    }

    fn debian(&self, d: &Spanned<RawDebian>) -> Result<DebianSpec, DefinitionError> {
        let raw = d.get_ref();
        let word = |s: &Spanned<String>, what: &str, hint: &str| -> Result<String, DefinitionError> {
            let v = s.get_ref();
            let ok = v.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && v.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
            if ok {
                Ok(v.clone())
            } else {
                self.err(Some(s.span()), format!("'{v}' is not a valid {what}"), hint)
            }
        };
        let url = |s: &Option<Spanned<String>>| -> Result<Option<String>, DefinitionError> {
            match s {
                None => Ok(None),
                Some(u) => match check_source_url(u.get_ref()) {
                    Ok(()) => Ok(Some(u.get_ref().trim_end_matches('/').to_string())),
                    Err(why) => self.err(Some(u.span()), why, "e.g. mirror = \"http://deb.debian.org/debian\""),
                },
            }
        };
        // A package source is a directory (relative to the definition) or a URL.
        let source = |s: &Spanned<String>, placeholder: bool| -> Result<PackageSource, DefinitionError> {
            let v = s.get_ref();
            if v.contains("://") || v.starts_with("file:") {
                let checked = if placeholder {
                    v.replace("{resolved}", "20000101T000000Z")
                } else {
                    v.clone()
                };
                match check_source_url(&checked) {
                    Ok(()) => Ok(PackageSource::Url(v.trim_end_matches('/').to_string())),
                    Err(why) => self.err(
                        Some(s.span()),
                        why,
                        "a package source is a directory or an http(s)/file URL of a `cairn store export`",
                    ),
                }
            } else if v.is_empty() || v.chars().any(char::is_control) {
                self.err(
                    Some(s.span()),
                    format!("package source {v:?} is not a directory"),
                    "name a directory written by `cairn store export`",
                )
            } else {
                Ok(PackageSource::Dir(self.path(s)))
            }
        };
        let package_sources = raw
            .package_sources
            .iter()
            .map(|s| source(s, false))
            .collect::<Result<Vec<_>, _>>()?;
        let fallback_sources = raw
            .fallback_sources
            .iter()
            .map(|s| source(s, true))
            .collect::<Result<Vec<_>, _>>()?;
        let suite = word(&raw.suite, "suite", "e.g. suite = \"bookworm\"")?;
        let mut packages = Vec::new();
        for p in &raw.packages {
            packages.push(word(
                p,
                "package name",
                "Debian package names are lower case letters, digits, '+', '-' and '.'",
            )?);
        }
        let components = match &raw.components {
            None => vec!["main".to_string()],
            Some(c) => c
                .iter()
                .map(|c| word(c, "component", "e.g. [\"main\"]"))
                .collect::<Result<_, _>>()?,
        };
        let kernel_package = match &raw.kernel {
            None => "linux-image-amd64".to_string(),
            Some(k) => word(k, "package name", "e.g. kernel = \"linux-image-amd64\"")?,
        };
        let lock = match &raw.lock {
            None => self.dir.join("cairn.lock"),
            Some(l) => self.path(l),
        };
        Ok(DebianSpec {
            suite,
            mirror: url(&raw.mirror)?,
            security_mirror: url(&raw.security_mirror)?,
            components,
            packages,
            kernel_package,
            lock,
            package_sources,
            fallback_sources,
        })
    }

    fn artifact(&self, k: &RawKubelet) -> Result<Artifact, DefinitionError> {
        let mut sha = [0u8; 32];
        if hex::decode_to_slice(k.sha256.get_ref(), &mut sha).is_err() {
            return self.err(
                Some(k.sha256.span()),
                "kubelet sha256 is not 64 hex digits",
                "write the artifact's `sha256sum`",
            );
        }
        let source = match (&k.path, &k.url) {
            (Some(p), None) => ArtifactSource::Path(self.existing_file(
                p,
                "kubelet",
                "point `path` at the kubelet binary you pinned",
            )?),
            (None, Some(u))
                if ["http://", "https://", "file://"]
                    .iter()
                    .any(|s| u.get_ref().starts_with(s)) =>
            {
                ArtifactSource::Url(u.get_ref().clone())
            }
            (None, Some(u)) => {
                return self.err(
                    Some(u.span()),
                    format!("'{}' is not an http(s) or file URL", u.get_ref()),
                    "",
                )
            }
            _ => {
                return self.err(
                    Some(k.sha256.span()),
                    "[kubelet] needs exactly one of `path` and `url`",
                    "e.g. path = \"artifacts/kubelet\"",
                )
            }
        };
        Ok(Artifact { source, sha256: sha })
    }

    /// A path that must exist as a file.
    fn existing_file(&self, s: &Spanned<String>, what: &str, hint: &str) -> Result<PathBuf, DefinitionError> {
        let p = self.path(s);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => Ok(p),
            Ok(_) => self.err(Some(s.span()), format!("{what} {} is not a file", p.display()), hint),
            Err(e) => self.err(Some(s.span()), format!("{what} {}: {e}", p.display()), hint),
        }
    }
}

/// Check one kernel command line word.
pub fn valid_cmdline_word(w: &str) -> Result<(), String> {
    if w.is_empty() {
        return Err("empty word".into());
    }
    if let Some(c) = w.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "'{w}' contains {c:?}; words are printable ASCII without spaces"
        ));
    }
    // What opens and checks the verified root is Cairn's: `rd.systemd.verity=0` or a
    // `root=` would boot something else than the signed root.
    for owned in [
        "roothash=",
        "usrhash=",
        "systemd.verity",
        "rd.systemd.verity",
        "root=",
        "mount.usr",
    ] {
        if w.starts_with(owned) {
            return Err(format!("'{w}' is set by Cairn from the built root; remove it"));
        }
    }
    Ok(())
}

impl Definition {
    /// Read and validate a definition file.
    pub fn load(file: &Path) -> Result<Definition, DefinitionError> {
        let src = std::fs::read_to_string(file).map_err(|e| DefinitionError {
            file: file.to_owned(),
            at: None,
            message: format!("cannot read the image definition: {e}"),
            hint: Some("pass the path of an image definition, e.g. `cairn build images/node.toml --out out/`".into()),
        })?;
        Self::parse(file, &src)
    }

    /// Validate definition text; `file` names it in errors and anchors relative paths.
    pub fn parse(file: &Path, src: &str) -> Result<Definition, DefinitionError> {
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let cx = Ctx { file, src, dir };
        let raw: RawDefinition = match toml::from_str(src) {
            Ok(r) => r,
            Err(e) => {
                let msg = e.message().to_string();
                let hint = if msg.contains("unknown field") {
                    "remove or rename the key; docs/image-definition.md lists every key"
                } else if msg.contains("missing field") {
                    "add the key; docs/image-definition.md shows a complete example"
                } else {
                    "see docs/image-definition.md for the syntax of each key"
                };
                return cx.err(e.span(), msg, hint);
            }
        };

        if *raw.version.get_ref() != SCHEMA_VERSION {
            return cx.err(
                Some(raw.version.span()),
                format!("definition version {} is not supported", raw.version.get_ref()),
                format!("this Cairn reads `version = {SCHEMA_VERSION}`"),
            );
        }
        let name = raw.image.name.get_ref().clone();
        if !cairn_signing::bundle::valid_image_name(&name) {
            return cx.err(
                Some(raw.image.name.span()),
                format!("image name '{name}' is not allowed"),
                "use 1–64 characters of a–z, 0–9 and '-', starting with a letter",
            );
        }
        let version = raw.image.version.get_ref().clone();
        if !cairn_signing::bundle::valid_version(&version) {
            return cx.err(
                Some(raw.image.version.span()),
                format!("image version '{version}' is not allowed"),
                "use letters, digits, '.', '~', '_' and '-' ('+' is reserved for boot counting)",
            );
        }
        let architecture = match &raw.image.architecture {
            None => "x86-64".to_string(),
            Some(a) if a.get_ref() == "x86-64" => "x86-64".to_string(),
            Some(a) => {
                return cx.err(
                    Some(a.span()),
                    format!("architecture '{}' is not supported", a.get_ref()),
                    "use \"x86-64\"",
                )
            }
        };

        let root = match (&raw.root.source, &raw.root.debian) {
            (Some(source), None) => cx.root_source(source)?,
            (None, Some(debian)) => RootSource::Debian(cx.debian(debian)?),
            (Some(source), Some(_)) => {
                return cx.err(
                    Some(source.span()),
                    "[root] has both `source` and [root.debian]",
                    "keep one: a prebuilt tree, or Debian packages",
                )
            }
            (None, None) => {
                return cx.err(
                    None,
                    "[root] needs a `source` (directory or tarball) or a [root.debian] table",
                    "see docs/image-definition.md",
                )
            }
        };
        let mut overlays = Vec::new();
        for o in &raw.root.overlays {
            let p = cx.path(o);
            if !p.is_dir() {
                return cx.err(
                    Some(o.span()),
                    format!("overlay {} is not a directory", p.display()),
                    "overlays are directories laid over the root tree",
                );
            }
            overlays.push(p);
        }

        let debian = matches!(root, RootSource::Debian(_));
        // A Debian root supplies its own kernel and initrd; other roots must name them.
        let from_file_or_tree = |v: &Option<Spanned<String>>, key: &str, what: &str, example: &str, hint: &str| match v
        {
            Some(k) => cx.existing_file(k, what, hint).map(Some),
            None if debian => Ok(None),
            None => cx.err(
                None,
                format!("[kernel] {key} is required when the root is not built from Debian packages"),
                format!("add {key} = \"{example}\" under [kernel]"),
            ),
        };
        let kernel = from_file_or_tree(
            &raw.kernel.image,
            "image",
            "kernel",
            "path/to/vmlinuz",
            "name the kernel image (bzImage/vmlinuz) to boot",
        )?;
        let initrd = from_file_or_tree(
            &raw.kernel.initrd,
            "initrd",
            "initrd",
            "path/to/initrd.img",
            "name the initrd that opens the verity root",
        )?;
        let units = match &raw.root.units {
            None => None,
            Some(u) => {
                let p = cx.path(u);
                if !p.is_dir() {
                    return cx.err(
                        Some(u.span()),
                        format!("units directory {} does not exist", p.display()),
                        "point `units` at the repository's units/ folder",
                    );
                }
                Some(p)
            }
        };
        let node_agent = match &raw.root.node_agent {
            None => None,
            Some(a) if a.get_ref() == "beside-cairn" => Some(NodeAgent::BesideCairn),
            Some(a) => Some(NodeAgent::Path(cx.existing_file(
                a,
                "node agent",
                "build it with `cargo build --release -p cairn-node`, or use \"beside-cairn\"",
            )?)),
        };
        let word_list = |list: &Option<Vec<Spanned<String>>>,
                         default: &[&str],
                         what: &str|
         -> Result<Vec<String>, DefinitionError> {
            match list {
                None => Ok(default.iter().map(|s| s.to_string()).collect()),
                Some(l) => {
                    for w in l {
                        let v = w.get_ref();
                        if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
                            return cx.err(
                                Some(w.span()),
                                format!("'{v}' is not a {what} name"),
                                "names are letters, digits, '-' and '_'",
                            );
                        }
                    }
                    Ok(l.iter().map(|w| w.get_ref().clone()).collect())
                }
            }
        };
        let dracut_modules = word_list(&raw.initrd.dracut_modules, DEFAULT_DRACUT_MODULES, "dracut module")?;
        let initrd_drivers = word_list(&raw.initrd.drivers, DEFAULT_INITRD_DRIVERS, "kernel module")?;
        let kubelet = match &raw.kubelet {
            None => None,
            Some(k) => Some(cx.artifact(k)?),
        };
        let mut cmdline = Vec::new();
        for w in &raw.kernel.cmdline {
            if let Err(why) = valid_cmdline_word(w.get_ref()) {
                return cx.err(
                    Some(w.span()),
                    format!("kernel command line: {why}"),
                    "write one word per list item, e.g. cmdline = [\"console=ttyS0\", \"quiet\"]",
                );
            }
            cmdline.push(w.get_ref().clone());
        }
        let modules = cx.module_policy(&raw.kernel)?;
        let stub = match &raw.kernel.stub {
            Some(s) => cx.existing_file(
                s,
                "EFI stub",
                "install systemd-boot-efi or name systemd's linuxx64.efi.stub",
            )?,
            None => PathBuf::from(DEFAULT_STUB),
        };
        let systemd_boot = match &raw.boot.systemd_boot {
            Some(s) => cx.existing_file(
                s,
                "systemd-boot",
                "install systemd-boot-efi or name systemd-bootx64.efi",
            )?,
            None => PathBuf::from(DEFAULT_SYSTEMD_BOOT),
        };
        let boot_timeout = raw.boot.timeout.as_ref().map_or(0, |t| *t.get_ref());
        if boot_timeout > 600 {
            let t = raw.boot.timeout.as_ref().expect("checked");
            return cx.err(
                Some(t.span()),
                "boot menu timeout over 600 seconds",
                "use seconds from 0 (menu on key press) to 600",
            )?;
        }

        let size = |s: &Option<Spanned<Size>>,
                    default: u64,
                    min: u64,
                    max: u64,
                    key: &str|
         -> Result<Size, DefinitionError> {
            match s {
                None => Ok(Size(default)),
                Some(v) if v.get_ref().0 > max => cx.err(
                    Some(v.span()),
                    format!("{key} {} is more than the {} Cairn writes", v.get_ref(), Size(max)),
                    "the image is a template: the state partition grows to fill the disk at first boot, so keep the image small",
                ),
                Some(v) if v.get_ref().0 < min || v.get_ref().0 % MIB != 0 => cx.err(
                    Some(v.span()),
                    format!(
                        "{key} {} must be a whole number of MiB and at least {}",
                        v.get_ref(),
                        Size(min)
                    ),
                    format!("e.g. {key} = \"{}M\"", default >> 20),
                ),
                Some(v) => Ok(*v.get_ref()),
            }
        };
        let esp_size = size(&raw.partitions.esp_size, 512 * MIB, 64 * MIB, 4 << 30, "esp-size")?;
        let root_size = size(&raw.partitions.root_size, 1024 * MIB, 16 * MIB, 64 << 30, "root-size")?;
        let state_size = size(&raw.partitions.state_size, 256 * MIB, 16 * MIB, 64 << 30, "state-size")?;
        let root_size_line = raw
            .partitions
            .root_size
            .as_ref()
            .map(|s| line_col(src, s.span().start).0);

        let compression = match raw
            .squashfs
            .compression
            .as_ref()
            .map(|c| (c.get_ref().as_str(), c.span()))
        {
            None | Some(("zstd", _)) => {
                let level = raw.squashfs.level.as_ref().map_or(15, |l| *l.get_ref());
                if !(1..=22).contains(&level) {
                    let l = raw
                        .squashfs
                        .level
                        .as_ref()
                        .expect("only a given level can be out of range");
                    return cx.err(
                        Some(l.span()),
                        format!("zstd level {level} is out of range"),
                        "use 1 (fast) to 22 (small); 15 is the default",
                    )?;
                }
                Compression::Zstd(level)
            }
            Some((other, span)) => {
                return cx.err(
                    Some(span),
                    format!("compression '{other}' is not supported"),
                    "use \"zstd\"",
                )
            }
        };
        let block_size = match &raw.squashfs.block_size {
            None => Size(128 << 10),
            Some(b) => {
                let v = b.get_ref().0;
                if !v.is_power_of_two() || !(4096..=(1 << 20)).contains(&v) {
                    return cx.err(
                        Some(b.span()),
                        format!("squashfs block size {} is not allowed", b.get_ref()),
                        "use a power of two from 4K to 1M; 128K is the default",
                    );
                }
                *b.get_ref()
            }
        };
        let signing = match &raw.signing.key {
            None => SigningKey::Development,
            Some(k) => SigningKey::File(cx.path(k)),
        };
        let node_config_key = match &raw.signing.node_config_key {
            None => None,
            Some(k) => {
                let p = cx.path(k);
                let text = std::fs::read_to_string(&p).ok();
                match text.as_deref().map(cairn_signing::PublicKey::from_pem) {
                    Some(Ok(_)) => text,
                    _ => {
                        return cx.err(
                            Some(k.span()),
                            format!("node-config-key {} is not a readable ed25519 public key", p.display()),
                            "name the .pub file `cairn keygen` wrote beside the node-config signing key",
                        )
                    }
                }
            }
        };
        let formats = match &raw.output.formats {
            None => vec![OutputFormat::Raw],
            Some(f) => {
                let mut out = Vec::new();
                for name in f.get_ref() {
                    match name.as_str() {
                        "raw" => out.push(OutputFormat::Raw),
                        other => {
                            return cx.err(
                                Some(f.span()),
                                format!("output format '{other}' is not supported"),
                                "use [\"raw\"]",
                            )
                        }
                    }
                }
                out
            }
        };

        Ok(Definition {
            file: file.to_owned(),
            name,
            version,
            architecture,
            root,
            overlays,
            kernel,
            initrd,
            units,
            node_agent,
            dracut_modules,
            initrd_drivers,
            kubelet,
            cmdline,
            modules,
            stub,
            systemd_boot,
            boot_timeout,
            esp_size,
            root_size,
            state_size,
            compression,
            block_size,
            signing,
            node_config_key,
            formats,
            root_size_line,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("tree")).unwrap();
            std::fs::write(dir.path().join("vmlinuz"), b"k").unwrap();
            std::fs::write(dir.path().join("initrd"), b"i").unwrap();
            Fixture { dir }
        }
        fn parse(&self, extra: &str) -> Result<Definition, DefinitionError> {
            let src = format!(
                "version = 1\n[image]\nname = \"node\"\nversion = \"1.0\"\n[root]\nsource = \"tree\"\n\
                 [kernel]\nimage = \"vmlinuz\"\ninitrd = \"initrd\"\n{extra}"
            );
            Definition::parse(&self.dir.path().join("image.toml"), &src)
        }
    }

    #[test]
    fn minimal_definition_gets_defaults() {
        let f = Fixture::new();
        let d = f.parse("").unwrap();
        assert_eq!(d.name, "node");
        assert_eq!(d.root, RootSource::Directory(f.dir.path().join("tree")));
        assert_eq!(d.esp_size, Size(512 * MIB));
        assert_eq!(d.root_size, Size(1024 * MIB));
        assert_eq!(d.compression, Compression::Zstd(15));
        assert_eq!(d.signing, SigningKey::Development);
        assert_eq!(d.formats, vec![OutputFormat::Raw]);
    }

    #[test]
    fn command_line_words_cannot_switch_off_or_replace_the_verified_root() {
        for w in [
            "rd.systemd.verity=0",
            "systemd.verity=no",
            "roothash=00",
            "usrhash=00",
            "root=/dev/sda2",
            "mount.usr=/dev/sda3",
            "systemd.verity_root_data=/dev/sda2",
        ] {
            let e = valid_cmdline_word(w).unwrap_err();
            assert!(e.contains("is set by Cairn"), "{w}: {e}");
        }
        for w in [
            "console=ttyS0,115200",
            "panic=10",
            "rd.shell=1",
            "systemd.log_level=debug",
        ] {
            assert!(valid_cmdline_word(w).is_ok(), "{w}");
        }
        assert!(valid_cmdline_word("a\nb").is_err() && valid_cmdline_word("").is_err());
    }

    #[test]
    fn sizes_out_of_range_or_of_the_wrong_type_name_the_line() {
        let f = Fixture::new();
        for (value, want) in [
            (
                "\"1000T\"",
                "root-size 1024000 GiB is more than the 64 GiB Cairn writes",
            ),
            ("\"16000000T\"", "is more than the 64 GiB"),
            ("\"99999999T\"", "too large"),
            ("1.5", "sizes are whole numbers, not 1.5"),
            ("-1", "a size cannot be negative (-1)"),
            ("true", "true is not a size"),
            ("[1]", "a size: a whole number of bytes or a string"),
        ] {
            let e = err(f.parse(&format!("[partitions]\nroot-size = {value}\n")));
            assert_eq!(e.at.map(|a| a.0), Some(11), "{value}: {e}");
            assert!(e.message.contains(want), "{value}: {e}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(Size::parse("512M"), Ok(Size(512 * MIB)));
        assert_eq!(Size::parse("1GiB"), Ok(Size(1 << 30)));
        assert_eq!(Size::parse("4096"), Ok(Size(4096)));
        assert!(Size::parse("1.5G").is_err());
        assert!(Size::parse("12Q").is_err());
        assert_eq!(Size(1536 * MIB).to_string(), "1536 MiB");
        assert_eq!(Size(64 << 10).to_string(), "64 KiB");
        assert_eq!(Size(1536).to_string(), "1.5 KiB");
        assert_eq!(Size(100).to_string(), "100 B");
        assert_eq!(format!("[{:<8}]", Size(2 * MIB)), "[2 MiB   ]");
    }

    fn err(r: Result<Definition, DefinitionError>) -> DefinitionError {
        r.expect_err("must fail")
    }

    #[test]
    fn unknown_key_names_line_and_fix() {
        let f = Fixture::new();
        let e = err(f.parse("[partitions]\nroot-szie = \"1G\"\n"));
        assert_eq!(e.at.map(|a| a.0), Some(11));
        assert!(e.message.contains("unknown field `root-szie`"), "{e}");
        assert!(e.to_string().contains("hint:"), "{e}");
    }

    #[test]
    fn bad_values_point_at_their_line() {
        let f = Fixture::new();
        for (extra, line, needle) in [
            ("[partitions]\nroot-size = \"1.5G\"\n", 11, "whole number"),
            ("[partitions]\nroot-size = \"8M\"\n", 11, "at least"),
            ("[squashfs]\nlevel = 30\n", 11, "out of range"),
            ("[squashfs]\ncompression = \"xz\"\n", 11, "not supported"),
            ("cmdline = [\"roothash=00\"]\n", 10, "set by Cairn"),
            ("cmdline = [\"a b\"]\n", 10, "printable"),
            ("[output]\nformats = [\"vhd\"]\n", 11, "not supported"),
        ] {
            let e = err(f.parse(extra));
            assert_eq!(e.at.map(|a| a.0), Some(line), "{extra}: {e}");
            assert!(e.to_string().contains(needle), "{extra}: {e}");
        }
    }

    #[test]
    fn image_fields_are_checked() {
        let f = Fixture::new();
        let path = f.dir.path().join("image.toml");
        let e = err(Definition::parse(&path, "version = 2\n"));
        assert!(
            e.message.contains("missing field") || e.message.contains("version"),
            "{e}"
        );
        let base = "version = 1\n[image]\nname = \"Node\"\nversion = \"1\"\n[root]\nsource = \"tree\"\n[kernel]\nimage = \"vmlinuz\"\ninitrd = \"initrd\"\n";
        let e = err(Definition::parse(&path, base));
        assert_eq!(e.at, Some((3, 8)));
        let e = err(Definition::parse(
            &path,
            &base.replace("\"Node\"", "\"node\"").replace("\"1\"", "\"1+3\""),
        ));
        assert!(e.hint.unwrap().contains("boot counting"));
        let e = err(Definition::parse(
            &path,
            &base.replace("\"Node\"", "\"node\"").replace("\"tree\"", "\"nope\""),
        ));
        assert_eq!(e.at.map(|a| a.0), Some(6));
        let e = err(Definition::parse(
            &path,
            &base
                .replace("\"Node\"", "\"node\"")
                .replace("version = 1", "version = 7"),
        ));
        assert!(e.to_string().contains("version = 1"), "{e}");
    }

    #[test]
    fn tree_roots_must_name_kernel_and_initrd() {
        let f = Fixture::new();
        let path = f.dir.path().join("image.toml");
        let base = "version = 1\n[image]\nname = \"n\"\nversion = \"1\"\n[root]\nsource = \"tree\"\n";
        let e = err(Definition::parse(&path, base));
        assert!(e.message.contains("[kernel] image is required"), "{e}");
        assert!(e.hint.unwrap().contains("image = \"path/to/vmlinuz\""));
        let e = err(Definition::parse(
            &path,
            &format!("{base}[kernel]\nimage = \"vmlinuz\"\n"),
        ));
        assert!(e.message.contains("[kernel] initrd is required"), "{e}");
        let debian = "version = 1\n[image]\nname = \"n\"\nversion = \"1\"\n[root.debian]\nsuite = \"bookworm\"\npackages = [\"systemd\"]\n";
        let d = Definition::parse(&path, debian).unwrap();
        assert_eq!((d.kernel, d.initrd), (None, None), "a Debian root brings its own");
    }

    #[test]
    fn package_sources_and_mirrors_admit_no_apt_syntax() {
        let f = Fixture::new();
        let path = f.dir.path().join("image.toml");
        let base = "version = 1\n[image]\nname = \"n\"\nversion = \"1\"\n[root.debian]\nsuite = \"bookworm\"\npackages = [\"systemd\"]\n";
        let d = Definition::parse(
            &path,
            &format!(
                "{base}package-sources = [\"store\", \"https://cdn.example/store/\"]\n\
                 fallback-sources = [\"https://snap.example/debian/{{resolved}}\"]\n"
            ),
        )
        .unwrap();
        let RootSource::Debian(spec) = d.root else {
            panic!("a Debian root")
        };
        assert_eq!(
            spec.package_sources,
            [
                PackageSource::Dir(f.dir.path().join("store")),
                PackageSource::Url("https://cdn.example/store".into())
            ]
        );
        assert_eq!(
            spec.fallback_sources,
            [PackageSource::Url("https://snap.example/debian/{resolved}".into())]
        );
        for (bad, why) in [
            ("mirror = \"http://m/debian\\nbookworm main\"", "control character"),
            ("mirror = \"http://m/debian [trusted=yes]\"", "a space"),
            ("mirror = \"ftp://m/debian\"", "not an http(s) or file URL"),
            ("package-sources = [\"https://m/x\\u0000\"]", "control character"),
            ("package-sources = [\"\"]", "is not a directory"),
            ("fallback-sources = [\"https://m/{{when}}\"]", "a quote or a bracket"),
        ] {
            let e = err(Definition::parse(&path, &format!("{base}{bad}\n")));
            assert_eq!(e.at.map(|a| a.0), Some(8), "{bad}: {e}");
            assert!(e.message.contains(why), "{bad}: {e}");
        }
        assert!(PackageSource::from_arg("/media/usb").is_ok());
        assert!(PackageSource::from_arg("http://x/ y").is_err());
    }

    #[test]
    fn module_policy_defaults_to_every_class_and_checks_names() {
        let f = Fixture::new();
        let path = f.dir.path().join("image.toml");
        let base = "version = 1\n[image]\nname = \"n\"\nversion = \"1\"\n[root.debian]\nsuite = \"bookworm\"\npackages = [\"systemd\"]\n[kernel]\n";
        let d = Definition::parse(&path, base).unwrap();
        let ModulePolicy::Trim { classes, extra } = d.modules else {
            panic!("trims by default")
        };
        assert!(classes.contains(&"verity".to_string()) && classes.contains(&"hardware".to_string()));
        assert!(extra.is_empty());
        let d = Definition::parse(&path, &format!("{base}modules = \"all\"\n")).unwrap();
        assert_eq!(d.modules, ModulePolicy::All);
        let e = err(Definition::parse(
            &path,
            &format!("{base}module-classes = [\"boot\", \"sound\"]\n"),
        ));
        assert_eq!(e.at, Some((9, 27)), "{e}");
        assert!(e.message.contains("'sound' is not a module class"), "{e}");
        assert!(e.hint.unwrap().contains("boot, verity, storage"));
        let e = err(Definition::parse(
            &path,
            &format!("{base}extra-modules = [\"drivers/net/\"]\n"),
        ));
        assert!(e.message.contains("module paths start with kernel/"), "{e}");
        let e = err(Definition::parse(
            &path,
            &format!("{base}modules = \"all\"\nextra-modules = [\"kernel/x/\"]\n"),
        ));
        assert!(e.message.contains("only apply when modules = \"trim\""), "{e}");
        let e = err(Definition::parse(&path, &format!("{base}modules = \"some\"\n")));
        assert!(e.message.contains("not a module policy"), "{e}");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let f = Fixture::new();
        let e = err(Definition::parse(&f.dir.path().join("x.toml"), "version = 1\n[image\n"));
        assert_eq!(e.at.map(|a| a.0), Some(2));
    }

    #[test]
    fn missing_file_is_clear() {
        let e = Definition::load(Path::new("/nonexistent/image.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/image.toml: cannot read"), "{e}");
    }
}
