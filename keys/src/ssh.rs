//! OpenSSH certificates for ed25519 keys (`ssh-ed25519-cert-v01@openssh.com`, as
//! PROTOCOL.certkeys in OpenSSH's source describes them): the keyserver signs node host
//! keys and admins' user keys with its SSH CAs; the key agent checks that a host
//! certificate it is given is for its own key. Only ed25519, the key type every Cairn node
//! makes and the one `ssh-keygen -t ed25519` makes for admins. No IO, no signing here: the
//! keyserver passes the bytes to be signed to its CA key.

use base64::Engine;

/// An ed25519 public key line's type.
pub const ED25519: &str = "ssh-ed25519";
/// An ed25519 certificate line's type.
pub const ED25519_CERT: &str = "ssh-ed25519-cert-v01@openssh.com";

/// Whom a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertType {
    /// A user logging in.
    User,
    /// A host being logged into.
    Host,
}

impl CertType {
    fn code(self) -> u32 {
        match self {
            CertType::User => 1,
            CertType::Host => 2,
        }
    }
}

/// What a certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cert {
    /// The certified key.
    pub key: [u8; 32],
    /// A serial chosen by the CA.
    pub serial: u64,
    /// User or host.
    pub cert_type: CertType,
    /// Logged by sshd when the certificate is used.
    pub key_id: String,
    /// The user or host names it is valid for.
    pub principals: Vec<String>,
    /// Valid from (Unix seconds).
    pub valid_after: u64,
    /// Valid until.
    pub valid_before: u64,
    /// Extensions without data (`permit-pty`, …), for user certificates.
    pub extensions: Vec<String>,
}

fn put(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// The key blob of an ed25519 public key (`string "ssh-ed25519", string key`).
pub fn key_blob(key: &[u8; 32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(51);
    put(&mut b, ED25519.as_bytes());
    put(&mut b, key);
    b
}

/// The ed25519 key of a public key line (`ssh-ed25519 AAAA… comment`).
pub fn parse_public_line(line: &str) -> Result<[u8; 32], String> {
    let mut f = line.split_whitespace();
    let (Some(kind), Some(b64)) = (f.next(), f.next()) else {
        return Err("not an OpenSSH public key line".into());
    };
    if kind != ED25519 {
        return Err(format!(
            "a {} key; Cairn's SSH certificates are for ed25519 keys (`ssh-keygen -t ed25519`)",
            kind.escape_debug()
        ));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "its key is not base64".to_string())?;
    let mut r = Reader(&blob);
    if r.string()? != ED25519.as_bytes() {
        return Err("its key blob is not an ed25519 key".into());
    }
    let key = r.key()?;
    r.end()?;
    Ok(key)
}

/// The bytes the CA signs: everything of the certificate up to its signature, with
/// `nonce` (random, 32 bytes) and the CA's public key.
pub fn to_be_signed(c: &Cert, nonce: &[u8; 32], ca: &[u8; 32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(256);
    put(&mut b, ED25519_CERT.as_bytes());
    put(&mut b, nonce);
    put(&mut b, &c.key);
    b.extend_from_slice(&c.serial.to_be_bytes());
    b.extend_from_slice(&c.cert_type.code().to_be_bytes());
    put(&mut b, c.key_id.as_bytes());
    let mut principals = Vec::new();
    for p in &c.principals {
        put(&mut principals, p.as_bytes());
    }
    put(&mut b, &principals);
    b.extend_from_slice(&c.valid_after.to_be_bytes());
    b.extend_from_slice(&c.valid_before.to_be_bytes());
    put(&mut b, &[]); // critical options: none
    let mut names = c.extensions.clone();
    names.sort(); // OpenSSH wants them in lexical order
    let mut extensions = Vec::new();
    for n in &names {
        put(&mut extensions, n.as_bytes());
        put(&mut extensions, &[]);
    }
    put(&mut b, &extensions);
    put(&mut b, &[]); // reserved
    put(&mut b, &key_blob(ca));
    b
}

/// The certificate line from the signed bytes and the CA's signature over them.
pub fn finish(mut tbs: Vec<u8>, signature: &[u8; 64], comment: &str) -> String {
    let mut sig = Vec::with_capacity(83);
    put(&mut sig, ED25519.as_bytes());
    put(&mut sig, signature);
    put(&mut tbs, &sig);
    format!(
        "{ED25519_CERT} {} {comment}",
        base64::engine::general_purpose::STANDARD.encode(tbs)
    )
}

/// A certificate line read back, with the CA key that signed it (the signature is not
/// checked here: sshd and ssh do that).
pub fn parse_cert_line(line: &str) -> Result<(Cert, [u8; 32]), String> {
    let mut f = line.split_whitespace();
    let (Some(kind), Some(b64)) = (f.next(), f.next()) else {
        return Err("not an OpenSSH certificate line".into());
    };
    if kind != ED25519_CERT {
        return Err(format!("a {}, not an ed25519 certificate", kind.escape_debug()));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "not base64".to_string())?;
    let mut r = Reader(&blob);
    if r.string()? != ED25519_CERT.as_bytes() {
        return Err("its blob is not an ed25519 certificate".into());
    }
    r.string()?; // nonce
    let key = r.key()?;
    let serial = r.u64()?;
    let cert_type = match r.u32()? {
        1 => CertType::User,
        2 => CertType::Host,
        n => return Err(format!("certificate type {n}")),
    };
    let key_id = String::from_utf8(r.string()?.to_vec()).map_err(|_| "its key id is not UTF-8".to_string())?;
    let mut principals = Vec::new();
    let mut p = Reader(r.string()?);
    while !p.0.is_empty() {
        principals.push(String::from_utf8(p.string()?.to_vec()).map_err(|_| "a principal is not UTF-8".to_string())?);
    }
    let valid_after = r.u64()?;
    let valid_before = r.u64()?;
    r.string()?; // critical options
    let mut extensions = Vec::new();
    let mut e = Reader(r.string()?);
    while !e.0.is_empty() {
        extensions.push(String::from_utf8(e.string()?.to_vec()).map_err(|_| "an extension is not UTF-8".to_string())?);
        e.string()?;
    }
    r.string()?; // reserved
    let mut ca = Reader(r.string()?);
    if ca.string()? != ED25519.as_bytes() {
        return Err("it is signed by a key that is not ed25519".into());
    }
    let ca_key = ca.key()?;
    r.string()?; // signature
    r.end()?;
    Ok((
        Cert {
            key,
            serial,
            cert_type,
            key_id,
            principals,
            valid_after,
            valid_before,
            extensions,
        },
        ca_key,
    ))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("it ends early".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn string(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn key(&mut self) -> Result<[u8; 32], String> {
        self.string()?
            .try_into()
            .map_err(|_| "an ed25519 key is 32 bytes".to_string())
    }

    fn end(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err("it has bytes past its end".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> Cert {
        Cert {
            key: [7; 32],
            serial: 42,
            cert_type: CertType::User,
            key_id: "cairn-admin:alice".into(),
            principals: vec!["root".into()],
            valid_after: 1_000,
            valid_before: 2_000,
            extensions: vec!["permit-pty".into(), "permit-agent-forwarding".into()],
        }
    }

    #[test]
    fn a_certificate_reads_back_as_written() {
        let c = cert();
        let line = finish(to_be_signed(&c, &[1; 32], &[9; 32]), &[3; 64], "alice");
        assert!(line.starts_with("ssh-ed25519-cert-v01@openssh.com AAAA") && line.ends_with(" alice"));
        let (back, ca) = parse_cert_line(&line).unwrap();
        let mut sorted = c.clone();
        sorted.extensions.sort();
        assert_eq!((back, ca), (sorted, [9; 32]));
    }

    #[test]
    fn bad_lines_are_refused_not_panicked_on() {
        let line = finish(to_be_signed(&cert(), &[1; 32], &[9; 32]), &[3; 64], "x");
        let b64 = line.split_whitespace().nth(1).unwrap();
        let blob = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        for cut in 0..blob.len() {
            let short = base64::engine::general_purpose::STANDARD.encode(&blob[..cut]);
            assert!(parse_cert_line(&format!("{ED25519_CERT} {short}")).is_err(), "{cut}");
        }
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ x",
            "ssh-ed25519 !!!",
            "ssh-ed25519 AAAA",
        ] {
            assert!(parse_public_line(bad).is_err(), "{bad:?}");
        }
        let good = format!(
            "ssh-ed25519 {} me@host",
            base64::engine::general_purpose::STANDARD.encode(key_blob(&[5; 32]))
        );
        assert_eq!(parse_public_line(&good).unwrap(), [5; 32]);
        assert!(parse_public_line(&format!("{good}\n")).is_ok());
    }
}
