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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawUpdate {
    pub(crate) source: Spanned<String>,
    #[serde(default)]
    pub(crate) reboot: Option<Spanned<String>>,
}

pub(crate) fn update(cx: &Cx, raw: &RawUpdate) -> Result<Update, ConfigError> {
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
