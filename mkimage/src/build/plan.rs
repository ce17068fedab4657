//! The plan: everything a build will do, decided before it does any of it.
//!
//! [`Plan::new`] takes a validated [`Definition`] and the [`Overrides`] from the command
//! line and environment, applies them (they win over the definition), checks them, and
//! resolves every choice the build makes: the signing key and where it came from, the
//! lock's state, the compression, the timestamps, the partition layout, the ESP's files,
//! the command line and os-release, the tools and the outputs. `cairn build --plan`
//! prints [`Plan::render`]; `cairn build` executes the same value ([`super::build`]), so the
//! two cannot drift. Making a plan reads the key, the lock and the node agent's presence
//! and writes nothing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use cairn_signing::{BuildKind, PrivateKey, PublicKey};

use super::layout::{self, Layout};
use super::{BuildError, DISK_FILE, MANIFEST_FILE, SIGNATURE_FILE};
use crate::definition::{
    Artifact, Compression, Definition, ModulePolicy, NodeAgent, OutputFormat, PackageSource, RootSource, SigningKey,
    Size,
};
use crate::packages::debian::{self, LockMode, LockState};

/// The zstd level of `cairn build --dev`: measured on the default image, level 1 packs the
/// root 20× faster than the release level 15 for a root 19 % larger.
pub const DEV_LEVEL: u32 = 1;

/// What the command line and the environment change, over the definition.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Output directory.
    pub out: PathBuf,
    /// `--image-version`.
    pub version: Option<String>,
    /// `--cmdline` words, after the definition's.
    pub cmdline: Vec<String>,
    /// `--overlay` directories, after the definition's.
    pub overlays: Vec<PathBuf>,
    /// `--key`.
    pub key: Option<PathBuf>,
    /// `--next-key`.
    pub next_key: Option<PathBuf>,
    /// `SOURCE_DATE_EPOCH` as read from the environment.
    pub source_date_epoch: Option<String>,
    /// `--dev`.
    pub dev: bool,
    /// `--locked` (or the default, following the mirror).
    pub lock_mode: LockMode,
    /// `--package-source`: replaces the definition's package stores.
    pub package_sources: Vec<PackageSource>,
    /// Where the development key lives (normally [`super::dev_key_path`]).
    pub dev_key: PathBuf,
    /// `--format`: more outputs, added to the definition's `[output] formats`.
    pub formats: Vec<OutputFormat>,
}

/// Where the signing key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChoice {
    /// `--key`.
    Flag(PathBuf),
    /// `[signing] key`.
    Definition(PathBuf),
    /// The per-user development key (no key configured).
    Development(PathBuf),
}

impl KeyChoice {
    /// The private key file.
    pub fn path(&self) -> &Path {
        match self {
            KeyChoice::Flag(p) | KeyChoice::Definition(p) | KeyChoice::Development(p) => p,
        }
    }

    /// Whether this is the development key.
    pub fn is_development(&self) -> bool {
        matches!(self, KeyChoice::Development(_))
    }
}

/// The signing key as planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPlan {
    /// Which key.
    pub choice: KeyChoice,
    /// Its public key's fingerprint; `None` for a development key the build will create.
    pub fingerprint: Option<String>,
}

/// The lock as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockPlan {
    /// It answers the definition: packages pinned and when they were resolved.
    Current {
        /// Pinned packages.
        packages: usize,
        /// When they were resolved (UTC).
        resolved: String,
    },
    /// It must be resolved anew, and why.
    Stale(String),
    /// It cannot be read.
    Unreadable(String),
}

/// The Debian root as planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackagePlan {
    /// The lock file.
    pub lock_file: PathBuf,
    /// Its state.
    pub lock: LockPlan,
    /// Follow the mirror or insist on the lock.
    pub mode: LockMode,
    /// Every package requested (the definition's, the kernel, what Cairn implies).
    pub include: Vec<String>,
    /// Where packages come from, in words.
    pub sources: String,
    /// The cache the tree and packages live in.
    pub cache: PathBuf,
}

/// Where an ESP file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EspSource {
    /// A file read at build time.
    File(PathBuf),
    /// Text the plan renders.
    Text(String),
    /// The UKI the build assembles.
    Uki,
}

/// Everything a build does, decided.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The definition with the overrides applied (version, command line, overlays,
    /// package stores).
    pub def: Definition,
    /// Release or development build.
    pub kind: BuildKind,
    /// zstd level for the root squashfs.
    pub level: u32,
    /// The timestamp every file carries.
    pub epoch: u64,
    /// Whether it came from `SOURCE_DATE_EPOCH`.
    pub epoch_from_env: bool,
    /// The signing key.
    pub key: KeyPlan,
    /// The next release key to announce in the bundle.
    pub next_key: Option<PublicKey>,
    /// The disk layout (partition UUIDs are set once the root hash is known).
    pub layout: Layout,
    /// `/usr/lib/os-release` and the UKI's `.osrel`.
    pub os_release: String,
    /// The ESP's files, by path.
    pub esp: Vec<(String, EspSource)>,
    /// The node agent to install, resolved.
    pub agent: Option<PathBuf>,
    /// The keyserver to install, resolved.
    pub keyserver: Option<PathBuf>,
    /// The Debian root, for Debian roots.
    pub packages: Option<PackagePlan>,
    /// Fingerprint of the key config drives must be signed with, if the image pins one.
    pub node_config_key: Option<String>,
    /// Tools the build runs.
    pub tools: Vec<&'static str>,
    /// The output directory.
    pub out: PathBuf,
    /// The files written into it.
    pub outputs: Vec<&'static str>,
}

/// The effective epoch: `SOURCE_DATE_EPOCH` if set, else [`super::DEFAULT_EPOCH`].
pub fn effective_epoch(env: Option<&str>) -> Result<u64, BuildError> {
    match env {
        None | Some("") => Ok(super::DEFAULT_EPOCH),
        Some(v) => v.trim().parse().map_err(|_| BuildError::Epoch(v.to_string())),
    }
}

/// A command-line value the build cannot take.
fn bad(flag: &'static str, why: String) -> BuildError {
    BuildError::Override { flag, why }
}

impl Plan {
    /// Apply `o` to `def`, check everything, and decide.
    pub fn new(mut def: Definition, o: &Overrides) -> Result<Plan, BuildError> {
        if let Some(v) = &o.version {
            if !cairn_signing::bundle::valid_version(v) {
                return Err(bad(
                    "--image-version",
                    format!("{v:?}: use letters, digits, '.', '~', '_' and '-', starting with a letter or digit ('+' is reserved for boot counting)"),
                ));
            }
            def.version = v.clone();
        }
        for w in &o.cmdline {
            crate::definition::valid_cmdline_word(w).map_err(|why| bad("--cmdline", why))?;
            def.cmdline.push(w.clone());
        }
        for d in &o.overlays {
            if !d.is_dir() {
                return Err(bad("--overlay", format!("{}: not a directory", d.display())));
            }
            def.overlays.push(d.clone());
        }
        for f in &o.formats {
            if !def.formats.contains(f) {
                def.formats.push(*f);
            }
        }
        def.formats.sort();
        if let RootSource::Debian(spec) = &mut def.root {
            if !o.package_sources.is_empty() {
                spec.package_sources = o.package_sources.clone();
            }
        }

        let epoch_from_env = o.source_date_epoch.as_deref().is_some_and(|v| !v.is_empty());
        let epoch = effective_epoch(o.source_date_epoch.as_deref())?;
        let Compression::Zstd(release_level) = def.compression;
        let (kind, level) = if o.dev {
            (BuildKind::Development, DEV_LEVEL)
        } else {
            (BuildKind::Release, release_level)
        };

        let choice = match (&o.key, &def.signing) {
            (Some(k), _) => KeyChoice::Flag(k.clone()),
            (None, SigningKey::File(k)) => KeyChoice::Definition(k.clone()),
            (None, SigningKey::Development) => KeyChoice::Development(o.dev_key.clone()),
        };
        // The key is read now, so a plan that cannot be built says so.
        let fingerprint = match &choice {
            KeyChoice::Development(p) if !p.exists() => None,
            c => Some(PrivateKey::read(c.path())?.public().fingerprint()),
        };
        let next_key = match &o.next_key {
            None => None,
            Some(p) => Some(PublicKey::read(p)?),
        };

        let resolve = |b: &Option<NodeAgent>, name: &str| -> Result<Option<PathBuf>, BuildError> {
            Ok(match b {
                None => None,
                Some(NodeAgent::Path(p)) => Some(p.clone()),
                Some(NodeAgent::BesideCairn) => Some(super::beside_cairn(name)?),
            })
        };
        let agent = resolve(&def.node_agent, "cairn-node")?;
        let keyserver = resolve(&def.keyserver, "cairn-keyserver")?;
        let layout = layout::layout(&def);
        cairn_disk::gpt::Gpt::new(
            cairn_disk::guid::Guid::NIL,
            layout.disk_size,
            layout.partitions.iter().map(|p| p.entry.clone()).collect(),
        )
        .map_err(BuildError::Gpt)?;

        let packages = match &def.root {
            RootSource::Debian(spec) => Some(PackagePlan {
                lock_file: spec.lock.clone(),
                lock: match debian::lock_state(spec) {
                    Ok(LockState::Current(l)) => LockPlan::Current {
                        packages: l.package.len(),
                        resolved: l.resolved.clone(),
                    },
                    Ok(LockState::Stale(why, _)) => LockPlan::Stale(why),
                    Err(e) => LockPlan::Unreadable(e.to_string()),
                },
                mode: o.lock_mode,
                include: crate::packages::lock::include_list(spec),
                sources: if spec.package_sources.is_empty() {
                    crate::packages::store::Sources {
                        mirrors: Some(debian::effective_mirrors(spec)),
                        fallback: spec.fallback_sources.clone(),
                        ..Default::default()
                    }
                    .describe()
                } else {
                    let list: Vec<String> = spec.package_sources.iter().map(ToString::to_string).collect();
                    format!("{} (package stores only; no mirror)", list.join(", "))
                },
                cache: crate::packages::cache::cache_dir(),
            }),
            _ => None,
        };

        let uki_name = layout::uki_file_name(&def.version);
        let esp = vec![
            (
                "EFI/BOOT/BOOTX64.EFI".to_string(),
                EspSource::File(def.systemd_boot.clone()),
            ),
            (
                "loader/loader.conf".to_string(),
                EspSource::Text(layout::render_loader_conf(def.boot_timeout)),
            ),
            (format!("EFI/Linux/{uki_name}"), EspSource::Uki),
        ];
        let node_config_key = def
            .node_config_key
            .as_deref()
            .and_then(|pem| PublicKey::from_pem(pem).ok())
            .map(|k| k.fingerprint());
        Ok(Plan {
            os_release: layout::render_os_release(&def.name, &def.version, kind),
            tools: super::required_tools(&def),
            esp,
            kind,
            level,
            epoch,
            epoch_from_env,
            key: KeyPlan { choice, fingerprint },
            next_key,
            layout,
            agent,
            keyserver,
            packages,
            node_config_key,
            out: o.out.clone(),
            outputs: vec![DISK_FILE, MANIFEST_FILE, SIGNATURE_FILE, cairn_signing::bundle::FILE],
            def,
        })
    }

    /// The kernel command line for a root hash.
    pub fn cmdline(&self, root_hash: &str) -> String {
        layout::render_cmdline(root_hash, &self.def.cmdline)
    }

    /// The plan in words, as `cairn build --plan` prints it.
    pub fn render(&self) -> String {
        let def = &self.def;
        let mut s = String::new();
        let mut line = |k: &str, v: String| {
            writeln!(s, "  {k:<12} {v}").expect("string write");
        };
        line("image", format!("{} {} ({})", def.name, def.version, def.architecture));
        line(
            "build",
            match self.kind {
                BuildKind::Release => "release".into(),
                BuildKind::Development => {
                    "development (--dev: fast compression, marked in os-release and the manifest; not for publishing)"
                        .into()
                }
            },
        );
        line("root", def.root.describe());
        if let Some(p) = &self.packages {
            let lock = match &p.lock {
                LockPlan::Current { packages, resolved } => format!(
                    "{} ({packages} packages pinned, resolved {resolved}; {})",
                    p.lock_file.display(),
                    match p.mode {
                        LockMode::Locked => "--locked: a package no source serves fails the build",
                        _ => "re-resolved if a source no longer serves them",
                    }
                ),
                LockPlan::Stale(why) => format!(
                    "{} ({why}; {})",
                    p.lock_file.display(),
                    match p.mode {
                        LockMode::Locked => "--locked: the build fails",
                        _ => "the build resolves and writes it",
                    }
                ),
                LockPlan::Unreadable(e) => format!("{} (unreadable: {e})", p.lock_file.display()),
            };
            line("lock", lock);
            line("packages", p.include.join(" "));
            line("sources", p.sources.clone());
            line("cache", p.cache.display().to_string());
        }
        if let Some(u) = &def.units {
            line("units", u.display().to_string());
        }
        if let Some(a) = &self.agent {
            line("node agent", format!("{} → /usr/bin/cairn-node", a.display()));
        }
        if let Some(k) = &self.keyserver {
            line("keyserver", format!("{} → /usr/bin/cairn-keyserver", k.display()));
        }
        for o in &def.overlays {
            line("overlay", o.display().to_string());
        }
        let from_tree = |p: &Option<PathBuf>, what: &str| match p {
            Some(p) => p.display().to_string(),
            None => format!("{what} from the Debian root"),
        };
        line("kernel", from_tree(&def.kernel, "the kernel package's vmlinuz"));
        line("initrd", from_tree(&def.initrd, "dracut"));
        line(
            "modules",
            match &def.modules {
                ModulePolicy::All => "all the kernel package brings".to_string(),
                ModulePolicy::Trim { classes, extra } => format!(
                    "trimmed to classes {}{}",
                    classes.join(" "),
                    if extra.is_empty() {
                        String::new()
                    } else {
                        format!(" + {}", extra.join(" "))
                    }
                ),
            },
        );
        line(
            "kubelet",
            match &def.kubelet {
                Some(Artifact { sha256, .. }) => format!("pinned, sha256 {}", hex::encode(sha256)),
                None => "none pinned: the image will not run a kubelet".into(),
            },
        );
        line("cmdline", self.cmdline("<root hash>"));
        line(
            "node config",
            match &self.node_config_key {
                Some(f) => format!("config drives must be signed by {f}"),
                None => "unsigned config drives accepted (no [signing] node-config-key)".into(),
            },
        );
        line(
            "squashfs",
            format!(
                "zstd level {}{}, {} blocks",
                self.level,
                if self.kind == BuildKind::Development {
                    " (--dev)"
                } else {
                    ""
                },
                def.block_size
            ),
        );
        line(
            "timestamps",
            format!(
                "{} ({})",
                self.epoch,
                if self.epoch_from_env {
                    "SOURCE_DATE_EPOCH"
                } else {
                    "default"
                }
            ),
        );
        let fp = |f: &Option<String>| f.clone().unwrap_or_else(|| "the build creates it".into());
        line(
            "signing",
            match &self.key.choice {
                KeyChoice::Flag(p) => format!("{} (from --key; {})", p.display(), fp(&self.key.fingerprint)),
                KeyChoice::Definition(p) => {
                    format!("{} (from the definition; {})", p.display(), fp(&self.key.fingerprint))
                }
                KeyChoice::Development(p) => format!(
                    "development key {} (no key configured; {})",
                    p.display(),
                    fp(&self.key.fingerprint)
                ),
            },
        );
        if let Some(k) = &self.next_key {
            line("next key", format!("{} (announced in the bundle)", k.fingerprint()));
        }
        line("tools", self.tools.join(" "));
        line(
            "outputs",
            self.def
                .formats
                .iter()
                .map(|f| f.file())
                .chain([
                    "update.cairn",
                    "manifest.json",
                    crate::sbom::FILE,
                    cairn_signing::outputs::FILE,
                ])
                .collect::<Vec<_>>()
                .join(" "),
        );
        for (path, from) in &self.esp {
            let what = match from {
                EspSource::File(p) => p.display().to_string(),
                EspSource::Text(t) => format!("{} bytes of text", t.len()),
                EspSource::Uki => "the unified kernel image".into(),
            };
            line("esp file", format!("/{path} ({what})"));
        }
        line(
            "disk",
            format!("{} ({} bytes)", Size(self.layout.disk_size), self.layout.disk_size),
        );
        writeln!(s, "  #  label     offset       size         type").expect("string write");
        for (i, p) in self.layout.partitions.iter().enumerate() {
            writeln!(
                s,
                "  {}  {:<9} {:<12} {:<12} {}",
                i + 1,
                p.entry.name,
                Size(p.entry.offset()),
                Size(p.entry.size()),
                p.entry.type_guid
            )
            .expect("string write");
        }
        writeln!(
            s,
            "  UUIDs of root-a/verity-a are the halves of the root hash; the rest derive from it."
        )
        .expect("string write");
        let dest = if self.out.as_os_str().is_empty() {
            "the directory --out names".to_string()
        } else {
            self.out.display().to_string()
        };
        writeln!(s, "  outputs      {} in {dest}", self.outputs.join(" ")).expect("string write");
        if matches!(self.key.choice, KeyChoice::Development(_)) {
            writeln!(
                s,
                "  note: without [signing] key the image is signed with the development key"
            )
            .expect("string write");
        }
        format!("plan for {} (nothing is written)\n{s}", def.file.display())
    }
}
