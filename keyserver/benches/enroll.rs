//! Enrollment latency and throughput on loopback: a keyserver in this process, clients
//! with fresh TLS 1.3 connections (rustls, the keyserver CA pinned), requests made with
//! in-process P-256 keys, the state on disk with every record and audit line fsynced.
//!
//! `cargo bench -p cairn-keyserver --bench enroll [-- N]` (N enrollments per role, default
//! 200). Goals (shared/design/keys.md §6): p50 ≤ 10 ms, p99 ≤ 50 ms.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use cairn_keys::profiles::Role;
use cairn_keys::wire::EnrollRequest;
use cairn_keyserver::serve::Server;
use cairn_keyserver::{ca, tokens, Keyserver};
use rcgen::{CertificateParams, KeyPair};

fn csr() -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

fn post(addr: std::net::SocketAddr, tls: &Arc<rustls::ClientConfig>, body: &str) -> (u16, usize) {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(tls.clone(), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    let req = format!(
        "POST /v1/enroll HTTP/1.1\r\nHost: keys\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.len())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(200);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("ks");
    ca::init(&state, "bench", cairn_signing::time::now()).unwrap();
    let server = Server::bind(
        Keyserver::open(&state).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        &["127.0.0.1".into()],
    )
    .unwrap();
    let addr = server.local_addr();
    std::thread::spawn(move || server.run());

    let ca_pem = std::fs::read_to_string(state.join("ca/keyserver/cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca::pem_der(&ca_pem).unwrap()))
        .unwrap();
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );

    let ks = Keyserver::open(&state).unwrap();
    println!("enroll over HTTPS on loopback, {n} per role, fresh TLS each, fsync on");
    for (role, profiles) in [
        (Role::Worker, &cairn_keys::profiles::profile_names(Role::Worker)[..]),
        (
            Role::ControlPlane,
            &cairn_keys::profiles::profile_names(Role::ControlPlane)[..],
        ),
    ] {
        let bodies: Vec<String> = (0..n)
            .map(|i| {
                let (token, _) = tokens::create(
                    &ks,
                    &format!("{}-{i}", role.as_str()),
                    role,
                    3600,
                    "bench",
                    cairn_signing::time::now(),
                )
                .unwrap();
                let csrs: BTreeMap<String, String> = profiles.iter().map(|p| (p.to_string(), csr())).collect();
                serde_json::to_string(&EnrollRequest {
                    ssh_host_key: None,
                    wireguard_key: None,
                    token: token.to_string(),
                    role: role.as_str().into(),
                    csrs,
                })
                .unwrap()
            })
            .collect();
        let started = Instant::now();
        let mut ms: Vec<f64> = Vec::with_capacity(n);
        let mut bytes = 0;
        for b in &bodies {
            let t = Instant::now();
            let (status, len) = post(addr, &tls, b);
            assert_eq!(status, 200);
            bytes += len;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let total = started.elapsed().as_secs_f64();
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "  {:<13} {} certificates  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms  {:>6.1} enrollments/s  response {} B",
            role.as_str(),
            profiles.len(),
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            ms[ms.len() - 1],
            n as f64 / total,
            bytes / n
        );
    }
    let lines = ks.audit_records().unwrap().len();
    println!("  audit log: {lines} lines, chain intact");
}
