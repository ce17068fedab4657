//! The fuzz targets' seeds, and deterministic mutations of them, through the fuzz targets'
//! own code (`cairn_node::harness`) on every test run: each fixture the parsers have (good
//! and bad node.toml files, CAIRN, NoCloud and OpenStack drives), cut at many lengths, with
//! bytes flipped and newlines, NULs and quotes put in. A panic or a broken invariant (a
//! validated config that does not render) fails the test; `cargo fuzz` goes further.

use std::fs;
use std::path::{Path, PathBuf};

use cairn_node::harness;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The node.toml fixtures, which live with the crate that parses them.
fn node_config_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../node-config/tests/fixtures")
}

fn files(dir: &Path, pick: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if pick(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The seed and its mutations: cuts, single-byte flips, and hostile bytes put in at spread
/// positions. Deterministic, so a failure names an input that fails again.
fn mutations(seed: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![seed.to_vec()];
    let n = seed.len();
    let spots: Vec<usize> = (0..24).map(|i| i * n / 24).collect();
    for &at in &spots {
        out.push(seed[..at].to_vec());
        if at < n {
            for bit in [0x01, 0x20, 0x80] {
                let mut m = seed.to_vec();
                m[at] ^= bit;
                out.push(m);
            }
        }
        for insert in [&b"\n"[..], b"\0", b"\"", b"\\", b"\r\n[etcd]\n", b"\xff\xfe", b"../"] {
            let mut m = seed[..at].to_vec();
            m.extend_from_slice(insert);
            m.extend_from_slice(&seed[at..]);
            out.push(m);
        }
    }
    out
}

fn run(name: &str, seeds: Vec<(String, Vec<u8>)>, target: fn(&[u8])) -> usize {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let mut count = 0;
    for (seed_name, seed) in seeds {
        for (i, input) in mutations(&seed).into_iter().enumerate() {
            let r = std::panic::catch_unwind(|| target(&input));
            assert!(r.is_ok(), "{name}: {seed_name} mutation {i} panicked");
            count += 1;
        }
    }
    count
}

fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap()
}

#[test]
fn node_toml_and_cairn_drives() {
    let is_toml = |p: &Path| p.extension().is_some_and(|e| e == "toml");
    let mut tomls = files(&fixtures(), &is_toml);
    tomls.extend(files(&node_config_fixtures(), &is_toml));
    assert!(tomls.len() >= 40, "{}", tomls.len());
    let seeds: Vec<(String, Vec<u8>)> = tomls.iter().map(|p| (p.display().to_string(), read(p))).collect();
    let n = run("node_toml", seeds.clone(), harness::node_toml);
    // As the CAIRN drive target sees them: both files present, a 64-byte signature slot.
    let drives: Vec<(String, Vec<u8>)> = seeds
        .into_iter()
        .map(|(name, body)| {
            let mut d = vec![3u8];
            d.extend_from_slice(&[0u8; 64]);
            d.extend_from_slice(&body);
            (name, d)
        })
        .collect();
    let m = run("cairn_drive", drives, harness::cairn_drive);
    assert!(n + m > 10_000, "{n} + {m} inputs");
}

#[test]
fn cloud_drives() {
    let joined = |dir: &Path, names: &[&str]| -> Vec<u8> {
        let mut v = Vec::new();
        for (i, n) in names.iter().enumerate() {
            if i > 0 {
                v.push(0);
            }
            v.extend(fs::read(dir.join(n)).unwrap_or_default());
        }
        v
    };
    let scenarios = |format: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(fixtures().join(format))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        v.sort();
        v
    };
    let nocloud: Vec<(String, Vec<u8>)> = scenarios("nocloud")
        .iter()
        .map(|d| {
            (
                d.display().to_string(),
                joined(d, &["meta-data", "user-data", "network-config"]),
            )
        })
        .collect();
    let config2: Vec<(String, Vec<u8>)> = scenarios("config-2")
        .iter()
        .map(|d| {
            (
                d.display().to_string(),
                joined(
                    d,
                    &["openstack/latest/meta_data.json", "openstack/latest/network_data.json"],
                ),
            )
        })
        .collect();
    run("nocloud_drive", nocloud, harness::nocloud_drive);
    run("config2_drive", config2, harness::config2_drive);
}

#[test]
fn key_agent_answers() {
    let ok = r#"{"node":"cp-1","role":"control-plane","certs":{"identity":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"},"bundles":{},"server_time":1800000000}"#;
    let refused = r#"{"code":"token_used","message":"used","retry":false}"#;
    let peers = r#"{"peers":[{"node":"cp-2","public_key":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=","endpoint":"[2001:db8::2]:51820","allowed_ips":["10.90.0.2/32","fd90::2/128"]}],"server_time":1800000000}"#;
    let seeds: Vec<(String, Vec<u8>)> = [("ok", 200, ok), ("refused", 409, refused), ("peers", 200, peers)]
        .iter()
        .map(|(name, status, body)| {
            let text = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            (name.to_string(), text.into_bytes())
        })
        .collect();
    let n = run("key_agent_answer", seeds, harness::key_agent_answer);
    assert!(n > 300, "{n}");
}
