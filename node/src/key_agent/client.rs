//! Talking to the keyserver: TLS 1.3 checked against the CA whose certificate has the
//! fingerprint in node.toml (the keyserver sends that CA with its own certificate), and one
//! HTTP/1.1 request per connection.
//!
//! No public CA is trusted and no certificate is taken on first use: a server that cannot
//! show a chain to the pinned CA never sees the token.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use cairn_keys::clock::{Clock, TlsTime};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// The longest answer the agent reads.
pub const MAX_RESPONSE: usize = 1 << 20;

/// Trust exactly the CA whose certificate (DER) hashes to a pinned sha256.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| <[u8; 32]>::from(Sha256::digest(c.as_ref())) == self.fingerprint)
        else {
            return Err(rustls::Error::General(
                "the server did not present the CA pinned by [key-agent] ca-fingerprint".into(),
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a request got no answer it could use.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection, TLS refused, a timeout, a cut-off answer: worth trying again.
    #[error("{server}: {detail}")]
    Unreachable {
        /// The server.
        server: String,
        /// What went wrong.
        detail: String,
    },
    /// An answer that is not HTTP, or too large.
    #[error("{server}: the answer is not one the keyserver gives ({detail})")]
    Garbled {
        /// The server.
        server: String,
        /// What is wrong with it.
        detail: String,
    },
}

/// A client certificate: the node's identity (chain, PKCS#8 key), for renewals.
pub struct ClientIdentity {
    /// The certificate and its CA (DER).
    pub chain: Vec<CertificateDer<'static>>,
    /// Its key (PKCS#8 DER).
    pub key: Vec<u8>,
}

/// `https://HOST:PORT` of a keyserver, with the pinned CA.
pub struct Keyserver {
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl Keyserver {
    /// A client for the server at `host:port` whose CA has `fingerprint`, checking
    /// certificates' times on `clock`, showing `identity` when asked for a client
    /// certificate.
    pub fn new(
        host: &str,
        port: u16,
        fingerprint: [u8; 32],
        timeout: Duration,
        clock: Clock,
        identity: Option<ClientIdentity>,
    ) -> Result<Keyserver, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_details(provider.clone(), Arc::new(TlsTime(clock)))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCa { fingerprint, provider }));
        let tls = match identity {
            None => builder.with_no_client_auth(),
            Some(id) => builder
                .with_client_auth_cert(id.chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key)))
                .map_err(|e| ClientError::Garbled {
                    server: format!("{host}:{port}"),
                    detail: format!("the identity certificate cannot be used: {e}"),
                })?,
        };
        Ok(Keyserver {
            host: host.to_string(),
            port,
            tls: Arc::new(tls),
            timeout,
        })
    }

    /// `https://HOST:PORT`.
    pub fn name(&self) -> String {
        if self.host.contains(':') {
            format!("https://[{}]:{}", self.host, self.port)
        } else {
            format!("https://{}:{}", self.host, self.port)
        }
    }

    /// POST `body` (JSON) to `path`; the status and the body of the answer.
    pub fn post(&self, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), ClientError> {
        self.request("POST", path, body)
    }

    /// GET `path`; the status and the body of the answer.
    pub fn get(&self, path: &str) -> Result<(u16, Vec<u8>), ClientError> {
        self.request("GET", path, b"")
    }

    fn request(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), ClientError> {
        let unreachable = |detail: String| ClientError::Unreachable {
            server: self.name(),
            detail,
        };
        let server_name = ServerName::try_from(self.host.clone()).map_err(|e| unreachable(e.to_string()))?;
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| unreachable(format!("resolving: {e}")))?
            .next()
            .ok_or_else(|| unreachable("the name has no address".into()))?;
        let sock = TcpStream::connect_timeout(&addr, self.timeout).map_err(|e| unreachable(e.to_string()))?;
        sock.set_read_timeout(Some(self.timeout))
            .map_err(|e| unreachable(e.to_string()))?;
        sock.set_write_timeout(Some(self.timeout))
            .map_err(|e| unreachable(e.to_string()))?;
        let conn =
            rustls::ClientConnection::new(self.tls.clone(), server_name).map_err(|e| unreachable(e.to_string()))?;
        let mut s = rustls::StreamOwned::new(conn, sock);
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.host,
            body.len()
        );
        s.write_all(head.as_bytes())
            .and_then(|_| s.write_all(body))
            .and_then(|_| s.flush())
            .map_err(|e| unreachable(e.to_string()))?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    answer.extend_from_slice(&chunk[..n]);
                    if answer.len() > MAX_RESPONSE {
                        return Err(ClientError::Garbled {
                            server: self.name(),
                            detail: "larger than 1 MiB".into(),
                        });
                    }
                }
                // A server that closes without TLS close_notify after a whole answer.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => break,
                Err(e) => return Err(unreachable(e.to_string())),
            }
        }
        self.parse(&answer)
    }

    fn parse(&self, answer: &[u8]) -> Result<(u16, Vec<u8>), ClientError> {
        parse_answer(answer).map_err(|(cut_off, detail)| {
            if cut_off {
                ClientError::Unreachable {
                    server: self.name(),
                    detail: detail.into(),
                }
            } else {
                ClientError::Garbled {
                    server: self.name(),
                    detail: detail.into(),
                }
            }
        })
    }
}

/// An HTTP answer's status and body (as long as its Content-Length says, when it says), or
/// why not: (whether it was only cut off, what is wrong).
pub fn parse_answer(answer: &[u8]) -> Result<(u16, Vec<u8>), (bool, &'static str)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(answer) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err((false, "no HTTP head")),
    };
    let status = resp.code.ok_or((false, "no status"))?;
    let length: Option<usize> = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok());
    let body = &answer[head_len..];
    match length {
        Some(n) if body.len() < n => Err((true, "the answer was cut off")),
        Some(n) => Ok((status, body[..n].to_vec())),
        None => Ok((status, body.to_vec())),
    }
}
