//! `[update]`: where the node looks for releases, and when it reboots into one.

use serde::Deserialize;
use toml::Spanned;

use crate::values::Url;
use crate::{ConfigError, Cx};

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
    /// The cluster's reboot lease, taken before rebooting into an update.
    pub lease: Option<Lease>,
}

/// The reboot lease in the cluster's etcd (`cairn-node reboot-lease`): at most `slots`
/// nodes reboot into an update at once; a node that dies holding one loses it after `ttl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// etcd client URLs (https ones with the key agent's etcd-client certificate).
    pub etcd: Vec<Url>,
    /// How many nodes may be rebooting at once.
    pub slots: u32,
    /// Seconds a slot outlives a holder that stops keeping it: longer than a reboot.
    pub ttl: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawUpdate {
    pub(crate) source: Spanned<String>,
    #[serde(default)]
    pub(crate) reboot: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) lease: Option<Spanned<bool>>,
    #[serde(default)]
    pub(crate) lease_etcd: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) lease_slots: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) lease_ttl: Option<Spanned<i64>>,
}

/// `own_etcd`: this node's etcd on 127.0.0.1, when it is a member of a cluster of more
/// than one whose TLS the key agent provides (or plain http): the lease's default.
pub(crate) fn update(cx: &Cx, raw: &RawUpdate, own_etcd: Option<Url>) -> Result<Update, ConfigError> {
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
    let lease = lease(cx, raw, own_etcd, reboot)?;
    Ok(Update { source, reboot, lease })
}

fn lease(cx: &Cx, raw: &RawUpdate, own_etcd: Option<Url>, reboot: RebootPolicy) -> Result<Option<Lease>, ConfigError> {
    if raw.lease.as_ref().is_some_and(|l| !*l.get_ref()) {
        return Ok(None);
    }
    let mut etcd = Vec::new();
    for u in &raw.lease_etcd {
        match Url::parse(u.get_ref()) {
            Ok(url) => etcd.push(url),
            Err(why) => {
                return cx.err(
                    Some(u.span()),
                    format!("[update] lease-etcd '{}': {why}", u.get_ref().escape_debug()),
                    "etcd client URLs of the control plane, e.g. [\"https://10.90.0.1:2379\"]",
                )
            }
        }
    }
    if etcd.is_empty() {
        etcd.extend(own_etcd);
    }
    if etcd.is_empty() {
        return match &raw.lease {
            Some(l) => cx.err(
                Some(l.span()),
                "[update] lease = true, but the node has no etcd member of a cluster to take it in",
                "give lease-etcd = [the control plane's etcd client URLs]",
            ),
            None => Ok(None),
        };
    }
    let number = |v: &Option<Spanned<i64>>, what: &str, range: std::ops::RangeInclusive<i64>, default: i64| match v {
        None => Ok(default),
        Some(n) if range.contains(n.get_ref()) => Ok(*n.get_ref()),
        Some(n) => cx.err(
            Some(n.span()),
            format!(
                "[update] {what} = {} is not from {} to {}",
                n.get_ref(),
                range.start(),
                range.end()
            ),
            "",
        ),
    };
    let slots = number(&raw.lease_slots, "lease-slots", 1..=100, 1)? as u32;
    let ttl = number(&raw.lease_ttl, "lease-ttl", 60..=86_400, 900)? as u64;
    if let RebootPolicy::At(..) = reboot {
        return cx.err(
            raw.reboot.as_ref().map(|r| r.span()),
            "[update] a reboot window and the cluster's reboot lease do not go together yet",
            "use reboot = \"now\" (the lease already spaces the nodes' reboots), or lease = false",
        );
    }
    Ok(Some(Lease { etcd, slots, ttl }))
}
