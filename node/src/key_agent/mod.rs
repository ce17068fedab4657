//! The key agent: a node's certificates from the keyserver (shared/design/keys.md).
//!
//! This is its first part, enrollment: the node makes one ECDSA P-256 key per certificate
//! its role gets, sends a signing request for each with its one-time token, checks that
//! every certificate it gets back is for its own key, and writes them:
//!
//! ```text
//! /var/lib/cairn/pki/<profile>/gen-<n>/cert.pem    the certificate and the CA that signed it
//! /var/lib/cairn/pki/<profile>/gen-<n>/key.pem     its key (0600)
//! /var/lib/cairn/pki/<profile>/gen-<n>/both.pem    both, for programs that take one file (0600)
//! /var/lib/cairn/pki/<profile>/gen-<n>/bundle.pem  the CA, to trust peers with
//! /var/lib/cairn/pki/<profile>/current -> gen-<n>
//! ```
//!
//! Each generation is written whole and fsynced before `current` is switched to it (a
//! symlink renamed over the old one), so a power cut leaves the old certificates or the new
//! ones, never a certificate beside the wrong key. The token file is removed only after
//! that. Keys never leave the node.

pub mod client;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_keys::profiles::{profile_names, Role};
use cairn_keys::wire::{EnrollRequest, EnrollResponse, ErrorResponse};
use rcgen::{CertificateParams, KeyPair, PublicKeyData};

use crate::apply::{at, write_atomic};

/// Where the certificates live.
pub const PKI_DIR: &str = "/var/lib/cairn/pki";

/// Why enrollment did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The keyserver could not be asked (down, unreachable, not the pinned one): try later.
    #[error(transparent)]
    Unreachable(#[from] client::ClientError),
    /// The keyserver said no.
    #[error("the keyserver refused: {code}: {message}")]
    Refused {
        /// Its code (`token_used`, `role_mismatch`, …).
        code: String,
        /// Its sentence.
        message: String,
        /// Whether trying again can help.
        retry: bool,
    },
    /// An answer the agent will not install.
    #[error("the keyserver's answer cannot be used: {0}")]
    BadAnswer(String),
    /// Writing the certificates.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AgentError {
    let path = path.to_owned();
    move |source| AgentError::Io { what, path, source }
}

/// What enrollment installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    /// The node's name, as the keyserver knows it.
    pub node: String,
    /// The certificates, by profile.
    pub profiles: Vec<String>,
    /// The generation written.
    pub generation: u32,
}

/// Where to enroll.
#[derive(Debug, Clone)]
pub struct Server {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// sha256 of the keyserver CA's certificate.
    pub ca_fingerprint: [u8; 32],
}

/// Enroll with `server` using `token` (removed from `token_file` once the certificates are
/// written), for a node of `role` named `hostname`. `root` is the file system root (`/`
/// on a node; a directory in tests).
pub fn enroll(
    root: &Path,
    server: &Server,
    token: &str,
    token_file: Option<&Path>,
    hostname: &str,
    role: Role,
    timeout: Duration,
) -> Result<Enrolled, AgentError> {
    let mut keys = Vec::new();
    let mut csrs = std::collections::BTreeMap::new();
    for name in profile_names(role) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| AgentError::BadAnswer(format!("making a key: {e}")))?;
        let csr = CertificateParams::new(Vec::<String>::new())
            .and_then(|p| p.serialize_request(&key))
            .and_then(|c| c.pem())
            .map_err(|e| AgentError::BadAnswer(format!("making a request: {e}")))?;
        csrs.insert(name.to_string(), csr);
        keys.push((name, key));
    }
    let req = EnrollRequest {
        token: token.to_string(),
        role: role.as_str().to_string(),
        csrs,
    };
    let ks = client::Keyserver::new(&server.host, server.port, server.ca_fingerprint, timeout);
    let body = serde_json::to_vec(&req).expect("a request always serializes");
    let (status, answer) = ks.post("/v1/enroll", &body)?;
    if status != 200 {
        let e: ErrorResponse = serde_json::from_slice(&answer)
            .map_err(|_| AgentError::BadAnswer(format!("HTTP {status} without an error the keyserver gives")))?;
        return Err(AgentError::Refused {
            code: e.code,
            message: e.message,
            retry: e.retry,
        });
    }
    let resp: EnrollResponse =
        serde_json::from_slice(&answer).map_err(|e| AgentError::BadAnswer(format!("not an enroll answer: {e}")))?;
    if resp.node != hostname || resp.role != role {
        return Err(AgentError::BadAnswer(format!(
            "it is for {} ({}), this node is {hostname} ({})",
            resp.node,
            resp.role.as_str(),
            role.as_str()
        )));
    }
    // Every certificate must be for the key made for it, and come with its CA.
    let mut files = Vec::new();
    for (name, key) in &keys {
        let chain = resp
            .certs
            .get(*name)
            .ok_or_else(|| AgentError::BadAnswer(format!("no {name} certificate")))?;
        let certs = cairn_keys::pem::blocks(chain, "CERTIFICATE")
            .map_err(|why| AgentError::BadAnswer(format!("the {name} certificate: {why}")))?;
        let [leaf, ca] = &certs[..] else {
            return Err(AgentError::BadAnswer(format!(
                "the {name} certificate comes as {} certificates, not itself and its CA",
                certs.len()
            )));
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf.der)
            .map_err(|e| AgentError::BadAnswer(format!("the {name} certificate: not a certificate ({e})")))?;
        if parsed.tbs_certificate.subject_pki.raw != key.subject_public_key_info() {
            return Err(AgentError::BadAnswer(format!(
                "the {name} certificate is not for this node's key"
            )));
        }
        let ca_pem = ca.text.clone();
        files.push((name.to_string(), chain.clone(), key.serialize_pem(), ca_pem));
    }
    let generation = next_generation(root)?;
    for (name, chain, key, ca) in &files {
        let dir = at(root, PKI_DIR).join(name).join(format!("gen-{generation}"));
        write_atomic(&dir.join("key.pem"), key.as_bytes(), 0o600, None).map_err(io("writing", &dir))?;
        write_atomic(&dir.join("cert.pem"), chain.as_bytes(), 0o644, None).map_err(io("writing", &dir))?;
        write_atomic(&dir.join("bundle.pem"), ca.as_bytes(), 0o644, None).map_err(io("writing", &dir))?;
        write_atomic(&dir.join("both.pem"), format!("{chain}{key}").as_bytes(), 0o600, None)
            .map_err(io("writing", &dir))?;
    }
    for (name, ..) in &files {
        switch_current(&at(root, PKI_DIR).join(name), generation)?;
    }
    if let Some(t) = token_file {
        match fs::remove_file(t) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", t)(e)),
        }
    }
    Ok(Enrolled {
        node: resp.node,
        profiles: files.into_iter().map(|f| f.0).collect(),
        generation,
    })
}

/// One more than the highest generation any profile has.
fn next_generation(root: &Path) -> Result<u32, AgentError> {
    let pki = at(root, PKI_DIR);
    let mut max = 0;
    if let Ok(profiles) = fs::read_dir(&pki) {
        for p in profiles.flatten() {
            for g in fs::read_dir(p.path()).into_iter().flatten().flatten() {
                let name = g.file_name().to_string_lossy().into_owned();
                if let Some(n) = name.strip_prefix("gen-").and_then(|n| n.parse::<u32>().ok()) {
                    max = max.max(n);
                }
            }
        }
    }
    Ok(max + 1)
}

/// Point `dir/current` at `gen-<n>`: a new link beside it, renamed over it, the directory
/// fsynced.
fn switch_current(dir: &Path, generation: u32) -> Result<(), AgentError> {
    let tmp = dir.join(".current.tmp");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("gen-{generation}"), &tmp).map_err(io("linking", &tmp))?;
    fs::rename(&tmp, dir.join("current")).map_err(io("renaming", &tmp))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}
