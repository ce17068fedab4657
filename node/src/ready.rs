//! `cairn-node ready`: the one line that says the node is up.
//!
//! Printed on the console by `cairn-ready.service` once `multi-user.target` is reached:
//! `cairn: ready version=<v> slot=<a|b|live> boot=<seconds>s` (`live`: booted from the ISO). Users and tests wait for it
//! instead of systemd's status lines, which a serial getty hides.

use crate::system::Root;

/// The ready line. `slot` is `?` and `version` `unknown` when they cannot be found, so
/// the line is always printed.
pub fn render(version: Option<&str>, slot: Option<&str>, uptime: Option<f64>) -> String {
    format!(
        "cairn: ready version={} slot={} boot={}s",
        version.unwrap_or("unknown"),
        slot.unwrap_or("?"),
        uptime.map_or("?".to_string(), |u| format!("{u:.1}"))
    )
}

/// Compute the line for the running system.
pub fn line(root: &Root) -> String {
    render(root.image_version().as_deref(), root.slot_name(), root.uptime())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden() {
        assert_eq!(
            render(Some("1.2.3"), Some("a"), Some(41.26)),
            "cairn: ready version=1.2.3 slot=a boot=41.3s"
        );
        assert_eq!(
            render(Some("1.2.3"), Some("live"), Some(50.0)),
            "cairn: ready version=1.2.3 slot=live boot=50.0s"
        );
        assert_eq!(render(None, None, None), "cairn: ready version=unknown slot=? boot=?s");
    }
}
