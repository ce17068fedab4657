//! `update.cairn`: one file that carries a release to running nodes.
//!
//! A node reads a bundle front to back exactly once (from a file or an HTTP response) and
//! streams each payload into its inactive slot while hashing it, so the layout puts
//! everything the node must trust before writing a byte at the front:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `CAIRNUPD` |
//! | 8 | 4 | bundle format, u32 little endian: 1 |
//! | 12 | 4 | manifest length *m* in bytes, u32 LE, 1 ≤ *m* ≤ 1 MiB |
//! | 16 | 4 | signature length, u32 LE: 64 |
//! | 20 | 12 | reserved, zero |
//! | 32 | *m* | manifest: UTF-8 JSON ([`BundleManifest`]) |
//! | 32 + *m* | 64 | ed25519 signature over the manifest's exact *m* bytes |
//! | 96 + *m* | … | zero padding up to the first payload |
//! | payload offsets | sizes | `root` (squashfs), `verity` (hash device), `uki`, in this order, each at a 4 KiB-aligned offset the manifest gives, zero padding between; the file ends where the UKI ends |
//!
//! The header is not signed, but everything it says is re-checked: the manifest's own
//! `bundle-format`, the payload offsets (which must follow from the manifest length)
//! and the file ending right after the last payload. A reader checks the signature with
//! the key it already trusts *before* parsing the manifest, then each payload's sha256 as
//! it streams past, the padding to be zero, and that nothing follows the last payload.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::{KeyError, PrivateKey, PublicKey, SIGNATURE_LEN};
use crate::manifest::Payload;

/// Magic bytes at the start of every bundle.
pub const MAGIC: &[u8; 8] = b"CAIRNUPD";
/// The bundle format this crate writes and reads.
pub const FORMAT: u32 = 1;
/// Fixed header length.
pub const HEADER_LEN: u64 = 32;
/// Largest manifest a reader accepts (a real one is well under 2 KiB).
pub const MAX_MANIFEST: u32 = 1 << 20;
/// Payload alignment.
pub const ALIGN: u64 = 4096;
/// The payloads a bundle carries, in order.
pub const PAYLOADS: [&str; 3] = ["root", "verity", "uki"];
/// The file name `cairn build` gives the bundle in its output directory.
pub const FILE: &str = "update.cairn";

/// What is wrong with a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Reading the bundle (or writing a payload) failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Not a Cairn bundle at all.
    #[error("not a Cairn update bundle (the file does not start with CAIRNUPD)")]
    Magic,
    /// A header field out of range.
    #[error("bad bundle header: {0}")]
    Header(String),
    /// The manifest's signature does not check out with the trusted key.
    #[error("bundle signature check failed; it was not signed by the release key this node trusts")]
    Signature(#[source] KeyError),
    /// Signed, but not a manifest this version can use.
    #[error("bundle manifest is signed but malformed: {0}")]
    Manifest(String),
    /// The file ended early.
    #[error("bundle is truncated: {0}")]
    Truncated(String),
    /// A payload's bytes differ from the signed hash.
    #[error("payload {name}: sha256 {found} does not match the signed {expected}")]
    Hash {
        /// Payload name.
        name: String,
        /// Signed hash.
        expected: String,
        /// Hash of what arrived.
        found: String,
    },
    /// Padding that should be zero is not, or bytes follow the last payload.
    #[error("bundle has unexpected bytes {0}")]
    Stray(String),
}

/// The signed description of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BundleManifest {
    /// Bundle format ([`FORMAT`]); the key also keeps an image manifest from ever parsing
    /// as a bundle manifest.
    pub bundle_format: u32,
    /// Image name; a node takes only bundles of its own image.
    pub name: String,
    /// Image version; the UKI is installed as `cairn_<version>+3.efi`.
    pub version: String,
    /// CPU architecture (`x86-64`).
    pub architecture: String,
    /// The build's timestamp.
    pub source_date_epoch: u64,
    /// dm-verity root hash (hex): fixes the slot's partition UUIDs.
    pub root_hash: String,
    /// dm-verity salt (hex).
    pub verity_salt: String,
    /// Fingerprint of the signing key.
    pub signing_key: String,
    /// Whether that key is a per-machine development key.
    pub development_key: bool,
    /// A development build (`cairn build --dev`): `cairn publish` refuses it unless told.
    /// Written only when true, so release bundles read as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub development_build: bool,
    /// `root`, `verity` and `uki`, with offsets in the bundle.
    pub payloads: Vec<Payload>,
    /// The release key the next releases will be signed with (raw ed25519 public key, hex),
    /// announced under the signature of the current one: a node that installs this release
    /// trusts it from then on (key rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_signing_key: Option<String>,
}

fn align(v: u64) -> u64 {
    v.div_ceil(ALIGN) * ALIGN
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `name` is a Cairn image name: 1–64 characters of `a`–`z`, `0`–`9` and `-`,
/// starting with a letter. It names directories and files where releases are published and
/// entries on the ESP, so nothing else may pass (no `/`, no `..`).
pub fn valid_image_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether `v` is a Cairn image version: it names a UKI (`cairn_<v>+3.efi`) and is
/// compared by systemd-boot. ASCII letters, digits, `.`, `~`, `_`, `-`, starting with a
/// letter or digit, at most 64 bytes; `+` is reserved for boot counting.
pub fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.as_bytes()[0].is_ascii_alphanumeric()
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b".~_-".contains(&b))
}

impl BundleManifest {
    /// The exact bytes that are signed: pretty JSON with a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        out.push(b'\n');
        out
    }

    /// Where payloads start for a manifest of `manifest_len` bytes.
    pub fn payload_start(manifest_len: u64) -> u64 {
        align(HEADER_LEN + manifest_len + SIGNATURE_LEN as u64)
    }

    /// Set every payload's offset from the serialized length (which the offsets are part
    /// of, so repeat until it holds still) and return the bytes to sign.
    pub fn place(&mut self) -> Vec<u8> {
        loop {
            let bytes = self.to_bytes();
            let mut at = Self::payload_start(bytes.len() as u64);
            let mut changed = false;
            for p in &mut self.payloads {
                changed |= p.offset != at;
                p.offset = at;
                at = align(at + p.size);
            }
            if !changed {
                return bytes;
            }
        }
    }

    /// Parse and check a manifest whose signature has already been checked.
    pub fn parse(bytes: &[u8]) -> Result<BundleManifest, BundleError> {
        let m: BundleManifest = serde_json::from_slice(bytes).map_err(|e| BundleError::Manifest(e.to_string()))?;
        m.check(bytes.len() as u64)?;
        Ok(m)
    }

    fn check(&self, manifest_len: u64) -> Result<(), BundleError> {
        let bad = |s: String| Err(BundleError::Manifest(s));
        if self.bundle_format != FORMAT {
            return bad(format!(
                "bundle-format {} is not supported (this Cairn reads format {FORMAT})",
                self.bundle_format
            ));
        }
        if !valid_image_name(&self.name) {
            return bad(format!(
                "name {:?} must be 1 to 64 characters of a-z, 0-9 and '-', starting with a letter",
                self.name
            ));
        }
        if !valid_version(&self.version) {
            return bad(format!(
                "version {:?} must start with a letter or digit and use only letters, digits, '.', '~', '_', '-'",
                self.version
            ));
        }
        if !is_hex(&self.root_hash, 64) || !is_hex(&self.verity_salt, 64) {
            return bad("root-hash and verity-salt must be 64 lowercase hex digits".into());
        }
        if let Some(k) = &self.next_signing_key {
            if !is_hex(k, 64) || PublicKey::from_hex(k).is_err() {
                return bad("next-signing-key must be an ed25519 public key in 64 lowercase hex digits".into());
            }
        }
        let names: Vec<&str> = self.payloads.iter().map(|p| p.name.as_str()).collect();
        if names != PAYLOADS {
            return bad(format!("payloads must be {PAYLOADS:?} in that order, found {names:?}"));
        }
        let mut at = Self::payload_start(manifest_len);
        for p in &self.payloads {
            if p.offset != at {
                return bad(format!("payload {} must start at {at}, not {}", p.name, p.offset));
            }
            if p.size == 0 || p.size > 1 << 40 {
                return bad(format!("payload {} has size {}", p.name, p.size));
            }
            if !is_hex(&p.sha256, 64) {
                return bad(format!("payload {} sha256 must be 64 lowercase hex digits", p.name));
            }
            at = align(p.offset + p.size);
        }
        Ok(())
    }

    /// The payload called `name`.
    pub fn payload(&self, name: &str) -> &Payload {
        self.payloads
            .iter()
            .find(|p| p.name == name)
            .expect("a checked manifest has every payload")
    }

    /// Total bundle size.
    pub fn bundle_size(&self) -> u64 {
        let last = self.payloads.last().expect("a checked manifest has payloads");
        last.offset + last.size
    }
}

/// `index.json` beside published bundles (`cairn publish`): what nodes poll, signed by the
/// release key(s) in `index.json.sig` and valid until `expires`. A node refuses an index it
/// cannot verify, and one whose time has passed — a server that keeps serving an old
/// index (by mistake, or to freeze nodes on a vulnerable release) is noticed and reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Index {
    /// Index format ([`INDEX_FORMAT`]).
    pub index_format: u32,
    /// Image name.
    pub name: String,
    /// The version nodes should run.
    pub latest: String,
    /// When the index stops being valid (UTC, `YYYY-MM-DDTHH:MM:SSZ`); republishing renews it.
    pub expires: String,
    /// Every published release, oldest first.
    pub releases: Vec<Release>,
}

/// One published bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Release {
    /// Image version.
    pub version: String,
    /// Bundle file name, relative to the index.
    pub file: String,
    /// Bundle size in bytes.
    pub size: u64,
    /// sha256 of the bundle file (hex).
    pub sha256: String,
    /// The release's dm-verity root hash.
    pub root_hash: String,
}

/// The index format this crate writes and reads.
pub const INDEX_FORMAT: u32 = 2;
/// The index's file name.
pub const INDEX_FILE: &str = "index.json";
/// The index's signatures: one or more raw 64-byte ed25519 signatures over its exact bytes.
pub const INDEX_SIG_FILE: &str = "index.json.sig";
/// Most signatures an index carries (one per key during a rotation, a few at most).
pub const MAX_INDEX_SIGNATURES: usize = 8;

impl Index {
    /// Parse an index (from a web server: anything may arrive).
    pub fn parse(bytes: &[u8]) -> Result<Index, String> {
        let i: Index = serde_json::from_slice(bytes).map_err(|e| format!("not a Cairn index.json: {e}"))?;
        if i.index_format != INDEX_FORMAT {
            return Err(format!(
                "index-format {} is not supported (this Cairn reads {INDEX_FORMAT})",
                i.index_format
            ));
        }
        if !valid_image_name(&i.name) {
            return Err(format!("image name {:?} is not an image name", i.name));
        }
        if crate::time::parse_utc(&i.expires).is_none() {
            return Err(format!("expires {:?} is not a UTC time", i.expires));
        }
        for r in &i.releases {
            let plain = !r.file.is_empty() && !r.file.contains('/') && !r.file.starts_with('.');
            if !plain || !valid_version(&r.version) {
                return Err(format!(
                    "release {:?} ({:?}) is not a plain file name and version",
                    r.version, r.file
                ));
            }
        }
        i.release(&i.latest)
            .ok_or_else(|| format!("latest {} is not among the releases", i.latest))?;
        Ok(i)
    }

    /// Check `sigs` (the `index.json.sig` bytes) over `bytes` with any of `keys`, then parse.
    pub fn verify(bytes: &[u8], sigs: &[u8], keys: &[PublicKey]) -> Result<Index, String> {
        if sigs.is_empty() || sigs.len() % SIGNATURE_LEN != 0 || sigs.len() / SIGNATURE_LEN > MAX_INDEX_SIGNATURES {
            return Err(format!(
                "{INDEX_SIG_FILE} must hold 1 to {MAX_INDEX_SIGNATURES} signatures of {SIGNATURE_LEN} bytes, it has {} bytes",
                sigs.len()
            ));
        }
        let signed = sigs
            .chunks_exact(SIGNATURE_LEN)
            .any(|sig| keys.iter().any(|k| k.verify(bytes, sig).is_ok()));
        if !signed {
            return Err(format!(
                "{INDEX_FILE} is not signed by a release key this node trusts ({})",
                keys.iter().map(PublicKey::fingerprint).collect::<Vec<_>>().join(", ")
            ));
        }
        Index::parse(bytes)
    }

    /// The bytes to publish and their signatures by every key in `keys`.
    pub fn sign(&self, keys: &[&PrivateKey]) -> (Vec<u8>, Vec<u8>) {
        let bytes = self.to_bytes();
        let sigs = keys.iter().flat_map(|k| k.sign(&bytes)).collect();
        (bytes, sigs)
    }

    /// When it expires, as a Unix time.
    pub fn expires_at(&self) -> u64 {
        crate::time::parse_utc(&self.expires).unwrap_or(0)
    }

    /// The release with `version`.
    pub fn release(&self, version: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.version == version)
    }

    /// Pretty JSON with a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("an index always serializes");
        out.push(b'\n');
        out
    }
}

/// Compare two versions the way systemd-boot orders Cairn's entries: runs of digits
/// numerically, runs of letters by bytes, `~` before anything (a pre-release), a digit
/// run after a letter run, other characters only separate.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let sep = |c: u8| !c.is_ascii_alphanumeric() && c != b'~';
    loop {
        while i < a.len() && sep(a[i]) {
            i += 1;
        }
        while j < b.len() && sep(b[j]) {
            j += 1;
        }
        match (a.get(i), b.get(j)) {
            (Some(b'~'), Some(b'~')) => {
                i += 1;
                j += 1;
                continue;
            }
            (Some(b'~'), _) => return Ordering::Less,
            (_, Some(b'~')) => return Ordering::Greater,
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            _ => {}
        }
        let run = |s: &[u8], k: usize| {
            let digit = s[k].is_ascii_digit();
            let len = s[k..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() && c.is_ascii_digit() == digit)
                .count();
            (digit, k + len)
        };
        let ((da, ea), (db, eb)) = (run(a, i), run(b, j));
        let ord = match (da, db) {
            (true, true) => {
                let trim = |r: &[u8]| {
                    let z = r.iter().take_while(|&&c| c == b'0').count();
                    r[z..].to_vec()
                };
                let (ta, tb) = (trim(&a[i..ea]), trim(&b[j..eb]));
                ta.len().cmp(&tb.len()).then(ta.cmp(&tb))
            }
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => a[i..ea].cmp(&b[j..eb]),
        };
        if ord != Ordering::Equal {
            return ord;
        }
        (i, j) = (ea, eb);
    }
}

/// The 32-byte header for a manifest of `manifest_len` bytes.
pub fn header(manifest_len: u32) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    h[12..16].copy_from_slice(&manifest_len.to_le_bytes());
    h[16..20].copy_from_slice(&(SIGNATURE_LEN as u32).to_le_bytes());
    h
}

/// Check a header; returns the manifest length.
pub fn parse_header(h: &[u8; HEADER_LEN as usize]) -> Result<u32, BundleError> {
    if &h[0..8] != MAGIC {
        return Err(BundleError::Magic);
    }
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
    let format = u32_at(8);
    if format != FORMAT {
        return Err(BundleError::Header(format!(
            "format {format} is not supported (this Cairn reads format {FORMAT})"
        )));
    }
    let mlen = u32_at(12);
    if mlen == 0 || mlen > MAX_MANIFEST {
        return Err(BundleError::Header(format!(
            "manifest length {mlen} is outside 1..={MAX_MANIFEST}"
        )));
    }
    let slen = u32_at(16);
    if slen as usize != SIGNATURE_LEN {
        return Err(BundleError::Header(format!(
            "signature length {slen}, expected {SIGNATURE_LEN}"
        )));
    }
    if h[20..].iter().any(|&b| b != 0) {
        return Err(BundleError::Header("reserved bytes are not zero".into()));
    }
    Ok(mlen)
}

/// Write a bundle: `manifest` (offsets are set here) signed with `key`, then each
/// payload read from `sources` (in [`PAYLOADS`] order, exactly `size` bytes each).
/// Returns the manifest as written.
pub fn write(
    out: &mut dyn Write,
    mut manifest: BundleManifest,
    key: &PrivateKey,
    sources: &mut [&mut dyn Read],
) -> Result<BundleManifest, BundleError> {
    let bytes = manifest.place();
    manifest.check(bytes.len() as u64)?;
    let sig = key.sign(&bytes);
    out.write_all(&header(bytes.len() as u32))?;
    out.write_all(&bytes)?;
    out.write_all(&sig)?;
    let mut at = HEADER_LEN + bytes.len() as u64 + SIGNATURE_LEN as u64;
    for (p, src) in manifest.payloads.iter().zip(sources.iter_mut()) {
        io::copy(&mut io::repeat(0).take(p.offset - at), out)?;
        let n = io::copy(&mut src.take(p.size), out)?;
        if n != p.size {
            return Err(BundleError::Truncated(format!(
                "payload {} source gave {n} of {} bytes",
                p.name, p.size
            )));
        }
        at = p.offset + p.size;
    }
    Ok(manifest)
}

/// Reads a bundle front to back: [`BundleReader::open`] checks the header, the signature
/// and the manifest; [`BundleReader::next_payload`] streams one payload out while hashing
/// it; [`BundleReader::finish`] checks that nothing follows.
pub struct BundleReader<R: Read> {
    inner: R,
    pos: u64,
    manifest: BundleManifest,
    next: usize,
}

fn read_exact_or(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), BundleError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => BundleError::Truncated(format!("it ends inside the {what}")),
        _ => BundleError::Io(e),
    })
}

impl<R: Read> BundleReader<R> {
    /// Read the header, manifest and signature; check the signature with `key` and only
    /// then parse the manifest.
    pub fn open(inner: R, key: &PublicKey) -> Result<Self, BundleError> {
        Self::open_any(inner, std::slice::from_ref(key))
    }

    /// [`BundleReader::open`] with any of several trusted keys (a node that was told of its
    /// next release key trusts both).
    pub fn open_any(mut inner: R, keys: &[PublicKey]) -> Result<Self, BundleError> {
        let mut h = [0u8; HEADER_LEN as usize];
        read_exact_or(&mut inner, &mut h, "header")?;
        let mlen = parse_header(&h)?;
        let mut bytes = vec![0u8; mlen as usize];
        read_exact_or(&mut inner, &mut bytes, "manifest")?;
        let mut sig = [0u8; SIGNATURE_LEN];
        read_exact_or(&mut inner, &mut sig, "signature")?;
        let mut last = None;
        let trusted = keys.iter().any(|k| match k.verify(&bytes, &sig) {
            Ok(()) => true,
            Err(e) => {
                last = Some(e);
                false
            }
        });
        if !trusted {
            return Err(BundleError::Signature(last.unwrap_or(KeyError::SignatureLength(0))));
        }
        let manifest = BundleManifest::parse(&bytes)?;
        Ok(BundleReader {
            inner,
            pos: HEADER_LEN + mlen as u64 + SIGNATURE_LEN as u64,
            manifest,
            next: 0,
        })
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &BundleManifest {
        &self.manifest
    }

    /// Bytes read so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn skip_zeros(&mut self, n: u64, what: &str) -> Result<(), BundleError> {
        let mut left = n;
        let mut buf = [0u8; 4096];
        while left > 0 {
            let k = left.min(buf.len() as u64) as usize;
            read_exact_or(&mut self.inner, &mut buf[..k], what)?;
            if buf[..k].iter().any(|&b| b != 0) {
                return Err(BundleError::Stray(format!(
                    "in the padding before byte {}",
                    self.pos + k as u64
                )));
            }
            self.pos += k as u64;
            left -= k as u64;
        }
        Ok(())
    }

    /// Stream the next payload into `out`, hashing it, and check the hash. `progress`
    /// gets the bytes of this payload written so far, every few MiB. Returns the payload
    /// (`None` after the last). The bytes reach `out` before the hash is known: write
    /// them where nothing trusts them until this returns `Ok`.
    pub fn next_payload(
        &mut self,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(&Payload, u64),
    ) -> Result<Option<Payload>, BundleError> {
        let Some(p) = self.manifest.payloads.get(self.next).cloned() else {
            return Ok(None);
        };
        self.skip_zeros(p.offset - self.pos, &format!("padding before {}", p.name))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        let mut reported = 0u64;
        while done < p.size {
            let k = (p.size - done).min(buf.len() as u64) as usize;
            let n = match self.inner.read(&mut buf[..k]) {
                Ok(0) => {
                    return Err(BundleError::Truncated(format!(
                        "payload {} ends after {done} of {} bytes",
                        p.name, p.size
                    )))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            done += n as u64;
            if done - reported >= 16 << 20 || done == p.size {
                progress(&p, done);
                reported = done;
            }
        }
        self.pos += p.size;
        self.next += 1;
        let found = hex::encode(hasher.finalize());
        if found != p.sha256 {
            return Err(BundleError::Hash {
                name: p.name.clone(),
                expected: p.sha256.clone(),
                found,
            });
        }
        Ok(Some(p))
    }

    /// After the last payload: the source must end here.
    pub fn finish(mut self) -> Result<BundleManifest, BundleError> {
        if self.next != self.manifest.payloads.len() {
            return Err(BundleError::Truncated("not every payload was read".into()));
        }
        let mut one = [0u8; 1];
        loop {
            match self.inner.read(&mut one) {
                Ok(0) => return Ok(self.manifest),
                Ok(_) => {
                    return Err(BundleError::Stray(format!(
                        "after the last payload (byte {})",
                        self.pos
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BundleManifest {
        BundleManifest {
            bundle_format: FORMAT,
            name: "node".into(),
            version: "0.2.0".into(),
            architecture: "x86-64".into(),
            source_date_epoch: 1,
            root_hash: "ab".repeat(32),
            verity_salt: "cd".repeat(32),
            signing_key: "sha256:00".into(),
            development_key: true,
            development_build: false,
            payloads: vec![],
            next_signing_key: None,
        }
    }

    fn bundle(key: &PrivateKey, parts: [&[u8]; 3]) -> (Vec<u8>, BundleManifest) {
        let mut m = sample();
        m.payloads = PAYLOADS
            .iter()
            .zip(parts)
            .map(|(n, d)| Payload {
                name: (*n).into(),
                offset: 0,
                size: d.len() as u64,
                sha256: hex::encode(Sha256::digest(d)),
            })
            .collect();
        let mut out = Vec::new();
        let mut srcs: Vec<&[u8]> = parts.to_vec();
        let mut refs: Vec<&mut dyn Read> = srcs.iter_mut().map(|s| s as &mut dyn Read).collect();
        let m = write(&mut out, m, key, &mut refs).unwrap();
        (out, m)
    }

    fn read_all(data: &[u8], key: &PublicKey) -> Result<Vec<Vec<u8>>, BundleError> {
        let mut r = BundleReader::open(data, key)?;
        let mut got = vec![];
        loop {
            let mut buf = vec![];
            match r.next_payload(&mut buf, &mut |_, _| {})? {
                Some(_) => got.push(buf),
                None => break,
            }
        }
        r.finish()?;
        Ok(got)
    }

    #[test]
    fn a_signed_bundle_with_a_path_for_a_name_is_refused() {
        // A manifest the trusted key signed is still checked: its name becomes a path.
        for name in [
            "../../escape",
            "a/b",
            ".",
            "..",
            "Node",
            "-x",
            "",
            &"n".repeat(65),
            "x\ny",
        ] {
            let mut m = sample();
            m.name = name.into();
            let e = BundleManifest::parse(&m.to_bytes()).expect_err(name).to_string();
            assert!(e.contains("must be 1 to 64 characters"), "{name:?}: {e}");
        }
        assert!(valid_image_name("node") && valid_image_name("edge-2"));
        let index = br#"{"index-format":2,"name":"../x","latest":"1","expires":"2030-01-01T00:00:00Z","releases":[{"version":"1","file":"x_1.cairn","size":1,"sha256":"00","root-hash":"00"}]}"#;
        assert!(Index::parse(index).unwrap_err().contains("not an image name"));
    }

    #[test]
    fn round_trip_and_layout() {
        let key = PrivateKey::from_bytes([3; 32]);
        let root = vec![7u8; 10_000];
        let (data, m) = bundle(&key, [&root, b"tree", b"uki"]);
        assert_eq!(&data[..8], MAGIC);
        assert_eq!(m.bundle_size(), data.len() as u64);
        for p in &m.payloads {
            assert_eq!(p.offset % ALIGN, 0);
        }
        assert_eq!(m.payload("verity").offset, 4096 + 12288);
        let got = read_all(&data, &key.public()).unwrap();
        assert_eq!(got, vec![root, b"tree".to_vec(), b"uki".to_vec()]);
    }

    #[test]
    fn every_flipped_byte_class_is_refused() {
        let key = PrivateKey::from_bytes([3; 32]);
        let (data, m) = bundle(&key, [&[1u8; 5000], b"tree", b"uki"]);
        let mlen = u32::from_le_bytes(data[12..16].try_into().unwrap()) as usize;
        let cases = [
            (3, "magic"),
            (9, "format"),
            (25, "reserved"),
            (32 + mlen / 2, "manifest"),
            (32 + mlen + 10, "signature"),
            (32 + mlen + 70, "padding"),
            (m.payload("root").offset as usize + 4999, "root"),
            (m.payload("uki").offset as usize, "uki"),
        ];
        for (at, what) in cases {
            let mut bad = data.clone();
            bad[at] ^= 0x10;
            let err = read_all(&bad, &key.public()).expect_err(what);
            let text = err.to_string();
            eprintln!("{what}: {text}");
            match what {
                "manifest" | "signature" => assert!(matches!(err, BundleError::Signature(_)), "{text}"),
                "root" | "uki" => assert!(matches!(err, BundleError::Hash { .. }), "{text}"),
                "padding" => assert!(matches!(err, BundleError::Stray(_)), "{text}"),
                _ => assert!(matches!(err, BundleError::Magic | BundleError::Header(_)), "{text}"),
            }
        }
        let other = PrivateKey::from_bytes([4; 32]).public();
        assert!(matches!(read_all(&data, &other), Err(BundleError::Signature(_))));
        let mut long = data.clone();
        long.push(0);
        assert!(matches!(read_all(&long, &key.public()), Err(BundleError::Stray(_))));
        for cut in [10, 40, data.len() - 1] {
            let err = read_all(&data[..cut], &key.public()).unwrap_err();
            assert!(matches!(err, BundleError::Truncated(_)), "{cut}: {err}");
        }
    }

    #[test]
    fn signed_but_inconsistent_manifests_are_refused() {
        let key = PrivateKey::from_bytes([3; 32]);
        let (data, mut m) = bundle(&key, [b"root", b"tree", b"uki"]);
        let resign = |m: &BundleManifest| {
            let bytes = m.to_bytes();
            let mut out = header(bytes.len() as u32).to_vec();
            out.extend_from_slice(&bytes);
            out.extend_from_slice(&key.sign(&bytes));
            out
        };
        m.payloads.swap(0, 1);
        let err = BundleReader::open(&resign(&m)[..], &key.public()).err().unwrap();
        assert!(err.to_string().contains("in that order"), "{err}");
        let (_, mut m) = bundle(&key, [b"root", b"tree", b"uki"]);
        m.version = "../x".into();
        let err = BundleReader::open(&resign(&m)[..], &key.public()).err().unwrap();
        assert!(err.to_string().contains("version"), "{err}");
        let (_, mut m) = bundle(&key, [b"root", b"tree", b"uki"]);
        m.payloads[1].offset += 4096;
        let err = BundleReader::open(&resign(&m)[..], &key.public()).err().unwrap();
        assert!(err.to_string().contains("must start at"), "{err}");
        drop(data);
    }

    #[test]
    fn version_order() {
        use std::cmp::Ordering::*;
        for (a, b, o) in [
            ("0.2.0", "0.1.0", Greater),
            ("0.10.0", "0.9.9", Greater),
            ("1.0.0", "1.0.0", Equal),
            ("1.0.0~rc1", "1.0.0", Less),
            ("1.0.0-1", "1.0.0", Greater),
            ("1.0.01", "1.0.1", Equal),
            ("2", "10", Less),
            ("1.0a", "1.0b", Less),
        ] {
            assert_eq!(compare_versions(a, b), o, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), o.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn versions() {
        assert!(valid_version("0.2.0"));
        assert!(valid_version("1.0.0-rc.1"));
        assert!(valid_version("v1_2"));
        for v in ["", "-1", "1+2", "1/2", "1 2", "1..\u{e9}"] {
            assert!(!valid_version(v), "{v}");
        }
    }
}
