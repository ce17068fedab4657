//! `cairn-node update --status`: the slots, their versions and what the boot counter says.

use super::record::failed_versions;
use super::slots::{entries, Target};
use super::UpdateError;
use std::fmt::Write as _;

/// What `--status` reports.
pub fn status(t: &Target) -> Result<String, UpdateError> {
    let table = t.table(false)?;
    let entries = entries(&t.esp)?;
    let running_hex = t.running_hex();
    let mut s = String::new();
    let running_entry = entries
        .iter()
        .find(|e| e.root_hash.as_deref() == Some(running_hex.as_str()));
    let state = match running_entry {
        Some(e) if e.blessed() => "blessed".to_string(),
        Some(e) => format!(
            "NOT blessed yet: {} (boot {} of {})",
            e.file,
            e.tries_done.unwrap_or(0),
            e.tries_done.unwrap_or(0) + e.tries_left.unwrap_or(0)
        ),
        None => "no UKI on the ESP boots it".into(),
    };
    let _ = writeln!(
        s,
        "running  {} {} from slot {} ({state})",
        t.image,
        t.version,
        table.running.slot.letter()
    );
    let _ = writeln!(s, "         root hash {running_hex}");
    let inactive_uuid = table.inactive.root.1.uuid;
    let mut other = false;
    for e in entries
        .iter()
        .filter(|e| e.root_hash.as_deref() != Some(running_hex.as_str()))
    {
        other = true;
        let in_slot = e
            .root_hash
            .as_deref()
            .and_then(|h| hex::decode(h).ok())
            .is_some_and(|h| h.len() == 32 && h[..16] == inactive_uuid.0);
        let where_ = if in_slot {
            format!("slot {}", table.inactive.slot.letter())
        } else {
            "no slot holds its root".into()
        };
        let what = if e.exhausted() {
            format!("FAILED: out of tries after {} failed boots", e.tries_done.unwrap_or(0))
        } else if e.blessed() {
            "good (the fallback)".into()
        } else {
            format!("to be tried: {} tries left", e.tries_left.unwrap_or(0))
        };
        let _ = writeln!(s, "other    {} in {where_}: {what} ({})", e.version, e.file);
    }
    if !other {
        let _ = writeln!(s, "other    slot {}: nothing bootable", table.inactive.slot.letter());
    }
    let recorded = failed_versions(&t.state_dir);
    for (v, why) in &recorded {
        for line in why.lines() {
            let _ = writeln!(s, "failed   {v}: {line}");
        }
    }
    for e in entries.iter().filter(|e| e.exhausted()) {
        let gate = recorded
            .iter()
            .any(|(v, why)| *v == e.version && why.contains("health gate"));
        if !gate {
            let _ = writeln!(
                s,
                "failed   {}: no health gate reported: it failed before reaching them (kernel, initrd or early boot; see its console)",
                e.version
            );
        }
    }
    Ok(s)
}
