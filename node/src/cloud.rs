//! Cloud-init drives Cairn understands, turned into a node.toml.
//!
//! Data we consume is read leniently: keys Cairn does not use are ignored. What Cairn does
//! use is turned into node.toml text and then goes through the same strict validation as a
//! Cairn drive, so a bad address or key is refused the same way, naming the drive's file.
//!
//! **NoCloud** (label `cidata`): `meta-data` (`instance-id`, `local-hostname`), `user-data`
//! (`#cloud-config`: `hostname`, `ssh_authorized_keys`, and the `ssh_authorized_keys` of
//! every `users` entry — root is Cairn's only login account), `network-config` (version 1:
//! `physical` entries with `static`/`dhcp` subnets; version 2: `ethernets` with `match`,
//! `dhcp4`, `addresses`, `gateway4`/`gateway6`, `routes`, `nameservers`).
//!
//! **OpenStack config drive** (label `config-2`): `openstack/latest/meta_data.json` (`uuid`,
//! `hostname`, `public_keys`) and `openstack/latest/network_data.json` (`links` by MAC,
//! `networks` of type `ipv4`/`ipv6` with `ip_address`, `netmask`, `routes`, or `*_dhcp`;
//! `services` of type `dns`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

/// What a cloud drive says about the node, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudNode {
    /// The instance identity; a different one makes the drive count as newer.
    pub instance_id: String,
    /// Host name.
    pub hostname: Option<String>,
    /// SSH keys for root.
    pub ssh_keys: Vec<String>,
    /// Interfaces, as node.toml `[[network.interface]]` bodies.
    pub interfaces: Vec<CloudInterface>,
}

/// One interface from cloud network data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudInterface {
    /// Match by MAC.
    pub mac: Option<String>,
    /// Or by name.
    pub name: Option<String>,
    /// DHCP.
    pub dhcp: bool,
    /// `ADDR/PREFIX` addresses.
    pub addresses: Vec<String>,
    /// Gateways.
    pub gateways: Vec<String>,
    /// DNS servers.
    pub dns: Vec<String>,
    /// `(to, via)` routes.
    pub routes: Vec<(String, String)>,
}

fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|s| toml_str(s)).collect::<Vec<_>>().join(", "))
}

impl CloudNode {
    /// The node.toml this cloud data stands for, at `generation`.
    pub fn to_node_toml(&self, generation: u64, format: &str) -> String {
        let mut s = format!(
            "# Converted by cairn-node from a {format} drive (instance-id {}).\nversion = 1\ngeneration = {generation}\nhostname = {}\n",
            self.instance_id.replace(char::is_control, " "),
            toml_str(self.hostname.as_deref().unwrap_or("cairn"))
        );
        for i in &self.interfaces {
            s.push_str("\n[[network.interface]]\n");
            if let Some(m) = &i.mac {
                let _ = writeln!(s, "mac = {}", toml_str(m));
            } else if let Some(n) = &i.name {
                let _ = writeln!(s, "name = {}", toml_str(n));
            }
            let _ = writeln!(s, "dhcp = {}", i.dhcp || i.addresses.is_empty());
            for (k, v) in [("address", &i.addresses), ("gateway", &i.gateways), ("dns", &i.dns)] {
                if !v.is_empty() {
                    let _ = writeln!(s, "{k} = {}", toml_list(v));
                }
            }
            for (to, via) in &i.routes {
                let _ = writeln!(
                    s,
                    "[[network.interface.route]]\nto = {}\nvia = {}",
                    toml_str(to),
                    toml_str(via)
                );
            }
        }
        if !self.ssh_keys.is_empty() {
            let _ = writeln!(s, "\n[ssh]\nauthorized-keys = {}", toml_list(&self.ssh_keys));
        }
        s
    }
}

/// A problem with one file of a cloud drive.
pub type FileError = (String, String);

fn yaml(file: &str, bytes: &[u8]) -> Result<Yaml, FileError> {
    let text = std::str::from_utf8(bytes).map_err(|_| (file.to_string(), "is not UTF-8 text".to_string()))?;
    if text.trim().is_empty() {
        return Ok(Yaml::Null);
    }
    serde_yaml_ng::from_str(text).map_err(|e| (file.to_string(), format!("is not valid YAML: {e}")))
}

fn ystr(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn ylist(v: &Yaml) -> Vec<String> {
    match v {
        Yaml::Sequence(s) => s.iter().filter_map(ystr).collect(),
        Yaml::String(s) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// `a.b.c` lookup in YAML mappings.
fn ypath<'a>(v: &'a Yaml, path: &[&str]) -> Option<&'a Yaml> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

/// A netmask (`255.255.255.0` or `ffff:…` or a bare prefix) as a prefix length.
fn prefix_of(mask: &str) -> Option<u32> {
    if let Ok(p) = mask.parse::<u32>() {
        return Some(p);
    }
    let bits: u128 = match mask.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
        std::net::IpAddr::V6(a) => u128::from(a),
    };
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones)
}

fn with_prefix(addr: &str, mask: Option<&str>) -> String {
    match (addr.contains('/'), mask.and_then(prefix_of)) {
        (false, Some(p)) => format!("{addr}/{p}"),
        _ => addr.to_string(),
    }
}

/// An instance identity is saved as one line and compared on every boot: printable ASCII
/// without blanks, 1 to 255 bytes.
fn check_instance_id(file: &str, key: &str, id: &str) -> Result<(), FileError> {
    if id.is_empty() || id.len() > 255 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err((
            file.to_string(),
            format!(
                "{key} {:?} is not 1 to 255 printable characters without blanks",
                id.chars().take(64).collect::<String>()
            ),
        ));
    }
    Ok(())
}

/// Read a NoCloud drive's files.
pub fn nocloud(files: &BTreeMap<String, Vec<u8>>) -> Result<CloudNode, FileError> {
    let meta = files.get("meta-data").ok_or((
        "meta-data".to_string(),
        "is missing (a NoCloud drive needs it)".to_string(),
    ))?;
    let meta = yaml("meta-data", meta)?;
    let instance_id = meta
        .get("instance-id")
        .and_then(ystr)
        .ok_or(("meta-data".to_string(), "has no instance-id".to_string()))?;
    check_instance_id("meta-data", "instance-id", &instance_id)?;
    let mut node = CloudNode {
        instance_id,
        hostname: meta.get("local-hostname").and_then(ystr),
        ..CloudNode::default()
    };
    if let Some(ud) = files.get("user-data") {
        let text = String::from_utf8_lossy(ud);
        if text.starts_with("#cloud-config") {
            let ud = yaml("user-data", ud)?;
            if let Some(h) = ud.get("hostname").and_then(ystr) {
                node.hostname = Some(h);
            }
            node.ssh_keys
                .extend(ud.get("ssh_authorized_keys").map(ylist).unwrap_or_default());
            if let Some(Yaml::Sequence(users)) = ud.get("users") {
                for u in users {
                    node.ssh_keys
                        .extend(u.get("ssh_authorized_keys").map(ylist).unwrap_or_default());
                }
            }
        }
    }
    if let Some(nc) = files.get("network-config") {
        let nc = yaml("network-config", nc)?;
        let nc = nc.get("network").unwrap_or(&nc);
        node.interfaces = match nc.get("version").and_then(ystr).as_deref() {
            Some("1") => network_v1(nc),
            Some("2") => network_v2(nc),
            None if nc.is_null() => Vec::new(),
            other => {
                return Err((
                    "network-config".into(),
                    format!(
                        "has version {}, Cairn reads versions 1 and 2",
                        other.unwrap_or("(none)")
                    ),
                ))
            }
        };
    }
    Ok(node)
}

fn network_v1(nc: &Yaml) -> Vec<CloudInterface> {
    let mut out = Vec::new();
    let mut dns: Vec<String> = Vec::new();
    for entry in nc.get("config").and_then(Yaml::as_sequence).into_iter().flatten() {
        match entry.get("type").and_then(ystr).as_deref() {
            Some("physical") => {
                let mut i = CloudInterface {
                    mac: entry.get("mac_address").and_then(ystr),
                    name: entry.get("name").and_then(ystr),
                    ..CloudInterface::default()
                };
                for sub in entry.get("subnets").and_then(Yaml::as_sequence).into_iter().flatten() {
                    match sub.get("type").and_then(ystr).as_deref() {
                        Some("dhcp" | "dhcp4" | "dhcp6") => i.dhcp = true,
                        Some("static" | "static6") => {
                            if let Some(a) = sub.get("address").and_then(ystr) {
                                let mask = sub.get("netmask").and_then(ystr);
                                i.addresses.push(with_prefix(&a, mask.as_deref()));
                            }
                            i.gateways.extend(sub.get("gateway").and_then(ystr));
                            i.dns.extend(sub.get("dns_nameservers").map(ylist).unwrap_or_default());
                            for r in sub.get("routes").and_then(Yaml::as_sequence).into_iter().flatten() {
                                if let (Some(net), Some(gw)) =
                                    (r.get("network").and_then(ystr), r.get("gateway").and_then(ystr))
                                {
                                    let mask = r.get("netmask").and_then(ystr);
                                    i.routes.push((with_prefix(&net, mask.as_deref()), gw));
                                }
                            }
                        }
                        _ => {}
                    }
                }
                out.push(i);
            }
            Some("nameserver") => dns.extend(entry.get("address").map(ylist).unwrap_or_default()),
            _ => {}
        }
    }
    if let Some(first) = out.first_mut() {
        first.dns.extend(dns);
    }
    out
}

fn network_v2(nc: &Yaml) -> Vec<CloudInterface> {
    let mut out = Vec::new();
    let Some(Yaml::Mapping(eths)) = nc.get("ethernets") else {
        return out;
    };
    for (id, e) in eths {
        let mut i = CloudInterface {
            mac: ypath(e, &["match", "macaddress"]).and_then(ystr),
            name: ypath(e, &["match", "name"])
                .and_then(ystr)
                .or_else(|| e.get("set-name").and_then(ystr))
                .or_else(|| ystr(id)),
            dhcp: [e.get("dhcp4"), e.get("dhcp6")]
                .iter()
                .flatten()
                .any(|v| v.as_bool() == Some(true)),
            addresses: e.get("addresses").map(ylist).unwrap_or_default(),
            ..CloudInterface::default()
        };
        for g in ["gateway4", "gateway6"] {
            i.gateways.extend(e.get(g).and_then(ystr));
        }
        i.dns = ypath(e, &["nameservers", "addresses"]).map(ylist).unwrap_or_default();
        for r in e.get("routes").and_then(Yaml::as_sequence).into_iter().flatten() {
            if let (Some(to), Some(via)) = (r.get("to").and_then(ystr), r.get("via").and_then(ystr)) {
                if to == "default" || to == "0.0.0.0/0" || to == "::/0" {
                    i.gateways.push(via);
                } else {
                    i.routes.push((to, via));
                }
            }
        }
        out.push(i);
    }
    out
}

fn json(file: &str, bytes: &[u8]) -> Result<Json, FileError> {
    serde_json::from_slice(bytes).map_err(|e| (file.to_string(), format!("is not valid JSON: {e}")))
}

fn jstr(v: Option<&Json>) -> Option<String> {
    v.and_then(Json::as_str).map(str::to_string)
}

/// Read an OpenStack config drive's files.
pub fn config_drive(files: &BTreeMap<String, Vec<u8>>) -> Result<CloudNode, FileError> {
    const META: &str = "openstack/latest/meta_data.json";
    const NET: &str = "openstack/latest/network_data.json";
    let meta = json(
        META,
        files
            .get(META)
            .ok_or((META.to_string(), "is missing (a config-2 drive needs it)".to_string()))?,
    )?;
    let instance_id = jstr(meta.get("uuid")).ok_or((META.to_string(), "has no uuid".to_string()))?;
    check_instance_id(META, "uuid", &instance_id)?;
    let mut node = CloudNode {
        instance_id,
        hostname: jstr(meta.get("hostname")).or_else(|| jstr(meta.get("name"))),
        ..CloudNode::default()
    };
    if let Some(Json::Object(keys)) = meta.get("public_keys") {
        node.ssh_keys = keys.values().filter_map(|k| k.as_str().map(str::to_string)).collect();
    }
    if let Some(net) = files.get(NET) {
        let net = json(NET, net)?;
        let dns: Vec<String> = net
            .get("services")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter(|s| s.get("type").and_then(Json::as_str) == Some("dns"))
            .filter_map(|s| jstr(s.get("address")))
            .collect();
        let mut by_link: BTreeMap<String, CloudInterface> = BTreeMap::new();
        for link in net.get("links").and_then(Json::as_array).into_iter().flatten() {
            if let Some(id) = jstr(link.get("id")) {
                by_link.insert(
                    id,
                    CloudInterface {
                        mac: jstr(link.get("ethernet_mac_address")),
                        ..CloudInterface::default()
                    },
                );
            }
        }
        for n in net.get("networks").and_then(Json::as_array).into_iter().flatten() {
            let Some(i) = jstr(n.get("link")).and_then(|l| by_link.get_mut(&l)) else {
                continue;
            };
            let ty = jstr(n.get("type")).unwrap_or_default();
            if ty.ends_with("_dhcp") || ty == "ipv6_slaac" {
                i.dhcp = true;
            } else if ty == "ipv4" || ty == "ipv6" {
                if let Some(a) = jstr(n.get("ip_address")) {
                    i.addresses.push(with_prefix(&a, jstr(n.get("netmask")).as_deref()));
                }
                for r in n.get("routes").and_then(Json::as_array).into_iter().flatten() {
                    let (Some(net), Some(gw)) = (jstr(r.get("network")), jstr(r.get("gateway"))) else {
                        continue;
                    };
                    let to = with_prefix(&net, jstr(r.get("netmask")).as_deref());
                    if to == "0.0.0.0/0" || to == "::/0" {
                        i.gateways.push(gw);
                    } else {
                        i.routes.push((to, gw));
                    }
                }
            }
        }
        node.interfaces = by_link.into_values().filter(|i| i.mac.is_some()).collect();
        if let Some(first) = node.interfaces.first_mut() {
            first.dns = dns;
        }
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks_become_prefixes() {
        assert_eq!(prefix_of("255.255.255.0"), Some(24));
        assert_eq!(prefix_of("255.255.0.0"), Some(16));
        assert_eq!(prefix_of("ffff:ffff:ffff:ffff::"), Some(64));
        assert_eq!(prefix_of("255.0.255.0"), None);
        assert_eq!(prefix_of("24"), Some(24));
        assert_eq!(with_prefix("10.0.0.1", Some("255.255.255.0")), "10.0.0.1/24");
        assert_eq!(with_prefix("10.0.0.1/8", Some("255.255.255.0")), "10.0.0.1/8");
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str("a\"b\\c\nd"), "\"a\\\"b\\\\c\\u000ad\"");
    }
}
