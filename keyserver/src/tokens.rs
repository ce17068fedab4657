//! Bootstrap tokens: made by an admin for one node and role, claimed once by that node.
//!
//! A token's record keeps the sha256 of its secret (bound to its id), never the secret. A
//! claim changes the record from `issued` to `claimed` under the state lock, so of any
//! number of claims racing for one token exactly one wins. The node that won may ask again
//! with the same key (its answer was lost on the way) until a quarter of an hour after the
//! token expires; anyone else gets `token_used`, and the audit log an alert.

use std::path::{Path, PathBuf};

use cairn_keys::audit::{Outcome, Record};
use cairn_keys::token::{valid_id, Token};
use serde::{Deserialize, Serialize};

use crate::state::Keyserver;
use crate::{check_node_name, KeyserverError, Role};

/// The lifetime a token gets unless one is asked for.
pub const DEFAULT_TTL: u64 = 24 * 3600;
/// The longest lifetime a token can have (a drive written ahead of racking).
pub const MAX_TTL: u64 = 30 * 86_400;
/// How far the server's clock may be off when it checks expiry.
pub const LEEWAY: u64 = 120;
/// How long after expiry the node that claimed a token may ask again with the same key.
pub const RETRY_GRACE: u64 = 15 * 60;

/// Where a token is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "is", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TokenState {
    /// Made, not used.
    Issued,
    /// Used by the holder of this key.
    Claimed {
        /// sha256 (hex) of the claiming identity key's SubjectPublicKeyInfo.
        key: String,
        /// When.
        at: u64,
    },
    /// Withdrawn by an admin before use.
    Revoked {
        /// Who.
        by: String,
        /// When.
        at: u64,
    },
}

/// `STATE/tokens/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// The public id.
    pub id: String,
    /// sha256 (hex) of the secret, bound to the id ([`Token::secret_hash`]).
    pub secret_sha256: String,
    /// The node it is for.
    pub node: String,
    /// The role that node has.
    pub role: Role,
    /// Valid from (Unix seconds).
    pub not_before: u64,
    /// Valid until.
    pub not_after: u64,
    /// Who made it.
    pub created_by: String,
    /// Its state.
    pub state: TokenState,
}

/// Why a claim was refused: a code the agent acts on, and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    /// `token_unknown`, `token_invalid`, `token_expired`, `token_used`, `token_revoked`,
    /// `role_mismatch`.
    pub code: &'static str,
    /// What happened, without the secret.
    pub message: String,
}

/// What a successful claim means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The first claim: issue the node its certificates.
    First {
        /// The node.
        node: String,
        /// Its role.
        role: Role,
    },
    /// The same key again: give the node the answer it already got.
    Again {
        /// The node.
        node: String,
        /// Its role.
        role: Role,
    },
}

fn record_path(id: &str) -> PathBuf {
    Path::new("tokens").join(format!("{id}.json"))
}

/// `cairn token create`: a new token for `node` in `role`, valid for `ttl` seconds from
/// `now`. The token's text is returned once and stored nowhere.
pub fn create(
    ks: &Keyserver,
    node: &str,
    role: Role,
    ttl: u64,
    admin: &str,
    now: u64,
) -> Result<(Token, TokenRecord), KeyserverError> {
    check_node_name(node)?;
    if !(60..=MAX_TTL).contains(&ttl) {
        return Err(KeyserverError::Invalid {
            message: format!("a token lives from a minute to 30 days, not {ttl} s"),
            hint: "e.g. --ttl 24h (the default) or --ttl 7d for drives written ahead".into(),
        });
    }
    if let Some(registered) = crate::registry::get(ks, node)? {
        if registered.role != role {
            return Err(KeyserverError::Invalid {
                message: format!("{node} is registered as a {} node", registered.role.as_str()),
                hint: "use its role, or register its new node.toml first".into(),
            });
        }
    }
    let lock = ks.lock()?;
    let tail = ks.audit_tail(&lock)?;
    let (token, path) = loop {
        let t = Token::generate(&mut rand_core::OsRng);
        let path = record_path(t.id());
        // 50-bit ids do not collide in practice; if one ever does, draw again.
        if !ks.dir().join(&path).exists() {
            break (t, path);
        }
    };
    let record = TokenRecord {
        id: token.id().to_string(),
        secret_sha256: hex::encode(token.secret_hash()),
        node: node.to_string(),
        role,
        not_before: now,
        not_after: now + ttl,
        created_by: admin.to_string(),
        state: TokenState::Issued,
    };
    ks.write(&lock, &path, &record, 0o600)?;
    let mut r = Record::new(now, &ks.replica, &format!("admin:{admin}"), "token-create", Outcome::Ok);
    r.node = Some(node.to_string());
    r.token = Some(token.id().to_string());
    tail.append(&lock, r)?;
    Ok((token, record))
}

/// Every token record, by id.
pub fn list(ks: &Keyserver) -> Result<Vec<TokenRecord>, KeyserverError> {
    let dir = ks.dir().join("tokens");
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(crate::io_err("reading", &dir)(e)),
    };
    for e in entries {
        let e = e.map_err(crate::io_err("reading", &dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".json") else { continue };
        if !valid_id(id) {
            continue; // a temporary file, or something no keyserver wrote
        }
        if let Some(r) = ks.read::<TokenRecord>(&record_path(id))? {
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// `cairn token revoke`: withdraw an unused token.
pub fn revoke(ks: &Keyserver, id: &str, admin: &str, now: u64) -> Result<TokenRecord, KeyserverError> {
    let id = id.to_ascii_uppercase();
    let unknown = || KeyserverError::Invalid {
        message: format!("no token with id '{}'", id.escape_debug()),
        hint: "`cairn token list` shows the ids".into(),
    };
    if !valid_id(&id) {
        return Err(unknown());
    }
    let lock = ks.lock()?;
    let tail = ks.audit_tail(&lock)?;
    let mut record: TokenRecord = ks.read(&record_path(&id))?.ok_or_else(unknown)?;
    if let TokenState::Claimed { at, .. } = record.state {
        return Err(KeyserverError::Invalid {
            message: format!("token {id} was used by {} at {at}; it cannot be revoked", record.node),
            hint: "revoke the node instead".into(),
        });
    }
    record.state = TokenState::Revoked {
        by: admin.to_string(),
        at: now,
    };
    ks.write(&lock, &record_path(&id), &record, 0o600)?;
    let mut r = Record::new(now, &ks.replica, &format!("admin:{admin}"), "token-revoke", Outcome::Ok);
    r.node = Some(record.node.clone());
    r.token = Some(id.clone());
    tail.append(&lock, r)?;
    Ok(record)
}

/// A node's claim of `token` for `role`, with the identity key whose SubjectPublicKeyInfo
/// hashes to `key`. Every outcome is in the audit log; a refusal leaves the record as it
/// was.
pub fn claim(
    ks: &Keyserver,
    token: &Token,
    role: Role,
    key: &[u8; 32],
    client: Option<&str>,
    now: u64,
) -> Result<Result<Claim, Refusal>, KeyserverError> {
    let lock = ks.lock()?;
    let tail = ks.audit_tail(&lock)?;
    let key_hex = hex::encode(key);
    let record: Option<TokenRecord> = ks.read(&record_path(token.id()))?;
    let decision = decide(record.as_ref(), token, role, &key_hex, now);
    let mut r = Record::new(now, &ks.replica, &format!("token:{}", token.id()), "claim", Outcome::Ok);
    r.client = client.map(str::to_string);
    r.token = Some(token.id().to_string());
    r.node = record.as_ref().map(|rec| rec.node.clone());
    match &decision {
        Ok(Claim::First { .. }) => {
            let mut rec = record.expect("a first claim has a record");
            rec.state = TokenState::Claimed { key: key_hex, at: now };
            ks.write(&lock, &record_path(token.id()), &rec, 0o600)?;
        }
        Ok(Claim::Again { .. }) => r.code = Some("again".into()),
        Err(refusal) => {
            r.result = if matches!(refusal.code, "token_used" | "token_invalid") {
                Outcome::Alert
            } else {
                Outcome::Refused
            };
            r.code = Some(refusal.code.into());
        }
    }
    tail.append(&lock, r)?;
    Ok(decision)
}

fn decide(record: Option<&TokenRecord>, token: &Token, role: Role, key: &str, now: u64) -> Result<Claim, Refusal> {
    let refuse = |code, message: String| Err(Refusal { code, message });
    let Some(rec) = record else {
        return refuse("token_unknown", format!("no token {} was made here", token.id()));
    };
    let stored: Option<[u8; 32]> = hex::decode(&rec.secret_sha256).ok().and_then(|b| b.try_into().ok());
    if !stored.is_some_and(|s| token.matches(&s)) {
        return refuse(
            "token_invalid",
            format!("token {} was given with the wrong secret", rec.id),
        );
    }
    match &rec.state {
        TokenState::Revoked { at, .. } => refuse("token_revoked", format!("token {} was revoked at {at}", rec.id)),
        TokenState::Claimed { key: k, .. } if k == key && now <= rec.not_after + RETRY_GRACE => Ok(Claim::Again {
            node: rec.node.clone(),
            role: rec.role,
        }),
        TokenState::Claimed { at, .. } => refuse(
            "token_used",
            format!("token {} was used at {at} by another key; tokens work once", rec.id),
        ),
        TokenState::Issued if now > rec.not_after + LEEWAY => refuse(
            "token_expired",
            format!("token {} expired at {}", rec.id, rec.not_after),
        ),
        TokenState::Issued if now + LEEWAY < rec.not_before => refuse(
            "token_expired",
            format!("token {} is not valid before {}", rec.id, rec.not_before),
        ),
        TokenState::Issued if role != rec.role => refuse(
            "role_mismatch",
            format!(
                "token {} is for a {} node, the request is for a {}",
                rec.id,
                rec.role.as_str(),
                role.as_str()
            ),
        ),
        TokenState::Issued => Ok(Claim::First {
            node: rec.node.clone(),
            role: rec.role,
        }),
    }
}
