//! `manifest.json`: what one build produced, signed as exact bytes.
//!
//! The manifest names the image, whether it is a release or a development build, its
//! dm-verity root hash and salt, the partition table, the disk image's data (its non-zero
//! ranges, each with a sha256; every other byte is zero: see `cairn_disk::extents`) and
//! the sha256 of each payload inside it (root filesystem, verity tree, UKI) with its
//! byte range in the disk. `manifest.json.sig` is the raw
//! ed25519 signature over the manifest file's bytes, so a verifier checks the signature
//! first and only then parses the JSON.
//!
//! The schema is versioned by `format`; readers refuse formats they do not know and
//! unknown keys, because a manifest is data Cairn itself writes.

use serde::{Deserialize, Serialize};

use crate::keys::{KeyError, PublicKey};

/// The manifest format this crate writes and reads. Format 2 (Cairn 0.2) describes the
/// disk by its data ranges instead of one whole-file sha256, and names the build kind.
pub const FORMAT: u32 = 2;

/// Errors reading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The signature check failed: nothing in the manifest can be trusted.
    #[error("manifest signature check failed")]
    Signature(#[source] KeyError),
    /// Signed, but not a manifest this version understands.
    #[error("manifest is signed but malformed")]
    Parse(#[source] serde_json::Error),
    /// A format from a newer (or older) Cairn.
    #[error(
        "manifest format {0} is not supported (this Cairn reads format {FORMAT}; rebuild the image with this Cairn)"
    )]
    Format(u32),
}

/// One built image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Manifest {
    /// Manifest schema version ([`FORMAT`]).
    pub format: u32,
    /// Image name from the definition.
    pub name: String,
    /// Image version from the definition.
    pub version: String,
    /// CPU architecture (`x86-64`).
    pub architecture: String,
    /// A release build, or a development build (`cairn build --dev`) never to be published.
    pub build: BuildKind,
    /// The timestamp every file and filesystem in the image carries (seconds since 1970).
    pub source_date_epoch: u64,
    /// dm-verity root hash of the active slot (hex).
    pub root_hash: String,
    /// dm-verity salt (hex).
    pub verity_salt: String,
    /// Fingerprint of the key that signed this manifest and is baked into the image.
    pub signing_key: String,
    /// Whether that key is the per-machine development key.
    pub development_key: bool,
    /// The disk image file.
    pub disk: Disk,
    /// The GPT partition table, in table order.
    pub partitions: Vec<PartitionEntry>,
    /// Byte ranges inside the disk image, each with its own hash.
    pub payloads: Vec<Payload>,
}

/// The disk image file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Disk {
    /// File name inside the output directory.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// The GPT disk GUID.
    pub guid: String,
    /// Where the file holds data, in increasing order; every byte outside is zero.
    pub data: Vec<DataRange>,
}

/// A range of the disk image that holds data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DataRange {
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
    /// sha256 of the range (hex).
    pub sha256: String,
}

/// What kind of build made an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuildKind {
    /// The definition's compression; what gets published.
    Release,
    /// `cairn build --dev`: fast compression for an edit-build-boot loop.
    Development,
}

impl BuildKind {
    /// `release` or `development`.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildKind::Release => "release",
            BuildKind::Development => "development",
        }
    }
}

/// One GPT partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PartitionEntry {
    /// 1-based partition number.
    pub number: u32,
    /// GPT partition name.
    pub label: String,
    /// Partition type GUID.
    pub type_guid: String,
    /// Unique partition GUID.
    pub uuid: String,
    /// Byte offset of the partition in the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// GPT attribute bits.
    pub attributes: u64,
}

/// A byte range in the disk image with its own hash (root filesystem, verity tree, UKI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Payload {
    /// `root`, `verity` or `uki`.
    pub name: String,
    /// Byte offset in the disk image.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
    /// sha256 of the range (hex).
    pub sha256: String,
}

impl Manifest {
    /// The exact bytes that are signed: pretty JSON with a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        out.push(b'\n');
        out
    }

    /// Check `signature` over `bytes` with `key`, then parse. Nothing is parsed before
    /// the signature holds.
    pub fn from_signed(bytes: &[u8], signature: &[u8], key: &PublicKey) -> Result<Self, ManifestError> {
        from_signed_json(bytes, signature, key, FORMAT)
    }

    /// The payload called `name`, if any.
    pub fn payload(&self, name: &str) -> Option<&Payload> {
        self.payloads.iter().find(|p| p.name == name)
    }
}

/// Check `signature` over `bytes` with `key`, then the JSON's `format` against `format`,
/// then parse: nothing is parsed before the signature holds, and a document of another
/// format is named by its format, not as malformed. Shared by Cairn's signed JSON files.
pub(crate) fn from_signed_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    signature: &[u8],
    key: &PublicKey,
    format: u32,
) -> Result<T, ManifestError> {
    key.verify(bytes, signature).map_err(ManifestError::Signature)?;
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let f: Format = serde_json::from_slice(bytes).map_err(ManifestError::Parse)?;
    if f.format != format {
        return Err(ManifestError::Format(f.format));
    }
    serde_json::from_slice(bytes).map_err(ManifestError::Parse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT,
            name: "node".into(),
            version: "1.0.0".into(),
            architecture: "x86-64".into(),
            build: BuildKind::Release,
            source_date_epoch: 1_700_000_000,
            root_hash: "ab".repeat(32),
            verity_salt: "cd".repeat(32),
            signing_key: "sha256:00".into(),
            development_key: false,
            disk: Disk {
                file: "disk.raw".into(),
                size: 1 << 30,
                guid: "00000000-0000-0000-0000-000000000000".into(),
                data: vec![DataRange {
                    offset: 0,
                    size: 4096,
                    sha256: "ef".repeat(32),
                }],
            },
            partitions: vec![],
            payloads: vec![Payload {
                name: "root".into(),
                offset: 1 << 20,
                size: 4096,
                sha256: "01".repeat(32),
            }],
        }
    }

    #[test]
    fn signed_round_trip_and_tamper() {
        let key = PrivateKey::from_bytes([9; 32]);
        let bytes = sample().to_bytes();
        let sig = key.sign(&bytes);
        let back = Manifest::from_signed(&bytes, &sig, &key.public()).unwrap();
        assert_eq!(back, sample());
        assert_eq!(back.payload("root").unwrap().size, 4096);

        let mut tampered = bytes.clone();
        let at = tampered.len() / 2;
        tampered[at] ^= 1;
        assert!(matches!(
            Manifest::from_signed(&tampered, &sig, &key.public()),
            Err(ManifestError::Signature(_))
        ));
        let other = PrivateKey::from_bytes([8; 32]).public();
        assert!(Manifest::from_signed(&bytes, &sig, &other).is_err());
    }

    #[test]
    fn unknown_format_is_refused_even_when_signed() {
        let key = PrivateKey::from_bytes([9; 32]);
        let mut m = sample();
        m.format = 99;
        let bytes = m.to_bytes();
        let err = Manifest::from_signed(&bytes, &key.sign(&bytes), &key.public()).unwrap_err();
        assert!(matches!(err, ManifestError::Format(99)));
        // A format-1 manifest (whole-disk sha256, no build kind) is named by its format.
        let old = br#"{"format": 1, "name": "node", "disk": {"sha256": "00"}}"#;
        let err = Manifest::from_signed(old, &key.sign(old), &key.public()).unwrap_err();
        assert!(matches!(err, ManifestError::Format(1)), "{err:?}");
        let dev = String::from_utf8(sample_dev().to_bytes()).unwrap();
        assert!(dev.contains(r#""build": "development""#), "{dev}");
    }

    fn sample_dev() -> Manifest {
        Manifest {
            build: BuildKind::Development,
            ..sample()
        }
    }
}
