//! `node.toml`: one node's identity and component settings, parsed and checked; and the
//! files a config renders for the node's components ([`render`]).
//!
//! Both the builder (which validates a node.toml before it writes a config drive) and the
//! node agent (which applies one) use this crate, so it holds no IO and no network code.
//!
//! Strict like the image definition: a `version` key, kebab-case keys, unknown keys refused,
//! and every error names the line and says how to fix it. [`NodeConfig::parse`] validates
//! everything (addresses, keys, URLs, cross-references) before anything is applied, so a bad
//! config is refused whole and never written half.
//!
//! ```toml
//! version = 1
//! generation = 3
//! hostname = "cp-1"
//! role = "control-plane"          # or "worker" (no etcd)
//!
//! [etcd]                          # control-plane only; every key has a single-node default
//! name = "cp-1"
//! client-urls = ["http://10.90.0.1:2379"]
//! peer-urls = ["http://10.90.0.1:2380"]
//! initial-cluster = { cp-1 = "http://10.90.0.1:2380", cp-2 = "http://10.90.0.2:2380" }
//! initial-cluster-state = "new"
//!
//! [wireguard]
//! private-key = "<base64, 32 bytes>"    # optional with [key-agent]: the node makes its own
//! address = ["10.90.0.1/24"]
//! listen-port = 51820
//! endpoint = "192.0.2.1:51820"          # where the others reach this node (via the keyserver)
//! [[wireguard.peer]]
//! public-key = "<base64>"
//! endpoint = "192.0.2.2:51820"
//! allowed-ips = ["10.90.0.2/32"]
//!
//! [kubelet]
//! node-labels = { "topology.kubernetes.io/zone" = "a" }
//! taints = ["dedicated=etcd:NoSchedule"]
//! cluster-dns = ["10.96.0.10"]
//!
//! [health]                        # time limits of the boot health gates, in seconds
//! etcd = 300
//! ```

mod etcd;
mod key_agent;
mod kubelet;
mod network;
pub mod render;
mod ssh;
mod update;
mod values;
mod wireguard;

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

pub use etcd::{Etcd, EtcdTls, ETCD_DATA_ROOT};
pub use key_agent::KeyAgent;
pub use kubelet::{kubelet_may_set, valid_label_key, valid_label_value, Kubelet, Taint};
pub use network::{glob_matches, glob_may_match_prefix, mac, Interface, Match, Route};
pub use ssh::ssh_key;
pub use update::{Lease, RebootPolicy, Update};
pub use values::{valid_endpoint, valid_hostname, Cidr, StatePath, Url, WgKey};
pub use wireguard::{Peer, Wireguard};

use etcd::{etcd, RawEtcd};
use key_agent::{key_agent, RawKeyAgent};
use kubelet::{kubelet, RawKubelet};
use network::{interface, RawNetwork};
use ssh::RawSsh;
use update::{update, RawUpdate};
use wireguard::{wireguard, RawWireguard};

/// The line (1-based) of byte `offset` in `src`, for messages about TOML files (a span's
/// start from the `toml` crate).
pub fn line_at(src: &str, offset: usize) -> usize {
    src.as_bytes()[..offset.min(src.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The health gates `[health]` can set time limits for.
pub const HEALTH_GATES: [&str; 6] = ["etcd", "containerd", "wireguard", "kubelet", "sshd", "keys"];

/// The only `version` this agent reads.
pub const VERSION: u32 = 1;

/// A config that cannot be used: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}{}", .line.map(|l| format!(":{l}")).unwrap_or_default(), .hint.as_ref().map(|h| format!("\n  hint: {h}")).unwrap_or_default())]
pub struct ConfigError {
    /// The file, as the user named it.
    pub file: String,
    /// 1-based line, when the problem has a place.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

/// What the node does in the cluster: the key agent and the keyserver name roles the same
/// way, so the one type serves all three.
pub use cairn_keys::profiles::Role;

/// A validated node config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Increases with every change; a drive with a higher one replaces the saved config.
    pub generation: u64,
    /// Host name.
    pub hostname: String,
    /// Role.
    pub role: Role,
    /// etcd (control-plane only).
    pub etcd: Option<Etcd>,
    /// WireGuard, when configured.
    pub wireguard: Option<Wireguard>,
    /// kubelet settings (used when the image has a kubelet).
    pub kubelet: Kubelet,
    /// Health gate time limits in seconds, by gate name, where the node sets them.
    pub health: BTreeMap<String, u64>,
    /// Wired interfaces configured explicitly (empty: DHCP on every wired interface).
    pub network: Vec<Interface>,
    /// SSH public keys allowed to log in as root (keys only; no passwords).
    pub ssh_authorized_keys: Vec<String>,
    /// Where the key agent gets the node's certificates.
    pub key_agent: Option<KeyAgent>,
    /// Where the node looks for new releases, and when it reboots into one.
    pub update: Option<Update>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Raw {
    version: Spanned<u32>,
    generation: Spanned<i64>,
    hostname: Spanned<String>,
    #[serde(default)]
    role: Option<Spanned<String>>,
    #[serde(default)]
    // Tables are not `Spanned`: a table made implicitly by a `[etcd.tls]` header alone has
    // no span, and the toml crate then fails with a message nobody can act on.
    etcd: Option<RawEtcd>,
    #[serde(default)]
    wireguard: Option<RawWireguard>,
    #[serde(default)]
    kubelet: RawKubelet,
    #[serde(default)]
    health: BTreeMap<String, Spanned<i64>>,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    ssh: RawSsh,
    #[serde(default)]
    key_agent: Option<RawKeyAgent>,
    #[serde(default)]
    update: Option<RawUpdate>,
}

pub(crate) struct Cx<'a> {
    file: &'a str,
    src: &'a str,
}

impl Cx<'_> {
    /// Where the first header of table `name` (`[name]` or `[name.…]`) is.
    pub(crate) fn table(&self, name: &str) -> Option<Range<usize>> {
        let mut at = 0;
        for line in self.src.split_inclusive('\n') {
            let t = line.trim_start().trim_start_matches('[');
            if line.trim_start().starts_with('[')
                && (t.starts_with(&format!("{name}]")) || t.starts_with(&format!("{name}.")))
            {
                return Some(at..at + line.len());
            }
            at += line.len();
        }
        None
    }

    pub(crate) fn err<T>(
        &self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: &str,
    ) -> Result<T, ConfigError> {
        Err(ConfigError {
            file: self.file.to_string(),
            line: span.map(|s| line_at(self.src, s.start)),
            message: message.into(),
            hint: (!hint.is_empty()).then(|| hint.to_string()),
        })
    }
}

impl NodeConfig {
    /// The config a node runs without any node.toml: a single control-plane node named
    /// `cairn` whose etcd listens on localhost only.
    pub fn single_node() -> NodeConfig {
        NodeConfig::parse(
            "version = 1\ngeneration = 0\nhostname = \"cairn\"\n",
            "(built-in default)",
        )
        .expect("the built-in default is valid (unit-tested)")
    }

    /// Parse and validate `text` (read from `file`, named in errors).
    pub fn parse(text: &str, file: &str) -> Result<NodeConfig, ConfigError> {
        let cx = Cx { file, src: text };
        let raw: Raw = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let msg = e.message().to_string();
                let hint = if msg.contains("unknown field") {
                    "see docs/node-config.md for the keys node.toml takes"
                } else if msg.contains("missing field") {
                    "node.toml needs version = 1, generation and hostname"
                } else {
                    ""
                };
                return cx.err(e.span(), msg, hint);
            }
        };
        if *raw.version.get_ref() != VERSION {
            return cx.err(
                Some(raw.version.span()),
                format!("node config version {} is not supported", raw.version.get_ref()),
                "this agent reads version = 1",
            );
        }
        let generation = u64::try_from(*raw.generation.get_ref()).or_else(|_| {
            cx.err(
                Some(raw.generation.span()),
                "generation must not be negative",
                "start at 1 and increase it with every change",
            )
        })?;
        let hostname = raw.hostname.get_ref().clone();
        if !valid_hostname(&hostname) || hostname.len() > 64 {
            return cx.err(
                Some(raw.hostname.span()),
                format!("'{hostname}' is not a valid host name"),
                "letters, digits and '-', not at either end of a label, at most 63 per label and 64 in all",
            );
        }
        let role = match raw.role.as_ref().map(|r| (r.get_ref().as_str(), r.span())) {
            None | Some(("control-plane", _)) => Role::ControlPlane,
            Some(("worker", _)) => Role::Worker,
            Some((other, span)) => {
                return cx.err(
                    Some(span),
                    format!("role '{other}' is not a role"),
                    "use \"control-plane\" (runs etcd) or \"worker\"",
                )
            }
        };
        let etcd = match (role, &raw.etcd) {
            (Role::Worker, Some(_)) => {
                return cx.err(
                    cx.table("etcd"),
                    "a worker does not run etcd",
                    "remove [etcd], or set role = \"control-plane\"",
                )
            }
            (Role::Worker, None) => None,
            (Role::ControlPlane, e) => Some(etcd(&cx, e.as_ref(), &hostname, raw.key_agent.is_some())?),
        };
        let wireguard = match &raw.wireguard {
            None => None,
            Some(w) => Some(wireguard(&cx, w, raw.key_agent.is_some())?),
        };
        let kubelet = kubelet(&cx, &raw.kubelet)?;
        let mut health = BTreeMap::new();
        for (gate, secs) in &raw.health {
            if !HEALTH_GATES.contains(&gate.as_str()) {
                return cx.err(
                    Some(secs.span()),
                    format!("[health] '{gate}' is not a health gate"),
                    "the gates are etcd, containerd, wireguard, kubelet and sshd",
                );
            }
            match u64::try_from(*secs.get_ref()) {
                Ok(s @ 1..=3600) => health.insert(gate.clone(), s),
                _ => {
                    return cx.err(
                        Some(secs.span()),
                        format!("[health] {gate} = {} is not from 1 to 3600 seconds", secs.get_ref()),
                        "the time limit for the gate, in seconds",
                    )
                }
            };
        }
        let network = raw
            .network
            .interface
            .iter()
            .map(|i| interface(&cx, i))
            .collect::<Result<Vec<_>, _>>()?;
        // A wired interface's file must never claim the loopback or a WireGuard interface.
        for (n, i) in network.iter().zip(&raw.network.interface) {
            if let Match::Name(glob) = &n.matches {
                let captured = if glob_matches(glob, "lo") {
                    Some("lo".to_string())
                } else if glob_may_match_prefix(glob, "wg") {
                    Some(wireguard.as_ref().map_or("wg0".to_string(), |w| w.interface.clone()))
                } else {
                    None
                };
                if let Some(victim) = captured {
                    return cx.err(
                        Some(i.span()),
                        format!("[[network.interface]] name '{glob}' would also match {victim}"),
                        "name the wired interfaces more narrowly, e.g. \"en*\" or \"eth0\"; WireGuard interfaces (wg*) and lo are Cairn's",
                    );
                }
            }
        }
        let mut ssh_authorized_keys = Vec::new();
        for k in &raw.ssh.authorized_keys {
            match ssh_key(k.get_ref()) {
                Ok(line) => ssh_authorized_keys.push(line),
                Err(why) => {
                    return cx.err(
                        Some(k.span()),
                        format!("[ssh] authorized-keys: {why}"),
                        "paste the line from the .pub file, e.g. \"ssh-ed25519 AAAAC3… you@laptop\"",
                    )
                }
            }
        }
        let key_agent = match &raw.key_agent {
            None => None,
            Some(k) => Some(key_agent(&cx, k)?),
        };
        let update = match &raw.update {
            None => None,
            Some(u) => {
                // A member of a cluster of several takes the reboot lease in its own etcd
                // by default (when its client TLS is the key agent's, or plain http).
                let own_etcd = etcd
                    .as_ref()
                    .filter(|e| e.initial_cluster.len() > 1)
                    .filter(|e| e.tls.is_none() || e.tls == Some(EtcdTls::from_key_agent()))
                    .map(|e| Url {
                        scheme: e.client_urls[0].scheme.clone(),
                        host: "127.0.0.1".into(),
                        port: e.client_urls[0].port,
                    });
                Some(update(&cx, u, own_etcd)?)
            }
        };
        Ok(NodeConfig {
            generation,
            hostname,
            role,
            etcd,
            wireguard,
            kubelet,
            health,
            network,
            ssh_authorized_keys,
            key_agent,
            update,
        })
    }
}
