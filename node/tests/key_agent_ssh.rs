//! SSH with the keyserver's certificates, against the real OpenSSH: a node enrolled by its
//! key agent gets a host certificate for its own host key, which `ssh` accepts through one
//! `@cert-authority` line; sshd, trusting the user CA the agent wrote, lets an admin in
//! with a certificate from `cairn ssh-cert`'s signer and no authorized_keys, and refuses
//! the same key without its certificate.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_keys::profiles::{NodeRecord, Role};
use cairn_keys::Clock;
use cairn_keyserver::serve::Server;
use cairn_keyserver::{ca, registry, tokens, Keyserver};
use cairn_node::key_agent::run::{Agent, Settings};
use cairn_node::key_agent::{self};

struct Sshd(Child);

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn ssh(key: &Path, known_hosts: &Path, port: u16, user: &str) -> (bool, String) {
    run(Command::new("ssh")
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .args(["-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string(), &format!("{user}@127.0.0.1"), "echo logged-in"]))
}

#[test]
fn sshd_presents_the_host_certificate_and_takes_user_certificates() {
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
    let ks_port = server.local_addr().port();
    std::thread::spawn(move || server.run());
    let ks = Keyserver::open(&state).unwrap();
    registry::register(
        &ks,
        &NodeRecord {
            name: "w-ssh".into(),
            role: Role::Worker,
            etcd_client_ips: vec![],
            etcd_peer_ips: vec![],
            addresses: vec!["127.0.0.1".parse().unwrap()],
            mesh: None,
        },
        "alice",
        clock.now(),
    )
    .unwrap();
    let (token, _) = tokens::create(&ks, "w-ssh", Role::Worker, 3600, "alice", clock.now()).unwrap();

    // The node: its host keys as cairn-node ssh-hostkeys makes them, then enrollment.
    let root = tmp.path().join("node");
    let ssh_dir = root.join("var/lib/cairn/ssh");
    cairn_node::hostkeys::ensure(&ssh_dir).unwrap();
    let token_file = root.join("var/lib/cairn/key-agent/token");
    std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
    std::fs::write(&token_file, token.to_string()).unwrap();
    let settings = Settings {
        hostname: "w-ssh".into(),
        role: Role::Worker,
        server: Some(key_agent::Server {
            host: "127.0.0.1".into(),
            port: ks_port,
            ca_fingerprint: hex::decode(made.keyserver_fingerprint.strip_prefix("sha256:").unwrap())
                .unwrap()
                .try_into()
                .unwrap(),
        }),
        token_file: "/var/lib/cairn/key-agent/token".into(),
        etcd: None,
        mesh: None,
    };
    let p = Agent::new(&root, settings, clock.clone()).pass();
    assert!(p.ready, "{p:?}");
    let host_cert = ssh_dir.join("ssh_host_ed25519_key-cert.pub");
    let user_ca = root.join("var/lib/cairn/pki/ssh/user-ca.pub");
    let (ok, text) = run(Command::new("ssh-keygen").arg("-L").arg("-f").arg(&host_cert));
    assert!(ok, "{text}");
    assert!(
        text.contains("host certificate") && text.contains("w-ssh") && text.contains("127.0.0.1"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(&user_ca).unwrap().trim(),
        made.ssh_user_ca,
        "the agent wrote the user CA"
    );

    // The admin: a key and its certificate for the account this test runs as.
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    let admin = tmp.path().join("id_ed25519");
    assert!(
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&admin))
        .0
    );
    let line = std::fs::read_to_string(admin.with_extension("pub")).unwrap();
    let cert = cairn_keyserver::ssh::sign_user(
        &ks,
        line.trim(),
        std::slice::from_ref(&user),
        3600,
        "alice",
        clock.now(),
    )
    .unwrap();
    std::fs::write(tmp.path().join("id_ed25519-cert.pub"), format!("{cert}\n")).unwrap();
    let (ok, text) = run(Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(tmp.path().join("id_ed25519-cert.pub")));
    assert!(
        ok && text.contains("user certificate") && text.contains("permit-pty"),
        "{text}"
    );
    // The same key without its certificate.
    let bare = tmp.path().join("bare");
    std::fs::copy(&admin, &bare).unwrap();

    // sshd as the image configures it, with the files the agent wrote and no
    // authorized_keys at all.
    std::fs::create_dir_all("/run/sshd").ok();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = tmp.path().join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress 127.0.0.1:{port}\nHostKey {}\nHostCertificate {}\nTrustedUserCAKeys {}\n\
             AuthorizedKeysFile none\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\nPidFile none\n",
            ssh_dir.join("ssh_host_ed25519_key").display(),
            host_cert.display(),
            user_ca.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(tmp.path().join("sshd.log")).unwrap();
    let _sshd = Sshd(
        Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sshd (Debian's openssh-server)"),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "sshd did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sshd_log = || std::fs::read_to_string(tmp.path().join("sshd.log")).unwrap_or_default();

    // ssh trusts the node through the host CA alone.
    let known = tmp.path().join("known_hosts");
    std::fs::write(&known, format!("@cert-authority * {}\n", made.ssh_host_ca)).unwrap();
    let (ok, text) = ssh(&admin, &known, port, &user);
    assert!(ok && text.contains("logged-in"), "{text}\n{}", sshd_log());
    // Without the certificate, the key alone does not get in.
    let (ok, text) = ssh(&bare, &known, port, &user);
    assert!(!ok && text.contains("Permission denied"), "{text}");
    // A known_hosts trusting another CA does not accept the node.
    let wrong = tmp.path().join("known_hosts_wrong");
    std::fs::write(&wrong, format!("@cert-authority * {}\n", made.ssh_user_ca)).unwrap();
    let (ok, text) = ssh(&admin, &wrong, port, &user);
    assert!(!ok && text.contains("Host key verification failed"), "{text}");
}
