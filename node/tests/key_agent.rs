//! The key agent's enrollment against a real keyserver on loopback: the files it writes,
//! checked with OpenSSL; a keyserver that is not the pinned one never sees the token; a
//! refusal and an unreachable keyserver leave nothing behind.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cairn_keys::profiles::Role;
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
        &server(&r),
        &token.to_string(),
        Some(&token_file),
        "cp-1",
        Role::ControlPlane,
        Duration::from_secs(20),
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
        &wrong,
        &token.to_string(),
        None,
        "w-1",
        Role::Worker,
        Duration::from_secs(20),
    )
    .unwrap_err();
    assert!(
        matches!(e, AgentError::Unreachable(_)) && e.to_string().contains("pinned"),
        "{e}"
    );
    assert_eq!(tokens::list(&ks).unwrap()[0].state, TokenState::Issued);
    assert!(!root.path().join("var").exists(), "nothing written");
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
        &server(&r),
        &token.to_string(),
        None,
        "w-2",
        Role::ControlPlane,
        Duration::from_secs(20),
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
        &down,
        &token.to_string(),
        None,
        "w-2",
        Role::Worker,
        Duration::from_secs(5),
    )
    .unwrap_err();
    assert!(matches!(e, AgentError::Unreachable(_)), "{e}");
    assert!(!root.path().join("var").exists(), "nothing written");
    // And with the right role the token still works.
    key_agent::enroll(
        root.path(),
        &server(&r),
        &token.to_string(),
        None,
        "w-2",
        Role::Worker,
        Duration::from_secs(20),
    )
    .unwrap();
}
