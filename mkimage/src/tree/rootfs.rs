//! The root tree as data: read from a directory or a tarball, overlaid, extended with
//! Cairn's generated files, normalized, and streamed as one canonical tar.
//!
//! Nothing here unpacks the tree or needs root: a tarball is indexed in place (its file
//! data is copied by offset when streaming), a directory is read with `lstat` and
//! `llistxattr`. Ownership, modes, symlinks, device nodes, hard links and extended
//! attributes (file capabilities) are carried as they are in the source; overlays and
//! generated files are owned by root.
//!
//! Normalization, so that the stream depends only on the content:
//! * entries are emitted in byte order of their path (a parent before its children);
//! * every modification time is clamped to the build's `SOURCE_DATE_EPOCH`;
//! * in a hard-link group, the first path in that order carries the data and the others
//!   link to it;
//! * missing parent directories are created (`0755`, root, epoch);
//! * `system.*` extended attributes (POSIX ACLs) are dropped: squashfs cannot store them.

use crate::ioerr::{io_err, IoError};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::tree::tarstream::{Header, Kind, TarWriter};

/// Problems reading or combining trees.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// IO on a named file.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A tarball entry Cairn cannot represent.
    #[error("{tar}: entry '{entry}': {why}")]
    BadEntry {
        /// The tarball.
        tar: PathBuf,
        /// The entry.
        entry: String,
        /// Why.
        why: String,
    },
    /// The combined tree is inconsistent.
    #[error("{0}")]
    Conflict(String),
}

#[derive(Debug, Clone)]
enum Data {
    None,
    Path(PathBuf),
    TarAt(u64),
    Bytes(Arc<Vec<u8>>),
}

#[derive(Debug, Clone)]
struct Item {
    header: Header,
    data: Data,
}

/// Counts of what a tree holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TreeStats {
    /// Number of entries.
    pub entries: u64,
    /// Bytes of regular file data.
    pub data_bytes: u64,
}

/// A root tree ready to stream.
#[derive(Debug, Default)]
pub struct Tree {
    items: BTreeMap<String, Item>,
    tar: Option<PathBuf>,
    /// Entries that were left out (sockets), for the build to mention.
    pub skipped: Vec<String>,
}

/// Make a path relative and clean: no leading `/` or `./`, no `.` or empty components,
/// no trailing slash. `..` is refused.
fn normalize(p: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

fn parent(p: &str) -> Option<&str> {
    if p.is_empty() {
        None
    } else {
        Some(p.rfind('/').map_or("", |i| &p[..i]))
    }
}

fn dev_major_minor(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

fn read_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>, TreeError> {
    let mut out = Vec::new();
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(io_err("listing extended attributes of", path)(e).into()),
    };
    for name in names {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("system.") {
            continue;
        }
        if let Some(v) = xattr::get(path, &name).map_err(io_err("reading extended attribute of", path))? {
            out.push((name, v));
        }
    }
    out.sort();
    Ok(out)
}

impl Tree {
    /// Index a directory tree, keeping ownership and attributes as they are on disk.
    pub fn from_dir(root: &Path) -> Result<Tree, TreeError> {
        let mut tree = Tree::default();
        let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
        tree.add_dir_recursive(root, "", &mut inodes, None)?;
        Ok(tree)
    }

    /// Lay a directory over the tree: its files replace the tree's, its directories
    /// merge (an existing directory keeps its metadata). Everything is owned by root.
    pub fn overlay_dir(&mut self, dir: &Path) -> Result<(), TreeError> {
        let mut inodes = HashMap::new();
        self.add_dir_recursive(dir, "", &mut inodes, Some((0, 0)))
    }

    fn add_dir_recursive(
        &mut self,
        fs_path: &Path,
        rel: &str,
        inodes: &mut HashMap<(u64, u64), String>,
        owner: Option<(u64, u64)>,
    ) -> Result<(), TreeError> {
        let md = fs::symlink_metadata(fs_path).map_err(io_err("reading", fs_path))?;
        let ft = md.file_type();
        let (uid, gid) = owner.unwrap_or((md.uid() as u64, md.gid() as u64));
        let xattrs = if owner.is_some() {
            Vec::new()
        } else {
            read_xattrs(fs_path)?
        };
        let mut data = Data::None;
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            let t = fs::read_link(fs_path).map_err(io_err("reading link", fs_path))?;
            Kind::Symlink(t.to_string_lossy().into_owned())
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = inodes.get(&(md.dev(), md.ino())) {
                    self.insert(
                        rel,
                        Kind::HardLink(first.clone()),
                        &md,
                        uid,
                        gid,
                        xattrs,
                        Data::None,
                        owner.is_some(),
                    )?;
                    return Ok(());
                }
                inodes.insert((md.dev(), md.ino()), rel.to_string());
            }
            data = Data::Path(fs_path.to_owned());
            Kind::File(md.len())
        } else if ft.is_char_device() {
            let (a, b) = dev_major_minor(md.rdev());
            Kind::Char(a, b)
        } else if ft.is_block_device() {
            let (a, b) = dev_major_minor(md.rdev());
            Kind::Block(a, b)
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            self.skipped.push(format!("{} (socket)", fs_path.display()));
            return Ok(());
        };
        self.insert(rel, kind.clone(), &md, uid, gid, xattrs, data, owner.is_some())?;
        if kind == Kind::Dir {
            let mut names: Vec<_> = fs::read_dir(fs_path)
                .map_err(io_err("listing", fs_path))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(io_err("listing", fs_path))?;
            names.sort();
            for name in names {
                let name_s = name.to_string_lossy();
                let child = if rel.is_empty() {
                    name_s.to_string()
                } else {
                    format!("{rel}/{name_s}")
                };
                self.add_dir_recursive(&fs_path.join(&name), &child, inodes, owner)?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        rel: &str,
        kind: Kind,
        md: &fs::Metadata,
        uid: u64,
        gid: u64,
        xattrs: Vec<(String, Vec<u8>)>,
        data: Data,
        overlay: bool,
    ) -> Result<(), TreeError> {
        let header = Header {
            path: rel.to_string(),
            kind,
            mode: md.permissions().mode() & 0o7777,
            uid,
            gid,
            mtime: md.mtime().max(0) as u64,
            xattrs,
        };
        self.put(Item { header, data }, overlay)
    }

    /// Add or replace one entry. With `overlay`, an existing directory is kept as it is
    /// when the new entry is a directory too.
    fn put(&mut self, item: Item, overlay: bool) -> Result<(), TreeError> {
        let path = item.header.path.clone();
        if let Some(old) = self.items.get(&path) {
            if overlay && old.header.kind == Kind::Dir && item.header.kind == Kind::Dir {
                return Ok(());
            }
            if overlay && old.header.kind == Kind::Dir {
                return Err(TreeError::Conflict(format!(
                    "an overlay puts a {} at /{path}, which is a directory in the root tree",
                    kind_name(&item.header.kind)
                )));
            }
            if overlay
                && self
                    .items
                    .values()
                    .any(|i| i.header.kind == Kind::HardLink(path.clone()))
            {
                return Err(TreeError::Conflict(format!(
                    "an overlay replaces /{path}, which other paths in the root tree hard-link to; \
                     replace those paths too or remove the link in the source"
                )));
            }
        }
        self.items.insert(path, item);
        Ok(())
    }

    /// Index an uncompressed tarball in place.
    pub fn from_tar(path: &Path) -> Result<Tree, TreeError> {
        let file = File::open(path).map_err(io_err("opening", path))?;
        let mut ar = tar::Archive::new(io::BufReader::new(file));
        let mut tree = Tree {
            tar: Some(path.to_owned()),
            ..Tree::default()
        };
        // Seek past file data instead of reading it: indexing touches only the headers.
        let entries = ar.entries_with_seek().map_err(io_err("reading", path))?;
        for entry in entries {
            let mut entry = entry.map_err(io_err("reading", path))?;
            let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let bad = |why: String| TreeError::BadEntry {
                tar: path.to_owned(),
                entry: raw_path.clone(),
                why,
            };
            let rel = normalize(&raw_path).ok_or_else(|| bad("path leaves the root ('..')".into()))?;
            let h = entry.header().clone();
            let num = |r: io::Result<u64>, what: &str| r.map_err(|e| bad(format!("bad {what}: {e}")));
            let mut uid = num(h.uid(), "uid")?;
            let mut gid = num(h.gid(), "gid")?;
            let mut mtime = num(h.mtime(), "mtime")?;
            let mode = h.mode().map_err(|e| bad(format!("bad mode: {e}")))? & 0o7777;
            let mut xattrs = Vec::new();
            if let Some(exts) = entry
                .pax_extensions()
                .map_err(|e| bad(format!("bad pax header: {e}")))?
            {
                for ext in exts {
                    let ext = ext.map_err(|e| bad(format!("bad pax record: {e}")))?;
                    let key = ext.key().map_err(|_| bad("pax key is not UTF-8".into()))?;
                    let value = ext.value_bytes();
                    let as_num = || {
                        std::str::from_utf8(value)
                            .ok()
                            .and_then(|v| v.split('.').next())
                            .and_then(|v| v.parse::<u64>().ok())
                            .ok_or_else(|| bad(format!("pax {key} is not a number")))
                    };
                    match key {
                        "uid" => uid = as_num()?,
                        "gid" => gid = as_num()?,
                        "mtime" => mtime = as_num()?,
                        k => {
                            let name = k
                                .strip_prefix("SCHILY.xattr.")
                                .or_else(|| k.strip_prefix("LIBARCHIVE.xattr."));
                            if let Some(name) = name {
                                if !name.starts_with("system.") {
                                    xattrs.push((name.to_string(), value.to_vec()));
                                }
                            }
                        }
                    }
                }
            }
            xattrs.sort();
            let link = || -> Result<String, TreeError> {
                let l = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .ok_or_else(|| bad("link without a target".into()))?;
                Ok(l)
            };
            let dev = || -> Result<(u32, u32), TreeError> {
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                Ok((major, minor))
            };
            let mut data = Data::None;
            let kind = match h.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    data = Data::TarAt(entry.raw_file_position());
                    Kind::File(entry.size())
                }
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Symlink => Kind::Symlink(link()?),
                tar::EntryType::Link => {
                    let target = normalize(&link()?).ok_or_else(|| bad("hard link leaves the root".into()))?;
                    Kind::HardLink(target)
                }
                tar::EntryType::Char => {
                    let (a, b) = dev()?;
                    Kind::Char(a, b)
                }
                tar::EntryType::Block => {
                    let (a, b) = dev()?;
                    Kind::Block(a, b)
                }
                tar::EntryType::Fifo => Kind::Fifo,
                tar::EntryType::XGlobalHeader => continue,
                other => {
                    return Err(bad(format!(
                        "unsupported entry type {other:?} (sparse or vendor extension)"
                    )))
                }
            };
            // The archive skips the data when it moves on; it is read again by offset later.
            let header = Header {
                path: rel,
                kind,
                mode,
                uid,
                gid,
                mtime,
                xattrs,
            };
            tree.items.insert(header.path.clone(), Item { header, data });
        }
        Ok(tree)
    }

    /// Add a generated file (owned by root), replacing what the tree has there.
    pub fn add_file(&mut self, path: &str, mode: u32, bytes: Vec<u8>, mtime: u64) -> Result<(), TreeError> {
        let rel = normalize(path).ok_or_else(|| TreeError::Conflict(format!("bad generated path {path}")))?;
        let header = Header {
            path: rel,
            kind: Kind::File(bytes.len() as u64),
            mode,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: Vec::new(),
        };
        self.put(
            Item {
                header,
                data: Data::Bytes(Arc::new(bytes)),
            },
            true,
        )
    }

    /// Add a generated symlink (owned by root), replacing what the tree has there.
    pub fn add_symlink(&mut self, path: &str, target: &str, mtime: u64) -> Result<(), TreeError> {
        let rel = normalize(path).ok_or_else(|| TreeError::Conflict(format!("bad generated path {path}")))?;
        let header = Header {
            path: rel,
            kind: Kind::Symlink(target.to_string()),
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: Vec::new(),
        };
        self.put(
            Item {
                header,
                data: Data::None,
            },
            true,
        )
    }

    /// The bytes of the regular file at `path` (following nothing), if it is one.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, TreeError> {
        let Some(item) = self.items.get(path) else {
            return Ok(None);
        };
        let Kind::File(size) = item.header.kind else {
            return Ok(None);
        };
        let mut buf = vec![0u8; size as usize];
        match &item.data {
            Data::Bytes(b) => buf.copy_from_slice(b),
            Data::Path(p) => {
                File::open(p)
                    .and_then(|mut f| f.read_exact(&mut buf))
                    .map_err(io_err("reading", p))?;
            }
            Data::TarAt(off) => {
                let tp = self.tar.as_deref().expect("tar data implies a tar source");
                let mut f = File::open(tp).map_err(io_err("opening", tp))?;
                f.seek(SeekFrom::Start(*off))
                    .and_then(|_| f.read_exact(&mut buf))
                    .map_err(io_err("reading", tp))?;
            }
            Data::None => return Ok(None),
        }
        Ok(Some(buf))
    }

    /// Remove `path` and, when it is a directory, everything under it. Returns how many
    /// entries went.
    pub fn remove(&mut self, path: &str) -> usize {
        let prefix = format!("{path}/");
        let before = self.items.len();
        self.items.retain(|p, _| p != path && !p.starts_with(&prefix));
        before - self.items.len()
    }

    /// Remove every entry for which `drop` holds; returns how many went.
    pub fn remove_where(&mut self, mut drop: impl FnMut(&str, &Header) -> bool) -> usize {
        let before = self.items.len();
        self.items.retain(|p, i| !drop(p, &i.header));
        before - self.items.len()
    }

    /// Every path, in stream order.
    pub fn paths(&self) -> impl Iterator<Item = &String> {
        self.items.keys()
    }

    /// Move everything under `from` to the same place under `to` (a path prefix rename);
    /// `from` itself stays. Hard links that pointed inside follow.
    pub fn move_under(&mut self, from: &str, to: &str) {
        let prefix = format!("{from}/");
        let moved: Vec<String> = self.items.keys().filter(|p| p.starts_with(&prefix)).cloned().collect();
        let rename = |p: &str| format!("{to}/{}", &p[prefix.len()..]);
        for p in moved {
            let mut item = self.items.remove(&p).expect("listed");
            item.header.path = rename(&p);
            self.items.insert(item.header.path.clone(), item);
        }
        for item in self.items.values_mut() {
            if let Kind::HardLink(t) = &item.header.kind {
                if t.starts_with(&prefix) {
                    item.header.kind = Kind::HardLink(rename(t));
                }
            }
        }
    }

    /// Add a directory owned by root unless something is there already.
    pub fn ensure_dir(&mut self, path: &str, mode: u32, mtime: u64) {
        if !self.items.contains_key(path) {
            let header = Header {
                path: path.to_string(),
                kind: Kind::Dir,
                mode,
                uid: 0,
                gid: 0,
                mtime,
                xattrs: Vec::new(),
            };
            self.items.insert(
                path.to_string(),
                Item {
                    header,
                    data: Data::None,
                },
            );
        }
    }

    /// The entry at `path`, if any (for tests and checks).
    pub fn get(&self, path: &str) -> Option<&Header> {
        self.items.get(path).map(|i| &i.header)
    }

    /// Apply the normalization rules in the module docs.
    pub fn normalize(&mut self, epoch: u64) -> Result<(), TreeError> {
        // Parents.
        let paths: Vec<String> = self.items.keys().cloned().collect();
        for p in &paths {
            let mut cur = parent(p);
            while let Some(dir) = cur {
                match self.items.get(dir) {
                    Some(i) if i.header.kind == Kind::Dir => break,
                    Some(i) => {
                        return Err(TreeError::Conflict(format!(
                            "/{p} lies under /{dir}, which is a {} and not a directory",
                            kind_name(&i.header.kind)
                        )))
                    }
                    None => {
                        let header = Header {
                            path: dir.to_string(),
                            kind: Kind::Dir,
                            mode: 0o755,
                            uid: 0,
                            gid: 0,
                            mtime: epoch,
                            xattrs: Vec::new(),
                        };
                        self.items.insert(
                            dir.to_string(),
                            Item {
                                header,
                                data: Data::None,
                            },
                        );
                    }
                }
                cur = parent(dir);
            }
        }
        if !self.items.contains_key("") {
            let header = Header {
                path: String::new(),
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: epoch,
                xattrs: Vec::new(),
            };
            self.items.insert(
                String::new(),
                Item {
                    header,
                    data: Data::None,
                },
            );
        }
        // Times.
        for item in self.items.values_mut() {
            item.header.mtime = item.header.mtime.min(epoch);
        }
        // Hard-link groups: the first path in stream order holds the data.
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (p, i) in &self.items {
            if let Kind::HardLink(t) = &i.header.kind {
                groups.entry(t.clone()).or_default().push(p.clone());
            }
        }
        for (target, links) in groups {
            let Some(t) = self.items.get(&target).cloned() else {
                return Err(TreeError::Conflict(format!(
                    "/{} is a hard link to /{target}, which does not exist",
                    links[0]
                )));
            };
            if !matches!(t.header.kind, Kind::File(_)) {
                return Err(TreeError::Conflict(format!(
                    "/{} is a hard link to /{target}, which is not a regular file",
                    links[0]
                )));
            }
            let first = links.iter().chain([&target]).min().expect("non-empty").clone();
            if first != target {
                let mut holder = t.clone();
                holder.header.path = first.clone();
                self.items.insert(first.clone(), holder);
                for p in links.iter().chain([&target]).filter(|p| **p != first) {
                    let mut link = t.clone();
                    link.header.path = p.clone();
                    link.header.kind = Kind::HardLink(first.clone());
                    link.data = Data::None;
                    self.items.insert(p.clone(), link);
                }
            }
        }
        Ok(())
    }

    /// Counts of entries and file bytes.
    pub fn stats(&self) -> TreeStats {
        let mut s = TreeStats::default();
        for i in self.items.values() {
            s.entries += 1;
            if let Kind::File(n) = i.header.kind {
                s.data_bytes += n;
            }
        }
        s
    }

    /// Stream the tree as a canonical tar. `progress` gets the file bytes written so far.
    pub fn write_tar(&self, out: impl Write, progress: &mut dyn FnMut(u64)) -> Result<(), TreeError> {
        let mut w = TarWriter::new(BufWriter::with_capacity(1 << 20, out));
        let mut tar = match &self.tar {
            Some(p) => Some(File::open(p).map_err(io_err("opening", p))?),
            None => None,
        };
        let pipe = |e: io::Error| TreeError::from(io_err("streaming the root tree to", "tar2sqfs")(e));
        let mut done = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        for item in self.items.values() {
            w.header(&item.header).map_err(pipe)?;
            let Kind::File(size) = item.header.kind else { continue };
            match &item.data {
                Data::Bytes(b) => w.data(b).map_err(pipe)?,
                Data::Path(p) => {
                    let mut f = File::open(p).map_err(io_err("opening", p))?;
                    copy_exact(&mut f, &mut w, size, &mut buf, p, pipe)?;
                }
                Data::TarAt(off) => {
                    let tp = self.tar.as_deref().expect("tar data implies a tar source");
                    let f = tar.as_mut().expect("tar source open");
                    f.seek(SeekFrom::Start(*off)).map_err(io_err("seeking in", tp))?;
                    copy_exact(f, &mut w, size, &mut buf, tp, pipe)?;
                }
                Data::None => unreachable!("regular files always have data"),
            }
            w.pad(size).map_err(pipe)?;
            done += size;
            progress(done);
        }
        w.finish().map_err(pipe)?;
        Ok(())
    }
}

fn copy_exact<W: Write>(
    from: &mut File,
    to: &mut TarWriter<W>,
    size: u64,
    buf: &mut [u8],
    path: &Path,
    pipe: impl Fn(io::Error) -> TreeError,
) -> Result<(), TreeError> {
    let mut left = size;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = from.read(&mut buf[..want]).map_err(io_err("reading", path))?;
        if n == 0 {
            return Err(TreeError::Conflict(format!(
                "{} shrank while the image was being built",
                path.display()
            )));
        }
        to.data(&buf[..n]).map_err(&pipe)?;
        left -= n as u64;
    }
    Ok(())
}

fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::Dir => "directory",
        Kind::File(_) => "file",
        Kind::Symlink(_) => "symlink",
        Kind::HardLink(_) => "hard link",
        Kind::Char(..) => "character device",
        Kind::Block(..) => "block device",
        Kind::Fifo => "fifo",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize("./usr/bin/").as_deref(), Some("usr/bin"));
        assert_eq!(normalize("/").as_deref(), Some(""));
        assert_eq!(normalize("a//b/./c").as_deref(), Some("a/b/c"));
        assert_eq!(normalize("a/../b"), None);
        assert_eq!(parent("a/b"), Some("a"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent(""), None);
    }

    #[test]
    fn device_numbers() {
        // makedev(8, 1) and makedev(259, 65536) in glibc's encoding
        assert_eq!(dev_major_minor(0x801), (8, 1));
        let dev = ((259u64 & 0xfff) << 8) | ((65536u64 & !0xff) << 12); // minor's low byte is 0
        assert_eq!(dev_major_minor(dev), (259, 65536));
    }

    fn tree_with(items: &[(&str, Kind)]) -> Tree {
        let mut t = Tree::default();
        for (p, k) in items {
            let header = Header {
                path: p.to_string(),
                kind: k.clone(),
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: 5,
                xattrs: vec![],
            };
            let data = match k {
                Kind::File(_) => Data::Bytes(Arc::new(b"x".to_vec())),
                _ => Data::None,
            };
            t.items.insert(p.to_string(), Item { header, data });
        }
        t
    }

    #[test]
    fn hard_link_data_moves_to_first_path() {
        let mut t = tree_with(&[("z", Kind::File(1)), ("a", Kind::HardLink("z".into()))]);
        t.normalize(100).unwrap();
        assert_eq!(t.get("a").unwrap().kind, Kind::File(1));
        assert_eq!(t.get("z").unwrap().kind, Kind::HardLink("a".into()));
        assert_eq!(t.get("").unwrap().kind, Kind::Dir);
    }

    #[test]
    fn parents_are_created_and_times_clamped() {
        let mut t = tree_with(&[("etc/cairn/x", Kind::File(1))]);
        t.normalize(3).unwrap();
        assert_eq!(t.get("etc").unwrap().kind, Kind::Dir);
        assert_eq!(t.get("etc/cairn").unwrap().mtime, 3);
        assert_eq!(t.get("etc/cairn/x").unwrap().mtime, 3);
    }

    #[test]
    fn conflicts_are_reported() {
        let mut t = tree_with(&[("etc", Kind::File(1)), ("etc/x", Kind::File(1))]);
        let e = t.normalize(0).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        let mut t = tree_with(&[("a", Kind::HardLink("missing".into()))]);
        assert!(t.normalize(0).is_err());
        let mut t = tree_with(&[("usr", Kind::Dir)]);
        let e = t.add_file("usr", 0o644, vec![], 0).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
    }
}
