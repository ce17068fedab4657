//! Bootstrap tokens: what a config drive carries so a new node can enroll once.
//!
//! ```text
//! ck1.6QZ4B2K9TD.VX3Q7M2K4P8R1C6J9W5T2N7H3F-4JPG
//! ^^^ ^^^^^^^^^^ ^^^^^^^^^^^^^^^^^^^^^^^^^^ ^^^^
//! |   public id  secret: 26 characters,     check: 20 bits of sha256 over
//! |   (50 bits)  130 bits                   "ck1.<id>.<secret>"
//! format
//! ```
//!
//! Every part is Crockford base32 (`0-9 A-Z` without `I L O U`), so a token survives being
//! read aloud, typed from paper or scanned: lower case is read as upper case, `I` and `L`
//! as `1`, `O` as `0`. The check characters catch a mistyped character before anything is
//! sent (Homeworld kept two characters of a hash for this; these are four). The id names
//! the token in the keyserver's records and its audit log; the secret is stored there only
//! as a hash ([`Token::secret_hash`]) and compared in constant time ([`Token::matches`]).
//! The `ck1.` prefix makes a leaked token easy to find with grep.

use std::fmt;

use rand_core::RngCore;
use sha2::{Digest, Sha256};

/// The format this code writes and reads.
pub const PREFIX: &str = "ck1";
/// Characters of the public id.
pub const ID_LEN: usize = 10;
/// Characters of the secret.
pub const SECRET_LEN: usize = 26;
/// Characters of the check.
pub const CHECK_LEN: usize = 4;
/// The length of a whole token: `ck1.` id `.` secret `-` check.
pub const TOKEN_LEN: usize = PREFIX.len() + 1 + ID_LEN + 1 + SECRET_LEN + 1 + CHECK_LEN;

/// Crockford's base32 alphabet.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Why a text is not a usable token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Nothing was given.
    #[error("the token is empty")]
    Empty,
    /// Not a Cairn token at all.
    #[error("this is not a Cairn bootstrap token (they start with \"ck1.\")")]
    NotAToken,
    /// A Cairn token of a format this code does not read.
    #[error("token format \"{0}\" is not one this Cairn reads (it reads ck1)")]
    Version(String),
    /// The parts have the wrong lengths or separators.
    #[error("a token is ck1.<10 characters>.<26 characters>-<4 characters>, {TOKEN_LEN} characters in all; this one is {0} characters")]
    Shape(usize),
    /// A character that is not in the alphabet.
    #[error("character {at} ({}) cannot be in a token: tokens hold 0-9 and A-Z without U", .ch.escape_debug())]
    Char {
        /// 1-based position in the text.
        at: usize,
        /// The character.
        ch: char,
    },
    /// The check characters do not match the rest.
    #[error("the token's last four characters do not match the rest: a character was mistyped or lost; copy the token again from `cairn token create`")]
    Typo,
}

/// A bootstrap token, its parts normalized to upper-case Crockford base32.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    id: String,
    secret: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({PREFIX}.{}.…)", self.id)
    }
}

impl fmt::Display for Token {
    /// The whole token, secret included: only for the one place it is handed to a person or
    /// written to a drive.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}.{}.{}-{}",
            self.id,
            self.secret,
            check(&self.id, &self.secret)
        )
    }
}

fn random_chars(rng: &mut dyn RngCore, n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rng.fill_bytes(&mut bytes);
    // 256 is a multiple of 32, so the low five bits of a uniform byte are uniform.
    bytes.iter().map(|b| ALPHABET[usize::from(b & 31)] as char).collect()
}

/// The four check characters of an id and a secret.
fn check(id: &str, secret: &str) -> String {
    let digest = Sha256::digest(format!("{PREFIX}.{id}.{secret}").as_bytes());
    let bits = (u32::from(digest[0]) << 16 | u32::from(digest[1]) << 8 | u32::from(digest[2])) >> 4;
    (0..CHECK_LEN)
        .map(|i| ALPHABET[((bits >> (5 * (CHECK_LEN - 1 - i))) & 31) as usize] as char)
        .collect()
}

/// One character read as Crockford base32 reads it, or `None` if it cannot be one.
fn fold(c: char) -> Option<char> {
    let c = c.to_ascii_uppercase();
    match c {
        'I' | 'L' => Some('1'),
        'O' => Some('0'),
        'U' => None,
        '0'..='9' | 'A'..='Z' => Some(c),
        _ => None,
    }
}

impl Token {
    /// A new token from `rng` (the operating system's generator in production).
    pub fn generate(rng: &mut dyn RngCore) -> Token {
        Token {
            id: random_chars(rng, ID_LEN),
            secret: random_chars(rng, SECRET_LEN),
        }
    }

    /// Read a token as a person or a file gives it: surrounding white space is ignored,
    /// look-alike characters are folded, and the check characters must match.
    pub fn parse(text: &str) -> Result<Token, TokenError> {
        let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
        if t.is_empty() {
            return Err(TokenError::Empty);
        }
        let Some((version, rest)) = t.split_once('.') else {
            return Err(TokenError::NotAToken);
        };
        if !version.eq_ignore_ascii_case(PREFIX) {
            let v = version.to_ascii_lowercase();
            return Err(if v.len() <= 4 && v.starts_with("ck") {
                TokenError::Version(version.escape_debug().to_string())
            } else {
                TokenError::NotAToken
            });
        }
        let shape = || TokenError::Shape(t.chars().count());
        let (id, rest) = rest.split_once('.').ok_or_else(shape)?;
        let (secret, given_check) = rest.split_once('-').ok_or_else(shape)?;
        if id.len() != ID_LEN || secret.len() != SECRET_LEN || given_check.len() != CHECK_LEN {
            return Err(shape());
        }
        // Positions are counted in the trimmed text, which is what a person compares.
        let mut at = PREFIX.len() + 1;
        let mut normalize = |part: &str| -> Result<String, TokenError> {
            let mut out = String::with_capacity(part.len());
            for ch in part.chars() {
                at += 1;
                out.push(fold(ch).ok_or(TokenError::Char { at, ch })?);
            }
            at += 1; // the separator after the part
            Ok(out)
        };
        let id = normalize(id)?;
        let secret = normalize(secret)?;
        let given_check = normalize(given_check)?;
        if check(&id, &secret) != given_check {
            return Err(TokenError::Typo);
        }
        Ok(Token { id, secret })
    }

    /// The public id: names the token in records, logs and the audit trail.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the keyserver stores instead of the secret: a hash bound to the id, so a stored
    /// hash is no use with another token's id.
    pub fn secret_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"cairn bootstrap token v1\0");
        h.update(self.id.as_bytes());
        h.update(b"\0");
        h.update(self.secret.as_bytes());
        h.finalize().into()
    }

    /// Whether this token's secret is the one `stored` is the hash of, compared in constant
    /// time.
    pub fn matches(&self, stored: &[u8; 32]) -> bool {
        let mine = self.secret_hash();
        mine.iter().zip(stored).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// Whether `id` has the shape of a token id (what records and command lines name tokens by).
pub fn valid_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| ALPHABET.contains(&b))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deterministic generator for tests: xorshift64*.
    pub(crate) struct TestRng(pub u64);

    impl RngCore for TestRng {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for chunk in dest.chunks_mut(8) {
                let v = self.next_u64().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    fn sample(n: u64) -> Vec<Token> {
        let mut rng = TestRng(0x9E37_79B9_7F4A_7C15);
        (0..n).map(|_| Token::generate(&mut rng)).collect()
    }

    #[test]
    fn a_token_reads_back_as_itself() {
        for t in sample(50) {
            let text = t.to_string();
            assert_eq!(text.len(), TOKEN_LEN);
            assert!(text.starts_with("ck1."));
            assert_eq!(Token::parse(&text).unwrap(), t);
            assert_eq!(Token::parse(&format!("  {text}\n")).unwrap(), t, "white space around");
            assert!(valid_id(t.id()));
        }
    }

    #[test]
    fn the_documented_example_is_a_token() {
        let t = Token::parse("ck1.6QZ4B2K9TD.VX3Q7M2K4P8R1C6J9W5T2N7H3F-4JPG").unwrap();
        assert_eq!(t.id(), "6QZ4B2K9TD");
    }

    #[test]
    fn look_alikes_and_lower_case_are_folded() {
        let t = sample(1).remove(0);
        let text = t.to_string();
        assert_eq!(Token::parse(&text.to_lowercase()).unwrap(), t);
        // Write every 1 as l or I and every 0 as O: the same token.
        let typed: String = text
            .chars()
            .enumerate()
            .map(|(i, c)| match (i < 4, c) {
                (false, '1') if i % 2 == 0 => 'l',
                (false, '1') => 'I',
                (false, '0') => 'O',
                (_, c) => c,
            })
            .collect();
        assert_eq!(Token::parse(&typed).unwrap(), t, "{typed}");
    }

    #[test]
    fn every_mistyped_character_and_swap_is_caught() {
        let mut substitutions = 0;
        for t in sample(40) {
            let text: Vec<char> = t.to_string().chars().collect();
            for i in 4..text.len() {
                if text[i] == '.' || text[i] == '-' {
                    continue;
                }
                for &b in ALPHABET {
                    let c = b as char;
                    if c == text[i] {
                        continue;
                    }
                    let mut typo = text.clone();
                    typo[i] = c;
                    let typo: String = typo.into_iter().collect();
                    assert!(Token::parse(&typo).is_err(), "{typo} was taken for {t}");
                    substitutions += 1;
                }
                if i + 1 < text.len() && text[i] != text[i + 1] && text[i + 1] != '.' && text[i + 1] != '-' {
                    let mut swapped = text.clone();
                    swapped.swap(i, i + 1);
                    let swapped: String = swapped.into_iter().collect();
                    assert_eq!(Token::parse(&swapped), Err(TokenError::Typo), "{swapped}");
                }
            }
        }
        assert!(substitutions > 40_000, "{substitutions}");
    }

    #[test]
    fn bad_text_is_refused_with_its_reason() {
        let good = sample(1).remove(0).to_string();
        let cases: Vec<(String, TokenError)> = vec![
            (String::new(), TokenError::Empty),
            ("   \n".into(), TokenError::Empty),
            ("hunter2hunter2hunter2".into(), TokenError::NotAToken),
            (good.replacen("ck1", "ck2", 1), TokenError::Version("ck2".into())),
            (good.replacen("ck1.", "xyz.", 1), TokenError::NotAToken),
            (good[..good.len() - 1].to_string(), TokenError::Shape(TOKEN_LEN - 1)),
            (format!("{good}X"), TokenError::Shape(TOKEN_LEN + 1)),
            (good.replace('-', "."), TokenError::Shape(TOKEN_LEN)),
            (
                format!("{}U{}", &good[..4], &good[5..]),
                TokenError::Char { at: 5, ch: 'U' },
            ),
            (
                format!("{}\0{}", &good[..20], &good[21..]),
                TokenError::Char { at: 21, ch: '\0' },
            ),
            (
                format!("{}\n{}", &good[..20], &good[21..]),
                TokenError::Char { at: 21, ch: '\n' },
            ),
            (format!("{}é{}", &good[..20], &good[21..]), TokenError::Shape(TOKEN_LEN)),
        ];
        for (text, want) in cases {
            assert_eq!(Token::parse(&text), Err(want.clone()), "{:?}", text);
            assert!(!want.to_string().is_empty());
        }
        let e = TokenError::Char { at: 21, ch: '\0' }.to_string();
        assert!(e.contains("\\0"), "a NUL is shown escaped: {e}");
    }

    #[test]
    fn the_stored_hash_matches_only_its_own_token() {
        let mut tokens = sample(3);
        let stored = tokens[0].secret_hash();
        assert!(tokens[0].matches(&stored));
        assert!(!tokens[1].matches(&stored));
        // The same secret under another id does not match either.
        let moved = Token {
            id: tokens[1].id.clone(),
            secret: tokens.remove(0).secret,
        };
        assert!(!moved.matches(&stored));
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let t = sample(1).remove(0);
        let d = format!("{t:?}");
        assert!(d.contains(t.id()) && !d.contains(&t.secret), "{d}");
    }

    #[test]
    fn generated_tokens_differ() {
        let tokens = sample(1000);
        let ids: std::collections::BTreeSet<&str> = tokens.iter().map(|t| t.id()).collect();
        assert_eq!(ids.len(), tokens.len());
    }
}
