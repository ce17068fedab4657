//! The node's side of the WireGuard mesh.
//!
//! A node whose node.toml gives `[wireguard]` without a `private-key` makes its own key the
//! first time its config is applied ([`ensure_key`], before systemd-networkd creates the
//! interface) and keeps it on the state partition; only the public half leaves the node, in
//! its enrollment and renewal requests. The key agent then polls the keyserver's peer list
//! (`GET /v1/peers`), keeps it in `/var/lib/cairn/wireguard/<interface>.peers.json`, and
//! brings the interface in step with it ([`sync`]): new nodes are added, changed ones
//! updated, nodes gone from the list removed. Peers node.toml lists itself are never
//! touched. At the agent's start the kept list is applied before the keyserver is asked,
//! so a node that reboots while the keyserver is down is back on the mesh at once.
//!
//! The interface is changed with `wg set`, one peer at a time, with every value checked
//! first (keys, endpoints and addresses come from the network).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;

use cairn_keys::mesh::{Peer, KEEPALIVE};
use cairn_node_config::render::wireguard_key_path;
use cairn_node_config::Wireguard;
use cairn_node_config::{valid_endpoint, valid_hostname, Cidr, WgKey};
use serde::{Deserialize, Serialize};

use crate::apply::{at, write_atomic};

/// Where WireGuard keys and the kept peer list live (state partition).
pub const WG_DIR: &str = "/var/lib/cairn/wireguard";

/// The kept peer list of `interface`.
pub fn peers_file(interface: &str) -> String {
    format!("{WG_DIR}/{interface}.peers.json")
}

/// Where the public half of a key the node made is kept (0644), for what may not read the
/// key itself: the health gate runs without the capability to read systemd-network's files.
pub fn public_file(w: &Wireguard) -> String {
    format!("{WG_DIR}/{}.pub", w.interface)
}

/// Make the node's WireGuard key when node.toml gives none and the node has none yet (or
/// the one it has is unreadable), and keep its public half beside it. Returns the console
/// line when a key was made.
pub fn ensure_key(root: &Path, w: &Wireguard, owner: Option<(u32, u32)>) -> io::Result<Option<String>> {
    if w.private_key.is_some() {
        return Ok(None);
    }
    let path = at(root, &wireguard_key_path(w));
    let public = at(root, &public_file(w));
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(key) = WgKey::parse(text.trim()) {
            let line = format!("{}\n", key.public().to_base64());
            if std::fs::read_to_string(&public).ok().as_deref() != Some(line.as_str()) {
                write_atomic(&public, line.as_bytes(), 0o644, None)?;
            }
            return Ok(None);
        }
    }
    let mut bytes = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    // Clamped as `wg genkey` does (X25519 clamps on use anyway).
    bytes[0] &= 248;
    bytes[31] = (bytes[31] & 127) | 64;
    let key = WgKey(bytes);
    write_atomic(&path, format!("{}\n", key.to_base64()).as_bytes(), 0o600, owner)?;
    write_atomic(
        &public,
        format!("{}\n", key.public().to_base64()).as_bytes(),
        0o644,
        None,
    )?;
    Ok(Some(format!(
        "cairn: made the WireGuard key of {}: public key {}",
        w.interface,
        key.public().to_base64()
    )))
}

/// The node's WireGuard key: node.toml's, or the one it made (readable by the key agent,
/// which may read systemd-network's files).
pub fn node_key(root: &Path, w: &Wireguard) -> Option<WgKey> {
    w.private_key.clone().or_else(|| {
        let text = std::fs::read_to_string(at(root, &wireguard_key_path(w))).ok()?;
        WgKey::parse(text.trim()).ok()
    })
}

/// The public half of the node's WireGuard key (base64): node.toml's key's, or the kept
/// public half of the one it made.
pub fn node_public(root: &Path, w: &Wireguard) -> Option<String> {
    match &w.private_key {
        Some(k) => Some(k.public().to_base64()),
        None => {
            let text = std::fs::read_to_string(at(root, &public_file(w))).ok()?;
            WgKey::parse(text.trim()).ok().map(|k| k.to_base64())
        }
    }
}

/// The public key the node tells the keyserver: of the one key in [`WG_DIR`] (applying a
/// config removes the keys of interfaces it no longer has).
pub fn public_key(root: &Path) -> Option<String> {
    let mut keys: Vec<_> = std::fs::read_dir(at(root, WG_DIR))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "key"))
        .collect();
    keys.sort();
    keys.iter().find_map(|p| {
        let text = std::fs::read_to_string(p).ok()?;
        Some(WgKey::parse(text.trim()).ok()?.public().to_base64())
    })
}

/// The kept peer list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kept {
    /// When the keyserver gave it (its clock).
    pub fetched: u64,
    /// The peers, checked.
    pub peers: Vec<Peer>,
}

/// The kept list of `interface`, if there is a readable one.
pub fn load(root: &Path, interface: &str) -> Option<Kept> {
    let text = std::fs::read_to_string(at(root, &peers_file(interface))).ok()?;
    serde_json::from_str(&text).ok()
}

/// Keep `kept` for `interface` (0644: public keys and addresses only).
pub fn save(root: &Path, interface: &str, kept: &Kept) -> io::Result<()> {
    let text = serde_json::to_string_pretty(kept).expect("a peer list always serializes");
    write_atomic(&at(root, &peers_file(interface)), text.as_bytes(), 0o644, None)
}

/// The peers of a list that are safe to give `wg`, and a line for each that is not. A
/// peer with the node's own key or a key node.toml lists is left out, as is a second
/// peer with a key already listed.
pub fn checked(list: &[Peer], own: Option<&WgKey>, statics: &BTreeSet<String>) -> (Vec<Peer>, Vec<String>) {
    let own = own.map(|k| k.public().to_base64());
    let mut good: Vec<Peer> = Vec::new();
    let mut bad = Vec::new();
    let mut seen = BTreeSet::new();
    for p in list {
        let name = p.node.escape_debug().to_string();
        let why = if !valid_hostname(&p.node) {
            Some("its name is not a host name".to_string())
        } else if let Err(why) = cairn_keys::mesh::check_public_key(&p.public_key) {
            Some(why)
        } else if own.as_deref() == Some(p.public_key.as_str()) {
            Some("it has this node's own key".into())
        } else if statics.contains(&p.public_key) {
            Some("node.toml lists its key as a fixed peer".into())
        } else if !seen.insert(p.public_key.clone()) {
            Some("another peer has its key".into())
        } else if p.endpoint.as_deref().is_some_and(|e| !valid_endpoint(e)) {
            Some("its endpoint is not HOST:PORT".into())
        } else if p.allowed_ips.is_empty() {
            Some("it has no address".into())
        } else {
            // The mesh routes nodes' own addresses only: a list that gives one node a whole
            // network would take traffic meant for others.
            p.allowed_ips
                .iter()
                .find(|a| !host_route(a))
                .map(|a| format!("'{}' is not one address (/32 or /128)", a.escape_debug()))
        };
        match why {
            None => good.push(p.clone()),
            Some(why) => bad.push(format!("peer {name} left out: {why}")),
        }
    }
    (good, bad)
}

/// Whether `a` is one address in its canonical form, as `wg` prints it back.
fn host_route(a: &str) -> bool {
    Cidr::parse(a).is_ok_and(|c| {
        let full = if c.addr.is_ipv4() { 32 } else { 128 };
        c.prefix == full && cairn_keys::mesh::host_route(&c.addr) == a
    })
}

/// One peer as the interface has it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LivePeer {
    /// Its endpoint (`(none)` → `None`).
    pub endpoint: Option<String>,
    /// Its allowed IPs.
    pub allowed_ips: BTreeSet<String>,
    /// Its keepalive (`off` → `None`).
    pub keepalive: Option<u16>,
}

/// The peers of `wg show INTERFACE dump` (the interface's own line first, then one
/// tab-separated line per peer: key, preshared key, endpoint, allowed IPs, latest
/// handshake, bytes received, bytes sent, keepalive).
pub fn parse_dump(text: &str) -> Result<BTreeMap<String, LivePeer>, String> {
    let mut peers = BTreeMap::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 8 {
            return Err(format!("wg show dump line {}: {} fields, not 8", i + 1, f.len()));
        }
        let endpoint = (f[2] != "(none)").then(|| f[2].to_string());
        let allowed_ips = if f[3] == "(none)" {
            BTreeSet::new()
        } else {
            f[3].split(',').map(str::to_string).collect()
        };
        let keepalive = match f[7] {
            "off" => None,
            n => Some(
                n.parse()
                    .map_err(|_| format!("wg show dump line {}: keepalive '{n}'", i + 1))?,
            ),
        };
        peers.insert(
            f[0].to_string(),
            LivePeer {
                endpoint,
                allowed_ips,
                keepalive,
            },
        );
    }
    Ok(peers)
}

/// The `wg set` argument lists that bring `live` to `want` on `interface`: peers not
/// wanted and not fixed in node.toml removed, new ones added, changed ones updated. A live
/// endpoint is left alone unless the keyserver's changed since `before` (WireGuard moves it
/// to wherever the peer last spoke from, which is right behind NAT).
pub fn plan(
    interface: &str,
    live: &BTreeMap<String, LivePeer>,
    want: &[Peer],
    before: &[Peer],
    statics: &BTreeSet<String>,
) -> Vec<Vec<String>> {
    let wanted: BTreeSet<&str> = want.iter().map(|p| p.public_key.as_str()).collect();
    let mut out = Vec::new();
    for key in live.keys() {
        if !wanted.contains(key.as_str()) && !statics.contains(key) {
            out.push(vec![
                "set".into(),
                interface.into(),
                "peer".into(),
                key.clone(),
                "remove".into(),
            ]);
        }
    }
    for p in want {
        let ips: BTreeSet<String> = p.allowed_ips.iter().cloned().collect();
        let mut args = vec!["set".to_string(), interface.into(), "peer".into(), p.public_key.clone()];
        let cur = live.get(&p.public_key);
        let endpoint_changed = before
            .iter()
            .find(|b| b.public_key == p.public_key)
            .is_none_or(|b| b.endpoint != p.endpoint);
        let mut changed = cur.is_none();
        if let Some(e) = &p.endpoint {
            if cur.is_none_or(|c| c.endpoint.is_none()) || endpoint_changed {
                changed |= cur.is_none_or(|c| c.endpoint.as_ref() != Some(e));
                args.extend(["endpoint".into(), e.clone()]);
            }
        }
        if cur.is_none_or(|c| c.allowed_ips != ips) {
            changed = true;
        }
        args.extend(["allowed-ips".into(), ips.iter().cloned().collect::<Vec<_>>().join(",")]);
        if cur.is_none_or(|c| c.keepalive != Some(KEEPALIVE)) {
            changed = true;
        }
        args.extend(["persistent-keepalive".into(), KEEPALIVE.to_string()]);
        if changed {
            out.push(args);
        }
    }
    out
}

/// What runs `wg` (the real tool on a node; tests give another).
pub trait WgTool {
    /// `wg show INTERFACE dump`.
    fn dump(&self, interface: &str) -> Result<String, String>;
    /// `wg ARGS…`.
    fn run(&self, args: &[String]) -> Result<(), String>;
}

/// `/usr/bin/wg`.
pub struct SystemWg;

impl WgTool for SystemWg {
    fn dump(&self, interface: &str) -> Result<String, String> {
        let out = std::process::Command::new("wg")
            .args(["show", interface, "dump"])
            .output()
            .map_err(|e| format!("running wg: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "wg show {interface} dump: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn run(&self, args: &[String]) -> Result<(), String> {
        let out = std::process::Command::new("wg")
            .args(args)
            .output()
            .map_err(|e| format!("running wg: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "wg {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Synced {
    /// Peers added or changed.
    pub set: usize,
    /// Peers removed.
    pub removed: usize,
    /// Peers on the interface afterwards that came from the keyserver.
    pub peers: usize,
}

/// Bring `interface` in step with `want` (checked), having applied `before` last.
pub fn sync(
    tool: &dyn WgTool,
    interface: &str,
    want: &[Peer],
    before: &[Peer],
    statics: &BTreeSet<String>,
) -> Result<Synced, String> {
    let live = parse_dump(&tool.dump(interface)?)?;
    let mut done = Synced {
        peers: want.len(),
        ..Synced::default()
    };
    for args in plan(interface, &live, want, before, statics) {
        tool.run(&args)?;
        if args.last().map(String::as_str) == Some("remove") {
            done.removed += 1;
        } else {
            done.set += 1;
        }
    }
    Ok(done)
}

/// The public keys node.toml fixes as peers.
pub fn static_keys(w: &Wireguard) -> BTreeSet<String> {
    w.peers.iter().map(|p| p.public_key.to_base64()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> String {
        WgKey([b; 32]).to_base64()
    }

    fn peer(b: u8, endpoint: Option<&str>) -> Peer {
        Peer {
            node: format!("n{b}"),
            public_key: key(b),
            endpoint: endpoint.map(str::to_string),
            allowed_ips: vec![format!("10.90.0.{b}/32")],
        }
    }

    fn dump(peers: &[(u8, &str, &str, &str)]) -> String {
        let mut s = format!("{}\t{}\t51820\toff\n", key(0), key(99));
        for (k, e, ips, ka) in peers {
            s.push_str(&format!("{}\t(none)\t{e}\t{ips}\t0\t0\t0\t{ka}\n", key(*k)));
        }
        s
    }

    #[test]
    fn a_dump_reads_as_wg_prints_it() {
        let live = parse_dump(&dump(&[
            (1, "192.0.2.1:51820", "10.90.0.1/32", "25"),
            (2, "(none)", "(none)", "off"),
            (3, "[2001:db8::3]:51820", "10.90.0.3/32,fd00::3/128", "25"),
        ]))
        .unwrap();
        assert_eq!(live.len(), 3);
        assert_eq!(live[&key(1)].endpoint.as_deref(), Some("192.0.2.1:51820"));
        assert_eq!(live[&key(2)], LivePeer::default());
        assert_eq!(live[&key(3)].allowed_ips.len(), 2);
        assert!(parse_dump("iface\nshort\tline\n").is_err());
    }

    #[test]
    fn plans_add_change_and_remove_only_what_differs() {
        let statics: BTreeSet<String> = [key(9)].into();
        let want = vec![peer(1, Some("192.0.2.1:51820")), peer(2, None)];
        // An empty interface: both added.
        let p = plan("wg0", &BTreeMap::new(), &want, &[], &statics);
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0],
            [
                "set",
                "wg0",
                "peer",
                &key(1),
                "endpoint",
                "192.0.2.1:51820",
                "allowed-ips",
                "10.90.0.1/32",
                "persistent-keepalive",
                "25"
            ]
        );
        // In step (peer 1 roamed to another address, which is left alone): nothing to do;
        // node.toml's fixed peer stays.
        let live = parse_dump(&dump(&[
            (1, "198.51.100.7:40000", "10.90.0.1/32", "25"),
            (2, "(none)", "10.90.0.2/32", "25"),
            (9, "192.0.2.9:51820", "10.90.0.9/32", "off"),
        ]))
        .unwrap();
        assert!(plan("wg0", &live, &want, &want, &statics).is_empty());
        // The keyserver moved peer 1 and dropped peer 2.
        let moved = vec![peer(1, Some("192.0.2.77:51820"))];
        let p = plan("wg0", &live, &moved, &want, &statics);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0], ["set", "wg0", "peer", &key(2), "remove"]);
        assert!(p[1].contains(&"192.0.2.77:51820".to_string()));
    }

    #[test]
    fn hostile_peers_never_reach_wg() {
        let own = WgKey([5; 32]);
        let statics: BTreeSet<String> = [key(9)].into();
        let mut list = vec![peer(1, Some("192.0.2.1:51820"))];
        let mut evil = |f: &dyn Fn(&mut Peer)| {
            let mut p = peer(2, Some("192.0.2.2:51820"));
            f(&mut p);
            list.push(p);
        };
        evil(&|p| p.node = "n2\nx".into());
        evil(&|p| p.public_key = "-x".into());
        evil(&|p| p.public_key = format!("{}\n", key(2)));
        evil(&|p| p.public_key = own.public().to_base64());
        evil(&|p| p.public_key = key(9));
        evil(&|p| p.public_key = key(1));
        evil(&|p| p.endpoint = Some("192.0.2.2:51820 allowed-ips 0.0.0.0/0".into()));
        evil(&|p| p.endpoint = Some("--help".into()));
        evil(&|p| p.allowed_ips = vec![]);
        evil(&|p| p.allowed_ips = vec!["0.0.0.0/0,10.0.0.0/8".into()]);
        evil(&|p| p.allowed_ips = vec!["10.90.0.2/32 remove".into()]);
        evil(&|p| p.allowed_ips = vec!["0.0.0.0/0".into()]);
        evil(&|p| p.allowed_ips = vec!["10.90.0.0/24".into()]);
        let (good, bad) = checked(&list, Some(&own), &statics);
        assert_eq!(good, vec![peer(1, Some("192.0.2.1:51820"))]);
        assert_eq!(bad.len(), list.len() - 1, "{bad:?}");
        assert!(bad.iter().any(|l| l.contains("own key")), "{bad:?}");
    }
}
