//! Renewal: new keys for every certificate of the node's role, sent over TLS with the
//! current identity certificate as the client certificate (`POST /v1/renew`).
//!
//! A renewal in flight is kept in `/var/lib/cairn/key-agent/pending.json` (0600): the new
//! keys and the exact request, then the answer as soon as it arrives. A try that gets no
//! answer is sent again byte for byte (the keyserver recognises it and answers what it
//! answered before), and an answer that arrived before a power cut is installed from there.
//! Without this a lost answer would leave the node holding a generation the keyserver has
//! moved past, which is what a stolen key looks like.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_keys::profiles::profile_names;
use cairn_keys::wire::{EnrollResponse, RenewRequest};
use cairn_keys::Clock;
use rcgen::KeyPair;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use super::state::AgentState;
use super::{answer, client, install, io, keys_and_csrs, AgentError, Installed, PKI_DIR};
use crate::apply::{at, write_atomic};

/// The renewal in flight.
pub const PENDING: &str = "/var/lib/cairn/key-agent/pending.json";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pending {
    /// The generation the request renews.
    generation: u64,
    /// The request, as sent.
    body: String,
    /// The new keys (PEM), by profile.
    keys: BTreeMap<String, String>,
    /// The answer, once it came.
    answer: Option<EnrollResponse>,
}

fn pending_path(root: &Path) -> PathBuf {
    at(root, PENDING)
}

fn load_pending(root: &Path) -> Option<Pending> {
    let text = std::fs::read_to_string(pending_path(root)).ok()?;
    serde_json::from_str(&text).ok()
}

fn save_pending(root: &Path, p: &Pending) -> Result<(), AgentError> {
    let path = pending_path(root);
    let text = serde_json::to_string(p).expect("a pending renewal always serializes");
    write_atomic(&path, text.as_bytes(), 0o600, None).map_err(io("writing", &path))
}

fn drop_pending(root: &Path) {
    let _ = std::fs::remove_file(pending_path(root));
}

/// The identity certificate and key the node holds, as a TLS client certificate.
pub(crate) fn identity(root: &Path) -> Result<client::ClientIdentity, AgentError> {
    let dir = at(root, PKI_DIR).join("identity").join("current");
    let chain_pem = std::fs::read_to_string(dir.join("cert.pem")).map_err(io("reading", &dir.join("cert.pem")))?;
    let key_pem = std::fs::read_to_string(dir.join("key.pem")).map_err(io("reading", &dir.join("key.pem")))?;
    let chain = cairn_keys::pem::blocks(&chain_pem, "CERTIFICATE")
        .map_err(|why| AgentError::BadState(format!("the identity certificate: {why}")))?
        .into_iter()
        .map(|b| CertificateDer::from(b.der))
        .collect();
    let key = KeyPair::from_pem(&key_pem).map_err(|e| AgentError::BadState(format!("the identity key: {e}")))?;
    Ok(client::ClientIdentity {
        chain,
        key: key.serialize_der(),
    })
}

/// A client of the keyserver the node enrolled with, showing the node's identity.
pub(crate) fn identified(
    root: &Path,
    state: &AgentState,
    timeout: Duration,
    clock: &Clock,
) -> Result<client::Keyserver, AgentError> {
    let server = state.server.server()?;
    Ok(client::Keyserver::new(
        &server.host,
        server.port,
        server.ca_fingerprint,
        timeout,
        clock.clone(),
        Some(identity(root)?),
    )?)
}

/// Make the new keys and the request for renewing `state`'s generation, and keep them
/// (unless a renewal of it is already pending).
pub fn prepare(root: &Path, state: &AgentState) -> Result<(), AgentError> {
    pending(root, state).map(|_| ())
}

fn pending(root: &Path, state: &AgentState) -> Result<Pending, AgentError> {
    Ok(match load_pending(root) {
        Some(p) if p.generation == state.generation => p,
        _ => {
            let (keys, csrs) = keys_and_csrs(&profile_names(state.role))?;
            let body = serde_json::to_string(&RenewRequest {
                generation: state.generation,
                csrs,
                ssh_host_key: super::ssh_host_key(root),
                wireguard_key: crate::mesh::public_key(root),
            })
            .expect("a request always serializes");
            let p = Pending {
                generation: state.generation,
                body,
                keys,
                answer: None,
            };
            save_pending(root, &p)?;
            p
        }
    })
}

/// Renew every certificate of the node's role; on success the state has the new
/// generation.
pub fn renew(root: &Path, state: &mut AgentState, timeout: Duration, clock: &Clock) -> Result<Installed, AgentError> {
    let mut pending = pending(root, state)?;
    if pending.answer.is_none() {
        let ks = identified(root, state, timeout, clock)?;
        let (status, body) = ks.post("/v1/renew", pending.body.as_bytes())?;
        match answer(status, &body) {
            Ok(resp) => {
                pending.answer = Some(resp);
                save_pending(root, &pending)?;
            }
            Err(e @ AgentError::Refused { retry: false, .. }) => {
                // Nothing will change the answer to this request: the next try makes new
                // keys.
                drop_pending(root);
                return Err(e);
            }
            Err(e) => return Err(e),
        }
    }
    let resp = pending.answer.as_ref().expect("answered above");
    let installed = install(root, resp, &pending.keys, &state.node, state.role)?;
    super::install_ssh(root, resp)?;
    state.generation = resp.generation;
    state.renewed_at = Some(clock.now());
    state.last_error = None;
    state.save(root)?;
    drop_pending(root);
    Ok(installed)
}
