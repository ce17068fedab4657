//! Release keys the node trusts (the image's, and those announced by releases it blessed),
//! and the lock that keeps two updates from running at once.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::{io_at, UpdateError};
use cairn_signing::PublicKey;

/// Where a node keeps release keys announced by releases it installed.
pub fn trust_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("trusted-keys")
}

/// The release keys this node trusts: the one its image carries (`image_key`), and every
/// next key a release it installed announced (key rotation), oldest first.
pub fn trusted_keys(image_key: &Path, state_dir: &Path) -> Result<Vec<PublicKey>, UpdateError> {
    let mut keys = vec![PublicKey::read(image_key).map_err(|e| UpdateError::System(e.to_string()))?];
    let dir = trust_dir(state_dir);
    if let Ok(rd) = fs::read_dir(&dir) {
        let mut names: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        for p in names.into_iter().filter(|p| p.extension().is_some_and(|e| e == "key")) {
            let text = fs::read_to_string(&p).map_err(io_at("reading", &p))?;
            match PublicKey::from_hex(text.trim()) {
                Ok(k) if !keys.contains(&k) => keys.push(k),
                Ok(_) => {}
                Err(why) => return Err(UpdateError::System(format!("{}: {why}", p.display()))),
            }
        }
    }
    Ok(keys)
}

/// Trust `key` from now on (announced by a release this node installed).
pub(super) fn trust(state_dir: &Path, key: &PublicKey) -> Result<bool, UpdateError> {
    let dir = trust_dir(state_dir);
    let path = dir.join(format!("{}.key", &key.to_hex()[..16]));
    if fs::read_to_string(&path).is_ok_and(|t| t.trim() == key.to_hex()) {
        return Ok(false);
    }
    fs::create_dir_all(&dir).map_err(io_at("creating", &dir))?;
    cairn_signing::write_file_atomic(&path, format!("{}\n", key.to_hex()).as_bytes(), 0o644)
        .map_err(io_at("writing", &path))?;
    Ok(true)
}

/// Hold `state_dir/update.lock` for as long as the returned file lives; refuse when another
/// process holds it.
pub fn lock_updates(state_dir: &Path) -> Result<File, UpdateError> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    fs::create_dir_all(state_dir).map_err(io_at("creating", state_dir))?;
    let path = state_dir.join("update.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io_at("opening", &path))?;
    rustix::fs::flock(f.as_fd(), rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        UpdateError::Refused(format!(
            "another update is running (it holds {}); wait for it to finish",
            path.display()
        ))
    })?;
    Ok(f)
}
