//! ed25519 release keys on disk.
//!
//! | file | format | notes |
//! |---|---|---|
//! | private key | PKCS#8 v1 PEM (`-----BEGIN PRIVATE KEY-----`), mode 0600 | written *without* the optional public-key field: OpenSSL 3 refuses PKCS#8 v2 ed25519 keys |
//! | public key | SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`) | what `openssl pkey -pubin` reads, and what is baked into images |
//! | signature | raw 64 bytes | what `openssl pkeyutl -verify -rawin -sigfile` takes |

use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::write_file_atomic;

/// Length in bytes of a detached signature file.
pub const SIGNATURE_LEN: usize = 64;

/// What can go wrong with keys and signatures.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key or signature file could not be read or written.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a key of the expected kind.
    #[error("{path} is not an ed25519 {kind} in PEM form ({detail}); create one with `cairn keygen`")]
    Parse {
        /// The file.
        path: PathBuf,
        /// "private key" or "public key".
        kind: &'static str,
        /// What the decoder said.
        detail: String,
    },
    /// Refusing to replace an existing key.
    #[error("{0} already exists; pass --force to replace it (the old key is lost)")]
    Exists(PathBuf),
    /// The private and the public key would be one file.
    #[error("{0} would hold both the private and the public key\n  hint: name the private key, e.g. release.pem; its public key goes beside it as release.pub")]
    SamePath(PathBuf),
    /// The signature does not match the data and key.
    #[error("signature does not match (key {fingerprint})")]
    BadSignature {
        /// Fingerprint of the key that was tried.
        fingerprint: String,
    },
    /// A signature file of the wrong size.
    #[error("signature must be {SIGNATURE_LEN} bytes, found {0}")]
    SignatureLength(usize),
}

/// An ed25519 private (signing) key.
pub struct PrivateKey(SigningKey);

/// An ed25519 public (verifying) key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PublicKey(VerifyingKey);

/// The largest key file read (a PEM key is a few hundred bytes).
const MAX_KEY_FILE: u64 = 64 << 10;

/// Read a key file: a regular file (links followed) of at most 64 KiB. A FIFO or a device
/// named as a key is refused instead of read forever.
fn read_key_file(path: &Path, op: &'static str) -> Result<String, KeyError> {
    let io = |source| KeyError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::other("not a regular file")));
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(io(std::io::Error::other(format!(
            "{} bytes is too large for a key file",
            meta.len()
        ))));
    }
    let bytes = fs::read(path).map_err(io)?;
    String::from_utf8(bytes).map_err(|_| io(std::io::Error::other("not text (a PEM key is text)")))
}

/// Say what a key file holds when it is not what was wanted (`want`: the PEM label), instead
/// of the decoder's message: empty, not PEM, another PEM kind, another algorithm.
fn diagnose(text: &str, want: &str, decoder: String) -> String {
    let t = text.trim();
    if t.is_empty() {
        return "the file is empty".into();
    }
    let Some(begin) = t.lines().find_map(|l| l.trim().strip_prefix("-----BEGIN ")) else {
        return "it is not PEM: there is no -----BEGIN line".into();
    };
    let label = begin.trim_end_matches('-');
    if label != want {
        return format!("it holds a PEM \"{label}\", not a \"{want}\"");
    }
    let Ok((_, der)) = ed25519_dalek::pkcs8::spki::der::pem::decode_vec(t.as_bytes()) else {
        return "its PEM body is not valid base64".into();
    };
    match algorithm_oid(&der) {
        Some(oid) if oid != ED25519_OID => {
            let name = match oid {
                [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01] => "an RSA",
                [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01] => "an ECDSA",
                [0x2b, 0x65, 0x71] => "an Ed448",
                [0x2b, 0x65, 0x6e] => "an X25519",
                _ => "another kind of",
            };
            format!("it is {name} key, and Cairn's keys are ed25519")
        }
        _ => decoder,
    }
}

/// DER bytes of 1.3.101.112 (Ed25519).
const ED25519_OID: &[u8] = &[0x2b, 0x65, 0x70];

/// The algorithm OID of a PKCS#8 private key or an SPKI public key, from its DER: the
/// outer SEQUENCE, a version INTEGER (PKCS#8 only), then the AlgorithmIdentifier SEQUENCE
/// whose first element is the OID.
fn algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    // One TLV at `at`: (tag, content start, content end).
    let tlv = |at: usize| -> Option<(u8, usize, usize)> {
        let tag = *der.get(at)?;
        let first = *der.get(at + 1)? as usize;
        let (len, start) = if first < 0x80 {
            (first, at + 2)
        } else {
            let n = first & 0x7f;
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *der.get(at + 2 + i)? as usize;
            }
            (len, at + 2 + n)
        };
        let end = start.checked_add(len)?;
        (end <= der.len()).then_some((tag, start, end))
    };
    let (tag, mut at, _) = tlv(0)?;
    if tag != 0x30 {
        return None;
    }
    if let Some((0x02, _, version_end)) = tlv(at) {
        at = version_end;
    }
    let (tag, inner, _) = tlv(at)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, start, end) = tlv(inner)?;
    (tag == 0x06).then(|| &der[start..end])
}

impl PrivateKey {
    /// Create a new random key from the operating system's generator.
    pub fn generate() -> Self {
        PrivateKey(SigningKey::generate(&mut rand_core::OsRng))
    }

    /// Build a key from 32 secret bytes (tests and deterministic fixtures).
    pub fn from_bytes(secret: [u8; 32]) -> Self {
        PrivateKey(SigningKey::from_bytes(&secret))
    }

    /// Read a PKCS#8 PEM private key (v1 or v2).
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = read_key_file(path, "reading private key")?;
        SigningKey::from_pkcs8_pem(&text)
            .map(PrivateKey)
            .map_err(|e| KeyError::Parse {
                path: path.to_owned(),
                kind: "private key",
                detail: diagnose(&text, "PRIVATE KEY", e.to_string()),
            })
    }

    /// PKCS#8 v1 PEM, without the public key (OpenSSL 3 compatible).
    pub fn to_pem(&self) -> String {
        let bytes = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.0.to_bytes(),
            public_key: None,
        };
        bytes
            .to_pkcs8_pem(LineEnding::LF)
            .expect("encoding 32 bytes as PKCS#8 cannot fail")
            .to_string()
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Sign `data`; the result is the raw 64-byte signature.
    pub fn sign(&self, data: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(data).to_bytes()
    }

    /// Write the private key (mode 0600) and the public key next to it as `<path>.pub`
    /// unless `public_path` says otherwise. Refuses to overwrite unless `force`.
    pub fn write_pair(&self, private_path: &Path, public_path: &Path, force: bool) -> Result<(), KeyError> {
        if private_path == public_path {
            return Err(KeyError::SamePath(private_path.to_owned()));
        }
        for p in [private_path, public_path] {
            if !force && p.exists() {
                return Err(KeyError::Exists(p.to_owned()));
            }
        }
        for (path, text, mode) in [
            (private_path, self.to_pem(), 0o600),
            (public_path, self.public().to_pem(), 0o644),
        ] {
            write_file_atomic(path, text.as_bytes(), mode).map_err(|source| KeyError::Io {
                op: "writing key",
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(())
    }
}

impl PublicKey {
    /// Read an SPKI PEM public key.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = read_key_file(path, "reading public key")?;
        Self::from_pem(&text).map_err(|detail| KeyError::Parse {
            path: path.to_owned(),
            kind: "public key",
            detail: diagnose(&text, "PUBLIC KEY", detail),
        })
    }

    /// A raw 32-byte ed25519 public key in hex (how manifests announce a next key).
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let mut raw = [0u8; 32];
        hex::decode_to_slice(text, &mut raw).map_err(|_| "not 64 hex digits".to_string())?;
        VerifyingKey::from_bytes(&raw)
            .map(PublicKey)
            .map_err(|_| "not an ed25519 public key".to_string())
    }

    /// The raw key bytes in hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// Parse an SPKI PEM public key.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        VerifyingKey::from_public_key_pem(text)
            .map(PublicKey)
            .map_err(|e| e.to_string())
    }

    /// SPKI PEM text.
    pub fn to_pem(&self) -> String {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .expect("encoding a public key cannot fail")
    }

    /// The 32 raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// `sha256:<hex>` of the raw key bytes: how manifests and summaries name a key.
    pub fn fingerprint(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(self.0.as_bytes())))
    }

    /// Check a raw 64-byte signature over `data`.
    pub fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        let sig: [u8; SIGNATURE_LEN] = signature
            .try_into()
            .map_err(|_| KeyError::SignatureLength(signature.len()))?;
        self.0
            .verify(data, &Signature::from_bytes(&sig))
            .map_err(|_| KeyError::BadSignature {
                fingerprint: self.fingerprint(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pem_round_trip_and_signature() {
        let key = PrivateKey::from_bytes([7; 32]);
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        // PKCS#8 v1 ed25519: 48 bytes of DER, i.e. 64 base64 characters on one line.
        assert_eq!(pem.lines().nth(1).unwrap().len(), 64);
        let again = SigningKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(again.to_bytes(), [7; 32]);

        let public = key.public();
        let parsed = PublicKey::from_pem(&public.to_pem()).unwrap();
        assert_eq!(parsed, public);

        let sig = key.sign(b"manifest");
        public.verify(b"manifest", &sig).unwrap();
        assert!(matches!(
            public.verify(b"manifesT", &sig),
            Err(KeyError::BadSignature { .. })
        ));
        assert!(matches!(
            public.verify(b"manifest", &sig[..63]),
            Err(KeyError::SignatureLength(63))
        ));
    }

    #[test]
    fn write_pair_sets_modes_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = (dir.path().join("k.pem"), dir.path().join("k.pub"));
        let key = PrivateKey::from_bytes([1; 32]);
        key.write_pair(&private, &public, false).unwrap();
        let mode = fs::metadata(&private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            key.write_pair(&private, &public, false),
            Err(KeyError::Exists(_))
        ));
        key.write_pair(&private, &public, true).unwrap();
        assert_eq!(PrivateKey::read(&private).unwrap().public(), key.public());
        // `cairn keygen k.pub`: the public key beside it is the same file. Refused, and the
        // private key written before is not replaced by a public one.
        let e = key.write_pair(&public, &public, true).unwrap_err();
        assert!(matches!(e, KeyError::SamePath(_)), "{e}");
        assert_eq!(PublicKey::read(&public).unwrap(), key.public());
        assert_eq!(PublicKey::read(&public).unwrap(), key.public());
    }

    #[test]
    fn wrong_key_files_say_what_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let openssl = |args: &str, out: &str| {
            let ok = std::process::Command::new("openssl")
                .args(args.split_whitespace())
                .arg("-out")
                .arg(d.join(out))
                .status()
                .unwrap()
                .success();
            assert!(ok, "openssl {args}");
        };
        openssl("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024", "rsa.pem");
        openssl("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256", "ec.pem");
        openssl("genpkey -algorithm ed448", "ed448.pem");
        fs::write(d.join("empty.pem"), "").unwrap();
        fs::write(d.join("junk.pem"), "not a key\n").unwrap();
        fs::write(
            d.join("cert.pem"),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let key = PrivateKey::from_bytes([1; 32]);
        fs::write(d.join("pub.pem"), key.public().to_pem()).unwrap();
        fs::write(d.join("good.pem"), key.to_pem()).unwrap();
        for (file, want) in [
            ("rsa.pem", "it is an RSA key, and Cairn's keys are ed25519"),
            ("ec.pem", "it is an ECDSA key"),
            ("ed448.pem", "it is an Ed448 key"),
            ("empty.pem", "the file is empty"),
            ("junk.pem", "it is not PEM"),
            ("cert.pem", "it holds a PEM \"CERTIFICATE\", not a \"PRIVATE KEY\""),
            ("pub.pem", "it holds a PEM \"PUBLIC KEY\", not a \"PRIVATE KEY\""),
        ] {
            let e = PrivateKey::read(&d.join(file)).err().unwrap().to_string();
            assert!(e.contains(want), "{file}: {e}");
            assert!(!e.contains("NUL byte") && !e.contains("1.3.101.112"), "{file}: {e}");
        }
        let e = PublicKey::read(&d.join("good.pem")).unwrap_err().to_string();
        assert!(e.contains("not a \"PUBLIC KEY\""), "{e}");
        // A FIFO named as a key is refused, not read forever.
        assert!(std::process::Command::new("mkfifo")
            .arg(d.join("fifo"))
            .status()
            .unwrap()
            .success());
        let e = PrivateKey::read(&d.join("fifo")).err().unwrap().to_string();
        assert!(e.contains("reading private key"), "{e}");
        assert!(PrivateKey::read(&d.join("good.pem")).is_ok());
    }

    #[test]
    fn reading_garbage_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.pem");
        fs::write(&path, "not a key").unwrap();
        let err = PrivateKey::read(&path).err().unwrap().to_string();
        assert!(err.contains("cairn keygen"), "{err}");
    }
}
