//! Boot the default image under QEMU + OVMF and check the node: verified read-only root,
//! writable state partition, cluster services, and that dm-verity refuses altered data.

use std::time::Duration;

use cairn_qemu_tests::*;

fn run_ok(vm: &mut Vm, cmd: &str) -> String {
    let (out, code) = vm
        .run(cmd, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert_eq!(code, 0, "`{cmd}` failed:\n{out}");
    out
}

#[test]
fn default_image_boots_onto_its_verity_root() {
    let image = test_image();
    let root_hash = manifest()["root-hash"].as_str().expect("root hash").to_string();
    let _slot = vm_slot();
    let mut vm = boot(&image.join("disk.raw"));

    let ready = vm
        .wait_for_line("cairn: ready ", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let line = vm.lines()[ready].1.clone();
    assert!(line.contains("cairn: ready version=0.1.0 slot=a boot="), "{line}");
    eprintln!("{}", vm::render_budget(&vm::boot_phases(&vm.lines()), vm.accel));
    vm.wait_for("root@", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    run_ok(&mut vm, "export SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 TERM=dumb");

    // / is the verity device, squashfs, read-only; writing fails.
    let root = run_ok(&mut vm, "findmnt -n -o SOURCE,FSTYPE,OPTIONS /");
    assert!(root.starts_with("/dev/mapper/root squashfs ro"), "{root}");
    let (out, code) = vm.run("touch /usr/cairn-probe 2>&1", Duration::from_secs(30)).unwrap();
    assert_ne!(code, 0);
    assert!(out.contains("Read-only file system"), "{out}");
    let table = run_ok(&mut vm, "dmsetup table root 2>/dev/null || veritysetup status root");
    assert!(table.contains("verity"), "{table}");

    // /var is the state partition and writable.
    let var = run_ok(
        &mut vm,
        "findmnt -n -o SOURCE,FSTYPE /var; lsblk -n -o PARTLABEL \"$(findmnt -n -o SOURCE /var)\"",
    );
    assert!(var.contains("ext4") && var.contains("state"), "{var}");
    run_ok(&mut vm, "echo ok > /var/cairn-probe && cat /var/cairn-probe");

    // The cluster services run, and nothing failed.
    let active = run_ok(&mut vm, "systemctl is-active containerd.service etcd.service");
    assert_eq!(
        active.split_whitespace().collect::<Vec<_>>(),
        ["active", "active"],
        "{active}"
    );
    let state = vm
        .run("systemctl is-system-running --wait", Duration::from_secs(300))
        .unwrap()
        .0;
    let failed = run_ok(&mut vm, "systemctl --failed --no-legend --plain");
    assert_eq!(state.trim(), "running", "failed units:\n{failed}");
    assert!(failed.trim().is_empty(), "{failed}");

    // The trimmed module set still has what each kernel-config class promises, with
    // working indexes (modprobe resolves names through modules.dep.bin and aliases).
    run_ok(
        &mut vm,
        "modprobe -a -n dm_verity squashfs vfat nls_ascii efivarfs overlay br_netfilter veth vxlan \
         wireguard nf_conntrack xt_conntrack ip_vs virtio_net nvme ahci usb_storage e1000e",
    );
    let sound = run_ok(&mut vm, "ls /usr/lib/modules/*/kernel/ | tr '\\n' ' '");
    assert!(!sound.contains("sound"), "untrimmed module tree: {sound}");

    // What Cairn generated passes systemd's own checks: the factory /var tmpfiles file
    // (re-applying it reports nothing) and Cairn's units.
    let tmpfiles = run_ok(
        &mut vm,
        "systemd-tmpfiles --create /usr/lib/tmpfiles.d/cairn-factory-var.conf 2>&1",
    );
    assert!(tmpfiles.trim().is_empty(), "systemd-tmpfiles complained:\n{tmpfiles}");
    let verify = run_ok(
        &mut vm,
        "systemd-analyze verify cairn-ready.service cairn-ssh-hostkeys.service 2>&1",
    );
    assert!(verify.trim().is_empty(), "systemd-analyze verify:\n{verify}");

    // The kernel command line carries the manifest's root hash.
    let cmdline = run_ok(&mut vm, "cat /proc/cmdline");
    assert!(
        cmdline.split_whitespace().any(|w| w == format!("roothash={root_hash}")),
        "{cmdline}"
    );
    vm.kill();
}

#[test]
fn a_flipped_byte_in_root_a_is_refused_by_dm_verity() {
    let image = test_image();
    let m = manifest();
    let root = m["payloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "root")
        .unwrap();
    let offset = root["offset"].as_u64().unwrap();
    let dir = std::env::temp_dir().join(format!("cairn-qemu-flip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.raw");
    let st = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(image.join("disk.raw"))
        .arg(&disk)
        .status()
        .unwrap();
    assert!(st.success());
    // One bit in the squashfs superblock, which the initrd must read to mount the root.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&disk).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, offset + 40).unwrap();
        f.write_all_at(&[b[0] ^ 0x10], offset + 40).unwrap();
    }
    let _slot = vm_slot();
    let mut vm = boot(&disk);
    let at = vm
        .wait_for_line("is corrupted", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("no verity error: {e}"));
    let line = vm.lines()[at].1.clone();
    assert!(line.contains("device-mapper: verity"), "{line}");
    // The root is never mounted: the initrd stops in emergency mode, no ready line.
    vm.wait_for("emergency", Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !vm.lines().iter().any(|l| l.1.contains("cairn: ready")),
        "the altered root booted"
    );
    vm.kill();
    let _ = std::fs::remove_dir_all(dir);
}
