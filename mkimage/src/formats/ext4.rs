//! The state partition: an empty ext4 written by `mkfs.ext4` straight into the disk file
//! at the partition's offset (`-E offset=`), so nothing is mounted and nothing copied.
//!
//! `mkfs.ext4` is made deterministic by fixing everything it would otherwise take from
//! the host or the clock: its configuration file (ours, not `/etc/mke2fs.conf`), the
//! file system UUID and directory hash seed (derived from the build), and the time
//! (`E2FSPROGS_FAKE_TIME`). Two builds give the same bytes.

use std::path::Path;
use std::process::Command;

use crate::guid::Guid;
use crate::ioerr::io_err;
use crate::tools::{run, ToolError};

/// The mke2fs configuration Cairn uses instead of the host's: features the Debian 12
/// kernel mounts, and nothing newer (no `orphan_file`).
pub const MKE2FS_CONF: &str = "\
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
\treserved_ratio = 0

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
";

/// What the state file system is made from.
pub struct Ext4Spec<'a> {
    /// The disk image file (already at its full size).
    pub disk: &'a Path,
    /// Byte offset of the partition.
    pub offset: u64,
    /// Partition size in bytes (a multiple of 4096).
    pub size: u64,
    /// File system label.
    pub label: &'a str,
    /// File system UUID.
    pub uuid: Guid,
    /// Directory hash seed.
    pub hash_seed: Guid,
    /// Creation time.
    pub epoch: u64,
    /// Scratch directory for the configuration file.
    pub scratch: &'a Path,
}

/// Format the partition.
pub fn format(spec: &Ext4Spec) -> Result<(), ToolError> {
    let conf = spec.scratch.join("mke2fs.conf");
    std::fs::write(&conf, MKE2FS_CONF).map_err(io_err("writing", &conf))?;
    let mut cmd = Command::new("mkfs.ext4");
    cmd.env("MKE2FS_CONFIG", &conf)
        .env("E2FSPROGS_FAKE_TIME", spec.epoch.to_string())
        .arg("-q")
        .arg("-F")
        .args(["-t", "ext4", "-b", "4096", "-L", spec.label])
        .args(["-U", &spec.uuid.to_string()])
        .arg("-E")
        .arg(format!(
            "offset={},hash_seed={},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0,nodiscard",
            spec.offset, spec.hash_seed
        ))
        .arg(spec.disk)
        .arg((spec.size / 4096).to_string());
    run(&mut cmd, "mkfs.ext4")
}
