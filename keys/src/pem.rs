//! PEM blocks, as certificates and chains travel between the keyserver and nodes.

use base64::Engine;

/// One `-----BEGIN <label>-----` … `-----END <label>-----` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The block as text, its two marker lines included, ending in a newline.
    pub text: String,
    /// Its contents, decoded.
    pub der: Vec<u8>,
}

/// Every block labelled `label` in `text`, in order; text between blocks is ignored. A
/// block without its end marker, or whose body is not base64, is an error.
pub fn blocks(text: &str, label: &str) -> Result<Vec<Block>, String> {
    let (begin, end) = (format!("-----BEGIN {label}-----"), format!("-----END {label}-----"));
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim_end() != begin {
            continue;
        }
        let mut body = String::new();
        let mut closed = false;
        for l in lines.by_ref() {
            if l.trim_end() == end {
                closed = true;
                break;
            }
            body.push_str(l.trim());
        }
        if !closed {
            return Err(format!("a {label} block has no end"));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(&body)
            .map_err(|e| format!("a {label} block is not base64 ({e})"))?;
        let wrapped: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
            .collect();
        out.push(Block {
            text: format!("{begin}\n{}\n{end}\n", wrapped.join("\n")),
            der,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_found_decoded_and_rewrapped() {
        let text = "junk\n-----BEGIN CERTIFICATE-----\nAAEC\nAw==\n-----END CERTIFICATE-----\n\
                    -----BEGIN PRIVATE KEY-----\nBA==\n-----END PRIVATE KEY-----\n\
                    -----BEGIN CERTIFICATE-----\r\nBQ==\r\n-----END CERTIFICATE-----\r\n";
        let b = blocks(text, "CERTIFICATE").unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].der, [0, 1, 2, 3]);
        assert_eq!(
            b[0].text,
            "-----BEGIN CERTIFICATE-----\nAAECAw==\n-----END CERTIFICATE-----\n"
        );
        assert_eq!(b[1].der, [5]);
        assert_eq!(blocks(text, "PRIVATE KEY").unwrap()[0].der, [4]);
        assert!(blocks("-----BEGIN CERTIFICATE-----\nAAAA\n", "CERTIFICATE").is_err());
        assert!(blocks(
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
            "CERTIFICATE"
        )
        .is_err());
        assert!(blocks("nothing", "CERTIFICATE").unwrap().is_empty());
    }
}
