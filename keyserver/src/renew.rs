//! Renewal: an enrolled node trades its identity certificate (the TLS client certificate of
//! the connection) and new signing requests for new certificates.
//!
//! The keyserver keeps, per node, the generation of the certificates it last issued and the
//! serial of the identity certificate that came with them (`STATE/issued/<node>.json`). A
//! renewal must show exactly that identity and generation: an older identity or generation
//! means two machines hold the node's identity key (a copied disk, a stolen key), so the
//! node is locked, the audit log gets an alert, and nothing more is issued to it until an
//! admin unlocks it (`cairn keyserver unlock`) or gives it a new token.
//!
//! A node whose answer was lost asks again with the same identity, generation and requests
//! (the agent keeps its new keys until an answer is installed) and gets the answer it missed.
//! An identity certificate that has expired still renews for [`IDENTITY_GRACE`] after its
//! end, so a node powered off for weeks comes back by itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cairn_keys::audit::{Outcome, Record};
use cairn_keys::profiles::{profile_names, Role};
use cairn_keys::wire::{EnrollResponse, RenewRequest};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::issue::{check_csr, issue_set};
use crate::state::Keyserver;
use crate::tokens::Refusal;
use crate::{registry, KeyserverError};

/// How long after its end an identity certificate still renews.
pub const IDENTITY_GRACE: u64 = 90 * 86_400;

/// Who the connection's client certificate says is asking (already checked by TLS to chain
/// to the keyserver CA, at its own end time when it has expired).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The node (the certificate's CN).
    pub node: String,
    /// Its role (the certificate's O, `cairn:<role>`).
    pub role: Role,
    /// The certificate's serial (hex).
    pub serial: String,
    /// Its end (Unix seconds).
    pub not_after: u64,
}

impl Identity {
    /// The node an identity certificate (DER) names: CN the node, O `cairn:<role>`; `None`
    /// for any other certificate.
    pub fn from_der(der: &[u8]) -> Option<Identity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let node = subject.iter_common_name().next()?.as_str().ok()?.to_string();
        let role = subject
            .iter_organization()
            .next()?
            .as_str()
            .ok()?
            .strip_prefix("cairn:")
            .and_then(Role::parse)?;
        crate::check_node_name(&node).ok()?;
        Some(Identity {
            node,
            role,
            serial: hex::encode(cert.raw_serial()),
            not_after: cert.validity().not_after.timestamp().max(0) as u64,
        })
    }
}

/// `STATE/issued/<node>.json`: what the keyserver last issued to a node, and its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issued {
    /// The generation of the node's current certificates.
    pub generation: u64,
    /// Serial (hex) of the identity certificate that may renew them.
    pub identity_serial: String,
    /// The identity and generation before the last renewal, and the sha256 of that
    /// renewal's request: the one request that gets the kept answer again.
    #[serde(default)]
    pub previous: Option<Previous>,
    /// Why the node may not renew, when it may not.
    #[serde(default)]
    pub locked: Option<String>,
    /// The answer to the last renewal, for the node whose answer was lost.
    #[serde(default)]
    pub answer: Option<EnrollResponse>,
    /// The node's WireGuard public key (base64), as it last told it: listed to the other
    /// nodes by `GET /v1/peers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_key: Option<String>,
}

/// The state before the last renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Previous {
    /// The identity serial that asked.
    pub identity_serial: String,
    /// The generation it held.
    pub generation: u64,
    /// sha256 (hex) of the request body.
    pub request_sha256: String,
}

pub(crate) fn issued_path(node: &str) -> PathBuf {
    Path::new("issued").join(format!("{node}.json"))
}

fn refusal(code: &'static str, message: String) -> Refusal {
    Refusal { code, message }
}

/// What the keyserver last issued to `node`.
pub fn issued(ks: &Keyserver, node: &str) -> Result<Option<Issued>, KeyserverError> {
    crate::check_node_name(node)?;
    ks.read(&issued_path(node))
}

/// Handle one renewal from `identity` (asking from `client`) at `now`; `body` is the request
/// as sent, whose hash recognises a retry.
pub fn renew(
    ks: &Keyserver,
    identity: &Identity,
    req: &RenewRequest,
    body: &[u8],
    client: Option<&str>,
    now: u64,
) -> Result<Result<EnrollResponse, Refusal>, KeyserverError> {
    if now > identity.not_after.saturating_add(IDENTITY_GRACE) {
        return Ok(Err(refusal(
            "identity_expired_beyond_grace",
            format!(
                "the identity certificate of {} ended at {}, more than 90 days ago; the node needs a new token (`cairn token create --node {}`)",
                identity.node, identity.not_after, identity.node
            ),
        )));
    }
    if req.csrs.is_empty() {
        return Ok(Err(refusal(
            "bad_request",
            "the renewal asks for no certificate".into(),
        )));
    }
    let wanted = profile_names(identity.role);
    let mut csrs = BTreeMap::new();
    for (name, pem) in &req.csrs {
        let Some(profile) = wanted.iter().find(|p| **p == name.as_str()) else {
            return Ok(Err(refusal(
                "bad_request",
                format!(
                    "a {} node has no certificate '{}'",
                    identity.role.as_str(),
                    name.escape_debug()
                ),
            )));
        };
        match check_csr(profile, pem) {
            Ok(c) => {
                csrs.insert(*profile, c);
            }
            Err(r) => return Ok(Err(r)),
        }
    }
    let host_key = match req.ssh_host_key.as_deref().map(crate::ssh::check_host_key).transpose() {
        Ok(k) => k,
        Err(r) => return Ok(Err(r)),
    };
    if let Some(Err(why)) = req.wireguard_key.as_deref().map(cairn_keys::mesh::check_public_key) {
        return Ok(Err(refusal("bad_request", format!("wireguard_key: {why}"))));
    }
    let request_sha256 = hex::encode(Sha256::digest(body));

    let lock = ks.lock()?;
    let tail = ks.audit_tail(&lock)?;
    let mut r = Record::new(
        now,
        &ks.replica,
        &format!("node:{}:{}", identity.node, identity.serial),
        "renew",
        Outcome::Ok,
    );
    r.node = Some(identity.node.clone());
    r.client = client.map(str::to_string);
    let asked = Asked {
        generation: req.generation,
        csrs: &csrs,
        host_key,
        wireguard_key: req.wireguard_key.clone(),
        request_sha256,
    };
    let decision = decide(ks, &lock, identity, asked, now)?;
    let result = match decision {
        Decision::Answer {
            response,
            serials,
            again,
        } => {
            r.serials = serials;
            if again {
                r.code = Some("again".into());
            }
            Ok(response)
        }
        Decision::Refuse(outcome, refusal) => {
            r.result = outcome;
            r.code = Some(refusal.code.into());
            Err(refusal)
        }
    };
    tail.append(&lock, r)?;
    Ok(result)
}

enum Decision {
    Answer {
        response: EnrollResponse,
        serials: Vec<String>,
        again: bool,
    },
    Refuse(Outcome, Refusal),
}

/// A renewal request, checked.
struct Asked<'a> {
    generation: u64,
    csrs: &'a BTreeMap<&'a str, crate::issue::Csr>,
    host_key: Option<[u8; 32]>,
    wireguard_key: Option<String>,
    request_sha256: String,
}

fn decide(
    ks: &Keyserver,
    lock: &crate::state::Lock,
    identity: &Identity,
    asked: Asked,
    now: u64,
) -> Result<Decision, KeyserverError> {
    let Asked {
        generation: asked_generation,
        csrs,
        host_key,
        wireguard_key,
        request_sha256,
    } = asked;
    let refuse = |outcome, code, message| Ok(Decision::Refuse(outcome, refusal(code, message)));
    let Some(mut state) = ks.read::<Issued>(&issued_path(&identity.node))? else {
        return refuse(
            Outcome::Refused,
            "node_unknown",
            format!("{} never enrolled here", identity.node),
        );
    };
    if let Some(why) = &state.locked {
        return refuse(
            Outcome::Refused,
            "node_locked",
            format!(
                "{} is locked ({why}); an admin unlocks it with `cairn keyserver unlock STATE {}` or gives it a new token",
                identity.node, identity.node
            ),
        );
    }
    if identity.serial != state.identity_serial || asked_generation != state.generation {
        let retry = state.previous.as_ref().is_some_and(|p| {
            p.identity_serial == identity.serial
                && p.generation == asked_generation
                && p.request_sha256 == request_sha256
        });
        if retry {
            if let Some(response) = state.answer.take() {
                return Ok(Decision::Answer {
                    response,
                    serials: vec![],
                    again: true,
                });
            }
        }
        let why = format!(
            "generation {} from identity {} while generation {} with identity {} is current: two machines hold this node's key",
            asked_generation, identity.serial, state.generation, state.identity_serial
        );
        state.locked = Some(format!("at {now}: {why}"));
        ks.write(lock, &issued_path(&identity.node), &state, 0o644)?;
        return refuse(
            Outcome::Alert,
            "generation_mismatch",
            format!("{}: {why}; it is now locked", identity.node),
        );
    }
    let record =
        registry::get(ks, &identity.node)?.unwrap_or_else(|| registry::unregistered(&identity.node, identity.role));
    if record.role != identity.role {
        return refuse(
            Outcome::Refused,
            "role_mismatch",
            format!(
                "the keyserver's record of {} says it is a {} node",
                identity.node,
                record.role.as_str()
            ),
        );
    }
    let set = issue_set(ks, &record, csrs, now)?;
    let generation = state.generation + 1;
    let ssh_host_cert = host_key
        .map(|k| crate::ssh::sign_host(ks, &record, k, now))
        .transpose()?;
    let response = EnrollResponse {
        node: identity.node.clone(),
        role: record.role,
        generation,
        certs: set.certs,
        bundles: set.bundles,
        server_time: now,
        ssh_host_cert,
        ssh_user_ca: Some(crate::ssh::user_ca(ks)?),
    };
    let next = Issued {
        generation,
        identity_serial: set.identity_serial.unwrap_or_else(|| state.identity_serial.clone()),
        previous: Some(Previous {
            identity_serial: identity.serial.clone(),
            generation: state.generation,
            request_sha256,
        }),
        locked: None,
        answer: Some(response.clone()),
        // A node that stops sending its key (its WireGuard interface removed) keeps the
        // last one listed until it enrolls again.
        wireguard_key: wireguard_key.or(state.wireguard_key.clone()),
    };
    // One record, one write: the generation and the answer move together.
    ks.write(lock, &issued_path(&identity.node), &next, 0o644)?;
    Ok(Decision::Answer {
        response,
        serials: set.serials,
        again: false,
    })
}

/// `cairn keyserver unlock`: let a locked node renew again, with the identity and
/// generation it holds now (the admin has made sure the other copy is gone).
pub fn unlock(ks: &Keyserver, node: &str, admin: &str, now: u64) -> Result<Issued, KeyserverError> {
    crate::check_node_name(node)?;
    let lock = ks.lock()?;
    let tail = ks.audit_tail(&lock)?;
    let Some(mut state) = ks.read::<Issued>(&issued_path(node))? else {
        return Err(KeyserverError::Invalid {
            message: format!("{node} never enrolled here"),
            hint: "`cairn token create --node NAME --role ROLE` makes a token for a new node".into(),
        });
    };
    if state.locked.is_none() {
        return Err(KeyserverError::Invalid {
            message: format!("{node} is not locked"),
            hint: "nothing to do".into(),
        });
    }
    state.locked = None;
    ks.write(&lock, &issued_path(node), &state, 0o644)?;
    let mut r = Record::new(now, &ks.replica, &format!("admin:{admin}"), "node-unlock", Outcome::Ok);
    r.node = Some(node.to_string());
    tail.append(&lock, r)?;
    Ok(state)
}
