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
//! /var/lib/cairn/pki/<profile>/gen-<n>/bundle.pem  the CA, to trust peers with (a worker's
//!                                                  etcd-lease: the etcd servers' CA)
//! /var/lib/cairn/pki/<profile>/current -> gen-<n>
//! ```
//!
//! Each generation is written whole and fsynced before `current` is switched to it (a
//! symlink renamed over the old one), so a power cut leaves the old certificates or the new
//! ones, never a certificate beside the wrong key. The token file is removed only after
//! that. Keys never leave the node. The generation before the current one is kept; older
//! ones are removed.
//!
//! Then [`run`] keeps them: [`renew`] over TLS with the identity certificate when a third of
//! their life (or the ten-day outage budget) remains, [`state`] remembers which keyserver
//! and generation the node has, and [`status`] shows it all (`cairn-node key-agent
//! --status`).
//!
//! Clocks (a change from the design's §4.4, which waited for `time-sync.target` before the
//! first enrollment): the agent waits only for a clock that cannot be right, one before
//! the image's build time ([`CLOCK_EPOCH`]), and otherwise compares its clock with the
//! keyserver's in every answer and says when they differ by more than a minute. Waiting for
//! NTP on every first boot would add up to two minutes where no NTP server is reachable
//! (air-gapped racks, QEMU) although the clock is fine, and the keyserver's clock is the one
//! the certificates are made on anyway.

pub mod client;
pub mod consumers;
pub mod peers;
pub mod renew;
pub mod run;
pub mod state;
pub mod status;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_keys::profiles::{profile_names, Role};
use cairn_keys::wire::{EnrollRequest, EnrollResponse, ErrorResponse};
use cairn_keys::Clock;
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
    /// The agent's own state cannot be read.
    #[error("the key agent's state: {0}")]
    BadState(String),
    /// The node's clock cannot be right: try again once it is set.
    #[error("{0}")]
    Clock(String),
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

/// What an enrollment or a renewal installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The node's name, as the keyserver knows it.
    pub node: String,
    /// The certificates, by profile.
    pub profiles: Vec<String>,
    /// The keyserver's generation of them.
    pub generation: u64,
    /// The directory generation written (`gen-<n>`).
    pub dir_generation: u32,
    /// The earliest end of the certificates installed (Unix seconds).
    pub not_after: u64,
    /// The keyserver's clock when it answered.
    pub server_time: u64,
}

/// PEM texts by profile name.
pub(crate) type ByProfile = BTreeMap<String, String>;

/// A fresh ECDSA P-256 key per profile (PEM), and a signing request for each.
pub(crate) fn keys_and_csrs(names: &[&str]) -> Result<(ByProfile, ByProfile), AgentError> {
    let mut keys = BTreeMap::new();
    let mut csrs = BTreeMap::new();
    for name in names {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| AgentError::BadAnswer(format!("making a key: {e}")))?;
        let csr = CertificateParams::new(Vec::<String>::new())
            .and_then(|p| p.serialize_request(&key))
            .and_then(|c| c.pem())
            .map_err(|e| AgentError::BadAnswer(format!("making a request: {e}")))?;
        csrs.insert(name.to_string(), csr);
        keys.insert(name.to_string(), key.serialize_pem());
    }
    Ok((keys, csrs))
}

/// The status and body of an answer, as an answer or the keyserver's refusal.
pub(crate) fn answer<T: serde::de::DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, AgentError> {
    if status != 200 {
        let e: ErrorResponse = serde_json::from_slice(body)
            .map_err(|_| AgentError::BadAnswer(format!("HTTP {status} without an error the keyserver gives")))?;
        return Err(AgentError::Refused {
            code: e.code,
            message: e.message,
            retry: e.retry,
        });
    }
    serde_json::from_slice(body).map_err(|e| AgentError::BadAnswer(format!("not an answer the keyserver gives: {e}")))
}

/// Who owns a profile's key: etcd's files belong to the `etcd` user (etcd runs as it),
/// the rest to root.
fn key_owner(root: &Path, profile: &str) -> Option<(u32, u32)> {
    // etcd's own certificates; the clients' (etcd-client, etcd-lease) are the agent's.
    if !matches!(profile, "etcd-server" | "etcd-peer") || !crate::apply::running_as_root() {
        return None;
    }
    crate::apply::lookup_user(root, "etcd")
}

/// The node's ed25519 SSH host key line (made by `cairn-node ssh-hostkeys`), when it has one.
pub(crate) fn ssh_host_key(root: &Path) -> Option<String> {
    let path = at(root, crate::hostkeys::DIR).join("ssh_host_ed25519_key.pub");
    let line = fs::read_to_string(path).ok()?;
    let line = line.trim();
    cairn_keys::ssh::parse_public_line(line).ok()?;
    Some(line.to_string())
}

/// Where the SSH host certificate goes (sshd's `HostCertificate`).
pub const SSH_HOST_CERT: &str = "/var/lib/cairn/ssh/ssh_host_ed25519_key-cert.pub";
/// Where the SSH user CA goes (sshd's `TrustedUserCAKeys`).
pub const SSH_USER_CA: &str = "/var/lib/cairn/pki/ssh/user-ca.pub";

/// Write the SSH host certificate (when it is for this node's host key) and the user CA
/// of `resp`; on a running node, have sshd load the new certificate.
pub(crate) fn install_ssh(root: &Path, resp: &EnrollResponse) -> Result<(), AgentError> {
    if let Some(cert) = &resp.ssh_host_cert {
        let (c, _) = cairn_keys::ssh::parse_cert_line(cert)
            .map_err(|why| AgentError::BadAnswer(format!("the SSH host certificate: {why}")))?;
        let ours = ssh_host_key(root)
            .and_then(|l| cairn_keys::ssh::parse_public_line(&l).ok())
            .ok_or_else(|| {
                AgentError::BadAnswer("an SSH host certificate for a node without an ed25519 host key".into())
            })?;
        if c.key != ours || c.cert_type != cairn_keys::ssh::CertType::Host {
            return Err(AgentError::BadAnswer(
                "the SSH host certificate is not for this node's host key".into(),
            ));
        }
        let path = at(root, SSH_HOST_CERT);
        write_atomic(&path, format!("{}\n", cert.trim()).as_bytes(), 0o644, None).map_err(io("writing", &path))?;
        if root == Path::new("/") {
            // sshd reads its host certificate when it starts or is told to reload.
            let _ = std::process::Command::new("systemctl")
                .args(["try-reload-or-restart", "ssh.service"])
                .status();
        }
    }
    if let Some(ca) = &resp.ssh_user_ca {
        cairn_keys::ssh::parse_public_line(ca)
            .map_err(|why| AgentError::BadAnswer(format!("the SSH user CA: {why}")))?;
        let path = at(root, SSH_USER_CA);
        write_atomic(&path, format!("{}\n", ca.trim()).as_bytes(), 0o644, None).map_err(io("writing", &path))?;
    }
    Ok(())
}

/// Check that `resp` is for this node and that each certificate is for the key made for it
/// and comes with its CA; write them as a new generation and switch `current` to it.
pub(crate) fn install(
    root: &Path,
    resp: &EnrollResponse,
    keys: &BTreeMap<String, String>,
    hostname: &str,
    role: Role,
) -> Result<Installed, AgentError> {
    if resp.node != hostname || resp.role != role {
        return Err(AgentError::BadAnswer(format!(
            "it is for {} ({}), this node is {hostname} ({})",
            resp.node,
            resp.role.as_str(),
            role.as_str()
        )));
    }
    let mut files = Vec::new();
    let mut not_after = u64::MAX;
    for (name, key_pem) in keys {
        let chain = resp
            .certs
            .get(name)
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
        let key = KeyPair::from_pem(key_pem).map_err(|e| AgentError::BadAnswer(format!("the {name} key: {e}")))?;
        if parsed.tbs_certificate.subject_pki.raw != key.subject_public_key_info() {
            return Err(AgentError::BadAnswer(format!(
                "the {name} certificate is not for this node's key"
            )));
        }
        not_after = not_after.min(parsed.validity().not_after.timestamp().max(0) as u64);
        // The CA to trust the other side with: the profile's own, or (a worker's
        // etcd-lease) the servers' CA, which comes among the answer's bundles.
        let trust = match cairn_keys::profiles::server_ca(name) {
            None => ca.text.clone(),
            Some(server_ca) => {
                let pem = resp.bundles.get(server_ca).ok_or_else(|| {
                    AgentError::BadAnswer(format!(
                        "no {server_ca} CA to check the {name} certificate's servers by"
                    ))
                })?;
                match cairn_keys::pem::blocks(pem, "CERTIFICATE") {
                    Ok(b) if b.len() == 1 => pem.clone(),
                    _ => {
                        return Err(AgentError::BadAnswer(format!(
                            "the {server_ca} CA is not one certificate"
                        )))
                    }
                }
            }
        };
        files.push((name.clone(), chain.clone(), key_pem.clone(), trust));
    }
    let generation = next_generation(root)?;
    for (name, chain, key, ca) in &files {
        let dir = at(root, PKI_DIR).join(name).join(format!("gen-{generation}"));
        let owner = key_owner(root, name);
        write_atomic(&dir.join("key.pem"), key.as_bytes(), 0o600, owner).map_err(io("writing", &dir))?;
        write_atomic(&dir.join("cert.pem"), chain.as_bytes(), 0o644, None).map_err(io("writing", &dir))?;
        write_atomic(&dir.join("bundle.pem"), ca.as_bytes(), 0o644, None).map_err(io("writing", &dir))?;
        write_atomic(&dir.join("both.pem"), format!("{chain}{key}").as_bytes(), 0o600, owner)
            .map_err(io("writing", &dir))?;
    }
    for (name, ..) in &files {
        let dir = at(root, PKI_DIR).join(name);
        switch_current(&dir, generation)?;
        prune(&dir, generation);
    }
    Ok(Installed {
        node: resp.node.clone(),
        profiles: files.into_iter().map(|f| f.0).collect(),
        generation: resp.generation,
        dir_generation: generation,
        not_after,
        server_time: resp.server_time,
    })
}

/// Remove generations older than the one before `current`.
fn prune(dir: &Path, current: u32) {
    for g in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = g.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_prefix("gen-").and_then(|n| n.parse::<u32>().ok()) {
            if n + 1 < current {
                let _ = fs::remove_dir_all(g.path());
            }
        }
    }
}

/// Where to enroll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// sha256 of the keyserver CA's certificate.
    pub ca_fingerprint: [u8; 32],
}

/// What a node enrolls with.
#[derive(Debug, Clone, Copy)]
pub struct Enrollment<'a> {
    /// The keyserver.
    pub server: &'a Server,
    /// The bootstrap token.
    pub token: &'a str,
    /// The file it came from, removed once the certificates are written.
    pub token_file: Option<&'a Path>,
    /// The node's name.
    pub hostname: &'a str,
    /// Its role.
    pub role: Role,
}

/// Enroll as `e` says. `root` is the file system root (`/` on a node; a directory in
/// tests). Records the keyserver and generation in [`state::AgentState`].
pub fn enroll(root: &Path, e: &Enrollment, timeout: Duration, clock: &Clock) -> Result<Installed, AgentError> {
    let Enrollment {
        server,
        token,
        token_file,
        hostname,
        role,
    } = *e;
    let pending = pending_enrollment(root, token, role)?;
    let req = EnrollRequest {
        token: token.to_string(),
        role: role.as_str().to_string(),
        csrs: pending.csrs.clone(),
        ssh_host_key: ssh_host_key(root),
        wireguard_key: crate::mesh::public_key(root),
    };
    let ks = client::Keyserver::new(
        &server.host,
        server.port,
        server.ca_fingerprint,
        timeout,
        clock.clone(),
        None,
    )?;
    let body = serde_json::to_vec(&req).expect("a request always serializes");
    let (status, body) = ks.post("/v1/enroll", &body)?;
    let resp = match answer(status, &body) {
        Ok(r) => r,
        Err(e @ AgentError::Refused { retry: false, .. }) => {
            // Nothing will change the answer to these keys; a new token gets new ones.
            let _ = fs::remove_file(at(root, ENROLLING));
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let installed = install(root, &resp, &pending.keys, hostname, role)?;
    install_ssh(root, &resp)?;
    state::AgentState {
        node: resp.node.clone(),
        role,
        server: server.clone().into(),
        generation: resp.generation,
        enrolled_at: clock.now(),
        renewed_at: None,
        last_error: None,
    }
    .save(root)?;
    if let Some(t) = token_file {
        match fs::remove_file(t) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", t)(e)),
        }
    }
    let _ = fs::remove_file(at(root, ENROLLING));
    Ok(installed)
}

/// The keys and requests of an enrollment in flight (0600), kept until it succeeds so
/// that a try whose answer was lost asks again with the same keys: the keyserver gives the
/// same node the same answer, where new keys would look like a stolen token.
pub const ENROLLING: &str = "/var/lib/cairn/key-agent/enrolling.json";

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingEnrollment {
    /// sha256 of the token the keys were made for (hex); another token gets new keys.
    token_sha256: String,
    role: Role,
    keys: ByProfile,
    csrs: ByProfile,
}

fn pending_enrollment(root: &Path, token: &str, role: Role) -> Result<PendingEnrollment, AgentError> {
    use sha2::{Digest, Sha256};
    let path = at(root, ENROLLING);
    let token_sha256 = hex::encode(Sha256::digest(token.trim().as_bytes()));
    let names = profile_names(role);
    if let Some(p) = fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<PendingEnrollment>(&t).ok())
    {
        let covers = |m: &ByProfile| m.len() == names.len() && names.iter().all(|n| m.contains_key(*n));
        if p.token_sha256 == token_sha256 && p.role == role && covers(&p.keys) && covers(&p.csrs) {
            return Ok(p);
        }
    }
    let (keys, csrs) = keys_and_csrs(&names)?;
    let p = PendingEnrollment {
        token_sha256,
        role,
        keys,
        csrs,
    };
    let text = serde_json::to_string(&p).expect("a pending enrollment always serializes");
    write_atomic(&path, text.as_bytes(), 0o600, None).map_err(io("writing", &path))?;
    Ok(p)
}

/// The file whose modification time is the image's build time: systemd sets the clock no
/// earlier than it at boot (`/usr/lib/clock-epoch`), and no certificate can be checked on a
/// clock before it.
pub const CLOCK_EPOCH: &str = "/usr/lib/clock-epoch";

/// The image's build time, when the image says it.
pub fn clock_floor(root: &Path) -> Option<u64> {
    let m = fs::metadata(at(root, CLOCK_EPOCH)).ok()?;
    let t = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(t.as_secs())
}

/// A console line when this node's clock and the keyserver's differ by more than a minute.
pub fn skew_line(node_now: u64, server_time: u64) -> Option<String> {
    let skew = node_now as i64 - server_time as i64;
    (skew.abs() > 60).then(|| {
        format!(
            "cairn: key agent: this node's clock ({}) is {} s {} the keyserver's ({}); certificates are backdated 5 minutes, so fix the clock that is wrong (NTP) before the difference grows",
            cairn_signing::time::format_utc(node_now),
            skew.abs(),
            if skew > 0 { "ahead of" } else { "behind" },
            cairn_signing::time::format_utc(server_time)
        )
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

/// A profile's current certificate, as the node holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// Its validity.
    pub validity: cairn_keys::schedule::Validity,
    /// Its serial (hex).
    pub serial: String,
}

/// Read `profile`'s current certificate and check it is for the key beside it.
pub fn current(root: &Path, profile: &str) -> Result<Current, String> {
    let dir = at(root, PKI_DIR).join(profile).join("current");
    let chain =
        fs::read_to_string(dir.join("cert.pem")).map_err(|e| format!("{}: {e}", dir.join("cert.pem").display()))?;
    let key = fs::read_to_string(dir.join("key.pem")).map_err(|e| format!("{}: {e}", dir.join("key.pem").display()))?;
    let certs = cairn_keys::pem::blocks(&chain, "CERTIFICATE").map_err(|why| format!("{profile}: {why}"))?;
    let leaf = certs.first().ok_or_else(|| format!("{profile}: no certificate"))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&leaf.der).map_err(|e| format!("{profile}: not a certificate ({e})"))?;
    let key = KeyPair::from_pem(&key).map_err(|e| format!("{profile}: its key: {e}"))?;
    if parsed.tbs_certificate.subject_pki.raw != key.subject_public_key_info() {
        return Err(format!("{profile}: the certificate is not for the key beside it"));
    }
    Ok(Current {
        validity: cairn_keys::schedule::Validity {
            not_before: parsed.validity().not_before.timestamp().max(0) as u64,
            not_after: parsed.validity().not_after.timestamp().max(0) as u64,
        },
        serial: hex::encode(parsed.raw_serial()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker's real enrollment answer from a keyserver in `dir`, and the keys it is for.
    fn worker_answer(dir: &Path) -> (EnrollResponse, ByProfile) {
        let now = cairn_signing::time::now();
        cairn_keyserver::ca::init(&dir.join("ks"), "test", now).unwrap();
        let ks = cairn_keyserver::Keyserver::open(&dir.join("ks")).unwrap();
        let (token, _) = cairn_keyserver::tokens::create(&ks, "w-1", Role::Worker, 3600, "alice", now).unwrap();
        let (keys, csrs) = keys_and_csrs(&profile_names(Role::Worker)).unwrap();
        let req = EnrollRequest {
            ssh_host_key: None,
            wireguard_key: None,
            token: token.to_string(),
            role: "worker".into(),
            csrs,
        };
        let resp = cairn_keyserver::enroll::enroll(&ks, &req, None, now).unwrap().unwrap();
        (resp, keys)
    }

    #[test]
    fn the_servers_ca_of_an_answer_is_installed_only_as_one_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (resp, keys) = worker_answer(dir.path());
        let peer_ca = resp.bundles["etcd-peer"].clone();
        let two = format!("{peer_ca}{}", resp.bundles["etcd-client"]);
        let root = dir.path().join("node");
        for (bundle, why) in [
            (None, "no etcd-peer CA to check the etcd-lease certificate's servers by"),
            (Some(two.as_str()), "the etcd-peer CA is not one certificate"),
            (
                Some("-----BEGIN CERTIFICATE-----\n\0\n-----END CERTIFICATE-----\n"),
                "the etcd-peer CA is not one certificate",
            ),
            (Some(""), "the etcd-peer CA is not one certificate"),
        ] {
            let mut bad = resp.clone();
            match bundle {
                None => bad.bundles.remove("etcd-peer"),
                Some(b) => bad.bundles.insert("etcd-peer".into(), b.into()),
            };
            let e = install(&root, &bad, &keys, "w-1", Role::Worker).unwrap_err();
            assert!(e.to_string().contains(why), "{why}: {e}");
            assert!(!root.join("var/lib/cairn/pki").exists(), "nothing written for {why}");
        }
        install(&root, &resp, &keys, "w-1", Role::Worker).unwrap();
        let pki = root.join("var/lib/cairn/pki");
        assert_eq!(
            fs::read_to_string(pki.join("etcd-lease/current/bundle.pem")).unwrap(),
            peer_ca
        );
        // The other profiles keep their own CA as their bundle.
        assert_eq!(
            fs::read_to_string(pki.join("kubelet-client/current/bundle.pem")).unwrap(),
            resp.bundles["kubernetes"]
        );
    }
}
