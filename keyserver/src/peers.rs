//! `GET /v1/peers`: the WireGuard mesh as the keyserver knows it, for one node.
//!
//! The node shows its identity certificate (the TLS client certificate), as for a renewal;
//! it gets every other enrolled, unlocked node that has told its WireGuard public key and
//! whose record (from its node.toml) has mesh addresses. Keys are the nodes' own, names and
//! addresses the registry's: a node cannot make itself the route to another's address.
//! A list served changes nothing, so only refusals are audited (a poll a minute per node
//! would otherwise fill the log with reads).

use std::collections::BTreeSet;

use cairn_keys::audit::{Outcome, Record};
use cairn_keys::mesh::{host_route, Peer, PeersResponse};

use crate::renew::{issued, Identity, Issued, IDENTITY_GRACE};
use crate::state::Keyserver;
use crate::tokens::Refusal;
use crate::{registry, KeyserverError};

/// The mesh for `identity` (asking from `client`) at `now`.
pub fn peers(
    ks: &Keyserver,
    identity: &Identity,
    client: Option<&str>,
    now: u64,
) -> Result<Result<PeersResponse, Refusal>, KeyserverError> {
    let refused = |code: &'static str, message: String| -> Result<Result<PeersResponse, Refusal>, KeyserverError> {
        let lock = ks.lock()?;
        let tail = ks.audit_tail(&lock)?;
        let mut r = Record::new(
            now,
            &ks.replica,
            &format!("node:{}:{}", identity.node, identity.serial),
            "peers",
            Outcome::Refused,
        );
        r.node = Some(identity.node.clone());
        r.code = Some(code.into());
        r.client = client.map(str::to_string);
        tail.append(&lock, r)?;
        Ok(Err(Refusal { code, message }))
    };
    if now > identity.not_after.saturating_add(IDENTITY_GRACE) {
        return refused(
            "identity_expired_beyond_grace",
            format!(
                "the identity certificate of {} ended more than 90 days ago",
                identity.node
            ),
        );
    }
    let Some(own) = issued(ks, &identity.node)? else {
        return refused("node_unknown", format!("{} never enrolled here", identity.node));
    };
    if let Some(why) = &own.locked {
        return refused("node_locked", format!("{} is locked ({why})", identity.node));
    }
    let current = own.identity_serial == identity.serial
        || own
            .previous
            .as_ref()
            .is_some_and(|p| p.identity_serial == identity.serial);
    if !current {
        return refused(
            "identity_replaced",
            format!(
                "identity {} of {} has been replaced by a renewal",
                identity.serial, identity.node
            ),
        );
    }
    let mut peers = Vec::new();
    let mut keys_seen = BTreeSet::new();
    keys_seen.extend(own.wireguard_key.clone());
    for node in enrolled(ks)? {
        if node == identity.node {
            continue;
        }
        let Some(Issued {
            locked: None,
            wireguard_key: Some(key),
            ..
        }) = issued(ks, &node)?
        else {
            continue;
        };
        let Some(mesh) = registry::get(ks, &node)?.and_then(|r| r.mesh) else {
            continue;
        };
        // Two nodes claiming one key would take each other's traffic: neither is listed
        // twice, and the first by name keeps it.
        if mesh.ips.is_empty() || !keys_seen.insert(key.clone()) {
            continue;
        }
        peers.push(Peer {
            node,
            public_key: key,
            endpoint: mesh.endpoint,
            allowed_ips: mesh.ips.iter().map(host_route).collect(),
        });
    }
    Ok(Ok(PeersResponse {
        peers,
        server_time: now,
    }))
}

/// The names of every node that ever enrolled here (`STATE/issued/<name>.json`), sorted.
pub fn enrolled(ks: &Keyserver) -> Result<Vec<String>, KeyserverError> {
    let dir = ks.dir().join("issued");
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let node = name.strip_suffix(".json")?.to_string();
                crate::check_node_name(&node).ok().map(|_| node)
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(crate::io_err("reading", &dir)(e)),
    };
    names.sort();
    Ok(names)
}
