//! `cairn-node key-agent --status`: the keyserver, each certificate with its end and the
//! time the agent renews it, and the last failure.

use std::fmt::Write;
use std::path::Path;

use cairn_keys::profiles::profile_names;
use cairn_keys::schedule;

use super::run::{date, seed, OUTAGE_BUDGET};
use super::state::AgentState;
use super::{current, AgentError};

/// The status text, at `now`.
pub fn status(root: &Path, now: u64) -> Result<String, AgentError> {
    let Some(s) = AgentState::load(root)? else {
        let token = crate::apply::at(root, cairn_node_config::render::KEY_AGENT_TOKEN);
        return Ok(if token.exists() {
            "key agent: not enrolled yet; a bootstrap token is waiting to be used\n".into()
        } else {
            "key agent: not enrolled, and no bootstrap token\n".into()
        });
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "key agent: {} ({}) enrolled with {}:{} on {}; generation {}{}",
        s.node,
        s.role.as_str(),
        s.server.host,
        s.server.port,
        date(s.enrolled_at),
        s.generation,
        s.renewed_at.map_or(String::new(), |t| format!(", renewed {}", date(t)))
    );
    match &s.last_error {
        Some((t, e)) => _ = writeln!(out, "last error: {} {e}", date(*t)),
        None => out.push_str("last error: none\n"),
    }
    let _ = writeln!(
        out,
        "{:<16} {:<10} {:<22} renews",
        "certificate", "serial", "valid until"
    );
    for p in profile_names(s.role) {
        match current(root, p) {
            Ok(c) => {
                let when = match schedule::due(c.validity, OUTAGE_BUDGET, seed(&s.node), now) {
                    schedule::Due::At(t) => date(t),
                    schedule::Due::Now => "now".into(),
                    schedule::Due::Invalid => "now (expired)".into(),
                };
                let _ = writeln!(
                    out,
                    "{p:<16} {:<10} {:<22} {when}",
                    &c.serial[..c.serial.len().min(8)],
                    date(c.validity.not_after)
                );
            }
            Err(e) => _ = writeln!(out, "{p:<16} MISSING: {e}"),
        }
    }
    Ok(out)
}
