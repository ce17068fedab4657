//! A cluster file: one description of every node of a cluster, from which `cairn
//! config-drive --cluster` writes each node's node.toml (and drive), so nobody copies etcd
//! member lists between files by hand.
//!
//! ```toml
//! version = 1
//! name = "lab"
//! generation = 1                            # every node.toml's; raise it to re-issue drives
//! keyserver = "https://10.0.0.5:8443"       # optional: nodes enroll there, etcd speaks TLS
//! update-source = "http://10.0.0.5:8080/"   # optional: [update] source of every node
//!
//! [network]                                 # optional: static addresses on this interface
//! interface = "en*"
//! prefix-length = 24
//! gateway = "10.0.0.1"
//! dns = ["10.0.0.1"]
//!
//! [mesh]                                    # optional (needs the keyserver): a WireGuard mesh
//! network = "10.90.0.0/24"                  # node n of the file gets host n (10.90.0.1, …)
//! port = 51820
//!
//! [[node]]
//! name = "cp-1"
//! role = "control-plane"                    # or "worker" (no etcd member)
//! address = "10.0.0.11"
//! mesh-address = "10.90.0.11"               # optional: instead of its place in the file
//! ```
//!
//! Control-plane nodes form one etcd cluster on their addresses (`https` with a keyserver,
//! whose certificates the key agents get; plain `http` without one). With a mesh, each node
//! makes its WireGuard key at first boot and gets the others from the keyserver, and etcd's
//! members talk over the mesh (peer URLs on mesh addresses; clients may use either). With
//! an `update-source`, members take the reboot lease in their own etcd and workers in the
//! control plane's (`lease-etcd`, with their etcd-lease certificate, which etcd lets touch
//! the lease only). Each generated file is parsed and planned exactly as a hand-written
//! node.toml is before any drive is written.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

/// A node of the cluster file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// Its host name.
    pub name: String,
    /// `control-plane` or `worker`.
    pub role: String,
    /// Its address on the cluster's network.
    pub address: IpAddr,
    /// Its address on the mesh, when the cluster has one.
    pub mesh_address: Option<IpAddr>,
    /// The MAC address of the interface that gets `address` (instead of `[network]`
    /// interface's name), lower case.
    pub mac: Option<String>,
}

/// A parsed cluster file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// The cluster's name.
    pub name: String,
    /// The generation of every node.toml.
    pub generation: u64,
    /// The keyserver URL nodes enroll with.
    pub keyserver: Option<String>,
    /// The update source.
    pub update_source: Option<String>,
    /// `[ssh] authorized-keys` of every node (checked, one line each).
    pub ssh_keys: Vec<String>,
    /// `[update] lease-slots` of every node, when given.
    pub lease_slots: Option<u32>,
    /// `[update] lease-ttl` of every node, when given.
    pub lease_ttl: Option<u64>,
    /// Static network settings.
    pub network: Option<Network>,
    /// The WireGuard mesh.
    pub mesh: Option<Mesh>,
    /// The nodes, in file order.
    pub nodes: Vec<ClusterNode>,
}

/// `[mesh]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh {
    /// The mesh's network (address and prefix length).
    pub network: cairn_node_config::Cidr,
    /// WireGuard's UDP port on every node.
    pub port: u16,
}

/// `[network]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// networkd match of the interface.
    pub interface: String,
    /// Prefix length of the addresses.
    pub prefix_length: u8,
    /// Default gateway.
    pub gateway: Option<IpAddr>,
    /// DNS servers.
    pub dns: Vec<IpAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawCluster {
    version: Spanned<u32>,
    name: Spanned<String>,
    #[serde(default)]
    generation: Option<Spanned<u64>>,
    #[serde(default)]
    keyserver: Option<Spanned<String>>,
    #[serde(default)]
    update_source: Option<Spanned<String>>,
    #[serde(default)]
    lease_slots: Option<Spanned<i64>>,
    #[serde(default)]
    lease_ttl: Option<Spanned<i64>>,
    #[serde(default)]
    network: Option<RawNetwork>,
    #[serde(default)]
    mesh: Option<RawMesh>,
    #[serde(default)]
    ssh: Option<RawSsh>,
    #[serde(default)]
    node: Vec<RawNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSsh {
    authorized_keys: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawMesh {
    network: Spanned<String>,
    #[serde(default)]
    port: Option<Spanned<u16>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawNetwork {
    #[serde(default)]
    interface: Option<Spanned<String>>,
    prefix_length: Spanned<u8>,
    #[serde(default)]
    gateway: Option<Spanned<String>>,
    #[serde(default)]
    dns: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawNode {
    name: Spanned<String>,
    role: Spanned<String>,
    address: Spanned<String>,
    #[serde(default)]
    mesh_address: Option<Spanned<String>>,
    #[serde(default)]
    mac: Option<Spanned<String>>,
}

/// A cluster file that cannot be used: where and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}{}", if hint.is_empty() { String::new() } else { format!("\n  hint: {hint}") })]
pub struct ClusterError {
    /// The file.
    pub file: String,
    /// The line (1-based).
    pub line: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

impl Cluster {
    /// Parse and check `text` (from `file`, for messages).
    pub fn parse(text: &str, file: &str) -> Result<Cluster, ClusterError> {
        let err = |span: std::ops::Range<usize>, message: String, hint: &str| ClusterError {
            file: file.to_string(),
            line: cairn_node_config::line_at(text, span.start),
            message,
            hint: hint.to_string(),
        };
        let raw: RawCluster = toml::from_str(text).map_err(|e| {
            err(
                e.span().unwrap_or(0..0),
                e.message().to_string(),
                "see docs/cluster.md for the keys of a cluster file",
            )
        })?;
        if *raw.version.get_ref() != 1 {
            return Err(err(
                raw.version.span(),
                format!("version {} is not 1", raw.version.get_ref()),
                "",
            ));
        }
        let name = raw.name.get_ref().clone();
        if !cairn_node_config::valid_hostname(&name) || name.contains('.') {
            return Err(err(
                raw.name.span(),
                format!("'{}' is not a cluster name", name.escape_debug()),
                "letters, digits and '-'",
            ));
        }
        let url = |v: &Spanned<String>, what: &str, scheme: &[&str]| -> Result<String, ClusterError> {
            match cairn_node_config::Url::parse(v.get_ref()) {
                Ok(u) if scheme.contains(&u.scheme.as_str()) => Ok(v.get_ref().clone()),
                _ => Err(err(
                    v.span(),
                    format!(
                        "{what} '{}' is not a {} URL",
                        v.get_ref().escape_debug(),
                        scheme.join(" or ")
                    ),
                    "e.g. \"https://10.0.0.5:8443\"",
                )),
            }
        };
        let keyserver = raw
            .keyserver
            .as_ref()
            .map(|k| url(k, "keyserver", &["https"]))
            .transpose()?;
        let update_source = match &raw.update_source {
            None => None,
            Some(s) if s.get_ref().starts_with("http://") || s.get_ref().starts_with("https://") => {
                if s.get_ref()
                    .contains(|c: char| c.is_control() || c.is_whitespace() || c == '"')
                {
                    return Err(err(
                        s.span(),
                        "update-source holds a blank, a quote or a control character".into(),
                        "",
                    ));
                }
                Some(s.get_ref().clone())
            }
            Some(s) => {
                return Err(err(
                    s.span(),
                    format!("update-source '{}' is not an http(s) URL", s.get_ref().escape_debug()),
                    "the directory `cairn publish` wrote, served over HTTP, ending in /",
                ))
            }
        };
        let lease_number = |v: &Option<Spanned<i64>>, what: &str, range: std::ops::RangeInclusive<i64>| {
            let Some(v) = v else { return Ok(None) };
            if update_source.is_none() {
                return Err(err(
                    v.span(),
                    format!("{what} without update-source"),
                    "the reboot lease spaces the reboots of updates: give update-source too",
                ));
            }
            if !range.contains(v.get_ref()) {
                return Err(err(
                    v.span(),
                    format!("{what} {} is not in {}..={}", v.get_ref(), range.start(), range.end()),
                    "",
                ));
            }
            Ok(Some(*v.get_ref()))
        };
        let mut ssh_keys = Vec::new();
        for k in raw.ssh.iter().flat_map(|s| &s.authorized_keys) {
            let line = cairn_node_config::ssh_key(k.get_ref()).map_err(|why| {
                err(
                    k.span(),
                    format!("[ssh] authorized-keys: {why}"),
                    "one public key per string, as in a .pub file",
                )
            })?;
            ssh_keys.push(line);
        }
        let lease_slots = lease_number(&raw.lease_slots, "lease-slots", 1..=100)?.map(|v| v as u32);
        let lease_ttl = lease_number(&raw.lease_ttl, "lease-ttl", 60..=86_400)?.map(|v| v as u64);
        let ip = |v: &Spanned<String>, what: &str| -> Result<IpAddr, ClusterError> {
            v.get_ref().parse().map_err(|_| {
                err(
                    v.span(),
                    format!("{what} '{}' is not an IP address", v.get_ref().escape_debug()),
                    "",
                )
            })
        };
        let network = match &raw.network {
            None => None,
            Some(n) => {
                let interface = match &n.interface {
                    None => "en*".to_string(),
                    Some(i) => {
                        let v = i.get_ref();
                        if v.is_empty()
                            || v.len() > 64
                            || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.*?".contains(c))
                        {
                            return Err(err(
                                i.span(),
                                format!("interface '{}' is not an interface name or pattern", v.escape_debug()),
                                "e.g. \"en*\" or \"eth0\"",
                            ));
                        }
                        v.clone()
                    }
                };
                Some(Network {
                    interface,
                    prefix_length: *n.prefix_length.get_ref(),
                    gateway: n.gateway.as_ref().map(|g| ip(g, "gateway")).transpose()?,
                    dns: n.dns.iter().map(|d| ip(d, "dns")).collect::<Result<_, _>>()?,
                })
            }
        };
        let mesh = match &raw.mesh {
            None => None,
            Some(m) => {
                let network = cairn_node_config::Cidr::parse(m.network.get_ref()).map_err(|why| {
                    err(
                        m.network.span(),
                        format!("[mesh] network '{}': {why}", m.network.get_ref().escape_debug()),
                        "e.g. \"10.90.0.0/24\" or \"fd90::/64\"",
                    )
                })?;
                let max = if network.addr.is_ipv4() { 32 } else { 128 };
                if network.prefix >= max - 1 {
                    return Err(err(
                        m.network.span(),
                        format!("[mesh] network {network} has no room for nodes"),
                        "a /24 (IPv4) or /64 (IPv6) leaves room for every node",
                    ));
                }
                if keyserver.is_none() {
                    return Err(err(
                        m.network.span(),
                        "[mesh] needs a keyserver: it hands every node the others' WireGuard keys".into(),
                        "add keyserver = \"https://HOST:PORT\" (`cairn keyserver serve`)",
                    ));
                }
                let port = match &m.port {
                    None => 51820,
                    Some(p) if *p.get_ref() > 0 => *p.get_ref(),
                    Some(p) => return Err(err(p.span(), "[mesh] port 0 is not a port".into(), "")),
                };
                Some(Mesh { network, port })
            }
        };
        let mut nodes = Vec::new();
        let (mut names, mut addresses) = (BTreeSet::new(), BTreeSet::new());
        let mut mesh_addresses = BTreeSet::new();
        let mut macs = BTreeSet::new();
        for (i, n) in raw.node.iter().enumerate() {
            let node_name = n.name.get_ref().clone();
            if !cairn_node_config::valid_hostname(&node_name) {
                return Err(err(
                    n.name.span(),
                    format!("'{}' is not a node name", node_name.escape_debug()),
                    "a host name: letters, digits, '-' and '.'",
                ));
            }
            if !names.insert(node_name.clone()) {
                return Err(err(n.name.span(), format!("node {node_name} is listed twice"), ""));
            }
            let role = n.role.get_ref().clone();
            if role != "control-plane" && role != "worker" {
                return Err(err(
                    n.role.span(),
                    format!("role '{}' is not a role", role.escape_debug()),
                    "control-plane or worker",
                ));
            }
            let address = ip(&n.address, "address")?;
            if !addresses.insert(address) {
                return Err(err(
                    n.address.span(),
                    format!("address {address} is given to two nodes"),
                    "",
                ));
            }
            if let Some(net) = &network {
                let max = if address.is_ipv4() { 32 } else { 128 };
                if net.prefix_length == 0 || net.prefix_length > max {
                    return Err(err(
                        raw.network.as_ref().expect("network is set").prefix_length.span(),
                        format!("prefix-length {} does not fit {address}", net.prefix_length),
                        "",
                    ));
                }
            }
            let mesh_address = match (&mesh, &n.mesh_address) {
                (None, None) => None,
                (None, Some(a)) => {
                    return Err(err(
                        a.span(),
                        "mesh-address without a [mesh]".into(),
                        "add [mesh] with the mesh's network",
                    ))
                }
                (Some(m), given) => {
                    let (a, span) = match given {
                        Some(a) => (ip(a, "mesh-address")?, a.span()),
                        None => (
                            nth_host(&m.network, i as u128 + 1).ok_or_else(|| {
                                err(
                                    n.name.span(),
                                    format!("[mesh] network {} has no address for node {}", m.network, i + 1),
                                    "use a larger network, or give mesh-address",
                                )
                            })?,
                            n.name.span(),
                        ),
                    };
                    if !in_network(&m.network, &a) || a == m.network.addr {
                        return Err(err(
                            span,
                            format!("mesh address {a} is not a host of [mesh] network {}", m.network),
                            "",
                        ));
                    }
                    if !mesh_addresses.insert(a) {
                        return Err(err(span, format!("mesh address {a} is given to two nodes"), ""));
                    }
                    Some(a)
                }
            };
            let mac = match &n.mac {
                None => None,
                Some(m) => {
                    let Some(mac) = cairn_node_config::mac(m.get_ref()) else {
                        return Err(err(
                            m.span(),
                            format!("mac '{}' is not a MAC address", m.get_ref().escape_debug()),
                            "e.g. \"52:54:00:12:34:56\"",
                        ));
                    };
                    if network.is_none() {
                        return Err(err(
                            m.span(),
                            "mac without [network]: it picks the interface that gets the node's address".into(),
                            "add [network] with the prefix length",
                        ));
                    }
                    if !macs.insert(mac.clone()) {
                        return Err(err(m.span(), format!("mac {mac} is given to two nodes"), ""));
                    }
                    Some(mac)
                }
            };
            nodes.push(ClusterNode {
                name: node_name,
                role,
                address,
                mesh_address,
                mac,
            });
        }
        if !nodes.iter().any(|n| n.role == "control-plane") {
            return Err(err(
                0..0,
                "the cluster has no control-plane node".into(),
                "add [[node]] entries with role = \"control-plane\" (three for an etcd that survives one failure)",
            ));
        }
        Ok(Cluster {
            name,
            generation: raw.generation.map_or(1, |g| *g.get_ref()),
            keyserver,
            update_source,
            ssh_keys,
            lease_slots,
            lease_ttl,
            network,
            mesh,
            nodes,
        })
    }

    /// Read and parse `path`.
    pub fn read(path: &Path) -> Result<Cluster, ClusterError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ClusterError {
            file: file.clone(),
            line: 0,
            message: e.to_string(),
            hint: String::new(),
        })?;
        Cluster::parse(&text, &file)
    }

    /// The node.toml of `node` (without the key agent's fingerprint and token, which
    /// `cairn config-drive --keyserver` fills in).
    pub fn node_toml(&self, node: &ClusterNode) -> String {
        use toml_edit::{value, Array, DocumentMut, InlineTable, Item, Table};
        let host = |a: &IpAddr| match a {
            IpAddr::V4(v) => v.to_string(),
            IpAddr::V6(v) => format!("[{v}]"),
        };
        let scheme = if self.keyserver.is_some() { "https" } else { "http" };
        let mut doc = DocumentMut::new();
        doc.decor_mut().set_prefix(format!(
            "# {} of cluster {}, written by `cairn config-drive --cluster`; change the cluster file, not this.\n",
            node.name, self.name
        ));
        doc["version"] = value(1);
        doc["generation"] = value(self.generation as i64);
        doc["hostname"] = value(node.name.as_str());
        doc["role"] = value(node.role.as_str());
        if let Some(net) = &self.network {
            let mut iface = Table::new();
            match &node.mac {
                Some(m) => iface["mac"] = value(m.as_str()),
                None => iface["name"] = value(net.interface.as_str()),
            }
            iface["address"] = value(Array::from_iter([format!("{}/{}", node.address, net.prefix_length)]));
            if let Some(g) = net.gateway {
                iface["gateway"] = value(Array::from_iter([g.to_string()]));
            }
            if !net.dns.is_empty() {
                iface["dns"] = value(Array::from_iter(net.dns.iter().map(|d| d.to_string())));
            }
            let mut list = toml_edit::ArrayOfTables::new();
            list.push(iface);
            let mut network = Table::new();
            network.set_implicit(true);
            network["interface"] = Item::ArrayOfTables(list);
            doc["network"] = Item::Table(network);
        }
        if let (Some(mesh), Some(a)) = (&self.mesh, node.mesh_address) {
            let mut wg = Table::new();
            wg["address"] = value(Array::from_iter([format!("{a}/{}", mesh.network.prefix)]));
            wg["listen-port"] = value(i64::from(mesh.port));
            wg["endpoint"] = value(format!("{}:{}", host(&node.address), mesh.port));
            doc["wireguard"] = Item::Table(wg);
        }
        // Members talk over the mesh when there is one; clients reach them on either.
        let peer_host = |n: &ClusterNode| n.mesh_address.unwrap_or(n.address);
        if node.role == "control-plane" {
            let mut etcd = Table::new();
            let mut clients = vec![format!("{scheme}://{}:2379", host(&peer_host(node)))];
            if node.mesh_address.is_some() {
                clients.push(format!("{scheme}://{}:2379", host(&node.address)));
            }
            etcd["client-urls"] = value(Array::from_iter(clients));
            etcd["peer-urls"] = value(Array::from_iter([format!(
                "{scheme}://{}:2380",
                host(&peer_host(node))
            )]));
            let mut members = InlineTable::new();
            for m in self.nodes.iter().filter(|m| m.role == "control-plane") {
                members.insert(&m.name, format!("{scheme}://{}:2380", host(&peer_host(m))).into());
            }
            etcd["initial-cluster"] = value(members);
            doc["etcd"] = Item::Table(etcd);
        }
        if !self.ssh_keys.is_empty() {
            let mut t = Table::new();
            t["authorized-keys"] = value(Array::from_iter(self.ssh_keys.iter().map(String::as_str)));
            doc["ssh"] = Item::Table(t);
        }
        if let Some(k) = &self.keyserver {
            let mut t = Table::new();
            t["server"] = value(k.as_str());
            doc["key-agent"] = Item::Table(t);
        }
        if let Some(s) = &self.update_source {
            let mut t = Table::new();
            t["source"] = value(s.as_str());
            // A worker takes the lease in the control plane's etcd (members take it in
            // their own): with its etcd-lease certificate when there is a keyserver.
            let members: Vec<String> = self
                .nodes
                .iter()
                .filter(|m| m.role == "control-plane")
                .map(|m| format!("{scheme}://{}:2379", host(&peer_host(m))))
                .collect();
            if node.role == "worker" && !members.is_empty() {
                t["lease-etcd"] = value(Array::from_iter(members));
            }
            if let Some(n) = self.lease_slots {
                t["lease-slots"] = value(i64::from(n));
            }
            if let Some(n) = self.lease_ttl {
                t["lease-ttl"] = value(n as i64);
            }
            doc["update"] = Item::Table(t);
        }
        doc.to_string()
    }
}

/// Host `n` of `net` (`None` past its end).
fn nth_host(net: &cairn_node_config::Cidr, n: u128) -> Option<IpAddr> {
    match net.addr {
        IpAddr::V4(v4) => {
            let size = 1u128 << (32 - u32::from(net.prefix));
            let base = u128::from(u32::from(v4)) & !(size - 1);
            (n < size - 1).then(|| IpAddr::V4(std::net::Ipv4Addr::from((base + n) as u32)))
        }
        IpAddr::V6(v6) => {
            let bits = 128 - u32::from(net.prefix);
            let size = if bits >= 128 { u128::MAX } else { 1u128 << bits };
            let base = u128::from(v6) & !(size.wrapping_sub(1));
            (n < size - 1).then(|| IpAddr::V6(std::net::Ipv6Addr::from(base + n)))
        }
    }
}

/// Whether `a` is in `net`.
fn in_network(net: &cairn_node_config::Cidr, a: &IpAddr) -> bool {
    match (net.addr, a) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(net.prefix)).unwrap_or(0);
            u32::from(n) & mask == u32::from(*a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(net.prefix)).unwrap_or(0);
            u128::from(n) & mask == u128::from(*a) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAB: &str = r#"version = 1
name = "lab"
generation = 4
keyserver = "https://10.0.0.5:8443"
update-source = "http://10.0.0.5:8080/"

[network]
prefix-length = 24
gateway = "10.0.0.1"
dns = ["10.0.0.1"]

[[node]]
name = "cp-1"
role = "control-plane"
address = "10.0.0.11"

[[node]]
name = "cp-2"
role = "control-plane"
address = "10.0.0.12"

[[node]]
name = "w-1"
role = "worker"
address = "10.0.0.21"
"#;

    #[test]
    fn every_node_gets_a_node_toml_that_node_config_accepts() {
        let c = Cluster::parse(LAB, "lab.toml").unwrap();
        assert_eq!((c.nodes.len(), c.generation), (3, 4));
        for n in &c.nodes {
            let text = c.node_toml(n);
            // The key agent's fingerprint and token come from the keyserver later; a
            // stand-in lets node-config check the rest.
            let filled = text.replace(
                "server = \"https://10.0.0.5:8443\"",
                "server = \"https://10.0.0.5:8443\"\nca-fingerprint = \"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\nbootstrap-token = \"ck1.6QZ4B2K9TD.VX3Q7M2K4P8R1C6J9W5T2N7H3F-4JPG\"",
            );
            let config =
                cairn_node_config::NodeConfig::parse(&filled, &n.name).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!((config.hostname.as_str(), config.generation), (n.name.as_str(), 4));
            cairn_node_config::render::plan(&config, &filled).unwrap();
            match n.role.as_str() {
                "control-plane" => {
                    let etcd = config.etcd.expect("control plane runs etcd");
                    assert_eq!(etcd.initial_cluster.len(), 2, "{text}");
                    assert!(text.contains("cp-2 = \"https://10.0.0.12:2380\""), "{text}");
                }
                _ => {
                    assert!(config.etcd.is_none(), "{text}");
                    // The control plane's etcd for the reboot lease, over https: the
                    // worker's etcd-lease certificate from the keyserver.
                    let lease = config.update.unwrap().lease.expect("a worker takes the lease");
                    let urls: Vec<String> = lease.etcd.iter().map(|u| u.to_string()).collect();
                    assert_eq!(urls, ["https://10.0.0.11:2379", "https://10.0.0.12:2379"], "{text}");
                }
            }
        }
    }

    #[test]
    fn a_mesh_gives_every_node_wireguard_and_etcd_talks_over_it() {
        let text = LAB
            .replace(
                "[[node]]\nname = \"cp-1\"",
                "[mesh]\nnetwork = \"10.90.0.0/24\"\n\n[[node]]\nname = \"cp-1\"",
            )
            .replace(
                "address = \"10.0.0.21\"",
                "address = \"10.0.0.21\"\nmesh-address = \"10.90.0.200\"",
            );
        let c = Cluster::parse(&text, "lab.toml").unwrap();
        let mesh: Vec<String> = c.nodes.iter().map(|n| n.mesh_address.unwrap().to_string()).collect();
        assert_eq!(mesh, ["10.90.0.1", "10.90.0.2", "10.90.0.200"]);
        let cp1 = c.node_toml(&c.nodes[0]);
        let filled = cp1.replace(
            "server = \"https://10.0.0.5:8443\"",
            "server = \"https://10.0.0.5:8443\"\nca-fingerprint = \"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\nbootstrap-token = \"ck1.6QZ4B2K9TD.VX3Q7M2K4P8R1C6J9W5T2N7H3F-4JPG\"",
        );
        let config = cairn_node_config::NodeConfig::parse(&filled, "cp-1").unwrap_or_else(|e| panic!("{e}\n{cp1}"));
        let w = config.wireguard.as_ref().expect("a mesh node has WireGuard");
        assert!(w.private_key.is_none(), "no key travels on a drive: {cp1}");
        assert_eq!(w.endpoint.as_deref(), Some("10.0.0.11:51820"));
        assert_eq!(w.address[0].to_string(), "10.90.0.1/24");
        let etcd = config.etcd.as_ref().unwrap();
        assert_eq!(etcd.peer_urls[0].to_string(), "https://10.90.0.1:2380");
        assert_eq!(etcd.client_urls.len(), 2, "{cp1}");
        assert!(cp1.contains("cp-2 = \"https://10.90.0.2:2380\""), "{cp1}");
        // The keyserver's record names the mesh and static addresses in the certificates.
        let record = cairn_keyserver::registry::record_for(&config);
        assert!(record.etcd_peer_ips.contains(&"10.90.0.1".parse().unwrap()));
        assert_eq!(record.mesh.unwrap().endpoint.as_deref(), Some("10.0.0.11:51820"));

        // IPv6 mesh and underlay.
        let v6 = "version = 1\nname = \"v6\"\nkeyserver = \"https://[fd00::5]:8443\"\n[mesh]\nnetwork = \"fd90::/64\"\nport = 51999\n[[node]]\nname = \"cp-1\"\nrole = \"control-plane\"\naddress = \"fd00::11\"\n";
        let c = Cluster::parse(v6, "v6.toml").unwrap();
        let t = c.node_toml(&c.nodes[0]);
        assert!(t.contains("endpoint = \"[fd00::11]:51999\""), "{t}");
        assert!(t.contains("\"fd90::1/64\""), "{t}");
        assert!(t.contains("\"https://[fd90::1]:2380\""), "{t}");
    }

    #[test]
    fn bad_meshes_name_the_line() {
        let node = |name: &str, extra: &str| {
            format!(
                "[[node]]\nname = \"{name}\"\nrole = \"control-plane\"\naddress = \"10.0.0.{}\"\n{extra}",
                name.len()
            )
        };
        let head = "version = 1\nname = \"lab\"\nkeyserver = \"https://10.0.0.5:8443\"\n";
        let cases = [
            (
                format!(
                    "version = 1\nname = \"lab\"\n[mesh]\nnetwork = \"10.90.0.0/24\"\n{}",
                    node("a", "")
                ),
                4,
                "needs a keyserver",
            ),
            (
                format!("{head}[mesh]\nnetwork = \"10.90.0.0/31\"\n{}", node("a", "")),
                5,
                "no room",
            ),
            (
                format!("{head}[mesh]\nnetwork = \"10.90.0\"\n{}", node("a", "")),
                5,
                "[mesh] network",
            ),
            (
                format!(
                    "{head}[mesh]\nnetwork = \"10.90.0.0/30\"\n{}{}{}",
                    node("a", ""),
                    node("bb", ""),
                    node("ccc", "")
                ),
                15,
                "no address for node 3",
            ),
            (
                format!(
                    "{head}[mesh]\nnetwork = \"10.90.0.0/24\"\n{}",
                    node("a", "mesh-address = \"10.91.0.1\"\n")
                ),
                10,
                "not a host of",
            ),
            (
                format!(
                    "{head}[mesh]\nnetwork = \"10.90.0.0/24\"\n{}",
                    node("a", "mesh-address = \"10.90.0.0\"\n")
                ),
                10,
                "not a host of",
            ),
            (
                format!(
                    "{head}[mesh]\nnetwork = \"10.90.0.0/24\"\n{}{}",
                    node("a", ""),
                    node("bb", "mesh-address = \"10.90.0.1\"\n")
                ),
                14,
                "two nodes",
            ),
            (
                format!("{head}{}", node("a", "mesh-address = \"10.90.0.1\"\n")),
                8,
                "without a [mesh]",
            ),
            (
                format!("{head}[mesh]\nnetwork = \"10.90.0.0/24\"\nport = 0\n{}", node("a", "")),
                6,
                "port 0",
            ),
        ];
        for (text, line, want) in cases {
            let e = Cluster::parse(&text, "c.toml").unwrap_err();
            assert!(e.message.contains(want), "{want}: {e}\n{text}");
            assert_eq!(e.line, line, "{want}: {e}\n{text}");
        }
    }

    #[test]
    fn macs_pick_interfaces_and_lease_settings_reach_every_node() {
        let text = LAB
            .replace(
                "update-source = \"http://10.0.0.5:8080/\"",
                "update-source = \"http://10.0.0.5:8080/\"\nlease-slots = 2\nlease-ttl = 300",
            )
            .replace(
                "address = \"10.0.0.11\"",
                "address = \"10.0.0.11\"\nmac = \"52:54:00:AA:00:01\"",
            )
            .replace(
                "[network]",
                "[ssh]\nauthorized-keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDrF3u2k6Jw9OZ0cXcS8wFq3r1a2vLx7mJ8rWqkq3x1T admin@lab\"]\n\n[network]",
            );
        let c = Cluster::parse(&text, "lab.toml").unwrap();
        let cp1 = c.node_toml(&c.nodes[0]);
        assert!(cp1.contains("mac = \"52:54:00:aa:00:01\""), "{cp1}");
        assert!(!cp1.contains("name = \"en*\""), "one match, by MAC: {cp1}");
        let cp2 = c.node_toml(&c.nodes[1]);
        assert!(cp2.contains("name = \"en*\""), "{cp2}");
        for t in [&cp1, &cp2] {
            let filled = t.replace(
                "server = \"https://10.0.0.5:8443\"",
                "server = \"https://10.0.0.5:8443\"\nca-fingerprint = \"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\nbootstrap-token = \"ck1.6QZ4B2K9TD.VX3Q7M2K4P8R1C6J9W5T2N7H3F-4JPG\"",
            );
            let config = cairn_node_config::NodeConfig::parse(&filled, "n").unwrap_or_else(|e| panic!("{e}\n{t}"));
            assert_eq!(config.ssh_authorized_keys.len(), 1, "{t}");
            let lease = config
                .update
                .unwrap()
                .lease
                .expect("a member of a 2-member etcd takes the lease");
            assert_eq!((lease.slots, lease.ttl), (2, 300));
        }
    }

    #[test]
    fn ipv6_addresses_are_bracketed_in_urls() {
        let text =
            "version = 1\nname = \"v6\"\n[[node]]\nname = \"cp-1\"\nrole = \"control-plane\"\naddress = \"fd00::11\"\n";
        let c = Cluster::parse(text, "v6.toml").unwrap();
        let toml = c.node_toml(&c.nodes[0]);
        assert!(toml.contains("\"http://[fd00::11]:2380\""), "{toml}");
        cairn_node_config::NodeConfig::parse(&toml, "cp-1").unwrap();
    }

    #[test]
    fn bad_cluster_files_name_the_line() {
        let node = |name: &str, role: &str, addr: &str| {
            format!("[[node]]\nname = \"{name}\"\nrole = \"{role}\"\naddress = \"{addr}\"\n")
        };
        let head = "version = 1\nname = \"lab\"\n";
        let cases = [
            (
                format!("{head}{}", node("cp-1", "worker", "10.0.0.1")),
                1,
                "no control-plane",
            ),
            (
                format!(
                    "{head}{}{}",
                    node("cp-1", "control-plane", "10.0.0.1"),
                    node("cp-1", "worker", "10.0.0.2")
                ),
                8,
                "listed twice",
            ),
            (
                format!(
                    "{head}{}{}",
                    node("cp-1", "control-plane", "10.0.0.1"),
                    node("w-1", "worker", "10.0.0.1")
                ),
                10,
                "two nodes",
            ),
            (
                format!("{head}{}", node("../x", "control-plane", "10.0.0.1")),
                4,
                "not a node name",
            ),
            (
                format!("{head}{}", node("a\\nb", "control-plane", "10.0.0.1")),
                4,
                "not a node name",
            ),
            (format!("{head}{}", node("cp-1", "master", "10.0.0.1")), 5, "not a role"),
            (
                format!("{head}{}", node("cp-1", "control-plane", "10.0.0.1/24")),
                6,
                "not an IP address",
            ),
            (
                format!(
                    "{head}keyserver = \"http://k:80\"\n{}",
                    node("cp-1", "control-plane", "10.0.0.1")
                ),
                3,
                "not a https URL",
            ),
            (
                format!(
                    "{head}update-source = \"ftp://x/\"\n{}",
                    node("cp-1", "control-plane", "10.0.0.1")
                ),
                3,
                "not an http(s) URL",
            ),
            (
                format!(
                    "{head}update-source = \"http://x/\\n[etcd]\\u0000\"\n{}",
                    node("cp-1", "control-plane", "10.0.0.1")
                ),
                3,
                "control character",
            ),
            (
                format!(
                    "{head}[network]\nprefix-length = 33\n{}",
                    node("cp-1", "control-plane", "10.0.0.1")
                ),
                4,
                "does not fit",
            ),
            (
                format!(
                    "{head}[network]\nprefix-length = 24\ninterface = \"e; rm\"\n{}",
                    node("cp-1", "control-plane", "10.0.0.1")
                ),
                5,
                "not an interface",
            ),
            (
                format!("{head}colour = \"red\"\n{}", node("cp-1", "control-plane", "10.0.0.1")),
                3,
                "unknown field",
            ),
            ("version = 2\nname = \"lab\"\n".to_string(), 1, "version 2"),
            (
                format!(
                    "{head}[network]\nprefix-length = 24\n{}mac = \"52:54:00:12:34\"\n",
                    node("cp-1", "control-plane", "10.0.0.1")
                ),
                9,
                "not a MAC address",
            ),
            (
                format!(
                    "{head}[network]\nprefix-length = 24\n{}mac = \"52:54:00:12:34:56\\n[etcd]\"\n",
                    node("cp-1", "control-plane", "10.0.0.1")
                ),
                9,
                "not a MAC address",
            ),
            (
                format!(
                    "{head}[ssh]\nauthorized-keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDrF3u2k6Jw9OZ0cXcS8wFq3r1a2vLx7mJ8rWqkq3x1T a\\u0000b\"]\n{}",
                    node("cp-1", "control-plane", "10.0.0.1")
                ),
                4,
                "[ssh] authorized-keys",
            ),
            (
                format!(
                    "{head}update-source = \"http://x/\"\nlease-ttl = 99999999999999999999\n{}",
                    node("cp-1", "control-plane", "10.0.0.1")
                ),
                4,
                "too large",
            ),
            (
                format!(
                    "{head}{}mac = \"52:54:00:12:34:56\"\n",
                    node("cp-1", "control-plane", "10.0.0.1")
                ),
                7,
                "mac without [network]",
            ),
            (
                format!(
                    "{head}[network]\nprefix-length = 24\n{}mac = \"52:54:00:12:34:56\"\n{}mac = \"52:54:00:12:34:56\"\n",
                    node("cp-1", "control-plane", "10.0.0.1"),
                    node("cp-2", "control-plane", "10.0.0.2")
                ),
                14,
                "given to two nodes",
            ),
            (
                format!(
                    "{head}[ssh]\nauthorized-keys = [\"ssh-ed25519 AAAA\\nroot\"]\n{}",
                    node("cp-1", "control-plane", "10.0.0.1")
                ),
                4,
                "[ssh] authorized-keys",
            ),
            (
                format!("{head}lease-ttl = 120\n{}", node("cp-1", "control-plane", "10.0.0.1")),
                3,
                "lease-ttl without update-source",
            ),
            (
                format!(
                    "{head}update-source = \"http://x/\"\nlease-ttl = 30\n{}",
                    node("cp-1", "control-plane", "10.0.0.1")
                ),
                4,
                "lease-ttl 30 is not in 60..=86400",
            ),
            (
                format!(
                    "{head}update-source = \"http://x/\"\nlease-slots = 0\n{}",
                    node("cp-1", "control-plane", "10.0.0.1")
                ),
                4,
                "lease-slots 0",
            ),
        ];
        for (text, line, want) in cases {
            let e = Cluster::parse(&text, "c.toml").unwrap_err();
            assert!(e.message.contains(want), "{want}: {e}\n{text}");
            assert_eq!(e.line, line, "{want}: {e}\n{text}");
        }
    }
}
