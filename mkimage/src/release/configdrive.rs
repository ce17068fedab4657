//! `cairn config-drive`: a small volume labelled `CAIRN` that carries one node's
//! `node.toml` (and, signed, `node.toml.sig`), for the node's first boot.
//!
//! FAT (the default) is written by [`crate::formats::fat`] as a whole-disk FAT32 volume (no partition
//! table; Linux and blkid read it as a "superfloppy"): 34 MiB, sparse, so a few KiB on
//! disk. ISO9660 (Rock Ridge + Joliet) is written by `xorriso`. Both are written to a
//! temporary file beside the output (created exclusively, mode 0600: a drive carries a
//! node's secrets) and renamed into place, and the node config is validated first, so a bad
//! node.toml never leaves a drive behind. An output that exists and is not a regular file —
//! a disk's device node above all — is refused, never replaced by a file.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::formats::fat::FatSpec;
use crate::ioerr::{io_err, IoError};
use crate::tools::{self, ToolError};

/// The label a Cairn config drive carries.
pub const LABEL: &str = "CAIRN";
/// Size of a FAT config drive (the smallest FAT32 volume, rounded up).
pub const FAT_SIZE: u64 = 34 << 20;

/// The file system of a config drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriveFormat {
    /// FAT32 (any firmware and OS reads it; what USB sticks carry).
    Fat,
    /// ISO9660 with Rock Ridge and Joliet (what hypervisors attach as a CD-ROM).
    Iso,
}

/// Problems writing a drive.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The FAT layout failed.
    #[error("laying out the FAT volume")]
    Fat(#[from] crate::formats::fat::FatError),
    /// xorriso failed or is missing.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// IO.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The output is a device, a directory or another special file.
    #[error("{path} is {kind}, not a file: cairn config-drive writes drive images\n  hint: write an image file (--out node1.img), then put it on the stick, e.g. `dd if=node1.img of={path} bs=1M conv=fsync`")]
    NotAFile {
        /// The output path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
}

/// What `path` is when it exists and is not a regular file (a link counts as one, even to
/// a regular file).
fn special(path: &Path) -> Option<&'static str> {
    let t = std::fs::metadata(path).ok()?.file_type();
    let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    match crate::ioerr::file_kind(t) {
        "a regular file" if link => Some("a symbolic link"),
        "a regular file" => None,
        kind => Some(kind),
    }
}

/// Refuse an output that is not a regular file (or not there yet): a device node, a link,
/// a directory, a FIFO or a socket is never replaced by a drive image. Callers check
/// before anything else happens (a keyserver registering the node), [`write`] again.
pub fn check_target(out: &Path) -> Result<(), DriveError> {
    match special(out) {
        Some(kind) => Err(DriveError::NotAFile {
            path: out.to_owned(),
            kind,
        }),
        None => Ok(()),
    }
}

/// Write a config drive holding `files` (name, bytes) to `out`.
pub fn write(out: &Path, format: DriveFormat, files: &[(String, Vec<u8>)], epoch: u64) -> Result<(), DriveError> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    check_target(out)?;
    let tmp: PathBuf = dir.join(crate::packages::store::unique(&format!(
        ".{}.cairn-tmp-",
        out.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    )));
    let result = match format {
        DriveFormat::Fat => write_fat(&tmp, files, epoch),
        DriveFormat::Iso => write_iso(&tmp, files, epoch),
    }
    .and_then(|()| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err("protecting", &tmp)(e).into())
    })
    .and_then(|()| std::fs::rename(&tmp, out).map_err(|e| io_err("renaming into", out)(e).into()));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_dir_all(tmp.with_extension("d"));
    }
    result
}

fn write_fat(path: &Path, files: &[(String, Vec<u8>)], epoch: u64) -> Result<(), DriveError> {
    let image = FatSpec {
        size: FAT_SIZE,
        label: LABEL.into(),
        volume_id: {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            for (n, b) in files {
                h.update(n.as_bytes());
                h.update(b);
            }
            u32::from_le_bytes(h.finalize()[..4].try_into().expect("4 bytes"))
        },
        hidden_sectors: 0,
        epoch,
        files: files.to_vec(),
    }
    .build()?;
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err("creating", path))?
    };
    f.set_len(image.size).map_err(io_err("sizing", path))?;
    for (offset, bytes) in &image.regions {
        f.seek(SeekFrom::Start(*offset))
            .and_then(|_| f.write_all(bytes))
            .map_err(io_err("writing", path))?;
    }
    f.sync_all().map_err(io_err("syncing", path))?;
    Ok(())
}

fn write_iso(path: &Path, files: &[(String, Vec<u8>)], epoch: u64) -> Result<(), DriveError> {
    tools::require(&["xorriso"])?;
    let src = path.with_extension("d");
    std::fs::create_dir_all(&src).map_err(io_err("creating", &src))?;
    for (name, bytes) in files {
        let p = src.join(name);
        std::fs::write(&p, bytes).map_err(io_err("writing", &p))?;
    }
    let r = tools::run(
        Command::new("xorriso")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .args(["-as", "mkisofs", "-quiet", "-V", LABEL, "-J", "-r", "-o"])
            .arg(path)
            .arg(&src),
        "xorriso",
    );
    let _ = std::fs::remove_dir_all(&src);
    Ok(r?)
}
