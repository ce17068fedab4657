//! GUIDs (UUIDs) as Cairn uses them: text form, GPT's mixed-endian byte form, and
//! derivation from build inputs so that no identifier in an image is random.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// A 128-bit identifier held in *text order*: the bytes as they appear, pair by pair, in
/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`. This is also systemd's `sd_id128_t` order, so
/// the first 16 bytes of a root hash are a valid partition UUID as they are.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The all-zero GUID (an unused GPT entry).
    pub const NIL: Guid = Guid([0; 16]);

    /// A stable version-4-shaped GUID from a purpose string and seed bytes. Different
    /// purposes never collide for the same seed.
    pub fn derive(purpose: &str, seed: &[u8]) -> Guid {
        let mut h = Sha256::new();
        h.update(b"cairn guid v1\0");
        h.update(purpose.as_bytes());
        h.update([0]);
        h.update(seed);
        let d = h.finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        b[6] = (b[6] & 0x0f) | 0x40; // version 4
        b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
        Guid(b)
    }

    /// GPT's on-disk form: the first three fields little endian, the rest as is.
    pub fn to_gpt_bytes(self) -> [u8; 16] {
        let b = self.0;
        [
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15],
        ]
    }

    /// Inverse of [`Guid::to_gpt_bytes`].
    pub fn from_gpt_bytes(g: [u8; 16]) -> Guid {
        // The swap is its own inverse.
        Guid(Guid(g).to_gpt_bytes())
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A GUID string that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a GUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")]
pub struct BadGuid(pub String);

impl FromStr for Guid {
    type Err = BadGuid;
    fn from_str(s: &str) -> Result<Self, BadGuid> {
        let dashes: Vec<usize> = s.match_indices('-').map(|(i, _)| i).collect();
        if s.len() != 36 || dashes != [8, 13, 18, 23] {
            return Err(BadGuid(s.into()));
        }
        let compact: String = s.chars().filter(|&c| c != '-').collect();
        let mut b = [0u8; 16];
        hex::decode_to_slice(&compact, &mut b).map_err(|_| BadGuid(s.into()))?;
        Ok(Guid(b))
    }
}

/// Parse a constant GUID; panics on a typo, which tests catch.
pub fn guid(s: &str) -> Guid {
    s.parse().expect("constant GUID")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_gpt_forms() {
        let esp = guid("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(esp.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        // The ESP type as it sits on disk (UEFI spec, mixed endian).
        assert_eq!(
            esp.to_gpt_bytes(),
            [0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b]
        );
        assert_eq!(Guid::from_gpt_bytes(esp.to_gpt_bytes()), esp);
    }

    #[test]
    fn derivation_is_stable_and_v4_shaped() {
        let a = Guid::derive("disk", b"seed");
        assert_eq!(a, Guid::derive("disk", b"seed"));
        assert_ne!(a, Guid::derive("esp", b"seed"));
        let s = a.to_string();
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn bad_text_is_refused() {
        for bad in [
            "",
            "c12a7328f81f11d2ba4b00a0c93ec93b",
            "g12a7328-f81f-11d2-ba4b-00a0c93ec93b",
        ] {
            assert!(bad.parse::<Guid>().is_err(), "{bad}");
        }
    }
}
