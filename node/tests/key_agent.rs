//! The key agent's enrollment against a real keyserver on loopback: the files it writes,
//! checked with OpenSSL; a keyserver that is not the pinned one never sees the token; a
//! refusal and an unreachable keyserver leave nothing behind.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cairn_keys::profiles::Role;
use cairn_keys::Clock;
use cairn_keyserver::serve::Server;
use cairn_keyserver::tokens::{self, TokenState};
use cairn_keyserver::{ca, Keyserver};
use cairn_node::key_agent::{self, AgentError};

struct Running {
    state: PathBuf,
    port: u16,
    fingerprint: [u8; 32],
    _tmp: tempfile::TempDir,
}

fn start() -> Running {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("ks");
    let made = ca::init(&state, "test", cairn_signing::time::now()).unwrap();
    let server = Server::bind(
        Keyserver::open(&state).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        &["127.0.0.1".into()],
    )
    .unwrap();
    let port = server.local_addr().port();
    std::thread::spawn(move || server.run());
    let fingerprint = hex::decode(made.keyserver_fingerprint.strip_prefix("sha256:").unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    Running {
        state,
        port,
        fingerprint,
        _tmp: tmp,
    }
}

fn server(r: &Running) -> key_agent::Server {
    key_agent::Server {
        host: "127.0.0.1".into(),
        port: r.port,
        ca_fingerprint: r.fingerprint,
    }
}

fn openssl(args: &[&str], files: &[&Path]) -> String {
    let out = Command::new("openssl").args(args).args(files).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openssl {args:?} {files:?}: {text}");
    text
}

#[test]
fn a_control_plane_node_enrolls_and_writes_its_certificates() {
    let r = start();
    let ks = Keyserver::open(&r.state).unwrap();
    let (token, _) = tokens::create(
        &ks,
        "cp-1",
        Role::ControlPlane,
        3600,
        "alice",
        cairn_signing::time::now(),
    )
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    let token_file = root.path().join("var/lib/cairn/key-agent/token");
    std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
    std::fs::write(&token_file, format!("{token}\n")).unwrap();

    let got = key_agent::enroll(
        root.path(),
        &key_agent::Enrollment {
            server: &server(&r),
            token: &token.to_string(),
            token_file: Some(&token_file),
            hostname: "cp-1",
            role: Role::ControlPlane,
        },
        Duration::from_secs(20),
        &Clock::system(),
    )
    .unwrap();
    assert_eq!((got.node.as_str(), got.generation, got.profiles.len()), ("cp-1", 1, 6));
    assert!(!token_file.exists(), "the token is removed once used");
    for profile in &got.profiles {
        let dir = root.path().join("var/lib/cairn/pki").join(profile);
        assert_eq!(std::fs::read_link(dir.join("current")).unwrap(), Path::new("gen-1"));
        let cur = dir.join("current");
        let (cert, key, both, bundle) = (
            cur.join("cert.pem"),
            cur.join("key.pem"),
            cur.join("both.pem"),
            cur.join("bundle.pem"),
        );
        openssl(&["verify", "-CAfile"], &[&bundle, &cert]);
        // The key on disk is the certificate's, and both.pem holds the same pair.
        let from_key = openssl(&["pkey", "-pubout", "-in"], &[&key]);
        assert_eq!(
            from_key,
            openssl(&["x509", "-noout", "-pubkey", "-in"], &[&cert]),
            "{profile}"
        );
        assert_eq!(from_key, openssl(&["pkey", "-pubout", "-in"], &[&both]), "{profile}");
        assert_eq!(
            from_key,
            openssl(&["x509", "-noout", "-pubkey", "-in"], &[&both]),
            "{profile}"
        );
        for (f, mode) in [(&key, 0o600), (&both, 0o600), (&cert, 0o644), (&bundle, 0o644)] {
            assert_eq!(
                std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
                mode,
                "{}",
                f.display()
            );
        }
    }
    let tok = tokens::list(&ks).unwrap().remove(0);
    assert!(matches!(tok.state, TokenState::Claimed { .. }));
}

#[test]
fn a_server_without_the_pinned_ca_never_sees_the_token() {
    let r = start();
    let ks = Keyserver::open(&r.state).unwrap();
    let (token, _) = tokens::create(&ks, "w-1", Role::Worker, 3600, "alice", cairn_signing::time::now()).unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut wrong = server(&r);
    wrong.ca_fingerprint[0] ^= 1;
    let e = key_agent::enroll(
        root.path(),
        &key_agent::Enrollment {
            server: &wrong,
            token: &token.to_string(),
            token_file: None,
            hostname: "w-1",
            role: Role::Worker,
        },
        Duration::from_secs(20),
        &Clock::system(),
    )
    .unwrap_err();
    assert!(
        matches!(e, AgentError::Unreachable(_)) && e.to_string().contains("pinned"),
        "{e}"
    );
    assert_eq!(tokens::list(&ks).unwrap()[0].state, TokenState::Issued);
    only_the_enrollment_in_flight(root.path());
    // The audit log never heard of it either.
    assert!(ks.audit_records().unwrap().iter().all(|a| a.action != "claim"));
}

#[test]
fn refusals_and_an_absent_keyserver_leave_nothing_behind() {
    let r = start();
    let ks = Keyserver::open(&r.state).unwrap();
    let (token, _) = tokens::create(&ks, "w-2", Role::Worker, 3600, "alice", cairn_signing::time::now()).unwrap();
    let root = tempfile::tempdir().unwrap();
    let e = key_agent::enroll(
        root.path(),
        &key_agent::Enrollment {
            server: &server(&r),
            token: &token.to_string(),
            token_file: None,
            hostname: "w-2",
            role: Role::ControlPlane,
        },
        Duration::from_secs(20),
        &Clock::system(),
    )
    .unwrap_err();
    match e {
        AgentError::Refused { code, retry, .. } => assert_eq!((code.as_str(), retry), ("role_mismatch", false)),
        other => panic!("{other}"),
    }
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut down = server(&r);
    down.port = closed;
    let e = key_agent::enroll(
        root.path(),
        &key_agent::Enrollment {
            server: &down,
            token: &token.to_string(),
            token_file: None,
            hostname: "w-2",
            role: Role::Worker,
        },
        Duration::from_secs(5),
        &Clock::system(),
    )
    .unwrap_err();
    assert!(matches!(e, AgentError::Unreachable(_)), "{e}");
    only_the_enrollment_in_flight(root.path());
    // And with the right role the token still works.
    key_agent::enroll(
        root.path(),
        &key_agent::Enrollment {
            server: &server(&r),
            token: &token.to_string(),
            token_file: None,
            hostname: "w-2",
            role: Role::Worker,
        },
        Duration::from_secs(20),
        &Clock::system(),
    )
    .unwrap();
}

#[test]
fn apply_writes_the_token_until_the_node_has_enrolled_and_keeps_the_agents_state() {
    let r = start();
    let ks = Keyserver::open(&r.state).unwrap();
    let (token, _) = tokens::create(&ks, "w-3", Role::Worker, 3600, "alice", cairn_signing::time::now()).unwrap();
    let root = tempfile::tempdir().unwrap();
    let saved = root.path().join("var/lib/cairn/node.toml");
    std::fs::create_dir_all(saved.parent().unwrap()).unwrap();
    std::fs::write(
        &saved,
        format!(
            "version = 1\ngeneration = 1\nhostname = \"w-3\"\nrole = \"worker\"\n[key-agent]\nserver = \"https://127.0.0.1:{}\"\nca-fingerprint = \"sha256:{}\"\nbootstrap-token = \"{token}\"\n",
            r.port,
            hex::encode(r.fingerprint)
        ),
    )
    .unwrap();
    let agent_dir = root.path().join("var/lib/cairn/key-agent");
    cairn_node::apply::apply(root.path()).unwrap();
    let token_file = agent_dir.join("token");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), token.to_string());
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The agent enrolls with what apply wrote.
    let config = cairn_node::config::NodeConfig::parse(&std::fs::read_to_string(&saved).unwrap(), "node.toml").unwrap();
    let p = key_agent::run::Agent::new(
        root.path(),
        key_agent::run::Settings::from_config(&config),
        Clock::system(),
    )
    .pass();
    assert!(p.ready && p.lines[0].contains("enrolled w-3 (worker)"), "{p:?}");
    assert!(!token_file.exists());

    // Every later boot applies the same config: the spent token is not written again, and
    // the agent's state stays.
    cairn_node::apply::apply(root.path()).unwrap();
    assert!(!token_file.exists(), "a spent token is not written again");
    assert!(agent_dir.join("state.json").exists() && agent_dir.join("server.toml").exists());
    let status = key_agent::status::status(root.path(), cairn_signing::time::now()).unwrap();
    assert!(
        status.starts_with("key agent: w-3 (worker) enrolled with 127.0.0.1:"),
        "{status}"
    );
    assert!(cairn_node::health::keys_held(root.path(), cairn_signing::time::now())
        .unwrap()
        .starts_with("w-3 holds 4 certificates of generation 1"),);
    // A worker enrolled before its release had etcd-lease certificates: the gate passes
    // and says so, and the agent's next pass asks for it at once.
    let lease_dir = root.path().join("var/lib/cairn/pki/etcd-lease");
    std::fs::remove_dir_all(&lease_dir).unwrap();
    let said = cairn_node::health::keys_held(root.path(), cairn_signing::time::now()).unwrap();
    assert!(
        said.starts_with("w-3 holds 3 certificates of generation 1")
            && said.ends_with("; etcd-lease not issued yet (new in this release; the key agent asks for it now)"),
        "{said}"
    );
    let p = key_agent::run::Agent::new(
        root.path(),
        key_agent::run::Settings::from_config(&config),
        Clock::system(),
    )
    .pass();
    assert!(p.lines[0].contains("renewed 4 certificates of w-3"), "{p:?}");
    assert!(lease_dir.join("current/cert.pem").exists());
    // A broken key fails the gate, naming the file.
    std::fs::write(
        root.path().join("var/lib/cairn/pki/kubelet-serving/current/key.pem"),
        "x",
    )
    .unwrap();
    let e = cairn_node::health::keys_held(root.path(), cairn_signing::time::now()).unwrap_err();
    assert!(e.contains("kubelet-serving"), "{e}");
}

/// No certificate written: only the keys of the enrollment in flight, for the next try to
/// send again.
fn only_the_enrollment_in_flight(root: &std::path::Path) {
    assert!(!root.join("var/lib/cairn/pki").exists(), "no certificate written");
    assert_eq!(
        std::fs::read_dir(root.join("var/lib/cairn/key-agent"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>(),
        ["enrolling.json"]
    );
}
