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
//!
//! A slot alone does not make a reboot safe: its holder may have died, or been slow to
//! come back, and lost the slot to the TTL while its member is still down. So a node that
//! runs a member of the cluster's etcd, holding a slot, also asks every member for its
//! health, and gives the slot back and waits while any is not healthy. `update --auto`
//! asks every 5 s for up to half an hour ([`before_reboot`]).

use crate::etcd::{Etcd, EtcdError};

/// Where the slots live.
pub const PREFIX: &str = "/cairn/reboot/slot/";

/// Every key of the lease is under this (and workers' etcd user may touch nothing else).
pub const KEYS: &str = "/cairn/reboot/";

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

/// The members of the cluster that are not healthy right now, each with why (empty: all
/// are). A node whose etcd member is one of a cluster checks this after it took its slot:
/// a member already down (powered off, still booting, cut off) plus this one rebooting
/// could be more than the cluster can lose, whatever the lease says: a slot that ran out
/// while its holder was slow to come back, or a node that died without one.
pub fn unhealthy_members(etcd: &Etcd) -> Result<Vec<String>, EtcdError> {
    let mut bad = Vec::new();
    for (name, urls) in etcd.members()? {
        // Member names go into console lines: as etcd has them, but on one line.
        let name = name.escape_debug().to_string();
        if name.is_empty() || urls.is_empty() {
            bad.push(format!(
                "{} (not started)",
                if name.is_empty() { "a member" } else { &name }
            ));
            continue;
        }
        if let Err(e) = etcd.at(&urls).and_then(|m| m.healthy()) {
            let why = match e {
                EtcdError::Failed { message, .. } => message,
                EtcdError::Setup(m) => m,
            };
            bad.push(format!("{name} ({why})"));
        }
    }
    Ok(bad)
}

/// How long [`before_reboot`] keeps asking, and how it waits in between.
pub struct Patience<'a> {
    /// The wait between two asks.
    pub every: std::time::Duration,
    /// Give up (until the next update run) after waiting this long in all.
    pub at_most: std::time::Duration,
    /// How to wait (`std::thread::sleep` on a node; tests count).
    pub sleep: Box<dyn FnMut(std::time::Duration) + 'a>,
}

impl Patience<'static> {
    /// Ask once, do not wait.
    pub fn none() -> Patience<'static> {
        Patience {
            every: std::time::Duration::ZERO,
            at_most: std::time::Duration::ZERO,
            sleep: Box::new(|_| {}),
        }
    }
}

/// On a node: ask every 5 s, for up to 30 minutes (the update timer runs again an hour
/// later).
pub const ASK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// See [`ASK_EVERY`].
pub const ASK_FOR_AT_MOST: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// One ask: `Ok(line)` when the node may reboot now, `Err(why)` when not yet.
fn ask(etcd: &Etcd, lease: &cairn_node_config::Lease, node: &str, guard: bool) -> Result<String, String> {
    let h = match acquire(etcd, node, lease.slots, lease.ttl) {
        Ok(Acquired::Held(h)) => h,
        Ok(Acquired::Busy(holders)) => {
            return Err(format!(
                "the reboot lease is held by {}",
                holders.iter().map(|h| h.node.as_str()).collect::<Vec<_>>().join(", ")
            ))
        }
        Err(e) => return Err(format!("the reboot lease cannot be asked for ({e})")),
    };
    if guard {
        let bad = match unhealthy_members(etcd) {
            Ok(bad) if bad.is_empty() => None,
            Ok(bad) => Some(format!(
                "etcd member {} not healthy, and {node} rebooting now could cost the cluster its quorum",
                bad.join(", ")
            )),
            Err(e) => Some(format!("etcd's members cannot be seen ({e})")),
        };
        if let Some(why) = bad {
            // Someone else may be able to go (a worker, or a member once this one's peer is back).
            let _ = release(etcd, node);
            return Err(why);
        }
    }
    Ok(format!(
        "cairn: update: {node} {} reboot lease slot {} (freed after {} s if the node does not come back){}",
        if h.taken_now { "took" } else { "holds" },
        h.slot,
        lease.ttl,
        if guard { "; every etcd member is healthy" } else { "" }
    ))
}

/// Before rebooting into `version`: take a slot of the lease and, with `guard` (the node
/// runs a member of the cluster's etcd), see every member healthy. `true` when the node
/// may reboot now; `false` when it waited as long as `patience` allows (every slot held,
/// a member down, etcd not answering): the new version stays installed, and the next
/// `update --auto` asks again without installing it again. Each new reason is said in a
/// console line.
pub fn before_reboot(
    etcd: &Etcd,
    lease: &cairn_node_config::Lease,
    node: &str,
    version: &str,
    guard: bool,
    mut patience: Patience<'_>,
    log: &mut dyn FnMut(&str),
) -> bool {
    let mut waited = std::time::Duration::ZERO;
    let mut said: Option<String> = None;
    loop {
        let why = match ask(etcd, lease, node, guard) {
            Ok(line) => {
                log(&line);
                return true;
            }
            Err(why) => why,
        };
        if waited >= patience.at_most {
            log(&format!(
                "cairn: update: {version} is installed; not rebooting: {why} (the next update run asks again)"
            ));
            return false;
        }
        if said.as_deref() != Some(why.as_str()) {
            log(&format!(
                "cairn: update: {version} is installed; waiting to reboot: {why} (asking every {} s for up to {} min)",
                patience.every.as_secs(),
                patience.at_most.saturating_sub(waited).as_secs().div_ceil(60)
            ));
            said = Some(why);
        }
        (patience.sleep)(patience.every);
        waited += patience.every;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_slots_are_among_the_keys_workers_may_touch() {
        assert!(super::PREFIX.starts_with(super::KEYS));
    }
}
