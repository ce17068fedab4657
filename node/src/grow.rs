//! Grow the state partition (and its ext4 file system, mounted at /var) to fill the disk.
//!
//! The image's state partition is small; on a real disk there is free space after it (it
//! is the last partition). First boot grows it before writing anything to it:
//! `systemd-repart` with a single definition (`/usr/lib/cairn/repart.d/50-state.conf`,
//! `Type=var`) moves the backup GPT to the end of the disk and extends the partition
//! (every other partition has no definition, so repart leaves it alone), then
//! `systemd-growfs /var` resizes the mounted file system online. The disk is named
//! explicitly: repart cannot find it through the dm-verity root, which has two backing
//! devices. When there is nothing to gain (less than [`MIN_GAIN`]), nothing runs.

use std::path::{Path, PathBuf};

use crate::system::run;

/// Where the state partition is found.
pub const STATE_LINK: &str = "/dev/disk/by-partlabel/state";
/// repart definitions for the state partition.
pub const REPART_DIR: &str = "/usr/lib/cairn/repart.d";
/// Growing by less than this is not worth a repartition.
pub const MIN_GAIN: u64 = 16 << 20;
/// Sectors the backup GPT takes at the end of a disk (header + 128 entries of 128 bytes).
const BACKUP_GPT_SECTORS: u64 = 33;

/// The state partition and its disk, with sizes from sysfs (512-byte sectors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `/dev/vdaN`.
    pub partition: PathBuf,
    /// `/dev/vda`.
    pub disk: PathBuf,
    /// Partition start.
    pub start: u64,
    /// Partition size.
    pub size: u64,
    /// Disk size.
    pub disk_size: u64,
}

impl Layout {
    /// Bytes that growing would add.
    pub fn gain(&self) -> u64 {
        self.disk_size
            .saturating_sub(BACKUP_GPT_SECTORS + 1)
            .saturating_sub(self.start + self.size)
            * 512
    }
}

fn read_u64(p: &Path) -> Result<u64, String> {
    std::fs::read_to_string(p)
        .map_err(|e| format!("reading {}: {e}", p.display()))?
        .trim()
        .parse()
        .map_err(|_| format!("{} is not a number", p.display()))
}

/// Find the state partition and its disk under `root` (`/` on a node).
pub fn layout(root: &Path) -> Result<Layout, String> {
    let at = |p: &str| crate::apply::at(root, p);
    let part = std::fs::canonicalize(at(STATE_LINK)).map_err(|e| format!("{STATE_LINK}: {e}"))?;
    let name = part
        .file_name()
        .ok_or("no partition name")?
        .to_string_lossy()
        .into_owned();
    let sys = std::fs::canonicalize(at(&format!("/sys/class/block/{name}")))
        .map_err(|e| format!("/sys/class/block/{name}: {e}"))?;
    let disk_sys = sys.parent().ok_or("partition has no disk in sysfs")?;
    let disk_name = disk_sys
        .file_name()
        .ok_or("no disk name")?
        .to_string_lossy()
        .into_owned();
    Ok(Layout {
        partition: PathBuf::from("/dev").join(&name),
        disk: PathBuf::from("/dev").join(&disk_name),
        start: read_u64(&sys.join("start"))?,
        size: read_u64(&sys.join("size"))?,
        disk_size: read_u64(&disk_sys.join("size"))?,
    })
}

fn human(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", b >> 20)
    }
}

/// Size of the file system mounted at /var, in bytes.
fn var_size() -> Result<u64, String> {
    let s = rustix::fs::statvfs("/var").map_err(|e| format!("statvfs /var: {e}"))?;
    Ok(s.f_blocks * s.f_frsize)
}

/// Whether a file system of `fs` bytes falls short of its `partition` bytes by more than
/// its own metadata could explain (ext4 reports about 5 % less than its partition).
pub fn fs_short(fs: u64, partition: u64) -> bool {
    fs < partition / 10 * 9 && partition - fs >= MIN_GAIN
}

/// Grow the state partition and /var if the disk has room (and /var alone if an earlier
/// boot grew the partition but not the file system). Returns a log line when it did
/// something.
pub fn grow_state() -> Result<Option<String>, String> {
    let l = layout(Path::new("/"))?;
    let grow_partition = l.gain() >= MIN_GAIN;
    let before = var_size()?;
    if !grow_partition && !fs_short(before, l.size * 512) {
        return Ok(None);
    }
    let started = std::time::Instant::now();
    if grow_partition {
        let disk = l.disk.to_string_lossy().into_owned();
        run(
            "systemd-repart",
            &[
                "--dry-run=no",
                "--no-pager",
                &format!("--definitions={REPART_DIR}"),
                &disk,
            ],
        )?;
    }
    run("/usr/lib/systemd/systemd-growfs", &["/var"])?;
    let after = layout(Path::new("/"))?;
    Ok(Some(format!(
        "cairn: state partition {} grown from {} to {} (/var {} → {}) in {:.1}s",
        l.partition.display(),
        human(l.size * 512),
        human(after.size * 512),
        human(before),
        human(var_size()?),
        started.elapsed().as_secs_f64()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_system_is_short_only_by_more_than_its_metadata() {
        let part = 256u64 << 20;
        assert!(!fs_short(part / 100 * 95, part));
        assert!(fs_short(part / 2, part));
        assert!(fs_short(256 << 20, 3 << 30));
    }

    #[test]
    fn gain_leaves_room_for_the_backup_gpt() {
        let l = Layout {
            partition: "/dev/vda6".into(),
            disk: "/dev/vda".into(),
            start: 2048,
            size: 1000,
            disk_size: 2048 + 1000 + 34,
        };
        assert_eq!(l.gain(), 0);
        let l = Layout {
            disk_size: l.disk_size + 100,
            ..l
        };
        assert_eq!(l.gain(), 100 * 512);
    }

    #[test]
    fn layout_follows_sysfs() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let mk = |p: &str| std::fs::create_dir_all(r.join(p)).unwrap();
        mk("dev/disk/by-partlabel");
        mk("sys/devices/pci0/virtio3/block/vda/vda6");
        mk("sys/class/block");
        std::fs::write(r.join("dev/vda6"), "").unwrap();
        std::os::unix::fs::symlink("../../vda6", r.join("dev/disk/by-partlabel/state")).unwrap();
        std::os::unix::fs::symlink(
            "../../devices/pci0/virtio3/block/vda/vda6",
            r.join("sys/class/block/vda6"),
        )
        .unwrap();
        std::fs::write(r.join("sys/devices/pci0/virtio3/block/vda/vda6/start"), "5281792\n").unwrap();
        std::fs::write(r.join("sys/devices/pci0/virtio3/block/vda/vda6/size"), "524288\n").unwrap();
        std::fs::write(r.join("sys/devices/pci0/virtio3/block/vda/size"), "16777216\n").unwrap();
        let l = layout(r).unwrap();
        assert_eq!(
            (l.partition.as_path(), l.disk.as_path()),
            (Path::new("/dev/vda6"), Path::new("/dev/vda"))
        );
        assert_eq!((l.start, l.size, l.disk_size), (5281792, 524288, 16777216));
        assert_eq!(l.gain(), (16777216 - 34 - 5281792 - 524288) * 512);
    }
}
