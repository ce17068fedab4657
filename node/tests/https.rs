//! `cairn-node update` fetches bundles over HTTPS with the system's trust store (here
//! `SSL_CERT_FILE`, read once per process): from `openssl s_server -WWW` with a
//! certificate of a trusted throwaway CA the bytes arrive unchanged; a server whose
//! certificate no trusted CA signed is refused.

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn openssl(dir: &Path, args: &str) {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args.split_whitespace())
        .output()
        .expect("running openssl");
    assert!(
        o.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn https_sources_are_verified_against_the_trust_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A throwaway CA and a server certificate it signs for localhost.
    openssl(
        d,
        "req -x509 -newkey ed25519 -nodes -days 2 -subj /CN=cairn-test-ca -keyout ca.key -out ca.pem",
    );
    openssl(
        d,
        "req -newkey ed25519 -nodes -subj /CN=localhost -keyout srv.key -out srv.csr",
    );
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        d,
        "x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out srv.pem",
    );
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(d.join("bundle.bin"), &payload).unwrap();
    // An untrusted server: a self-signed certificate for the same name.
    openssl(
        d,
        "req -x509 -newkey ed25519 -nodes -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost \
         -keyout rogue.key -out rogue.pem",
    );
    let serve = |cert: &str, key: &str| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("openssl")
            .current_dir(d)
            .args([
                "s_server",
                "-quiet",
                "-WWW",
                "-accept",
                &port.to_string(),
                "-cert",
                cert,
                "-key",
                key,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting openssl s_server");
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (child, port)
    };
    let (mut good, good_port) = serve("srv.pem", "srv.key");
    let (mut rogue, rogue_port) = serve("rogue.pem", "rogue.key");
    let fetch = |port: u16| -> Result<Vec<u8>, String> {
        let url = format!("https://localhost:{port}/bundle.bin");
        let mut r = cairn_node::update::open_source(&url).map_err(|e| e.to_string())?;
        let mut v = Vec::new();
        r.read_to_end(&mut v).map_err(|e| e.to_string())?;
        Ok(v)
    };
    std::env::set_var("SSL_CERT_FILE", d.join("ca.pem"));
    let got = fetch(good_port);
    let refused = fetch(rogue_port);
    for c in [&mut good, &mut rogue] {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert_eq!(got.unwrap(), payload);
    let err = refused.unwrap_err();
    assert!(
        err.contains("fetching") && err.contains("invalid peer certificate"),
        "{err}"
    );
}
