//! `[etcd]`: the member's name, data directory, URLs, initial cluster and TLS files, with
//! a single-node default for every key.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::values::{valid_hostname, StatePath, Url};
use crate::{ConfigError, Cx};

/// The data directory etcd keeps its members' data under.
pub const ETCD_DATA_ROOT: &str = "/var/lib/etcd";

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

/// etcd's certificate files: from `[etcd.tls]` (one pair and one CA for clients and peers
/// alike), or, on a node with a `[key-agent]`, the key agent's (below).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The certificate etcd serves clients with.
    pub cert: StatePath,
    /// Its key.
    pub key: StatePath,
    /// The CA whose clients are let in.
    pub ca: StatePath,
    /// The certificate etcd serves and shows peers.
    pub peer_cert: StatePath,
    /// Its key.
    pub peer_key: StatePath,
    /// The CA whose peers are let in.
    pub peer_ca: StatePath,
}

/// Where the key agent keeps a profile's current files.
fn pki(profile: &str, file: &str) -> StatePath {
    StatePath::under(
        "/var/lib/cairn",
        &format!("/var/lib/cairn/pki/{profile}/current/{file}"),
    )
    .expect("a plain path")
}

impl EtcdTls {
    /// The key agent's certificates: the etcd-server pair for clients (who must show an
    /// etcd-client certificate), the etcd-peer pair for peers (who must show one of the
    /// etcd-peer CA). `both.pem` holds certificate and key in one file, so etcd never reads
    /// a certificate beside the wrong key while the agent switches generations.
    pub fn from_key_agent() -> EtcdTls {
        EtcdTls {
            cert: pki("etcd-server", "both.pem"),
            key: pki("etcd-server", "both.pem"),
            ca: pki("etcd-client", "bundle.pem"),
            peer_cert: pki("etcd-peer", "both.pem"),
            peer_key: pki("etcd-peer", "both.pem"),
            peer_ca: pki("etcd-peer", "bundle.pem"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawEtcd {
    #[serde(default)]
    pub(crate) name: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) data_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) client_urls: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(crate) peer_urls: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(crate) initial_cluster: Option<Spanned<BTreeMap<String, Spanned<StringOrList>>>>,
    #[serde(default)]
    pub(crate) initial_cluster_state: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) tls: Option<RawEtcdTls>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum StringOrList {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawEtcdTls {
    pub(crate) cert: Spanned<String>,
    pub(crate) key: Spanned<String>,
    pub(crate) ca: Spanned<String>,
}

pub(crate) fn urls(cx: &Cx, list: &[Spanned<String>], what: &str) -> Result<Vec<Url>, ConfigError> {
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

pub(crate) fn etcd(cx: &Cx, raw: Option<&RawEtcd>, hostname: &str, key_agent: bool) -> Result<Etcd, ConfigError> {
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
        let (cert, key, ca) = (file(&t.cert)?, file(&t.key)?, file(&t.ca)?);
        Ok(EtcdTls {
            peer_cert: cert.clone(),
            peer_key: key.clone(),
            peer_ca: ca.clone(),
            cert,
            key,
            ca,
        })
    });
    // With a keyserver, etcd speaks TLS with the key agent's certificates unless [etcd.tls]
    // brings others.
    let tls = tls.transpose()?.or_else(|| key_agent.then(EtcdTls::from_key_agent));
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
                "use https:// URLs with [etcd.tls] or [key-agent], and http:// without them",
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

pub(crate) fn join(urls: &[Url]) -> String {
    urls.iter().map(Url::to_string).collect::<Vec<_>>().join(",")
}
