//! `cairn config-drive`: a small volume labelled `CAIRN` that carries one node's
//! `node.toml` (and, signed, `node.toml.sig`), for the node's first boot.
//!
//! FAT (the default) is written by [`crate::fat`] as a whole-disk FAT32 volume (no partition
//! table; Linux and blkid read it as a "superfloppy"): 34 MiB, sparse, so a few KiB on
//! disk. ISO9660 (Rock Ridge + Joliet) is written by `xorriso`. Both are written to a
//! temporary file beside the output and renamed into place, and the node config is
//! validated first, so a bad node.toml never leaves a drive behind.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fat::FatSpec;
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
    Fat(#[from] crate::fat::FatError),
    /// xorriso failed or is missing.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// IO.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Write a config drive holding `files` (name, bytes) to `out`.
pub fn write(out: &Path, format: DriveFormat, files: &[(String, Vec<u8>)], epoch: u64) -> Result<(), DriveError> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp: PathBuf = dir.join(format!(
        ".{}.cairn-tmp-{}",
        out.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        std::process::id()
    ));
    let result = match format {
        DriveFormat::Fat => write_fat(&tmp, files, epoch),
        DriveFormat::Iso => write_iso(&tmp, files, epoch),
    };
    match result {
        Ok(()) => std::fs::rename(&tmp, out).map_err(|e| io_err("renaming into", out)(e).into()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_dir_all(tmp.with_extension("d"));
            Err(e)
        }
    }
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
    let mut f = std::fs::File::create(path).map_err(io_err("creating", path))?;
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
