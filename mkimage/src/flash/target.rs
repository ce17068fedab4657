//! What a flash target is, and whether it may be written: a regular file (written anew
//! beside it and renamed into place), or a whole disk that nothing uses.
//!
//! Everything the checks read comes through [`Host`]: `/proc/self/mountinfo`,
//! `/proc/swaps` and `/sys/dev/block`. Tests point it at files of their own to make a
//! device look mounted or swapped on; the real one is [`Host::system`].

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The image's sector size: Cairn's GPT is laid out in 512-byte sectors.
pub const SECTOR: u64 = 512;

/// Where the machine's facts are read from.
#[derive(Debug, Clone)]
pub struct Host {
    /// `/proc/self/mountinfo`.
    pub mountinfo: PathBuf,
    /// `/proc/swaps`.
    pub swaps: PathBuf,
    /// `/sys/dev/block` (one `MAJOR:MINOR` link per block device).
    pub sys_dev_block: PathBuf,
}

impl Host {
    /// This machine.
    pub fn system() -> Host {
        Host {
            mountinfo: "/proc/self/mountinfo".into(),
            swaps: "/proc/swaps".into(),
            sys_dev_block: "/sys/dev/block".into(),
        }
    }
}

/// A target that may be written.
#[derive(Debug, Clone)]
pub enum Target {
    /// A regular file (existing or not): written as a new file beside it, then renamed.
    File(PathBuf),
    /// A whole disk nothing uses.
    Disk(Disk),
}

/// A whole-disk block device.
#[derive(Debug, Clone)]
pub struct Disk {
    /// The path given (`/dev/sdb`, `/dev/disk/by-id/…`).
    pub path: PathBuf,
    /// Its kernel name (`sdb`).
    pub name: String,
    /// `MAJOR:MINOR`.
    pub devno: String,
    /// Size in bytes.
    pub size: u64,
    /// Logical sector size in bytes.
    pub sector: u64,
    /// Vendor and model as the kernel reports them, if it does.
    pub model: String,
    /// Its partitions now: kernel name and size in bytes.
    pub partitions: Vec<(String, u64)>,
}

impl Disk {
    /// One line for the confirmation and the plan.
    pub fn describe(&self) -> String {
        let parts = if self.partitions.is_empty() {
            "no partitions".to_string()
        } else {
            self.partitions
                .iter()
                .map(|(n, s)| format!("{n} {}", crate::definition::Size(*s)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{} ({}, {}): {}, {}-byte sectors; {parts}",
            self.path.display(),
            self.name,
            if self.model.is_empty() {
                "no model reported"
            } else {
                &self.model
            },
            crate::definition::Size(self.size),
            self.sector
        )
    }
}

/// Why a target is refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not a block device or a regular file.
    #[error("{path} is {kind}: cairn flash writes whole disks and image files")]
    Kind {
        /// The target.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A path under /dev that does not exist (a typo must not become a file in /dev).
    #[error("{0}: no such device\n  hint: list the machine's disks with `lsblk -d -o NAME,SIZE,MODEL`")]
    NoDevice(PathBuf),
    /// A partition, not a whole disk.
    #[error("{path} is partition {name} of {disk}: a Cairn image is a whole disk with its own partition table\n  hint: flash /dev/{disk}")]
    Partition {
        /// The target.
        path: PathBuf,
        /// The partition's name.
        name: String,
        /// Its disk.
        disk: String,
    },
    /// Something uses the disk.
    #[error("{path} is in use: {why}\n  hint: unmount its file systems, switch off its swap and stop what holds it (lsblk {path}), or pick another disk")]
    Busy {
        /// The target.
        path: PathBuf,
        /// What uses it.
        why: String,
    },
    /// It holds the running system.
    #[error("{path} holds {mount} of the running system: never flashed")]
    System {
        /// The target.
        path: PathBuf,
        /// `/`, `/boot`, …
        mount: String,
    },
    /// Too small for the image.
    #[error("{path} holds {size} bytes; the image needs {need}")]
    TooSmall {
        /// The target.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The image's.
        need: u64,
    },
    /// A sector size the image's partition table does not fit.
    #[error("{path} has {sector}-byte logical sectors; this image's partition table is laid out in {SECTOR}-byte sectors and would not be found")]
    Sector {
        /// The target.
        path: PathBuf,
        /// Its logical sector size.
        sector: u64,
    },
    /// Read-only.
    #[error("{0} is read-only (its write-protect switch, or the kernel's ro flag)")]
    ReadOnly(PathBuf),
    /// The machine's facts could not be read.
    #[error("reading {what}: {why}")]
    Facts {
        /// The file.
        what: String,
        /// The error.
        why: String,
    },
}

/// One line of mountinfo that matters here: the device and where it is mounted.
struct Mount {
    devno: String,
    point: String,
    source: String,
}

fn mounts(host: &Host) -> Result<Vec<Mount>, TargetError> {
    let text = fs::read_to_string(&host.mountinfo).map_err(|e| TargetError::Facts {
        what: host.mountinfo.display().to_string(),
        why: e.to_string(),
    })?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let dash = f.iter().position(|x| *x == "-")?;
            Some(Mount {
                devno: f.get(2)?.to_string(),
                point: unescape(f.get(4)?),
                source: unescape(f.get(dash + 2)?),
            })
        })
        .collect())
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// The sysfs directory of a device number, resolved (`/sys/devices/…/block/sdb`).
fn sys_dir(host: &Host, devno: &str) -> Option<PathBuf> {
    fs::canonicalize(host.sys_dev_block.join(devno)).ok()
}

/// The whole disk a device number belongs to, following device-mapper and md devices
/// down to the disks under them: `(disk sysfs dir)` for each.
fn disks_under(host: &Host, devno: &str, depth: u32) -> Vec<PathBuf> {
    let Some(dir) = sys_dir(host, devno) else {
        return vec![];
    };
    if dir.join("partition").exists() {
        return dir.parent().map(Path::to_owned).into_iter().collect();
    }
    let slaves: Vec<PathBuf> = fs::read_dir(dir.join("slaves"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| read_trim(&e.path().join("dev")))
        .filter(|_| depth < 8)
        .flat_map(|d| disks_under(host, &d, depth + 1))
        .collect();
    if slaves.is_empty() {
        vec![dir]
    } else {
        slaves
    }
}

/// Inspect `path` and refuse it unless it may be written with an image of `image_size`
/// bytes. Nothing is opened for writing.
pub fn inspect(host: &Host, path: &Path, image_size: u64) -> Result<Target, TargetError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if path.starts_with("/dev") {
                return Err(TargetError::NoDevice(path.to_owned()));
            }
            return Ok(Target::File(path.to_owned()));
        }
        Err(e) => {
            return Err(TargetError::Facts {
                what: path.display().to_string(),
                why: e.to_string(),
            })
        }
    };
    let t = meta.file_type();
    if t.is_file() {
        if path.starts_with("/dev") {
            // A file where a device was meant (an earlier `dd` to a missing /dev/sdX).
            return Err(TargetError::Kind {
                path: path.to_owned(),
                kind: "a regular file under /dev, not a device",
            });
        }
        return Ok(Target::File(path.to_owned()));
    }
    if !t.is_block_device() {
        return Err(TargetError::Kind {
            path: path.to_owned(),
            kind: crate::ioerr::file_kind(t),
        });
    }
    let rdev = meta.rdev();
    let devno = format!("{}:{}", rustix::fs::major(rdev), rustix::fs::minor(rdev));
    let dir = sys_dir(host, &devno).ok_or_else(|| TargetError::Facts {
        what: host.sys_dev_block.join(&devno).display().to_string(),
        why: "no such device in sysfs".into(),
    })?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if dir.join("partition").exists() {
        let disk = dir
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(TargetError::Partition {
            path: path.to_owned(),
            name,
            disk,
        });
    }
    // The disk and its partitions: kernel names and device numbers.
    let mut partitions = Vec::new();
    let mut members = vec![(name.clone(), devno.clone(), dir.clone())];
    for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.join("partition").exists() {
            let pname = e.file_name().to_string_lossy().into_owned();
            let size = read_trim(&p.join("size"))
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
                * 512;
            if let Some(d) = read_trim(&p.join("dev")) {
                members.push((pname.clone(), d, p.clone()));
            }
            partitions.push((pname, size));
        }
    }
    partitions.sort();

    // The running system first: its disk is never a target, whatever else is true.
    let all = mounts(host)?;
    for m in &all {
        let system = ["/", "/boot", "/boot/efi", "/efi", "/usr", "/var"].contains(&m.point.as_str());
        if system && disks_under(host, &m.devno, 0).contains(&dir) {
            return Err(TargetError::System {
                path: path.to_owned(),
                mount: m.point.clone(),
            });
        }
    }
    let mut busy = Vec::new();
    for (mname, mdev, mdir) in &members {
        for m in all.iter().filter(|m| &m.devno == mdev) {
            busy.push(format!("{mname} is mounted on {}", m.point));
        }
        let holders: Vec<String> = fs::read_dir(mdir.join("holders"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !holders.is_empty() {
            busy.push(format!("{mname} is held by {}", holders.join(", ")));
        }
    }
    // Mounts of device-mapper or md devices built on it.
    for m in &all {
        if !members.iter().any(|(_, d, _)| *d == m.devno) && disks_under(host, &m.devno, 0).contains(&dir) {
            busy.push(format!("{} (on it) is mounted on {}", m.source, m.point));
        }
    }
    let swaps = fs::read_to_string(&host.swaps).map_err(|e| TargetError::Facts {
        what: host.swaps.display().to_string(),
        why: e.to_string(),
    })?;
    for line in swaps.lines().skip(1) {
        let Some(dev) = line.split_whitespace().next().map(unescape) else {
            continue;
        };
        let Ok(m) = fs::metadata(&dev) else {
            continue;
        };
        if !m.file_type().is_block_device() {
            continue;
        }
        let d = format!("{}:{}", rustix::fs::major(m.rdev()), rustix::fs::minor(m.rdev()));
        if members.iter().any(|(_, md, _)| *md == d) || disks_under(host, &d, 0).contains(&dir) {
            busy.push(format!("{dev} is swap"));
        }
    }
    if !busy.is_empty() {
        busy.dedup();
        return Err(TargetError::Busy {
            path: path.to_owned(),
            why: busy.join("; "),
        });
    }
    if read_trim(&dir.join("ro")).as_deref() == Some("1") {
        return Err(TargetError::ReadOnly(path.to_owned()));
    }
    let size = read_trim(&dir.join("size"))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| TargetError::Facts {
            what: dir.join("size").display().to_string(),
            why: "not a number".into(),
        })?
        * 512;
    let sector = read_trim(&dir.join("queue/logical_block_size"))
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(512);
    if sector != SECTOR {
        return Err(TargetError::Sector {
            path: path.to_owned(),
            sector,
        });
    }
    if size < image_size {
        return Err(TargetError::TooSmall {
            path: path.to_owned(),
            size,
            need: image_size,
        });
    }
    let model = [
        read_trim(&dir.join("device/vendor")),
        read_trim(&dir.join("device/model")),
    ]
    .into_iter()
    .flatten()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(" ");
    Ok(Target::Disk(Disk {
        path: path.to_owned(),
        name,
        devno,
        size,
        sector,
        model,
        partitions,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape(r"/short\04"), r"/short\04");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
