//! The Cairn image builder.
//!
//! `cairn build` turns an image definition into a signed, verity-protected GPT disk
//! image with an A/B layout, writing every on-disk format itself into plain files: no
//! root, no loop devices, no mounts. The pipeline (see `docs/architecture.md`):
//!
//! [`definition`] → [`rootfs`] (tree, overlays) → [`squashfs`] → [`verity`] →
//! [`uki`] → [`fat`] (ESP) → [`gpt`] + [`ext4`] (disk) → manifest and signature
//! ([`cairn_signing`]). [`plan`] holds the pure layout and rendered files; [`build`]
//! runs the stages; [`verify`] checks a finished build.

pub use cairn_disk::{gpt, guid, verity};

pub mod build;
pub mod cache;
pub mod cli;
pub mod configdrive;
pub mod customize;
pub mod debian;
pub mod definition;
pub mod ext4;
pub mod fat;
pub mod ioerr;
pub mod kconfig;
pub mod lock;
pub mod modules;
pub mod plan;
pub mod publish;
pub mod resolve;
pub mod rootfs;
pub mod squashfs;
pub mod store;
pub mod tarstream;
pub mod tools;
pub mod uki;
pub mod verify;
pub mod vm;
