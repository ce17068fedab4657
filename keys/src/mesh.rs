//! The WireGuard mesh: each node makes its own WireGuard key and tells the keyserver only
//! the public half (at enrollment and with every renewal); the keyserver answers
//! `GET /v1/peers` (over TLS with the node's identity certificate) with every other
//! enrolled node's public key, endpoint and mesh addresses, and the key agent keeps the
//! node's interface in step with it. No WireGuard secret is ever on a config drive, and a
//! node added later is reached by the others at their next poll, without touching them.

use std::net::IpAddr;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// What the keyserver's registry knows of a node's place in the mesh (from its node.toml).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshRecord {
    /// The node's addresses on its WireGuard interface: the others route them to it.
    pub ips: Vec<IpAddr>,
    /// `HOST:PORT` the others reach it at; none for a node behind NAT or on DHCP, which
    /// then reaches out to them (every peer gets a keepalive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// One other node, as `GET /v1/peers` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The node's name.
    pub node: String,
    /// Its WireGuard public key (base64, as `wg` prints it).
    pub public_key: String,
    /// Where to reach it, when it has a fixed place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Its mesh addresses, as host routes (`10.90.0.2/32`, `fd00::2/128`).
    pub allowed_ips: Vec<String>,
}

/// The answer to `GET /v1/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersResponse {
    /// Every other enrolled, unlocked node that has told its WireGuard key, by name.
    pub peers: Vec<Peer>,
    /// The keyserver's clock (Unix seconds).
    pub server_time: u64,
}

/// Keepalive (seconds) on every mesh peer, so nodes without an endpoint (behind NAT, on
/// DHCP) are reached through the tunnel they opened.
pub const KEEPALIVE: u16 = 25;

/// A WireGuard public key as the wire carries it: standard base64 of 32 bytes, nothing else.
pub fn check_public_key(s: &str) -> Result<[u8; 32], String> {
    if s.len() != 44 {
        return Err(format!("a WireGuard key is 44 base64 characters, not {}", s.len()));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("a WireGuard key is base64 ({e})"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| "a WireGuard key is 32 bytes".to_string())
}

/// The host route for a mesh address.
pub fn host_route(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_exactly_32_bytes_of_base64() {
        let good = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(check_public_key(&good).unwrap(), [7u8; 32]);
        for bad in [
            "",
            "short",
            &good[..43],
            &format!("{good}\n"),
            &good.replace('B', "-"),
            &base64::engine::general_purpose::STANDARD.encode([7u8; 33])[..44],
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\0=",
        ] {
            assert!(check_public_key(bad).is_err(), "{bad:?}");
        }
        assert_eq!(host_route(&"10.90.0.2".parse().unwrap()), "10.90.0.2/32");
        assert_eq!(host_route(&"fd00::2".parse().unwrap()), "fd00::2/128");
    }
}
