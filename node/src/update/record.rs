//! What the node remembers about releases that failed on it, so it does not try them again.

use super::slots::{Entry, Target};
use std::fs::{self};
use std::io::{self};
use std::path::Path;

/// Versions that failed on this node, from `failed-<version>` files in the state dir.
pub fn failed_versions(state_dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(state_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = name.strip_prefix("failed-") {
                let why = fs::read_to_string(e.path()).unwrap_or_default();
                out.push((v.to_string(), why.trim().to_string()));
            }
        }
    }
    out.sort();
    out
}

/// Record every UKI systemd-boot gave up on (out of tries) as a failed version.
pub(super) fn record_exhausted(t: &Target, entries: &[Entry]) {
    for e in entries.iter().filter(|e| e.exhausted()) {
        let why = format!(
            "{}: out of boot tries ({} failed boots)",
            e.file,
            e.tries_done.unwrap_or(0)
        );
        let _ = record_failure(&t.state_dir, &e.version, &why);
    }
}

/// Record that `version` failed and why (appending to what is known).
pub fn record_failure(state_dir: &Path, version: &str, why: &str) -> io::Result<()> {
    let path = state_dir.join(format!("failed-{version}"));
    let mut text = fs::read_to_string(&path).unwrap_or_default();
    if !text.lines().any(|l| l == why) {
        text.push_str(why);
        text.push('\n');
    }
    cairn_signing::write_file_atomic(&path, text.as_bytes(), 0o644)
}
