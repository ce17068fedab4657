//! The root filesystem: the canonical tar stream of [`crate::tree::rootfs::Tree`] piped into
//! `tar2sqfs` (squashfs-tools-ng).
//!
//! Chosen by measurement (see `docs/architecture.md`): tar2sqfs reads a tar on stdin, so
//! the tree is never unpacked and no root privileges are needed to keep ownership,
//! device nodes and file capabilities; with a sorted stream and fixed times its output
//! is bit-identical across runs; it keeps hard links and xattrs. The image is padded
//! to 4 KiB, the dm-verity data block size.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::ioerr::io_err;
use crate::tools::{tail, ToolError};
use crate::tree::rootfs::{Tree, TreeError};

/// How to pack.
pub struct SquashfsSpec<'a> {
    /// Output file.
    pub out: &'a Path,
    /// zstd level.
    pub level: u32,
    /// Block size in bytes.
    pub block_size: u64,
    /// Time for the superblock and implicit directories.
    pub epoch: u64,
}

/// Packing failed: in the tree stream or in tar2sqfs.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Reading the tree.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// tar2sqfs.
    #[error(transparent)]
    Tool(#[from] ToolError),
}

/// Pack `tree` into a squashfs file; returns its size. `progress` gets file bytes streamed.
pub fn pack(tree: &Tree, spec: &SquashfsSpec, progress: &mut dyn FnMut(u64)) -> Result<u64, PackError> {
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut child = Command::new("tar2sqfs")
        .env("SOURCE_DATE_EPOCH", spec.epoch.to_string())
        .args(["--quiet", "--force", "--no-skip"])
        .args(["--compressor", "zstd", "--comp-extra", &format!("level={}", spec.level)])
        .args(["--block-size", &spec.block_size.to_string()])
        .args(["--dev-block-size", "4096"])
        .args(["--num-jobs", &jobs.to_string()])
        .args(["--defaults", &format!("uid=0,gid=0,mode=0755,mtime={}", spec.epoch)])
        .arg(spec.out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ToolError::Spawn {
            tool: "tar2sqfs".into(),
            source,
        })?;
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let stdin = child.stdin.take().expect("piped");
    // A 1 MiB pipe instead of 64 KiB: measured 0.2 s of 1.1 s less for the default root at
    // zstd level 1 (fewer wake-ups on both sides). Best effort: the default works too.
    let _ = rustix::pipe::fcntl_setpipe_size(&stdin, 1 << 20);
    let streamed = tree.write_tar(stdin, progress);
    let status = child.wait().map_err(|source| ToolError::Spawn {
        tool: "tar2sqfs".into(),
        source,
    })?;
    let err_text = err_reader.join().unwrap_or_default();
    if !status.success() {
        let _ = std::fs::remove_file(spec.out);
        return Err(ToolError::Failed {
            tool: "tar2sqfs".into(),
            status: status.to_string(),
            stderr: tail(&err_text),
        }
        .into());
    }
    streamed?;
    let size = std::fs::metadata(spec.out)
        .map_err(io_err("reading size of", spec.out))
        .map_err(ToolError::from)?
        .len();
    Ok(size)
}
