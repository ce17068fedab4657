//! `cairn-node`, the agent inside every Cairn image.
//!
//! One binary with subcommands keeps the image small and the code shared:
//! - [`config`] and [`render`] (the `cairn-node-config` crate, shared with the builder):
//!   `node.toml`, parsed strictly, and the files it renders for etcd, WireGuard and the kubelet;
//! - [`drive`] and [`firstboot`]: config drives, and `cairn-node firstboot`, which takes a
//!   newer config from one and then applies;
//! - [`apply`]: `cairn-node apply`, which picks this boot's config and writes them;
//! - [`health`]: `cairn-node health GATE`, the checks before `boot-complete.target`;
//! - [`hostkeys`]: `cairn-node ssh-hostkeys`, the node's SSH host keys, checked every boot;
//! - [`mend`]: `cairn-node prestart COMPONENT`, state other programs break on power loss;
//! - [`ready`]: the line users and tests wait for on the console;
//! - [`etcd`] and [`lease`]: etcd's JSON gateway, and the reboot lease kept in it;
//! - [`system`]: kernel command line, running slot, os-release.

pub use cairn_node_config as config;
pub use cairn_node_config::render;

pub mod apply;
pub mod cli;
pub mod cloud;
pub mod drive;
pub mod etcd;
pub mod etcd_auth;
pub mod firstboot;
pub mod grow;
pub mod harness;
pub mod health;
pub mod hostkeys;
pub mod key_agent;
pub mod lease;
pub mod mend;
pub mod mesh;
pub mod metrics;
pub mod ready;
pub mod system;
pub mod update;
