//! Boot the default image under QEMU + OVMF and check the node: verified read-only root,
//! writable state partition, the cluster components configured from the node config and
//! their health gates before boot-complete.target, a failing gate that keeps it from being
//! reached, and that dm-verity refuses altered data.

use std::time::Duration;

use cairn_qemu_tests::*;

/// A control-plane node with a WireGuard interface. TEST KEY: never use it anywhere else.
const WIREGUARD_NODE: &str = r#"version = 1
generation = 1
hostname = "cp-1"
role = "control-plane"

[wireguard]
private-key = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="
address = ["10.90.0.1/24"]
listen-port = 51820

[[wireguard.peer]]
public-key = "ISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+P0A="
endpoint = "10.0.2.2:51820"
allowed-ips = ["10.90.0.2/32"]
"#;

#[test]
fn a_configured_node_boots_onto_its_verity_root_with_healthy_components() {
    let root_hash = manifest()["root-hash"].as_str().expect("root hash").to_string();
    let (_dir, disk) = disk_with_saved_config("wg", WIREGUARD_NODE);
    let _slot = vm_slot();
    let mut vm = boot(&disk);
    ready_shell(&mut vm, 0, "version=0.1.0 slot=a boot=");
    eprintln!("{}", vm::render_budget(&vm::boot_phases(&vm.lines()), vm.accel));

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

    // The saved node config is in effect.
    assert_eq!(run_ok(&mut vm, "hostname").trim(), "cp-1");
    // etcd is healthy, asked over plain HTTP without Cairn's code.
    let health = run_ok(
        &mut vm,
        "exec 3<>/dev/tcp/127.0.0.1/2381; printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3; echo; exec 3<&-",
    );
    assert!(health.contains("\"health\":\"true\""), "{health}");
    let etcd_env = run_ok(
        &mut vm,
        "tr '\\0' '\\n' < /proc/$(systemctl show -P MainPID etcd)/environ | grep ^ETCD_NAME=",
    );
    assert_eq!(etcd_env.trim(), "ETCD_NAME=cp-1");
    // The reboot lease in that etcd, through the image's etcdctl.
    let lease = run_ok(
        &mut vm,
        "cairn-node reboot-lease take --etcd http://127.0.0.1:2379 && cairn-node reboot-lease release --etcd http://127.0.0.1:2379",
    );
    assert!(
        lease.contains("reboot lease: cp-1 took slot 0") && lease.contains("reboot lease: cp-1 gave up its slot"),
        "{lease}"
    );
    // containerd serves, with the systemd cgroup driver.
    let ctr = run_ok(&mut vm, "ctr version");
    assert!(ctr.contains("Server:"), "{ctr}");
    let cgroup = run_ok(&mut vm, "containerd config dump | grep -c 'SystemdCgroup = true'");
    assert_eq!(cgroup.trim(), "1", "containerd does not use the systemd cgroup driver");
    // The WireGuard interface is up, with the configured key (kept 0600 on /var).
    let wg = run_ok(
        &mut vm,
        "wg show wg0 public-key; wg show wg0 listen-port; ip -br addr show wg0",
    );
    let expected_pub = cairn_node_config::WgKey::parse("AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=")
        .unwrap()
        .public()
        .to_base64();
    assert!(wg.contains(&expected_pub), "{wg}");
    assert!(wg.contains("51820") && wg.contains("10.90.0.1/24"), "{wg}");
    let key = run_ok(&mut vm, "stat -c '%a %U' /var/lib/cairn/wireguard/wg0.key");
    assert_eq!(key.trim(), "600 systemd-network");
    // No kubelet in this image: the unit is skipped, and status says why.
    let kubelet = vm
        .run("systemctl status kubelet.service", Duration::from_secs(30))
        .unwrap()
        .0;
    assert!(
        kubelet.contains("ConditionPathExists=/usr/bin/kubelet was not met"),
        "{kubelet}"
    );
    // boot-complete.target was reached, after every gate passed.
    let order = run_ok(
        &mut vm,
        "for u in cairn-health-etcd cairn-health-containerd cairn-health-wireguard cairn-health-kubelet \
         cairn-health-sshd cairn-health-keys boot-complete.target; do echo \"$u $(systemctl show -P ActiveState $u) \
         $(systemctl show -P ActiveEnterTimestampMonotonic $u)\"; done",
    );
    let rows: Vec<(String, String, u64)> = order
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3).then(|| (f[0].to_string(), f[1].to_string(), f[2].parse().unwrap_or(0)))
        })
        .collect();
    assert_eq!(rows.len(), 7, "{order}");
    let complete = rows[6].2;
    for (unit, state, at) in &rows {
        assert_eq!(state, "active", "{unit}: {order}");
        assert!(
            *at > 0 && *at <= complete,
            "{unit} became active after boot-complete.target:\n{order}"
        );
    }
    let gates = vm
        .lines()
        .iter()
        .filter(|(_, l)| l.contains("cairn: health gate") && l.contains("passed"))
        .count();
    assert_eq!(gates, 6, "every gate logs that it passed on the console");

    // Debian's node-exporter serves Cairn's metrics beside its own (textfile collector),
    // and Prometheus' promtool finds them clean.
    let ours = cairn_metrics(&mut vm);
    for want in [
        // (node-exporter sorts labels by name.)
        "cairn_info{image=\"node\",node=\"cp-1\",slot=\"a\",version=\"0.1.0\"} 1",
        "cairn_boot_blessed 1",
        "cairn_health_gate_passed{gate=\"etcd\"} 1",
        "cairn_health_gate_passed{gate=\"wireguard\"} 1",
        "cairn_reboot_lease_configured 0",
    ] {
        assert!(
            ours.lines().any(|l| l == want),
            "no {want} in node-exporter's answer:\n{ours}"
        );
    }
    assert!(
        ours.contains("cairn_health_gate_duration_seconds{gate=\"containerd\"}"),
        "{ours}"
    );
    promtool_check(&ours);

    // What Cairn generated passes systemd's own checks: the factory /var tmpfiles file
    // (re-applying it reports nothing) and every unit Cairn installs or extends.
    let tmpfiles = run_ok(
        &mut vm,
        "systemd-tmpfiles --create /usr/lib/tmpfiles.d/cairn-factory-var.conf /usr/lib/tmpfiles.d/cairn.conf 2>&1",
    );
    assert!(tmpfiles.trim().is_empty(), "systemd-tmpfiles complained:\n{tmpfiles}");
    // (--man=no: the image has no man pages for Debian's Documentation=man:etcd.)
    let verify = run_ok(
        &mut vm,
        "systemd-analyze verify --man=no cairn-firstboot.service cairn-ready.service cairn-ssh-hostkeys.service \
         cairn-health-etcd.service cairn-health-containerd.service cairn-health-wireguard.service \
         cairn-health-kubelet.service cairn-health-sshd.service cairn-health-keys.service cairn-key-agent.service \
         cairn-keyserver.service cairn-keyserver.path cairn-lease-release.service cairn-etcd-auth.service \
         cairn-metrics.service cairn-metrics.timer prometheus-node-exporter.service \
         cairn-gate-failed@etcd.service cairn-update.service cairn-update.timer cairn-boot-deadline.service \
         etcd.service containerd.service tmp.mount 2>&1",
    );
    assert!(verify.trim().is_empty(), "systemd-analyze verify:\n{verify}");
    // This image has no kubelet: the binary is all systemd finds missing in its unit.
    let verify = vm
        .run(
            "systemd-analyze verify --man=no kubelet.service 2>&1",
            Duration::from_secs(60),
        )
        .unwrap()
        .0;
    assert_eq!(
        verify.trim(),
        "kubelet.service: Command /usr/bin/kubelet is not executable: No such file or directory"
    );

    // The kernel command line carries the manifest's root hash.
    let cmdline = run_ok(&mut vm, "cat /proc/cmdline");
    assert!(
        cmdline.split_whitespace().any(|w| w == format!("roothash={root_hash}")),
        "{cmdline}"
    );
    vm.kill();
}

#[test]
fn a_flipped_byte_in_root_a_is_refused_by_dm_verity_and_the_initrd_reboots() {
    let m = manifest();
    let root = m["payloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "root")
        .unwrap();
    let offset = root["offset"].as_u64().unwrap();
    let (_dir, disk) = copy_disk("flip");
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
    // The root is never mounted: the initrd gives up (emergency) and, with Cairn's
    // `rd.shell=0 rd.emergency=reboot`, reboots instead of waiting in a shell, so a
    // counted try of a release like this one ends and rollback can proceed.
    let emergency = vm
        .wait_for_line_from(at, "emergency", Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_for_line_from(emergency, "BdsDxe: starting", Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("the initrd did not reboot after its failure: {e}"));
    assert!(
        !vm.lines().iter().any(|l| l.1.contains("cairn: ready")),
        "the altered root booted"
    );
    vm.kill();
}

#[test]
fn without_a_node_config_the_image_is_a_healthy_single_node() {
    let image = test_image();
    let _slot = vm_slot();
    let mut vm = boot(&image.join("disk.raw"));
    vm.wait_for_line("cairn: ready ", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let lines = vm.lines();
    let applied = lines
        .iter()
        .find(|(_, l)| l.contains("cairn: applied node config"))
        .map(|(_, l)| l.clone())
        .unwrap_or_default();
    assert!(
        applied.contains(
            "generation 0 from the built-in single-node default: host cairn, role control-plane, etcd member cairn"
        ),
        "{applied}"
    );
    assert!(
        lines.iter().any(|(_, l)| l.contains("cairn: no config drive attached")),
        "no word about the missing config drive on the console"
    );
    for gate in [
        "etcd passed after",
        "containerd passed after",
        "wireguard passed: nothing to check",
        "kubelet passed: nothing to check",
        "sshd passed after",
        "keys passed: nothing to check (no keyserver is configured",
    ] {
        assert!(
            lines
                .iter()
                .any(|(_, l)| l.contains(&format!("cairn: health gate {gate}"))),
            "no '{gate}' line on the console"
        );
    }
    vm.wait_for("root@cairn", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    let failed = run_ok(&mut vm, "systemctl --failed --no-legend --plain");
    assert!(failed.trim().is_empty(), "{failed}");
    // PID 1 armed the machine's watchdog (QEMU's i6300esb; its driver is in the kept
    // modules). Freezing PID 1 — a hang that never panics — stops the petting and the
    // hardware resets the machine: on a counted try that spends a try.
    let wd = run_ok(
        &mut vm,
        "cd /sys/class/watchdog/watchdog0 && echo $(cat identity) / $(cat state) / $(cat timeout)",
    );
    assert!(wd.contains("i6300ESB timer / active / 60"), "{wd}");
    let from = vm.lines().len();
    let frozen = vm.elapsed();
    vm.send_line("echo 1 > /sys/fs/cgroup/init.scope/cgroup.freeze")
        .unwrap();
    let reset = vm
        .wait_for_line_from(from, "BdsDxe: starting", Duration::from_secs(240))
        .unwrap_or_else(|e| panic!("the watchdog did not reset a node whose PID 1 hangs: {e}"));
    eprintln!(
        "watchdog: PID 1 frozen, machine reset {:.1?} later (RuntimeWatchdogSec=60s)",
        vm.lines()[reset].0 - frozen
    );
    vm.kill();
}

#[test]
fn a_failing_health_gate_keeps_boot_complete_from_being_reached() {
    // etcd told to listen for peers on an address this node does not have: it cannot
    // start, systemd restarts it five times and gives up, and the gate fails as soon as
    // it sees that, well before the 120 s this config allows it.
    let (_dir, disk) = disk_with_saved_config(
        "gate",
        "version = 1\ngeneration = 2\nhostname = \"broken-1\"\n\
         [etcd]\npeer-urls = [\"http://10.99.0.1:2380\"]\n[health]\netcd = 120\n",
    );
    let _slot = vm_slot();
    let mut vm = boot(&disk);
    let at = vm
        .wait_for_line("cairn: health gate etcd FAILED", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let line = vm.lines()[at].1.clone();
    assert!(
        line.contains("etcd.service failed and systemd stopped restarting it")
            && line.contains("last check: GET http://127.0.0.1:2381/health"),
        "{line}"
    );
    let secs: u64 = line
        .split("FAILED after ")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no time in {line}"));
    assert!(secs < 120, "the gate waited out its limit: {line}");
    // This version is not on a counted try, so nothing reboots: the node stays up.
    let note = vm
        .wait_for_line_from(at, "not on a counted try", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        vm.lines()[note].1.contains("health gate etcd failed"),
        "{}",
        vm.lines()[note].1
    );
    vm.wait_for("root@broken-1", Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"));
    run_ok(&mut vm, "export SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 TERM=dumb");
    let target = vm
        .run("systemctl is-active boot-complete.target", Duration::from_secs(30))
        .unwrap()
        .0;
    assert_eq!(target.trim(), "inactive", "boot-complete.target was reached");
    let failed = run_ok(&mut vm, "systemctl --failed --no-legend --plain");
    assert!(failed.contains("cairn-health-etcd.service"), "{failed}");
    // The other gates still passed; only etcd's names the failure.
    assert!(!failed.contains("cairn-health-containerd"), "{failed}");
    let why = run_ok(
        &mut vm,
        "journalctl -b -u etcd.service --no-pager | grep -c 'cannot assign requested address' || true",
    );
    assert_ne!(why.trim(), "0", "etcd's own log does not say why it failed");
    assert!(
        !vm.lines().iter().any(|(_, l)| l.contains("cairn: ready ")),
        "the ready line came without boot-complete.target"
    );
    let boots = vm
        .lines()
        .iter()
        .filter(|(_, l)| l.contains("BdsDxe: starting"))
        .count();
    assert_eq!(boots, 1, "a failed gate on an uncounted boot must not reboot");
    vm.kill();
}
