//! The cluster's certificate authorities, made once by `cairn keyserver init`.
//!
//! | CA | key | signs | trusted by |
//! |---|---|---|---|
//! | `keyserver` | P-256 | the keyserver's serving certificate and node identities | agents, by the fingerprint in node.toml |
//! | `etcd-peer` | P-256 | etcd server and peer certificates | etcd peers, etcd clients |
//! | `etcd-client` | P-256 | etcd client certificates | etcd |
//! | `kubernetes` | P-256 | kubelet client and serving certificates | the API server, kubelets |
//! | `ssh-host` | ed25519 | SSH host certificates | admins' `known_hosts` (`@cert-authority`) |
//! | `ssh-user` | ed25519 | admins' SSH user certificates | sshd (`TrustedUserCAKeys`) |
//!
//! Separate etcd peer and client CAs keep a peer certificate (which carries clientAuth, as
//! etcd needs) from acting as an etcd client. X.509 CAs live ten years, with a random
//! 128-bit serial and a path length of zero; rotation replaces them (design §4.10).

use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};
use sha2::{Digest, Sha256};

use crate::state::{Keyserver, Lock};
use crate::{cert_error, io_err, KeyserverError};

/// The X.509 CAs, by directory name.
pub const X509: [&str; 4] = ["keyserver", "etcd-peer", "etcd-client", "kubernetes"];
/// The SSH CAs, by directory name.
pub const SSH: [&str; 2] = ["ssh-host", "ssh-user"];
/// How long a CA is valid.
pub const CA_LIFETIME: u64 = 10 * 365 * 86_400;
/// How far back a certificate's `notBefore` is set, for clocks a little behind.
pub const BACKDATE: u64 = 5 * 60;

/// What `init` made, for the admin to note.
#[derive(Debug, Clone)]
pub struct Initialized {
    /// The state directory.
    pub dir: PathBuf,
    /// `sha256:<hex>` of the keyserver CA's certificate (DER): node.toml's `ca-fingerprint`.
    pub keyserver_fingerprint: String,
    /// The SSH host CA's public key line, for `@cert-authority` in `known_hosts`.
    pub ssh_host_ca: String,
    /// The SSH user CA's public key line, for sshd's `TrustedUserCAKeys`.
    pub ssh_user_ca: String,
}

fn time_at(unix: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix as i64).expect("a Unix time in range")
}

/// A random positive 128-bit serial number.
pub(crate) fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and a full 16 bytes long
    SerialNumber::from_slice(&bytes)
}

/// A self-signed CA certificate and its key, as PEM.
fn x509_ca(cluster: &str, name: &str, now: u64) -> Result<(String, String), KeyserverError> {
    let what = format!("the {name} CA");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(cert_error(&what))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error(&what))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, format!("cairn:{cluster}"));
    dn.push(DnType::CommonName, format!("cairn {cluster} {name} CA"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = time_at(now - BACKDATE);
    params.not_after = time_at(now + CA_LIFETIME);
    params.serial_number = Some(serial());
    let cert = params.self_signed(&key).map_err(cert_error(&what))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The OpenSSH public key line of an ed25519 key.
pub fn ssh_public_line(public: &[u8; 32], comment: &str) -> String {
    let mut blob = Vec::with_capacity(51);
    for field in [&b"ssh-ed25519"[..], &public[..]] {
        blob.extend_from_slice(&(field.len() as u32).to_be_bytes());
        blob.extend_from_slice(field);
    }
    format!(
        "ssh-ed25519 {} {comment}",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

/// `sha256:<hex>` of a PEM certificate's DER bytes.
pub fn fingerprint(cert_pem: &str) -> Result<String, String> {
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(pem_der(cert_pem)?))))
}

/// The DER bytes of a PEM certificate.
pub fn pem_der(cert_pem: &str) -> Result<Vec<u8>, String> {
    cairn_keys::pem::blocks(cert_pem, "CERTIFICATE")?
        .into_iter()
        .next()
        .map(|b| b.der)
        .ok_or_else(|| "no certificate".to_string())
}

/// `cairn keyserver init`: make the state directory and every CA in it. Refuses a directory
/// that already holds state; a second init racing this one waits for the lock and refuses.
pub fn init(dir: &Path, cluster: &str, now: u64) -> Result<Initialized, KeyserverError> {
    crate::check_node_name(cluster).map_err(|_| KeyserverError::Invalid {
        message: format!("'{}' is not a cluster name", cluster.escape_debug()),
        hint: "letters, digits and '-', like a host name (e.g. prod)".into(),
    })?;
    let (ks, lock) = Keyserver::create(dir, cluster, now)?;
    let out = make_cas(&ks, &lock, cluster, now);
    if out.is_err() {
        // Nothing half-made stays behind: the CAs are written before the settings, and
        // without the settings the directory is not a keyserver.
        let _ = std::fs::remove_dir_all(dir.join("ca"));
        return out;
    }
    let tail = ks.audit_tail(&lock)?;
    ks.write(&lock, Path::new("keyserver.json"), &ks.settings, 0o644)?;
    let r = cairn_keys::audit::Record::new(now, &ks.replica, "admin", "init", cairn_keys::audit::Outcome::Ok);
    tail.append(&lock, r)?;
    out
}

fn make_cas(ks: &Keyserver, lock: &Lock, cluster: &str, now: u64) -> Result<Initialized, KeyserverError> {
    let mut keyserver_fingerprint = String::new();
    for name in X509 {
        let (cert, key) = x509_ca(cluster, name, now)?;
        let base = Path::new("ca").join(name);
        ks.write_bytes(lock, &base.join("key.pem"), key.as_bytes(), 0o600)?;
        ks.write_bytes(lock, &base.join("cert.pem"), cert.as_bytes(), 0o644)?;
        if name == "keyserver" {
            keyserver_fingerprint = fingerprint(&cert).map_err(|why| KeyserverError::Certificate {
                what: "the keyserver CA".into(),
                why,
            })?;
        }
    }
    let mut lines = Vec::new();
    for name in SSH {
        let key = cairn_signing::PrivateKey::generate();
        let line = ssh_public_line(key.public().as_bytes(), &format!("cairn-{cluster}-{name}-ca"));
        let base = Path::new("ca").join(name);
        ks.write_bytes(lock, &base.join("key.pem"), key.to_pem().as_bytes(), 0o600)?;
        ks.write_bytes(lock, &base.join("key.pub"), format!("{line}\n").as_bytes(), 0o644)?;
        lines.push(line);
    }
    Ok(Initialized {
        dir: ks.dir().to_owned(),
        keyserver_fingerprint,
        ssh_host_ca: lines[0].clone(),
        ssh_user_ca: lines[1].clone(),
    })
}

/// The PEM certificate of CA `name`.
pub fn certificate(ks: &Keyserver, name: &str) -> Result<String, KeyserverError> {
    let path = ks.dir().join("ca").join(name).join("cert.pem");
    std::fs::read_to_string(&path).map_err(io_err("reading", path))
}
