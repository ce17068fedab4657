//! Power-loss soak, run by hand (`cargo test -p cairn-qemu-tests --test soak -- --ignored
//! --nocapture`): a fresh node loses power at a different moment of its first minute each
//! round — just after it made its SSH host keys, after each health gate, at and after the
//! ready line — and the next boot must still reach the ready line with sshd running and
//! no failed unit. Prints what the second boot had to mend.

use std::time::Duration;

use cairn_qemu_tests::*;

#[test]
#[ignore = "a soak: about 2 minutes per round under TCG"]
fn power_loss_in_the_first_minute() {
    let moments: [(&str, u64); 7] = [
        ("cairn: SSH host key ed25519", 0),
        ("cairn: health gate etcd passed", 0),
        ("cairn: health gate containerd passed", 0),
        ("cairn: ready ", 0),
        ("cairn: ready ", 5),
        ("cairn: ready ", 10),
        ("cairn: ready ", 20),
    ];
    let _slot = vm_slot();
    for (needle, after) in moments {
        let (_tmp, disk) = copy_disk("soak");
        let mut s = spec(&disk);
        s.writable = true;
        let mut vm = Vm::start(&s).expect("starting QEMU");
        let at = vm.wait_for_line(needle, BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(Duration::from_secs(after));
        let when = format!("{after} s after '{needle}' ({:.1?} into the boot)", vm.lines()[at].0);
        vm.kill();
        let mut vm = Vm::start(&s).expect("starting QEMU");
        vm.wait_for_line("cairn: ready ", BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("power lost {when}: {e}"));
        vm.wait_for("root@", Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}"));
        let out = run_ok(
            &mut vm,
            "systemctl is-active ssh.service; systemctl --failed --no-legend --plain | wc -l; \
             journalctl -b --no-pager | grep -c 'made anew\\|not a UUID\\|written again' || true",
        );
        let f: Vec<&str> = out.split_whitespace().collect();
        eprintln!(
            "power lost {when}: sshd {}, failed units {}, mends {}",
            f[0], f[1], f[2]
        );
        assert_eq!(&f[..2], ["active", "0"], "power lost {when}: {out}");
        vm.kill();
    }
}
