//! etcd's users and roles on a cluster whose TLS the key agent provides, so that a worker's
//! `etcd-lease` certificate can take the reboot lease and do nothing else.
//!
//! etcd trusts one CA for clients. Without authentication every certificate it signs is
//! the whole of etcd, including a worker's; with it, a client is the user its certificate's
//! CN names. `cairn-node etcd-auth` (cairn-etcd-auth.service, on every control-plane node
//! once its etcd gate passed) makes, through the node's own member:
//!
//! * `root` (etcd will not turn authentication on without it) and `cairn-node:<node>` for
//!   every member (the node config's initial cluster and every started member), each with
//!   the root role: the control plane keeps all of etcd;
//! * the role `cairn-lease`, read-write on `/cairn/reboot/` only, and its user `cairn-lease`
//!   (every worker's etcd-lease CN);
//!
//! then turns authentication on. Each step is idempotent, so nodes that run it at once, or
//! again, agree; a node that set up the same users in the same cluster before only asks
//! for the members ([`DONE_FILE`]). A control-plane node added later gets its user from the next
//! run on a member that sees it started (every boot, or `cairn-node etcd-auth` by hand).

use std::path::Path;

use crate::etcd::{Etcd, EtcdError};
use cairn_keys::profiles::{etcd_user, LEASE_USER};

/// The keys a worker may use: the reboot lease's.
pub const LEASE_PREFIX: &str = crate::lease::KEYS;

/// The role of the lease user.
pub const LEASE_ROLE: &str = "cairn-lease";

/// Where a node notes the users it set up, for the cluster it set them up in: the next
/// boot asks etcd for its members only, and makes nothing when nothing changed (each
/// etcdctl run costs seconds of a slow machine's boot).
pub const DONE_FILE: &str = "/var/lib/cairn/etcd-auth/done";

/// What [`set_up`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// Users that were made by this run.
    pub added: Vec<String>,
    /// Member names that are not node names, left without a user.
    pub skipped: Vec<String>,
    /// Nothing to do: this node set up the same users in the same cluster before.
    pub as_before: bool,
    /// The users there are now.
    pub users: usize,
}

/// Make the users and roles and turn authentication on, through `etcd` (the node's own
/// member, with its etcd-client certificate); `config_members` are the names of the node
/// config's initial cluster. `done` (see [`DONE_FILE`]) notes what was set up.
pub fn set_up(etcd: &Etcd, config_members: &[String], done: Option<&Path>) -> Result<Done, EtcdError> {
    let (cluster, members) = etcd.cluster()?;
    let mut names: Vec<String> = config_members.to_vec();
    for (name, _) in members {
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    let mut skipped = Vec::new();
    names.retain(|n| {
        // Member names come from etcd; only host names become users.
        let ok = cairn_node_config::valid_hostname(n);
        if !ok {
            skipped.push(n.escape_debug().to_string());
        }
        ok
    });
    names.sort();
    let mut wanted: Vec<(String, &str)> = vec![("root".into(), "root")];
    wanted.extend(names.iter().map(|n| (etcd_user(n), "root")));
    wanted.push((LEASE_USER.into(), LEASE_ROLE));
    let stamp = format!(
        "cluster {cluster:x}: {} ({LEASE_ROLE}: {LEASE_PREFIX})\n",
        wanted.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>().join(" ")
    );
    if done.is_some_and(|f| std::fs::read_to_string(f).ok().as_deref() == Some(stamp.as_str())) {
        return Ok(Done {
            added: vec![],
            skipped,
            as_before: true,
            users: wanted.len(),
        });
    }
    let mut added = Vec::new();
    etcd.allow_prefix(LEASE_ROLE, LEASE_PREFIX)?;
    // Every user is given its role again: a run cut off between making a user and
    // granting its role is finished by the next.
    for (user, role) in &wanted {
        if etcd.add_user(user, role)? {
            added.push(user.clone());
        }
    }
    etcd.enable_auth()?;
    if let Some(f) = done {
        // Only a whole run is noted; without the note the next boot does it all again.
        f.parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| crate::apply::write_atomic(f, stamp.as_bytes(), 0o644, None))
            .map_err(|e| EtcdError::Setup(format!("writing {}: {e}", f.display())))?;
    }
    Ok(Done {
        added,
        skipped,
        as_before: false,
        users: wanted.len(),
    })
}
