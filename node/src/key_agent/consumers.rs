//! After a renewal, the consumers are checked to serve the new certificates, not just told
//! about them: etcd rereads its certificate files for every new connection, so the agent
//! connects to it as a client would and compares the serial it is shown with the one it
//! installed; a member still serving the old one after [`SETTLE`] is restarted (systemd).
//! sshd is told to reload when its host certificate changes ([`super::install_ssh`]).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_keys::clock::{Clock, TlsTime};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

use super::{current, PKI_DIR};
use crate::apply::at;

/// How long a consumer may take to serve a renewed certificate.
pub const SETTLE: Duration = Duration::from_secs(10);

fn read(root: &Path, profile: &str, file: &str) -> Result<String, String> {
    let p = at(root, PKI_DIR).join(profile).join("current").join(file);
    std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
}

/// The serial (hex) of the certificate etcd serves at `addr`, checked against the
/// etcd-peer CA with the node's etcd-client certificate.
pub fn etcd_serial(root: &Path, addr: SocketAddr, clock: &Clock) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    for b in cairn_keys::pem::blocks(&read(root, "etcd-server", "bundle.pem")?, "CERTIFICATE")? {
        roots.add(CertificateDer::from(b.der)).map_err(|e| e.to_string())?;
    }
    let chain = cairn_keys::pem::blocks(&read(root, "etcd-client", "cert.pem")?, "CERTIFICATE")?
        .into_iter()
        .map(|b| CertificateDer::from(b.der))
        .collect();
    let key = rcgen::KeyPair::from_pem(&read(root, "etcd-client", "key.pem")?).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_details(provider, Arc::new(TlsTime(clock.clone())))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(|e| e.to_string())?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut conn = rustls::ClientConnection::new(Arc::new(tls), name).map_err(|e| e.to_string())?;
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("{addr}: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| format!("{addr}: {e}"))?;
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| format!("{addr} showed no certificate"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    let serial = hex::encode(cert.raw_serial());
    conn.send_close_notify();
    let _ = conn.complete_io(&mut sock);
    let _ = sock.flush();
    Ok(serial)
}

/// Wait up to `settle` for etcd at `addr` to serve the node's current etcd-server
/// certificate. The line to print, or why not.
pub fn check_etcd(root: &Path, addr: SocketAddr, clock: &Clock, settle: Duration) -> Result<String, String> {
    let want = current(root, "etcd-server")?.serial;
    let start = Instant::now();
    loop {
        let got = etcd_serial(root, addr, clock);
        match &got {
            Ok(s) if *s == want => {
                return Ok(format!(
                    "cairn: key agent: etcd on {addr} serves the renewed certificate ({})",
                    &want[..want.len().min(8)]
                ))
            }
            _ if start.elapsed() >= settle => {
                return Err(match got {
                    Ok(s) => format!("etcd on {addr} still serves certificate {s}, not the renewed {want}"),
                    Err(e) => format!("etcd on {addr} could not be checked: {e}"),
                })
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}
