//! A/B updates under QEMU with OVMF and systemd-boot's real boot counting: a node running
//! 0.1.0 refuses tampered bundles, survives being killed in the middle of writing, takes
//! 0.2.0 over HTTP from `python3 -m http.server`, boots the new slot and blesses it; a
//! release whose health gate cannot pass, published with `cairn publish` and found by the
//! node's update timer service, is tried three times and rolled back; a release that
//! hangs before it is healthy has its try ended by the boot deadline.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cairn_qemu_tests::*;

/// 0.2.0: the test image with a note file added, so its root differs in more than
/// os-release.
fn v2() -> &'static Path {
    static V: OnceLock<PathBuf> = OnceLock::new();
    V.get_or_init(|| {
        build_image(
            "node-0.2.0",
            &["--image-version", "0.2.0", "--overlay", "qemu-tests/overlays/v2-note"],
        )
    })
}

/// 0.3.0: a release whose default node config keeps etcd from starting.
fn broken() -> &'static Path {
    static V: OnceLock<PathBuf> = OnceLock::new();
    V.get_or_init(|| {
        build_image(
            "node-0.3.0-broken",
            &[
                "--image-version",
                "0.3.0",
                "--overlay",
                "qemu-tests/overlays/broken-etcd",
            ],
        )
    })
}

/// 0.4.0: a release whose containerd gate hangs, with a 90-second boot deadline.
fn hanging() -> &'static Path {
    static V: OnceLock<PathBuf> = OnceLock::new();
    V.get_or_init(|| {
        build_image(
            "node-0.4.0-hangs",
            &[
                "--image-version",
                "0.4.0",
                "--overlay",
                "qemu-tests/overlays/hang-gate",
                "--cmdline",
                "cairn.boot_deadline=90",
            ],
        )
    })
}

fn writable(disk: &Path) -> Vm {
    let mut s = spec(disk);
    s.writable = true;
    Vm::start(&s).expect("starting QEMU")
}

/// Wait for the ready line of `version` in `slot` after console line `from`, then for
/// the root shell of that boot. Returns the ready line's index and time.
fn ready(vm: &mut Vm, from: usize, version: &str, slot: &str) -> (usize, Duration) {
    let i = vm
        .wait_for_line_from(from, "cairn: ready version=", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let (at, line) = vm.lines()[i].clone();
    assert!(
        line.contains(&format!("cairn: ready version={version} slot={slot} ")),
        "expected {version} from slot {slot}: {line}"
    );
    // The autologin prompt may come before or after the ready line.
    vm.wait_for_from(from, "root@", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    run_ok(vm, "export SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 TERM=dumb");
    (i, at)
}

/// Reboot; returns the console line index from which the next boot's output starts
/// (the firmware's first line, so an old prompt is never taken for the new one).
fn reboot(vm: &mut Vm) -> usize {
    let from = vm.lines().len();
    vm.send_line("systemctl reboot").unwrap();
    vm.wait_for_from(from, "BdsDxe", Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn esp_files(vm: &mut Vm) -> Vec<String> {
    run_ok(vm, "ls /boot/EFI/Linux")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Bundles with one flipped byte in the manifest, the signature or the root payload.
fn tampered(dir: &Path, bundle: &Path) -> Vec<(&'static str, &'static str)> {
    let data = std::fs::read(bundle).unwrap();
    let mlen = u32::from_le_bytes(data[12..16].try_into().unwrap()) as usize;
    let manifest: serde_json::Value = serde_json::from_slice(&data[32..32 + mlen]).unwrap();
    let root = &manifest["payloads"][0];
    assert_eq!(root["name"], "root");
    let root_end = (root["offset"].as_u64().unwrap() + root["size"].as_u64().unwrap()) as usize;
    let cases = [
        ("manifest.cairn", 32 + mlen / 2, "signature check failed"),
        ("signature.cairn", 32 + mlen + 7, "signature check failed"),
        // Near the end of the root payload: almost all of it is written first.
        ("payload.cairn", root_end - 4096, "payload root: sha256"),
    ];
    cases
        .iter()
        .map(|(name, at, want)| {
            let mut bad = data.clone();
            bad[*at] ^= 0x20;
            std::fs::write(dir.join(name), bad).unwrap();
            (*name, *want)
        })
        .collect()
}

#[test]
fn an_update_survives_a_kill_boots_the_other_slot_and_is_blessed() {
    let v1 = test_image();
    let v2 = v2();
    let served = tempfile::tempdir().unwrap();
    std::fs::copy(v2.join("update.cairn"), served.path().join("update.cairn")).unwrap();
    let bad = tampered(served.path(), &v2.join("update.cairn"));
    let http = HttpServer::start(served.path());
    let (_dir, disk) = copy_disk("ota");
    let _slot = vm_slot();
    let mut vm = writable(&disk);
    ready(&mut vm, 0, "0.1.0", "a");
    let status = run_ok(&mut vm, "cairn-node update --status");
    assert!(status.contains("running  node 0.1.0 from slot a (blessed)"), "{status}");
    assert!(status.contains("slot b: nothing bootable"), "{status}");
    // The node's machine-id (and so networkd's DHCP client identity) is made at the first
    // boot, kept on the state partition, and the same after every reboot and the update.
    let machine_id = |vm: &mut Vm| {
        let id = run_ok(vm, "cat /etc/machine-id").trim().to_string();
        assert_eq!(id.len(), 32, "{id}");
        assert_eq!(
            run_ok(vm, "cat /var/lib/cairn/machine-id").trim(),
            id,
            "the saved machine-id"
        );
        id
    };
    let first_id = machine_id(&mut vm);

    // Tampered bundles are refused; slot B is not made bootable.
    for (file, want) in bad {
        let out = run_fails(&mut vm, &format!("cairn-node update {}", http.guest_url(file)));
        assert!(out.contains(want), "{file}: {out}");
        assert!(out.contains("the running version stays the default"), "{out}");
        assert_eq!(esp_files(&mut vm), ["cairn_0.1.0.efi"], "{file}");
        let status = run_ok(&mut vm, "cairn-node update --status");
        assert!(status.contains("slot b: nothing bootable"), "{file}: {status}");
    }
    // The same version again is refused too.
    let same = served.path().join("same.cairn");
    std::fs::copy(v1.join("update.cairn"), &same).unwrap();
    let out = run_fails(&mut vm, &format!("cairn-node update {}", http.guest_url("same.cairn")));
    assert!(out.contains("0.1.0 is already running"), "{out}");

    // QEMU killed while the root payload streams into slot B: 0.1.0 boots as before,
    // nothing boots slot B, and the update runs again to completion.
    let from = vm.lines().len();
    vm.send_line(&format!("cairn-node update {}", http.guest_url("update.cairn")))
        .unwrap();
    vm.wait_for_from(from, "cairn: update: root 16/", Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"));
    vm.kill();
    let mut vm = writable(&disk);
    ready(&mut vm, 0, "0.1.0", "a");
    assert_eq!(machine_id(&mut vm), first_id, "after a power cut and a boot");
    assert_eq!(esp_files(&mut vm), ["cairn_0.1.0.efi"]);
    let status = run_ok(&mut vm, "cairn-node update --status");
    assert!(status.contains("slot b: nothing bootable"), "{status}");

    // The real update, streamed over HTTP into slot B.
    let t = Instant::now();
    let out = run_ok(
        &mut vm,
        &format!("cairn-node update {}", http.guest_url("update.cairn")),
    );
    let update_secs = t.elapsed().as_secs_f64();
    assert!(
        out.contains("installed node 0.2.0 into slot b as cairn_0.2.0+3.efi"),
        "{out}"
    );
    assert_eq!(esp_files(&mut vm), ["cairn_0.1.0.efi", "cairn_0.2.0+3.efi"]);
    let status = run_ok(&mut vm, "cairn-node update --status");
    assert!(
        status.contains("other    0.2.0 in slot b: to be tried: 3 tries left"),
        "{status}"
    );

    // Reboot into 0.2.0 from slot B; systemd-bless-boot blesses it after boot-complete.
    let t = Instant::now();
    let from = reboot(&mut vm);
    let (_, _) = ready(&mut vm, from, "0.2.0", "b");
    let to_ready = t.elapsed().as_secs_f64();
    // systemd-bless-boot.service belongs to the boot transaction: once startup is over
    // (whatever state it ends in; the ESP listing below is the check), it has run.
    run_ok(&mut vm, "systemctl is-system-running --wait; true");
    let to_blessed = t.elapsed().as_secs_f64();
    assert_eq!(esp_files(&mut vm), ["cairn_0.1.0.efi", "cairn_0.2.0.efi"]);
    assert!(run_ok(&mut vm, "cat /etc/cairn/release-note").contains("second release"));
    assert_eq!(machine_id(&mut vm), first_id, "after the update");
    let status = run_ok(&mut vm, "cairn-node update --status");
    assert!(status.contains("running  node 0.2.0 from slot b (blessed)"), "{status}");
    assert!(
        status.contains("other    0.1.0 in slot a: good (the fallback)"),
        "{status}"
    );
    let bless = run_ok(&mut vm, "/usr/lib/systemd/systemd-bless-boot status");
    assert_eq!(bless.trim(), "good", "{bless}");

    // And it stays: the next boot is 0.2.0 from slot B again, uncounted.
    let from = reboot(&mut vm);
    ready(&mut vm, from, "0.2.0", "b");
    assert_eq!(esp_files(&mut vm), ["cairn_0.1.0.efi", "cairn_0.2.0.efi"]);
    assert_eq!(machine_id(&mut vm), first_id, "after a reboot of 0.2.0");
    assert!(
        vm.lines()
            .iter()
            .any(|(_, l)| l.contains(&format!("machine-id {first_id} from the state partition"))),
        "the initrd put the saved machine-id back"
    );
    vm.kill();

    let bundle = std::fs::metadata(v2.join("update.cairn")).unwrap().len();
    let image = std::fs::metadata(v2.join("disk.raw")).unwrap().len();
    eprintln!(
        "update: bundle {:.1} MiB ({:.1}% of the {:.0} MiB disk image); written over HTTP in {update_secs:.1} s; \
         reboot to ready {to_ready:.1} s, to blessed {to_blessed:.1} s",
        bundle as f64 / 1048576.0,
        100.0 * bundle as f64 / image as f64,
        image as f64 / 1048576.0,
    );
}

/// `cairn publish` with the key the test images are signed with.
fn publish(out: &Path, to: &Path) {
    let key = cairn_mkimage::build::dev_key_path();
    let o = std::process::Command::new(cairn_bin())
        .arg("publish")
        .arg(out)
        .arg("--to")
        .arg(to)
        .arg("--key")
        .arg(&key)
        .arg("--allow-development")
        .output()
        .expect("running cairn publish");
    assert!(
        o.status.success(),
        "cairn publish: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_release_whose_gate_fails_is_tried_three_times_then_rolled_back() {
    let broken = broken();
    let hanging = hanging();
    // The node polls a published directory through its timer's service, with
    // [update] from its saved node config, and reboots by itself.
    let served = tempfile::tempdir().unwrap();
    publish(test_image(), served.path());
    publish(broken, served.path());
    let index = std::fs::read_to_string(served.path().join("node/index.json")).unwrap();
    assert!(index.contains("\"latest\": \"0.3.0\""), "{index}");
    let http = HttpServer::start(served.path());
    let config = format!(
        "version = 1\ngeneration = 1\nhostname = \"cairn\"\n\n[update]\nsource = \"{}\"\nreboot = \"now\"\n",
        http.guest_url("node/")
    );
    let (_dir, disk) = disk_with_saved_config("rollback", &config);
    let _slot = vm_slot();
    let mut vm = writable(&disk);
    ready(&mut vm, 0, "0.1.0", "a");
    let from = vm.lines().len();
    vm.send_line("systemctl start cairn-update.service").unwrap();
    let t = Instant::now();
    vm.wait_for_from(from, "rebooting into 0.3.0 now", Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e}"));
    let from = vm
        .wait_for_from(from, "BdsDxe", Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"));
    // Three counted tries, each ending in the etcd gate's failure and a reboot.
    let mut at = from;
    for n in 1..=3 {
        at = vm
            .wait_for_line_from(at, "is on a counted try", BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("try {n}: {e}"));
        let line = vm.lines()[at].1.clone();
        assert!(line.contains("cairn: 0.3.0 is on a counted try"), "{line}");
        at = vm
            .wait_for_from(at, "BdsDxe", Duration::from_secs(300))
            .unwrap_or_else(|e| panic!("reboot after try {n}: {e}"));
    }
    let lines = vm.lines();
    assert!(
        lines[from..]
            .iter()
            .all(|l| !l.1.contains("cairn: ready version=0.3.0")),
        "0.3.0 must never be ready"
    );
    // Then systemd-boot falls back to 0.1.0 on its own.
    ready(&mut vm, at, "0.1.0", "a");
    let rollback = t.elapsed().as_secs_f64();
    assert_eq!(esp_files(&mut vm), ["cairn_0.1.0.efi", "cairn_0.3.0+0-3.efi"]);
    let status = run_ok(&mut vm, "cairn-node update --status");
    assert!(status.contains("running  node 0.1.0 from slot a (blessed)"), "{status}");
    assert!(
        status.contains("other    0.3.0 in slot b: FAILED: out of tries after 3 failed boots"),
        "{status}"
    );
    assert!(
        status.contains("failed   0.3.0: cairn: health gate etcd FAILED"),
        "{status}"
    );
    assert!(
        status.contains("etcd.service failed and systemd stopped restarting it"),
        "{status}"
    );
    // The timer's next run does not take the failed version again.
    let out = run_ok(
        &mut vm,
        // Only the service's own lines (systemd's "Finished" line may be
        // stored before them), after journald has stored all it was sent.
        "systemctl start cairn-update.service; journalctl --sync; \
         journalctl -b _SYSTEMD_UNIT=cairn-update.service -o cat --no-pager | tail -1",
    );
    assert!(
        out.contains("0.3.0 failed on this node before; waiting for a newer release"),
        "{out}"
    );
    assert_eq!(esp_files(&mut vm), ["cairn_0.1.0.efi", "cairn_0.3.0+0-3.efi"]);

    // 0.4.0 hangs instead of failing (a gate that never finishes): the boot deadline
    // (cairn.boot_deadline=90 on its command line) ends the try and reboots, and the
    // next try is counted.
    publish(hanging, served.path());
    let from = vm.lines().len();
    vm.send_line("systemctl start cairn-update.service").unwrap();
    vm.wait_for_from(from, "rebooting into 0.4.0 now", Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e}"));
    let first = vm
        .wait_for_from(from, "BdsDxe", Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"));
    let late = vm
        .wait_for_line_from(first, "did not reach boot-complete.target within 90s", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("no boot deadline: {e}"));
    let second = vm
        .wait_for_from(late, "BdsDxe", Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("no reboot after the deadline: {e}"));
    vm.wait_for_line_from(second, "boot deadline: cairn_0.4.0+1-2.efi must reach", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_for_from(second, "root@", Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"));
    let status = run_ok(&mut vm, "cairn-node update --status");
    assert!(
        status.contains("running  node 0.4.0 from slot b (NOT blessed yet: cairn_0.4.0+1-2.efi (boot 2 of 3))"),
        "{status}"
    );
    assert!(
        status.contains("failed   0.4.0: cairn: 0.4.0 did not reach boot-complete.target within 90s"),
        "{status}"
    );
    vm.kill();
    eprintln!("rollback: from `systemctl start cairn-update.service` to 0.1.0 ready again after three failed tries of 0.3.0: {rollback:.1} s");
}
