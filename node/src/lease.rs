//! The reboot lease: before a node reboots into a new release it takes one of a few slots
//! in the cluster's etcd, and holds it until the new release is blessed and its etcd member
//! is healthy again, so a rolling update never takes more members down at once than the
//! cluster can lose (Flatcar's locksmith kept a semaphore in etcd for the same reason).
//!
//! ```text
//! /cairn/reboot/slot/<i>   the name of the node holding slot i (0 ≤ i < max), attached to
//!                          an etcd lease of TTL seconds
//! ```
//!
//! A slot is taken with a transaction that succeeds only if the key does not exist, so two
//! nodes never hold one slot. The etcd lease outlives the reboot (its TTL is longer than a
//! reboot and the health gates take); the node finds its slot again after booting, keeps
//! the lease alive until it is done, then deletes the slot. A node that dies holding a slot
//! stops keeping its lease alive, and etcd frees the slot after the TTL.

use crate::etcd::{Etcd, EtcdError};

/// Where the slots live.
pub const PREFIX: &str = "/cairn/reboot/slot/";

/// A slot a node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The slot's number.
    pub slot: u32,
    /// The etcd lease the slot key is attached to.
    pub lease: i64,
    /// Whether this call took it (false: the node already held it, e.g. before a reboot).
    pub taken_now: bool,
}

/// Who holds which slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The slot.
    pub slot: u32,
    /// The node.
    pub node: String,
    /// The etcd lease (for its remaining time).
    pub lease: i64,
}

/// What [`acquire`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// This node holds a slot.
    Held(Held),
    /// Every slot is held by others.
    Busy(Vec<Holder>),
}

/// A node name goes into etcdctl's transaction text: host names only.
fn check_node(node: &str) -> Result<(), EtcdError> {
    if cairn_node_config::valid_hostname(node) {
        Ok(())
    } else {
        Err(EtcdError::Setup(format!(
            "'{}' is not a node name (a host name: letters, digits, '-' and '.')",
            node.escape_debug()
        )))
    }
}

fn slot_key(slot: u32) -> String {
    format!("{PREFIX}{slot}")
}

/// Every slot holder.
pub fn holders(etcd: &Etcd) -> Result<Vec<Holder>, EtcdError> {
    let mut out: Vec<Holder> = etcd
        .range_prefix(PREFIX)?
        .into_iter()
        .filter_map(|kv| {
            let key = String::from_utf8(kv.key).ok()?;
            let slot = key.strip_prefix(PREFIX)?.parse().ok()?;
            Some(Holder {
                slot,
                node: String::from_utf8_lossy(&kv.value).into_owned(),
                lease: kv.lease,
            })
        })
        .collect();
    out.sort_by_key(|h| h.slot);
    Ok(out)
}

/// Take a slot for `node` (one of `max`, held for `ttl` seconds unless kept alive), or find
/// the one it already holds.
pub fn acquire(etcd: &Etcd, node: &str, max: u32, ttl: u64) -> Result<Acquired, EtcdError> {
    check_node(node)?;
    let held = holders(etcd)?;
    if let Some(h) = held.iter().find(|h| h.node == node) {
        return Ok(Acquired::Held(Held {
            slot: h.slot,
            lease: h.lease,
            taken_now: false,
        }));
    }
    let free: Vec<u32> = (0..max).filter(|s| !held.iter().any(|h| h.slot == *s)).collect();
    if free.is_empty() {
        return Ok(Acquired::Busy(held));
    }
    let lease = etcd.grant(ttl)?;
    for slot in free {
        let key = slot_key(slot);
        let took = etcd.txn(
            &[format!("create(\"{key}\") = \"0\"")],
            &[format!("put --lease={lease:x} {key} {node}")],
            &[],
        )?;
        if took {
            return Ok(Acquired::Held(Held {
                slot,
                lease,
                taken_now: true,
            }));
        }
    }
    // Others took the free slots between the look and the transactions.
    etcd.revoke(lease)?;
    Ok(Acquired::Busy(holders(etcd)?))
}

/// Keep `node`'s slot for another TTL (the seconds it now has); `None` when it no longer
/// holds one (its lease ran out, or an operator freed it).
pub fn keep(etcd: &Etcd, node: &str) -> Result<Option<i64>, EtcdError> {
    check_node(node)?;
    match holders(etcd)?.into_iter().find(|h| h.node == node) {
        None => Ok(None),
        Some(h) => etcd.keep_alive(h.lease),
    }
}

/// Give up `node`'s slot, if it holds one; whether it did.
pub fn release(etcd: &Etcd, node: &str) -> Result<bool, EtcdError> {
    check_node(node)?;
    let Some(h) = holders(etcd)?.into_iter().find(|h| h.node == node) else {
        return Ok(false);
    };
    let key = slot_key(h.slot);
    // Delete only what is still this node's: the lease may have run out and another node
    // taken the slot in between.
    let deleted = etcd.txn(
        &[format!("value(\"{key}\") = \"{node}\"")],
        &[format!("del {key}")],
        &[],
    )?;
    if deleted && h.lease != 0 {
        etcd.revoke(h.lease)?;
    }
    Ok(deleted)
}

/// The etcd client for node config's `[update]` lease, with the key agent's etcd-client
/// certificate for https URLs (certificates under `root`).
pub fn etcd_for(lease: &cairn_node_config::Lease, root: &std::path::Path) -> Result<Etcd, EtcdError> {
    let urls: Vec<String> = lease.etcd.iter().map(|u| u.to_string()).collect();
    let tls = urls
        .iter()
        .any(|u| u.starts_with("https://"))
        .then(|| crate::etcd::ClientTls::from_key_agent(root));
    Etcd::new(&urls, tls.as_ref(), std::time::Duration::from_secs(10))
}

/// Before rebooting into `version`: take a slot of the lease. `true` when the node holds
/// one (reboot now); `false` when every slot is held or etcd cannot be asked (the new
/// version stays installed, and the next `update --auto` asks again without installing
/// it again), each said in a console line.
pub fn before_reboot(
    etcd: &Etcd,
    lease: &cairn_node_config::Lease,
    node: &str,
    version: &str,
    log: &mut dyn FnMut(&str),
) -> bool {
    match acquire(etcd, node, lease.slots, lease.ttl) {
        Ok(Acquired::Held(h)) => {
            log(&format!(
                "cairn: update: {node} {} reboot lease slot {} (freed after {} s if the node does not come back)",
                if h.taken_now { "took" } else { "holds" },
                h.slot,
                lease.ttl
            ));
            true
        }
        Ok(Acquired::Busy(holders)) => {
            log(&format!(
                "cairn: update: {version} is installed; waiting for the reboot lease, held by {} (the next update run asks again)",
                holders.iter().map(|h| h.node.as_str()).collect::<Vec<_>>().join(", ")
            ));
            false
        }
        Err(e) => {
            log(&format!(
                "cairn: update: {version} is installed, but the reboot lease cannot be asked for ({e}); not rebooting (the next update run asks again)"
            ));
            false
        }
    }
}
