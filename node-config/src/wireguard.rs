//! `[wireguard]`: the node's tunnel interface, its key, addresses and peers.

use serde::Deserialize;
use toml::Spanned;

use crate::values::{valid_endpoint, Cidr, WgKey};
use crate::{ConfigError, Cx};

/// A WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its public key.
    pub public_key: WgKey,
    /// `host:port` to reach it, if it has a fixed one.
    pub endpoint: Option<String>,
    /// Addresses routed to it.
    pub allowed_ips: Vec<Cidr>,
    /// Keepalive interval in seconds.
    pub persistent_keepalive: Option<u16>,
}

/// The node's WireGuard interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wireguard {
    /// Interface name.
    pub interface: String,
    /// Private key from node.toml; `None`: the node makes its own at first boot and keeps
    /// it on its state partition (peers then come from the keyserver).
    pub private_key: Option<WgKey>,
    /// `HOST:PORT` the other nodes reach this one at (told to them through the keyserver).
    pub endpoint: Option<String>,
    /// Addresses on the interface.
    pub address: Vec<Cidr>,
    /// UDP port.
    pub listen_port: u16,
    /// Peers.
    pub peers: Vec<Peer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawWireguard {
    #[serde(default)]
    pub(crate) interface: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) private_key: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) endpoint: Option<Spanned<String>>,
    pub(crate) address: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) listen_port: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) peer: Vec<RawPeer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawPeer {
    pub(crate) public_key: Spanned<String>,
    #[serde(default)]
    pub(crate) endpoint: Option<Spanned<String>>,
    pub(crate) allowed_ips: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) persistent_keepalive: Option<Spanned<i64>>,
}

pub(crate) fn port(cx: &Cx, p: &Spanned<i64>, what: &str) -> Result<u16, ConfigError> {
    u16::try_from(*p.get_ref()).ok().filter(|p| *p != 0).map_or_else(
        || {
            cx.err(
                Some(p.span()),
                format!("{what} {} is not from 1 to 65535", p.get_ref()),
                "",
            )
        },
        Ok,
    )
}

pub(crate) fn wireguard(cx: &Cx, raw: &RawWireguard, has_keyserver: bool) -> Result<Wireguard, ConfigError> {
    let interface = match &raw.interface {
        None => "wg0".to_string(),
        Some(i) => {
            let v = i.get_ref();
            // Starting with "wg" keeps it from shadowing a wired interface (eth0, lo) whose
            // networkd file would then configure the tunnel, and from "." and "..".
            let ok = v.starts_with("wg")
                && v.len() <= 15
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b));
            if !ok {
                return cx.err(
                    Some(i.span()),
                    format!(
                        "[wireguard] interface '{}' is not a WireGuard interface name",
                        v.escape_debug()
                    ),
                    "\"wg\" and up to 13 lower-case letters, digits, '-' or '_', e.g. wg0 or wg-mesh",
                );
            }
            v.clone()
        }
    };
    let key = |s: &Spanned<String>, what: &str| {
        WgKey::parse(s.get_ref()).or_else(|why| {
            cx.err(
                Some(s.span()),
                format!("[wireguard] {what} {why}"),
                "make one with `wg genkey` (and `wg pubkey` for the public half)",
            )
        })
    };
    let private_key = match &raw.private_key {
        Some(k) => Some(key(k, "private-key")?),
        None if has_keyserver => None,
        None => return cx.err(
            cx.table("wireguard"),
            "[wireguard] has no private-key and the node has no keyserver to tell its public key to",
            "add [key-agent] (the node then makes its key and gets its peers from the keyserver), or give private-key",
        ),
    };
    let endpoint = |e: &Option<Spanned<String>>, what: &str, hint: &str| -> Result<Option<String>, ConfigError> {
        match e {
            None => Ok(None),
            Some(e) if valid_endpoint(e.get_ref()) => Ok(Some(e.get_ref().clone())),
            Some(e) => cx.err(
                Some(e.span()),
                format!("[wireguard] {what} '{}' is not HOST:PORT", e.get_ref().escape_debug()),
                hint,
            ),
        }
    };
    let own_endpoint = endpoint(
        &raw.endpoint,
        "endpoint",
        "where the other nodes reach this one, e.g. \"192.0.2.11:51820\" or \"[2001:db8::11]:51820\"",
    )?;
    let cidrs = |list: &[Spanned<String>], what: &str| -> Result<Vec<Cidr>, ConfigError> {
        list.iter()
            .map(|a| {
                Cidr::parse(a.get_ref()).or_else(|why| cx.err(Some(a.span()), format!("[wireguard] {what}: {why}"), ""))
            })
            .collect()
    };
    let address = cidrs(&raw.address, "address")?;
    if address.is_empty() {
        return cx.err(
            None,
            "[wireguard] address is empty",
            "give the interface its address, e.g. [\"10.90.0.1/24\"]",
        );
    }
    let listen_port = match &raw.listen_port {
        None => 51820,
        Some(p) => port(cx, p, "[wireguard] listen-port")?,
    };
    let mut peers = Vec::new();
    for p in &raw.peer {
        let public_key = key(&p.public_key, "peer public-key")?;
        if private_key.as_ref().is_some_and(|k| public_key == k.public()) {
            return cx.err(
                Some(p.public_key.span()),
                "[wireguard] a peer has this node's own public key",
                "list the other nodes' public keys",
            );
        }
        let endpoint = endpoint(
            &p.endpoint,
            "peer endpoint",
            "e.g. \"192.0.2.2:51820\" or \"[2001:db8::2]:51820\"",
        )?;
        let allowed_ips = cidrs(&p.allowed_ips, "peer allowed-ips")?;
        let persistent_keepalive = match &p.persistent_keepalive {
            None => None,
            Some(k) => Some(port(cx, k, "[wireguard] peer persistent-keepalive")?),
        };
        peers.push(Peer {
            public_key,
            endpoint,
            allowed_ips,
            persistent_keepalive,
        });
    }
    Ok(Wireguard {
        interface,
        private_key,
        endpoint: own_endpoint,
        address,
        listen_port,
        peers,
    })
}
