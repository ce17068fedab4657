//! External tools: finding them before any work starts, and running them with their
//! error output captured into the error.

use std::path::{Path, PathBuf};

use crate::ioerr::IoError;
use std::process::{Command, Stdio};

/// Problems with external tools.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Tools that are not installed.
    #[error("missing tools: {}\n  hint: apt-get install {}", .tools.join(", "), .packages.join(" "))]
    Missing {
        /// Commands not found on PATH.
        tools: Vec<String>,
        /// Debian packages that provide them.
        packages: Vec<String>,
    },
    /// A tool that could not be started.
    #[error("starting {tool}")]
    Spawn {
        /// The command.
        tool: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A tool that failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        /// The command.
        tool: String,
        /// Its exit status.
        status: String,
        /// The last lines it printed on stderr.
        stderr: String,
    },
    /// IO on a named file.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// The Debian package that ships a tool Cairn runs.
pub fn package_of(tool: &str) -> &'static str {
    match tool {
        "tar2sqfs" | "sqfs2tar" => "squashfs-tools-ng",
        "mksquashfs" | "unsquashfs" => "squashfs-tools",
        "mkfs.ext4" | "e2fsck" => "e2fsprogs",
        "zstd" => "zstd",
        "xz" => "xz-utils",
        "gzip" => "gzip",
        "veritysetup" => "cryptsetup-bin",
        "depmod" => "kmod",
        "xorriso" => "xorriso",
        "qemu-img" => "qemu-utils",
        "mkfs.fat" => "dosfstools",
        "mmd" | "mcopy" => "mtools",
        "sgdisk" => "gdisk",
        "sfdisk" => "fdisk",
        _ => "(unknown package)",
    }
}

/// Find `tool` on PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Check that every tool is installed; one error lists all that are missing.
pub fn require(tools: &[&str]) -> Result<(), ToolError> {
    let missing: Vec<String> = tools
        .iter()
        .filter(|t| which(t).is_none())
        .map(|t| t.to_string())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<String> = missing.iter().map(|t| package_of(t).to_string()).collect();
    packages.dedup();
    Err(ToolError::Missing {
        tools: missing,
        packages,
    })
}

/// The last few lines of a tool's stderr, for error messages.
pub fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// Run a command to completion; a non-zero exit becomes an error with its stderr.
pub fn run(cmd: &mut Command, tool: &str) -> Result<(), ToolError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|source| ToolError::Spawn {
        tool: tool.into(),
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ToolError::Failed {
            tool: tool.into(),
            status: out.status.to_string(),
            stderr: tail(&out.stderr),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_name_their_packages() {
        let e = require(&["sh", "tar2sqfs-that-does-not-exist"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tar2sqfs-that-does-not-exist"), "{e}");
        assert!(e.contains("apt-get install"), "{e}");
    }

    #[test]
    fn failures_carry_stderr() {
        let e = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"]), "sh")
            .unwrap_err()
            .to_string();
        assert!(e.contains("boom") && e.contains("exit status: 3"), "{e}");
    }
}
