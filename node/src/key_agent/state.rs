//! `/var/lib/cairn/key-agent/state.json`: which keyserver the node enrolled with, as whom,
//! and the generation of the certificates it holds. Written after every enrollment and
//! renewal (whole, fsynced, renamed into place).
//!
//! Once a node has enrolled, this file, not node.toml, says which keyserver it trusts: a
//! later config drive cannot move an enrolled node to another keyserver (it would need a
//! new token from that keyserver anyway, and the drive's token is no longer applied).

use std::path::{Path, PathBuf};

use cairn_keys::profiles::Role;
use serde::{Deserialize, Serialize};

use super::{io, AgentError, Server};
use crate::apply::{at, write_atomic};

/// The agent's directory.
pub const DIR: &str = "/var/lib/cairn/key-agent";
/// The state file.
pub const STATE: &str = "/var/lib/cairn/key-agent/state.json";

/// The keyserver as the state file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerRecord {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// sha256 (hex) of its CA's certificate.
    pub ca_fingerprint: String,
}

impl From<Server> for ServerRecord {
    fn from(s: Server) -> ServerRecord {
        ServerRecord {
            host: s.host,
            port: s.port,
            ca_fingerprint: hex::encode(s.ca_fingerprint),
        }
    }
}

impl ServerRecord {
    /// Back to a [`Server`].
    pub fn server(&self) -> Result<Server, AgentError> {
        let fp = hex::decode(&self.ca_fingerprint)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| AgentError::BadState(format!("ca_fingerprint '{}' is not a sha256", self.ca_fingerprint)))?;
        Ok(Server {
            host: self.host.clone(),
            port: self.port,
            ca_fingerprint: fp,
        })
    }
}

/// What the agent remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentState {
    /// The node's name.
    pub node: String,
    /// Its role.
    pub role: Role,
    /// The keyserver it enrolled with.
    pub server: ServerRecord,
    /// The keyserver's generation of the certificates held.
    pub generation: u64,
    /// When it enrolled (Unix seconds).
    pub enrolled_at: u64,
    /// When it last renewed.
    pub renewed_at: Option<u64>,
    /// The last failure (time, what), until a success.
    pub last_error: Option<(u64, String)>,
}

impl AgentState {
    /// The state under `root`, if the node has enrolled.
    pub fn load(root: &Path) -> Result<Option<AgentState>, AgentError> {
        let path = path(root);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| AgentError::BadState(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", &path)(e)),
        }
    }

    /// Write it, whole.
    pub fn save(&self, root: &Path) -> Result<(), AgentError> {
        let path = path(root);
        let mut text = serde_json::to_string_pretty(self).expect("the state always serializes");
        text.push('\n');
        write_atomic(&path, text.as_bytes(), 0o644, None).map_err(io("writing", &path))
    }
}

fn path(root: &Path) -> PathBuf {
    at(root, STATE)
}

/// Whether the node has enrolled (the state file exists).
pub fn enrolled(root: &Path) -> bool {
    path(root).exists()
}
