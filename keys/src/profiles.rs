//! Which certificates a node gets, and every name in them: decided here from the
//! keyserver's record of the node, never from what a request asks for.
//!
//! | profile | roles | CA | subject | SANs | EKU |
//! |---|---|---|---|---|---|
//! | `identity` | all | keyserver | `CN=<node>, O=cairn:<role>` | none | clientAuth |
//! | `etcd-server` | control-plane | etcd-peer | `CN=<node>` | DNS `<node>`, `localhost`; IP client-URL hosts, `127.0.0.1`, `::1` | serverAuth, clientAuth |
//! | `etcd-peer` | control-plane | etcd-peer | `CN=<node>` | DNS `<node>`; IP peer-URL hosts | serverAuth, clientAuth |
//! | `etcd-client` | control-plane | etcd-client | `CN=cairn-node:<node>` | none | clientAuth |
//! | `etcd-lease` | worker | etcd-client | `CN=cairn-lease` | none | clientAuth |
//! | `kubelet-client` | all | kubernetes | `CN=system:node:<node>, O=system:nodes` | none | clientAuth |
//! | `kubelet-serving` | all | kubernetes | `CN=system:node:<node>, O=system:nodes` | DNS `<node>`; IP node addresses | serverAuth |
//!
//! etcd checks a connecting peer's address against its certificate's IP SANs, which is why
//! the peer certificate names exactly the peer-URL hosts (the WireGuard address in a mesh).
//! DHCP addresses are never named: they are not known ahead and can move.
//!
//! A worker's `etcd-lease` certificate reaches the control plane's etcd for the reboot lease
//! only: etcd maps a client certificate's CN to its user, and the control plane's
//! `cairn-node etcd-auth` gives the user `cairn-lease` read-write on `/cairn/reboot/` and
//! nothing else (and each `cairn-node:<node>` the root role) before it turns etcd's
//! authentication on. Its `bundle.pem` is the CA of the etcd servers it talks to
//! ([`Profile::server_ca`]), not its own.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// What a node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs etcd.
    ControlPlane,
    /// Runs workloads only.
    Worker,
}

impl Role {
    /// Read the spelling node.toml and the command line use.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "control-plane" => Some(Role::ControlPlane),
            "worker" => Some(Role::Worker),
            _ => None,
        }
    }

    /// The spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
        }
    }
}

/// The keyserver's record of a node: every fact a certificate may name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    /// The node's name (its node.toml hostname).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Hosts of etcd's client URLs that are IP addresses.
    #[serde(default)]
    pub etcd_client_ips: Vec<IpAddr>,
    /// Hosts of etcd's peer URLs that are IP addresses.
    #[serde(default)]
    pub etcd_peer_ips: Vec<IpAddr>,
    /// Fixed addresses: WireGuard and static interface addresses.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Its place in the WireGuard mesh, when it has a WireGuard interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<crate::mesh::MeshRecord>,
}

/// Which extended key usages a certificate carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Usage {
    /// TLS client only.
    Client,
    /// TLS server only.
    Server,
    /// Both (etcd members are servers and clients of each other).
    ServerAndClient,
}

/// One certificate a node gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Its name, in requests, responses and on the node's disk.
    pub name: &'static str,
    /// The CA that signs it.
    pub ca: &'static str,
    /// The CA of the servers the certificate is a client of, when the node has no other
    /// certificate that brings it (a worker's `etcd-lease`: the etcd servers' CA). The
    /// keyserver sends that CA along, and the node keeps it as the profile's `bundle.pem`.
    #[serde(default)]
    pub server_ca: Option<&'static str>,
    /// Subject common name.
    pub cn: String,
    /// Subject organization, if any.
    pub o: Option<String>,
    /// DNS names.
    pub dns: Vec<String>,
    /// IP addresses.
    pub ips: Vec<IpAddr>,
    /// Extended key usage.
    pub usage: Usage,
}

/// Every profile of any role, in this order.
pub const PROFILES: [&str; 7] = [
    "identity",
    "etcd-server",
    "etcd-peer",
    "etcd-client",
    "etcd-lease",
    "kubelet-client",
    "kubelet-serving",
];

/// The profiles of a node of `role` with no names: which profiles there are and what
/// is fixed about them.
fn of_role(role: Role) -> Vec<Profile> {
    profiles(&NodeRecord {
        name: "probe".into(),
        role,
        etcd_client_ips: vec![],
        etcd_peer_ips: vec![],
        addresses: vec![],
        mesh: None,
    })
}

/// The certificates a node of `role` gets, by profile name.
pub fn profile_names(role: Role) -> Vec<&'static str> {
    of_role(role).iter().map(|p| p.name).collect()
}

fn unique(mut v: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut seen = Vec::new();
    v.retain(|a| {
        let new = !seen.contains(a);
        seen.push(*a);
        new
    });
    v
}

/// The etcd user (the CN of every worker's `etcd-lease` certificate) that may use the reboot
/// lease and nothing else.
pub const LEASE_USER: &str = "cairn-lease";

/// The etcd user of a control-plane node's `etcd-client` certificate (its CN).
pub fn etcd_user(node: &str) -> String {
    format!("cairn-node:{node}")
}

/// The CA of the servers a profile's certificate is a client of, when it is not the
/// profile's own ([`Profile::server_ca`]): what its `bundle.pem` holds instead.
pub fn server_ca(profile: &str) -> Option<&'static str> {
    [Role::ControlPlane, Role::Worker]
        .into_iter()
        .flat_map(of_role)
        .find(|p| p.name == profile)
        .and_then(|p| p.server_ca)
}

/// The certificates a node gets, with every name in them.
pub fn profiles(node: &NodeRecord) -> Vec<Profile> {
    let n = &node.name;
    let loopback: [IpAddr; 2] = [[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
    let mut out = vec![Profile {
        name: "identity",
        ca: "keyserver",
        server_ca: None,
        cn: n.clone(),
        o: Some(format!("cairn:{}", node.role.as_str())),
        dns: vec![],
        ips: vec![],
        usage: Usage::Client,
    }];
    if node.role == Role::ControlPlane {
        out.push(Profile {
            name: "etcd-server",
            ca: "etcd-peer",
            server_ca: None,
            cn: n.clone(),
            o: None,
            dns: vec![n.clone(), "localhost".into()],
            ips: unique(node.etcd_client_ips.iter().copied().chain(loopback).collect()),
            usage: Usage::ServerAndClient,
        });
        out.push(Profile {
            name: "etcd-peer",
            ca: "etcd-peer",
            server_ca: None,
            cn: n.clone(),
            o: None,
            dns: vec![n.clone()],
            ips: unique(node.etcd_peer_ips.clone()),
            usage: Usage::ServerAndClient,
        });
        out.push(Profile {
            name: "etcd-client",
            ca: "etcd-client",
            server_ca: None,
            cn: etcd_user(n),
            o: None,
            dns: vec![],
            ips: vec![],
            usage: Usage::Client,
        });
    }
    if node.role == Role::Worker {
        out.push(Profile {
            name: "etcd-lease",
            ca: "etcd-client",
            server_ca: Some("etcd-peer"),
            cn: LEASE_USER.into(),
            o: None,
            dns: vec![],
            ips: vec![],
            usage: Usage::Client,
        });
    }
    out.push(Profile {
        name: "kubelet-client",
        ca: "kubernetes",
        server_ca: None,
        cn: format!("system:node:{n}"),
        o: Some("system:nodes".into()),
        dns: vec![],
        ips: vec![],
        usage: Usage::Client,
    });
    out.push(Profile {
        name: "kubelet-serving",
        ca: "kubernetes",
        server_ca: None,
        cn: format!("system:node:{n}"),
        o: Some("system:nodes".into()),
        dns: vec![n.clone()],
        ips: unique(node.addresses.clone()),
        usage: Usage::Server,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp() -> NodeRecord {
        NodeRecord {
            name: "cp-1".into(),
            role: Role::ControlPlane,
            etcd_client_ips: vec!["10.90.0.1".parse().unwrap(), "127.0.0.1".parse().unwrap()],
            etcd_peer_ips: vec!["10.90.0.1".parse().unwrap()],
            addresses: vec!["10.90.0.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
            mesh: None,
        }
    }

    #[test]
    fn a_control_plane_node_gets_six_certificates_named_from_its_record() {
        let p = profiles(&cp());
        let names: Vec<&str> = p.iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "identity",
                "etcd-server",
                "etcd-peer",
                "etcd-client",
                "kubelet-client",
                "kubelet-serving"
            ]
        );
        assert!(names.iter().all(|n| PROFILES.contains(n)));
        let server = &p[1];
        assert_eq!(server.dns, ["cp-1", "localhost"]);
        let ips: Vec<String> = server.ips.iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["10.90.0.1", "127.0.0.1", "::1"], "no duplicates");
        assert_eq!(p[2].ips, cp().etcd_peer_ips);
        assert_eq!((p[3].cn.as_str(), p[3].ca), ("cairn-node:cp-1", "etcd-client"));
        assert_eq!(p[4].o.as_deref(), Some("system:nodes"));
        assert_eq!(p[5].usage, Usage::Server);
        assert_eq!(p[0].o.as_deref(), Some("cairn:control-plane"));
    }

    #[test]
    fn a_worker_gets_only_the_lease_of_etcd() {
        let mut w = cp();
        w.role = Role::Worker;
        let p = profiles(&w);
        let names: Vec<&str> = p.iter().map(|p| p.name).collect();
        assert_eq!(names, ["identity", "etcd-lease", "kubelet-client", "kubelet-serving"]);
        // One CN for every worker: the etcd user that may use /cairn/reboot/ and nothing else.
        assert_eq!(
            (p[1].cn.as_str(), p[1].ca, p[1].usage),
            (LEASE_USER, "etcd-client", Usage::Client)
        );
        assert!(p[1].dns.is_empty() && p[1].ips.is_empty());
        assert_eq!(server_ca("etcd-lease"), Some("etcd-peer"));
        assert_eq!(server_ca("etcd-client"), None);
        assert_eq!(server_ca("nope"), None);
    }
}
