//! `cairn-node metrics`: Cairn's own facts about the node as a Prometheus text file, which
//! Debian's prometheus-node-exporter serves with its own metrics (textfile collector,
//! `--collector.textfile.directory=/run/cairn/metrics`). No metrics server of our own.
//!
//! `cairn-metrics.timer` rewrites `/run/cairn/metrics/cairn.prom` every minute (whole, by
//! rename, so the exporter never reads half a file) from what the node already keeps:
//!
//! | metric | from |
//! |---|---|
//! | `cairn_info{image,version,slot,node}` | os-release, the running slot, the host name |
//! | `cairn_boot_blessed` | the running version's UKI on the ESP (no try counter left) |
//! | `cairn_health_gate_passed{gate}`, `cairn_health_gate_duration_seconds{gate}` | each gate's record in `/run/cairn/gates/` |
//! | `cairn_update_last_run_timestamp_seconds`, `cairn_update_last_result{result}`, `cairn_update_index_age_seconds` | `update --auto`'s record in `/var/lib/cairn/update/last-run.json` |
//! | `cairn_certificate_expiry_timestamp_seconds{profile}` | the key agent's current certificates |
//! | `cairn_reboot_lease_configured`, `cairn_reboot_lease_held`, `cairn_reboot_lease_holder{slot,node}` | the cluster's etcd, when `[update]` has a lease |

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::apply::{at, write_atomic};

/// Where the text file goes.
pub const DIR: &str = "/run/cairn/metrics";
/// Where each health gate records how it ended.
pub const GATES_DIR: &str = "/run/cairn/gates";
/// Where `update --auto` records its last run.
pub const UPDATE_RECORD: &str = "/var/lib/cairn/update/last-run.json";

/// How a health gate ended this boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateRecord {
    /// Whether it passed.
    pub passed: bool,
    /// Seconds it took.
    pub seconds: f64,
}

/// Record how `gate` ended (best effort: a gate's result never depends on it).
pub fn record_gate(root: &Path, gate: &str, passed: bool, seconds: f64) {
    let text = serde_json::to_string(&GateRecord { passed, seconds }).expect("serializes");
    let _ = write_atomic(
        &at(root, &format!("{GATES_DIR}/{gate}.json")),
        text.as_bytes(),
        0o644,
        None,
    );
}

/// The last `update --auto` run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRecord {
    /// When it ran (Unix seconds).
    pub at: u64,
    /// `up_to_date`, `installed`, `pending`, `held_back` (a failed release not retried)
    /// or `failed`.
    pub result: String,
    /// The release concerned, if any.
    #[serde(default)]
    pub version: Option<String>,
    /// When an index was last fetched and verified.
    #[serde(default)]
    pub index_ok_at: Option<u64>,
}

/// Record a run of `update --auto` (best effort), keeping the last good index time.
pub fn record_update(root: &Path, at_: u64, result: &str, version: Option<&str>, index_ok: bool) {
    let path = crate::apply::at(root, UPDATE_RECORD);
    let before: Option<UpdateRecord> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let r = UpdateRecord {
        at: at_,
        result: result.to_string(),
        version: version.map(str::to_string),
        index_ok_at: if index_ok {
            Some(at_)
        } else {
            before.and_then(|b| b.index_ok_at)
        },
    };
    let text = serde_json::to_string(&r).expect("serializes");
    let _ = write_atomic(&path, text.as_bytes(), 0o644, None);
}

/// What the lease looks like from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseFacts {
    /// (slot, node) of every holder.
    pub holders: Vec<(u32, String)>,
}

/// Everything the file says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Facts {
    /// The node's name.
    pub node: String,
    /// `IMAGE_ID`.
    pub image: Option<String>,
    /// `IMAGE_VERSION`.
    pub version: Option<String>,
    /// `a` or `b`.
    pub slot: Option<String>,
    /// Whether the running version is blessed.
    pub blessed: Option<bool>,
    /// Gate records, by gate.
    pub gates: Vec<(String, GateRecord)>,
    /// The last update run.
    pub update: Option<UpdateRecord>,
    /// (profile, end) of each current certificate.
    pub certificates: Vec<(String, u64)>,
    /// `None`: no lease configured; `Some(Err)`: configured, etcd not answering.
    pub lease: Option<Result<LeaseFacts, String>>,
    /// Now (Unix seconds).
    pub now: u64,
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// The text file for `f` (Prometheus text exposition format 0.0.4).
pub fn render(f: &Facts) -> String {
    let mut s = String::new();
    let family = |s: &mut String, name: &str, help: &str| {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} gauge");
    };
    family(&mut s, "cairn_info", "The running Cairn image; always 1.");
    let _ = writeln!(
        s,
        "cairn_info{{image=\"{}\",version=\"{}\",slot=\"{}\",node=\"{}\"}} 1",
        label(f.image.as_deref().unwrap_or("unknown")),
        label(f.version.as_deref().unwrap_or("unknown")),
        label(f.slot.as_deref().unwrap_or("unknown")),
        label(&f.node)
    );
    if let Some(b) = f.blessed {
        family(
            &mut s,
            "cairn_boot_blessed",
            "1 when the running version is blessed, 0 while its boot is still being counted.",
        );
        let _ = writeln!(s, "cairn_boot_blessed {}", u8::from(b));
    }
    if !f.gates.is_empty() {
        family(
            &mut s,
            "cairn_health_gate_passed",
            "1 when the health gate passed this boot, 0 when it failed.",
        );
        for (g, r) in &f.gates {
            let _ = writeln!(
                s,
                "cairn_health_gate_passed{{gate=\"{}\"}} {}",
                label(g),
                u8::from(r.passed)
            );
        }
        family(
            &mut s,
            "cairn_health_gate_duration_seconds",
            "How long the health gate took this boot.",
        );
        for (g, r) in &f.gates {
            let _ = writeln!(
                s,
                "cairn_health_gate_duration_seconds{{gate=\"{}\"}} {:.3}",
                label(g),
                r.seconds
            );
        }
    }
    if let Some(u) = &f.update {
        family(
            &mut s,
            "cairn_update_last_run_timestamp_seconds",
            "When cairn-update last polled for a release.",
        );
        let _ = writeln!(s, "cairn_update_last_run_timestamp_seconds {}", u.at);
        family(
            &mut s,
            "cairn_update_last_result",
            "The last poll's result (the label); always 1.",
        );
        let _ = writeln!(
            s,
            "cairn_update_last_result{{result=\"{}\",version=\"{}\"}} 1",
            label(&u.result),
            label(u.version.as_deref().unwrap_or(""))
        );
        if let Some(ok) = u.index_ok_at {
            family(
                &mut s,
                "cairn_update_index_age_seconds",
                "Seconds since a release index was last fetched and verified.",
            );
            let _ = writeln!(s, "cairn_update_index_age_seconds {}", f.now.saturating_sub(ok));
        }
    }
    if !f.certificates.is_empty() {
        family(
            &mut s,
            "cairn_certificate_expiry_timestamp_seconds",
            "When each of the key agent's current certificates ends.",
        );
        for (p, end) in &f.certificates {
            let _ = writeln!(
                s,
                "cairn_certificate_expiry_timestamp_seconds{{profile=\"{}\"}} {end}",
                label(p)
            );
        }
    }
    family(
        &mut s,
        "cairn_reboot_lease_configured",
        "1 when updates take the cluster's reboot lease.",
    );
    let _ = writeln!(s, "cairn_reboot_lease_configured {}", u8::from(f.lease.is_some()));
    if let Some(Ok(l)) = &f.lease {
        family(
            &mut s,
            "cairn_reboot_lease_held",
            "1 while this node holds a slot of the reboot lease.",
        );
        let held = l.holders.iter().any(|(_, n)| *n == f.node);
        let _ = writeln!(s, "cairn_reboot_lease_held {}", u8::from(held));
        family(
            &mut s,
            "cairn_reboot_lease_holder",
            "Each slot of the reboot lease that is held, and by whom; always 1.",
        );
        for (slot, node) in &l.holders {
            let _ = writeln!(
                s,
                "cairn_reboot_lease_holder{{slot=\"{slot}\",node=\"{}\"}} 1",
                label(node)
            );
        }
    }
    s
}

/// Gather the facts of the node under `root` (`/` on a node).
pub fn gather(root: &Path, config: &crate::config::NodeConfig, now: u64) -> Facts {
    let sys = crate::system::Root::default();
    let on_node = root == Path::new("/");
    let mut f = Facts {
        node: config.hostname.clone(),
        now,
        ..Facts::default()
    };
    if on_node {
        f.version = sys.image_version();
        f.slot = sys.slot_name().map(str::to_string);
        if let Ok(t) = crate::update::Target::discover() {
            f.image = Some(t.image.clone());
            let running = t.running_hex();
            f.blessed = crate::update::entries(&t.esp).ok().and_then(|es| {
                es.iter()
                    .find(|e| e.root_hash.as_deref() == Some(running.as_str()))
                    .map(|e| e.blessed())
            });
        }
    }
    for g in cairn_node_config::HEALTH_GATES {
        if let Some(r) = std::fs::read_to_string(at(root, &format!("{GATES_DIR}/{g}.json")))
            .ok()
            .and_then(|t| serde_json::from_str::<GateRecord>(&t).ok())
        {
            f.gates.push((g.to_string(), r));
        }
    }
    f.update = std::fs::read_to_string(at(root, UPDATE_RECORD))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    if let Some(state) = crate::key_agent::state::AgentState::load(root).ok().flatten() {
        for p in cairn_keys::profiles::profile_names(state.role) {
            if let Ok(c) = crate::key_agent::current(root, p) {
                f.certificates.push((p.to_string(), c.validity.not_after));
            }
        }
    }
    f.lease = config.update.as_ref().and_then(|u| u.lease.as_ref()).map(|l| {
        crate::lease::etcd_for(l, root)
            .and_then(|etcd| crate::lease::holders(&etcd))
            .map(|hs| LeaseFacts {
                holders: hs.into_iter().map(|h| (h.slot, h.node)).collect(),
            })
            .map_err(|e| e.to_string())
    });
    f
}

/// Write `text` as `DIR/cairn.prom` under `root`, whole.
pub fn write(root: &Path, text: &str) -> std::io::Result<()> {
    write_atomic(&at(root, &format!("{DIR}/cairn.prom")), text.as_bytes(), 0o644, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_cannot_break_out() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
