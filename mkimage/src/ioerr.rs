//! The one shape of IO error every builder module reports: what was being done, and to
//! which file. Module error enums wrap it transparently (`Io(#[from] IoError)`), so the
//! message reads "reading /path" with the OS error as its cause, never doubled.

use std::io;
use std::path::{Path, PathBuf};

/// An IO error on a named file.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}")]
pub struct IoError {
    /// What was being done ("reading", "creating", …).
    pub op: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

/// For `map_err`: turn an `io::Error` into an [`IoError`] about `op` on `path`.
pub fn io_err(op: &'static str, path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> IoError {
    let path = path.as_ref().to_owned();
    move |source| IoError { op, path, source }
}

/// What a file type is, for messages that refuse it: "a block device", "a directory", …
/// ("a regular file" for a file).
pub fn file_kind(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_file() {
        "a regular file"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a file, directory or device"
    }
}
