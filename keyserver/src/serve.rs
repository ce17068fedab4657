//! `cairn keyserver serve`: HTTPS and JSON under `/v1/`, over rustls on plain threads.
//!
//! | request | what |
//! |---|---|
//! | `GET /healthz` | `ok` |
//! | `GET /v1/ca` | every CA's certificate and the server's clock |
//! | `POST /v1/enroll` | [`crate::enroll`]: a token and signing requests in, certificates out |
//! | `POST /v1/renew` | [`crate::renew`]: with the node's identity as TLS client certificate |
//!
//! A client certificate is asked for but not required (a new node has none). One that is
//! sent must chain to the keyserver CA and be for client authentication; one that has
//! expired is checked as of its own end, and [`crate::renew`] decides whether it is within
//! the grace. The clock is a value ([`Clock`]) so tests can move it.
//!
//! The serving certificate is made at start from the keyserver CA for the names given
//! (`--name`), lives a day and is made again when a third of that remains, so nodes check
//! the server against the CA fingerprint in their node.toml, never against a public CA.
//! One request per connection; request heads are capped at 16 KiB and bodies at 256 KiB;
//! every connection has 10-second read and write limits and at most 64 are served at once
//! (more wait in the kernel's backlog). Errors are JSON `{code, message, retry}`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use cairn_keys::clock::TlsTime;
use cairn_keys::profiles::{Profile, Usage};
use cairn_keys::wire::{EnrollRequest, ErrorResponse, RenewRequest};
use cairn_keys::Clock;
use rcgen::KeyPair;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::Serialize;

use crate::renew::Identity;
use crate::state::Keyserver;
use crate::{ca, enroll, issue, renew, KeyserverError};

/// The longest request head.
pub const MAX_HEAD: usize = 16 * 1024;
/// The longest request body.
pub const MAX_BODY: usize = 256 * 1024;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long the serving certificate lives.
pub const SERVING_LIFETIME: u64 = 86_400;

/// The serving certificate, made again when a third of its life remains.
#[derive(Debug)]
struct ServingCert {
    ks: Arc<Keyserver>,
    names: Vec<String>,
    clock: Clock,
    current: Mutex<(Arc<CertifiedKey>, u64, u64)>,
}

impl ServingCert {
    fn make(ks: &Keyserver, names: &[String], now: u64) -> Result<(Arc<CertifiedKey>, u64, u64), KeyserverError> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(crate::cert_error("the serving key"))?;
        let (dns, ips): (Vec<&String>, Vec<&String>) =
            names.iter().partition(|n| n.parse::<std::net::IpAddr>().is_err());
        let profile = Profile {
            name: "serving",
            ca: "keyserver",
            server_ca: None,
            cn: names.first().cloned().unwrap_or_else(|| "keyserver".into()),
            o: Some(format!("cairn:{}", ks.settings.cluster)),
            dns: dns.into_iter().cloned().collect(),
            ips: ips.into_iter().map(|i| i.parse().expect("partitioned")).collect(),
            usage: Usage::Server,
        };
        let issued = issue::sign(ks, &profile, &key, now, SERVING_LIFETIME)?;
        // The CA travels with the leaf: a node knows only the CA's fingerprint and checks
        // the chain against the CA whose certificate has it.
        let ca_pem = ca::certificate(ks, "keyserver")?;
        let ca_der = ca::pem_der(&ca_pem).map_err(|why| KeyserverError::Certificate {
            what: "the keyserver CA".into(),
            why,
        })?;
        let chain = vec![CertificateDer::from(issued.der), CertificateDer::from(ca_der)];
        let signing = rustls::crypto::ring::sign::any_ecdsa_type(&PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.serialize_der(),
        )))
        .map_err(|e| KeyserverError::Certificate {
            what: "the serving key".into(),
            why: e.to_string(),
        })?;
        Ok((Arc::new(CertifiedKey::new(chain, signing)), now, issued.not_after))
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now();
        let (_, made, not_after) = *cur;
        if now + (not_after - made) / 3 >= not_after {
            match ServingCert::make(&self.ks, &self.names, now) {
                Ok(fresh) => *cur = fresh,
                // Keep serving the old one while it lasts; the next handshake tries again.
                Err(e) => eprintln!("keyserver: renewing the serving certificate: {e}"),
            }
        }
        Some(cur.0.clone())
    }
}

/// A bound keyserver, ready to serve.
pub struct Server {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ks: Arc<Keyserver>,
    clock: Clock,
}

/// Client certificates: the keyserver CA's, for client authentication, checked as of their
/// end when they have ended (renewal decides about the grace).
#[derive(Debug)]
struct IdentityVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for IdentityVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.inner.verify_client_cert(end_entity, intermediates, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. },
            )) => {
                let (_, cert) = x509_parser::parse_x509_certificate(end_entity)
                    .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
                let end = cert.validity().not_after.timestamp().max(0) as u64;
                self.inner.verify_client_cert(
                    end_entity,
                    intermediates,
                    UnixTime::since_unix_epoch(Duration::from_secs(end)),
                )
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Check a serving name (a DNS name or an IP address).
pub(crate) fn check_name(n: &str) -> Result<(), KeyserverError> {
    if n.parse::<std::net::IpAddr>().is_ok() || crate::check_node_name(n).is_ok() {
        Ok(())
    } else {
        Err(KeyserverError::Invalid {
            message: format!("'{}' is not a host name or address", n.escape_debug()),
            hint: "--name takes the names and addresses nodes reach the keyserver at".into(),
        })
    }
}

impl Server {
    /// Make the serving certificate for `names` and bind `listen`.
    pub fn bind(ks: Keyserver, listen: SocketAddr, names: &[String]) -> Result<Server, KeyserverError> {
        Server::bind_with_clock(ks, listen, names, Clock::system())
    }

    /// [`Server::bind`] with a clock of the caller's (tests move it).
    pub fn bind_with_clock(
        ks: Keyserver,
        listen: SocketAddr,
        names: &[String],
        clock: Clock,
    ) -> Result<Server, KeyserverError> {
        if names.is_empty() {
            return Err(KeyserverError::Invalid {
                message: "the keyserver needs at least one name to serve under".into(),
                hint: "--name keys.example.net and/or --name 10.0.0.5: what nodes' node.toml [key-agent] server names"
                    .into(),
            });
        }
        for n in names {
            check_name(n)?;
        }
        let ks = Arc::new(ks);
        let first = ServingCert::make(&ks, names, clock.now())?;
        let resolver = Arc::new(ServingCert {
            ks: ks.clone(),
            names: names.to_vec(),
            clock: clock.clone(),
            current: Mutex::new(first),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_pem = ca::certificate(&ks, "keyserver")?;
        let ca_der = ca::pem_der(&ca_pem).map_err(|why| KeyserverError::Certificate {
            what: "the keyserver CA".into(),
            why,
        })?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca_der))
            .map_err(|e| KeyserverError::Certificate {
                what: "the keyserver CA".into(),
                why: e.to_string(),
            })?;
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| KeyserverError::Certificate {
                what: "the client certificate check".into(),
                why: e.to_string(),
            })?;
        let verifier = Arc::new(IdentityVerifier { inner });
        let tls = rustls::ServerConfig::builder_with_details(provider, Arc::new(TlsTime(clock.clone())))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| KeyserverError::Certificate {
                what: "the TLS configuration".into(),
                why: e.to_string(),
            })?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(resolver);
        let listener = TcpListener::bind(listen).map_err(crate::io_err("listening on", listen.to_string()))?;
        Ok(Server {
            listener,
            tls: Arc::new(tls),
            ks,
            clock,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serve until the process ends.
    pub fn run(self) {
        let slots = Arc::new(Slots::default());
        for conn in self.listener.incoming() {
            let Ok(stream) = conn else { continue };
            slots.take();
            let (tls, ks, slots, clock) = (self.tls.clone(), self.ks.clone(), slots.clone(), self.clock.clone());
            std::thread::spawn(move || {
                // Given back however the connection ends.
                let _slot = Taken(&slots);
                let _ = serve_connection(stream, tls, &ks, &clock);
            });
        }
    }
}

/// How many connections are being served; accepting waits while all
/// [`MAX_CONNECTIONS`] are taken (the kernel's backlog holds the rest).
#[derive(Default)]
struct Slots {
    busy: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    fn take(&self) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *busy >= MAX_CONNECTIONS {
            busy = self.freed.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy += 1;
    }
}

/// A slot in use; dropping it gives it back.
struct Taken<'a>(&'a Slots);

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.0.freed.notify_one();
    }
}

struct Reply {
    status: u16,
    body: Vec<u8>,
    content_type: &'static str,
}

fn json<T: Serialize>(status: u16, v: &T) -> Reply {
    Reply {
        status,
        body: serde_json::to_vec(v).expect("replies always serialize"),
        content_type: "application/json",
    }
}

fn error(status: u16, code: &str, message: impl Into<String>, retry: bool) -> Reply {
    json(
        status,
        &ErrorResponse {
            code: code.into(),
            message: message.into(),
            retry,
        },
    )
}

fn serve_connection(
    stream: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    ks: &Keyserver,
    clock: &Clock,
) -> std::io::Result<()> {
    let peer = stream.peer_addr().map(|a| a.to_string()).ok();
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    stream.set_nodelay(true)?;
    let conn = rustls::ServerConnection::new(tls).map_err(std::io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, stream);
    let mut unread = false;
    let reply = match read_request(&mut s) {
        Ok((method, path, body)) => {
            let identity = s
                .conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Identity::from_der(c));
            let from = Caller {
                addr: peer.as_deref(),
                identity,
            };
            route(ks, &method, &path, &body, &from, clock.now())
        }
        Err(reply) => {
            unread = true;
            reply
        }
    };
    let reason = match reply.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(&reply.body)?;
    s.flush()?;
    s.conn.send_close_notify();
    let _ = s.conn.complete_io(&mut s.sock);
    if unread {
        // Refused before the whole request was read (too large, say): closing with bytes
        // still unread would reset the connection, and the client could lose the answer
        // it is owed. Stop writing, then read and drop what is still coming, for a while.
        let _ = s.sock.shutdown(std::net::Shutdown::Write);
        let _ = s.sock.set_read_timeout(Some(Duration::from_secs(2)));
        let mut sink = [0u8; 16 * 1024];
        let mut left = 4 * MAX_BODY;
        while left > 0 {
            match s.sock.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    }
    Ok(())
}

/// Read one request: method, path and body, or the reply that refuses it.
fn read_request(s: &mut impl Read) -> Result<(String, String, Vec<u8>), Reply> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(error(
                413,
                "bad_request",
                "the request head is larger than 16 KiB",
                false,
            ));
        }
        let n = s
            .read(&mut chunk)
            .map_err(|_| error(400, "bad_request", "the request was cut off", true))?;
        if n == 0 {
            return Err(error(400, "bad_request", "the request was cut off", true));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&buf[..head_end]) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(error(400, "bad_request", "not an HTTP/1.1 request", false)),
    }
    let method = req.method.unwrap_or_default().to_string();
    let path = req.path.unwrap_or_default().to_string();
    let mut length = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| error(400, "bad_request", "Content-Length is not a number", false))?;
        }
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(error(400, "bad_request", "send the body with a Content-Length", false));
        }
    }
    if length > MAX_BODY {
        return Err(error(
            413,
            "bad_request",
            "the request body is larger than 256 KiB",
            false,
        ));
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = s
            .read(&mut chunk)
            .map_err(|_| error(400, "bad_request", "the request body was cut off", true))?;
        if n == 0 {
            return Err(error(400, "bad_request", "the request body was cut off", true));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok((method, path, body))
}

/// Who sent a request: its address, and the identity its client certificate names
/// (`Some(None)`: a certificate, verified, that names no node).
struct Caller<'a> {
    addr: Option<&'a str>,
    identity: Option<Option<Identity>>,
}

fn refused(refusal: crate::tokens::Refusal) -> Reply {
    let status = match refusal.code {
        "bad_request" => 400,
        "token_unknown" | "token_invalid" | "token_expired" | "not_identified" | "identity_expired_beyond_grace" => 401,
        "token_revoked" | "role_mismatch" | "node_locked" | "node_unknown" | "identity_replaced" => 403,
        "token_used" | "generation_mismatch" => 409,
        "bad_csr" => 422,
        _ => 400,
    };
    error(status, refusal.code, refusal.message, false)
}

fn route(ks: &Keyserver, method: &str, path: &str, body: &[u8], from: &Caller, now: u64) -> Reply {
    let peer = from.addr;
    match (method, path) {
        ("GET", "/healthz") => Reply {
            status: 200,
            body: b"ok\n".to_vec(),
            content_type: "text/plain",
        },
        ("GET", "/v1/ca") => {
            let mut bundles = std::collections::BTreeMap::new();
            for name in ca::X509 {
                match ca::certificate(ks, name) {
                    Ok(pem) => {
                        bundles.insert(name, pem);
                    }
                    Err(e) => return unavailable(e),
                }
            }
            #[derive(Serialize)]
            struct CaReply<'a> {
                bundles: std::collections::BTreeMap<&'a str, String>,
                server_time: u64,
            }
            json(
                200,
                &CaReply {
                    bundles,
                    server_time: now,
                },
            )
        }
        ("POST", "/v1/enroll") => {
            let req: EnrollRequest = match serde_json::from_slice(body) {
                Ok(r) => r,
                Err(e) => return error(400, "bad_request", format!("not an enroll request: {e}"), false),
            };
            match enroll::enroll(ks, &req, peer, now) {
                Ok(Ok(resp)) => json(200, &resp),
                Ok(Err(refusal)) => refused(refusal),
                Err(e) => unavailable(e),
            }
        }
        ("POST", "/v1/renew") => {
            let identity = match &from.identity {
                Some(Some(i)) => i,
                Some(None) => {
                    return error(
                        401,
                        "not_identified",
                        "the client certificate names no node (CN) and role (O=cairn:ROLE)",
                        false,
                    )
                }
                None => {
                    return error(
                        401,
                        "not_identified",
                        "renewal needs the node's identity certificate as the TLS client certificate",
                        false,
                    )
                }
            };
            let req: RenewRequest = match serde_json::from_slice(body) {
                Ok(r) => r,
                Err(e) => return error(400, "bad_request", format!("not a renew request: {e}"), false),
            };
            match renew::renew(ks, identity, &req, body, peer, now) {
                Ok(Ok(resp)) => json(200, &resp),
                Ok(Err(refusal)) => refused(refusal),
                Err(e) => unavailable(e),
            }
        }
        ("GET", "/v1/peers") => {
            let identity = match &from.identity {
                Some(Some(i)) => i,
                _ => {
                    return error(
                        401,
                        "not_identified",
                        "the peer list needs the node's identity certificate as the TLS client certificate",
                        false,
                    )
                }
            };
            match crate::peers::peers(ks, identity, peer, now) {
                Ok(Ok(resp)) => json(200, &resp),
                Ok(Err(refusal)) => refused(refusal),
                Err(e) => unavailable(e),
            }
        }
        (_, "/healthz" | "/v1/ca" | "/v1/enroll" | "/v1/renew" | "/v1/peers") => {
            error(405, "bad_request", format!("{method} is not how {path} is used"), false)
        }
        _ => error(404, "bad_request", "no such endpoint", false),
    }
}

/// The keyserver cannot decide now (its disk, a broken audit chain): say so, and log why.
fn unavailable(e: KeyserverError) -> Reply {
    eprintln!("keyserver: {e}");
    error(
        503,
        "unavailable",
        "the keyserver cannot decide now; try again later",
        true,
    )
}

/// The fuzz target's body (`fuzz/fuzz_targets/keyserver_request.rs`): any bytes as a
/// request. What is read as a request has a head and body within the limits, and an
/// enroll request that decodes is refused or answered without a panic by the checks that
/// run before any state is touched.
pub fn harness_request(data: &[u8]) {
    let mut input = data;
    if let Ok((_, _, body)) = read_request(&mut input) {
        assert!(body.len() <= MAX_BODY);
        if let Ok(req) = serde_json::from_slice::<RenewRequest>(&body) {
            for (name, pem) in &req.csrs {
                let _ = issue::check_csr(name, pem);
            }
        }
        if let Ok(req) = serde_json::from_slice::<EnrollRequest>(&body) {
            let _ = cairn_keys::Token::parse(&req.token);
            let _ = cairn_keys::profiles::Role::parse(&req.role);
            for (name, pem) in &req.csrs {
                let _ = issue::check_csr(name, pem);
            }
        }
    }
}
