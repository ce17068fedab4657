//! Cairn's keyserver: the cluster's certificate authorities, the bootstrap tokens that let a
//! new node enroll once, and the audit log of every decision, all kept in one state
//! directory on the admin machine (later also in the cluster's etcd).
//!
//! ```text
//! STATE/keyserver.json          the cluster's name and the state format
//! STATE/LOCK                    held (flock) by every process that changes the state
//! STATE/ca/<name>/cert.pem      X.509 CAs (ECDSA P-256): keyserver, etcd-peer,
//! STATE/ca/<name>/key.pem         etcd-client, kubernetes; keys 0600
//! STATE/ca/<name>/key.pem|.pub  SSH CAs (ed25519): ssh-host, ssh-user
//! STATE/tokens/<id>.json        one record per bootstrap token (the secret only hashed)
//! STATE/nodes/<name>.json       what each node's certificates may name (from its node.toml)
//! STATE/enrolled/<id>.json      the answer each token bought, for a node that asks again
//! STATE/issued/<node>.json      each node's generation, the identity that may renew it, and
//!                               the answer to its last renewal (for an answer that was lost)
//! STATE/audit/<replica>.jsonl   the hash-chained audit log (cairn_keys::audit)
//! ```
//!
//! Every record is written whole (temporary file, fsync, rename, fsync of the directory)
//! under the lock, so a reader sees the old record or the new one and two admins or two
//! requests never interleave. The design is `shared/design/keys.md`.

pub mod ca;
pub mod enroll;
pub mod issue;
pub mod listen;
pub mod peers;
pub mod registry;
pub mod renew;
pub mod serve;
pub mod ssh;
pub mod state;
pub mod tokens;

use std::path::PathBuf;

pub use state::Keyserver;

/// What the keyserver cannot do, and why.
#[derive(Debug, thiserror::Error)]
pub enum KeyserverError {
    /// IO on a named file.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The directory holds no keyserver state.
    #[error("{0} is not a keyserver state directory\n  hint: make one with `cairn keyserver init {0} --cluster NAME`")]
    NotInitialized(PathBuf),
    /// `init` on a directory that already holds state.
    #[error("{0} already holds a keyserver's state; it is never overwritten\n  hint: choose another directory, or keep using this one")]
    AlreadyInitialized(PathBuf),
    /// A record that cannot be read.
    #[error("{path}: {why}")]
    Record {
        /// The record's file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The audit log's chain is broken: nothing is decided until someone looks.
    #[error("{path}: {source}\n  hint: keep the file for the investigation; move it aside to start a new chain")]
    Audit {
        /// The log.
        path: PathBuf,
        /// Where the chain breaks.
        #[source]
        source: cairn_keys::audit::AuditError,
    },
    /// A certificate could not be made.
    #[error("making {what}: {why}")]
    Certificate {
        /// Which certificate.
        what: String,
        /// rcgen's reason.
        why: String,
    },
    /// A value given on the command line or in a request that cannot be used.
    #[error("{message}\n  hint: {hint}")]
    Invalid {
        /// What is wrong.
        message: String,
        /// How to fix it.
        hint: String,
    },
}

/// For `map_err`: rcgen's error in making `what`.
pub(crate) fn cert_error(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> KeyserverError {
    let what = what.into();
    move |e| KeyserverError::Certificate {
        what,
        why: e.to_string(),
    }
}

/// For `map_err`: an IO error about `op` on `path`.
pub(crate) fn io_err(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> KeyserverError {
    let path = path.into();
    move |source| KeyserverError::Io { op, path, source }
}

pub use cairn_keys::profiles::Role;

/// A role from the command line or a request, or why it is not one.
pub fn parse_role(s: &str) -> Result<Role, KeyserverError> {
    Role::parse(s).ok_or_else(|| KeyserverError::Invalid {
        message: format!("role '{}' is not a role", s.escape_debug()),
        hint: "use control-plane or worker".into(),
    })
}

/// A node name as records, certificates and file names carry it: what node.toml's
/// `hostname` allows (an RFC 1123 host name of at most 64 characters).
pub fn check_node_name(name: &str) -> Result<(), KeyserverError> {
    if cairn_node_config::valid_hostname(name) && name.len() <= 64 {
        Ok(())
    } else {
        Err(KeyserverError::Invalid {
            message: format!("'{}' is not a node name", name.escape_debug()),
            hint: "the node's hostname from its node.toml: letters, digits and '-', dot-separated".into(),
        })
    }
}

/// Seconds from text like `90s`, `30m`, `24h` or `7d`.
pub fn parse_duration(text: &str) -> Result<u64, KeyserverError> {
    let bad = || KeyserverError::Invalid {
        message: format!("'{}' is not a duration", text.escape_debug()),
        hint: "a number and a unit: s, m, h or d (e.g. 24h, 7d)".into(),
    };
    let unit = text.chars().last().ok_or_else(bad)?;
    let n = &text[..text.len() - unit.len_utf8()];
    let n: u64 = n
        .parse()
        .ok()
        .filter(|_| n.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(bad)?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("30m").unwrap(), 1800);
        assert_eq!(parse_duration("24h").unwrap(), 86_400);
        assert_eq!(parse_duration("7d").unwrap(), 7 * 86_400);
        for bad in [
            "",
            "d",
            "7",
            "7w",
            "-1d",
            "+1d",
            "1.5h",
            "99999999999999999999d",
            "7d\n",
            "7é",
            "é",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_names() {
        for good in ["cp-1", "n1.example.net", "a"] {
            check_node_name(good).unwrap();
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "../x",
            "a/b",
            "a\nb",
            "a\0",
            &"x".repeat(65),
            "a b",
        ] {
            assert!(check_node_name(bad).is_err(), "{bad:?}");
        }
    }
}
