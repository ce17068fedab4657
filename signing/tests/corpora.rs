//! The bundle fuzz target's code (`cairn_signing::harness::bundle`) over seeds made here —
//! a real signed bundle, its manifest followed by its payloads, an index — and
//! deterministic mutations of them.

use cairn_signing::bundle::{self, BundleManifest, PAYLOADS};
use cairn_signing::Payload;
use cairn_signing::{harness, PrivateKey};
use sha2::{Digest, Sha256};

fn seeds() -> Vec<Vec<u8>> {
    let key = PrivateKey::from_bytes([7; 32]);
    let parts: [&[u8]; 3] = [&[1u8; 5000], b"tree", b"uki"];
    let m = BundleManifest {
        bundle_format: bundle::FORMAT,
        name: "node".into(),
        version: "0.2.0".into(),
        architecture: "x86-64".into(),
        source_date_epoch: 1,
        root_hash: "ab".repeat(32),
        verity_salt: "cd".repeat(32),
        signing_key: key.public().fingerprint(),
        development_key: false,
        development_build: false,
        payloads: PAYLOADS
            .iter()
            .zip(parts)
            .map(|(n, d)| Payload {
                name: (*n).into(),
                offset: 0,
                size: d.len() as u64,
                sha256: hex::encode(Sha256::digest(d)),
            })
            .collect(),
        next_signing_key: None,
    };
    let mut whole = Vec::new();
    let mut srcs: Vec<&[u8]> = parts.to_vec();
    let mut refs: Vec<&mut dyn std::io::Read> = srcs.iter_mut().map(|s| s as &mut dyn std::io::Read).collect();
    let m = bundle::write(&mut whole, m, &key, &mut refs).unwrap();
    let mut manifest_then_payloads = m.to_bytes();
    manifest_then_payloads.push(0);
    manifest_then_payloads.extend_from_slice(&whole[m.payload("root").offset as usize..]);
    let index = br#"{"index-format":2,"name":"node","latest":"0.2.0","expires":"2030-01-01T00:00:00Z","releases":[{"version":"0.2.0","file":"node_0.2.0.cairn","size":1,"sha256":"00","root-hash":"00"}]}"#.to_vec();
    vec![whole, manifest_then_payloads, index]
}

#[test]
fn bundles_manifests_and_indexes() {
    let mut count = 0;
    for (s, seed) in seeds().into_iter().enumerate() {
        let n = seed.len();
        let mut inputs = vec![seed.clone()];
        for i in 0..64 {
            let at = i * n / 64;
            inputs.push(seed[..at].to_vec());
            let mut m = seed.clone();
            m[at] ^= 0x41;
            inputs.push(m);
            let mut m = seed.clone();
            m.insert(at, b'"');
            inputs.push(m);
        }
        for (i, input) in inputs.iter().enumerate() {
            let r = std::panic::catch_unwind(|| harness::bundle(input));
            assert!(r.is_ok(), "seed {s} mutation {i} panicked");
            count += 1;
        }
    }
    assert!(count > 500, "{count}");
}
