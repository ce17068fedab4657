//! The keyserver's record of each node (`STATE/nodes/<name>.json`): every fact a certificate
//! may name, taken from the node's own node.toml when its config drive is written, so the
//! names in its certificates never come from the node's requests.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use cairn_keys::audit::{Outcome, Record};
use cairn_keys::mesh::MeshRecord;
use cairn_keys::profiles::NodeRecord;
use cairn_node_config::NodeConfig;

use crate::state::Keyserver;
use crate::{check_node_name, KeyserverError};

fn path(name: &str) -> PathBuf {
    Path::new("nodes").join(format!("{name}.json"))
}

/// The record a node.toml gives: its name and role, the IP hosts of its etcd URLs, its
/// WireGuard addresses and static interface addresses (DHCP addresses are not known ahead,
/// so they are never named).
pub fn record_for(config: &NodeConfig) -> NodeRecord {
    let ips =
        |urls: &[cairn_node_config::Url]| -> Vec<IpAddr> { urls.iter().filter_map(|u| u.host.parse().ok()).collect() };
    let mut addresses: Vec<IpAddr> = Vec::new();
    if let Some(w) = &config.wireguard {
        addresses.extend(w.address.iter().map(|c| c.addr));
    }
    for i in &config.network {
        addresses.extend(i.address.iter().map(|c| c.addr));
    }
    let mesh = config.wireguard.as_ref().map(|w| MeshRecord {
        ips: w.address.iter().map(|c| c.addr).collect(),
        // Where the others reach it: as node.toml says, else its first static address.
        endpoint: w.endpoint.clone().or_else(|| {
            let ip = config.network.iter().flat_map(|i| i.address.iter()).next()?.addr;
            Some(match ip {
                IpAddr::V4(v4) => format!("{v4}:{}", w.listen_port),
                IpAddr::V6(v6) => format!("[{v6}]:{}", w.listen_port),
            })
        }),
    });
    NodeRecord {
        name: config.hostname.clone(),
        role: config.role,
        etcd_client_ips: config.etcd.as_ref().map(|e| ips(&e.client_urls)).unwrap_or_default(),
        etcd_peer_ips: config.etcd.as_ref().map(|e| ips(&e.peer_urls)).unwrap_or_default(),
        addresses,
        mesh,
    }
}

/// The record of a node enrolled with a token but never registered: its name and role,
/// and no address (its certificates name only the node).
pub fn unregistered(name: &str, role: cairn_keys::profiles::Role) -> NodeRecord {
    NodeRecord {
        name: name.to_string(),
        role,
        etcd_client_ips: vec![],
        etcd_peer_ips: vec![],
        addresses: vec![],
        mesh: None,
    }
}

/// Write (or replace) a node's record.
pub fn register(ks: &Keyserver, record: &NodeRecord, admin: &str, now: u64) -> Result<(), KeyserverError> {
    check_node_name(&record.name)?;
    let lock = ks.lock()?;
    let tail = ks.audit_tail(&lock)?;
    ks.write(&lock, &path(&record.name), record, 0o644)?;
    let mut r = Record::new(
        now,
        &ks.replica,
        &format!("admin:{admin}"),
        "node-register",
        Outcome::Ok,
    );
    r.node = Some(record.name.clone());
    tail.append(&lock, r)
}

/// A node's record, if it has one.
pub fn get(ks: &Keyserver, name: &str) -> Result<Option<NodeRecord>, KeyserverError> {
    check_node_name(name)?;
    ks.read(&path(name))
}
