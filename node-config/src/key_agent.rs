//! `[key-agent]`: the keyserver the node enrolls with, its CA's fingerprint and the
//! one-time bootstrap token.

use cairn_keys::Token;
use serde::Deserialize;
use toml::Spanned;

use crate::values::Url;
use crate::{ConfigError, Cx};

/// The key agent's server and bootstrap credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAgent {
    /// `https://host:port` of the keyserver.
    pub server: Url,
    /// sha256 of the keyserver CA's certificate (DER), 32 bytes.
    pub ca_fingerprint: [u8; 32],
    /// One-time bootstrap token (its check characters already verified).
    pub bootstrap_token: Token,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawKeyAgent {
    pub(crate) server: Spanned<String>,
    pub(crate) ca_fingerprint: Spanned<String>,
    pub(crate) bootstrap_token: Spanned<String>,
}

pub(crate) fn key_agent(cx: &Cx, raw: &RawKeyAgent) -> Result<KeyAgent, ConfigError> {
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
    let bootstrap_token = Token::parse(raw.bootstrap_token.get_ref()).or_else(|why| {
        cx.err(
            Some(raw.bootstrap_token.span()),
            format!("[key-agent] bootstrap-token: {why}"),
            "use the token `cairn token create` printed for this node (ck1.…), as it was printed",
        )
    })?;
    Ok(KeyAgent {
        server,
        ca_fingerprint,
        bootstrap_token,
    })
}
