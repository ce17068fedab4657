//! Where a definition is being read: the file, its text and directory, so every check can
//! name the line and column of what it refuses and resolve paths against the file.

use std::path::{Path, PathBuf};

use super::DefinitionError;
use toml::Spanned;

/// Turn a byte offset into a 1-based (line, column).
pub(super) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
    (line, col)
}

pub(super) struct Ctx<'a> {
    pub(super) file: &'a Path,
    pub(super) src: &'a str,
    pub(super) dir: &'a Path,
}

impl Ctx<'_> {
    pub(super) fn err<T>(
        &self,
        span: Option<std::ops::Range<usize>>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Result<T, DefinitionError> {
        let hint: String = hint.into();
        Err(DefinitionError {
            file: self.file.to_owned(),
            at: span.map(|s| line_col(self.src, s.start)),
            message: message.into(),
            hint: (!hint.is_empty()).then_some(hint),
        })
    }

    pub(super) fn path(&self, s: &Spanned<String>) -> PathBuf {
        let p = Path::new(s.get_ref());
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.dir.join(p)
        }
    }

    /// A path that must exist as a file.
    pub(super) fn existing_file(
        &self,
        s: &Spanned<String>,
        what: &str,
        hint: &str,
    ) -> Result<PathBuf, DefinitionError> {
        let p = self.path(s);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => Ok(p),
            Ok(_) => self.err(Some(s.span()), format!("{what} {} is not a file", p.display()), hint),
            Err(e) => self.err(Some(s.span()), format!("{what} {}: {e}", p.display()), hint),
        }
    }
}
