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
//! [[node]]
//! name = "cp-1"
//! role = "control-plane"                    # or "worker" (no etcd member)
//! address = "10.0.0.11"
//! ```
//!
//! Control-plane nodes form one etcd cluster on their addresses (`https` with a keyserver,
//! whose certificates the key agents get; plain `http` without one). Each generated file is
//! parsed and planned exactly as a hand-written node.toml is before any drive is written.

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
    /// Static network settings.
    pub network: Option<Network>,
    /// The nodes, in file order.
    pub nodes: Vec<ClusterNode>,
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
    network: Option<RawNetwork>,
    #[serde(default)]
    node: Vec<RawNode>,
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
        let mut nodes = Vec::new();
        let (mut names, mut addresses) = (BTreeSet::new(), BTreeSet::new());
        for n in &raw.node {
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
            nodes.push(ClusterNode {
                name: node_name,
                role,
                address,
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
            network,
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
            iface["name"] = value(net.interface.as_str());
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
        if node.role == "control-plane" {
            let mut etcd = Table::new();
            etcd["client-urls"] = value(Array::from_iter([format!("{scheme}://{}:2379", host(&node.address))]));
            etcd["peer-urls"] = value(Array::from_iter([format!("{scheme}://{}:2380", host(&node.address))]));
            let mut members = InlineTable::new();
            for m in self.nodes.iter().filter(|m| m.role == "control-plane") {
                members.insert(&m.name, format!("{scheme}://{}:2380", host(&m.address)).into());
            }
            etcd["initial-cluster"] = value(members);
            doc["etcd"] = Item::Table(etcd);
        }
        if let Some(k) = &self.keyserver {
            let mut t = Table::new();
            t["server"] = value(k.as_str());
            doc["key-agent"] = Item::Table(t);
        }
        if let Some(s) = &self.update_source {
            let mut t = Table::new();
            t["source"] = value(s.as_str());
            doc["update"] = Item::Table(t);
        }
        doc.to_string()
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
                _ => assert!(config.etcd.is_none(), "{text}"),
            }
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
        ];
        for (text, line, want) in cases {
            let e = Cluster::parse(&text, "c.toml").unwrap_err();
            assert!(e.message.contains(want), "{want}: {e}\n{text}");
            assert_eq!(e.line, line, "{want}: {e}\n{text}");
        }
    }
}
