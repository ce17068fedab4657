//! The Cairn image builder.
//!
//! `cairn build` turns an image definition into a signed, verity-protected GPT disk
//! image with an A/B layout, writing every on-disk format itself into plain files: no
//! root, no loop devices, no mounts. The folders follow the pipeline (see
//! `docs/architecture.md`):
//!
//! [`definition`] (the TOML, validated) → [`build::plan`] (definition and command line
//! into one [`build::Plan`]) → [`packages`] (lock, resolver, package store, cached Debian
//! trees) → [`tree`] (the root tree: customization, modules, overlays) → [`formats`]
//! (squashfs, dm-verity, UKI, FAT ESP, ext4, GPT) → [`build`] (the stages, one place that
//! writes the disk; [`sbom`] lists what is in it) → [`release`] (verify, publish, config drives), [`flash`] (images onto
//! disks) → [`cli`].

pub use cairn_disk::{gpt, guid, verity};

pub mod build;
pub mod cli;
pub mod cluster;
pub mod definition;
pub mod flash;
pub mod formats;
pub mod ioerr;
pub mod packages;
pub mod release;
pub mod sbom;
pub mod tools;
pub mod tree;
