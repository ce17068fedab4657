//! The keyserver over HTTPS on loopback, with curl as the client: the serving certificate
//! checks against the keyserver CA (and nothing else), enrollment works end to end, bad
//! requests get JSON errors with the right status, and ten clients racing for one token
//! leave exactly one enrolled.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cairn_keys::wire::{EnrollRequest, EnrollResponse, ErrorResponse};
use cairn_keyserver::serve::Server;
use cairn_keyserver::{ca, tokens, Keyserver, Role};

fn csr(dir: &Path, name: &str) -> String {
    let key = dir.join(format!("{name}.key"));
    let req = dir.join(format!("{name}.csr"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-nodes",
            "-subj",
            "/CN=x",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&req)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read_to_string(req).unwrap()
}

struct Running {
    url: String,
    ca: PathBuf,
    _tmp: tempfile::TempDir,
    state: PathBuf,
}

fn start() -> Running {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("ks");
    ca::init(&state, "test", cairn_signing::time::now()).unwrap();
    let ks = Keyserver::open(&state).unwrap();
    let server = Server::bind(
        ks,
        "127.0.0.1:0".parse().unwrap(),
        &["127.0.0.1".into(), "keys.test".into()],
    )
    .unwrap();
    let url = format!("https://127.0.0.1:{}", server.local_addr().port());
    std::thread::spawn(move || server.run());
    Running {
        url,
        ca: state.join("ca/keyserver/cert.pem"),
        state,
        _tmp: tmp,
    }
}

fn curl(r: &Running, args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&r.ca)
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap()
}

/// Body and status of a curl call.
fn reply(o: &Output) -> (String, u16) {
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (body.to_string(), code.trim().parse().unwrap_or(0))
}

fn post(r: &Running, path: &str, body: &str) -> (String, u16) {
    let file = r
        .state
        .join(format!("body-{}", rand_core::RngCore::next_u64(&mut rand_core::OsRng)));
    std::fs::write(&file, body).unwrap();
    let o = curl(
        r,
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{}{path}", r.url),
        ],
    );
    if o.stdout.is_empty() {
        eprintln!("curl: {}", String::from_utf8_lossy(&o.stderr));
    }
    reply(&o)
}

#[test]
fn curl_trusts_the_keyserver_only_through_its_ca_and_enrolls() {
    let r = start();
    let o = curl(&r, &[&format!("{}/healthz", r.url)]);
    assert_eq!(
        reply(&o),
        ("ok\n".to_string(), 200),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Without the pinned CA the server is not trusted.
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .arg(format!("{}/healthz", r.url))
        .output()
        .unwrap();
    assert!(!o.status.success());
    // The certificate names what --name said, and curl checks the name.
    let o = curl(
        &r,
        &[
            "--resolve",
            &format!("keys.test:{}:127.0.0.1", &r.url[r.url.rfind(':').unwrap() + 1..]),
            &format!("https://keys.test:{}/healthz", &r.url[r.url.rfind(':').unwrap() + 1..]),
        ],
    );
    assert_eq!(reply(&o).1, 200, "{}", String::from_utf8_lossy(&o.stderr));
    let o = curl(
        &r,
        &[
            "--resolve",
            &format!("other.test:{}:127.0.0.1", &r.url[r.url.rfind(':').unwrap() + 1..]),
            &format!("https://other.test:{}/healthz", &r.url[r.url.rfind(':').unwrap() + 1..]),
        ],
    );
    assert!(!o.status.success(), "a name the certificate does not carry");

    let (body, code) = reply(&curl(&r, &[&format!("{}/v1/ca", r.url)]));
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["bundles"].as_object().unwrap().len(), 4);

    let ks = Keyserver::open(&r.state).unwrap();
    let (token, _) = tokens::create(&ks, "w-1", Role::Worker, 3600, "alice", cairn_signing::time::now()).unwrap();
    let csrs: BTreeMap<String, String> = cairn_keys::profiles::profile_names(Role::Worker)
        .iter()
        .map(|n| (n.to_string(), csr(&r.state, n)))
        .collect();
    let req = EnrollRequest {
        ssh_host_key: None,
        wireguard_key: None,
        token: token.to_string(),
        role: "worker".into(),
        csrs,
    };
    let (body, code) = post(&r, "/v1/enroll", &serde_json::to_string(&req).unwrap());
    assert_eq!(code, 200, "{body}");
    let resp: EnrollResponse = serde_json::from_str(&body).unwrap();
    assert_eq!((resp.node.as_str(), resp.certs.len()), ("w-1", 4));
    // The audit log knows where the request came from.
    let audit = ks.audit_records().unwrap();
    assert!(audit
        .iter()
        .any(|a| a.action == "enroll" && a.client.as_deref().is_some_and(|c| c.starts_with("127.0.0.1:"))));
}

#[test]
fn bad_requests_get_json_errors() {
    let r = start();
    let err = |body: &str| -> ErrorResponse { serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}")) };
    let (body, code) = post(&r, "/v1/enroll", "{not json");
    assert_eq!((code, err(&body).code.as_str()), (400, "bad_request"));
    let (body, code) = post(&r, "/v1/enroll", r#"{"token":"x","role":"worker","csrs":{},"extra":1}"#);
    assert_eq!(
        (code, err(&body).code.as_str()),
        (400, "bad_request"),
        "unknown fields are refused"
    );
    let (body, code) = post(&r, "/v1/enroll", r#"{"token":"ck1.nope","role":"worker","csrs":{}}"#);
    assert_eq!((code, err(&body).code.as_str()), (401, "token_invalid"));
    let big = format!(
        r#"{{"token":"{}","role":"worker","csrs":{{}}}}"#,
        "A".repeat(300 * 1024)
    );
    let (body, code) = post(&r, "/v1/enroll", &big);
    assert_eq!((code, err(&body).code.as_str()), (413, "bad_request"));
    let (body, code) = reply(&curl(&r, &[&format!("{}/v1/enroll", r.url)]));
    assert_eq!((code, err(&body).code.as_str()), (405, "bad_request"));
    let (body, code) = reply(&curl(&r, &[&format!("{}/../../etc/passwd", r.url), "--path-as-is"]));
    assert_eq!((code, err(&body).code.as_str()), (404, "bad_request"));
    let (_, code) = reply(&curl(
        &r,
        &[
            "-H",
            &format!("X-Big: {}", "a".repeat(20 * 1024)),
            &format!("{}/healthz", r.url),
        ],
    ));
    assert_eq!(code, 413);
    // Still serving after all that.
    assert_eq!(reply(&curl(&r, &[&format!("{}/healthz", r.url)])).1, 200);
}

#[test]
fn ten_clients_racing_for_one_token_one_enrolls() {
    let r = start();
    let ks = Keyserver::open(&r.state).unwrap();
    let (token, _) = tokens::create(&ks, "w-9", Role::Worker, 3600, "alice", cairn_signing::time::now()).unwrap();
    let bodies: Vec<PathBuf> = (0..10)
        .map(|i| {
            let csrs: BTreeMap<String, String> = cairn_keys::profiles::profile_names(Role::Worker)
                .iter()
                .map(|n| (n.to_string(), csr(&r.state, &format!("{i}-{n}"))))
                .collect();
            let req = EnrollRequest {
                ssh_host_key: None,
                wireguard_key: None,
                token: token.to_string(),
                role: "worker".into(),
                csrs,
            };
            let f = r.state.join(format!("race-{i}.json"));
            std::fs::write(&f, serde_json::to_string(&req).unwrap()).unwrap();
            f
        })
        .collect();
    let children: Vec<_> = bodies
        .iter()
        .map(|f| {
            Command::new("curl")
                .args(["-sS", "--max-time", "30", "--cacert"])
                .arg(&r.ca)
                .args(["-o", "/dev/null", "-w", "%{http_code}", "--data-binary"])
                .arg(format!("@{}", f.display()))
                .arg(format!("{}/v1/enroll", r.url))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut codes: Vec<String> = children
        .into_iter()
        .map(|c| String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).into_owned())
        .collect();
    codes.sort();
    let want: Vec<String> = std::iter::once("200").chain(["409"; 9]).map(String::from).collect();
    assert_eq!(codes, want);
}

/// The fuzz target's body on seeds and mutations of them, on every test run.
#[test]
fn request_parsing_survives_mutations() {
    let body = r#"{"token":"ck1.6QZ4B2K9TD.VX3Q7M2K4P8R1C6J9W5T2N7H3F-4JPG","role":"worker","csrs":{"identity":"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"}}"#;
    let seed = format!(
        "POST /v1/enroll HTTP/1.1\r\nHost: k\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let seed = seed.as_bytes();
    let mut n = 0;
    for cut in 0..=seed.len() {
        cairn_keyserver::serve::harness_request(&seed[..cut]);
        n += 1;
    }
    for i in 0..seed.len() {
        for b in [b'\n', b'\r', 0, b'"', b'{', b'9', seed[i] ^ 0x20] {
            let mut m = seed.to_vec();
            m[i] = b;
            cairn_keyserver::serve::harness_request(&m);
            n += 1;
        }
    }
    assert!(n > 1500, "{n}");
}

#[test]
fn serving_names_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("ks");
    ca::init(&state, "test", cairn_signing::time::now()).unwrap();
    for bad in [
        vec![],
        vec!["a\nb".to_string()],
        vec!["../x".into()],
        vec!["".into()],
        vec!["x\0".into()],
        vec!["a b".into()],
    ] {
        let e = Server::bind(Keyserver::open(&state).unwrap(), "127.0.0.1:0".parse().unwrap(), &bad)
            .err()
            .unwrap_or_else(|| panic!("{bad:?} was taken"));
        assert!(e.to_string().contains("hint:"), "{bad:?}: {e}");
    }
}

#[test]
fn renewal_needs_the_identity_certificate_as_the_client_certificate() {
    let r = start();
    let ks = Keyserver::open(&r.state).unwrap();
    let (token, _) = tokens::create(&ks, "w-9", Role::Worker, 3600, "alice", cairn_signing::time::now()).unwrap();
    let names = cairn_keys::profiles::profile_names(Role::Worker);
    let req = EnrollRequest {
        ssh_host_key: None,
        wireguard_key: None,
        token: token.to_string(),
        role: "worker".into(),
        csrs: names.iter().map(|n| (n.to_string(), csr(&r.state, n))).collect(),
    };
    let (body, code) = post(&r, "/v1/enroll", &serde_json::to_string(&req).unwrap());
    assert_eq!(code, 200, "{body}");
    let resp: EnrollResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(resp.generation, 1);
    for &n in &names {
        std::fs::write(r.state.join(format!("{n}.crt")), &resp.certs[n]).unwrap();
    }
    // The renewal request: new keys (csr() writes each over the old one).
    let keep = |n: &str| std::fs::copy(r.state.join(format!("{n}.key")), r.state.join(format!("{n}.old.key"))).unwrap();
    names.iter().for_each(|n| _ = keep(n));
    let renew = cairn_keys::wire::RenewRequest {
        ssh_host_key: None,
        wireguard_key: None,
        generation: 1,
        csrs: names.iter().map(|n| (n.to_string(), csr(&r.state, n))).collect(),
    };
    let body_file = r.state.join("renew.json");
    std::fs::write(&body_file, serde_json::to_string(&renew).unwrap()).unwrap();
    let renew_with = |cert: Option<&str>| {
        let mut args: Vec<String> = vec![
            "-H".into(),
            "Content-Type: application/json".into(),
            "--data-binary".into(),
            format!("@{}", body_file.display()),
        ];
        if let Some(n) = cert {
            args.extend([
                "--cert".into(),
                r.state.join(format!("{n}.crt")).display().to_string(),
                "--key".into(),
                r.state.join(format!("{n}.old.key")).display().to_string(),
            ]);
        }
        args.push(format!("{}/v1/renew", r.url));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        reply(&curl(&r, &args))
    };
    let err = |body: &str| -> ErrorResponse { serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}")) };

    // No client certificate: told what renewal needs.
    let (body, code) = renew_with(None);
    assert_eq!((code, err(&body).code.as_str()), (401, "not_identified"));
    // A certificate of another CA (the Kubernetes one): the handshake itself is refused.
    let (body, code) = renew_with(Some("kubelet-client"));
    assert_eq!(code, 0, "{body}");
    // The identity: new certificates, generation 2.
    let (body, code) = renew_with(Some("identity"));
    assert_eq!(code, 200, "{body}");
    let renewed: EnrollResponse = serde_json::from_str(&body).unwrap();
    assert_eq!((renewed.generation, renewed.certs.len()), (2, 4));
    assert_ne!(renewed.certs["identity"], resp.certs["identity"]);
    // The same request again from the same identity: the answer it already got.
    let (body, code) = renew_with(Some("identity"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<EnrollResponse>(&body).unwrap(), renewed);
    let audit = ks.audit_records().unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.action == "renew")
            .map(|a| a.code.as_deref())
            .collect::<Vec<_>>(),
        [None, Some("again")]
    );
}
