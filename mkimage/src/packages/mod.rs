//! Where the root's Debian packages come from: the lock ([`lock`]), resolving it against
//! the archive with apt ([`resolve`]), the content-addressed package store ([`store`]),
//! the cache and its locks ([`cache`]), and the Debian tree built from the locked
//! packages by mmdebstrap ([`debian`]).

pub mod cache;
pub mod debian;
pub mod lock;
pub mod resolve;
pub mod store;
