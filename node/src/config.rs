//! `node.toml`: one node's identity and component settings.
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
//! private-key = "<base64, 32 bytes>"
//! address = ["10.90.0.1/24"]
//! listen-port = 51820
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

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

/// The health gates `[health]` can set time limits for.
pub const HEALTH_GATES: [&str; 5] = ["etcd", "containerd", "wireguard", "kubelet", "sshd"];

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

/// What the node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs etcd (and, with a kubelet, the control-plane pods).
    ControlPlane,
    /// Runs workloads only; no etcd.
    Worker,
}

impl Role {
    /// The spelling in node.toml.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
        }
    }
}

/// An address with a prefix length (`10.0.0.1/24`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// Parse `ADDR/PREFIX`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}' has no prefix length (write e.g. 10.0.0.1/24)"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("'{a}' is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("'{p}' is not a prefix length from 0 to {max}"))?;
        Ok(Cidr { addr, prefix })
    }
}

/// A WireGuard key: 32 bytes, written in base64.
#[derive(Clone, PartialEq, Eq)]
pub struct WgKey(pub [u8; 32]);

impl std::fmt::Debug for WgKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WgKey(…)")
    }
}

impl WgKey {
    /// Decode the base64 form `wg genkey` prints.
    pub fn parse(s: &str) -> Result<WgKey, String> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| "is not base64 (a WireGuard key is 44 characters, as `wg genkey` prints)".to_string())?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("decodes to {} bytes, a WireGuard key has 32", b.len()))?;
        Ok(WgKey(key))
    }

    /// The base64 form.
    pub fn to_base64(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// The public key of this private key (what `wg pubkey` prints).
    pub fn public(&self) -> WgKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        WgKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }
}

/// An `http(s)://host:port` URL as etcd takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `http` or `https`.
    pub scheme: String,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

impl Url {
    /// Parse `http://HOST:PORT` or `https://HOST:PORT` (no path).
    pub fn parse(s: &str) -> Result<Url, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("'{s}' is not a URL (write e.g. http://10.0.0.1:2379)"))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("'{s}': the scheme must be http or https"));
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, p) = v6
                .split_once("]:")
                .ok_or_else(|| format!("'{s}': write IPv6 hosts as [ADDR]:PORT"))?;
            h.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("'{s}': '{h}' is not an IPv6 address"))?;
            (h, p)
        } else {
            let (h, p) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("'{s}' has no port (write e.g. {scheme}://{rest}:2379)"))?;
            if !valid_hostname(h) && h.parse::<IpAddr>().is_err() {
                return Err(format!("'{s}': '{h}' is not a host name or address"));
            }
            (h, p)
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("'{s}': '{port}' is not a port from 1 to 65535"))?;
        Ok(Url {
            scheme: scheme.to_string(),
            host: host.to_string(),
            port,
        })
    }
}

/// An absolute path under a fixed directory of the state partition, of plain names only:
/// each component letters, digits, `.`, `_` and `-`, never `.` or `..`, at most 255 bytes in
/// all. Nothing else can be built, so such a path is safe in an environment file, a unit
/// file or on a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePath(String);

impl StatePath {
    /// Check `path`, which must lie strictly below `root` (itself such a path).
    pub fn under(root: &str, path: &str) -> Result<StatePath, String> {
        let rest = path
            .strip_prefix(root)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| format!("'{}' is not under {root}/", path.escape_debug()))?;
        let plain = |c: &str| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if path.len() > 255 || !rest.split('/').all(plain) {
            return Err(format!(
                "'{}' is not a plain path: use letters, digits, '.', '_' and '-' between single slashes",
                path.escape_debug()
            ));
        }
        Ok(StatePath(path.to_string()))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for StatePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A WireGuard endpoint: `HOST:PORT`, `IPv4:PORT` or `[IPv6]:PORT`, the port 1 to 65535 in
/// plain digits.
pub fn valid_endpoint(v: &str) -> bool {
    let Some((host, port)) = v.rsplit_once(':') else {
        return false;
    };
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => !host.contains(':') && (host.parse::<std::net::Ipv4Addr>().is_ok() || valid_hostname(host)),
    };
    port_ok && host_ok
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// etcd settings (control-plane nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Etcd {
    /// Member name.
    pub name: String,
    /// Data directory, under /var/lib/etcd (default `/var/lib/etcd/default`).
    pub data_dir: StatePath,
    /// Client URLs: listened on and advertised.
    pub client_urls: Vec<Url>,
    /// Peer URLs: listened on and advertised.
    pub peer_urls: Vec<Url>,
    /// name → peer URLs of every initial member.
    pub initial_cluster: BTreeMap<String, Vec<Url>>,
    /// `new` or `existing`.
    pub initial_cluster_state: String,
    /// TLS files, when the node has them.
    pub tls: Option<EtcdTls>,
}

/// etcd's certificate files (written by the key agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// Server and peer certificate.
    pub cert: StatePath,
    /// Its key.
    pub key: StatePath,
    /// CA that signs clients and peers.
    pub ca: StatePath,
}

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
    /// Private key.
    pub private_key: WgKey,
    /// Addresses on the interface.
    pub address: Vec<Cidr>,
    /// UDP port.
    pub listen_port: u16,
    /// Peers.
    pub peers: Vec<Peer>,
}

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    /// Key.
    pub key: String,
    /// Value (may be empty).
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// kubelet settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubelet {
    /// Labels the kubelet registers the node with.
    pub node_labels: BTreeMap<String, String>,
    /// Taints it registers with.
    pub taints: Vec<Taint>,
    /// Cluster DNS addresses.
    pub cluster_dns: Vec<IpAddr>,
    /// Cluster domain.
    pub cluster_domain: String,
}

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

/// When a node reboots into an installed update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootPolicy {
    /// Right after the update is installed.
    Now,
    /// Never by itself: an operator reboots it.
    Never,
    /// At this local time of day (hour, minute): a reboot window.
    At(u8, u8),
}

/// Automatic updates: `[update]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The published directory (`cairn publish`), ending in `/`: `index.json` is there.
    pub source: String,
    /// When to reboot into an installed update.
    pub reboot: RebootPolicy,
}

/// How an interface is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// Interface names, with `*` globs (`en*`).
    Name(String),
    /// A MAC address (lower case).
    Mac(String),
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination.
    pub to: Cidr,
    /// Next hop.
    pub via: IpAddr,
}

/// One network interface's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Which interface.
    pub matches: Match,
    /// Ask DHCP (v4 and v6) for addresses.
    pub dhcp: bool,
    /// Static addresses.
    pub address: Vec<Cidr>,
    /// Default gateway(s).
    pub gateway: Vec<IpAddr>,
    /// DNS servers.
    pub dns: Vec<IpAddr>,
    /// Static routes.
    pub routes: Vec<Route>,
}

/// The key agent's server and bootstrap credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAgent {
    /// `https://host:port` of the keyserver.
    pub server: Url,
    /// sha256 of the keyserver CA's certificate (DER), 32 bytes.
    pub ca_fingerprint: [u8; 32],
    /// One-time bootstrap token.
    pub bootstrap_token: String,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawUpdate {
    source: Spanned<String>,
    #[serde(default)]
    reboot: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawNetwork {
    #[serde(default)]
    interface: Vec<Spanned<RawInterface>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawInterface {
    #[serde(default)]
    name: Option<Spanned<String>>,
    #[serde(default)]
    mac: Option<Spanned<String>>,
    #[serde(default)]
    dhcp: Option<bool>,
    #[serde(default)]
    address: Vec<Spanned<String>>,
    #[serde(default)]
    gateway: Vec<Spanned<String>>,
    #[serde(default)]
    dns: Vec<Spanned<String>>,
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRoute {
    to: Spanned<String>,
    via: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSsh {
    #[serde(default)]
    authorized_keys: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKeyAgent {
    server: Spanned<String>,
    ca_fingerprint: Spanned<String>,
    bootstrap_token: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawEtcd {
    #[serde(default)]
    name: Option<Spanned<String>>,
    #[serde(default)]
    data_dir: Option<Spanned<String>>,
    #[serde(default)]
    client_urls: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    peer_urls: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    initial_cluster: Option<Spanned<BTreeMap<String, Spanned<StringOrList>>>>,
    #[serde(default)]
    initial_cluster_state: Option<Spanned<String>>,
    #[serde(default)]
    tls: Option<RawEtcdTls>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawEtcdTls {
    cert: Spanned<String>,
    key: Spanned<String>,
    ca: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawWireguard {
    #[serde(default)]
    interface: Option<Spanned<String>>,
    private_key: Spanned<String>,
    address: Vec<Spanned<String>>,
    #[serde(default)]
    listen_port: Option<Spanned<i64>>,
    #[serde(default)]
    peer: Vec<RawPeer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPeer {
    public_key: Spanned<String>,
    #[serde(default)]
    endpoint: Option<Spanned<String>>,
    allowed_ips: Vec<Spanned<String>>,
    #[serde(default)]
    persistent_keepalive: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKubelet {
    #[serde(default)]
    node_labels: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    taints: Vec<Spanned<String>>,
    #[serde(default)]
    cluster_dns: Vec<Spanned<String>>,
    #[serde(default)]
    cluster_domain: Option<Spanned<String>>,
}

struct Cx<'a> {
    file: &'a str,
    src: &'a str,
}

impl Cx<'_> {
    /// Where the first header of table `name` (`[name]` or `[name.…]`) is.
    fn table(&self, name: &str) -> Option<Range<usize>> {
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

    fn err<T>(&self, span: Option<Range<usize>>, message: impl Into<String>, hint: &str) -> Result<T, ConfigError> {
        Err(ConfigError {
            file: self.file.to_string(),
            line: span.map(|s| self.src[..s.start.min(self.src.len())].matches('\n').count() + 1),
            message: message.into(),
            hint: (!hint.is_empty()).then(|| hint.to_string()),
        })
    }
}

/// The data directory etcd keeps its members' data under.
pub const ETCD_DATA_ROOT: &str = "/var/lib/etcd";

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
            (Role::ControlPlane, e) => Some(etcd(&cx, e.as_ref(), &hostname)?),
        };
        let wireguard = match &raw.wireguard {
            None => None,
            Some(w) => Some(wireguard(&cx, w)?),
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
            Some(u) => Some(update(&cx, u)?),
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

fn urls(cx: &Cx, list: &[Spanned<String>], what: &str) -> Result<Vec<Url>, ConfigError> {
    if list.is_empty() {
        return cx.err(
            None,
            format!("[etcd] {what} is empty"),
            "list at least one URL, or leave the key out",
        );
    }
    list.iter()
        .map(|u| Url::parse(u.get_ref()).or_else(|why| cx.err(Some(u.span()), format!("[etcd] {what}: {why}"), "")))
        .collect()
}

fn etcd(cx: &Cx, raw: Option<&RawEtcd>, hostname: &str) -> Result<Etcd, ConfigError> {
    let empty = RawEtcd {
        name: None,
        data_dir: None,
        client_urls: None,
        peer_urls: None,
        initial_cluster: None,
        initial_cluster_state: None,
        tls: None,
    };
    let raw = raw.unwrap_or(&empty);
    let name = match &raw.name {
        None => hostname.to_string(),
        Some(n) if valid_hostname(n.get_ref()) => n.get_ref().clone(),
        Some(n) => {
            return cx.err(
                Some(n.span()),
                format!("[etcd] name '{}' is not a member name", n.get_ref()),
                "use letters, digits and '-' (it defaults to the host name)",
            )
        }
    };
    let data_dir = match &raw.data_dir {
        // Not named after the member: a renamed node keeps its data (etcd keeps the member
        // its data directory records), and renames do not pile up directories.
        None => StatePath::under(ETCD_DATA_ROOT, &format!("{ETCD_DATA_ROOT}/default")).expect("a plain path"),
        Some(d) => StatePath::under(ETCD_DATA_ROOT, d.get_ref()).or_else(|why| {
            cx.err(
                Some(d.span()),
                format!("[etcd] data-dir {why}"),
                "etcd may only write under /var/lib/etcd on the state partition; leave it out for /var/lib/etcd/default",
            )
        })?,
    };
    let tls = raw.tls.as_ref().map(|t| -> Result<EtcdTls, ConfigError> {
        let file = |s: &Spanned<String>| {
            StatePath::under("/var/lib/cairn", s.get_ref()).or_else(|why| {
                cx.err(
                    Some(s.span()),
                    format!("[etcd.tls] {why}"),
                    "certificates live on the state partition, e.g. /var/lib/cairn/pki/etcd.crt",
                )
            })
        };
        Ok(EtcdTls {
            cert: file(&t.cert)?,
            key: file(&t.key)?,
            ca: file(&t.ca)?,
        })
    });
    let tls = tls.transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let default = |port: u16| vec![format!("{scheme}://127.0.0.1:{port}")];
    let spanned_default = |port| {
        default(port)
            .into_iter()
            .map(|s| Spanned::new(0..0, s))
            .collect::<Vec<_>>()
    };
    let client_raw = raw.client_urls.clone().unwrap_or_else(|| spanned_default(2379));
    let peer_raw = raw.peer_urls.clone().unwrap_or_else(|| spanned_default(2380));
    let client_urls = urls(cx, &client_raw, "client-urls")?;
    let peer_urls = urls(cx, &peer_raw, "peer-urls")?;
    for (u, r) in client_urls
        .iter()
        .zip(&client_raw)
        .chain(peer_urls.iter().zip(&peer_raw))
    {
        if u.scheme != scheme {
            return cx.err(
                Some(r.span()),
                format!(
                    "[etcd] URL {u} uses {}, but etcd runs {}",
                    u.scheme,
                    if tls.is_some() { "with TLS" } else { "without TLS" }
                ),
                "use https:// URLs with [etcd.tls] and http:// without it",
            );
        }
        if u.host == "0.0.0.0" || u.host == "::" {
            return cx.err(
                Some(r.span()),
                format!("[etcd] URL {u} is listened on and advertised; an unspecified address cannot be advertised"),
                "name the address peers and clients reach this node at",
            );
        }
    }
    let initial_cluster = match &raw.initial_cluster {
        None => BTreeMap::from([(name.clone(), peer_urls.clone())]),
        Some(map) => {
            let mut out = BTreeMap::new();
            for (member, v) in map.get_ref() {
                if !valid_hostname(member) {
                    return cx.err(
                        Some(v.span()),
                        format!("[etcd] initial-cluster member '{member}' is not a member name"),
                        "",
                    );
                }
                let list = match v.get_ref() {
                    StringOrList::One(s) => vec![s.clone()],
                    StringOrList::Many(l) => l.clone(),
                };
                let mut parsed = Vec::new();
                for s in &list {
                    parsed.push(Url::parse(s).or_else(|why| {
                        cx.err(Some(v.span()), format!("[etcd] initial-cluster {member}: {why}"), "")
                    })?);
                }
                out.insert(member.clone(), parsed);
            }
            match out.get(&name) {
                None => {
                    return cx.err(
                        Some(map.span()),
                        format!("[etcd] initial-cluster does not list this member ('{name}')"),
                        "add this node: its name (defaults to the host name) = its peer URL",
                    )
                }
                Some(mine) if *mine != peer_urls => {
                    return cx.err(
                        Some(map.span()),
                        format!(
                            "[etcd] initial-cluster gives '{name}' {}, but peer-urls is {}",
                            join(mine),
                            join(&peer_urls)
                        ),
                        "make this member's entry match peer-urls",
                    )
                }
                Some(_) => {}
            }
            out
        }
    };
    let initial_cluster_state = match &raw.initial_cluster_state {
        None => "new".to_string(),
        Some(s) if s.get_ref() == "new" || s.get_ref() == "existing" => s.get_ref().clone(),
        Some(s) => {
            return cx.err(
                Some(s.span()),
                format!("[etcd] initial-cluster-state '{}' is not a state", s.get_ref()),
                "use \"new\" (bootstrapping a cluster) or \"existing\" (joining one)",
            )
        }
    };
    Ok(Etcd {
        name,
        data_dir,
        client_urls,
        peer_urls,
        initial_cluster,
        initial_cluster_state,
        tls,
    })
}

fn join(urls: &[Url]) -> String {
    urls.iter().map(Url::to_string).collect::<Vec<_>>().join(",")
}

fn port(cx: &Cx, p: &Spanned<i64>, what: &str) -> Result<u16, ConfigError> {
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

fn wireguard(cx: &Cx, raw: &RawWireguard) -> Result<Wireguard, ConfigError> {
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
    let private_key = key(&raw.private_key, "private-key")?;
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
        if public_key == private_key.public() {
            return cx.err(
                Some(p.public_key.span()),
                "[wireguard] a peer has this node's own public key",
                "list the other nodes' public keys",
            );
        }
        let endpoint = match &p.endpoint {
            None => None,
            Some(e) => {
                let v = e.get_ref();
                if !valid_endpoint(v) {
                    return cx.err(
                        Some(e.span()),
                        format!("[wireguard] peer endpoint '{v}' is not HOST:PORT"),
                        "e.g. \"192.0.2.2:51820\" or \"[2001:db8::2]:51820\"",
                    );
                }
                Some(v.clone())
            }
        };
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
        address,
        listen_port,
        peers,
    })
}

/// A Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a name of at most
/// 63 alphanumerics, `-`, `_` or `.` that starts and ends alphanumeric.
pub fn valid_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(|p| valid_hostname(p) && p.chars().all(|c| !c.is_ascii_uppercase()))
        && valid_label_value(name)
        && !name.is_empty()
}

/// Whether a kubelet may register its node with label `key` (`--node-labels`): any key
/// outside the `kubernetes.io` and `k8s.io` namespaces, and within them only the well-known
/// node labels and the `kubelet.kubernetes.io` and `node.kubernetes.io` namespaces (what
/// the kubelet itself and the API server's NodeRestriction admit).
pub fn kubelet_may_set(key: &str) -> bool {
    const WELL_KNOWN: [&str; 12] = [
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "node.kubernetes.io/windows-build",
    ];
    let Some((ns, _)) = key.split_once('/') else {
        return true;
    };
    let within = |d: &str| ns == d || ns.ends_with(&format!(".{d}"));
    if !within("kubernetes.io") && !within("k8s.io") {
        return true;
    }
    WELL_KNOWN.contains(&key) || within("kubelet.kubernetes.io") || within("node.kubernetes.io")
}

/// A Kubernetes label value: empty, or at most 63 alphanumerics, `-`, `_` or `.` that
/// starts and ends alphanumeric.
pub fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn kubelet(cx: &Cx, raw: &RawKubelet) -> Result<Kubelet, ConfigError> {
    let mut node_labels = BTreeMap::new();
    for (k, v) in &raw.node_labels {
        if !valid_label_key(k) {
            return cx.err(
                Some(v.span()),
                format!("[kubelet] node-labels key '{k}' is not a label key"),
                "e.g. \"topology.kubernetes.io/zone\" or \"tier\"",
            );
        }
        if !kubelet_may_set(k) {
            return cx.err(
                Some(v.span()),
                format!("[kubelet] node-labels key '{k}' is reserved"),
                "a kubelet may only set kubernetes.io and k8s.io labels of its own (kubernetes.io/arch, topology.kubernetes.io/zone, node.kubernetes.io/…); set others, like node-role.kubernetes.io/, with kubectl",
            );
        }
        if !valid_label_value(v.get_ref()) {
            return cx.err(
                Some(v.span()),
                format!("[kubelet] node-labels value '{}' is not a label value", v.get_ref()),
                "at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric",
            );
        }
        node_labels.insert(k.clone(), v.get_ref().clone());
    }
    let mut taints = Vec::new();
    for t in &raw.taints {
        let v = t.get_ref();
        let parsed = v.rsplit_once(':').and_then(|(kv, effect)| {
            let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
            (valid_label_key(key)
                && valid_label_value(value)
                && ["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect))
            .then(|| Taint {
                key: key.to_string(),
                value: value.to_string(),
                effect: effect.to_string(),
            })
        });
        match parsed {
            Some(t) => taints.push(t),
            None => {
                return cx.err(
                    Some(t.span()),
                    format!("[kubelet] taint '{v}' is not KEY[=VALUE]:EFFECT"),
                    "e.g. \"dedicated=etcd:NoSchedule\"; the effect is NoSchedule, PreferNoSchedule or NoExecute",
                )
            }
        }
    }
    let mut cluster_dns = Vec::new();
    for d in &raw.cluster_dns {
        cluster_dns.push(d.get_ref().parse::<IpAddr>().or_else(|_| {
            cx.err(
                Some(d.span()),
                format!("[kubelet] cluster-dns '{}' is not an IP address", d.get_ref()),
                "the cluster DNS service address, e.g. \"10.96.0.10\"",
            )
        })?);
    }
    let cluster_domain = match &raw.cluster_domain {
        None => "cluster.local".to_string(),
        Some(d) if valid_hostname(d.get_ref()) => d.get_ref().clone(),
        Some(d) => {
            return cx.err(
                Some(d.span()),
                format!("[kubelet] cluster-domain '{}' is not a domain", d.get_ref()),
                "",
            )
        }
    };
    Ok(Kubelet {
        node_labels,
        taints,
        cluster_dns,
        cluster_domain,
    })
}

/// SSH public key types sshd accepts.
const SSH_KEY_TYPES: [&str; 8] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
];

/// Check an authorized_keys line (`TYPE BASE64 [comment]`, no options) and return it
/// normalized to one line.
pub fn ssh_key(line: &str) -> Result<String, String> {
    use base64::Engine;
    let line = line.trim();
    if line.contains('\n') || line.contains('\r') {
        return Err("one key per list item".into());
    }
    if line.contains('\0') {
        return Err("the key holds a NUL character".into());
    }
    let mut words = line.split_whitespace();
    let ty = words.next().ok_or("the key is empty")?;
    if !SSH_KEY_TYPES.contains(&ty) {
        return Err(format!(
            "'{ty}' is not an SSH public key type (options before the key are not supported)"
        ));
    }
    let blob = words.next().ok_or("the key has no base64 part")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| "the key's base64 part does not decode".to_string())?;
    // The blob is a sequence of SSH strings (u32 length, bytes): the type again, then the
    // key's fields; a truncated or padded blob is refused.
    let mut fields = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let len = rest
            .get(..4)
            .map(|l| u32::from_be_bytes(l.try_into().expect("4 bytes")) as usize)
            .filter(|l| *l <= rest.len() - 4)
            .ok_or_else(|| format!("the key's data is cut off (not a whole {ty} key)"))?;
        fields.push(&rest[4..4 + len]);
        rest = &rest[4 + len..];
    }
    if fields.first() != Some(&ty.as_bytes()) {
        return Err(format!("the key's data is not a {ty} key"));
    }
    let curve_point = |curve: &str, len: usize| {
        fields.len() >= 3 && fields[1] == curve.as_bytes() && fields[2].len() == len && fields[2][0] == 4
    };
    let whole = match ty {
        "ssh-ed25519" => fields.len() == 2 && fields[1].len() == 32,
        "sk-ssh-ed25519@openssh.com" => fields.len() == 3 && fields[1].len() == 32,
        "ssh-rsa" => fields.len() == 3 && fields[2].len() >= 128,
        "ecdsa-sha2-nistp256" => fields.len() == 3 && curve_point("nistp256", 65),
        "ecdsa-sha2-nistp384" => fields.len() == 3 && curve_point("nistp384", 97),
        "ecdsa-sha2-nistp521" => fields.len() == 3 && curve_point("nistp521", 133),
        "sk-ecdsa-sha2-nistp256@openssh.com" => fields.len() == 4 && curve_point("nistp256", 65),
        "ssh-dss" => fields.len() == 5,
        _ => false,
    };
    if !whole {
        return Err(format!("the key's data is not a whole {ty} key (cut off or padded)"));
    }
    let comment: Vec<&str> = words.collect();
    if comment.iter().any(|w| w.chars().any(|c| c.is_control())) {
        return Err("the key's comment holds a control character".into());
    }
    let mut normalized = vec![ty, blob];
    normalized.extend(comment);
    Ok(normalized.join(" "))
}

/// Whether the shell-style glob `pattern` (`*` and `?`) matches all of `name`.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer matching with backtracking to the last '*'.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// Whether `pattern` matches some name that starts with `prefix`.
pub fn glob_may_match_prefix(pattern: &str, prefix: &str) -> bool {
    let mut p = pattern.chars();
    for want in prefix.chars() {
        match p.next() {
            Some('*') => return true,
            Some(c) if c == '?' || c == want => {}
            _ => return false,
        }
    }
    true
}

/// A MAC address `aa:bb:cc:dd:ee:ff`, returned in lower case.
pub fn mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(':').collect();
    (parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit())))
    .then(|| s.to_ascii_lowercase())
}

fn ip(cx: &Cx, s: &Spanned<String>, what: &str) -> Result<IpAddr, ConfigError> {
    s.get_ref().parse().or_else(|_| {
        cx.err(
            Some(s.span()),
            format!("[network] {what} '{}' is not an IP address", s.get_ref()),
            "",
        )
    })
}

fn interface(cx: &Cx, raw: &Spanned<RawInterface>) -> Result<Interface, ConfigError> {
    let i = raw.get_ref();
    let matches = match (&i.name, &i.mac) {
        (Some(n), None) => {
            let v = n.get_ref();
            if v.is_empty()
                || v.len() > 15
                || !v.starts_with(|c: char| c.is_ascii_alphanumeric() || "*?".contains(c))
                || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.*?".contains(c))
            {
                return cx.err(
                    Some(n.span()),
                    format!("[[network.interface]] name '{v}' is not an interface name or glob"),
                    "e.g. \"eth0\", \"enp1s0\" or \"en*\"",
                );
            }
            Match::Name(v.clone())
        }
        (None, Some(m)) => Match::Mac(mac(m.get_ref()).map_or_else(
            || {
                cx.err(
                    Some(m.span()),
                    format!("[[network.interface]] mac '{}' is not a MAC address", m.get_ref()),
                    "six hex pairs, e.g. \"52:54:00:12:34:56\"",
                )
            },
            Ok,
        )?),
        _ => {
            return cx.err(
                Some(raw.span()),
                "[[network.interface]] needs exactly one of name and mac",
                "name = \"en*\" matches by name; mac = \"52:54:00:12:34:56\" by address",
            )
        }
    };
    let address = i
        .address
        .iter()
        .map(|a| {
            Cidr::parse(a.get_ref()).or_else(|why| cx.err(Some(a.span()), format!("[network] address: {why}"), ""))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let dhcp = i.dhcp.unwrap_or(address.is_empty());
    if !dhcp && address.is_empty() {
        return cx.err(
            Some(raw.span()),
            "[[network.interface]] has neither DHCP nor an address",
            "set dhcp = true, or give it address = [\"192.0.2.10/24\"]",
        );
    }
    let gateway = i
        .gateway
        .iter()
        .map(|g| ip(cx, g, "gateway"))
        .collect::<Result<Vec<_>, _>>()?;
    let dns = i.dns.iter().map(|d| ip(cx, d, "dns")).collect::<Result<Vec<_>, _>>()?;
    let mut routes = Vec::new();
    for r in &i.route {
        let to = Cidr::parse(r.to.get_ref())
            .or_else(|why| cx.err(Some(r.to.span()), format!("[network] route to: {why}"), ""))?;
        let via = ip(cx, &r.via, "route via")?;
        routes.push(Route { to, via });
    }
    Ok(Interface {
        matches,
        dhcp,
        address,
        gateway,
        dns,
        routes,
    })
}

fn update(cx: &Cx, raw: &RawUpdate) -> Result<Update, ConfigError> {
    let src = raw.source.get_ref();
    let base = src.split_once("://").and_then(|(scheme, rest)| {
        let host_port = rest.split('/').next().unwrap_or("");
        let ok = (scheme == "http" || scheme == "https")
            && !host_port.is_empty()
            && Url::parse(&format!("{scheme}://{host_port}"))
                .or_else(|_| {
                    Url::parse(&format!(
                        "{scheme}://{host_port}:{}",
                        if scheme == "http" { 80 } else { 443 }
                    ))
                })
                .is_ok()
            && rest.bytes().all(|b| b.is_ascii_graphic())
            && !rest.contains(['?', '#', '"', '\'', '\\', '`', '<', '>']);
        ok.then(|| {
            if src.ends_with('/') {
                src.clone()
            } else {
                format!("{src}/")
            }
        })
    });
    let Some(source) = base else {
        return cx.err(
            Some(raw.source.span()),
            format!(
                "[update] source '{}' is not an http(s) URL of a directory",
                src.escape_debug()
            ),
            "the directory `cairn publish` made for this image, e.g. \"https://updates.example.net/cairn/node/\"",
        );
    };
    let reboot = match raw.reboot.as_ref().map(|r| (r.get_ref().as_str(), r.span())) {
        None | Some(("now", _)) => RebootPolicy::Now,
        Some(("never", _)) => RebootPolicy::Never,
        Some((t, span)) => {
            let parsed = t.split_once(':').and_then(|(h, m)| {
                let (h, m): (u8, u8) = (h.parse().ok()?, m.parse().ok()?);
                (h < 24 && m < 60 && t.len() == 5).then_some((h, m))
            });
            match parsed {
                Some((h, m)) => RebootPolicy::At(h, m),
                None => {
                    return cx.err(
                        Some(span),
                        format!("[update] reboot = '{t}' is not \"now\", \"never\" or a time \"HH:MM\""),
                        "e.g. reboot = \"03:30\" to reboot into an update at the next 03:30 (local time)",
                    )
                }
            }
        }
    };
    Ok(Update { source, reboot })
}

fn key_agent(cx: &Cx, raw: &RawKeyAgent) -> Result<KeyAgent, ConfigError> {
    let server = Url::parse(raw.server.get_ref())
        .ok()
        .filter(|u| u.scheme == "https")
        .map_or_else(
            || {
                cx.err(
                    Some(raw.server.span()),
                    format!(
                        "[key-agent] server '{}' is not an https://HOST:PORT URL",
                        raw.server.get_ref()
                    ),
                    "the keyserver only speaks TLS, e.g. \"https://keys.example.net:8443\"",
                )
            },
            Ok,
        )?;
    let fp = raw.ca_fingerprint.get_ref();
    let hexpart = fp.strip_prefix("sha256:").unwrap_or(fp).replace(':', "");
    let ca_fingerprint: [u8; 32] = hex::decode(&hexpart).ok().and_then(|b| b.try_into().ok()).map_or_else(
        || {
            cx.err(
                Some(raw.ca_fingerprint.span()),
                "[key-agent] ca-fingerprint is not a sha256 fingerprint",
                "\"sha256:\" and 64 hex digits, e.g. from `openssl x509 -noout -fingerprint -sha256 -in ca.crt`",
            )
        },
        Ok,
    )?;
    let token = raw.bootstrap_token.get_ref();
    if token.len() < 16 || !token.chars().all(|c| c.is_ascii_graphic()) {
        return cx.err(
            Some(raw.bootstrap_token.span()),
            "[key-agent] bootstrap-token must be at least 16 printable characters without spaces",
            "use the token the keyserver issued for this node",
        );
    }
    Ok(KeyAgent {
        server,
        ca_fingerprint,
        bootstrap_token: token.clone(),
    })
}
