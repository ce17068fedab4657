//! `[[network.interface]]`: wired interfaces chosen by name glob or MAC, with DHCP or static
//! addresses, gateways, DNS servers and routes.

use std::net::IpAddr;

use serde::Deserialize;
use toml::Spanned;

use crate::values::Cidr;
use crate::{ConfigError, Cx};

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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawNetwork {
    #[serde(default)]
    pub(crate) interface: Vec<Spanned<RawInterface>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawInterface {
    #[serde(default)]
    pub(crate) name: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) mac: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) dhcp: Option<bool>,
    #[serde(default)]
    pub(crate) address: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) gateway: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) dns: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) route: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawRoute {
    pub(crate) to: Spanned<String>,
    pub(crate) via: Spanned<String>,
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

pub(crate) fn ip(cx: &Cx, s: &Spanned<String>, what: &str) -> Result<IpAddr, ConfigError> {
    s.get_ref().parse().or_else(|_| {
        cx.err(
            Some(s.span()),
            format!("[network] {what} '{}' is not an IP address", s.get_ref()),
            "",
        )
    })
}

pub(crate) fn interface(cx: &Cx, raw: &Spanned<RawInterface>) -> Result<Interface, ConfigError> {
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
