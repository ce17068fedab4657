//! `cairn-node update --auto`: poll the published index, install what is newer, and
//! reboot into it as the node config's policy says.

use super::fetch::{fetch_small, open_source};
use super::install::{install, Installed, Options};
use super::record::{failed_versions, record_exhausted};
use super::slots::{entries, Target};
use super::{compare_versions, UpdateError};
use cairn_signing::PublicKey;

/// What `--auto` decided.
#[derive(Debug)]
pub enum AutoOutcome {
    /// Nothing to do, and why.
    Nothing(String),
    /// A release was installed.
    Installed(Box<Installed>),
    /// The latest release is installed already and waits for its first boot (its reboot
    /// was put off: the reboot lease was busy, or the policy is to wait).
    Pending(String),
}

/// `cairn-node update --auto`: poll `<source>index.json` and install its latest release
/// when it is newer than the running one and has not failed here.
pub fn auto(
    t: &Target,
    keys: &[PublicKey],
    source: &str,
    log: &mut dyn FnMut(&str),
) -> Result<AutoOutcome, UpdateError> {
    auto_at(t, keys, source, cairn_signing::time::now(), log)
}

/// [`auto`] at the time `now` (Unix seconds).
pub fn auto_at(
    t: &Target,
    keys: &[PublicKey],
    source: &str,
    now: u64,
    log: &mut dyn FnMut(&str),
) -> Result<AutoOutcome, UpdateError> {
    use cairn_signing::bundle::{Index, INDEX_FILE, INDEX_SIG_FILE};
    let url = format!("{source}{INDEX_FILE}");
    let sig_url = format!("{source}{INDEX_SIG_FILE}");
    let (bytes, sigs) = (fetch_small(&url)?, fetch_small(&sig_url)?);
    let index =
        Index::verify(&bytes, &sigs, keys).map_err(|detail| UpdateError::Refused(format!("{url}: {detail}")))?;
    if now >= index.expires_at() {
        return Err(UpdateError::Refused(format!(
            "{url} expired at {} (now {}): the update server serves a stale index, by mistake or to hold this node on an old release; publish it again",
            index.expires,
            cairn_signing::time::format_utc(now)
        )));
    }
    if index.name != t.image {
        return Err(UpdateError::Refused(format!(
            "{url} lists image {:?}, this node runs {:?}",
            index.name, t.image
        )));
    }
    let latest = index.release(&index.latest).expect("a parsed index names its latest");
    if compare_versions(&latest.version, &t.version) != std::cmp::Ordering::Greater {
        return Ok(AutoOutcome::Nothing(format!(
            "up to date: running {}, {url} offers {}",
            t.version, latest.version
        )));
    }
    let bundle_url = format!("{source}{}", latest.file);
    let on_esp = entries(&t.esp)?;
    // Pending: its UKI is there, untried, and whole (a UKI whose root hash cannot be read,
    // e.g. cut short by a power loss, is installed again).
    if on_esp.iter().any(|e| {
        e.version == latest.version
            && e.tries_left.is_some_and(|l| l > 0)
            && e.tries_done == Some(0)
            && e.root_hash.is_some()
    }) {
        return Ok(AutoOutcome::Pending(latest.version.clone()));
    }
    record_exhausted(t, &on_esp);
    if failed_versions(&t.state_dir).iter().any(|(v, _)| *v == latest.version) {
        return Ok(AutoOutcome::Nothing(format!(
            "{} failed on this node before; waiting for a newer release (to retry it: cairn-node update --force {bundle_url})",
            latest.version
        )));
    }
    log(&format!(
        "cairn: update: {url} offers {}, running {}",
        latest.version, t.version
    ));
    let mut input = open_source(&bundle_url)?;
    install(t, keys, &mut input, &Options::default(), log).map(|i| AutoOutcome::Installed(Box::new(i)))
}

/// Reboot into `version` as the node config says: now, at a time of day, or not at all;
/// saying so first.
pub fn reboot_by_policy(policy: crate::config::RebootPolicy, version: &str, log: &mut dyn FnMut(&str)) {
    use crate::config::RebootPolicy;
    match policy {
        RebootPolicy::Now => {
            log(&format!(
                "cairn: update: rebooting into {version} now ([update] reboot = \"now\")"
            ));
            crate::system::reboot();
        }
        RebootPolicy::Never => log(&format!(
            "cairn: update: {version} is installed; reboot to run it ([update] reboot = \"never\")"
        )),
        RebootPolicy::At(h, m) => {
            let when = format!("{h:02}:{m:02}");
            match std::process::Command::new("shutdown").args(["-r", &when]).status() {
                Ok(s) if s.success() => log(&format!(
                    "cairn: update: {version} is installed; rebooting into it at {when} (the reboot window)"
                )),
                other => log(&format!(
                    "cairn: update: could not schedule the reboot at {when}: {other:?}"
                )),
            }
        }
    }
}
