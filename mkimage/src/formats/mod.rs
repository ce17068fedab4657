//! The on-disk formats the builder writes into plain files: the root squashfs
//! ([`squashfs`]), the unified kernel image ([`uki`]), the FAT32 ESP ([`fat`]) and the
//! ext4 state file system ([`ext4`]), the disk image's block map for flashing
//! ([`bmap`]) and the hybrid live ISO ([`iso`]); the GPT, GUIDs and dm-verity live in `cairn-disk`, shared with the node's
//! updater.

pub mod bmap;
pub mod ext4;
pub mod fat;
pub mod iso;
pub mod squashfs;
pub mod uki;
