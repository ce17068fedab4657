//! The body of the `bundle` fuzz target (`fuzz/`), shared with the corpus tests
//! (`tests/corpora.rs`).

use crate::bundle::{self, BundleManifest, BundleReader};
use crate::{PrivateKey, PublicKey};

fn drain(data: &[u8], key: &PublicKey) {
    if let Ok(mut r) = BundleReader::open(data, key) {
        let mut sink = std::io::sink();
        while let Ok(Some(_)) = r.next_payload(&mut sink, &mut |_, _| {}) {}
        let _ = r.finish();
    }
}

/// update.cairn from a web server: any bytes give a bundle or an error, never a panic. The
/// input is tried as a whole bundle (almost always stopped at the signature), as an index,
/// and as a manifest this harness signs with a test key and wraps in a header, so the
/// parser and the payload reader behind the signature are reached (the bytes after the
/// first NUL follow as the payloads).
pub fn bundle(data: &[u8]) {
    let key = PrivateKey::from_bytes([7; 32]);
    drain(data, &key.public());
    if let Ok(i) = bundle::Index::parse(data) {
        assert!(bundle::valid_image_name(&i.name), "an index with a path for a name");
    }
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (manifest, rest) = data.split_at(split);
    if manifest.is_empty() || manifest.len() > bundle::MAX_MANIFEST as usize {
        return;
    }
    if let Ok(m) = BundleManifest::parse(manifest) {
        assert!(bundle::valid_image_name(&m.name), "a manifest with a path for a name");
    }
    let mut b = bundle::header(manifest.len() as u32).to_vec();
    b.extend_from_slice(manifest);
    b.extend_from_slice(&key.sign(manifest));
    b.extend_from_slice(rest);
    drain(&b, &key.public());
}
