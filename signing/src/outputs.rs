//! `outputs.json`: the files of one build beside its disk image and manifest (the SBOM,
//! and the other forms of the disk image: a bmap, a zstd-compressed raw image, a qcow2),
//! each with its size and sha256, signed like the manifest.
//!
//! Why a second signed file and not more fields in `manifest.json`: the manifest travels
//! inside every update bundle, and nodes refuse a manifest with fields they do not know
//! (it is data Cairn itself writes). Listing flashing formats there would make a build
//! that asked for a bmap impossible to install on the nodes already in the field. So the
//! manifest stays what nodes read, and this file binds the extra outputs to it by the
//! manifest's sha256: a verifier checks the manifest, then this file's signature, then
//! that it names this manifest, then each file.

use serde::{Deserialize, Serialize};

use crate::keys::{KeyError, PublicKey};

/// The `outputs.json` format this crate writes and reads.
pub const FORMAT: u32 = 1;
/// Its file name in a build directory.
pub const FILE: &str = "outputs.json";
/// The raw ed25519 signature over its bytes.
pub const SIGNATURE_FILE: &str = "outputs.json.sig";

/// Errors reading `outputs.json`.
#[derive(Debug, thiserror::Error)]
pub enum OutputsError {
    /// The signature check failed: nothing in the file can be trusted.
    #[error("outputs.json signature check failed")]
    Signature(#[source] KeyError),
    /// Signed, but not a file this version understands.
    #[error("outputs.json is signed but malformed")]
    Parse(#[source] serde_json::Error),
    /// A format from another Cairn.
    #[error("outputs.json format {0} is not supported (this Cairn reads format {FORMAT})")]
    Format(u32),
}

/// The extra outputs of one build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Outputs {
    /// [`FORMAT`].
    pub format: u32,
    /// sha256 (hex) of the `manifest.json` bytes these outputs belong to.
    pub manifest_sha256: String,
    /// One entry per file, in the order they were written.
    pub files: Vec<OutputFile>,
}

/// One output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OutputFile {
    /// File name inside the build directory (no directories).
    pub file: String,
    /// What it is: `spdx`, `bmap`, `raw.zst`, `qcow2`.
    pub format: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the whole file (hex).
    pub sha256: String,
}

impl Outputs {
    /// The exact bytes that are signed: pretty JSON with a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("outputs always serialize");
        out.push(b'\n');
        out
    }

    /// Check `signature` over `bytes` with `key`, then parse. Nothing is parsed before
    /// the signature holds. A file name that is not a plain name is refused as malformed.
    pub fn from_signed(bytes: &[u8], signature: &[u8], key: &PublicKey) -> Result<Self, OutputsError> {
        use crate::manifest::{from_signed_json, ManifestError};
        let o: Outputs = from_signed_json(bytes, signature, key, FORMAT).map_err(|e| match e {
            ManifestError::Signature(e) => OutputsError::Signature(e),
            ManifestError::Parse(e) => OutputsError::Parse(e),
            ManifestError::Format(f) => OutputsError::Format(f),
        })?;
        if let Some(bad) = o.files.iter().find(|f| !plain_name(&f.file)) {
            return Err(OutputsError::Parse(serde::de::Error::custom(format!(
                "file {:?} is not a plain file name",
                bad.file
            ))));
        }
        Ok(o)
    }
}

/// A name that stays inside its directory: no separators, not `.` or `..`, no control
/// characters.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn sample(file: &str) -> Outputs {
        Outputs {
            format: FORMAT,
            manifest_sha256: "ab".repeat(32),
            files: vec![OutputFile {
                file: file.into(),
                format: "bmap".into(),
                size: 812,
                sha256: "cd".repeat(32),
            }],
        }
    }

    #[test]
    fn signed_round_trip_tamper_and_names() {
        let key = PrivateKey::from_bytes([7; 32]);
        let bytes = sample("disk.raw.bmap").to_bytes();
        let sig = key.sign(&bytes);
        assert_eq!(
            Outputs::from_signed(&bytes, &sig, &key.public()).unwrap(),
            sample("disk.raw.bmap")
        );
        let mut bad = bytes.clone();
        let at = bad.len() / 2;
        bad[at] ^= 1;
        assert!(matches!(
            Outputs::from_signed(&bad, &sig, &key.public()),
            Err(OutputsError::Signature(_))
        ));
        // Even signed, a name that leaves the directory is refused.
        for name in ["../disk.raw", "a/b", "..", "", "x\ny"] {
            let b = sample(name).to_bytes();
            let err = Outputs::from_signed(&b, &key.sign(&b), &key.public()).unwrap_err();
            assert!(matches!(err, OutputsError::Parse(_)), "{name:?}: {err:?}");
        }
        let mut other = sample("disk.raw.bmap");
        other.format = 2;
        let b = other.to_bytes();
        assert!(matches!(
            Outputs::from_signed(&b, &key.sign(&b), &key.public()),
            Err(OutputsError::Format(2))
        ));
    }
}
