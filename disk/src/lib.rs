//! The on-disk formats shared by the image builder (`cairn build`, which writes them into
//! plain files) and the node agent (`cairn-node update`, which rewrites the inactive slot
//! of a running disk): the GUID partition table, GUIDs and their derivation, the
//! dm-verity hash device, and reading sections of a PE image (a UKI's command line).
//!
//! Each module documents its format with a byte table.

pub mod gpt;
pub mod guid;
pub mod pe;
pub mod verity;
