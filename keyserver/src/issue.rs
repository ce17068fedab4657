//! Turning a node's certificate signing request into a certificate: the request proves the
//! node holds the key (its signature is checked) and gives the public key, and nothing else
//! of it is used. Names, usages and lifetimes come from the profile.

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use sha2::{Digest, Sha256};

use cairn_keys::profiles::{Profile, Usage};

use crate::ca::{serial, BACKDATE};
use crate::state::Keyserver;
use crate::tokens::Refusal;
use crate::{cert_error, io_err, KeyserverError};

/// How long a TLS certificate is valid.
pub const TLS_LIFETIME: u64 = 30 * 86_400;

/// A checked request: the public key it proves and the sha256 of its SubjectPublicKeyInfo.
pub struct Csr {
    public_key: rcgen::PublicKey,
    /// sha256 of the key's SubjectPublicKeyInfo (DER).
    pub spki_sha256: [u8; 32],
}

/// Check a PEM certificate signing request: its signature, and that its key is ECDSA P-256
/// (what every consumer accepts; design §3).
pub fn check_csr(profile: &str, pem: &str) -> Result<Csr, Refusal> {
    let bad = |why: &str| Refusal {
        code: "bad_csr",
        message: format!("the request for {profile} {why}"),
    };
    if pem.len() > 16 * 1024 {
        return Err(bad("is larger than 16 KiB"));
    }
    let parsed = CertificateSigningRequestParams::from_pem(pem)
        .map_err(|e| bad(&format!("is not a signed certificate request ({e})")))?;
    if parsed.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(bad("is not for an ECDSA P-256 key"));
    }
    let spki_sha256 = Sha256::digest(parsed.public_key.subject_public_key_info()).into();
    Ok(Csr {
        public_key: parsed.public_key,
        spki_sha256,
    })
}

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: String,
    /// The certificate (DER).
    pub der: Vec<u8>,
    /// Its serial number (hex).
    pub serial: String,
    /// Not valid after (Unix seconds).
    pub not_after: u64,
}

/// Sign `csr`'s key as `profile` says, with the profile's CA, valid from `now` (backdated)
/// for [`TLS_LIFETIME`].
pub fn issue(ks: &Keyserver, profile: &Profile, csr: &Csr, now: u64) -> Result<Issued, KeyserverError> {
    sign(ks, profile, &csr.public_key, now, TLS_LIFETIME)
}

/// A CA ready to sign: its key, read once, and its certificate.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca(…)")
    }
}

/// CA `name` of `ks`, read from disk the first time.
fn ca(ks: &Keyserver, name: &str) -> Result<std::sync::Arc<Ca>, KeyserverError> {
    let mut cache = ks.issuers.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = cache.get(name) {
        return Ok(c.clone());
    }
    let dir = ks.dir().join("ca").join(name);
    let key_pem = std::fs::read_to_string(dir.join("key.pem")).map_err(io_err("reading", dir.join("key.pem")))?;
    let ca_pem = std::fs::read_to_string(dir.join("cert.pem")).map_err(io_err("reading", dir.join("cert.pem")))?;
    let ca_key = KeyPair::from_pem(&key_pem).map_err(cert_error(format!("the {name} CA")))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(cert_error(format!("the {name} CA")))?;
    let c = std::sync::Arc::new(Ca { issuer });
    cache.insert(name.to_string(), c.clone());
    Ok(c)
}

/// Sign `public_key` as `profile` says, with the profile's CA, valid from `now` (backdated)
/// for `lifetime` seconds.
pub fn sign(
    ks: &Keyserver,
    profile: &Profile,
    public_key: &impl PublicKeyData,
    now: u64,
    lifetime: u64,
) -> Result<Issued, KeyserverError> {
    let ca = ca(ks, profile.ca)?;

    let mut params =
        CertificateParams::new(profile.dns.clone()).map_err(cert_error(format!("the {} certificate", profile.name)))?;
    params
        .subject_alt_names
        .extend(profile.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let mut dn = DistinguishedName::new();
    if let Some(o) = &profile.o {
        dn.push(DnType::OrganizationName, o.clone());
    }
    dn.push(DnType::CommonName, profile.cn.clone());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match profile.usage {
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::ServerAndClient => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    let not_after = now + lifetime;
    params.not_before = time::OffsetDateTime::from_unix_timestamp((now - BACKDATE) as i64).expect("in range");
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after as i64).expect("in range");
    let sn = serial();
    let serial_hex = hex::encode(sn.to_bytes());
    params.serial_number = Some(sn);
    let cert = params
        .signed_by(public_key, &ca.issuer)
        .map_err(cert_error(format!("the {} certificate", profile.name)))?;
    Ok(Issued {
        cert: cert.pem(),
        der: cert.der().to_vec(),
        serial: serial_hex,
        not_after,
    })
}

/// Certificates issued for one request: each leaf with its CA, the CAs, the serials.
#[derive(Debug, Clone, Default)]
pub struct IssuedSet {
    /// Leaf and CA (PEM), by profile.
    pub certs: std::collections::BTreeMap<String, String>,
    /// Each CA used (PEM), by CA name, and the CA of the servers a client certificate is
    /// for ([`cairn_keys::profiles::Profile::server_ca`]).
    pub bundles: std::collections::BTreeMap<String, String>,
    /// Every serial issued (hex).
    pub serials: Vec<String>,
    /// The identity certificate's serial, when one was issued.
    pub identity_serial: Option<String>,
}

/// Issue, for the node `record` describes, a certificate for each of its profiles that
/// `csrs` has a request for (a profile the record's role does not have is skipped: callers
/// check the names first).
pub fn issue_set(
    ks: &Keyserver,
    record: &cairn_keys::profiles::NodeRecord,
    csrs: &std::collections::BTreeMap<&str, Csr>,
    now: u64,
) -> Result<IssuedSet, KeyserverError> {
    let mut set = IssuedSet::default();
    for p in cairn_keys::profiles::profiles(record) {
        let Some(csr) = csrs.get(p.name) else { continue };
        let issued = issue(ks, &p, csr, now)?;
        let ca_pem = crate::ca::certificate(ks, p.ca)?;
        set.certs
            .insert(p.name.to_string(), format!("{}{}", issued.cert, ca_pem));
        set.bundles.entry(p.ca.to_string()).or_insert(ca_pem);
        if let Some(server_ca) = p.server_ca {
            if !set.bundles.contains_key(server_ca) {
                let pem = crate::ca::certificate(ks, server_ca)?;
                set.bundles.insert(server_ca.to_string(), pem);
            }
        }
        if p.name == "identity" {
            set.identity_serial = Some(issued.serial.clone());
        }
        set.serials.push(issued.serial);
    }
    Ok(set)
}
