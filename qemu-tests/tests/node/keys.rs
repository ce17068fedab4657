//! The key agent in the image, under QEMU: a node whose config drive was written with
//! `cairn config-drive --keyserver` enrolls at first boot with a keyserver on the host
//! (10.0.2.2 from the guest) before its ready line; etcd serves https with the certificate
//! it was issued, the token is gone, an admin logs in with a user certificate from
//! `cairn ssh-cert` (the drive has no SSH keys) and checks the node by its host certificate,
//! and the next boot, with the keyserver stopped, is as fast as the first. Then the
//! keyserver's state moves onto the node and cairn-keyserver.service serves it there.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cairn_qemu_tests::*;

/// The `boot=` seconds of the ready line.
fn boot_secs(vm: &Vm) -> f64 {
    let line = vm
        .lines()
        .into_iter()
        .find(|(_, l)| l.contains("cairn: ready "))
        .unwrap()
        .1;
    line.split("boot=")
        .nth(1)
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap()
}

fn index_of(vm: &Vm, needle: &str) -> usize {
    vm.lines()
        .iter()
        .position(|(_, l)| l.contains(needle))
        .unwrap_or_else(|| panic!("no console line with '{needle}'"))
}

/// What the node says about its certificates, and the serial etcd serves on 2379.
const CHECK: &str = "test -e /var/lib/cairn/key-agent/token && echo TOKEN-LEFT; cairn-node key-agent --status; \
    echo served $(openssl s_client -connect 10.0.2.15:2379 -verify_return_error \
      -CAfile /var/lib/cairn/pki/etcd-server/current/bundle.pem \
      -cert /var/lib/cairn/pki/etcd-client/current/cert.pem -key /var/lib/cairn/pki/etcd-client/current/key.pem \
      </dev/null 2>/dev/null | openssl x509 -noout -serial); \
    stat -c 'owner %U %a' /var/lib/cairn/pki/etcd-server/current/both.pem; \
    grep VmRSS /proc/$(systemctl show -P MainPID cairn-key-agent.service)/status";

#[test]
fn a_node_enrolls_at_first_boot_and_boots_as_fast_without_its_keyserver() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("ks");
    let st = state.display().to_string();
    let init = cairn(&["keyserver", "init", &st, "--cluster", "qemu"]);
    let host_ca = init
        .lines()
        .find_map(|l| l.strip_prefix("known_hosts      "))
        .unwrap_or_else(|| panic!("{init}"))
        .to_string();
    let port = free_port();
    let server = serve(&state, port, &dir.path().join("keyserver.log"));
    let (key, _) = ssh_keypair(dir.path(), "admin");
    let said = cairn(&["ssh-cert", &st, &key.with_extension("pub").display().to_string()]);
    assert!(said.contains("admin-cert.pub: root until "), "{said}");
    let node = dir.path().join("cp-k.toml");
    std::fs::write(
        &node,
        format!(
            "version = 1\ngeneration = 1\nhostname = \"cp-k\"\n\n\
             [[network.interface]]\nname = \"en*\"\naddress = [\"10.0.2.15/24\"]\ngateway = [\"10.0.2.2\"]\ndns = [\"10.0.2.3\"]\n\n\
             [etcd]\nclient-urls = [\"https://10.0.2.15:2379\"]\npeer-urls = [\"https://10.0.2.15:2380\"]\n\n\
             [key-agent]\nserver = \"https://10.0.2.2:{port}\"\n"
        ),
    )
    .unwrap();
    let drive = dir.path().join("cp-k.img");
    let said = cairn(&[
        "config-drive",
        &node.display().to_string(),
        "--out",
        &drive.display().to_string(),
        "--keyserver",
        &st,
    ]);
    assert!(said.contains("key agent  token "), "{said}");

    let (_tmp, disk) = copy_disk("keys");
    // One VM slot like the other tests: the comparison below is of two boots of one
    // 1-vCPU guest, each on a core of its own while another test's guest has the other.
    let _slot = vm_slot();
    let boot = |drive: Option<&Path>| {
        let port = free_port();
        let mut s = spec(&disk);
        s.config_drive = drive.map(Path::to_owned);
        s.ssh_port = Some(port);
        s.writable = true;
        let mut vm = Vm::start(&s).expect("starting QEMU");
        vm.wait_for_line("cairn: ready ", BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        (vm, port)
    };

    // First boot: enrolled before the ready line, and every gate passed.
    let (mut vm, ssh_port) = boot(Some(&drive));
    let enrolled = index_of(&vm, "cairn: key agent enrolled cp-k (control-plane) with 10.0.2.2:");
    assert!(enrolled < index_of(&vm, "cairn: ready "));
    let gate = &vm.lines()[index_of(&vm, "cairn: health gate keys passed")].1;
    assert!(gate.contains("cp-k holds 6 certificates of generation 1"), "{gate}");
    let first = boot_secs(&vm);
    let (out, ok) = ssh(&mut vm, ssh_port, &key, CHECK);
    assert!(ok, "{out}");
    assert!(!out.contains("TOKEN-LEFT"), "the token is removed once used: {out}");
    assert!(out.contains("last error: none"), "{out}");
    let status_serial = out
        .lines()
        .find(|l| l.starts_with("etcd-server "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let served = out
        .lines()
        .find_map(|l| l.strip_prefix("served serial="))
        .unwrap_or_else(|| panic!("etcd served no certificate that verifies: {out}"))
        .to_lowercase();
    assert!(
        served.starts_with(&status_serial),
        "etcd serves {served}, the agent holds {status_serial}"
    );
    assert!(out.contains("owner etcd 600"), "{out}");
    let rss = out
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap_or_else(|| panic!("the key agent is not running: {out}"))
        .trim()
        .to_string();
    eprintln!("key agent resident, idle after enrolling: {rss}");
    // The node is known by its host certificate alone (the forwarded port is 127.0.0.1, so
    // ssh is told the node's name to check the certificate's principals against).
    let known = dir.path().join("known_hosts");
    std::fs::write(&known, format!("{host_ca}\n")).unwrap();
    let o = Command::new("ssh")
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "HostKeyAlias=cp-k",
        ])
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known.display()))
        .arg("-i")
        .arg(&key)
        .args(["-p", &ssh_port.to_string(), "root@127.0.0.1", "hostname"])
        .output()
        .unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "cp-k",
        "ssh with the host CA and the user certificate: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    vm.kill();

    // The keyserver goes away; the node boots as fast, on the certificates it has.
    drop(server);
    let (mut vm, ssh_port) = boot(None);
    let second = boot_secs(&vm);
    assert!(
        !vm.lines().iter().any(|(_, l)| l.contains("cairn: key agent")),
        "the agent had nothing to say: its certificates are not due"
    );
    index_of(&vm, "cairn: health gate keys passed");
    let (out, ok) = ssh(&mut vm, ssh_port, &key, CHECK);
    assert!(ok && out.contains("served serial="), "{out}");
    assert!(
        second <= first + 10.0,
        "the second boot took {second:.1}s, the first {first:.1}s"
    );
    eprintln!("boot with enrollment {first:.1}s, with the keyserver stopped {second:.1}s");

    // The keyserver moves into the cluster: its state goes to this control-plane node, and
    // cairn-keyserver.path starts the server there once serve.toml is in place.
    std::fs::write(
        state.join("serve.toml"),
        "listen = \"[::]:8443\"\nnames = [\"cp-k\", \"10.0.2.15\"]\n",
    )
    .unwrap();
    let tar = Command::new("sh")
        .arg("-c")
        .arg(format!("tar -C '{}' -czf - . | base64 -w0", state.display()))
        .output()
        .unwrap();
    assert!(tar.status.success());
    let b64 = String::from_utf8(tar.stdout).unwrap();
    let (out, ok) = ssh(
        &mut vm,
        ssh_port,
        &key,
        &format!(
            "set -e; d=/var/lib/cairn/keyserver; mkdir $d.new; echo {b64} | base64 -d | tar -C $d.new --no-same-owner -xzf -; \
             mv $d.new $d; \
             for i in $(seq 150); do \
               if printf 'GET /healthz HTTP/1.1\\r\\nHost: cp-k\\r\\nConnection: close\\r\\n\\r\\n' | \
                    openssl s_client -quiet -connect 10.0.2.15:8443 -verify_return_error -verify_hostname cp-k \
                    -CAfile /var/lib/cairn/pki/identity/current/bundle.pem > /tmp/healthz 2>&1; then break; fi; \
               sleep 0.2; \
             done; \
             cat /tmp/healthz; systemctl show -P ActiveState cairn-keyserver.service; \
             journalctl -u cairn-keyserver.service --no-pager -o cat | tail -n 5"
        ),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("HTTP/1.1 200") && out.lines().any(|l| l.trim() == "ok"),
        "the keyserver on the node answers with a certificate from the keyserver CA for cp-k: {out}"
    );
    vm.wait_for_line(
        "cairn-keyserver: serving /var/lib/cairn/keyserver on https://[::]:8443 as cp-k, 10.0.2.15",
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("the unit says where it serves: {e}"));
    vm.kill();
}
