//! The small value types node.toml is made of, each parsed and checked on its own:
//! addresses with prefixes, WireGuard keys, etcd-style URLs, paths on the state partition,
//! endpoints and host names.

use std::net::IpAddr;

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
