//! `cairn-node apply`: choose this boot's node config and write what it renders.
//!
//! Runs every boot from `cairn-firstboot.service` (after taking a config drive), after /var is mounted and before networking
//! and the cluster components. The image's /etc is read-only and the same on every node,
//! so per-node files go to /run (rebuilt every boot) and /var/lib/cairn (the state
//! partition). Which config applies, first match wins:
//!
//! 1. the saved config, `/var/lib/cairn/node.toml` (written by first boot from a config
//!    drive);
//! 2. the image's default, `/usr/lib/cairn/node.toml` (an image may ship one);
//! 3. the built-in single-node default ([`NodeConfig::single_node`]).
//!
//! A saved config that no longer validates is reported and skipped, never half-applied.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::NodeConfig;
use crate::render::{self, Output, Owner};

/// The saved config on the state partition.
pub const SAVED: &str = "/var/lib/cairn/node.toml";
/// The image's default config.
pub const IMAGE_DEFAULT: &str = "/usr/lib/cairn/node.toml";

/// Where a config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file (saved or image default).
    File(PathBuf),
    /// The built-in default.
    BuiltIn,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::BuiltIn => f.write_str("the built-in single-node default"),
        }
    }
}

/// The config this boot uses, its text, where it came from, and warnings about configs
/// that were skipped. `root` prefixes every path (tests use a temporary directory).
pub fn choose(root: &Path) -> (NodeConfig, String, Source, Vec<String>) {
    let mut warnings = Vec::new();
    for p in [SAVED, IMAGE_DEFAULT] {
        let path = at(root, p);
        match fs::read_to_string(&path) {
            Ok(text) => match NodeConfig::parse(&text, p) {
                Ok(c) => return (c, text, Source::File(p.into()), warnings),
                Err(e) => warnings.push(format!("ignoring {p}: {e}")),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warnings.push(format!("ignoring {p}: {e}")),
        }
    }
    let c = NodeConfig::single_node();
    let text = "version = 1\ngeneration = 0\nhostname = \"cairn\"\n".to_string();
    (c, text, Source::BuiltIn, warnings)
}

/// `root` + an absolute path.
pub fn at(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// Write `bytes` to `path` atomically and durably (temporary file, fsync, rename, fsync of
/// the directory), with `mode` and, when given, `owner` from the start.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
    cairn_signing::write_file_atomic_owned(path, bytes, mode, owner)
}

/// uid and gid of `user` in `<root>/etc/passwd`.
pub fn lookup_user(root: &Path, user: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string(at(root, "/etc/passwd")).ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Problems applying.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A file could not be written.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The owner a file needs does not exist in the image.
    #[error("user {0} does not exist in this image, so {1} cannot be given to it")]
    NoUser(&'static str, String),
    /// A value the files cannot represent (refused before anything is written).
    #[error(transparent)]
    Render(#[from] render::RenderError),
}

/// Write every output of `plan` under `root`, removing WireGuard keys no longer in it and
/// making the node's own when node.toml gives none. With `root` = `/` this also sets the
/// kernel's host name. Returns lines for the console.
pub fn write(root: &Path, config: &NodeConfig, outputs: &[Output]) -> Result<Vec<String>, ApplyError> {
    let mut lines = Vec::new();
    // An enrolled node's bootstrap token is spent: it is not written again (and a newer
    // drive's token cannot re-home the node; see key_agent::state).
    let enrolled = crate::key_agent::state::enrolled(root);
    let outputs: Vec<&Output> = outputs
        .iter()
        .filter(|o| !(enrolled && o.path == render::KEY_AGENT_TOKEN))
        .collect();
    for o in &outputs {
        let owner = match o.owner {
            Owner::Root => None,
            Owner::SystemdNetwork => Some(
                lookup_user(root, "systemd-network")
                    .ok_or_else(|| ApplyError::NoUser("systemd-network", o.path.clone()))?,
            ),
        };
        let owner = owner.filter(|_| running_as_root());
        write_atomic(&at(root, &o.path), o.text.as_bytes(), o.mode, owner).map_err(|source| ApplyError::Write {
            path: o.path.clone(),
            source,
        })?;
    }
    // A node whose node.toml gives no WireGuard key makes its own, once, and keeps it (with
    // the peer list the key agent keeps for it).
    let mut kept = Vec::new();
    if let Some(w) = config.wireguard.as_ref() {
        if w.private_key.is_none() {
            let owner = lookup_user(root, "systemd-network").filter(|_| running_as_root());
            if let Some(line) = crate::mesh::ensure_key(root, w, owner).map_err(|source| ApplyError::Write {
                path: render::wireguard_key_path(w),
                source,
            })? {
                lines.push(line);
            }
            kept.push(render::wireguard_key_path(w));
            kept.push(crate::mesh::public_file(w));
        }
        kept.push(crate::mesh::peers_file(&w.interface));
    }
    // Secrets the config no longer has (keys of removed interfaces, a dropped or spent key
    // agent token) must not linger on the state partition. The key agent's own state stays.
    for dir in ["wireguard", "key-agent"] {
        let d = at(root, &format!("{}/{dir}", render::STATE_DIR));
        if let Ok(entries) = fs::read_dir(&d) {
            for e in entries.flatten() {
                let p = format!("{}/{dir}/{}", render::STATE_DIR, e.file_name().to_string_lossy());
                let agents_own = p == crate::key_agent::state::STATE || p == crate::key_agent::renew::PENDING;
                if !agents_own && !kept.contains(&p) && !outputs.iter().any(|o| o.path == p) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
    if root == Path::new("/") {
        fs::write("/proc/sys/kernel/hostname", &config.hostname).map_err(|source| ApplyError::Write {
            path: "/proc/sys/kernel/hostname".into(),
            source,
        })?;
    }
    Ok(lines)
}

pub(crate) fn running_as_root() -> bool {
    // Ownership can only be given away by root; tests run the same code unprivileged.
    fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Apply: choose, render, write. Returns the log lines to print.
pub fn apply(root: &Path) -> Result<Vec<String>, ApplyError> {
    let (config, text, source, mut log) = choose(root);
    let outputs = render::plan(&config, &text)?;
    log.extend(write(root, &config, &outputs)?);
    let mut parts = vec![format!("role {}", config.role.as_str())];
    if let Some(e) = &config.etcd {
        parts.push(format!("etcd member {}", e.name));
    }
    if let Some(w) = &config.wireguard {
        parts.push(format!("{} with {} peers", w.interface, w.peers.len()));
    }
    log.push(format!(
        "cairn: applied node config generation {} from {source}: host {}, {}",
        config.generation,
        config.hostname,
        parts.join(", ")
    ));
    Ok(log)
}
