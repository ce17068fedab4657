//! Real consumers of the key agent's certificates: three etcd members (Debian's etcd) on
//! 127.0.0.1–3, each enrolled by its own agent with a keyserver on loopback and run with
//! the environment `cairn-node apply` renders for a node with a keyserver. They form a
//! cluster over TLS that `etcdctl` reaches with an etcd-client certificate; a peer
//! certificate that does not name the connecting address is refused; a renewed
//! certificate is served without restarting etcd.

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
client-urls = ["https://127.0.0.{n}:2379"]
peer-urls = ["https://127.0.0.{n}:2380"]
initial-cluster = {{ cp-1 = "https://127.0.0.1:2380", cp-2 = "https://127.0.0.2:2380", cp-3 = "https://127.0.0.3:2380" }}
[key-agent]
server = "https://127.0.0.1:8443"
ca-fingerprint = "sha256:{}"
bootstrap-token = "ck1.6QZ4B2K9TD.VX3Q7M2K4P8R1C6J9W5T2N7H3F-4JPG"
"#,
        "00".repeat(32)
    )
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

fn pki(root: &Path, profile: &str, file: &str) -> PathBuf {
    root.join("var/lib/cairn/pki").join(profile).join("current").join(file)
}

fn etcdctl(root: &Path, args: &[&str]) -> std::process::Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints=https://127.0.0.1:2379,https://127.0.0.2:2379,https://127.0.0.3:2379")
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
            Some("127.0.0.1:2379".parse().unwrap()),
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
        // node's root (and, three nodes sharing one loopback, each on its own address).
        let env = cairn_node::render::render_etcd_env(&config, config.etcd.as_ref().unwrap()).unwrap();
        let data = tmp.path().join(format!("etcd-{n}"));
        let mut cmd = Command::new("etcd");
        for line in env.lines().filter(|l| !l.starts_with('#')) {
            let (k, v) = line.split_once('=').unwrap();
            let v = v
                .replace("/var/lib/cairn", &root.join("var/lib/cairn").display().to_string())
                .replace("/var/lib/etcd/default", &data.display().to_string())
                .replace(",https://127.0.0.1:2379", "")
                .replace("http://127.0.0.1:2381", &format!("http://127.0.0.{n}:2381"));
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
    assert_eq!(text.matches("https://127.0.0.").count(), 6, "{text}");
    assert!(etcdctl(&roots[2], &["put", "/cairn/test", "hello"]).status.success());
    let got = etcdctl(&roots[0], &["get", "--print-value-only", "/cairn/test"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "hello");

    // The node agent's own client (etcdctl, TLS with the etcd-client certificate) takes
    // the reboot lease through any member; a member that is down is skipped.
    let endpoints: Vec<String> = [
        "https://127.0.0.9:2379",
        "https://127.0.0.1:2379",
        "https://127.0.0.2:2379",
    ]
    .map(String::from)
    .to_vec();
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
    // certificate works from 127.0.0.2, not from 127.0.0.9.
    let (code, said) = peer_get(&roots[1], "127.0.0.2");
    assert_eq!(code, 200, "{said}\n{}", logs());
    let (code, said) = peer_get(&roots[1], "127.0.0.9");
    assert_eq!(code, 0, "{said}");
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
        "127.0.0.2:2379".parse().unwrap(),
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
}
