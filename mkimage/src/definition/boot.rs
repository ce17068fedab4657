//! The kernel and initrd settings: which modules ship, what the initrd carries, and the
//! words a definition may add to the kernel command line.

use super::context::Ctx;
use super::raw::*;
use super::DefinitionError;

/// The dracut modules that open a dm-verity root with systemd in the initrd.
pub const DEFAULT_DRACUT_MODULES: &[&str] = &[
    "systemd",
    "systemd-initrd",
    "systemd-veritysetup",
    "dracut-systemd",
    "base",
    "fs-lib",
    "rootfs-block",
    "udev-rules",
    "kernel-modules",
];

/// Kernel modules the initrd carries: virtio, SATA, NVMe, USB storage, CD-ROM and loop
/// devices (the live ISO), dm-verity and the file systems of the disk.
pub const DEFAULT_INITRD_DRIVERS: &[&str] = &[
    "virtio_blk",
    "virtio_pci",
    "virtio_scsi",
    "ahci",
    "nvme",
    "usb_storage",
    "uas",
    "xhci_pci",
    "ehci_pci",
    "sd_mod",
    "sr_mod",
    "loop",
    "dm_verity",
    "squashfs",
    "ext4",
    "vfat",
];

/// Which kernel modules the image ships.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModulePolicy {
    /// Every module the kernel package brings.
    All,
    /// Only what these kernel-config classes and extra paths need (plus dependencies).
    Trim {
        /// Classes of `kernel-config/cairn.config` whose `# keep:` rules apply.
        classes: Vec<String>,
        /// More module files or directories, relative to `/usr/lib/modules/<version>/`.
        extra: Vec<String>,
    },
}

impl Ctx<'_> {
    pub(super) fn module_policy(&self, k: &RawKernel) -> Result<ModulePolicy, DefinitionError> {
        let known = crate::tree::kconfig::parse_keep(crate::tree::kconfig::CAIRN_FRAGMENT)
            .expect("the shipped fragment parses (unit-tested)");
        let names = || known.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(", ");
        let trim = match &k.modules {
            None => true,
            Some(m) => match m.get_ref().as_str() {
                "trim" => true,
                "all" => false,
                other => {
                    return self.err(
                        Some(m.span()),
                        format!("modules = '{other}' is not a module policy"),
                        "use \"trim\" (only what the module classes need; the default) or \"all\"",
                    )
                }
            },
        };
        if !trim {
            if let Some(s) = k
                .module_classes
                .as_ref()
                .and_then(|c| c.first())
                .or(k.extra_modules.first())
            {
                return self.err(
                    Some(s.span()),
                    "module-classes and extra-modules only apply when modules = \"trim\"",
                    "drop them, or set modules = \"trim\"",
                );
            }
            return Ok(ModulePolicy::All);
        }
        let classes = match &k.module_classes {
            None => known.iter().map(|(c, _)| c.clone()).collect(),
            Some(list) => {
                let mut out = Vec::new();
                for c in list {
                    if !known.iter().any(|(k, _)| k == c.get_ref()) {
                        return self.err(
                            Some(c.span()),
                            format!("'{}' is not a module class", c.get_ref()),
                            format!("classes in kernel-config/cairn.config: {}", names()),
                        );
                    }
                    out.push(c.get_ref().clone());
                }
                out
            }
        };
        let mut extra = Vec::new();
        for e in &k.extra_modules {
            if let Err(why) = crate::tree::kconfig::valid_keep_rule(e.get_ref()) {
                return self.err(
                    Some(e.span()),
                    format!("extra-modules entry '{}': {why}", e.get_ref()),
                    "e.g. extra-modules = [\"kernel/drivers/net/ethernet/intel/\", \"kernel/drivers/block/nbd.ko\"]",
                );
            }
            extra.push(e.get_ref().clone());
        }
        Ok(ModulePolicy::Trim { classes, extra })
    }
}

/// Check one kernel command line word.
pub fn valid_cmdline_word(w: &str) -> Result<(), String> {
    if w.is_empty() {
        return Err("empty word".into());
    }
    if let Some(c) = w.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "'{w}' contains {c:?}; words are printable ASCII without spaces"
        ));
    }
    // What opens and checks the verified root is Cairn's: `rd.systemd.verity=0` or a
    // `root=` would boot something else than the signed root.
    for owned in [
        "roothash=",
        "usrhash=",
        "systemd.verity",
        "rd.systemd.verity",
        "root=",
        "mount.usr",
    ] {
        if w.starts_with(owned) {
            return Err(format!("'{w}' is set by Cairn from the built root; remove it"));
        }
    }
    Ok(())
}
