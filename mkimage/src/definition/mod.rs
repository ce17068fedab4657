//! The image definition (`image.toml`): parsed strictly, validated, defaults applied.
//!
//! Every error names the file, the line and column, and a fix. Paths in a definition are
//! relative to the directory of the definition file. See `docs/image-definition.md` for
//! the schema a user reads; this module is its single source of truth.

mod boot;
mod context;
mod raw;
mod size;
mod sources;

use std::fmt;
use std::path::{Path, PathBuf};

use context::{line_col, Ctx};
use raw::*;
use toml::Spanned;

pub use boot::{valid_cmdline_word, ModulePolicy, DEFAULT_DRACUT_MODULES, DEFAULT_INITRD_DRIVERS};
pub use size::Size;
pub use sources::{check_source_url, Artifact, ArtifactSource, DebianSpec, NodeAgent, PackageSource, RootSource};

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

/// Squashfs compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// zstd at a level from 1 to 22.
    Zstd(u32),
}

/// What the build writes besides the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum OutputFormat {
    /// `disk.raw`, the image to flash or boot (always written).
    Raw,
    /// `disk.raw.bmap`: the block map for `bmaptool copy` (bmap 2.0, sha256 per range).
    Bmap,
    /// `disk.raw.zst`: the raw image compressed with zstd, to download and flash.
    #[value(name = "raw.zst")]
    RawZst,
    /// `disk.qcow2`: for QEMU, libvirt and OpenStack.
    Qcow2,
    /// `live.iso`: a hybrid ISO that boots a live system (`/var` in memory) from a CD-ROM
    /// or, written raw, from a USB stick.
    Iso,
}

impl OutputFormat {
    /// Every format, in the order they are written.
    pub const ALL: [OutputFormat; 5] = [
        OutputFormat::Raw,
        OutputFormat::Bmap,
        OutputFormat::RawZst,
        OutputFormat::Qcow2,
        OutputFormat::Iso,
    ];

    /// Its name in `[output] formats` and `--format`.
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Raw => "raw",
            OutputFormat::Bmap => "bmap",
            OutputFormat::RawZst => "raw.zst",
            OutputFormat::Qcow2 => "qcow2",
            OutputFormat::Iso => "iso",
        }
    }

    /// The file it is written to in the output directory.
    pub fn file(self) -> &'static str {
        match self {
            OutputFormat::Raw => "disk.raw",
            OutputFormat::Bmap => "disk.raw.bmap",
            OutputFormat::RawZst => "disk.raw.zst",
            OutputFormat::Qcow2 => "disk.qcow2",
            OutputFormat::Iso => "live.iso",
        }
    }

    /// The format called `name`.
    pub fn from_name(name: &str) -> Option<OutputFormat> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
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
    /// The keyserver to install as /usr/bin/cairn-keyserver (for control-plane nodes
    /// that serve the cluster's keyserver).
    pub keyserver: Option<NodeAgent>,
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
        // Cairn's own binaries: "beside-cairn" or a file that exists.
        let own_binary = |key: &Option<Spanned<String>>, what: &str, hint: &str| match key {
            None => Ok(None),
            Some(a) if a.get_ref() == "beside-cairn" => Ok(Some(NodeAgent::BesideCairn)),
            Some(a) => cx.existing_file(a, what, hint).map(|p| Some(NodeAgent::Path(p))),
        };
        let node_agent = own_binary(
            &raw.root.node_agent,
            "node agent",
            "build it with `cargo build --release -p cairn-node`, or use \"beside-cairn\"",
        )?;
        let keyserver = own_binary(
            &raw.root.keyserver,
            "keyserver",
            "build it with `cargo build --release -p cairn-keyserver`, or use \"beside-cairn\"",
        )?;
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
                // disk.raw is always written: the manifest describes it and the update
                // bundle and every other format are made from it.
                let mut seen = Vec::new();
                for name in f.get_ref() {
                    let Some(format) = OutputFormat::from_name(name) else {
                        return cx.err(
                            Some(f.span()),
                            format!("output format '{}' is not supported", name.escape_debug()),
                            "use any of \"raw\", \"bmap\", \"raw.zst\", \"qcow2\" (disk.raw is always written)",
                        );
                    };
                    if seen.contains(&format) {
                        return cx.err(
                            Some(f.span()),
                            format!("output format '{name}' is listed twice"),
                            "list each format once",
                        );
                    }
                    seen.push(format);
                }
                let mut out = vec![OutputFormat::Raw];
                out.extend(seen.into_iter().filter(|f| *f != OutputFormat::Raw));
                out.sort();
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
            keyserver,
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
        let d = f.parse("[output]\nformats = [\"qcow2\", \"bmap\"]\n").unwrap();
        assert_eq!(
            d.formats,
            vec![OutputFormat::Raw, OutputFormat::Bmap, OutputFormat::Qcow2]
        );
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
            ("[output]\nformats = [\"bmap\", \"bmap\"]\n", 11, "listed twice"),
            ("[output]\nformats = [\"../x\\n\"]\n", 11, "'../x\\n' is not supported"),
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
