//! Kernel module trimming: ship only the modules a node needs.
//!
//! A distribution kernel carries thousands of modules (Debian 12's: 4 023 files, 384 MiB,
//! half of the root tree), and udev loads every one that matches a device at boot. Cairn
//! keeps the modules named by the `# keep:` lines of the kernel-config classes an image
//! asks for (see [`crate::tree::kconfig::parse_keep`]) plus the definition's `extra-modules`,
//! closes that set over `modules.dep` and the softdeps, drops everything else, and lets
//! `depmod` rebuild the indexes for what is left.
//!
//! The selection is pure ([`select`]); [`trim`] does the IO on a [`Tree`]: it copies the
//! kept modules into a scratch directory, runs `depmod -b` there (the indexes are binary
//! tries that only depmod writes) and puts the new `modules.*` files back into the tree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use std::process::Command;

use crate::ioerr::{io_err, IoError};
use crate::tools::{self, ToolError};
use crate::tree::rootfs::{Tree, TreeError};
use crate::tree::tarstream::Kind;

/// Where module trees live in a merged-/usr root.
pub const MODULES_DIR: &str = "usr/lib/modules";

/// Problems trimming modules.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    /// A keep rule the definition added that matches no module.
    #[error("extra-modules entry '{rule}' matches no module of kernel {kver}\n  hint: paths are relative to /usr/lib/modules/{kver}/, e.g. \"kernel/drivers/net/ethernet/intel/\"")]
    NoMatch {
        /// The rule.
        rule: String,
        /// The kernel version.
        kver: String,
    },
    /// A module tree without its dependency list.
    #[error("/{MODULES_DIR}/{0}/modules.dep is missing: cannot tell which modules depend on which\n  hint: set [kernel] modules = \"all\" for trees without depmod data")]
    NoDepFile(String),
    /// The tree could not be read or changed.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// depmod failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// Scratch IO.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// What trimming did to one kernel's modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrimReport {
    /// Kernel version.
    pub kver: String,
    /// Modules kept / before.
    pub kept: usize,
    /// Module count before trimming.
    pub before: usize,
    /// Bytes of module files kept.
    pub kept_bytes: u64,
    /// Bytes of module files before.
    pub before_bytes: u64,
    /// Class keep rules that matched nothing in this kernel (not an error: a class may
    /// name a driver some kernels build in).
    pub unmatched: Vec<String>,
}

/// The module name kmod uses for a path: file name without `.ko[.xz|.zst|.gz]`, `-` → `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

fn is_module(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"].iter().any(|e| file.ends_with(e))
}

/// `modules.dep`: `kernel/a.ko: kernel/b.ko kernel/c.ko` per line → path → dependencies.
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, deps)| {
            (
                m.trim().to_string(),
                deps.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect()
}

/// `modules.softdep`: `softdep NAME pre: A B post: C` per line → name → every named module.
pub fn parse_softdep(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in text.lines() {
        let mut words = l.split_whitespace();
        if words.next() != Some("softdep") {
            continue;
        }
        let Some(name) = words.next() else { continue };
        let entry = out.entry(name.replace('-', "_")).or_default();
        entry.extend(words.filter(|w| !w.ends_with(':')).map(|w| w.replace('-', "_")));
    }
    out
}

/// Does a keep rule (a `.ko` path or a directory ending in `/`) cover this module path?
fn covers(rule: &str, path: &str) -> bool {
    match path.strip_prefix(rule) {
        None => false,
        Some(rest) => rule.ends_with('/') || rest.is_empty() || rest.starts_with('.'),
    }
}

/// The modules to keep: every module a rule covers, closed over `deps` and `softdeps`.
/// Returns the kept paths and the rules that matched nothing.
pub fn select(
    deps: &BTreeMap<String, Vec<String>>,
    softdeps: &BTreeMap<String, Vec<String>>,
    rules: &[String],
) -> (BTreeSet<String>, Vec<String>) {
    let by_name: BTreeMap<String, &String> = deps.keys().map(|p| (module_name(p), p)).collect();
    let mut unmatched = Vec::new();
    let mut todo: Vec<String> = Vec::new();
    for r in rules {
        let hits: Vec<&String> = deps.keys().filter(|p| covers(r, p)).collect();
        if hits.is_empty() {
            unmatched.push(r.clone());
        }
        todo.extend(hits.into_iter().cloned());
    }
    let mut keep = BTreeSet::new();
    while let Some(p) = todo.pop() {
        if !keep.insert(p.clone()) {
            continue;
        }
        todo.extend(deps.get(&p).into_iter().flatten().cloned());
        for soft in softdeps.get(&module_name(&p)).into_iter().flatten() {
            todo.extend(by_name.get(soft).map(|p| (*p).clone()));
        }
    }
    (keep, unmatched)
}

/// Where depmod's indexes for one module tree and one set of rules are kept between builds:
/// `<tree cache>/depmod/<key>/<kernel version>/modules.*`. The key covers what the indexes
/// depend on besides the module files (which the tree's own cache key fixes): the rules and
/// depmod's version.
pub fn reuse_dir(tree_cache: &Path, class_rules: &[String], extra_rules: &[String]) -> PathBuf {
    let version = Command::new(tools::which("depmod").unwrap_or_else(|| "depmod".into()))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(b"cairn depmod indexes v1\0");
    h.update(version.as_bytes());
    for r in class_rules {
        h.update(b"\0class\0");
        h.update(r.as_bytes());
    }
    for r in extra_rules {
        h.update(b"\0extra\0");
        h.update(r.as_bytes());
    }
    tree_cache.join("depmod").join(&hex::encode(h.finalize())[..32])
}

/// depmod's `modules.*` for one kernel: from `reuse` when an earlier build left them there,
/// else made in `scratch` from the kept modules (and left in `reuse` for the next build).
fn indexes(
    tree: &Tree,
    base: &str,
    kver: &str,
    keep: &BTreeSet<String>,
    scratch: &Path,
    reuse: Option<&Path>,
) -> Result<Vec<(String, Vec<u8>)>, ModulesError> {
    let read_dir = |dir: &Path| -> Result<Vec<(String, Vec<u8>)>, ModulesError> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(io_err("reading", dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("modules."))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let from = dir.join(&name);
            out.push((name, std::fs::read(&from).map_err(io_err("reading", &from))?));
        }
        Ok(out)
    };
    let cached = reuse.map(|r| r.join(kver));
    if let Some(c) = cached.as_deref().filter(|c| c.join("complete").is_file()) {
        return read_dir(c);
    }

    let dir = scratch.join("lib/modules").join(kver);
    std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    for rel in keep {
        let Some(bytes) = tree.read_file(&format!("{base}{rel}"))? else {
            continue;
        };
        let to = dir.join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        std::fs::write(&to, bytes).map_err(io_err("writing", &to))?;
    }
    let order = tree.read_file(&format!("{base}modules.order"))?.unwrap_or_default();
    let order: String = String::from_utf8_lossy(&order)
        .lines()
        .filter(|l| keep.contains(*l))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.join("modules.order"), order).map_err(io_err("writing", &dir))?;
    for f in ["modules.builtin", "modules.builtin.modinfo"] {
        if let Some(bytes) = tree.read_file(&format!("{base}{f}"))? {
            std::fs::write(dir.join(f), bytes).map_err(io_err("writing", &dir))?;
        }
    }
    let depmod = tools::which("depmod").unwrap_or_else(|| "depmod".into());
    tools::run(Command::new(depmod).arg("-b").arg(scratch).arg(kver), "depmod")?;
    let made = read_dir(&dir)?;
    if let Some(c) = cached {
        // Best effort, and whole or not at all: written beside, renamed into place, marked
        // complete last. A build that loses a race to another keeps its own result.
        let tmp = c.with_extension(format!("tmp-{}", std::process::id()));
        let saved = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&tmp)?;
            for (name, bytes) in &made {
                std::fs::write(tmp.join(name), bytes)?;
            }
            std::fs::write(tmp.join("complete"), b"")?;
            std::fs::rename(&tmp, &c)
        })();
        if saved.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    Ok(made)
}

/// Trim every kernel's modules in `tree` to what `class_rules` and `extra_rules` select.
/// `scratch` is an empty directory for depmod's work; `reuse` (see [`reuse_dir`]) keeps
/// depmod's indexes between builds of the same module tree, which only a tree whose
/// content a cache key fixes may use.
pub fn trim(
    tree: &mut Tree,
    class_rules: &[String],
    extra_rules: &[String],
    scratch: &Path,
    reuse: Option<&Path>,
    epoch: u64,
) -> Result<Vec<TrimReport>, ModulesError> {
    let prefix = format!("{MODULES_DIR}/");
    let kvers: BTreeSet<String> = tree
        .paths()
        .filter_map(|p| p.strip_prefix(&prefix))
        .filter_map(|rest| rest.split_once('/').map(|(k, _)| k.to_string()))
        .collect();
    let mut reports = Vec::new();
    for kver in kvers {
        let base = format!("{prefix}{kver}/");
        let modules: BTreeMap<String, u64> = tree
            .paths()
            .filter_map(|p| p.strip_prefix(&base).map(|rel| (p, rel)))
            .filter(|(_, rel)| is_module(rel))
            .filter_map(|(p, rel)| match tree.get(p).map(|h| &h.kind) {
                Some(Kind::File(size)) => Some((rel.to_string(), *size)),
                _ => None,
            })
            .collect();
        if modules.is_empty() {
            continue;
        }
        let dep_text = tree
            .read_file(&format!("{base}modules.dep"))?
            .ok_or_else(|| ModulesError::NoDepFile(kver.clone()))?;
        let deps = parse_modules_dep(&String::from_utf8_lossy(&dep_text));
        let soft_text = tree.read_file(&format!("{base}modules.softdep"))?.unwrap_or_default();
        let softdeps = parse_softdep(&String::from_utf8_lossy(&soft_text));
        let rules: Vec<String> = class_rules.iter().chain(extra_rules).cloned().collect();
        let (keep, unmatched) = select(&deps, &softdeps, &rules);
        if let Some(rule) = unmatched.iter().find(|r| extra_rules.contains(r)) {
            return Err(ModulesError::NoMatch {
                rule: rule.clone(),
                kver,
            });
        }

        let made = indexes(tree, &base, &kver, &keep, scratch, reuse)?;

        let before = modules.len();
        let before_bytes: u64 = modules.values().sum();
        let kept_bytes: u64 = modules.iter().filter(|(r, _)| keep.contains(*r)).map(|(_, s)| s).sum();
        tree.remove_where(|p, _| {
            p.strip_prefix(&base)
                .is_some_and(|rel| is_module(rel) && !keep.contains(rel))
        });
        // Directories left without a module under them go too.
        let live: BTreeSet<String> = keep
            .iter()
            .flat_map(|rel| {
                let mut dirs = Vec::new();
                let mut d = rel.as_str();
                while let Some((parent, _)) = d.rsplit_once('/') {
                    dirs.push(parent.to_string());
                    d = parent;
                }
                dirs
            })
            .collect();
        tree.remove_where(|p, h| {
            matches!(h.kind, Kind::Dir)
                && p.strip_prefix(&base)
                    .is_some_and(|rel| rel.starts_with("kernel/") && !live.contains(rel))
        });
        for (name, bytes) in made {
            tree.add_file(&format!("{base}{name}"), 0o644, bytes, epoch)?;
        }
        reports.push(TrimReport {
            kver,
            kept: keep.len(),
            before,
            kept_bytes,
            before_bytes,
            unmatched: unmatched.into_iter().filter(|r| class_rules.contains(r)).collect(),
        });
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root with a kernel's modules (fake contents), as a tree.
    fn module_root(dir: &Path) -> Tree {
        let base = dir.join("root/usr/lib/modules/6.1.0-test");
        for line in DEP.lines() {
            let m = line.split(':').next().unwrap();
            let p = base.join(m);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("not really {m}")).unwrap();
        }
        std::fs::write(base.join("modules.dep"), DEP).unwrap();
        Tree::from_dir(&dir.join("root")).unwrap()
    }

    fn index_files(t: &Tree) -> Vec<(String, Vec<u8>)> {
        let paths: Vec<String> = t.paths().filter(|p| p.contains("/modules.")).cloned().collect();
        paths
            .into_iter()
            .map(|p| (p.clone(), t.read_file(&p).unwrap().unwrap()))
            .collect()
    }

    #[test]
    fn depmod_indexes_are_reused_only_when_complete() {
        if tools::which("depmod").is_none() {
            panic!("depmod is missing; run .ci/run or apt-get install kmod");
        }
        let dir = tempfile::tempdir().unwrap();
        let rules = vec!["kernel/drivers/md/dm-verity.ko".to_string()];
        let reuse = reuse_dir(dir.path(), &rules, &[]);
        assert_ne!(reuse, reuse_dir(dir.path(), &rules, &["kernel/fs/".into()]));
        let trim_once = |scratch: &str| {
            let mut t = module_root(&dir.path().join(scratch));
            let r = trim(
                &mut t,
                &rules,
                &[],
                &dir.path().join(scratch).join("s"),
                Some(&reuse),
                7,
            )
            .unwrap();
            (t, r)
        };
        let (first, r1) = trim_once("a");
        let cached = reuse.join("6.1.0-test");
        assert!(cached.join("complete").is_file());
        let (second, r2) = trim_once("b");
        assert_eq!(r1, r2);
        assert_eq!(index_files(&first), index_files(&second));
        assert!(second
            .get("usr/lib/modules/6.1.0-test/kernel/sound/core/snd.ko")
            .is_none());
        // The second build read the kept indexes: a marked copy shows through.
        std::fs::write(cached.join("modules.alias"), "# marked\n").unwrap();
        let (third, _) = trim_once("c");
        let alias = third
            .read_file("usr/lib/modules/6.1.0-test/modules.alias")
            .unwrap()
            .unwrap();
        assert_eq!(alias, b"# marked\n");
        // Without its completion mark the kept copy is not trusted: made anew.
        std::fs::remove_file(cached.join("complete")).unwrap();
        let (fourth, _) = trim_once("d");
        assert_eq!(index_files(&first), index_files(&fourth));
    }

    const DEP: &str = "kernel/fs/squashfs/squashfs.ko:\n\
        kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko\n\
        kernel/drivers/md/dm-bufio.ko:\n\
        kernel/drivers/md/dm-mod.ko:\n\
        kernel/crypto/crc32c_generic.ko:\n\
        kernel/arch/x86/crypto/crc32c-intel.ko:\n\
        kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko\n\
        kernel/fs/jbd2/jbd2.ko:\n\
        kernel/fs/mbcache.ko:\n\
        kernel/sound/core/snd.ko:\n";

    #[test]
    fn names_follow_kmod() {
        assert_eq!(module_name("kernel/drivers/md/dm-verity.ko"), "dm_verity");
        assert_eq!(module_name("kernel/fs/nls/nls_iso8859-1.ko.xz"), "nls_iso8859_1");
        assert!(is_module("kernel/a/b.ko.zst") && !is_module("modules.dep"));
    }

    #[test]
    fn selection_closes_over_deps_and_softdeps() {
        let deps = parse_modules_dep(DEP);
        let soft = parse_softdep("# comment\nsoftdep ext4 pre: crc32c\nsoftdep crc32c_generic pre: crc32c-intel\n");
        assert_eq!(soft["ext4"], ["crc32c"]);
        let (keep, unmatched) = select(
            &deps,
            &soft,
            &[
                "kernel/drivers/md/dm-verity.ko".into(),
                "kernel/fs/ext4/".into(),
                "kernel/nope/".into(),
            ],
        );
        let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
        assert_eq!(
            keep,
            [
                "kernel/drivers/md/dm-bufio.ko",
                "kernel/drivers/md/dm-mod.ko",
                "kernel/drivers/md/dm-verity.ko",
                "kernel/fs/ext4/ext4.ko",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/mbcache.ko",
            ]
        );
        assert_eq!(unmatched, ["kernel/nope/"]);
        // A softdep naming a real module pulls it in (and its own softdeps).
        let (keep, _) = select(&deps, &soft, &["kernel/crypto/crc32c_generic.ko".into()]);
        assert!(keep.contains("kernel/arch/x86/crypto/crc32c-intel.ko"), "{keep:?}");
    }

    #[test]
    fn file_rules_match_compressed_modules_but_not_prefixes() {
        assert!(covers("kernel/fs/fat/vfat.ko", "kernel/fs/fat/vfat.ko.xz"));
        assert!(covers("kernel/fs/fat/", "kernel/fs/fat/vfat.ko"));
        assert!(!covers("kernel/drivers/net/tun.ko", "kernel/drivers/net/tunx.ko"));
        assert!(!covers("kernel/fs/fat", "kernel/fs/fat/vfat.ko"));
    }
}
