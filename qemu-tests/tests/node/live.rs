//! The live ISO (`live.iso`, `--format iso`): booted as a CD-ROM and flashed to a USB
//! stick, the node comes up on the same verified root it would run
//! from its disk, with `/var` in memory, personalized from a config drive, and says it
//! runs live.

use std::path::PathBuf;
use std::time::Duration;

use cairn_qemu_tests::*;

fn live_iso() -> PathBuf {
    let iso = test_image().join("live.iso");
    assert!(
        iso.is_file(),
        "the test image has no live.iso (built with --format iso)"
    );
    iso
}

/// Boot `spec` to the ready line and a root shell; check it runs live on the verified
/// root with `/var` in memory and nothing failed. Returns the VM for more checks.
fn boot_live(spec: &vm::VmSpec) -> vm::Vm {
    let root_hash = manifest()["root-hash"].as_str().expect("root hash").to_string();
    let mut vm = vm::Vm::start(spec).expect("starting QEMU");
    ready_shell(&mut vm, 0, "version=0.1.0 slot=live boot=");
    eprintln!("{}", vm::render_budget(&vm::boot_phases(&vm.lines()), vm.accel));

    let cmdline = run_ok(&mut vm, "cat /proc/cmdline");
    assert!(
        cmdline.contains(&format!("roothash={root_hash}")) && cmdline.contains("cairn.live"),
        "{cmdline}"
    );
    let root = run_ok(&mut vm, "findmnt -n -o SOURCE,FSTYPE,OPTIONS /");
    assert!(root.starts_with("/dev/mapper/root squashfs ro"), "{root}");
    let var = run_ok(&mut vm, "findmnt -n -o FSTYPE /var; findmnt -n -o FSTYPE /tmp");
    assert_eq!(var.split_whitespace().collect::<Vec<_>>(), ["tmpfs", "tmpfs"], "{var}");
    run_ok(&mut vm, "echo ok > /var/cairn-probe && cat /var/cairn-probe");
    let state = vm
        .run("systemctl is-system-running --wait", Duration::from_secs(300))
        .unwrap()
        .0;
    let failed = run_ok(&mut vm, "systemctl --failed --no-legend --plain");
    assert_eq!(state.trim(), "running", "failed units:\n{failed}");
    // The update service does not run on a live system, and the tool says why.
    let update = run_fails(&mut vm, "cairn-node update --status 2>&1");
    assert!(update.contains("runs live from Cairn's ISO"), "{update}");
    vm
}

const LIVE_NODE: &str = r#"version = 1
generation = 1
hostname = "live-1"
role = "control-plane"
"#;

#[test]
fn the_live_iso_boots_as_a_cd_rom_personalized_from_a_config_drive() {
    let dir = tempfile::tempdir().expect("temp dir");
    let drive = config_drive(dir.path(), "live-1", LIVE_NODE);
    let _slot = vm_slot();
    let mut s = spec(&live_iso());
    s.medium = Medium::Cdrom;
    s.config_drive = Some(drive);
    let mut vm = boot_live(&s);
    // The root came through the loop device the initrd put over the CD (losetup names
    // its backing device as the initrd saw it: "/sr0").
    let loops = run_ok(&mut vm, "losetup -l -n -O NAME,BACK-FILE,RO,LOG-SEC");
    assert!(
        loops
            .lines()
            .any(|l| l.contains("sr0") && l.split_whitespace().last() == Some("512")),
        "{loops}"
    );
    assert_eq!(run_ok(&mut vm, "hostname").trim(), "live-1");
    let etcd = run_ok(&mut vm, "systemctl is-active etcd.service");
    assert_eq!(etcd.trim(), "active");
}

#[test]
fn the_live_iso_flashed_to_a_usb_stick_boots_from_its_gpt() {
    // What `cairn flash` writes (the ISO checked against the signed outputs list, read
    // back), on a USB stick.
    let dir = tempfile::tempdir().expect("temp dir");
    let stick = dir.path().join("stick.img");
    cairn(&["flash", &live_iso().display().to_string(), &stick.display().to_string()]);
    let _slot = vm_slot();
    let mut s = spec(&stick);
    s.medium = Medium::Usb;
    let mut vm = boot_live(&s);
    // The verity device sits on the stick's own partitions (a SCSI disk), no loop device.
    let under = run_ok(&mut vm, "lsblk -n -s -o NAME,TRAN,PARTLABEL /dev/mapper/root");
    assert!(
        under.contains("sda") && under.contains("usb") && under.contains("root-live"),
        "{under}"
    );
    let loops = run_ok(&mut vm, "losetup -l -n | wc -l");
    assert_eq!(loops.trim(), "0", "{loops}");
}
