//! The on-disk formats shared by the image builder (`cairn build`, which writes them into
//! plain files) and the node agent (`cairn-node update`, which rewrites the inactive slot
//! of a running disk): the GUID partition table, GUIDs and their derivation, the
//! dm-verity hash device, reading sections of a PE image (a UKI's command line), and
//! the content-defined map of where an image holds data.
//!
//! Each module documents its format with a byte table.

pub mod extents;
pub mod gpt;
pub mod guid;
pub mod pe;
pub mod verity;
