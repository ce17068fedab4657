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
