//! Facts about the running system, each from a file under /proc, /sys or /usr; parsing
//! is pure so it can be tested with strings.

use std::path::PathBuf;

/// An A/B slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Partitions root-a / verity-a.
    A,
    /// Partitions root-b / verity-b.
    B,
}

impl Slot {
    /// `a` or `b`.
    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The slot a root partition's GPT name belongs to.
    pub fn from_partition_name(name: &str) -> Option<Slot> {
        match name {
            "root-a" => Some(Slot::A),
            "root-b" => Some(Slot::B),
            _ => None,
        }
    }
}

/// Run `program args…`; its standard output, or "`program` failed: <its stderr>".
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("running {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Ask systemd for a reboot without waiting for it.
pub fn reboot() {
    if let Err(e) = std::process::Command::new("systemctl")
        .args(["reboot", "--no-block"])
        .status()
    {
        eprintln!("cairn: systemctl reboot: {e}");
    }
}

/// Whether a kernel command line boots the live ISO (`cairn.live`): the root from the
/// medium, `/var` in memory, no update slots and no state partition.
pub fn is_live(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == "cairn.live")
}

/// The `roothash=` value of a kernel command line, if it is 64 hex digits.
pub fn roothash_from_cmdline(cmdline: &str) -> Option<[u8; 32]> {
    let v = cmdline.split_whitespace().find_map(|w| w.strip_prefix("roothash="))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(v, &mut out).ok()?;
    Some(out)
}

/// The partition UUID systemd derives from a root hash for the data partition.
pub fn root_partuuid(hash: &[u8; 32]) -> String {
    cairn_disk::guid::Guid(hash[..16].try_into().expect("16 bytes")).to_string()
}

/// A `KEY=value` field of an os-release file (quotes removed).
pub fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix('=')?;
        Some(v.trim().trim_matches('"').trim_matches('\'').to_string())
    })
}

/// `PARTNAME=` from a block device's sysfs `uevent`.
pub fn partname_from_uevent(uevent: &str) -> Option<String> {
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("PARTNAME=").map(str::to_string))
}

/// Seconds since the kernel started, from `/proc/uptime`.
pub fn uptime_from(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Where the running system's files are; tests point it at a fake tree.
#[derive(Debug, Clone)]
pub struct Root(pub PathBuf);

impl Default for Root {
    fn default() -> Self {
        Root(PathBuf::from("/"))
    }
}

impl Root {
    fn read(&self, p: &str) -> std::io::Result<String> {
        std::fs::read_to_string(self.0.join(p.trim_start_matches('/')))
    }

    /// The kernel command line.
    pub fn cmdline(&self) -> std::io::Result<String> {
        self.read("/proc/cmdline")
    }

    /// The image version from os-release.
    pub fn image_version(&self) -> Option<String> {
        let text = self.read("/usr/lib/os-release").ok()?;
        os_release_field(&text, "IMAGE_VERSION")
    }

    /// Seconds since boot.
    pub fn uptime(&self) -> Option<f64> {
        uptime_from(&self.read("/proc/uptime").ok()?)
    }

    /// Whether the running system is the live ISO's.
    pub fn is_live(&self) -> bool {
        self.cmdline().is_ok_and(|c| is_live(&c))
    }

    /// `a`, `b`, `live`, or `None` when it cannot be told: for the ready line and metrics.
    pub fn slot_name(&self) -> Option<&'static str> {
        if self.is_live() {
            Some("live")
        } else {
            self.running_slot().map(Slot::letter)
        }
    }

    /// The slot the running root comes from: the partition whose UUID the command line's
    /// root hash names, by its GPT name.
    pub fn running_slot(&self) -> Option<Slot> {
        let hash = roothash_from_cmdline(&self.cmdline().ok()?)?;
        let link = self.0.join("dev/disk/by-partuuid").join(root_partuuid(&hash));
        let dev = std::fs::canonicalize(link).ok()?;
        let name = dev.file_name()?.to_string_lossy().into_owned();
        let uevent = self.read(&format!("/sys/class/block/{name}/uevent")).ok()?;
        Slot::from_partition_name(&partname_from_uevent(&uevent)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn under(root: &Root, p: &str) -> PathBuf {
        root.0.join(Path::new(p.trim_start_matches('/')))
    }

    #[test]
    fn parses() {
        let h = "ab".repeat(32);
        let cmd = format!("BOOT_IMAGE=x roothash={h} console=ttyS0\n");
        assert_eq!(roothash_from_cmdline(&cmd), Some([0xab; 32]));
        assert_eq!(roothash_from_cmdline("roothash=zz"), None);
        assert!(is_live("roothash=ab cairn.live fstab=no"));
        assert!(!is_live("roothash=ab cairn.livex"));
        assert!(!is_live("roothash=ab xcairn.live"));
        assert_eq!(root_partuuid(&[0x01; 32]), "01010101-0101-0101-0101-010101010101");
        assert_eq!(
            os_release_field("A=1\nIMAGE_VERSION=\"1.2\"\n", "IMAGE_VERSION").as_deref(),
            Some("1.2")
        );
        assert_eq!(os_release_field("IMAGE_VERSION_X=1\n", "IMAGE_VERSION"), None);
        assert_eq!(
            partname_from_uevent("MAJOR=254\nPARTNAME=root-b\n").as_deref(),
            Some("root-b")
        );
        assert_eq!(uptime_from("41.27 70.10\n"), Some(41.27));
        assert_eq!(Slot::from_partition_name("root-a"), Some(Slot::A));
        assert_eq!(Slot::from_partition_name("state"), None);
    }

    #[test]
    fn running_slot_follows_the_partuuid_link() {
        let dir = std::env::temp_dir().join(format!("cairn-node-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = Root(dir.clone());
        let hash = [0x5c; 32];
        std::fs::create_dir_all(under(&root, "/proc")).unwrap();
        std::fs::write(under(&root, "/proc/cmdline"), format!("roothash={}", hex::encode(hash))).unwrap();
        std::fs::create_dir_all(under(&root, "/dev/disk/by-partuuid")).unwrap();
        std::fs::write(under(&root, "/dev/vda4"), "").unwrap();
        std::os::unix::fs::symlink(
            "../../vda4",
            under(&root, "/dev/disk/by-partuuid").join(root_partuuid(&hash)),
        )
        .unwrap();
        std::fs::create_dir_all(under(&root, "/sys/class/block/vda4")).unwrap();
        std::fs::write(
            under(&root, "/sys/class/block/vda4/uevent"),
            "PARTN=4\nPARTNAME=root-b\n",
        )
        .unwrap();
        assert_eq!(root.running_slot(), Some(Slot::B));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
