//! The fuzz targets' bodies (`fuzz/fuzz_targets/token.rs`, `audit_log.rs`), here so that the
//! unit tests run them on every test run with seeds and mutations, and `cargo fuzz` goes
//! further. Each checks an invariant, not just the absence of a panic.

use crate::audit;
use crate::token::{Token, TOKEN_LEN};

/// A token typed by anyone: whatever parses prints back as itself, 46 characters, and
/// parses again to the same token.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Token::parse(text) {
        let printed = t.to_string();
        assert_eq!(printed.len(), TOKEN_LEN, "{printed}");
        assert_eq!(Token::parse(&printed).as_ref(), Ok(&t));
        assert!(!format!("{t:?}").contains(&printed[15..41]), "Debug shows the secret");
    }
}

/// An audit log from disk: whatever verifies has one record per line, and sealing the
/// records again gives the same text.
pub fn audit_log(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((records, last)) = audit::verify(text) {
        let mut prev = audit::GENESIS;
        let mut again = String::new();
        for r in records {
            let line = audit::seal(r, &prev);
            prev = audit::line_hash(&line);
            again.push_str(&line);
            again.push('\n');
        }
        assert_eq!(again, text);
        assert_eq!(prev, last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{seal, Outcome, Record};
    use crate::token::tests::TestRng;

    /// Seeds cut at every length, with bytes flipped and newlines, NULs and quotes put in.
    fn mutations(seed: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for cut in 0..=seed.len() {
            out.push(seed[..cut].to_vec());
        }
        for i in 0..seed.len() {
            for b in [b'\n', 0, b'"', b'.', b'-', seed[i] ^ 0x20, seed[i].wrapping_add(1)] {
                let mut m = seed.to_vec();
                m[i] = b;
                out.push(m);
            }
        }
        out
    }

    #[test]
    fn tokens_and_their_mutations() {
        let mut rng = TestRng(3);
        let mut n = 0;
        for _ in 0..20 {
            let t = Token::generate(&mut rng).to_string();
            for m in mutations(t.as_bytes())
                .into_iter()
                .chain([t.to_lowercase().into_bytes()])
            {
                token(&m);
                n += 1;
            }
        }
        assert!(n > 5_000, "{n}");
    }

    #[test]
    fn audit_logs_and_their_mutations() {
        let mut prev = audit::GENESIS;
        let mut text = String::new();
        for i in 0..3 {
            let line = seal(
                Record::new(i, "admin", "token:6QZ4B2K9TD", "enroll", Outcome::Refused),
                &prev,
            );
            prev = audit::line_hash(&line);
            text.push_str(&line);
            text.push('\n');
        }
        for m in mutations(text.as_bytes()) {
            audit_log(&m);
        }
        audit_log(text.as_bytes());
    }
}
