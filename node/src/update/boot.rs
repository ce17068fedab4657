//! Boot counting and health gates: a counted boot whose gate fails or whose deadline
//! passes records why and reboots, so systemd-boot spends a try.

use super::record::record_failure;
use super::slots::Entry;
use super::{BOOT_COUNT_VAR, STATE_DIR};
use std::fs::{self};
use std::path::Path;

/// After `gate` failed (`cairn-node gate-failed`): take the gate's own FAILED line from this
/// boot's journal as the reason; on a counted try of a new version, record it, say so, and
/// reboot into the next try.
pub fn gate_failed(root: &Path, gate: crate::health::Gate, log: &mut dyn FnMut(&str)) {
    let unit = format!("cairn-health-{}.service", gate.name());
    let reason = std::process::Command::new("journalctl")
        .args(["-b", "-u", &unit, "-o", "cat", "--no-pager", "-n", "100"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .rfind(|l| l.contains("FAILED"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| format!("cairn: health gate {} FAILED ({unit} failed)", gate.name()));
    let lines = on_gate_failure(root, &reason);
    if lines.is_empty() {
        log(&format!(
            "cairn: health gate {} failed on a version that is not on a counted try: nothing to roll back to; fix the node and run `systemctl restart {unit}`",
            gate.name()
        ));
        return;
    }
    lines.iter().for_each(|l| log(l));
    crate::system::reboot();
}

/// `cairn-node boot-deadline`: on a counted try, wait for boot-complete.target and reboot
/// into the next try when it is not reached within the command line's deadline. Returns
/// whether the boot made it (or there was nothing to watch).
pub fn watch_deadline(root: &Path, sys: &crate::system::Root, log: &mut dyn FnMut(&str)) -> bool {
    let Some(file) = counted_boot(root) else {
        log("cairn: boot deadline: not a counted boot; nothing to watch");
        return true;
    };
    let Some(limit) = boot_deadline(&sys.cmdline().unwrap_or_default()) else {
        log("cairn: boot deadline: off (cairn.boot_deadline=0)");
        return true;
    };
    log(&format!(
        "cairn: boot deadline: {file} must reach boot-complete.target within {}s of boot",
        limit.as_secs()
    ));
    loop {
        let reached = std::process::Command::new("systemctl")
            .args(["is-active", "--quiet", "boot-complete.target"])
            .status()
            .is_ok_and(|s| s.success());
        let up = sys.uptime().unwrap_or(0.0);
        if reached {
            log(&format!(
                "cairn: boot deadline: boot-complete.target reached {up:.1}s after boot"
            ));
            return true;
        }
        if up >= limit.as_secs_f64() {
            on_deadline(root, &file, limit).iter().for_each(|l| log(l));
            crate::system::reboot();
            return false;
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

/// Whether this boot is a counted try of a not yet blessed entry (systemd-boot set
/// `LoaderBootCountPath`), and that entry's file name.
pub fn counted_boot(root: &Path) -> Option<String> {
    let raw = fs::read(root.join(BOOT_COUNT_VAR.trim_start_matches('/'))).ok()?;
    let units: Vec<u16> = raw
        .get(4..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let path = String::from_utf16_lossy(&units);
    let file = path.rsplit(['\\', '/']).next()?.to_string();
    Some(file)
}

/// A health gate failed: on a counted boot of a new version, record why and reboot so
/// systemd-boot counts the try (and, after the last, boots the previous version). Returns
/// the lines to log; on an uncounted boot nothing happens (a blessed version never
/// reboot-loops on a gate).
pub fn on_gate_failure(root: &Path, line: &str) -> Vec<String> {
    let Some(file) = counted_boot(root) else {
        return vec![];
    };
    let Some(entry) = Entry::from_file_name(&file) else {
        return vec![];
    };
    if entry.blessed() {
        return vec![];
    }
    let state = root.join(STATE_DIR.trim_start_matches('/'));
    let mut out = vec![];
    if let Err(e) = fs::create_dir_all(&state).and_then(|_| record_failure(&state, &entry.version, line)) {
        out.push(format!("cairn: could not record the failure of {}: {e}", entry.version));
    }
    out.push(format!(
        "cairn: {} is on a counted try ({}) and a health gate failed: rebooting so systemd-boot counts it",
        entry.version, file
    ));
    out
}

/// How long a counted try may take to reach `boot-complete.target`, from the kernel
/// command line's `cairn.boot_deadline=SECONDS` (default 900 s; 0 turns it off).
pub fn boot_deadline(cmdline: &str) -> Option<std::time::Duration> {
    let secs = cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("cairn.boot_deadline="))
        .next_back()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_BOOT_DEADLINE);
    (secs > 0).then(|| std::time::Duration::from_secs(secs))
}

/// [`boot_deadline`]'s default: generous for a slow node, short enough that a hung try
/// does not keep a node out of service for long.
pub const DEFAULT_BOOT_DEADLINE: u64 = 900;

/// A counted try did not reach `boot-complete.target` in time: record why (when /var is
/// writable) and return the lines to log before rebooting.
pub fn on_deadline(root: &Path, file: &str, limit: std::time::Duration) -> Vec<String> {
    let version = Entry::from_file_name(file).map_or_else(|| file.to_string(), |e| e.version);
    let why = format!(
        "cairn: {version} did not reach boot-complete.target within {}s (cairn.boot_deadline)",
        limit.as_secs()
    );
    let state = root.join(STATE_DIR.trim_start_matches('/'));
    let mut out = vec![why.clone()];
    if let Err(e) = fs::create_dir_all(&state).and_then(|_| record_failure(&state, &version, &why)) {
        out.push(format!("cairn: could not record the failure of {version}: {e}"));
    }
    out.push(format!(
        "cairn: {version} is on a counted try ({file}) and is not healthy in time: rebooting so systemd-boot counts it"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::failed_versions;

    #[test]
    fn boot_deadline_from_the_command_line() {
        use std::time::Duration;
        assert_eq!(boot_deadline("roothash=ab quiet"), Some(Duration::from_secs(900)));
        assert_eq!(boot_deadline("cairn.boot_deadline=60"), Some(Duration::from_secs(60)));
        assert_eq!(
            boot_deadline("cairn.boot_deadline=60 cairn.boot_deadline=120"),
            Some(Duration::from_secs(120)),
            "the last word wins"
        );
        assert_eq!(boot_deadline("cairn.boot_deadline=0"), None);
        assert_eq!(
            boot_deadline("cairn.boot_deadline=soon"),
            Some(Duration::from_secs(900))
        );
        let dir = tempfile::tempdir().unwrap();
        let lines = on_deadline(dir.path(), "cairn_0.4.0+1-2.efi", Duration::from_secs(60));
        assert!(
            lines[0].contains("0.4.0 did not reach boot-complete.target within 60s"),
            "{lines:?}"
        );
        let failed = failed_versions(&dir.path().join(STATE_DIR.trim_start_matches('/')));
        assert_eq!(failed[0].0, "0.4.0");
    }

    #[test]
    fn counted_boot_reads_the_efi_variable() {
        let dir = tempfile::tempdir().unwrap();
        let var = dir.path().join(BOOT_COUNT_VAR.trim_start_matches('/'));
        fs::create_dir_all(var.parent().unwrap()).unwrap();
        let mut raw = vec![7, 0, 0, 0];
        for u in "\\EFI\\Linux\\cairn_0.2.0+2-1.efi\0".encode_utf16() {
            raw.extend(u.to_le_bytes());
        }
        fs::write(&var, raw).unwrap();
        assert_eq!(counted_boot(dir.path()).as_deref(), Some("cairn_0.2.0+2-1.efi"));
        let lines = on_gate_failure(dir.path(), "cairn: health gate etcd FAILED after 5s: x");
        assert!(lines[0].contains("rebooting"), "{lines:?}");
        let failed = failed_versions(&dir.path().join(STATE_DIR.trim_start_matches('/')));
        assert_eq!(failed[0].0, "0.2.0");
        assert!(failed[0].1.contains("etcd FAILED"));
        fs::remove_file(&var).unwrap();
        assert!(on_gate_failure(dir.path(), "x").is_empty());
    }
}
