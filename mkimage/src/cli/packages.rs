//! `cairn lock`, `cairn store export` and `cairn cache`: the lock, the package store and
//! the build cache.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use crate::build::{self};
use crate::definition::{Definition, RootSource, Size};
use crate::packages::debian::{self, LockMode};
use crate::packages::lock::Lock;

#[derive(Debug, clap::Args)]
pub(super) struct LockArgs {
    /// The image definition (TOML) with a [root.debian] table.
    definition: PathBuf,
    /// Refresh every package to the mirror's current version.
    #[arg(long, conflicts_with = "locked")]
    update: bool,
    /// Only check that every locked package can be had (and build the tree); fail
    /// instead of re-resolving.
    #[arg(long)]
    locked: bool,
}

pub(super) fn lock(args: LockArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    let LockArgs {
        definition,
        update,
        locked,
    } = args;
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

#[derive(Debug, Subcommand)]
pub(super) enum StoreCommand {
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
pub(super) enum CacheCommand {
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

pub(super) fn store(command: StoreCommand, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    match command {
        StoreCommand::Export { locks, to } => {
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
    }
}

#[derive(Debug, clap::Args)]
pub(super) struct CacheArgs {
    #[command(subcommand)]
    action: Option<CacheCommand>,
}

pub(super) fn cache(args: CacheArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    match args.action {
        None => {
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
        Some(CacheCommand::Prune { locks }) => {
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
    }
}
