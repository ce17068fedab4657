//! The `cairn` command line: argument parsing and the human-facing output.
//!
//! `main.rs` only calls [`run`]; argv and the output streams are parameters, so tests
//! drive the CLI like a user would. The reference in `docs/cli.md` is generated from the
//! doc comments here (`cairn help-markdown`) and checked for drift by a test.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};

use crate::build::layout::Role;
use crate::build::{self, Overrides, Plan};
use crate::definition::{Definition, RootSource, Size};
use crate::packages::debian::{self, LockMode};
use crate::packages::lock::Lock;
use crate::vm::{self, Accel, Vm, VmSpec};

/// Build immutable, verity-protected OS images for Kubernetes nodes.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a signed GPT disk image from an image definition.
    ///
    /// Outputs `disk.raw`, `manifest.json`, `manifest.json.sig` and the update bundle
    /// `update.cairn` in the output directory, which is only touched once the build has
    /// succeeded.
    Build {
        /// The image definition (TOML), e.g. images/node.toml.
        definition: PathBuf,
        /// Output directory; created if missing, files in it are replaced.
        #[arg(long, value_name = "DIR", required_unless_present = "plan")]
        out: Option<PathBuf>,
        /// Print the effective settings and partition layout, then stop without writing.
        #[arg(long)]
        plan: bool,
        /// A development build: fast compression (zstd level 1) for an edit-build-boot
        /// loop, marked as such in os-release and the manifest; `cairn publish` refuses it.
        #[arg(long)]
        dev: bool,
        /// Signing key (PKCS#8 PEM); overrides `[signing] key` in the definition.
        #[arg(long, value_name = "PRIVATE_KEY")]
        key: Option<PathBuf>,
        /// Another overlay directory, laid over the root after the definition's overlays
        /// (repeatable), e.g. a debugging console for a test image.
        #[arg(long, value_name = "DIR")]
        overlay: Vec<PathBuf>,
        /// Image version; overrides `[image] version` (e.g. a release pipeline's tag).
        #[arg(long, value_name = "VERSION")]
        image_version: Option<String>,
        /// A kernel command line word appended to `[kernel] cmdline` (repeatable), e.g.
        /// `systemd.log_level=debug` for a debugging build.
        #[arg(long, value_name = "WORD")]
        cmdline: Vec<String>,
        /// Build exactly what the lock pins or fail: never re-resolve, never rewrite the lock
        /// (release pipelines). Without it, a lock the mirror no longer serves is re-resolved
        /// and rewritten, and the packages that moved are listed.
        #[arg(long)]
        locked: bool,
        /// Take every package from this package store (`cairn store export`) and from no
        /// mirror: a directory or an http(s)/file URL (repeatable, tried in order). Replaces
        /// `[root.debian] package-sources`. Needs a lock that answers the definition.
        #[arg(long, value_name = "DIR|URL")]
        package_source: Vec<String>,
        /// Announce the release key the next releases will be signed with (its public key,
        /// as `cairn keygen` writes it): nodes that install this release trust it from then on.
        #[arg(long, value_name = "PUBLIC_KEY")]
        next_key: Option<PathBuf>,
    },
    /// Boot a built image under QEMU with UEFI firmware (OVMF).
    ///
    /// Runs on a copy-on-write overlay, so the image itself is never modified. The serial
    /// console is this terminal; SSH is forwarded to 127.0.0.1:<ssh-port>. When the node
    /// prints its ready line, the boot-phase budget is printed. Stop with Ctrl-C.
    Boot {
        /// A build output directory (holding disk.raw) or a disk image.
        image: PathBuf,
        /// A config drive image to attach as a second disk.
        #[arg(long, value_name = "FILE")]
        config_drive: Option<PathBuf>,
        /// Stop after this many seconds (exit status 1 if the node was not ready by then).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
        /// Power off as soon as the node is ready, after printing the boot-phase budget.
        #[arg(long)]
        until_ready: bool,
        /// Host port forwarded to the node's SSH port.
        #[arg(long, default_value_t = 2222)]
        ssh_port: u16,
        /// CPU acceleration: auto tries KVM and falls back to TCG.
        #[arg(long, value_enum, default_value_t = Accel::Auto)]
        accel: Accel,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 2048)]
        memory: u32,
    },
    /// Create an ed25519 signing key pair.
    ///
    /// Writes the private key (PKCS#8 PEM, mode 0600) and the public key (SPKI PEM) beside
    /// it with the extension `.pub`. Both are readable by OpenSSL 3.
    Keygen {
        /// Private key file to write.
        #[arg(default_value = "cairn-release.pem")]
        private_key: PathBuf,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Check a build output against its signed manifest, or an update bundle alone.
    ///
    /// Verifies the signature first, then checks the disk's data ranges (each by its
    /// sha256, every other byte zero) and every payload's sha256, reads back the partition table, recomputes the dm-verity tree and checks
    /// the UKI command line; then the same for `update.cairn` and that it carries the
    /// same release. Given a `.cairn` file, checks that bundle alone (what a node will
    /// accept). Exits non-zero on the first mismatch.
    Verify {
        /// A build output directory (manifest.json, disk.raw, update.cairn) or an update
        /// bundle file.
        #[arg(value_name = "DIR|BUNDLE")]
        dir: PathBuf,
        /// Public key the manifest must be signed with.
        #[arg(long, value_name = "PUBLIC_KEY")]
        key: PathBuf,
    },
    /// Publish a build's update bundle for nodes to fetch from a static web server.
    ///
    /// Verifies `update.cairn` with the release key, copies it to
    /// `DIR/<image>/<image>_<version>.cairn`, then writes `DIR/<image>/index.json` (latest
    /// version, every release, and when the index expires) signed in `index.json.sig`.
    /// Nodes refuse an index they cannot verify or whose time has passed: publish again
    /// (the same build is fine) before it expires. Serve DIR with any web server
    /// (`python3 -m http.server -d DIR`, nginx) and point nodes at it with
    /// `[update] source = "http://HOST/<image>/"` in node.toml.
    Publish {
        /// A build output directory (holding update.cairn) or a bundle file.
        #[arg(value_name = "OUT|BUNDLE")]
        out: PathBuf,
        /// The directory a web server serves.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// The release private key that signed the bundle; it signs the index too. Give a
        /// second --key during a key rotation, so nodes that trust either key take the index.
        #[arg(long, value_name = "PRIVATE_KEY", required = true)]
        key: Vec<PathBuf>,
        /// How many days the index stays valid.
        #[arg(long, value_name = "DAYS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3650))]
        valid_days: u64,
        /// Publish a development build (`cairn build --dev`), e.g. for a test fleet; refused
        /// without it.
        #[arg(long)]
        allow_development: bool,
    },
    /// Resolve a Debian root's packages and write its lock file.
    ///
    /// With a lock that answers the definition and whose packages are still to be had, this
    /// only fetches them and builds the tree. A missing or stale lock is resolved anew, with
    /// the versions still served kept, and the packages that moved are listed. `--update`
    /// resolves the newest versions on purpose. The tree lands in the cache, so the next
    /// `cairn build` starts warm.
    Lock {
        /// The image definition (TOML) with a [root.debian] table.
        definition: PathBuf,
        /// Refresh every package to the mirror's current version.
        #[arg(long, conflicts_with = "locked")]
        update: bool,
        /// Only check that every locked package can be had (and build the tree); fail
        /// instead of re-resolving.
        #[arg(long)]
        locked: bool,
    },
    /// The package store: export the packages of locks as an apt repository.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Show what the build cache holds, or prune it.
    ///
    /// Without a subcommand, lists the package store, the cached root trees (with the lock
    /// each answers) and leftovers, with what each costs on disk.
    Cache {
        #[command(subcommand)]
        action: Option<CacheCommand>,
    },
    /// Check a kernel's config against what Cairn needs (kernel-config/cairn.config).
    ///
    /// Lists every missing option with its class and exits non-zero when any is missing.
    /// Builds of Debian roots run the same check on the tree's /boot/config-*.
    CheckKernel {
        /// The kernel's .config (e.g. /boot/config-6.1.0-…-amd64).
        config: PathBuf,
        /// Requirements to check instead of Cairn's built-in list.
        #[arg(long, value_name = "FILE")]
        fragment: Option<PathBuf>,
    },
    /// Write a config drive that gives one node its identity at first boot.
    ///
    /// Validates NODE.toml (see docs/node-config.md) and writes a volume labelled CAIRN
    /// holding it as node.toml, plus node.toml.sig with --sign. Attach it to the node (a USB
    /// stick, a second virtual disk, `cairn boot --config-drive FILE`); the node reads it on
    /// every boot and takes it when its generation is higher than the saved one.
    ConfigDrive {
        /// The node config to put on the drive.
        node: PathBuf,
        /// The drive image to write (replaced if it exists).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// File system of the drive.
        #[arg(long, value_enum, default_value = "fat")]
        format: crate::release::configdrive::DriveFormat,
        /// Sign node.toml with this ed25519 key (PKCS#8 PEM, as `cairn keygen` writes);
        /// required by images built with a node-config key.
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
    },
    /// Print this CLI's reference as Markdown (the source of docs/cli.md).
    #[command(hide = true)]
    HelpMarkdown,
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Write a self-contained apt repository of exactly the packages of LOCK...
    ///
    /// Every file is checked against the lock's sha256 on the way; packages missing from the
    /// local store are fetched from the lock's mirrors first. DIR must be empty, missing, or an
    /// earlier export (its files no given lock names are removed). Copy DIR to a USB stick or
    /// serve it with any static web server, then build with `--package-source DIR|URL`.
    Export {
        /// Lock files (e.g. images/cairn.lock).
        #[arg(required = true)]
        locks: Vec<PathBuf>,
        /// The directory to write the repository into.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// Remove everything the given locks do not need, and say what was freed.
    ///
    /// Keeps the stored packages of LOCK... and the root trees built from one of them;
    /// removes other packages and trees, leftovers of killed builds and older Cairns' caches.
    /// Waits for running builds to finish first. With no lock, empties the cache.
    Prune {
        /// Lock files whose packages and trees to keep.
        locks: Vec<PathBuf>,
    },
}

fn package_sources(args: &[String]) -> Result<Vec<crate::definition::PackageSource>> {
    args.iter()
        .map(|a| crate::definition::PackageSource::from_arg(a).map_err(|e| anyhow::anyhow!("--package-source: {e}")))
        .collect()
}

/// Run the CLI with `argv` (including the program name). Returns the exit code.
pub fn run(argv: Vec<OsString>, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let code = e.exit_code();
            let text = e.render().ansi().to_string();
            let _ = if code == 0 {
                write!(out, "{text}")
            } else {
                write!(err, "{text}")
            };
            return code;
        }
    };
    match dispatch(cli, out, err) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            for cause in e.chain().skip(1) {
                let _ = writeln!(err, "  caused by: {cause}");
            }
            1
        }
    }
}

fn dispatch(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    match cli.command {
        Command::Build {
            definition,
            out: out_dir,
            plan: print,
            dev,
            key,
            overlay,
            image_version,
            cmdline,
            locked,
            package_source,
            next_key,
        } => {
            let def = Definition::load(&definition)?;
            let overrides = Overrides {
                out: out_dir.unwrap_or_default(),
                version: image_version,
                cmdline,
                overlays: overlay,
                key,
                next_key,
                source_date_epoch: std::env::var("SOURCE_DATE_EPOCH").ok(),
                dev,
                lock_mode: if locked { LockMode::Locked } else { LockMode::Follow },
                package_sources: package_sources(&package_source)?,
                dev_key: build::dev_key_path(),
            };
            let plan = Plan::new(def, &overrides).with_context(|| format!("planning {}", definition.display()))?;
            if print {
                write!(out, "{}", plan.render())?;
                return Ok(());
            }
            let started = Instant::now();
            let report = build::build(&plan, &mut |line| {
                let _ = writeln!(err, "==> {line}");
            })
            .with_context(|| format!("building {}", definition.display()))?;
            print_summary(&report, started.elapsed().as_secs_f64(), out)?;
            Ok(())
        }
        Command::Keygen { private_key, force } => {
            let key = cairn_signing::PrivateKey::generate();
            let public = build::public_path_for(&private_key);
            key.write_pair(&private_key, &public, force)?;
            writeln!(
                out,
                "private key  {} (mode 0600; keep it secret)",
                private_key.display()
            )?;
            writeln!(out, "public key   {}", public.display())?;
            writeln!(out, "fingerprint  {}", key.public().fingerprint())?;
            writeln!(
                out,
                "use it with  cairn build DEFINITION --out DIR --key {}",
                private_key.display()
            )?;
            Ok(())
        }
        Command::Verify { dir, key } => {
            let public = cairn_signing::PublicKey::read(&key)?;
            let context = || format!("verifying {}", dir.display());
            let (name, version, root_hash, development_key, checks) = if dir.is_dir() {
                let (m, checks) = crate::release::verify::verify_dir(&dir, &public).with_context(context)?;
                (m.name, m.version, m.root_hash, m.development_key, checks)
            } else {
                let (m, checks) = crate::release::verify::verify_bundle(&dir, &public).with_context(context)?;
                (m.name, m.version, m.root_hash, m.development_key, checks)
            };
            for c in checks {
                writeln!(out, "ok  {c}")?;
            }
            writeln!(out, "verified {name} {version} (root hash {root_hash})")?;
            if development_key {
                writeln!(err, "warning: this image is signed with a development key")?;
            }
            Ok(())
        }
        Command::Publish {
            out: src,
            to,
            key,
            valid_days,
            allow_development,
        } => {
            let keys = key
                .iter()
                .map(|k| {
                    cairn_signing::PrivateKey::read(k)
                        .with_context(|| format!("reading the release key {}", k.display()))
                })
                .collect::<Result<Vec<_>>>()?;
            let p = crate::release::publish::publish(&src, &to, &keys, valid_days * 86400, allow_development)
                .with_context(|| format!("publishing {}", src.display()))?;
            let latest = p.index.release(&p.index.latest).expect("an index names its latest");
            if p.unchanged {
                writeln!(
                    out,
                    "already published: {} {} (the index is signed anew)",
                    p.index.name, latest.version
                )?;
            }
            writeln!(
                out,
                "index    {} (signed by {}; expires {})",
                p.dir.join(cairn_signing::bundle::INDEX_FILE).display(),
                keys.iter()
                    .map(|k| k.public().fingerprint())
                    .collect::<Vec<_>>()
                    .join(", "),
                p.index.expires
            )?;
            for r in &p.index.releases {
                let mark = if r.version == p.index.latest { "  (latest)" } else { "" };
                writeln!(
                    out,
                    "release  {} {:>8.1} MiB  {}{mark}",
                    r.version,
                    r.size as f64 / 1048576.0,
                    p.dir.join(&r.file).display()
                )?;
            }
            writeln!(
                out,
                "serve {} over HTTP(S) and set in node.toml:  [update] source = \"http://HOST/{}/\"",
                to.display(),
                p.index.name
            )?;
            Ok(())
        }
        Command::Boot {
            image,
            config_drive,
            timeout,
            until_ready,
            ssh_port,
            accel,
            memory,
        } => {
            let disk = if image.is_dir() {
                image.join(build::DISK_FILE)
            } else {
                image.clone()
            };
            if !disk.is_file() {
                bail!(
                    "{} is not a disk image or a build output directory (run `cairn build` first)",
                    image.display()
                );
            }
            let spec = VmSpec {
                disk,
                config_drive,
                memory_mib: memory,
                cpus: 2,
                ssh_port: Some(ssh_port),
                accel,
                echo: true,
                writable: false,
            };
            let mut vm = Vm::start(&spec)?;
            writeln!(
                err,
                "cairn: booting {} ({}, SSH on 127.0.0.1:{ssh_port}); Ctrl-C stops",
                image.display(),
                if vm.accel == Accel::Kvm { "KVM" } else { "TCG" }
            )?;
            // Keyboard to the serial console.
            let stdin_to_vm = vm.console_input();
            std::thread::spawn(move || {
                let mut line = String::new();
                while std::io::stdin().read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    if stdin_to_vm.send(&line).is_err() {
                        break;
                    }
                    line.clear();
                }
            });
            let limit = std::time::Duration::from_secs(timeout.unwrap_or(if until_ready { 900 } else { u64::MAX / 4 }));
            let ready = vm.wait_for_line("cairn: ready ", limit);
            let phases = vm::boot_phases(&vm.lines());
            match ready {
                Ok(_) => {
                    writeln!(err, "\n{}", vm::render_budget(&phases, vm.accel))?;
                    if until_ready {
                        vm.kill();
                        return Ok(());
                    }
                }
                Err(e) => {
                    vm.kill();
                    return Err(e).context("the node did not become ready");
                }
            }
            let left = limit.saturating_sub(vm.elapsed());
            match vm.wait_exit(left) {
                Some(status) => writeln!(err, "cairn: QEMU exited ({status})")?,
                None => {
                    writeln!(err, "cairn: --timeout reached, stopping the VM")?;
                    vm.kill();
                }
            }
            Ok(())
        }
        Command::Lock {
            definition,
            update,
            locked,
        } => {
            let def = Definition::load(&definition)?;
            let RootSource::Debian(spec) = &def.root else {
                bail!(
                    "{} has no [root.debian] table; only Debian roots have a lock",
                    definition.display()
                );
            };
            let epoch = build::plan::effective_epoch(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref())?;
            let inputs = debian::TreeInputs {
                dracut_modules: &def.dracut_modules,
                drivers: &def.initrd_drivers,
                epoch,
            };
            let mode = match (update, locked) {
                (true, _) => LockMode::Update,
                (_, true) => LockMode::Locked,
                _ => LockMode::Follow,
            };
            let p = debian::prepare(spec, &def.file, &inputs, mode, &Default::default(), &mut |line| {
                let _ = writeln!(err, "==> {line}");
            })?;
            let state = match &p.lock_written {
                Some(why) => format!("written ({why}; {} package(s) moved)", p.moves.len()),
                None => "unchanged".into(),
            };
            writeln!(
                out,
                "lock {} {state}: {} packages from {}",
                spec.lock.display(),
                p.lock.package.len(),
                p.lock.mirrors.main
            )?;
            writeln!(
                out,
                "tree cache key {} ({})",
                p.key,
                if p.cache_hit { "already cached" } else { "built now" }
            )?;
            Ok(())
        }
        Command::Store(StoreCommand::Export { locks, to }) => {
            let mut loaded = Vec::new();
            for l in &locks {
                match Lock::load(l)? {
                    Some(lock) => loaded.push((l.clone(), lock)),
                    None => bail!("{}: no such lock file", l.display()),
                }
            }
            let cache = crate::packages::cache::Cache::open();
            let mut log = |line: &str| {
                let _ = writeln!(err, "==> {line}");
            };
            let _shared = cache.lock_shared(&mut log)?;
            let store = cache.store();
            let mut missing = Vec::new();
            for (path, lock) in &loaded {
                let sources = crate::packages::store::Sources {
                    mirrors: Some(lock.mirrors.clone()),
                    ..Default::default()
                };
                let (_, m) = store.fetch(&lock.package, &sources, &mut log)?;
                missing.extend(m.into_iter().map(|m| format!("    {}: {m}", path.display())));
            }
            if !missing.is_empty() {
                bail!(
                    "{} locked package(s) are neither in the store nor served by their mirrors:\n{}\n  hint: export from the machine that built these locks, or re-resolve them (`cairn lock DEFINITION`)",
                    missing.len(),
                    missing.join("\n")
                );
            }
            let e = crate::packages::store::export(&store, &loaded, &to)
                .with_context(|| format!("exporting to {}", to.display()))?;
            writeln!(
                out,
                "exported {} packages ({}) from {} lock(s) to {}{}",
                e.packages,
                Size(e.bytes),
                loaded.len(),
                to.display(),
                if e.removed > 0 {
                    format!(", removed {} file(s) no lock names", e.removed)
                } else {
                    String::new()
                }
            )?;
            writeln!(
                out,
                "build from it with  cairn build DEFINITION --locked --package-source {}",
                to.display()
            )?;
            Ok(())
        }
        Command::Cache { action: None } => {
            let u = crate::packages::cache::Cache::open().usage()?;
            writeln!(out, "cache {}", u.root.display())?;
            writeln!(
                out,
                "  packages  {:>10}  {} stored .deb files",
                Size(u.packages.1).to_string(),
                u.packages.0
            )?;
            for t in &u.trees {
                let what = match (&t.lock, t.complete) {
                    (_, false) => "incomplete".to_string(),
                    (Some(l), true) => format!("{} packages, resolved {}", l.package.len(), l.resolved),
                    (None, true) => "no readable lock".to_string(),
                };
                writeln!(out, "  tree      {:>10}  {} ({what})", Size(t.bytes).to_string(), t.key)?;
            }
            for (name, bytes, _) in &u.other {
                writeln!(out, "  leftover  {:>10}  {name}", Size(*bytes).to_string())?;
            }
            writeln!(out, "  total     {:>10}", Size(u.total()).to_string())?;
            Ok(())
        }
        Command::Cache {
            action: Some(CacheCommand::Prune { locks }),
        } => {
            let mut keep = Vec::new();
            for l in &locks {
                match Lock::load(l)? {
                    Some(lock) => keep.push(lock),
                    None => bail!("{}: no such lock file", l.display()),
                }
            }
            let cache = crate::packages::cache::Cache::open();
            let p = cache.prune(&keep, &mut |line| {
                let _ = writeln!(err, "==> {line}");
            })?;
            writeln!(
                out,
                "pruned {}: freed {} ({} package(s), {} tree(s), {} leftover(s)); kept what {} lock(s) need",
                cache.root().display(),
                Size(p.bytes),
                p.packages,
                p.trees,
                p.other,
                keep.len()
            )?;
            Ok(())
        }
        Command::ConfigDrive {
            node,
            out: drive,
            format,
            sign,
        } => {
            let text = std::fs::read_to_string(&node).with_context(|| format!("reading {}", node.display()))?;
            let config = cairn_node::config::NodeConfig::parse(&text, &node.display().to_string())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            // What the node will render from it must be writable too (the second wall).
            cairn_node::render::plan(&config, &text).map_err(|e| anyhow::anyhow!("{}: {e}", node.display()))?;
            let mut files = vec![("node.toml".to_string(), text.clone().into_bytes())];
            let signed = match &sign {
                Some(k) => {
                    let key = cairn_signing::PrivateKey::read(k)
                        .with_context(|| format!("reading the signing key {}", k.display()))?;
                    files.push(("node.toml.sig".to_string(), key.sign(text.as_bytes()).to_vec()));
                    format!("signed with {} ({})", k.display(), key.public().fingerprint())
                }
                None => "not signed".to_string(),
            };
            let epoch = build::plan::effective_epoch(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref())?;
            crate::release::configdrive::write(&drive, format, &files, epoch)
                .with_context(|| format!("writing the config drive {}", drive.display()))?;
            writeln!(
                out,
                "wrote {} ({:?}, label {}): node {} generation {}, role {}, {signed}",
                drive.display(),
                format,
                crate::release::configdrive::LABEL,
                config.hostname,
                config.generation,
                config.role.as_str()
            )?;
            if let Some(w) = &config.wireguard {
                writeln!(
                    out,
                    "  wireguard  {} public key {} (give it to the peers)",
                    w.interface,
                    w.private_key.public().to_base64()
                )?;
            }
            Ok(())
        }
        Command::CheckKernel { config, fragment } => {
            let frag = match &fragment {
                Some(f) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
                None => crate::tree::kconfig::CAIRN_FRAGMENT.to_string(),
            };
            let reqs = crate::tree::kconfig::parse_fragment(&frag)?;
            let text = std::fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
            let missing = crate::tree::kconfig::check(&reqs, &crate::tree::kconfig::parse_config(&text));
            if !missing.is_empty() {
                bail!(
                    "{} lacks {} of the {} options Cairn needs:\n{}",
                    config.display(),
                    missing.len(),
                    reqs.len(),
                    crate::tree::kconfig::render_missing(&missing)
                );
            }
            writeln!(
                out,
                "{}: all {} options Cairn needs are set",
                config.display(),
                reqs.len()
            )?;
            Ok(())
        }
        Command::HelpMarkdown => {
            write!(out, "{}", help_markdown())?;
            Ok(())
        }
    }
}

fn print_summary(r: &build::BuildReport, secs: f64, out: &mut dyn Write) -> Result<()> {
    let m = &r.manifest;
    writeln!(
        out,
        "built {} {} in {:.1}s → {}",
        m.name,
        m.version,
        secs,
        r.out.display()
    )?;
    let data: u64 = m.disk.data.iter().map(|r| r.size).sum();
    writeln!(
        out,
        "  disk.raw     {} (sparse), {} of data in {} ranges",
        Size(m.disk.size),
        Size(data),
        m.disk.data.len()
    )?;
    if m.build == cairn_signing::BuildKind::Development {
        writeln!(
            out,
            "  build        DEVELOPMENT (--dev: fast compression; not for publishing)"
        )?;
    }
    writeln!(out, "  root hash    {}", m.root_hash)?;
    let root_slot = r.layout.get(Role::RootA).entry.size();
    writeln!(
        out,
        "  root fs      {} squashfs from {} of files ({} entries), {:.0}% of the {} slot",
        Size(r.squashfs_size),
        Size(r.tree.data_bytes),
        r.tree.entries,
        r.squashfs_size as f64 * 100.0 / root_slot as f64,
        Size(root_slot)
    )?;
    writeln!(out, "  #  label     offset       size         uuid")?;
    for (i, p) in r.layout.partitions.iter().enumerate() {
        let note = match p.role {
            Role::RootB | Role::VerityB => "  (empty slot)",
            _ => "",
        };
        writeln!(
            out,
            "  {}  {:<9} {:<12} {:<12} {}{note}",
            i + 1,
            p.entry.name,
            Size(p.entry.offset()),
            Size(p.entry.size()),
            p.entry.uuid
        )?;
    }
    if let Some(d) = &r.debian {
        writeln!(
            out,
            "  debian       {} packages, {} (cache key {}), {} downloaded",
            d.packages,
            if d.cache_hit {
                format!(
                    "tree from the cache: 0 s now, {:.0} s when mmdebstrap built it",
                    d.build_seconds
                )
            } else {
                format!("tree built by mmdebstrap in {:.0} s and cached", d.build_seconds)
            },
            d.key,
            d.downloaded
        )?;
        if let Some(why) = &d.lock_written {
            writeln!(
                out,
                "  lock         wrote {} ({why}; {} package(s) moved); commit it",
                d.lock.display(),
                d.moved
            )?;
        }
    }
    if !r.units.is_empty() {
        writeln!(out, "  units        {}", r.units.join(" "))?;
    }
    for m in &r.modules {
        writeln!(
            out,
            "  modules      {}: {} of {} kept ({} of {})",
            m.kver,
            m.kept,
            m.before,
            Size(m.kept_bytes),
            Size(m.before_bytes)
        )?;
    }
    match &r.kubelet {
        Some(sha) => writeln!(out, "  kubelet      included, sha256 {}", &sha[..16])?,
        None => writeln!(
            out,
            "  kubelet      NOT INCLUDED: no [kubelet] artifact pinned, so this image has no kubelet"
        )?,
    }
    match &r.node_config_key {
        Some(fp) => writeln!(out, "  node config  config drives must be signed by {fp}")?,
        None => writeln!(
            out,
            "  node config  unsigned config drives accepted (no [signing] node-config-key)"
        )?,
    }
    let stages: Vec<String> = r
        .stages
        .iter()
        .map(|(n, d)| format!("{n} {:.1}s", d.as_secs_f64()))
        .collect();
    writeln!(out, "  stages       {}", stages.join(" · "))?;
    for s in &r.skipped {
        writeln!(out, "  skipped      {s}")?;
    }
    let key = r.key.choice.path();
    writeln!(out, "  signed with  {} ({})", key.display(), m.signing_key)?;
    if r.key.choice.is_development() {
        writeln!(out)?;
        writeln!(
            out,
            "  !!! SIGNED WITH THE DEVELOPMENT KEY{} — NOT FOR PRODUCTION !!!",
            if r.key_created { " (created by this build)" } else { "" }
        )?;
        writeln!(
            out,
            "  !!! Create a release key with `cairn keygen keys/release.pem` and set [signing] key. !!!"
        )?;
    }
    writeln!(
        out,
        "  verify with  cairn verify {} --key {}",
        r.out.display(),
        build::public_path_for(key).display()
    )?;
    Ok(())
}

/// The CLI reference in Markdown, generated from the clap definitions.
pub fn help_markdown() -> String {
    let mut cmd = Cli::command();
    let mut s = String::from(
        "# `cairn` command reference\n\n<!-- generated by `cairn help-markdown`; a test checks it matches -->\n\n",
    );
    s.push_str(&format!(
        "{}\n\n",
        cmd.get_about().map(|a| a.to_string()).unwrap_or_default()
    ));
    for sub in cmd.get_subcommands_mut() {
        if sub.is_hide_set() {
            continue;
        }
        let name = sub.get_name().to_string();
        s.push_str(&format!("## `cairn {name}`\n\n```text\n"));
        let help = sub
            .clone()
            .bin_name(format!("cairn {name}"))
            .render_long_help()
            .to_string();
        s.push_str(help.trim_end());
        s.push_str("\n```\n\n");
    }
    s
}
