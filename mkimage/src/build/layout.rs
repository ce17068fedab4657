//! The build plan: partition layout, identifiers and the small text files, as values.
//!
//! Everything here is pure. The layout depends only on the definition, so
//! `cairn build --plan` can show it before anything is built; identifiers that depend on
//! the built root (partition UUIDs of the active slot, the disk GUID) are filled in by
//! [`assign_ids`] once the root hash is known.
//!
//! Disk layout (1 MiB aligned, Discoverable Partitions Specification type GUIDs):
//!
//! | # | label | type | attributes |
//! |---|---|---|---|
//! | 1 | `esp` | ESP | — |
//! | 2 | `root-a` | root (x86-64) | read-only (60) |
//! | 3 | `verity-a` | root verity (x86-64) | read-only (60) |
//! | 4 | `root-b` | root (x86-64) | read-only (60), no-auto (63) while empty |
//! | 5 | `verity-b` | root verity (x86-64) | read-only (60), no-auto (63) while empty |
//! | 6 | `state` | var | grow-file-system (59) |
//!
//! An empty slot keeps the DPS type so an update only has to write data and change
//! UUIDs and flags; its UUIDs are derived from a purpose string, never from a root
//! hash, and its no-auto flag keeps automatic discovery (`systemd-gpt-auto-generator`,
//! `systemd-dissect`) away from it. Boot never depends on discovery: each UKI carries
//! `roothash=`, which names its own slot's partitions by UUID.

use std::fmt::Write as _;

use crate::definition::Definition;
use crate::gpt::{Partition, ATTR_NO_AUTO, ATTR_READ_ONLY, SECTOR};
use crate::guid::{guid, Guid};
use crate::verity;

const MIB: u64 = 1 << 20;

/// ESP partition type.
pub const TYPE_ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// Root partition type for x86-64.
pub const TYPE_ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
/// Root verity partition type for x86-64.
pub const TYPE_ROOT_VERITY_X86_64: &str = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5";
/// /var partition type.
pub const TYPE_VAR: &str = "4d21b016-b534-45c2-a9fb-5c16e091fd2d";
/// DPS: grow the file system to the partition at mount.
pub const ATTR_GROWFS: u64 = 1 << 59;

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// EFI system partition.
    Esp,
    /// Root filesystem of slot A (active after a build).
    RootA,
    /// Verity hash device of slot A.
    VerityA,
    /// Root filesystem of slot B (empty after a build).
    RootB,
    /// Verity hash device of slot B.
    VerityB,
    /// The state partition, mounted at /var.
    State,
}

/// A partition in the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Its role.
    pub role: Role,
    /// The GPT entry (UUID is [`Guid::NIL`] until [`assign_ids`]).
    pub entry: Partition,
}

/// The disk layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Disk size in bytes.
    pub disk_size: u64,
    /// Partitions in table order.
    pub partitions: Vec<Planned>,
    /// Disk GUID ([`Guid::NIL`] until [`assign_ids`]).
    pub disk_guid: Guid,
}

impl Layout {
    /// The partition with this role.
    pub fn get(&self, role: Role) -> &Planned {
        self.partitions
            .iter()
            .find(|p| p.role == role)
            .expect("every role is planned")
    }
}

/// Size of a verity partition for a root slot of `root_size` bytes, MiB aligned.
pub fn verity_size_for(root_size: u64) -> u64 {
    verity::hash_device_size(root_size).div_ceil(MIB) * MIB
}

/// Plan the partitions from the definition's sizes.
pub fn layout(def: &Definition) -> Layout {
    let root = def.root_size.0;
    let verity = verity_size_for(root);
    let specs = [
        (Role::Esp, "esp", TYPE_ESP, def.esp_size.0, 0),
        (Role::RootA, "root-a", TYPE_ROOT_X86_64, root, ATTR_READ_ONLY),
        (
            Role::VerityA,
            "verity-a",
            TYPE_ROOT_VERITY_X86_64,
            verity,
            ATTR_READ_ONLY,
        ),
        (
            Role::RootB,
            "root-b",
            TYPE_ROOT_X86_64,
            root,
            ATTR_READ_ONLY | ATTR_NO_AUTO,
        ),
        (
            Role::VerityB,
            "verity-b",
            TYPE_ROOT_VERITY_X86_64,
            verity,
            ATTR_READ_ONLY | ATTR_NO_AUTO,
        ),
        (Role::State, "state", TYPE_VAR, def.state_size.0, ATTR_GROWFS),
    ];
    let mut at = MIB;
    let mut partitions = Vec::new();
    for (role, name, ty, size, attributes) in specs {
        partitions.push(Planned {
            role,
            entry: Partition {
                type_guid: guid(ty),
                uuid: Guid::NIL,
                first_lba: at / SECTOR,
                last_lba: (at + size) / SECTOR - 1,
                attributes,
                name: name.to_string(),
            },
        });
        at += size;
    }
    Layout {
        disk_size: at + MIB,
        partitions,
        disk_guid: Guid::NIL,
    }
}

/// Fill in identifiers: the active slot's partition UUIDs are the halves of the root hash
/// (the systemd convention that lets `roothash=` find them); everything else is derived
/// from the root hash with a purpose string, so it is stable for the same content.
pub fn assign_ids(layout: &mut Layout, root_hash: &[u8; 32]) {
    layout.disk_guid = Guid::derive("disk", root_hash);
    for p in &mut layout.partitions {
        p.entry.uuid = match p.role {
            Role::RootA => Guid(root_hash[..16].try_into().expect("16 bytes")),
            Role::VerityA => Guid(root_hash[16..].try_into().expect("16 bytes")),
            Role::Esp => Guid::derive("esp", root_hash),
            // Empty slots: never derived from a root hash, so no UKI can name them.
            Role::RootB => Guid::derive("empty slot root-b", root_hash),
            Role::VerityB => Guid::derive("empty slot verity-b", root_hash),
            Role::State => Guid::derive("state", root_hash),
        };
    }
}

/// `loader/loader.conf` for systemd-boot: newest Cairn entry by default (boot counting
/// moves failed entries to the end), no command line editing.
pub fn render_loader_conf(timeout: u32) -> String {
    let mut s = String::new();
    if timeout == 0 {
        // 0 boots at once; a key held at boot still shows the menu.
        s.push_str("timeout 0\n");
    } else {
        writeln!(s, "timeout {timeout}").expect("string write");
    }
    s.push_str("default cairn_*\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n");
    s
}

/// `os-release` for the image root and the UKI's `.osrel`. A development build
/// (`cairn build --dev`) says so in `VARIANT`/`VARIANT_ID`, which the boot menu, `hostnamectl`
/// and `cairn-node update --status` show.
pub fn render_os_release(name: &str, version: &str, kind: cairn_signing::BuildKind) -> String {
    let mut s = format!(
        "NAME=\"Cairn\"\n\
         ID=cairn\n\
         ID_LIKE=debian\n\
         PRETTY_NAME=\"Cairn {name} {version}{}\"\n\
         VERSION=\"{version}\"\n\
         VERSION_ID=\"{version}\"\n\
         IMAGE_ID={name}\n\
         IMAGE_VERSION={version}\n",
        if kind == cairn_signing::BuildKind::Development {
            " (development build)"
        } else {
            ""
        }
    );
    if kind == cairn_signing::BuildKind::Development {
        s.push_str("VARIANT=\"Development build\"\nVARIANT_ID=development\n");
    }
    s
}

/// Words Cairn puts on every command line after `roothash=`, so that a release that fails
/// in the initrd (root device missing, verity failing, a broken `root=`) reboots within
/// minutes instead of waiting in an emergency shell: systemd-boot counts that as a failed
/// try and, after the last, boots the previous version. A definition can override them
/// (later words win), e.g. `rd.shell=1` for an interactive debugging build.
pub const EARLY_FAILURE_WORDS: [&str; 3] = ["rd.shell=0", "rd.emergency=reboot", "rd.timeout=120"];

/// The kernel command line: Cairn's `roothash=` and [`EARLY_FAILURE_WORDS`] first, then the
/// definition's words.
pub fn render_cmdline(root_hash: &str, extra: &[String]) -> String {
    let mut s = format!("roothash={root_hash}");
    for w in EARLY_FAILURE_WORDS {
        s.push(' ');
        s.push_str(w);
    }
    for w in extra {
        s.push(' ');
        s.push_str(w);
    }
    s
}

/// File name of a UKI in `EFI/Linux/`.
pub fn uki_file_name(version: &str) -> String {
    format!("cairn_{version}.efi")
}

/// Where the release public key sits in every image.
pub const IMAGE_PUBLIC_KEY_PATH: &str = "usr/share/cairn/release.pub";
/// Where the image keeps the key node configs must be signed with, when it pins one
/// (read by `cairn-node firstboot`).
pub const NODE_CONFIG_KEY_PATH: &str = "usr/share/cairn/node-config.pub";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::Size;
    use std::path::Path;

    fn def() -> Definition {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("t")).unwrap();
        std::fs::write(dir.path().join("k"), b"").unwrap();
        let src = "version = 1\n[image]\nname = \"n\"\nversion = \"1\"\n[root]\nsource = \"t\"\n[kernel]\nimage = \"k\"\ninitrd = \"k\"\n";
        Definition::parse(&dir.path().join("i.toml"), src).unwrap()
    }

    #[test]
    fn default_layout() {
        let mut d = def();
        d.root_size = Size(1 << 30);
        let l = layout(&d);
        let offsets: Vec<(u64, u64)> = l
            .partitions
            .iter()
            .map(|p| (p.entry.offset() / MIB, p.entry.size() / MIB))
            .collect();
        // 1 GiB of root needs 2066 hash blocks + superblock = 8.07 MiB → 9 MiB.
        assert_eq!(
            offsets,
            vec![(1, 512), (513, 1024), (1537, 9), (1546, 1024), (2570, 9), (2579, 256)]
        );
        assert_eq!(l.disk_size, (2579 + 256 + 1) * MIB);
        crate::gpt::Gpt::new(
            Guid::NIL,
            l.disk_size,
            l.partitions.iter().map(|p| p.entry.clone()).collect(),
        )
        .unwrap();
    }

    #[test]
    fn ids_follow_the_root_hash() {
        let mut l = layout(&def());
        let mut hash = [0u8; 32];
        for (i, b) in hash.iter_mut().enumerate() {
            *b = i as u8;
        }
        assign_ids(&mut l, &hash);
        assert_eq!(
            l.get(Role::RootA).entry.uuid.to_string(),
            "00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
        assert_eq!(
            l.get(Role::VerityA).entry.uuid.to_string(),
            "10111213-1415-1617-1819-1a1b1c1d1e1f"
        );
        let ids: std::collections::HashSet<_> = l.partitions.iter().map(|p| p.entry.uuid).collect();
        assert_eq!(ids.len(), 6);
    }

    #[test]
    fn rendered_files() {
        assert_eq!(
            render_loader_conf(0),
            "timeout 0\ndefault cairn_*\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n"
        );
        assert!(render_loader_conf(5).starts_with("timeout 5\n"));
        let os = render_os_release("node", "1.2", cairn_signing::BuildKind::Release);
        assert!(os.contains("IMAGE_ID=node\nIMAGE_VERSION=1.2\n"));
        assert!(!os.contains("VARIANT"));
        let dev = render_os_release("node", "1.2", cairn_signing::BuildKind::Development);
        assert!(
            dev.contains("PRETTY_NAME=\"Cairn node 1.2 (development build)\"\n"),
            "{dev}"
        );
        assert!(
            dev.ends_with("VARIANT=\"Development build\"\nVARIANT_ID=development\n"),
            "{dev}"
        );
        assert_eq!(
            render_cmdline(&"ab".repeat(32), &["console=ttyS0".into()]),
            format!(
                "roothash={} rd.shell=0 rd.emergency=reboot rd.timeout=120 console=ttyS0",
                "ab".repeat(32)
            )
        );
        assert_eq!(uki_file_name("1.2"), "cairn_1.2.efi");
        assert!(Path::new(IMAGE_PUBLIC_KEY_PATH).is_relative());
    }
}
