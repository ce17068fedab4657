//! `cairn-node`, the agent inside every Cairn image.
//!
//! One binary with subcommands keeps the image small and the code shared. Today it has
//! `ready` ([`ready`]), which prints the line users and tests wait for on the console;
//! first boot, health gates and updates come next and stand on the same helpers
//! ([`system`]: kernel command line, running slot, os-release).

pub mod ready;
pub mod system;
