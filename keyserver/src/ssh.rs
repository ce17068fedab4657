//! SSH certificates from the keyserver's SSH CAs (ed25519): host certificates for nodes'
//! host keys, with the names the keyserver's record gives the node, so admins trust every
//! node with one `@cert-authority` line; and short-lived user certificates for admins
//! (`cairn ssh-cert`), which every node's sshd trusts through `TrustedUserCAKeys`.

use cairn_keys::audit::{Outcome, Record};
use cairn_keys::profiles::NodeRecord;
use cairn_keys::ssh::{self, Cert, CertType};

use crate::ca::BACKDATE;
use crate::state::Keyserver;
use crate::tokens::Refusal;
use crate::KeyserverError;

/// How long a host certificate is valid (renewed with the node's TLS certificates).
pub const HOST_LIFETIME: u64 = 30 * 86_400;
/// How long a user certificate is valid unless asked otherwise.
pub const USER_DEFAULT: u64 = 8 * 3600;
/// The longest a user certificate may be valid.
pub const USER_MAX: u64 = 7 * 86_400;

/// An SSH CA: its key and public line.
pub struct SshCa {
    key: cairn_signing::PrivateKey,
    line: String,
}

impl std::fmt::Debug for SshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SshCa({})", self.line)
    }
}

/// SSH CA `name` of `ks`, read from disk the first time.
fn ca(ks: &Keyserver, name: &str) -> Result<std::sync::Arc<SshCa>, KeyserverError> {
    let mut cache = ks.ssh_cas.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = cache.get(name) {
        return Ok(c.clone());
    }
    let dir = ks.dir().join("ca").join(name);
    let key = cairn_signing::PrivateKey::read(&dir.join("key.pem")).map_err(|e| KeyserverError::Certificate {
        what: format!("the {name} CA"),
        why: e.to_string(),
    })?;
    let line = std::fs::read_to_string(dir.join("key.pub"))
        .map_err(crate::io_err("reading", dir.join("key.pub")))?
        .trim()
        .to_string();
    let c = std::sync::Arc::new(SshCa { key, line });
    cache.insert(name.to_string(), c.clone());
    Ok(c)
}

fn random_u64() -> u64 {
    rand_core::RngCore::next_u64(&mut rand_core::OsRng)
}

fn sign(ks: &Keyserver, name: &str, cert: &Cert, comment: &str) -> Result<String, KeyserverError> {
    let key = &ca(ks, name)?.key;
    let mut nonce = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let tbs = ssh::to_be_signed(cert, &nonce, key.public().as_bytes());
    let signature = key.sign(&tbs);
    Ok(ssh::finish(tbs, &signature, comment))
}

/// Check a host key line from a request.
pub fn check_host_key(line: &str) -> Result<[u8; 32], Refusal> {
    if line.len() > 1024 {
        return Err(Refusal {
            code: "bad_request",
            message: "the SSH host key line is longer than 1 KiB".into(),
        });
    }
    ssh::parse_public_line(line).map_err(|why| Refusal {
        code: "bad_request",
        message: format!("the SSH host key: {why}"),
    })
}

/// A host certificate for `key`, for the node `record` describes: principals its name
/// and every address the record has, valid from `now` (backdated) for [`HOST_LIFETIME`].
pub fn sign_host(ks: &Keyserver, record: &NodeRecord, key: [u8; 32], now: u64) -> Result<String, KeyserverError> {
    let mut principals = vec![record.name.clone()];
    for ip in record
        .addresses
        .iter()
        .chain(&record.etcd_client_ips)
        .chain(&record.etcd_peer_ips)
    {
        let s = ip.to_string();
        if !principals.contains(&s) {
            principals.push(s);
        }
    }
    let serial = random_u64();
    let cert = Cert {
        key,
        serial,
        cert_type: CertType::Host,
        key_id: format!("cairn-host:{}:{serial:016x}", record.name),
        principals,
        valid_after: now - BACKDATE,
        valid_before: now + HOST_LIFETIME,
        extensions: vec![],
    };
    sign(ks, "ssh-host", &cert, &record.name)
}

/// The SSH user CA's public key line.
pub fn user_ca(ks: &Keyserver) -> Result<String, KeyserverError> {
    Ok(ca(ks, "ssh-user")?.line.clone())
}

/// `cairn ssh-cert`: a user certificate for the public key `line`, for `principals`, valid
/// `ttl` seconds from `now` (backdated), made by `admin`. Recorded in the audit log.
pub fn sign_user(
    ks: &Keyserver,
    line: &str,
    principals: &[String],
    ttl: u64,
    admin: &str,
    now: u64,
) -> Result<String, KeyserverError> {
    let invalid = |message: String, hint: &str| KeyserverError::Invalid {
        message,
        hint: hint.into(),
    };
    let key = ssh::parse_public_line(line).map_err(|why| invalid(why, "give the .pub file of an ed25519 key"))?;
    if !(60..=USER_MAX).contains(&ttl) {
        return Err(invalid(
            format!("a user certificate lives from a minute to 7 days, not {ttl} s"),
            "e.g. --ttl 8h (the default)",
        ));
    }
    if principals.is_empty()
        || principals.iter().any(|p| {
            p.is_empty() || p.len() > 64 || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
    {
        return Err(invalid(
            format!("{principals:?} are not user names"),
            "--principal root (the account on the nodes), repeatable",
        ));
    }
    let serial = random_u64();
    let cert = Cert {
        key,
        serial,
        cert_type: CertType::User,
        key_id: format!("cairn-admin:{admin}:{serial:016x}"),
        principals: principals.to_vec(),
        valid_after: now - BACKDATE,
        valid_before: now + ttl,
        extensions: vec!["permit-pty".into()],
    };
    let lock = ks.lock()?;
    let tail = ks.audit_tail(&lock)?;
    let line = sign(ks, "ssh-user", &cert, &format!("cairn-admin:{admin}"))?;
    let mut r = Record::new(
        now,
        &ks.replica,
        &format!("admin:{admin}"),
        "ssh-user-cert",
        Outcome::Ok,
    );
    r.serials = vec![format!("{serial:016x}")];
    tail.append(&lock, r)?;
    Ok(line)
}
