//! Boot phases read from the console's timestamped lines: where a boot's time goes, for
//! `cairn boot`'s budget and the QEMU tests.

use std::time::Duration;

use crate::Accel;

/// Boot phases measured from the console (times since QEMU started).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BootPhases {
    /// OVMF hands over to the boot loader (`BdsDxe: starting`).
    pub loader_start: Option<f64>,
    /// The kernel's EFI stub runs (`EFI stub:`).
    pub kernel_start: Option<f64>,
    /// The kernel starts the initrd's init (`Run /init`).
    pub initrd_start: Option<f64>,
    /// systemd starts again from the real root (the second "running in system mode").
    pub switch_root: Option<f64>,
    /// The ready line.
    pub ready: Option<f64>,
}

/// Find the phase markers in console lines.
pub fn boot_phases(lines: &[(Duration, String)]) -> BootPhases {
    let mut p = BootPhases::default();
    let mut system_mode = 0;
    for (t, l) in lines {
        let t = t.as_secs_f64();
        if p.loader_start.is_none() && l.contains("BdsDxe: starting") {
            p.loader_start = Some(t);
        } else if p.kernel_start.is_none() && (l.contains("EFI stub:") || l.contains("Linux version")) {
            p.kernel_start = Some(t);
        } else if p.initrd_start.is_none() && l.contains("Run /init as init process") {
            p.initrd_start = Some(t);
        } else if l.contains("running in system mode") {
            system_mode += 1;
            if system_mode == 2 {
                p.switch_root = Some(t);
            }
        } else if p.ready.is_none() && l.contains("cairn: ready ") {
            p.ready = Some(t);
        }
    }
    p
}

/// The boot-phase budget as text.
pub fn render_budget(p: &BootPhases, accel: Accel) -> String {
    let mut s = format!(
        "boot phases ({}; wall clock from QEMU start, measured on the serial console)\n",
        match accel {
            Accel::Kvm => "KVM",
            _ => "TCG",
        }
    );
    let marks = [
        (
            "firmware",
            Some(0.0),
            p.loader_start,
            "OVMF until it starts the boot loader",
        ),
        (
            "loader",
            p.loader_start,
            p.kernel_start,
            "systemd-boot and the UKI's stub",
        ),
        (
            "kernel",
            p.kernel_start,
            p.initrd_start,
            "kernel until it runs the initrd",
        ),
        (
            "initrd",
            p.initrd_start,
            p.switch_root,
            "initrd: verity root opened, switch root",
        ),
        ("userspace", p.switch_root, p.ready, "system until the ready line"),
    ];
    for (name, a, b, what) in marks {
        match (a, b) {
            (Some(a), Some(b)) => s.push_str(&format!("  {name:<10} {:>6.1}s  {what}\n", b - a)),
            _ => s.push_str(&format!("  {name:<10}      ?   {what} (marker not seen)\n")),
        }
    }
    if let Some(r) = p.ready {
        s.push_str(&format!("  {:<10} {:>6.1}s\n", "total", r));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_from_console() {
        let l = |t: f64, s: &str| (Duration::from_secs_f64(t), s.to_string());
        let lines = vec![
            l(3.0, "BdsDxe: starting Boot0002"),
            l(4.0, "EFI stub: Loaded initrd"),
            l(4.1, "[    0.0] Linux version 6.1"),
            l(8.0, "[    3.8] Run /init as init process"),
            l(8.5, "systemd[1]: systemd 252 running in system mode (+PAM)"),
            l(15.0, "systemd[1]: systemd 252 running in system mode (+PAM)"),
            l(30.0, "cairn-node[1]: cairn: ready version=1 slot=a boot=27.0s"),
        ];
        let p = boot_phases(&lines);
        assert_eq!(
            p,
            BootPhases {
                loader_start: Some(3.0),
                kernel_start: Some(4.0),
                initrd_start: Some(8.0),
                switch_root: Some(15.0),
                ready: Some(30.0)
            }
        );
        let text = render_budget(&p, Accel::Tcg);
        assert!(
            text.contains("firmware      3.0s")
                && text.contains("userspace    15.0s")
                && text.contains("total        30.0s"),
            "{text}"
        );
    }
}
