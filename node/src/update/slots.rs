//! The node's view of its disk for updates: the UKIs on the ESP (one per version, with
//! systemd-boot's try counter in the name), the running slot and the inactive one's
//! partitions.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_disk::gpt::{self, Partition, SECTOR};
use cairn_disk::guid::Guid;
use cairn_disk::pe;

use super::{io_at, UpdateError, STATE_DIR};
use crate::system::{self, Slot};

/// One UKI on the ESP, by its file name `cairn_<version>[+<left>[-<done>]].efi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File name in `EFI/Linux`.
    pub file: String,
    /// The version part.
    pub version: String,
    /// Tries left, when the entry is still being counted.
    pub tries_left: Option<u32>,
    /// Tries done, when the entry is being counted.
    pub tries_done: Option<u32>,
    /// The `roothash=` it boots, if it could be read.
    pub root_hash: Option<String>,
}

impl Entry {
    /// Parse a file name; `None` for anything that is not a Cairn UKI.
    pub fn from_file_name(file: &str) -> Option<Entry> {
        let stem = file.strip_prefix("cairn_")?.strip_suffix(".efi")?;
        let (version, counter) = match stem.rsplit_once('+') {
            Some((v, c)) => (v, Some(c)),
            None => (stem, None),
        };
        let (left, done) = match counter {
            None => (None, None),
            Some(c) => {
                let (l, d) = match c.split_once('-') {
                    Some((l, d)) => (l, Some(d.parse().ok()?)),
                    None => (c, None),
                };
                (Some(l.parse().ok()?), d.or(Some(0)))
            }
        };
        if version.is_empty() {
            return None;
        }
        Some(Entry {
            file: file.to_string(),
            version: version.to_string(),
            tries_left: left,
            tries_done: done,
            root_hash: None,
        })
    }

    /// Blessed (no counter left in the name).
    pub fn blessed(&self) -> bool {
        self.tries_left.is_none()
    }

    /// Counted and out of tries: systemd-boot will not pick it again.
    pub fn exhausted(&self) -> bool {
        self.tries_left == Some(0)
    }
}

/// Read the `roothash=` of the UKI at `path` from its headers (as long as they declare
/// themselves to be) and `.cmdline` only.
pub fn uki_root_hash(path: &Path) -> Option<String> {
    let f = File::open(path).ok()?;
    pe::cmdline_root_hash(&pe::read_section(&f, ".cmdline", 1 << 16)?)
}

/// The Cairn UKIs on the ESP mounted at `esp`, sorted by file name.
pub fn entries(esp: &Path) -> Result<Vec<Entry>, UpdateError> {
    let dir = esp.join("EFI/Linux");
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).map_err(io_at("listing", &dir))? {
        let e = e.map_err(io_at("listing", &dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(mut entry) = Entry::from_file_name(&name) {
            entry.root_hash = uki_root_hash(&e.path());
            out.push(entry);
        }
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(out)
}

/// The A/B partitions of a disk, by GPT name.
#[derive(Debug, Clone)]
pub struct SlotParts {
    /// The slot.
    pub slot: Slot,
    /// (number, entry) of `root-<slot>`.
    pub root: (u32, Partition),
    /// (number, entry) of `verity-<slot>`.
    pub verity: (u32, Partition),
}

/// What the update works on: a disk (a block device on a node, a file in tests), the
/// mounted ESP, and the running release.
#[derive(Debug, Clone)]
pub struct Target {
    /// The whole disk.
    pub disk: PathBuf,
    /// Where the ESP is mounted.
    pub esp: PathBuf,
    /// The running root hash (from `roothash=`).
    pub running_hash: [u8; 32],
    /// The running image's `IMAGE_ID`.
    pub image: String,
    /// The running image's `IMAGE_VERSION`.
    pub version: String,
    /// Where update state is kept (`/var/lib/cairn/update`).
    pub state_dir: PathBuf,
}

/// Find where the ESP is mounted: the first of `/efi`, `/boot`, `/boot/efi` holding
/// `loader/loader.conf` (touching it mounts an automounted ESP).
pub fn find_esp(root: &Path) -> Option<PathBuf> {
    ["efi", "boot", "boot/efi"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.join("loader/loader.conf").is_file())
}

impl Target {
    /// The running node's target.
    pub fn discover() -> Result<Target, UpdateError> {
        let sys = system::Root::default();
        let cmdline = sys
            .cmdline()
            .map_err(|e| UpdateError::System(format!("reading /proc/cmdline: {e}")))?;
        if system::is_live(&cmdline) {
            return Err(UpdateError::System(
                "this node runs live from Cairn's ISO (cairn.live): it has no slots to install into; \
                 flash the image to a disk (cairn flash) to update it"
                    .into(),
            ));
        }
        let running_hash = system::roothash_from_cmdline(&cmdline).ok_or_else(|| {
            UpdateError::System("the kernel command line has no roothash=: not booted from a Cairn UKI".into())
        })?;
        let link = Path::new("/dev/disk/by-partuuid").join(system::root_partuuid(&running_hash));
        let part = fs::canonicalize(&link)
            .map_err(|e| UpdateError::System(format!("{}: {e} (the running root partition)", link.display())))?;
        let name = part
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sys_part = fs::canonicalize(format!("/sys/class/block/{name}"))
            .map_err(|e| UpdateError::System(format!("/sys/class/block/{name}: {e}")))?;
        let disk_name = sys_part
            .parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| UpdateError::System(format!("{name} has no parent disk in sysfs")))?;
        let esp = find_esp(Path::new("/")).ok_or_else(|| {
            UpdateError::System("no ESP mounted at /efi, /boot or /boot/efi (loader/loader.conf not found)".into())
        })?;
        let osrel = fs::read_to_string("/usr/lib/os-release").unwrap_or_default();
        Ok(Target {
            disk: PathBuf::from("/dev").join(disk_name),
            esp,
            running_hash,
            image: system::os_release_field(&osrel, "IMAGE_ID").unwrap_or_default(),
            version: system::os_release_field(&osrel, "IMAGE_VERSION").unwrap_or_default(),
            state_dir: PathBuf::from(STATE_DIR),
        })
    }

    pub(crate) fn running_hex(&self) -> String {
        hex::encode(self.running_hash)
    }

    /// Read the disk's partition table; returns the disk handle, its size, the raw table
    /// regions and both slots.
    pub(super) fn table(&self, write: bool) -> Result<Table, UpdateError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(write)
            .open(&self.disk)
            .map_err(io_at("opening", &self.disk))?;
        let size = file.seek(SeekFrom::End(0)).map_err(io_at("sizing", &self.disk))?;
        let head_len = (2 + 32) * SECTOR;
        let tail_len = 33 * SECTOR;
        if size < head_len + tail_len {
            return Err(UpdateError::System(format!(
                "{} is too small for a GPT",
                self.disk.display()
            )));
        }
        let mut head = vec![0u8; head_len as usize];
        let mut tail = vec![0u8; tail_len as usize];
        file.read_exact_at(&mut head, 0).map_err(io_at("reading", &self.disk))?;
        file.read_exact_at(&mut tail, size - tail_len)
            .map_err(io_at("reading", &self.disk))?;
        // A table written halfway (power lost between the backup and the primary) is mended
        // first, or this node could never update again by itself.
        let mended = gpt::mend(&mut head, &mut tail, size)
            .map_err(|e| UpdateError::System(format!("{}: partition table: {e}", self.disk.display())))?;
        if mended.is_some() && write {
            file.write_all_at(&tail, size - tail_len)
                .and_then(|_| file.sync_data())
                .and_then(|_| file.write_all_at(&head, 0))
                .and_then(|_| file.sync_data())
                .map_err(io_at("mending the partition table of", &self.disk))?;
        }
        let (guid, parts) = gpt::read_numbered(&head, &tail, size)
            .map_err(|e| UpdateError::System(format!("{}: partition table: {e}", self.disk.display())))?;
        let find = |label: &str| {
            parts.iter().find(|(_, p)| p.name == label).cloned().ok_or_else(|| {
                UpdateError::System(format!(
                    "{} has no partition {label}: not a Cairn A/B disk",
                    self.disk.display()
                ))
            })
        };
        let a = SlotParts {
            slot: Slot::A,
            root: find("root-a")?,
            verity: find("verity-a")?,
        };
        let b = SlotParts {
            slot: Slot::B,
            root: find("root-b")?,
            verity: find("verity-b")?,
        };
        let running_uuid = Guid(self.running_hash[..16].try_into().expect("16 bytes"));
        let (running, inactive) = if a.root.1.uuid == running_uuid {
            (a, b)
        } else if b.root.1.uuid == running_uuid {
            (b, a)
        } else {
            return Err(UpdateError::System(format!(
                "neither root-a nor root-b has the running root's UUID {running_uuid}"
            )));
        };
        Ok(Table {
            file,
            size,
            head,
            tail,
            disk_guid: guid,
            running,
            inactive,
            mended,
        })
    }
}

pub(super) struct Table {
    pub(super) file: File,
    size: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
    pub(super) disk_guid: Guid,
    pub(super) running: SlotParts,
    pub(super) inactive: SlotParts,
    /// What was mended when the table was read, if anything.
    pub(super) mended: Option<String>,
}

impl Table {
    pub(super) fn set(&mut self, number: u32, uuid: Guid, attributes: u64) -> Result<(), UpdateError> {
        gpt::set_entry(&mut self.head, &mut self.tail, number, uuid, attributes)
            .map_err(|e| UpdateError::System(format!("editing the partition table: {e}")))
    }

    /// Backup copy first, then the primary, each made durable.
    pub(super) fn write(&mut self, disk: &Path) -> Result<(), UpdateError> {
        let tail_at = self.size - self.tail.len() as u64;
        self.file
            .write_all_at(&self.tail, tail_at)
            .and_then(|_| self.file.sync_data())
            .and_then(|_| self.file.write_all_at(&self.head, 0))
            .and_then(|_| self.file.sync_data())
            .map_err(io_at("writing the partition table of", disk))
    }
}

/// Writes a stream into one partition of the disk, refusing to pass its end.
pub(super) struct PartitionWriter<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a> PartitionWriter<'a> {
    /// A writer of `len` bytes from byte `start` of `file`, refusing to write past them.
    pub(super) fn new(file: &'a File, start: u64, len: u64) -> PartitionWriter<'a> {
        PartitionWriter {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl Write for PartitionWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pos + buf.len() as u64 > self.len {
            return Err(io::Error::other("payload is larger than the partition"));
        }
        self.file.write_all_at(buf, self.start + self.pos)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        let e = Entry::from_file_name("cairn_0.2.0+3.efi").unwrap();
        assert_eq!(
            (e.version.as_str(), e.tries_left, e.tries_done),
            ("0.2.0", Some(3), Some(0))
        );
        assert!(!e.blessed() && !e.exhausted());
        let e = Entry::from_file_name("cairn_0.2.0+0-3.efi").unwrap();
        assert_eq!((e.tries_left, e.tries_done), (Some(0), Some(3)));
        assert!(e.exhausted());
        let e = Entry::from_file_name("cairn_0.1.0.efi").unwrap();
        assert!(e.blessed());
        assert_eq!(Entry::from_file_name("cairn-update.partial"), None);
        assert_eq!(Entry::from_file_name("cairn_0.2.0+x.efi"), None);
        assert_eq!(Entry::from_file_name("other_1.efi"), None);
    }
}
