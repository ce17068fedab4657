//! Three control-plane nodes from one cluster file, with a keyserver and a release server
//! on the host, on one network segment (QEMU multicast sockets: no root, no tap):
//!
//! 1. They boot from their drives alone: each makes its WireGuard key, enrolls, gets the
//!    others from the keyserver's peer list, and their etcd members form one TLS cluster
//!    over the mesh (`wg show` lists two peers with handshakes, `etcdctl member list`
//!    three started https members, a key written through one is read through the others).
//! 2. Writers on the host put a key through each member every second (etcdctl through an
//!    SSH tunnel to the member's client port) while the three take
//!    0.2.0 from a static web server as their update timers would, one at a time under
//!    the reboot lease and only while every etcd member is healthy. The first node to
//!    reboot is powered off as it goes: its slot passes on after the lease's TTL, the
//!    next holder sees its member down and waits (two of three down would be no quorum),
//!    the node is powered on and comes back into 0.2.0, and the other two follow. Every
//!    node ends on 0.2.0, blessed, with the lease free; the longest stretch without a
//!    successful write is printed and bounded.
//! 3. Each node's Prometheus text (node-exporter's textfile collector) shows the version
//!    and the lease, and `promtool check metrics` finds it clean.
//!
//! Three 1-vCPU, 1 GiB guests share the two cores; this is the suite's longest test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_qemu_tests::*;

/// etcdctl on a node, through its own member, with the key agent's client certificate.
const ETCDCTL: &str = "etcdctl --endpoints=https://127.0.0.1:2379 \
     --cacert=/var/lib/cairn/pki/etcd-server/current/bundle.pem \
     --cert=/var/lib/cairn/pki/etcd-client/current/cert.pem \
     --key=/var/lib/cairn/pki/etcd-client/current/key.pem";

/// The lease's TTL in the cluster file: the shortest node.toml allows, so the power-off
/// costs a minute.
const LEASE_TTL: u64 = 60;

struct Node {
    n: u8,
    name: String,
    disk: PathBuf,
    drive: PathBuf,
    ssh: u16,
    vm: Option<Vm>,
}

impl Node {
    fn power_on(&mut self, lan: u16) {
        let mut s = spec(&self.disk);
        s.writable = true;
        s.config_drive = Some(self.drive.clone());
        s.lan = Some(vm::Lan::member(lan, self.n));
        s.ssh_port = Some(self.ssh);
        // Three guests on a two-core host: one CPU each (two each boot slower: six vCPU
        // threads on two cores).
        s.cpus = 1;
        s.memory_mib = 1024;
        self.vm = Some(Vm::start(&s).expect("starting QEMU"));
    }

    fn vm(&mut self) -> &mut Vm {
        self.vm.as_mut().expect("powered on")
    }

    /// The first console line at or after `from` containing `needle`.
    fn seen(&self, from: usize, needle: &str) -> Option<usize> {
        let vm = self.vm.as_ref()?;
        vm.lines()
            .iter()
            .skip(from)
            .position(|(_, l)| l.contains(needle))
            .map(|i| i + from)
    }
}

/// A write every second through each node's own member, by the host's etcdctl through an
/// SSH tunnel to the node's 127.0.0.1:2379 (the guests only forward bytes: a Go client
/// started every second on a TCG guest would slow what it measures). Each attempt's end
/// time and outcome.
struct Writers {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(Duration, bool, u8)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    start: Instant,
}

/// A figure for the log even when the test passes (libtest keeps what `println!` prints
/// from a passing test; CI's log is where the cluster's timings are wanted).
fn report(line: String) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// `ssh -N -L` from 127.0.0.1:`local` to the node's etcd client port.
fn tunnel(port: u16, key: &Path, local: u16) -> std::process::Child {
    ssh_command(port, key)
        .args(["-N", "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=2"])
        .args(["-o", "ExitOnForwardFailure=yes", "-L"])
        .arg(format!("127.0.0.1:{local}:127.0.0.1:2379"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ssh")
}

impl Writers {
    /// `nodes`: (number, SSH port); `tls`: a directory with the etcd client's ca.pem,
    /// cert.pem and key.pem.
    fn start(nodes: &[(u8, u16)], key: &Path, tls: &Path) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let threads = nodes
            .iter()
            .map(|&(n, port)| {
                let (stop, log) = (stop.clone(), log.clone());
                let (key, tls) = (key.to_owned(), tls.to_owned());
                std::thread::spawn(move || {
                    let local = free_port();
                    let mut ssh: Option<std::process::Child> = None;
                    let mut seq = 0u64;
                    std::thread::sleep(Duration::from_millis(333 * u64::from(n - 1)));
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        // A tunnel that ended (the node rebooted) is opened again.
                        if ssh.as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some()) {
                            ssh = Some(tunnel(port, &key, local));
                        }
                        seq += 1;
                        let ok = Command::new("etcdctl")
                            .arg(format!("--endpoints=https://127.0.0.1:{local}"))
                            .arg(format!("--cacert={}", tls.join("ca.pem").display()))
                            .arg(format!("--cert={}", tls.join("cert.pem").display()))
                            .arg(format!("--key={}", tls.join("key.pem").display()))
                            .args(["--dial-timeout=2s", "--command-timeout=3s", "put"])
                            .arg(format!("/cairn-test/writes/cp-{n}"))
                            .arg(seq.to_string())
                            .stdout(std::process::Stdio::null())
                            .stderr(std::process::Stdio::null())
                            .status()
                            .is_ok_and(|s| s.success());
                        log.lock().unwrap().push((start.elapsed(), ok, n));
                        std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
                    }
                    if let Some(mut c) = ssh {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                })
            })
            .collect();
        Writers {
            stop,
            log,
            threads,
            start,
        }
    }

    /// Stop; the longest time without a successful write (from the writers' start, the
    /// tunnels' first login included), and the counts of successful and failed writes.
    /// Every node's writer must have succeeded at least once.
    fn finish(self) -> (Duration, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let end = self.start.elapsed();
        let log = self.log.lock().unwrap();
        for n in 1..=3u8 {
            assert!(
                log.iter().any(|w| w.1 && w.2 == n),
                "no write through cp-{n} ever succeeded"
            );
        }
        let mut ok: Vec<Duration> = log.iter().filter(|w| w.1).map(|w| w.0).collect();
        ok.sort();
        let failed = log.len() - ok.len();
        let mut longest = ok.first().copied().unwrap_or(end);
        for w in ok.windows(2) {
            longest = longest.max(w[1] - w[0]);
        }
        if let Some(last) = ok.last() {
            longest = longest.max(end.saturating_sub(*last));
        }
        (longest, ok.len(), failed)
    }
}

#[test]
fn three_nodes_form_a_cluster_and_roll_through_an_update_without_losing_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = v2_image();
    let served = dir.path().join("served");
    publish(test_image(), &served);
    publish(v2, &served);
    let http = HttpServer::start(&served);

    let state = dir.path().join("ks");
    let st = state.display().to_string();
    cairn(&["keyserver", "init", &st, "--cluster", "lab"]);
    let ks_port = free_port();
    let _keyserver = serve(&state, ks_port, &dir.path().join("keyserver.log"));
    let (key, public) = ssh_keypair(dir.path(), "admin");
    let lan = free_port();

    // One cluster file; one drive per node from it.
    let mut file = format!(
        "version = 1\nname = \"lab\"\nkeyserver = \"https://10.0.2.2:{ks_port}\"\n\
         update-source = \"{}\"\nlease-ttl = {LEASE_TTL}\n\n\
         [ssh]\nauthorized-keys = [\"{public}\"]\n\n\
         [network]\nprefix-length = 24\n\n[mesh]\nnetwork = \"10.90.0.0/24\"\n",
        http.guest_url("node/")
    );
    for n in 1..=3u8 {
        file.push_str(&format!(
            "\n[[node]]\nname = \"cp-{n}\"\nrole = \"control-plane\"\naddress = \"192.168.77.{n}\"\nmac = \"{}\"\n",
            vm::Lan::member(lan, n).mac
        ));
    }
    let cluster = dir.path().join("lab.toml");
    std::fs::write(&cluster, &file).unwrap();
    let drives = dir.path().join("drives");
    cairn(&[
        "config-drive",
        "--cluster",
        &cluster.display().to_string(),
        "--keyserver",
        &st,
        "--out",
        &drives.display().to_string(),
    ]);
    let mut disks = Vec::new();
    let mut nodes: Vec<Node> = (1..=3u8)
        .map(|n| {
            let (tmp, disk) = copy_disk(&format!("cp-{n}"));
            disks.push(tmp);
            Node {
                n,
                name: format!("cp-{n}"),
                disk,
                drive: drives.join(format!("cp-{n}.img")),
                ssh: free_port(),
                vm: None,
            }
        })
        .collect();

    let _machine = whole_machine();
    let start = Instant::now();
    for node in &mut nodes {
        node.power_on(lan);
    }
    for node in &mut nodes {
        node.vm()
            .wait_for_line("cairn: ready version=0.1.0 slot=a", BOOT_TIMEOUT * 2)
            .unwrap_or_else(|e| panic!("{}: {e}", node.name));
    }
    let all_ready = start.elapsed();
    for node in &mut nodes {
        node.vm()
            .wait_for("root@", Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}"));
        run_ok(node.vm(), "export SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 TERM=dumb");
    }

    // Each made its key at first boot, then enrolled (telling the keyserver its half).
    for node in &nodes {
        let made = node.seen(0, "made the WireGuard key of wg0");
        let enrolled = node.seen(0, &format!("key agent enrolled {} ", node.name));
        assert!(
            made.is_some() && enrolled.is_some() && made < enrolled,
            "{}: key made, then enrolled",
            node.name
        );
    }

    // The mesh: every node has the other two as peers, with handshakes (etcd's traffic
    // made them), the keyserver's endpoints and host routes, and keeps the list.
    let keys: Vec<String> = nodes
        .iter_mut()
        .map(|node| run_ok(node.vm(), "wg show wg0 public-key").trim().to_string())
        .collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        let dump = run_ok(node.vm(), "wg show wg0 dump");
        let peers: Vec<Vec<&str>> = dump.lines().skip(1).map(|l| l.split('\t').collect()).collect();
        assert_eq!(peers.len(), 2, "{}: two peers\n{dump}", node.name);
        for p in &peers {
            let j = keys.iter().position(|k| k == p[0]).expect("a cluster node's key");
            assert_ne!(i, j, "not itself");
            assert_eq!(p[2], format!("192.168.77.{}:51820", j + 1), "{dump}");
            assert_eq!(p[3], format!("10.90.0.{}/32", j + 1), "{dump}");
            assert!(p[4].parse::<u64>().unwrap() > 0, "{}: a handshake\n{dump}", node.name);
            assert_eq!(p[7], "25", "{dump}");
        }
        let kept = run_ok(node.vm(), "cat /var/lib/cairn/wireguard/wg0.peers.json");
        assert!(
            keys.iter().enumerate().all(|(j, k)| j == i || kept.contains(k)),
            "{kept}"
        );
        // The private key stays on the node: not on its drive, not in the keyserver's state.
        let secret = run_ok(node.vm(), "cat /var/lib/cairn/wireguard/wg0.key")
            .trim()
            .to_string();
        assert_eq!(secret.len(), 44, "{secret}");
        for place in [&state, &drives] {
            let found = Command::new("grep")
                .args(["-rqaF", &secret])
                .arg(place)
                .status()
                .unwrap();
            assert!(
                !found.success(),
                "{} holds {}'s private key",
                place.display(),
                node.name
            );
        }
    }

    // etcd: three started members with https peer URLs on the mesh; a key written through
    // one member is read through the other two.
    let list = run_ok(nodes[1].vm(), &format!("{ETCDCTL} member list"));
    assert_eq!(list.matches(", started, cp-").count(), 3, "{list}");
    for n in 1..=3 {
        assert!(list.contains(&format!("https://10.90.0.{n}:2380")), "{list}");
    }
    run_ok(nodes[0].vm(), &format!("{ETCDCTL} put /cairn-test/hello from-cp-1"));
    // etcd's authentication is on (cairn-etcd-auth.service on every member): the members'
    // users have the root role, the workers' lease user may use /cairn/reboot/ only.
    for node in &mut nodes {
        let said = run_ok(
            node.vm(),
            // A run etcd could not answer is tried again (Restart=on-failure): wait it out.
            "for i in $(seq 90); do s=$(systemctl is-active cairn-etcd-auth.service); \
             [ \"$s\" = activating ] || break; sleep 2; done; echo $s; \
             journalctl -b -u cairn-etcd-auth -o cat --no-pager | grep 'etcd auth: on'",
        );
        assert!(
            said.starts_with("active") && said.contains("cairn-lease may use /cairn/reboot/ only"),
            "{}: {said}",
            node.name
        );
    }
    let users = run_ok(nodes[2].vm(), &format!("{ETCDCTL} user list"));
    let users: Vec<&str> = users.split_whitespace().collect();
    assert_eq!(
        users,
        [
            "cairn-lease",
            "cairn-node:cp-1",
            "cairn-node:cp-2",
            "cairn-node:cp-3",
            "root"
        ]
    );
    let role = run_ok(nodes[2].vm(), &format!("{ETCDCTL} role get cairn-lease"));
    assert!(
        role.contains("KV Write:")
            && role
                .matches("[/cairn/reboot/, /cairn/reboot0) (prefix /cairn/reboot/)")
                .count()
                == 2,
        "read and write under /cairn/reboot/ only: {role}"
    );
    for node in &mut nodes[1..] {
        let got = run_ok(
            node.vm(),
            &format!("{ETCDCTL} get --print-value-only /cairn-test/hello"),
        );
        assert_eq!(got.trim(), "from-cp-1", "{}", node.name);
    }

    // Each node's machine-id, kept on its state partition across the update.
    let ids: Vec<String> = nodes
        .iter_mut()
        .map(|node| run_ok(node.vm(), "cat /etc/machine-id").trim().to_string())
        .collect();

    // The writers (with cp-1's etcd client certificate: any member takes it), then the
    // rollout: each node's update service, as its timer starts it.
    for node in &mut nodes {
        let (said, ok) = ssh(node.vm.as_mut().expect("on"), node.ssh, &key, "true");
        assert!(ok, "ssh to {}: {said}", node.name);
    }
    let tls = dir.path().join("etcd-client");
    std::fs::create_dir(&tls).unwrap();
    for (file, from) in [
        ("ca.pem", "etcd-server/current/bundle.pem"),
        ("cert.pem", "etcd-client/current/cert.pem"),
        ("key.pem", "etcd-client/current/key.pem"),
    ] {
        let pem = run_ok(nodes[0].vm(), &format!("cat /var/lib/cairn/pki/{from}"));
        std::fs::write(tls.join(file), format!("{}\n", pem.trim())).unwrap();
    }
    let writers = Writers::start(&nodes.iter().map(|n| (n.n, n.ssh)).collect::<Vec<_>>(), &key, &tls);
    let rollout = Instant::now();
    let marks: Vec<usize> = nodes.iter().map(|n| n.vm.as_ref().unwrap().lines_len()).collect();
    for node in &mut nodes {
        run_ok(node.vm(), "systemctl start --no-block cairn-update.service");
    }

    // The first node to reboot is powered off as it goes, holding its slot.
    let deadline = Instant::now() + Duration::from_secs(900);
    let first = loop {
        if let Some(i) = (0..3).find(|&i| nodes[i].seen(marks[i], "rebooting into 0.2.0 now").is_some()) {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "no node rebooted into 0.2.0 within 15 minutes"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    nodes[first].vm.take().unwrap().kill();
    let killed = rollout.elapsed();
    let others: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    let who = nodes[first].name.clone();
    for &i in &others {
        // Installed, and waiting for the slot the dead node holds.
        let name = nodes[i].name.clone();
        nodes[i]
            .vm()
            .wait_for_line_from(
                marks[i],
                &format!("the reboot lease is held by {who}"),
                Duration::from_secs(600),
            )
            .unwrap_or_else(|e| panic!("{name} did not wait for {who}'s slot: {e}"));
    }
    // After the TTL its slot is free; whoever takes it next sees the dead member, gives
    // the slot back and waits: no one reboots while the node is down.
    let guard = format!("etcd member {who} (");
    let deadline = Instant::now() + Duration::from_secs(LEASE_TTL + 180);
    let guarded = loop {
        if let Some(&i) = others.iter().find(|&&i| nodes[i].seen(marks[i], &guard).is_some()) {
            break i;
        }
        assert!(
            others
                .iter()
                .all(|&i| nodes[i].seen(marks[i], "rebooting into 0.2.0 now").is_none()),
            "a node rebooted while {who} was down"
        );
        assert!(Instant::now() < deadline, "nobody took {who}'s slot after its TTL");
        std::thread::sleep(Duration::from_millis(500));
    };
    let passed_on = rollout.elapsed();
    report(format!(
        "cluster: {} took {who}'s slot {:.0} s after {who} was powered off, and waits for its member",
        nodes[guarded].name,
        (passed_on - killed).as_secs_f64()
    ));
    nodes[first].power_on(lan);

    // The powered-on node boots the release it had installed and blesses it; then the
    // other two go, one after the other.
    let mut done_at = Vec::new();
    let mut back = [false; 3];
    let deadline = Instant::now() + Duration::from_secs(1800);
    while back != [true; 3] {
        for i in 0..3 {
            let from = if i == first { 0 } else { marks[i] };
            if !back[i] && nodes[i].seen(from, "cairn: ready version=0.2.0 slot=b").is_some() {
                back[i] = true;
                done_at.push((nodes[i].name.clone(), rollout.elapsed()));
            }
        }
        assert!(
            Instant::now() < deadline,
            "the rollout did not finish in 30 minutes: {done_at:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let rollout_secs = rollout.elapsed();
    // Each reboot came right after its node saw every etcd member healthy. (The lease's
    // 60 s TTL is shorter than a reboot here, so a slot passes on before its holder is
    // blessed; the guard is what keeps a second member from going down meanwhile, and the
    // writers below are what shows etcd kept its quorum.)
    for node in &nodes {
        let Some(vm) = node.vm.as_ref() else { continue };
        let lines = vm.lines();
        for (i, (_, l)) in lines.iter().enumerate() {
            if l.contains("rebooting into 0.2.0 now") {
                let took = lines[..i].iter().rev().find(|(_, l)| l.contains("reboot lease slot"));
                assert!(
                    took.is_some_and(|(_, l)| l.contains("every etcd member is healthy")),
                    "{}: rebooted without seeing every member healthy: {took:?}",
                    node.name
                );
            }
        }
    }
    let (gap, writes, failed) = writers.finish();
    assert!(
        done_at[0].0 == who,
        "{who} came back first (the others wait for its member): {done_at:?}"
    );

    for node in &mut nodes {
        // The autologin prompt may come before or after the ready line of the boot.
        let ready = node.seen(0, "cairn: ready version=0.2.0 slot=b").unwrap();
        let lines = node.vm().lines();
        let from = lines[..ready]
            .iter()
            .rposition(|(_, l)| l.contains("BdsDxe"))
            .unwrap_or(0);
        node.vm()
            .wait_for_from(from, "root@", Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}"));
        run_ok(node.vm(), "export SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 TERM=dumb");
        run_ok(node.vm(), "systemctl is-system-running --wait; true");
        let status = run_ok(node.vm(), "cairn-node update --status");
        assert!(
            status.contains("running  node 0.2.0 from slot b (blessed)"),
            "{}: {status}",
            node.name
        );
        assert!(
            status.contains("other    0.1.0 in slot a: good (the fallback)"),
            "{status}"
        );
        // Blessed: the UKI lost its counter, so the next boot is not counted.
        let bless = run_ok(node.vm(), "/usr/lib/systemd/systemd-bless-boot status");
        assert_eq!(bless.trim(), "good", "{bless}");
        let esp = run_ok(node.vm(), "ls /boot/EFI/Linux");
        assert_eq!(
            esp.split_whitespace().collect::<Vec<_>>(),
            ["cairn_0.1.0.efi", "cairn_0.2.0.efi"],
            "{}",
            node.name
        );
        assert!(run_ok(node.vm(), "cat /etc/cairn/release-note").contains("second release"));
        // The same machine-id, put back by the initrd from the state partition.
        let id = &ids[usize::from(node.n - 1)];
        assert_eq!(run_ok(node.vm(), "cat /etc/machine-id").trim(), id, "{}", node.name);
        assert!(
            node.seen(0, &format!("machine-id {id} from the state partition"))
                .is_some(),
            "{}: the initrd put the saved machine-id back",
            node.name
        );
        let lease = run_ok(node.vm(), "cairn-node reboot-lease status");
        assert!(lease.contains("reboot lease: free"), "{}: {lease}", node.name);
        // The same three members, all started, and the key from before the rollout.
        let list = run_ok(node.vm(), &format!("{ETCDCTL} member list"));
        assert_eq!(list.matches(", started, cp-").count(), 3, "{list}");
        let got = run_ok(
            node.vm(),
            &format!("{ETCDCTL} get --print-value-only /cairn-test/hello"),
        );
        assert_eq!(got.trim(), "from-cp-1");

        // Prometheus text: the version and the lease, clean by promtool.
        let scraped = cairn_metrics(node.vm());
        assert!(
            scraped.contains("version=\"0.2.0\"") && scraped.contains("slot=\"b\""),
            "{}: {scraped}",
            node.name
        );
        assert!(scraped.contains("cairn_reboot_lease_configured 1"), "{scraped}");
        assert!(scraped.contains("cairn_reboot_lease_held 0"), "{scraped}");
        assert!(scraped.contains("cairn_boot_blessed 1"), "{scraped}");
        promtool_check(&scraped);
    }
    report(format!(
        "cluster: all three ready after {:.1} s; rollout to 0.2.0 (with {who} powered off at {:.0} s) took {:.0} s, \
         nodes back at {}; longest time without a successful write {:.1} s ({writes} writes, {failed} failed)",
        all_ready.as_secs_f64(),
        killed.as_secs_f64(),
        rollout_secs.as_secs_f64(),
        done_at
            .iter()
            .map(|(n, t)| format!("{n} {:.0} s", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        gap.as_secs_f64()
    ));
    // One leader election under TCG (etcd's election timeout is 1 s; a loaded 1-vCPU
    // guest is slower), plus a write's own round trip over SSH.
    assert!(gap < Duration::from_secs(20), "writes stopped for {gap:?}");
}
