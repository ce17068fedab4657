//! The build cache: where it is, who may change it, what it holds, and pruning it.
//!
//! `$CAIRN_CACHE_DIR`, else `$XDG_CACHE_HOME/cairn`, else `~/.cache/cairn`:
//!
//! | path | what |
//! |---|---|
//! | `packages/` | the package store ([`crate::packages::store`]) |
//! | `trees/<key>/` | a built Debian root: `root.tar`, `vmlinuz`, `initrd.img`, the `cairn.lock` it answers, `complete` |
//! | `work/<pid>-<n>/` | one build's scratch space; removed when the build ends, however it ends |
//! | `lock` | the cache lock: builds hold it shared, `cairn cache prune` exclusively |
//!
//! Builds running at once share the cache: downloads and trees land under their final names by
//! rename only, so a reader sees a whole file or none. A build killed before it could clean up
//! leaves a work directory named after its process, removed by the next build once that process
//! is gone. Older Cairns kept `debs/` and `work-<pid>/` at the top: `cairn cache prune` removes
//! them.

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::ioerr::{io_err, IoError};
use crate::packages::lock::Lock;
use crate::packages::store::Store;

/// Where Cairn caches packages and root trees.
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

/// Whether process `pid` still runs (what a leftover named after its process is judged by).
pub fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The cache.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// A held cache lock (released when dropped).
#[derive(Debug)]
pub struct CacheLock {
    _file: fs::File,
}

/// A build's scratch directory, removed when dropped.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

impl Cache {
    /// The cache at [`cache_dir`].
    pub fn open() -> Cache {
        Cache::at(cache_dir())
    }

    /// The cache at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    /// Its directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The package store.
    pub fn store(&self) -> Store {
        Store::new(self.root.join("packages"))
    }

    /// Where built trees live.
    pub fn trees(&self) -> PathBuf {
        self.root.join("trees")
    }

    fn lock(&self, exclusive: bool, log: &mut dyn FnMut(&str)) -> Result<CacheLock, IoError> {
        use rustix::fs::{flock, FlockOperation};
        fs::create_dir_all(&self.root).map_err(io_err("creating", &self.root))?;
        let path = self.root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        let (try_op, op) = if exclusive {
            (FlockOperation::NonBlockingLockExclusive, FlockOperation::LockExclusive)
        } else {
            (FlockOperation::NonBlockingLockShared, FlockOperation::LockShared)
        };
        if flock(file.as_fd(), try_op).is_err() {
            log(&format!(
                "cache: waiting for {} ({})",
                path.display(),
                if exclusive {
                    "builds are using the cache"
                } else {
                    "the cache is being pruned"
                }
            ));
            flock(file.as_fd(), op).map_err(|e| io_err("locking", &path)(e.into()))?;
        }
        Ok(CacheLock { _file: file })
    }

    /// Share the cache with other builds until the returned lock is dropped.
    pub fn lock_shared(&self, log: &mut dyn FnMut(&str)) -> Result<CacheLock, IoError> {
        self.lock(false, log)
    }

    /// Have the cache alone (for pruning).
    pub fn lock_exclusive(&self, log: &mut dyn FnMut(&str)) -> Result<CacheLock, IoError> {
        self.lock(true, log)
    }

    /// A new scratch directory for this process, and remove those of processes that are gone.
    pub fn work_dir(&self) -> Result<WorkDir, IoError> {
        let work = self.root.join("work");
        fs::create_dir_all(&work).map_err(io_err("creating", &work))?;
        for (path, _) in self.stale_work() {
            let _ = fs::remove_dir_all(path);
        }
        let path = work.join(crate::packages::store::unique(""));
        fs::create_dir(&path).map_err(io_err("creating", &path))?;
        Ok(WorkDir { path })
    }

    /// Work directories whose process is gone (in `work/`, and older Cairns' `work-<pid>`).
    fn stale_work(&self) -> Vec<(PathBuf, String)> {
        let mut v = Vec::new();
        let alive = |pid: &str| {
            pid.parse::<u32>()
                .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists())
        };
        if let Ok(rd) = fs::read_dir(self.root.join("work")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name.split('-').next().unwrap_or("");
                if !alive(pid) {
                    v.push((e.path(), format!("work/{name}")));
                }
            }
        }
        if let Ok(rd) = fs::read_dir(&self.root) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("work-") {
                    if !alive(pid) {
                        v.push((e.path(), name));
                    }
                }
            }
        }
        v
    }

    /// What the cache holds.
    pub fn usage(&self) -> Result<Usage, IoError> {
        let store = self.store();
        let mut packages = (0usize, 0u64);
        if let Ok(rd) = fs::read_dir(store.root()) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().ends_with(".deb") {
                    packages.0 += 1;
                }
                packages.1 += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        let mut trees = Vec::new();
        if let Ok(rd) = fs::read_dir(self.trees()) {
            for e in rd.flatten() {
                let dir = e.path();
                let lock = fs::read_to_string(dir.join("cairn.lock"))
                    .ok()
                    .and_then(|t| Lock::parse(&t, &dir.join("cairn.lock")).ok());
                trees.push(TreeEntry {
                    key: e.file_name().to_string_lossy().into_owned(),
                    bytes: du(&dir),
                    complete: dir.join("complete").exists(),
                    lock,
                    path: dir,
                });
            }
        }
        trees.sort_by(|a, b| a.key.cmp(&b.key));
        let mut other = Vec::new();
        for (path, name) in self.stale_work() {
            other.push((name, du(&path), path));
        }
        let legacy = self.root.join("debs");
        if legacy.is_dir() {
            other.push(("debs (an older Cairn's package cache)".into(), du(&legacy), legacy));
        }
        Ok(Usage {
            root: self.root.clone(),
            packages,
            trees,
            other,
        })
    }

    /// Keep what `keep` needs (their packages, and trees built from one of them); remove
    /// everything else. Holds the cache alone while it runs.
    pub fn prune(&self, keep: &[Lock], log: &mut dyn FnMut(&str)) -> Result<Pruned, IoError> {
        let _lock = self.lock_exclusive(log)?;
        let usage = self.usage()?;
        let mut pruned = Pruned::default();
        let wanted: std::collections::HashSet<&str> = keep
            .iter()
            .flat_map(|l| l.package.iter().map(|p| p.sha256.as_str()))
            .collect();
        let store = self.store();
        if let Ok(rd) = fs::read_dir(store.root()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let sha = name.split('.').next().unwrap_or("");
                if !wanted.contains(sha) {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    fs::remove_file(e.path()).map_err(io_err("removing", e.path()))?;
                    if name.ends_with(".deb") {
                        pruned.packages += 1;
                    }
                    pruned.bytes += len;
                }
            }
        }
        for t in usage.trees {
            let needed = t.complete
                && t.lock
                    .as_ref()
                    .is_some_and(|l| keep.iter().any(|k| k.package == l.package));
            if !needed {
                fs::remove_dir_all(&t.path).map_err(io_err("removing", &t.path))?;
                pruned.trees += 1;
                pruned.bytes += t.bytes;
            }
        }
        for (_, bytes, path) in usage.other {
            fs::remove_dir_all(&path).map_err(io_err("removing", &path))?;
            pruned.other += 1;
            pruned.bytes += bytes;
        }
        Ok(pruned)
    }
}

/// One cached tree.
#[derive(Debug)]
pub struct TreeEntry {
    /// Its key.
    pub key: String,
    /// Its directory.
    pub path: PathBuf,
    /// Bytes on disk.
    pub bytes: u64,
    /// Whether it was finished.
    pub complete: bool,
    /// The lock it answers, if readable.
    pub lock: Option<Lock>,
}

/// What the cache holds.
#[derive(Debug)]
pub struct Usage {
    /// The cache directory.
    pub root: PathBuf,
    /// Stored packages: count and bytes (with their control files).
    pub packages: (usize, u64),
    /// Built trees.
    pub trees: Vec<TreeEntry>,
    /// Leftovers: (name, bytes, path).
    pub other: Vec<(String, u64, PathBuf)>,
}

impl Usage {
    /// Total bytes.
    pub fn total(&self) -> u64 {
        self.packages.1 + self.trees.iter().map(|t| t.bytes).sum::<u64>() + self.other.iter().map(|o| o.1).sum::<u64>()
    }
}

/// What pruning removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Packages.
    pub packages: usize,
    /// Trees.
    pub trees: usize,
    /// Leftover work and legacy directories.
    pub other: usize,
    /// Bytes freed.
    pub bytes: u64,
}

/// Bytes a directory tree takes (apparent sizes; links not followed).
fn du(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else { continue };
        if m.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else {
            total += m.len();
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_dirs_go_away_and_stale_ones_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path());
        // A dead process's leftovers (pid 0 never names a live process in /proc).
        fs::create_dir_all(dir.path().join("work/0-1-ab/deep")).unwrap();
        fs::create_dir_all(dir.path().join("work-0/x")).unwrap();
        let u = cache.usage().unwrap();
        assert_eq!(u.other.len(), 2, "{:?}", u.other);
        let w = cache.work_dir().unwrap();
        let p = w.path().to_owned();
        assert!(p.is_dir());
        assert!(!dir.path().join("work/0-1-ab").exists());
        drop(w);
        assert!(!p.exists());
    }

    #[test]
    fn shared_locks_coexist_and_exclusive_waits() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path());
        let a = cache.lock_shared(&mut |_| {}).unwrap();
        let b = cache.lock_shared(&mut |_| {}).unwrap();
        let c2 = cache.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let _x = c2
                .lock_exclusive(&mut |line| tx.send(line.to_string()).unwrap())
                .unwrap();
            true
        });
        // The pruner says it waits, and gets the cache once the builds are done.
        let said = rx.recv().unwrap();
        assert!(said.contains("builds are using the cache"), "{said}");
        drop((a, b));
        assert!(t.join().unwrap(), "pruning must wait for running builds");
    }
}
