//! The keyserver's audit log: one JSON line per decision, refusals included, each carrying
//! the sha256 of the line before it, so a line changed, removed or inserted later breaks
//! the chain at that place ([`verify`] names the line).
//!
//! Secrets never reach it: a record has no field for one, and tokens appear by their public
//! id only. JSON escapes control characters, so a node name or an address with a newline in
//! it cannot make a second line.
//!
//! ```text
//! {"ts":1800000000,"replica":"admin","actor":"token:6QZ4B2K9TD","action":"enroll","result":"ok","node":"cp-1","serials":["5f…"],"prev":"0000…"}
//! {"ts":1800000007,"replica":"admin","actor":"token:6QZ4B2K9TD","action":"enroll","result":"alert","code":"token_used","node":"cp-1","client":"192.0.2.9:50412","prev":"9c1e…"}
//! ```

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What came of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Refused, as the rules say (an expired token, a wrong role).
    Refused,
    /// Refused, and someone should look: a replayed token, a cloned identity.
    Alert,
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// When, in Unix seconds.
    pub ts: u64,
    /// Which keyserver process decided.
    pub replica: String,
    /// Who asked: `admin:<user>`, `token:<id>`, `node:<name>`.
    pub actor: String,
    /// What was asked: `token-create`, `enroll`, `renew`, …
    pub action: String,
    /// What came of it.
    pub result: Outcome,
    /// The error code of a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The node concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The id of the token concerned (never its secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Serial numbers of certificates issued.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serials: Vec<String>,
    /// The client's address, for network requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// sha256 (hex) of the previous line, without its newline; zeros for the first.
    #[serde(default)]
    pub prev: String,
}

impl Record {
    /// A record of `action` by `actor` at `ts`, with nothing else filled in.
    pub fn new(ts: u64, replica: &str, actor: &str, action: &str, result: Outcome) -> Record {
        Record {
            ts,
            replica: replica.to_string(),
            actor: actor.to_string(),
            action: action.to_string(),
            result,
            code: None,
            node: None,
            token: None,
            serials: Vec::new(),
            client: None,
            prev: String::new(),
        }
    }
}

/// The hash that starts a chain.
pub const GENESIS: [u8; 32] = [0; 32];

/// The hash the next line carries as `prev`.
pub fn line_hash(line: &str) -> [u8; 32] {
    Sha256::digest(line.as_bytes()).into()
}

/// The line for `record` after a line whose hash is `prev` (no newline). The caller
/// appends it and a newline, and keeps [`line_hash`] of it for the next one.
pub fn seal(mut record: Record, prev: &[u8; 32]) -> String {
    record.prev = hex::encode(prev);
    serde_json::to_string(&record).expect("a record always serializes")
}

/// Where a log stops being trustworthy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit log line {line}: {why}")]
pub struct AuditError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong there.
    pub why: String,
}

/// Check a whole log: every line a record, every `prev` the hash of the line before.
/// Returns the records and the hash of the last line (to go on appending).
pub fn verify(text: &str) -> Result<(Vec<Record>, [u8; 32]), AuditError> {
    let mut prev = GENESIS;
    let mut records = Vec::new();
    if text.is_empty() {
        return Ok((records, prev));
    }
    let Some(body) = text.strip_suffix('\n') else {
        return Err(AuditError {
            line: text.lines().count(),
            why: "the last line is cut off (no newline)".into(),
        });
    };
    for (i, line) in body.split('\n').enumerate() {
        let at = |why: String| AuditError { line: i + 1, why };
        let record: Record = serde_json::from_str(line).map_err(|e| at(format!("not an audit record ({e})")))?;
        if record.prev != hex::encode(prev) {
            return Err(at(format!(
                "it follows a line whose hash is not {}: a line before it was changed, removed or inserted",
                record.prev
            )));
        }
        // The line must be exactly what sealing the record gives, so nothing can hide in
        // white space or key order.
        if seal(record.clone(), &prev) != line {
            return Err(at("it is not in the form the keyserver writes".into()));
        }
        prev = line_hash(line);
        records.push(record);
    }
    Ok((records, prev))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: usize) -> String {
        let mut prev = GENESIS;
        let mut text = String::new();
        for i in 0..n {
            let mut r = Record::new(
                1_800_000_000 + i as u64,
                "admin",
                "token:6QZ4B2K9TD",
                "enroll",
                Outcome::Ok,
            );
            r.node = Some(format!("cp-{i}"));
            r.serials = vec![format!("{i:032x}")];
            let line = seal(r, &prev);
            prev = line_hash(&line);
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    #[test]
    fn a_sealed_log_verifies() {
        let text = log(20);
        let (records, last) = verify(&text).unwrap();
        assert_eq!(records.len(), 20);
        assert_eq!(last, line_hash(text.lines().last().unwrap()));
        assert_eq!(verify("").unwrap().0.len(), 0);
    }

    #[test]
    fn a_changed_byte_is_found_at_its_line() {
        let text = log(10);
        let lines: Vec<&str> = text.lines().collect();
        let offset: usize = lines[..4].iter().map(|l| l.len() + 1).sum();
        // Every byte of line 5 that keeps it valid JSON: flip it and the chain breaks at 5
        // (the record no longer seals to itself) or at 6 (its hash no longer matches).
        for i in 0..lines[4].len() {
            let mut bytes = text.clone().into_bytes();
            let b = bytes[offset + i];
            bytes[offset + i] = if b.is_ascii_digit() {
                b'0' + (b - b'0' + 1) % 10
            } else {
                b ^ 0x01
            };
            let Ok(changed) = String::from_utf8(bytes) else {
                continue;
            };
            let e = verify(&changed).unwrap_err();
            assert!(e.line == 5 || e.line == 6, "byte {i}: {e}");
        }
    }

    #[test]
    fn removed_inserted_and_cut_lines_are_found() {
        let text = log(6);
        let lines: Vec<&str> = text.lines().collect();
        let without_3: String = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        assert_eq!(verify(&without_3).unwrap_err().line, 3);
        let doubled: String = lines.iter().chain([&lines[5]]).map(|l| format!("{l}\n")).collect();
        assert_eq!(verify(&doubled).unwrap_err().line, 7);
        assert!(verify(&text[..text.len() - 1]).unwrap_err().why.contains("cut off"));
        let reformatted = text.replacen("\"ts\":", "\"ts\": ", 1);
        assert_eq!(verify(&reformatted).unwrap_err().line, 1);
    }

    #[test]
    fn hostile_values_stay_on_one_line() {
        let mut r = Record::new(1, "admin", "token:X", "enroll", Outcome::Alert);
        r.node = Some("cp-1\n{\"ts\":0}".into());
        r.client = Some("\0\r\u{2028}".into());
        let line = seal(r.clone(), &GENESIS);
        assert!(
            !line.contains('\n') && !line.contains('\r') && !line.contains('\0'),
            "{line}"
        );
        let (records, _) = verify(&format!("{line}\n")).unwrap();
        assert_eq!(records[0].node, r.node);
    }
}
