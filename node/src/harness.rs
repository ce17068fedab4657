//! The bodies of the fuzz targets (`fuzz/`), shared with the corpus tests
//! (`tests/corpora.rs`), which run the seeds and deterministic mutations of them through
//! the same code on every test run. Each takes any bytes and must return without a panic;
//! each checks the invariants a fuzzer should hold the parsers to.

use crate::drive::{self, DriveFiles, Format};

/// node.toml from a config drive. Whatever validates must render: the renderers' refusals
/// (the second wall) never reject what validation (the first) let through.
pub fn node_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = crate::config::NodeConfig::parse(text, "node.toml") {
            if let Err(e) = crate::render::plan(&c, text) {
                panic!("a validated config does not render: {e}\n{text}");
            }
        }
    }
}

/// A whole CAIRN drive: the first byte picks which files exist, the next 64 bytes (at
/// most) are node.toml.sig and the rest node.toml; parsed with and without an image key.
pub fn cairn_drive(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let cut = rest.len().min(64);
    let (sig, body) = rest.split_at(cut);
    let mut files = DriveFiles::default();
    if mode & 1 != 0 {
        files.files.insert("node.toml".into(), body.to_vec());
    }
    if mode & 2 != 0 {
        files.files.insert("node.toml.sig".into(), sig.to_vec());
    }
    let key = cairn_signing::PrivateKey::from_bytes([7; 32]).public();
    for k in [None, Some(&key)] {
        if let Ok(c) = drive::parse(Format::Cairn, &files, k, 1) {
            assert!(
                k.is_none() || c.signed == drive::Signed::Yes,
                "an unsigned drive passed a pinned key"
            );
            node_toml(c.text.as_bytes());
        }
    }
}

/// A NoCloud drive: bytes split at NULs into meta-data, user-data and network-config.
pub fn nocloud_drive(data: &[u8]) {
    cloud(data, Format::NoCloud)
}

/// An OpenStack config drive: bytes split at a NUL into meta_data.json and network_data.json.
pub fn config2_drive(data: &[u8]) {
    cloud(data, Format::ConfigDrive)
}

fn cloud(data: &[u8], format: Format) {
    let names = format.files();
    let mut parts = data.splitn(names.len(), |b| *b == 0);
    let mut files = DriveFiles::default();
    for name in names {
        if let Some(p) = parts.next() {
            files.files.insert(name.to_string(), p.to_vec());
        }
    }
    if let Ok(c) = drive::parse(format, &files, None, 1) {
        // What a cloud drive becomes is a node.toml like any other: it renders.
        node_toml(c.text.as_bytes());
        if let Some(id) = &c.instance_id {
            assert!(
                !id.contains(char::is_control),
                "an instance-id with a control character"
            );
        }
    }
}

/// What the keyserver answers an enrollment or a renewal: whatever is taken as an answer
/// has a body no longer than the bytes received, an answer that decodes encodes back to
/// JSON that decodes to the same, and its SSH lines are read without a panic (a host
/// certificate that reads writes back to the same fields). A peer list keeps, of its
/// peers, only those whose every `wg set` word is one plain word that is not an option.
pub fn key_agent_answer(data: &[u8]) {
    if let Ok((_, body)) = crate::key_agent::client::parse_answer(data) {
        assert!(body.len() <= data.len());
        if let Ok(r) = serde_json::from_slice::<cairn_keys::mesh::PeersResponse>(&body) {
            let (good, _) = crate::mesh::checked(&r.peers, None, &Default::default());
            for args in crate::mesh::plan("wg0", &Default::default(), &good, &[], &Default::default()) {
                for a in &args {
                    assert!(
                        !a.is_empty()
                            && !a.starts_with('-')
                            && !a.contains(|c: char| c.is_whitespace() || c.is_control()),
                        "{args:?}"
                    );
                }
            }
        }
        if let Ok(r) = serde_json::from_slice::<cairn_keys::wire::EnrollResponse>(&body) {
            let again = serde_json::to_vec(&r).expect("serializes");
            assert_eq!(
                serde_json::from_slice::<cairn_keys::wire::EnrollResponse>(&again).ok(),
                Some(r.clone())
            );
            if let Some(line) = &r.ssh_host_cert {
                if let Ok((c, ca)) = cairn_keys::ssh::parse_cert_line(line) {
                    let tbs = cairn_keys::ssh::to_be_signed(&c, &[0; 32], &ca);
                    let back = cairn_keys::ssh::finish(tbs, &[0; 64], "");
                    let (c2, ca2) = cairn_keys::ssh::parse_cert_line(&back).expect("what was written reads");
                    let mut sorted = c.clone();
                    sorted.extensions.sort();
                    assert_eq!((c2, ca2), (sorted, ca));
                }
            }
            if let Some(line) = &r.ssh_user_ca {
                let _ = cairn_keys::ssh::parse_public_line(line);
            }
        }
    }
}
