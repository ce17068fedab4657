//! The keyserver's state against the reference tools: CAs as OpenSSL and ssh-keygen read
//! them, tokens claimed once however many ask at the same time, refusals that change
//! nothing, and an audit log whose chain holds.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

mod common;
use common::run;

use cairn_keys::audit::Outcome;
use cairn_keys::Token;
use cairn_keyserver::tokens::{self, Claim, TokenState};
use cairn_keyserver::{ca, Keyserver, KeyserverError, Role};

const NOW: u64 = 1_800_000_000;

fn init(dir: &Path) -> Keyserver {
    ca::init(dir, "test", NOW).unwrap();
    Keyserver::open(dir).unwrap()
}

#[test]
fn init_makes_cas_that_openssl_and_ssh_keygen_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    // Now, for certificates OpenSSL checks against its own clock.
    let made = ca::init(&dir, "prod", cairn_signing::time::now()).unwrap();
    for name in ca::X509 {
        let cert = dir.join("ca").join(name).join("cert.pem");
        let text = run(Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&cert));
        assert!(text.contains("CA:TRUE, pathlen:0"), "{name}: {text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{name}: {text}");
        assert!(
            text.contains("NIST CURVE: P-256") || text.contains("prime256v1"),
            "{name}: {text}"
        );
        assert!(text.contains(&format!("CN = cairn prod {name} CA")), "{name}: {text}");
        // Self-signed and valid now: OpenSSL verifies it against itself.
        run(Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&cert)
            .arg(&cert));
        let key = dir.join("ca").join(name).join("key.pem");
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        run(Command::new("openssl").args(["pkey", "-noout", "-in"]).arg(&key));
    }
    // The fingerprint node.toml pins is OpenSSL's.
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(dir.join("ca/keyserver/cert.pem")));
    let openssl = out.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
    assert_eq!(made.keyserver_fingerprint, format!("sha256:{openssl}"));
    for (name, line) in [("ssh-host", &made.ssh_host_ca), ("ssh-user", &made.ssh_user_ca)] {
        let pubf = dir.join("ca").join(name).join("key.pub");
        assert_eq!(std::fs::read_to_string(&pubf).unwrap().trim(), line.as_str());
        let text = run(Command::new("ssh-keygen").arg("-l").arg("-f").arg(&pubf));
        assert!(
            text.contains("(ED25519)") && text.contains(&format!("cairn-prod-{name}-ca")),
            "{text}"
        );
        let key = dir.join("ca").join(name).join("key.pem");
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        // The private key is PKCS#8 OpenSSL reads, and its public half is the line's.
        let text = run(Command::new("openssl")
            .args(["pkey", "-noout", "-text", "-in"])
            .arg(&key));
        assert!(text.contains("ED25519 Private-Key"), "{text}");
    }
    let ks = Keyserver::open(&dir).unwrap();
    let audit = ks.audit_records().unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "init");
}

#[test]
fn init_never_overwrites_and_one_of_two_racing_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let dir = dir.clone();
            std::thread::spawn(move || ca::init(&dir, "race", NOW).map(|i| i.keyserver_fingerprint))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let won: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert!(matches!(e, KeyserverError::AlreadyInitialized(_)), "{e}");
        }
    }
    let cert = std::fs::read_to_string(dir.join("ca/keyserver/cert.pem")).unwrap();
    assert_eq!(
        &ca::fingerprint(&cert).unwrap(),
        won[0],
        "the winner's CA is the one kept"
    );
    let e = ca::init(&dir, "race", NOW).unwrap_err();
    assert!(e.to_string().contains("never overwritten"), "{e}");
    for bad in ["", "a b", "../x", "x\ny"] {
        let e = ca::init(&tmp.path().join("other"), bad, NOW).unwrap_err();
        assert!(e.to_string().contains("not a cluster name"), "{bad:?}: {e}");
    }
    let e = Keyserver::open(&tmp.path().join("nothing")).unwrap_err();
    assert!(e.to_string().contains("cairn keyserver init"), "{e}");
}

fn spki(n: u8) -> [u8; 32] {
    [n; 32]
}

#[test]
fn a_token_is_claimed_once_by_one_key() {
    let tmp = tempfile::tempdir().unwrap();
    let ks = init(tmp.path());
    let (token, record) = tokens::create(&ks, "cp-1", Role::ControlPlane, 3600, "alice", NOW).unwrap();
    assert_eq!(record.state, TokenState::Issued);
    let file = tmp.path().join("tokens").join(format!("{}.json", token.id()));
    let stored = std::fs::read_to_string(&file).unwrap();
    let text = token.to_string();
    assert!(!stored.contains(&text[15..41]), "the secret is not stored: {stored}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(tokens::list(&ks).unwrap(), vec![record]);

    let first = tokens::claim(
        &ks,
        &token,
        Role::ControlPlane,
        &spki(1),
        Some("192.0.2.7:4000"),
        NOW + 10,
    )
    .unwrap();
    assert_eq!(
        first,
        Ok(Claim::First {
            node: "cp-1".into(),
            role: Role::ControlPlane
        })
    );
    // Its answer was lost: the same key asks again and is answered again.
    let again = tokens::claim(&ks, &token, Role::ControlPlane, &spki(1), None, NOW + 20).unwrap();
    assert!(matches!(again, Ok(Claim::Again { .. })), "{again:?}");
    // Another key gets nothing, and the log says so loudly.
    let other = tokens::claim(&ks, &token, Role::ControlPlane, &spki(2), None, NOW + 30).unwrap();
    assert_eq!(other.unwrap_err().code, "token_used");
    // After the grace, not even the same key.
    let late = tokens::claim(&ks, &token, Role::ControlPlane, &spki(1), None, NOW + 3600 + 16 * 60).unwrap();
    assert_eq!(late.unwrap_err().code, "token_used");

    let audit = ks.audit_records().unwrap();
    let claims: Vec<(Outcome, Option<&str>)> = audit
        .iter()
        .filter(|r| r.action == "claim")
        .map(|r| (r.result, r.code.as_deref()))
        .collect();
    assert_eq!(
        claims,
        [
            (Outcome::Ok, None),
            (Outcome::Ok, Some("again")),
            (Outcome::Alert, Some("token_used")),
            (Outcome::Alert, Some("token_used"))
        ]
    );
    assert_eq!(audit[1].client, None);
    assert_eq!(audit[2].client.as_deref(), Some("192.0.2.7:4000"));
    assert!(audit
        .iter()
        .all(|r| !serde_json::to_string(r).unwrap().contains(&text[15..41])));
}

#[test]
fn refusals_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ks = init(tmp.path());
    let (token, _) = tokens::create(&ks, "w-1", Role::Worker, 3600, "alice", NOW).unwrap();
    let file = tmp.path().join("tokens").join(format!("{}.json", token.id()));
    let before = std::fs::read(&file).unwrap();
    let refused = |t: &Token, role: Role, now: u64| {
        let r = tokens::claim(&ks, t, role, &spki(9), None, now).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), before, "the record is unchanged");
        r.unwrap_err().code
    };
    // The right id with another secret: a forgery.
    let text = token.to_string();
    let forged_secret = if &text[15..16] == "A" { "B" } else { "A" };
    let forged_text = format!("{}{}{}", &text[..15], forged_secret, &text[16..41]);
    let forged = Token::parse(&format!("{forged_text}-{}", check_of(&forged_text))).unwrap();
    assert_eq!(forged.id(), token.id());
    assert_eq!(refused(&forged, Role::Worker, NOW), "token_invalid");
    assert_eq!(refused(&token, Role::ControlPlane, NOW), "role_mismatch");
    assert_eq!(refused(&token, Role::Worker, NOW + 3600 + 121), "token_expired");
    let stranger = Token::generate(&mut rand_core::OsRng);
    assert_eq!(refused(&stranger, Role::Worker, NOW), "token_unknown");
    // Revoked before use: refused, and the token cannot be claimed after.
    tokens::revoke(&ks, &token.id().to_lowercase(), "bob", NOW + 5).unwrap();
    let r = tokens::claim(&ks, &token, Role::Worker, &spki(9), None, NOW + 6).unwrap();
    assert_eq!(r.unwrap_err().code, "token_revoked");
    let audit = ks.audit_records().unwrap();
    let forged_line = audit
        .iter()
        .find(|r| r.code.as_deref() == Some("token_invalid"))
        .unwrap();
    assert_eq!(forged_line.result, Outcome::Alert);
    // A used token cannot be revoked; an unknown id is named.
    let (t2, _) = tokens::create(&ks, "w-2", Role::Worker, 3600, "alice", NOW).unwrap();
    tokens::claim(&ks, &t2, Role::Worker, &spki(3), None, NOW)
        .unwrap()
        .unwrap();
    assert!(tokens::revoke(&ks, t2.id(), "bob", NOW)
        .unwrap_err()
        .to_string()
        .contains("revoke the node"));
    for bad in ["NOSUCHTOKN", "../../etc", "", "A\nB"] {
        assert!(
            tokens::revoke(&ks, bad, "bob", NOW)
                .unwrap_err()
                .to_string()
                .contains("no token"),
            "{bad:?}"
        );
    }
}

/// The check characters of `ck1.<id>.<secret>` (as cairn_keys computes them), for forging a
/// well-formed token with a wrong secret.
fn check_of(body: &str) -> String {
    use sha2::{Digest, Sha256};
    const A: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let d = Sha256::digest(body.as_bytes());
    let bits = (u32::from(d[0]) << 16 | u32::from(d[1]) << 8 | u32::from(d[2])) >> 4;
    (0..4)
        .map(|i| A[((bits >> (5 * (3 - i))) & 31) as usize] as char)
        .collect()
}

#[test]
fn ten_nodes_racing_for_one_token_one_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let ks = init(tmp.path());
    let (token, _) = tokens::create(&ks, "cp-2", Role::ControlPlane, 3600, "alice", NOW).unwrap();
    let handles: Vec<_> = (0..10u8)
        .map(|n| {
            let (dir, token) = (tmp.path().to_owned(), token.clone());
            std::thread::spawn(move || {
                let ks = Keyserver::open(&dir).unwrap();
                tokens::claim(&ks, &token, Role::ControlPlane, &spki(n), None, NOW + 1).unwrap()
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let firsts = results.iter().filter(|r| matches!(r, Ok(Claim::First { .. }))).count();
    let used = results
        .iter()
        .filter(|r| r.as_ref().is_err_and(|e| e.code == "token_used"))
        .count();
    assert_eq!((firsts, used), (1, 9), "{results:?}");
    // Twelve lines (init, create and ten claims), still one chain.
    assert_eq!(ks.audit_records().unwrap().len(), 12);
}

#[test]
fn bad_requests_to_create_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ks = init(tmp.path());
    for node in ["", "../etc", "a/b", "cp-1\n", "cp\0", "-x"] {
        let e = tokens::create(&ks, node, Role::Worker, 3600, "alice", NOW).unwrap_err();
        assert!(e.to_string().contains("not a node name"), "{node:?}: {e}");
    }
    for ttl in [0, 59, 31 * 86_400] {
        let e = tokens::create(&ks, "n", Role::Worker, ttl, "alice", NOW).unwrap_err();
        assert!(e.to_string().contains("a minute to 30 days"), "{ttl}: {e}");
    }
    assert!(tokens::list(&ks).unwrap().is_empty());
    assert!(cairn_keyserver::parse_role("admin").is_err());
}

#[test]
fn a_tampered_audit_log_stops_every_decision() {
    let tmp = tempfile::tempdir().unwrap();
    let ks = init(tmp.path());
    tokens::create(&ks, "n1", Role::Worker, 3600, "alice", NOW).unwrap();
    let head = tmp.path().join("audit/admin.head");
    let head_after_n1 = std::fs::read(&head).unwrap();
    tokens::create(&ks, "n2", Role::Worker, 3600, "alice", NOW).unwrap();
    let head_after_n2 = std::fs::read(&head).unwrap();
    // The head is not synced with every line, so a crash can leave it behind the log:
    // that is not tampering, as long as it points into the chain.
    std::fs::write(&head, &head_after_n1).unwrap();
    assert_eq!(ks.audit_records().unwrap().len(), 3);
    std::fs::write(
        &head,
        r#"{"lines":0,"last":"0000000000000000000000000000000000000000000000000000000000000000"}"#,
    )
    .unwrap();
    assert_eq!(ks.audit_records().unwrap().len(), 3);
    // A head whose line is not in this chain is.
    let forged = String::from_utf8(head_after_n1.clone())
        .unwrap()
        .replacen("\"lines\":2", "\"lines\":3", 1);
    std::fs::write(&head, forged).unwrap();
    let e = ks.audit_records().unwrap_err();
    assert!(e.to_string().contains("audit log line 3"), "{e}");
    std::fs::write(&head, &head_after_n2).unwrap();
    let log = tmp.path().join("audit/admin.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let refused = |changed: &str, line: usize| {
        std::fs::write(&log, changed).unwrap();
        let e = tokens::create(&ks, "n3", Role::Worker, 3600, "alice", NOW).unwrap_err();
        assert!(e.to_string().contains(&format!("audit log line {line}")), "{e}");
        assert!(e.to_string().contains("move it aside"), "{e}");
        assert_eq!(tokens::list(&ks).unwrap().len(), 2, "nothing was decided");
    };
    // A line in the middle: the next line no longer follows it; also when the file keeps
    // its size (this process had checked the log before, and must notice it changed).
    refused(&text.replacen("alice", "mallory", 1), 3);
    refused(&text.replacen("alice", "alicf", 1), 3);
    // The last line, and a log cut short: the head file says where it ended.
    let last_changed = format!(
        "{}{}",
        &text[..text.rfind("alice").unwrap()],
        &text[text.rfind("alice").unwrap()..].replacen("alice", "mallory", 1)
    );
    refused(&last_changed, 3);
    let lines: Vec<&str> = text.lines().collect();
    refused(&format!("{}\n{}\n", lines[0], lines[1]), 2);
    // Put back as it was, the log is whole again.
    std::fs::write(&log, &text).unwrap();
    tokens::create(&ks, "n3", Role::Worker, 3600, "alice", NOW).unwrap();
    assert_eq!(ks.audit_records().unwrap().len(), 4);
}
