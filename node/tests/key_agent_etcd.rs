//! Real consumers of the key agent's certificates: three etcd members (Debian's etcd) on
//! 127.0.0.1, each on its own ports and enrolled by its own agent with a keyserver on loopback and run with
//! the environment `cairn-node apply` renders for a node with a keyserver. They form a
//! cluster over TLS that `etcdctl` reaches with an etcd-client certificate; a peer
//! certificate that does not name the connecting address is refused; a renewed
//! certificate is served without restarting etcd. A worker's etcd-lease certificate is all
//! of etcd until `etcd-auth` has run on the members, and then the reboot lease only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_keys::profiles::Role;
use cairn_keys::Clock;
use cairn_keyserver::serve::Server;
use cairn_keyserver::{ca, registry, tokens, Keyserver};
use cairn_node::config::NodeConfig;
use cairn_node::key_agent::run::{Agent, Settings};
use cairn_node::key_agent::{self, state::AgentState};

fn node_toml(n: u8) -> String {
    format!(
        r#"version = 1
generation = 1
hostname = "cp-{n}"
[etcd]
client-urls = ["https://127.0.0.1:{client}"]
peer-urls = ["https://127.0.0.1:{peer}"]
initial-cluster = {{ cp-1 = "https://127.0.0.1:2380", cp-2 = "https://127.0.0.1:12380", cp-3 = "https://127.0.0.1:22380" }}
[key-agent]
server = "https://127.0.0.1:8443"
ca-fingerprint = "sha256:{}"
bootstrap-token = "ck1.6QZ4B2K9TD.VX3Q7M2K4P8R1C6J9W5T2N7H3F-4JPG"
"#,
        "00".repeat(32),
        client = member_port(n, 2379),
        peer = member_port(n, 2380),
    )
}

/// Member `n`'s port for `base` (2379 client, 2380 peer, 2381 metrics): 2379, 12379,
/// 22379 for the clients. All three members share 127.0.0.1: a connection to another
/// loopback address leaves from 127.0.0.1 (the kernel's `local 127.0.0.0/8 ... src
/// 127.0.0.1` route), and a peer port checks the connecting address against the peer
/// certificate, so members on 127.0.0.2 and 127.0.0.3 would refuse each other.
fn member_port(n: u8, base: u16) -> u16 {
    base + 10000 * (u16::from(n) - 1)
}

fn client_url(n: u8) -> String {
    format!("https://127.0.0.1:{}", member_port(n, 2379))
}

/// Kills the members however the test ends.
struct Members(Vec<Child>);

impl Drop for Members {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `cairn-node etcd-auth` once more, through cp-1's member, noting what it did in `done`.
fn cairn_node_etcd_auth_again(root: &Path, done: &Path) -> cairn_node::etcd_auth::Done {
    let own = cairn_node::etcd::Etcd::new(
        &["https://127.0.0.1:2379".to_string()],
        Some(&cairn_node::etcd::ClientTls::from_key_agent(root)),
        Duration::from_secs(10),
    )
    .unwrap();
    cairn_node::etcd_auth::set_up(&own, &["cp-1".into(), "cp-2".into(), "cp-3".into()], Some(done)).unwrap()
}

fn pki(root: &Path, profile: &str, file: &str) -> PathBuf {
    root.join("var/lib/cairn/pki").join(profile).join("current").join(file)
}

fn etcdctl(root: &Path, args: &[&str]) -> std::process::Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!(
            "--endpoints={},{},{}",
            client_url(1),
            client_url(2),
            client_url(3)
        ))
        .arg(format!("--cacert={}", pki(root, "etcd-server", "bundle.pem").display()))
        .arg(format!("--cert={}", pki(root, "etcd-client", "cert.pem").display()))
        .arg(format!("--key={}", pki(root, "etcd-client", "key.pem").display()))
        .args(["--dial-timeout=3s", "--command-timeout=5s"])
        .args(args)
        .output()
        .unwrap()
}

/// The serial of the certificate served at `addr` (hex, upper case as OpenSSL prints it).
fn served_serial(root: &Path, addr: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -CAfile {} -cert {} -key {} </dev/null 2>/dev/null | openssl x509 -noout -serial",
            pki(root, "etcd-server", "bundle.pem").display(),
            pki(root, "etcd-client", "cert.pem").display(),
            pki(root, "etcd-client", "key.pem").display(),
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_lowercase()
}

/// curl to a peer URL from `source`, showing `root`'s etcd-peer certificate; the HTTP
/// status (0 when the TLS handshake is refused) and what curl said.
fn peer_get(root: &Path, source: &str) -> (u32, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            "--http1.1",
        ])
        .args(["--interface", source])
        .arg("--cacert")
        .arg(pki(root, "etcd-peer", "bundle.pem"))
        .arg("--cert")
        .arg(pki(root, "etcd-peer", "cert.pem"))
        .arg("--key")
        .arg(pki(root, "etcd-peer", "key.pem"))
        .arg("https://127.0.0.1:2380/members")
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn three_etcd_members_run_on_the_key_agents_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::system();
    let state = tmp.path().join("ks");
    let made = ca::init(&state, "test", clock.now()).unwrap();
    let server = Server::bind_with_clock(
        Keyserver::open(&state).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        &["127.0.0.1".into()],
        clock.clone(),
    )
    .unwrap();
    let port = server.local_addr().port();
    std::thread::spawn(move || server.run());
    let fingerprint: [u8; 32] = hex::decode(made.keyserver_fingerprint.strip_prefix("sha256:").unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let ks = Keyserver::open(&state).unwrap();

    let mut roots = Vec::new();
    let mut members = Members(Vec::new());
    for n in 1..=3u8 {
        let config = NodeConfig::parse(&node_toml(n), "node.toml").unwrap();
        registry::register(&ks, &registry::record_for(&config), "alice", clock.now()).unwrap();
        let (token, _) = tokens::create(&ks, &config.hostname, Role::ControlPlane, 3600, "alice", clock.now()).unwrap();
        let root = tmp.path().join(format!("node-{n}"));
        let token_file = root.join("var/lib/cairn/key-agent/token");
        std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
        std::fs::write(&token_file, token.to_string()).unwrap();
        let mut settings = Settings::from_config(&config);
        assert_eq!(
            settings.etcd,
            Some(format!("127.0.0.1:{}", member_port(n, 2379)).parse().unwrap()),
            "etcd runs on the agent's certificates: the agent checks it after renewals"
        );
        settings.server = Some(key_agent::Server {
            host: "127.0.0.1".into(),
            port,
            ca_fingerprint: fingerprint,
        });
        let p = Agent::new(&root, settings, clock.clone()).pass();
        assert!(p.ready && p.lines[0].contains("enrolled cp-"), "{p:?}");

        // etcd with the environment apply renders, its state-partition paths under this
        // node's root (and, three nodes sharing one loopback, each on its own ports).
        let env = cairn_node::render::render_etcd_env(&config, config.etcd.as_ref().unwrap()).unwrap();
        let data = tmp.path().join(format!("etcd-{n}"));
        let mut cmd = Command::new("etcd");
        for line in env.lines().filter(|l| !l.starts_with('#')) {
            let (k, v) = line.split_once('=').unwrap();
            let v = v
                .replace("/var/lib/cairn", &root.join("var/lib/cairn").display().to_string())
                .replace("/var/lib/etcd/default", &data.display().to_string())
                .replace(
                    "http://127.0.0.1:2381",
                    &format!("http://127.0.0.1:{}", member_port(n, 2381)),
                );
            cmd.env(k, v);
        }
        let log = std::fs::File::create(tmp.path().join(format!("etcd-{n}.log"))).unwrap();
        members.0.push(
            cmd.stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("etcd (Debian's etcd-server)"),
        );
        roots.push(root);
    }
    let logs = || {
        (1..=3)
            .map(|n| std::fs::read_to_string(tmp.path().join(format!("etcd-{n}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };

    // Healthy, all three started, over https.
    let start = Instant::now();
    loop {
        let out = etcdctl(&roots[0], &["endpoint", "health"]);
        if out.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not healthy: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let list = etcdctl(&roots[1], &["member", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert_eq!(text.matches("started").count(), 3, "{text}");
    assert_eq!(text.matches("https://127.0.0.1:").count(), 6, "{text}");
    assert!(etcdctl(&roots[2], &["put", "/cairn/test", "hello"]).status.success());
    let got = etcdctl(&roots[0], &["get", "--print-value-only", "/cairn/test"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "hello");

    // The node agent's own client (etcdctl, TLS with the etcd-client certificate) takes
    // the reboot lease through any member; a member that is down is skipped.
    let endpoints: Vec<String> = vec!["https://127.0.0.9:2379".into(), client_url(1), client_url(2)];
    let client = |root: &Path| {
        cairn_node::etcd::Etcd::new(
            &endpoints,
            Some(&cairn_node::etcd::ClientTls::from_key_agent(root)),
            Duration::from_secs(3),
        )
        .unwrap()
    };
    use cairn_node::lease::{self, Acquired};
    assert!(matches!(
        lease::acquire(&client(&roots[0]), "cp-1", 1, 60).unwrap(),
        Acquired::Held(_)
    ));
    match lease::acquire(&client(&roots[1]), "cp-2", 1, 60).unwrap() {
        Acquired::Busy(h) => assert_eq!(h[0].node, "cp-1"),
        other => panic!("{other:?}"),
    }
    assert!(lease::release(&client(&roots[0]), "cp-1").unwrap());
    assert!(matches!(
        lease::acquire(&client(&roots[1]), "cp-2", 1, 60).unwrap(),
        Acquired::Held(_)
    ));
    assert!(lease::release(&client(&roots[1]), "cp-2").unwrap());
    let peer_only = cairn_node::etcd::ClientTls {
        cert: pki(&roots[0], "etcd-peer", "cert.pem"),
        key: pki(&roots[0], "etcd-peer", "key.pem"),
        ..cairn_node::etcd::ClientTls::from_key_agent(&roots[0])
    };
    let e = lease::holders(
        &cairn_node::etcd::Etcd::new(&endpoints[1..2], Some(&peer_only), Duration::from_secs(3)).unwrap(),
    )
    .unwrap_err();
    assert!(
        matches!(e, cairn_node::etcd::EtcdError::Failed { .. }),
        "a peer certificate is no client's: {e}"
    );

    // A client without a certificate, or with a peer's, is not let in as a client.
    let peer_as_client = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints=https://127.0.0.1:2379")
        .arg(format!(
            "--cacert={}",
            pki(&roots[0], "etcd-server", "bundle.pem").display()
        ))
        .arg(format!("--cert={}", pki(&roots[0], "etcd-peer", "cert.pem").display()))
        .arg(format!("--key={}", pki(&roots[0], "etcd-peer", "key.pem").display()))
        .args(["--dial-timeout=3s", "--command-timeout=3s", "get", "/cairn/test"])
        .output()
        .unwrap();
    assert!(
        !peer_as_client.status.success(),
        "an etcd-peer certificate is no client certificate"
    );

    // The peer port checks the connecting address against the certificate: cp-2's peer
    // certificate works from 127.0.0.1, not from 127.0.0.9.
    let (code, said) = peer_get(&roots[1], "127.0.0.1");
    assert_eq!(code, 200, "{said}\n{}", logs());
    let (code, said) = peer_get(&roots[1], "127.0.0.9");
    assert_eq!(code, 0, "{said}");
    // etcd logs it a moment after the handshake failed (more than a moment on a busy machine).
    let start = Instant::now();
    while !logs().contains("rejected connection from \"127.0.0.9:") && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        logs().contains("rejected connection from \"127.0.0.9:"),
        "etcd says why: {}",
        logs()
    );

    // cp-1 renews; etcd serves the new certificate without a restart.
    let before = served_serial(&roots[0], "127.0.0.1:2379");
    assert_eq!(before, key_agent::current(&roots[0], "etcd-server").unwrap().serial);
    let mut st = AgentState::load(&roots[0]).unwrap().unwrap();
    key_agent::renew::renew(&roots[0], &mut st, Duration::from_secs(10), &clock).unwrap();
    let after = key_agent::current(&roots[0], "etcd-server").unwrap().serial;
    assert_ne!(before, after);
    // The agent's own check, then OpenSSL's.
    let line = key_agent::consumers::check_etcd(
        &roots[0],
        "127.0.0.1:2379".parse().unwrap(),
        &clock,
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(line.contains("serves the renewed certificate"), "{line}");
    assert_eq!(served_serial(&roots[0], "127.0.0.1:2379"), after);
    // A member that serves something else is reported (cp-2 shows its own certificate).
    let e = key_agent::consumers::check_etcd(
        &roots[0],
        format!("127.0.0.1:{}", member_port(2, 2379)).parse().unwrap(),
        &clock,
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(e.contains("still serves certificate"), "{e}");
    assert!(
        members.0.iter_mut().all(|c| c.try_wait().unwrap().is_none()),
        "no member restarted"
    );
    assert!(
        etcdctl(&roots[0], &["endpoint", "health"]).status.success(),
        "{}",
        logs()
    );

    // A worker enrolls and gets an etcd-lease certificate (and the etcd servers' CA).
    let worker_toml = format!(
        "version = 1\ngeneration = 1\nhostname = \"w-1\"\nrole = \"worker\"\n\
         [key-agent]\nserver = \"https://127.0.0.1:8443\"\nca-fingerprint = \"sha256:{}\"\n\
         bootstrap-token = \"ck1.6QZ4B2K9TD.VX3Q7M2K4P8R1C6J9W5T2N7H3F-4JPG\"\n\
         [update]\nsource = \"http://127.0.0.1:1/\"\nlease-etcd = [\"https://127.0.0.1:2379\"]\n",
        "00".repeat(32)
    );
    let config = NodeConfig::parse(&worker_toml, "node.toml").unwrap();
    assert_eq!(config.update.as_ref().unwrap().lease.as_ref().unwrap().etcd.len(), 1);
    registry::register(&ks, &registry::record_for(&config), "alice", clock.now()).unwrap();
    let (token, _) = tokens::create(&ks, "w-1", Role::Worker, 3600, "alice", clock.now()).unwrap();
    let worker = tmp.path().join("worker");
    let token_file = worker.join("var/lib/cairn/key-agent/token");
    std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
    std::fs::write(&token_file, token.to_string()).unwrap();
    let mut settings = Settings::from_config(&config);
    settings.server = Some(key_agent::Server {
        host: "127.0.0.1".into(),
        port,
        ca_fingerprint: fingerprint,
    });
    let p = Agent::new(&worker, settings, clock.clone()).pass();
    assert!(p.ready && p.lines[0].contains("enrolled w-1"), "{p:?}");
    assert!(pki(&worker, "etcd-lease", "cert.pem").exists() && !pki(&worker, "etcd-client", "cert.pem").exists());
    let as_worker = |args: &[&str]| {
        let tls = cairn_node::etcd::ClientTls::from_key_agent(&worker);
        assert_eq!(tls.cert, pki(&worker, "etcd-lease", "cert.pem"));
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints=https://127.0.0.1:2379")
            .arg(format!("--cacert={}", tls.ca.display()))
            .arg(format!("--cert={}", tls.cert.display()))
            .arg(format!("--key={}", tls.key.display()))
            .args(["--dial-timeout=3s", "--command-timeout=3s"])
            .args(args)
            .output()
            .unwrap()
    };
    // Before etcd's authentication is on, any certificate of the client CA is all of etcd:
    // the worker's too (it checks the servers with the CA it was sent).
    let out = as_worker(&["put", "/cairn/worker-was-here", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Every control-plane node sets up users and roles at once, each through its member.
    let runs: Vec<_> = (1..=3u8)
        .map(|n| {
            let root = roots[n as usize - 1].clone();
            std::thread::spawn(move || {
                let own = cairn_node::etcd::Etcd::new(
                    &[client_url(n)],
                    Some(&cairn_node::etcd::ClientTls::from_key_agent(&root)),
                    Duration::from_secs(10),
                )
                .unwrap();
                let names = ["cp-1", "cp-2", "cp-3"].map(String::from);
                cairn_node::etcd_auth::set_up(&own, &names, None)
            })
        })
        .collect();
    let mut added: Vec<String> = Vec::new();
    for r in runs {
        let done = r.join().unwrap().unwrap_or_else(|e| panic!("{e}\n{}", logs()));
        assert!(done.skipped.is_empty(), "{done:?}");
        added.extend(done.added);
    }
    added.sort();
    added.dedup();
    assert_eq!(
        added,
        [
            "cairn-lease",
            "cairn-node:cp-1",
            "cairn-node:cp-2",
            "cairn-node:cp-3",
            "root"
        ],
        "made between them"
    );
    // Again: nothing new; the run is noted, and the next one only asks for the members.
    let done = tmp.path().join("node-1/var/lib/cairn/etcd-auth/done");
    let again = cairn_node_etcd_auth_again(&roots[0], &done);
    assert!(
        again.added.is_empty() && !again.as_before && again.users == 5,
        "{again:?}"
    );
    let noted = std::fs::read_to_string(&done).unwrap();
    assert!(
        noted.contains(
            ": root cairn-node:cp-1 cairn-node:cp-2 cairn-node:cp-3 cairn-lease (cairn-lease: /cairn/reboot/)"
        ),
        "{noted}"
    );
    let again = cairn_node_etcd_auth_again(&roots[0], &done);
    assert!(again.as_before && again.added.is_empty(), "{again:?}");
    // A note from another cluster (or other users) is no reason to skip.
    std::fs::write(&done, noted.replacen("cluster ", "cluster 1", 1)).unwrap();
    assert!(!cairn_node_etcd_auth_again(&roots[0], &done).as_before);

    // Now the worker is the lease user: the reboot lease works, nothing else does.
    let worker_client = cairn_node::etcd::Etcd::new(
        &endpoints,
        Some(&cairn_node::etcd::ClientTls::from_key_agent(&worker)),
        Duration::from_secs(3),
    )
    .unwrap();
    let held = match lease::acquire(&worker_client, "w-1", 1, 60).unwrap() {
        Acquired::Held(h) => h,
        other => panic!("{other:?}"),
    };
    match lease::acquire(&client(&roots[1]), "cp-2", 1, 60).unwrap() {
        Acquired::Busy(h) => assert_eq!(h[0].node, "w-1", "the control plane sees the worker's slot"),
        other => panic!("{other:?}"),
    }
    assert!(worker_client.keep_alive(held.lease).unwrap().is_some());
    assert!(lease::release(&worker_client, "w-1").unwrap());
    for args in [
        &["put", "/cairn/worker-was-here", "2"][..],
        &["get", "/cairn/test"],
        &["del", "/cairn/test"],
        &["user", "add", "--no-password", "mallory"],
        &["auth", "disable"],
    ] {
        let out = as_worker(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("permission denied"),
            "{args:?}: {err}"
        );
    }
    // The control plane still has all of etcd, and a member's health still reads true.
    assert!(etcdctl(&roots[2], &["put", "/cairn/test", "still"]).status.success());
    let got = etcdctl(&roots[0], &["get", "--print-value-only", "/cairn/test"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "still");
    let health = Command::new("curl")
        .args(["-s", "http://127.0.0.1:2381/health"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&health.stdout).contains("\"health\":\"true\""),
        "{health:?}"
    );

    // The reboot guard: every member healthy, cp-1 may go. With cp-3 down, cp-1 holding a
    // slot still waits (two of three down is no quorum), names cp-3, and gives the slot
    // back.
    assert_eq!(
        lease::unhealthy_members(&client(&roots[0])).unwrap(),
        Vec::<String>::new()
    );
    let _ = members.0[2].kill();
    let _ = members.0[2].wait();
    let bad = lease::unhealthy_members(&client(&roots[0])).unwrap();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].starts_with(&format!("cp-3 ({}: ", client_url(3))),
        "which endpoint and why: {bad:?}"
    );
    let config = cairn_node_config::Lease {
        etcd: vec![cairn_node_config::Url::parse("https://127.0.0.1:2379").unwrap()],
        slots: 1,
        ttl: 60,
    };
    let mut said = Vec::new();
    assert!(!lease::before_reboot(
        &client(&roots[0]),
        &config,
        "cp-1",
        "0.2.0",
        true,
        lease::Patience::none(),
        &mut |l| said.push(l.to_string())
    ));
    assert!(
        said[0].contains("not rebooting: etcd member cp-3 (") && said[0].contains("could cost the cluster its quorum"),
        "{said:?}"
    );
    assert!(
        lease::holders(&client(&roots[0])).unwrap().is_empty(),
        "the slot is given back"
    );
    // A worker (no member of its own), with its lease certificate, is not held back by it.
    assert!(lease::before_reboot(
        &worker_client,
        &config,
        "w-1",
        "0.2.0",
        false,
        lease::Patience::none(),
        &mut |_| {}
    ));
}
