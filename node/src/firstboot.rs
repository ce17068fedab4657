//! `cairn-node firstboot`: take a config drive's node config if it is newer, then apply.
//!
//! Runs every boot (`cairn-firstboot.service`), early: after /var is mounted, before
//! networking and the cluster components. With a config drive attached it reads the drive
//! ([`crate::drive`]), validates all of it, and saves it as `/var/lib/cairn/node.toml`
//! when it is newer than what the node has; then it applies the saved config
//! ([`crate::apply`]). A bad drive never stops the boot: the node prints one message naming
//! the file and the problem and carries on with the config it had.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::apply::{self, at, ApplyError};
use crate::config::NodeConfig;
use crate::drive::{self, Decision, DriveFiles, Format, Saved, Signed};

/// The image's key for signed node configs, when it pins one.
pub const NODE_CONFIG_KEY: &str = "/usr/share/cairn/node-config.pub";

/// A drive found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its label.
    pub label: &'static str,
    /// Its format.
    pub format: Format,
    /// The device node.
    pub device: PathBuf,
}

/// Look for a config drive under `<root>/dev/disk/by-label/`.
pub fn find(root: &Path) -> Option<Found> {
    drive::LABELS.iter().find_map(|(label, format)| {
        let link = at(root, &format!("/dev/disk/by-label/{label}"));
        let device = std::fs::canonicalize(&link).ok()?;
        Some(Found {
            label,
            format: *format,
            device,
        })
    })
}

/// Mount `device` read-only, read its files, unmount.
pub fn read_device(device: &Path, format: drive::Format) -> Result<DriveFiles, String> {
    let dir = PathBuf::from(crate::render::RUN_DIR).join("drive");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let out = Command::new("mount")
        .args(["-o", "ro,nosuid,nodev,noexec"])
        .arg(device)
        .arg(&dir)
        .output()
        .map_err(|e| format!("running mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{} cannot be mounted: {}",
            device.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let files = drive::read_dir(&dir, format).map_err(|e| format!("reading {}: {e}", device.display()));
    let _ = Command::new("umount").arg(&dir).status();
    files
}

/// Where a node keeps its machine-id (the initrd puts it back at `/run/cairn/machine-id`,
/// where `/etc/machine-id` points, on every boot).
pub const SAVED_MACHINE_ID: &str = "/var/lib/cairn/machine-id";

fn machine_id_text(s: &str) -> Option<&str> {
    let t = s.trim();
    (t.len() == 32 && t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(t)
}

/// Keep the machine-id this boot runs with as the node's own, on the state partition,
/// unless one is kept already. Returns the line to log when something happened.
pub fn save_machine_id(root: &Path) -> Result<Option<String>, String> {
    let running_path = at(root, "/etc/machine-id");
    let running = std::fs::read_to_string(&running_path).unwrap_or_default();
    let Some(running) = machine_id_text(&running) else {
        return Err(format!("{} holds no machine-id", running_path.display()));
    };
    let saved_path = at(root, SAVED_MACHINE_ID);
    match std::fs::read_to_string(&saved_path).ok().as_deref().and_then(machine_id_text) {
        Some(saved) if saved == running => Ok(None),
        Some(saved) => Ok(Some(format!(
            "cairn: machine-id {running} is not the node's saved {saved}: the initrd did not put it back this boot (the next boot will)"
        ))),
        None => {
            cairn_signing::write_file_atomic(&saved_path, format!("{running}\n").as_bytes(), 0o444)
                .map_err(|e| format!("writing {}: {e}", saved_path.display()))?;
            Ok(Some(format!(
                "cairn: machine-id {running} saved: the node keeps it across reboots and updates"
            )))
        }
    }
}

/// Where the saved config came from: `format = …` and, for cloud drives, `instance-id = …`.
pub const SAVED_SOURCE: &str = "/var/lib/cairn/node-source";

fn saved(root: &Path) -> Option<Saved> {
    let text = std::fs::read_to_string(at(root, apply::SAVED)).ok()?;
    let c = NodeConfig::parse(&text, apply::SAVED).ok()?;
    let source = std::fs::read_to_string(at(root, SAVED_SOURCE)).unwrap_or_default();
    let instance_id = source
        .lines()
        .find_map(|l| l.strip_prefix("instance-id = "))
        .map(str::to_string);
    Some(Saved {
        generation: c.generation,
        instance_id,
    })
}

/// Take a drive's files (already read) into the saved config if they are valid and newer.
/// Returns the log lines; never fails the boot over the drive's content.
pub fn import(root: &Path, what: &str, format: Format, files: &DriveFiles) -> Result<Vec<String>, ApplyError> {
    let key_path = at(root, NODE_CONFIG_KEY);
    let key = match cairn_signing::PublicKey::read(&key_path) {
        Ok(k) => Some(k),
        Err(_) if !key_path.exists() => None,
        Err(e) => {
            // A key the image ships but cannot read: refuse drives rather than accept
            // unsigned ones.
            return Ok(vec![format!(
                "cairn: config drive {what} ignored: this image's node-config key {NODE_CONFIG_KEY} is unreadable ({e})"
            )]);
        }
    };
    let saved = saved(root);
    let keeping = match &saved {
        Some(s) => format!("keeping the saved config (generation {})", s.generation),
        None => "no config saved yet, so the node runs its default".to_string(),
    };
    let next = saved.as_ref().map_or(1, |s| s.generation + 1);
    let candidate = match drive::parse(format, files, key.as_ref(), next) {
        Ok(c) => c,
        Err(e) => return Ok(vec![format!("cairn: config drive {what} refused: {e}; {keeping}")]),
    };
    let signed = match candidate.signed {
        Signed::Yes => "signed with this image's node-config key",
        Signed::No => "not signed (this image accepts unsigned node configs)",
    };
    match drive::decide(saved.as_ref(), &candidate) {
        Decision::Keep(why) => Ok(vec![format!("cairn: config drive {what} ignored: {why}")]),
        Decision::Replace(why) => {
            let mut source = format!("format = {}\n", candidate.format.as_str());
            if let Some(id) = &candidate.instance_id {
                source.push_str(&format!("instance-id = {}\n", id.replace('\n', " ")));
            }
            for (path, bytes) in [
                (apply::SAVED, candidate.text.as_bytes()),
                (SAVED_SOURCE, source.as_bytes()),
            ] {
                apply::write_atomic(&at(root, path), bytes, 0o600, None).map_err(|source| ApplyError::Write {
                    path: path.into(),
                    source,
                })?;
            }
            Ok(vec![format!(
                "cairn: config drive {what} saved: {why}; host {}, {signed}",
                candidate.config.hostname
            )])
        }
    }
}

/// The whole first-boot step on the running system: settle udev, find a drive, import it,
/// apply. Returns the log lines.
pub fn firstboot() -> Result<Vec<String>, ApplyError> {
    let root = Path::new("/");
    // The drive may still be probed by udev this early; wait for the queue (bounded).
    let _ = Command::new("udevadm").args(["settle", "--timeout=10"]).status();
    let mut log = Vec::new();
    // Grow the state partition before anything is written to it. A failure is reported
    // and the node carries on with the space it has.
    // A live system (the ISO) has no state partition: nothing to grow, and a machine-id
    // saved into the /var in memory would not outlive the boot.
    if crate::system::Root::default().is_live() {
        log.push("cairn: live system: /var is in memory and goes with the next reboot".to_string());
    } else {
        match crate::grow::grow_state() {
            Ok(Some(line)) => log.push(line),
            Ok(None) => {}
            Err(e) => log.push(format!("cairn: growing the state partition failed: {e}")),
        }
        match save_machine_id(root) {
            Ok(Some(line)) => log.push(line),
            Ok(None) => {}
            Err(e) => log.push(format!("cairn: saving the machine-id failed: {e}")),
        }
    }
    match find(root) {
        None => log.push("cairn: no config drive attached".to_string()),
        Some(f) => {
            let what = format!("{} ({})", f.label, f.device.display());
            match read_device(&f.device, f.format) {
                Ok(files) => log.extend(import(root, &what, f.format, &files)?),
                Err(e) => log.push(format!("cairn: config drive {what} refused: {e}")),
            }
        }
    }
    log.extend(apply::apply(root)?);
    Ok(log)
}
