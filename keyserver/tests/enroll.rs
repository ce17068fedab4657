//! Enrollment with requests made by OpenSSL, as a node's key agent will make them: the
//! certificates verify against their CAs with `openssl verify`, carry the names of the
//! keyserver's record (never those the request asked for), and a request that is wrong in
//! any way leaves the token unused.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

mod common;
use common::run;

use cairn_keys::wire::EnrollRequest;
use cairn_keys::Token;
use cairn_keyserver::tokens::{self, TokenState};
use cairn_keyserver::{ca, enroll, registry, Keyserver, Role};

/// A P-256 key and a request for it that asks for names no node may choose.
fn csr(dir: &Path, name: &str, key_args: &[&str]) -> String {
    let key = dir.join(format!("{name}.key"));
    let req = dir.join(format!("{name}.csr"));
    run(Command::new("openssl")
        .args(["req", "-new", "-nodes", "-subj", "/CN=evil/O=system:masters"])
        .args(["-addext", "subjectAltName=DNS:evil.example,IP:203.0.113.66"])
        .args(key_args)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&req));
    std::fs::read_to_string(req).unwrap()
}

const P256: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

fn csrs(dir: &Path, role: Role) -> BTreeMap<String, String> {
    cairn_keys::profiles::profile_names(role)
        .iter()
        .map(|n| (n.to_string(), csr(dir, n, &P256)))
        .collect()
}

fn setup(dir: &Path) -> Keyserver {
    ca::init(&dir.join("ks"), "test", cairn_signing::time::now()).unwrap();
    Keyserver::open(&dir.join("ks")).unwrap()
}

fn node_toml() -> cairn_node_config::NodeConfig {
    cairn_node_config::NodeConfig::parse(
        r#"version = 1
generation = 1
hostname = "cp-1"
[etcd]
client-urls = ["http://10.90.0.1:2379"]
peer-urls = ["http://10.90.0.1:2380"]
[wireguard]
private-key = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="
address = ["10.90.0.1/24", "fd00:90::1/64"]
"#,
        "node.toml",
    )
    .unwrap()
}

#[test]
fn a_control_plane_node_enrolls_with_the_names_of_its_record() {
    let tmp = tempfile::tempdir().unwrap();
    let ks = setup(tmp.path());
    let now = cairn_signing::time::now();
    let record = registry::record_for(&node_toml());
    registry::register(&ks, &record, "alice", now).unwrap();
    let (token, _) = tokens::create(&ks, "cp-1", Role::ControlPlane, 3600, "alice", now).unwrap();
    let req = EnrollRequest {
        ssh_host_key: None,
        wireguard_key: None,
        token: token.to_string(),
        role: "control-plane".into(),
        csrs: csrs(tmp.path(), Role::ControlPlane),
    };
    let resp = enroll::enroll(&ks, &req, Some("127.0.0.1:5000"), now).unwrap().unwrap();
    assert_eq!((resp.node.as_str(), resp.role), ("cp-1", Role::ControlPlane));
    assert_eq!(resp.certs.len(), 6);
    let expect: [(&str, &str, &str, &[&str]); 6] = [
        ("identity", "keyserver", "CN = cp-1", &["TLS Web Client Authentication"]),
        (
            "etcd-server",
            "etcd-peer",
            "CN = cp-1",
            &[
                "DNS:cp-1, DNS:localhost, IP Address:10.90.0.1, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1",
                "TLS Web Server Authentication, TLS Web Client Authentication",
            ],
        ),
        (
            "etcd-peer",
            "etcd-peer",
            "CN = cp-1",
            &["DNS:cp-1, IP Address:10.90.0.1"],
        ),
        (
            "etcd-client",
            "etcd-client",
            "CN = cairn-node:cp-1",
            &["TLS Web Client Authentication"],
        ),
        (
            "kubelet-client",
            "kubernetes",
            "O = system:nodes, CN = system:node:cp-1",
            &["TLS Web Client Authentication"],
        ),
        (
            "kubelet-serving",
            "kubernetes",
            "CN = system:node:cp-1",
            &[
                "DNS:cp-1, IP Address:10.90.0.1, IP Address:FD00:90:0:0:0:0:0:1",
                "TLS Web Server Authentication",
            ],
        ),
    ];
    for (profile, ca_name, subject, wants) in expect {
        let chain = &resp.certs[profile];
        let leaf = tmp.path().join(format!("{profile}.pem"));
        std::fs::write(&leaf, chain).unwrap();
        let ca_file = tmp.path().join("ks/ca").join(ca_name).join("cert.pem");
        run(Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&ca_file)
            .arg(&leaf));
        // The other CAs do not vouch for it.
        let other = if ca_name == "kubernetes" {
            "etcd-peer"
        } else {
            "kubernetes"
        };
        let out = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(tmp.path().join("ks/ca").join(other).join("cert.pem"))
            .arg(&leaf)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{profile} verified against {other}");
        let text = run(Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&leaf));
        assert!(
            text.contains(&format!("Subject: {subject}")) || text.contains(subject),
            "{profile}: {text}"
        );
        for w in wants {
            assert!(text.contains(w), "{profile}: wanted {w}: {text}");
        }
        assert!(
            !text.contains("evil") && !text.contains("203.0.113.66") && !text.contains("system:masters"),
            "{profile}: {text}"
        );
        assert!(
            text.contains("CA:FALSE") && text.contains("Digital Signature"),
            "{profile}: {text}"
        );
        assert!(!text.contains("Key Encipherment"), "{profile}");
        // The certificate is for the key of the request.
        let key_pub = run(Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(tmp.path().join(format!("{profile}.key"))));
        let cert_pub = run(Command::new("openssl")
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(&leaf));
        assert_eq!(key_pub, cert_pub, "{profile}");
        assert_eq!(resp.bundles[ca_name], std::fs::read_to_string(&ca_file).unwrap());
    }

    // The answer was lost: asking again with the same identity key gets the same answer.
    let again = enroll::enroll(&ks, &req, None, now + 5).unwrap().unwrap();
    assert_eq!(again, resp);
    // Another identity key gets nothing.
    let mut stolen = req.clone();
    stolen.csrs.insert("identity".into(), csr(tmp.path(), "thief", &P256));
    assert_eq!(
        enroll::enroll(&ks, &stolen, None, now + 6).unwrap().unwrap_err().code,
        "token_used"
    );
    let audit = ks.audit_records().unwrap();
    let enrolled = audit.iter().find(|r| r.action == "enroll").unwrap();
    assert_eq!(enrolled.serials.len(), 6);
}

#[test]
fn a_wrong_request_never_uses_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let ks = setup(tmp.path());
    let now = cairn_signing::time::now();
    let (token, _) = tokens::create(&ks, "w-1", Role::Worker, 3600, "alice", now).unwrap();
    let good = EnrollRequest {
        ssh_host_key: None,
        wireguard_key: None,
        token: token.to_string(),
        role: "worker".into(),
        csrs: csrs(tmp.path(), Role::Worker),
    };
    let refused = |req: &EnrollRequest| {
        let r = enroll::enroll(&ks, req, None, now).unwrap().unwrap_err();
        let rec = tokens::list(&ks).unwrap().remove(0);
        assert_eq!(rec.state, TokenState::Issued, "{r}");
        r.code
    };
    let mut r = good.clone();
    r.csrs
        .insert("identity".into(), csr(tmp.path(), "rsa", &["-newkey", "rsa:2048"]));
    assert_eq!(refused(&r), "bad_csr");
    let mut r = good.clone();
    r.csrs
        .insert("identity".into(), csr(tmp.path(), "ed", &["-newkey", "ed25519"]));
    assert_eq!(refused(&r), "bad_csr");
    let mut r = good.clone();
    let pem = r.csrs["identity"].clone();
    // One changed character inside the signed part: the signature no longer holds.
    let at = pem.len() / 2;
    let flipped = if &pem[at..at + 1] == "A" { "B" } else { "A" };
    r.csrs
        .insert("identity".into(), format!("{}{flipped}{}", &pem[..at], &pem[at + 1..]));
    assert_eq!(refused(&r), "bad_csr");
    let mut r = good.clone();
    r.csrs
        .insert("identity".into(), "-----BEGIN CERTIFICATE REQUEST-----\n\0\n".into());
    assert_eq!(refused(&r), "bad_csr");
    let mut r = good.clone();
    r.csrs.insert("identity".into(), "A".repeat(64 * 1024));
    assert_eq!(refused(&r), "bad_csr");
    let mut r = good.clone();
    r.csrs.remove("kubelet-serving");
    assert_eq!(refused(&r), "bad_csr");
    let mut r = good.clone();
    r.csrs.insert("etcd-peer".into(), good.csrs["identity"].clone());
    assert_eq!(refused(&r), "bad_request");
    let mut r = good.clone();
    r.role = "control-plane\n".into();
    assert_eq!(refused(&r), "bad_request");
    let mut r = good.clone();
    r.role = "control-plane".into();
    r.csrs = csrs(tmp.path(), Role::ControlPlane);
    assert_eq!(refused(&r), "role_mismatch");
    let mut r = good.clone();
    // The last character changed (to one it is not: a token ending in X stays valid as "…X").
    let last = &good.token[good.token.len() - 1..];
    let other = if last == "X" { "Y" } else { "X" };
    r.token = format!("{}{other}", &good.token[..good.token.len() - 1]);
    assert_eq!(refused(&r), "token_invalid");
    let mut r = good.clone();
    r.token = Token::generate(&mut rand_core::OsRng).to_string();
    assert_eq!(refused(&r), "token_unknown");
    // And after all that, the right request still works.
    let resp = enroll::enroll(&ks, &good, None, now).unwrap().unwrap();
    assert_eq!(resp.certs.len(), 4);
    // A worker's one etcd certificate: the lease user, from the etcd-client CA, with the
    // etcd servers' CA sent along to check them by (and no server or peer certificate).
    let leaf = tmp.path().join("lease.pem");
    std::fs::write(&leaf, &resp.certs["etcd-lease"]).unwrap();
    let ca = |name: &str| tmp.path().join("ks/ca").join(name).join("cert.pem");
    run(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca("etcd-client"))
        .arg(&leaf));
    let text = run(Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName,extendedKeyUsage",
            "-in",
        ])
        .arg(&leaf));
    assert!(text.contains("subject=CN = cairn-lease\n"), "{text}");
    assert!(
        text.contains("TLS Web Client Authentication") && !text.contains("Server") && !text.contains("Alternative"),
        "{text}"
    );
    assert_eq!(
        resp.bundles["etcd-peer"],
        std::fs::read_to_string(ca("etcd-peer")).unwrap()
    );
    assert!(!resp.certs.contains_key("etcd-client") && !resp.certs.contains_key("etcd-peer"));
}
