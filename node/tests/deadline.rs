//! A server that sends its headers and then trickles the body cannot hold an update (and the
//! update lock) for longer than the transfer's deadline. (Its own test binary: the HTTPS
//! test sets the process's trust store before any TLS client is made.)

use std::io::Read;
use std::time::Duration;

#[test]
fn a_trickling_server_cannot_hold_an_update() {
    use std::io::Write;
    // Headers at once, then one byte a second of a body that claims a megabyte.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut req = [0u8; 1024];
        let _ = s.read(&mut req);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n");
        for _ in 0..30 {
            if s.write_all(b"x").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let started = std::time::Instant::now();
    let url = format!("http://127.0.0.1:{port}/node_0.2.0.cairn");
    let result = cairn_node::update::open_source_within(&url, Duration::from_secs(3)).and_then(|mut r| {
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)
            .map_err(|e| cairn_node::update::UpdateError::Fetch {
                url: url.clone(),
                detail: e.to_string(),
            })
    });
    let took = started.elapsed();
    assert!(result.is_err(), "a trickled body must not be taken");
    assert!(took < Duration::from_secs(10), "the deadline held only after {took:?}");
    drop(server);
}

#[test]
fn the_sshd_gate_reads_an_ssh_banner() {
    use std::io::Write;
    let gate = |banner: &'static [u8]| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.write_all(banner);
        });
        let r = cairn_node::health::ssh_banner(&addr, Duration::from_secs(5));
        server.join().unwrap();
        r
    };
    let ok = gate(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n").unwrap();
    assert!(ok.contains("SSH-2.0-OpenSSH_9.2p1"), "{ok}");
    let e = gate(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap_err();
    assert!(e.contains("not an SSH-2.0 banner"), "{e}");
    let e = gate(b"").unwrap_err();
    assert!(e.contains("not an SSH-2.0 banner"), "{e}");
    // Nothing listening: refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert!(cairn_node::health::ssh_banner(&port.to_string(), Duration::from_secs(2)).is_err());
}
