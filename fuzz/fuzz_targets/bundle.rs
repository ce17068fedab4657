//! update.cairn from a web server: any bytes must give a bundle or an error, never a panic,
//! and nothing unsigned gets past the reader. The input is tried twice: as a whole bundle
//! (almost always stopped at the signature), and as a manifest that this target signs
//! with a test key and wraps in a header, so the parser and the payload reader behind the
//! signature are fuzzed too (the rest of the input follows as the payload bytes).
#![no_main]

use cairn_signing::bundle::{self, BundleManifest, BundleReader};
use cairn_signing::PrivateKey;

fn drain(data: &[u8], key: &cairn_signing::PublicKey) {
    if let Ok(mut r) = BundleReader::open(data, key) {
        let mut sink = std::io::sink();
        while let Ok(Some(_)) = r.next_payload(&mut sink, &mut |_, _| {}) {}
        let _ = r.finish();
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let key = PrivateKey::from_bytes([7; 32]);
    drain(data, &key.public());
    let _ = bundle::Index::parse(data);
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (manifest, rest) = data.split_at(split);
    if manifest.is_empty() || manifest.len() > bundle::MAX_MANIFEST as usize {
        return;
    }
    let _ = BundleManifest::parse(manifest);
    let mut b = bundle::header(manifest.len() as u32).to_vec();
    b.extend_from_slice(manifest);
    b.extend_from_slice(&key.sign(manifest));
    b.extend_from_slice(rest);
    drain(&b, &key.public());
});
