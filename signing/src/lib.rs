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
//! * [`outputs`]: `outputs.json`, the signed list of a build's other forms of its disk
//!   image (bmap, zstd, qcow2), bound to the manifest.

pub mod bundle;
pub mod harness;
pub mod keys;
pub mod manifest;
pub mod outputs;
pub mod time;

pub use keys::{KeyError, PrivateKey, PublicKey, SIGNATURE_LEN};
pub use manifest::{BuildKind, DataRange, Disk, Manifest, ManifestError, PartitionEntry, Payload};

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
    // The temp file is created exclusively under a name no other writer uses: a link someone
    // planted under a predictable name is never followed.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut attempt = 0;
    let (tmp, mut f) = loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp{}-{seq}-{nanos:x}", std::process::id()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
            Err(e) => return Err(e),
        }
    };
    let result = (|| {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_never_follow_a_planted_link_and_run_concurrently() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("key.pem");
        // Someone with write access to the directory plants links under the names an older
        // writer used; the secret must not reach what they point at.
        let stolen = dir.path().join("stolen");
        for i in 0..4 {
            std::os::unix::fs::symlink(
                &stolen,
                dir.path().join(format!(".key.pem.tmp{}", std::process::id() + i)),
            )
            .unwrap();
        }
        write_file_atomic(&target, b"secret", 0o600).unwrap();
        assert!(!stolen.exists());
        assert_eq!(std::fs::read(&target).unwrap(), b"secret");
        // Writers in one process do not share a temp file.
        std::thread::scope(|s| {
            for i in 0..8 {
                let target = &target;
                s.spawn(move || write_file_atomic(target, format!("v{i}").as_bytes(), 0o600).unwrap());
            }
        });
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert_eq!(left.len(), 4, "only the planted links remain: {left:?}");
    }
}
