//! Enrollment: a new node trades its one-time token and one signing request per certificate
//! for its certificates, in one round trip.
//!
//! Everything the request carries is checked before the token is claimed (the token's
//! form, the role, one valid P-256 request for each of the role's profiles and no other),
//! so a malformed request never uses up a token. The names in the certificates come from
//! the keyserver's record of the node. The answer is kept (`STATE/enrolled/<token id>.json`)
//! so the same node asking again with the same identity key gets the same answer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cairn_keys::audit::{Outcome, Record};
use cairn_keys::profiles::{profile_names, Role};
use cairn_keys::wire::{EnrollRequest, EnrollResponse};
use cairn_keys::Token;

use crate::issue::{check_csr, issue_set};
use crate::renew::{issued_path, Issued};
use crate::state::Keyserver;
use crate::tokens::{claim, Claim, Refusal};
use crate::{registry, KeyserverError};

fn answer_path(token_id: &str) -> PathBuf {
    Path::new("enrolled").join(format!("{token_id}.json"))
}

fn refusal(code: &'static str, message: String) -> Refusal {
    Refusal { code, message }
}

/// Handle one enrollment request from `client` at `now`.
pub fn enroll(
    ks: &Keyserver,
    req: &EnrollRequest,
    client: Option<&str>,
    now: u64,
) -> Result<Result<EnrollResponse, Refusal>, KeyserverError> {
    let token = match Token::parse(&req.token) {
        Ok(t) => t,
        Err(e) => return Ok(Err(refusal("token_invalid", e.to_string()))),
    };
    let Some(role) = Role::parse(&req.role) else {
        return Ok(Err(refusal(
            "bad_request",
            format!("'{}' is not a role", req.role.escape_debug()),
        )));
    };
    let wanted = profile_names(role);
    let extra: Vec<&String> = req.csrs.keys().filter(|k| !wanted.contains(&k.as_str())).collect();
    if let Some(k) = extra.first() {
        return Ok(Err(refusal(
            "bad_request",
            format!("a {} node has no certificate '{}'", role.as_str(), k.escape_debug()),
        )));
    }
    let mut csrs = BTreeMap::new();
    for name in &wanted {
        let Some(pem) = req.csrs.get(*name) else {
            return Ok(Err(refusal(
                "bad_csr",
                format!("no request for the {name} certificate"),
            )));
        };
        match check_csr(name, pem) {
            Ok(c) => {
                csrs.insert(*name, c);
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
    let identity = csrs["identity"].spki_sha256;
    let claimed = match claim(ks, &token, role, &identity, client, now)? {
        Ok(c) => c,
        Err(r) => return Ok(Err(r)),
    };
    let node = match &claimed {
        Claim::First { node, .. } | Claim::Again { node, .. } => node.clone(),
    };
    if matches!(claimed, Claim::Again { .. }) {
        if let Some(kept) = ks.read::<EnrollResponse>(&answer_path(token.id()))? {
            return Ok(Ok(kept));
        }
        // Claimed, but the answer was never kept (the keyserver stopped in between):
        // issue now, as the first time would have.
    }
    let record = registry::get(ks, &node)?.unwrap_or_else(|| registry::unregistered(&node, role));
    if profile_names(record.role) != wanted {
        return Ok(Err(refusal(
            "role_mismatch",
            format!(
                "the keyserver's record of {node} says it is a {} node",
                record.role.as_str()
            ),
        )));
    }
    let set = issue_set(ks, &record, &csrs, now)?;
    let lock = ks.lock()?;
    let tail = ks.audit_tail(&lock)?;
    // A node enrolled again (reinstalled, with a new token) starts the generation after the
    // one it had: a copy of its old disk can no longer renew.
    let before: Option<Issued> = ks.read(&issued_path(&node))?;
    let generation = before.map_or(1, |b| b.generation + 1);
    let ssh_host_cert = host_key
        .map(|k| crate::ssh::sign_host(ks, &record, k, now))
        .transpose()?;
    let response = EnrollResponse {
        node: node.clone(),
        role: record.role,
        generation,
        certs: set.certs,
        bundles: set.bundles,
        server_time: now,
        ssh_host_cert,
        ssh_user_ca: Some(crate::ssh::user_ca(ks)?),
    };
    let state = Issued {
        generation,
        identity_serial: set.identity_serial.expect("every role has an identity"),
        previous: None,
        locked: None,
        answer: None,
        wireguard_key: req.wireguard_key.clone(),
    };
    ks.write(&lock, &answer_path(token.id()), &response, 0o644)?;
    ks.write(&lock, &issued_path(&node), &state, 0o644)?;
    let mut r = Record::new(
        now,
        &ks.replica,
        &format!("token:{}", token.id()),
        "enroll",
        Outcome::Ok,
    );
    r.node = Some(node);
    r.token = Some(token.id().to_string());
    r.client = client.map(str::to_string);
    r.serials = set.serials;
    tail.append(&lock, r)?;
    Ok(Ok(response))
}
