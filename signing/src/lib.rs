//! Cairn's trust root: release keys, detached signatures and the signed manifest.
//!
//! This crate is shared by the builder (`cairn build`, `cairn keygen`, `cairn verify`)
//! and by the node agent (`cairn-node update`), which must check a release with
//! nothing but the public key baked into the running image. It therefore stays small and
//! free of builder dependencies.
//!
//! * [`keys`]: ed25519 key pairs on disk (PKCS#8 PEM private key, SPKI PEM public key),
//!   readable by OpenSSL 3.
//! * [`manifest`]: the JSON manifest that describes one built image, and its detached
//!   signature over the manifest's exact bytes.
//! * [`bundle`]: `update.cairn`, the signed update bundle nodes stream into their
//!   inactive slot.

pub mod bundle;
pub mod keys;
pub mod manifest;

pub use keys::{KeyError, PrivateKey, PublicKey, SIGNATURE_LEN};
pub use manifest::{Disk, Manifest, ManifestError, PartitionEntry, Payload};

/// Write `data` to `path` through a temporary file in the same directory: write, fsync,
/// set mode, rename, fsync the directory. Readers see the old file or the new one, never
/// a part. Used for keys here, and for lock files and node state elsewhere.
pub fn write_file_atomic(path: &std::path::Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    write_file_atomic_owned(path, data, mode, None)
}

/// [`write_file_atomic`], and give the file to `owner` (uid, gid) before it is renamed into
/// place (root only), so it is never visible with the wrong owner.
pub fn write_file_atomic_owned(
    path: &std::path::Path,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
