//! Renewal throughput on loopback: the keyserver in a child process pinned to one core
//! (`taskset -c 1`), client threads with fresh TLS 1.3 connections, each showing the node's
//! current identity certificate and asking for its three worker certificates and an SSH
//! host certificate with new keys (made before the clock starts). Every answer and audit
//! line is fsynced, as in production.
//!
//! `cargo bench -p cairn-keyserver --bench renew [-- NODES ROUNDS]` (default 50 nodes, 10
//! rounds). Prints renewals per second of wall time, and per second of the server's CPU
//! time (its user + system time from /proc): the second is "renewals per second on one
//! core". Goal (shared/design/keys.md §6): ≥ 500 per second on one core.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use cairn_keys::profiles::Role;
use cairn_keys::wire::{EnrollRequest, EnrollResponse, RenewRequest};
use cairn_keyserver::{ca, enroll, tokens, Keyserver};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// New keys and the requests for them, by profile.
type Round = (BTreeMap<String, KeyPair>, BTreeMap<String, String>);

fn keys_and_csrs() -> Round {
    let mut keys = BTreeMap::new();
    let mut csrs = BTreeMap::new();
    for p in cairn_keys::profiles::profile_names(Role::Worker) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        csrs.insert(p.to_string(), csr);
        keys.insert(p.to_string(), key);
    }
    (keys, csrs)
}

/// CPU seconds (user, system) of process `pid`.
fn cpu_secs(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (
        f[11].parse::<f64>().unwrap() / 100.0,
        f[12].parse::<f64>().unwrap() / 100.0,
    )
}

struct Node {
    generation: u64,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.first().map(String::as_str) == Some("--serve") {
        let ks = Keyserver::open(std::path::Path::new(&args[1])).unwrap();
        let server = cairn_keyserver::serve::Server::bind(ks, args[2].parse().unwrap(), &["127.0.0.1".into()]).unwrap();
        println!("{}", server.local_addr());
        server.run();
    }
    let nodes: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(50);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("ks");
    ca::init(&state, "bench", cairn_signing::time::now()).unwrap();
    let ks = Keyserver::open(&state).unwrap();
    let host_key = cairn_keyserver::ca::ssh_public_line(cairn_signing::PrivateKey::generate().public().as_bytes(), "h");

    // Every node enrolled, with its identity for the first renewal.
    let mut fleet = Vec::new();
    for i in 0..nodes {
        let now = cairn_signing::time::now();
        let (token, _) = tokens::create(&ks, &format!("w-{i}"), Role::Worker, 3600, "bench", now).unwrap();
        let (keys, csrs) = keys_and_csrs();
        let req = EnrollRequest {
            token: token.to_string(),
            role: "worker".into(),
            csrs,
            ssh_host_key: Some(host_key.clone()),
            wireguard_key: None,
        };
        let resp = enroll::enroll(&ks, &req, None, now).unwrap().unwrap();
        fleet.push(node_from(&resp, &keys));
    }
    // Every request, made ahead.
    let work: Vec<Vec<Round>> = (0..nodes)
        .map(|_| (0..rounds).map(|_| keys_and_csrs()).collect())
        .collect();

    // The server on one core (util-linux's taskset).
    let mut child = std::process::Command::new("taskset")
        .args(["-c", "1"])
        .arg(std::env::current_exe().unwrap())
        .args(["--serve", &state.display().to_string(), "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = child.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    while out.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0] as char);
    }
    let addr: std::net::SocketAddr = line.trim().parse().unwrap();
    let ca_pem = std::fs::read_to_string(state.join("ca/keyserver/cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca::pem_der(&ca_pem).unwrap())).unwrap();
    let roots = Arc::new(roots);

    let threads = 4;
    let cpu_before = cpu_secs(child.id());
    let started = Instant::now();
    let mut handles = Vec::new();
    let per = nodes.div_ceil(threads);
    let mut fleet_iter = fleet.into_iter().zip(work).collect::<Vec<_>>();
    while !fleet_iter.is_empty() {
        let batch: Vec<_> = fleet_iter.drain(..per.min(fleet_iter.len())).collect();
        let roots = roots.clone();
        let host_key = host_key.clone();
        handles.push(std::thread::spawn(move || {
            let mut ms = Vec::new();
            let mut batch = batch;
            for round in 0..rounds {
                for (node, work) in batch.iter_mut() {
                    let (keys, csrs) = &work[round];
                    let body = serde_json::to_string(&RenewRequest {
                        generation: node.generation,
                        csrs: csrs.clone(),
                        ssh_host_key: Some(host_key.clone()),
                        wireguard_key: None,
                    })
                    .unwrap();
                    let t = Instant::now();
                    let resp = renew(addr, &roots, node, &body);
                    ms.push(t.elapsed().as_secs_f64() * 1000.0);
                    *node = node_from(&resp, keys);
                }
            }
            ms
        }));
    }
    let mut ms: Vec<f64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let wall = started.elapsed().as_secs_f64();
    let cpu_after = cpu_secs(child.id());
    let (user, sys) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    let cpu = user + sys;
    let _ = child.kill();
    let _ = child.wait();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = ms.len();
    println!("renew over HTTPS on loopback: {nodes} worker nodes x {rounds} rounds, {threads} client threads, server pinned to one core, fsync on");
    println!(
        "  {n} renewals of 3 certificates + an SSH host certificate  p50 {:.2} ms  p99 {:.2} ms  {:.0} renewals/s wall\n  server CPU {cpu:.2} s (user {user:.2}, system {sys:.2}): {:.0} renewals per CPU-second",
        ms[n / 2],
        ms[(n - 1) * 99 / 100],
        n as f64 / wall,
        n as f64 / cpu
    );
    let lines = ks.audit_records().unwrap().len();
    println!("  audit log: {lines} lines, chain intact");
}

fn node_from(resp: &EnrollResponse, keys: &BTreeMap<String, KeyPair>) -> Node {
    let chain = cairn_keys::pem::blocks(&resp.certs["identity"], "CERTIFICATE")
        .unwrap()
        .into_iter()
        .map(|b| CertificateDer::from(b.der))
        .collect();
    Node {
        generation: resp.generation,
        chain,
        key: keys["identity"].serialize_der(),
    }
}

fn renew(addr: std::net::SocketAddr, roots: &Arc<rustls::RootCertStore>, node: &Node, body: &str) -> EnrollResponse {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(
            node.chain.clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(node.key.clone())),
        )
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(tls), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    let req = format!(
        "POST /v1/renew HTTP/1.1\r\nHost: keys\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let (head, json) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    serde_json::from_str(json).unwrap()
}
