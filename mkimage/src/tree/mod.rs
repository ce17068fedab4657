//! The root tree, in memory until it is packed: the tree itself and its tar stream
//! ([`rootfs`], [`tarstream`]), what Cairn changes in a Debian root ([`customize`]), the
//! kernel config check ([`kconfig`]) and module trimming ([`modules`]).

pub mod customize;
pub mod kconfig;
pub mod modules;
pub mod rootfs;
pub mod tarstream;
