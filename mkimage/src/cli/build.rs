//! `cairn build` (with `--plan`) and `cairn check-kernel`: the build's command line, the
//! plan it makes, and the summary it prints.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::build::layout::Role;
use crate::build::{self, Overrides, Plan};
use crate::definition::{Definition, OutputFormat, Size};
use crate::packages::debian::LockMode;

#[derive(Debug, clap::Args)]
pub(super) struct BuildArgs {
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
    /// Write this form of the disk image too (repeatable; adds to the definition's
    /// `[output] formats`): `bmap` (disk.raw.bmap for `bmaptool copy`), `raw.zst`
    /// (disk.raw.zst), `qcow2` (disk.qcow2). Each is listed with its sha256 in the signed
    /// outputs.json.
    #[arg(long = "format", value_name = "FORMAT", value_enum)]
    formats: Vec<OutputFormat>,
}

pub(super) fn build(args: BuildArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    let BuildArgs {
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
        formats,
    } = args;
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
        formats,
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

pub(super) fn package_sources(args: &[String]) -> Result<Vec<crate::definition::PackageSource>> {
    args.iter()
        .map(|a| crate::definition::PackageSource::from_arg(a).map_err(|e| anyhow::anyhow!("--package-source: {e}")))
        .collect()
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

#[derive(Debug, clap::Args)]
pub(super) struct CheckKernelArgs {
    /// The kernel's .config (e.g. /boot/config-6.1.0-…-amd64).
    config: PathBuf,
    /// Requirements to check instead of Cairn's built-in list.
    #[arg(long, value_name = "FILE")]
    fragment: Option<PathBuf>,
}

pub(super) fn check_kernel(args: CheckKernelArgs, out: &mut dyn Write, _err: &mut dyn Write) -> Result<()> {
    let CheckKernelArgs { config, fragment } = args;
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
