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
