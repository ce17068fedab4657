//! Cairn's trust root: release keys, detached signatures and the signed manifest.
//!
//! This crate is shared by the builder (`cairn build`, `cairn keygen`, `cairn verify`)
//! and, later, by the node agent (`cairn-node update`), which must check a release with
//! nothing but the public key baked into the running image. It therefore stays small and
//! free of builder dependencies.
//!
//! * [`keys`]: ed25519 key pairs on disk (PKCS#8 PEM private key, SPKI PEM public key),
//!   readable by OpenSSL 3.
//! * [`manifest`]: the JSON manifest that describes one built image, and its detached
//!   signature over the manifest's exact bytes.

pub mod keys;
pub mod manifest;

pub use keys::{KeyError, PrivateKey, PublicKey, SIGNATURE_LEN};
pub use manifest::{Disk, Manifest, ManifestError, PartitionEntry, Payload};
