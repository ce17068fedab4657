//! `cairn-node apply` and the health gate machinery against a temporary root.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use cairn_node::apply::{self, Source};
use cairn_node::health::{self, Gate, Probe};

const WG: &str = "version = 1\ngeneration = 5\nhostname = \"cp-9\"\n[wireguard]\nprivate-key = \"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\"\naddress = [\"10.9.0.1/24\"]\n";

#[test]
fn saved_config_wins_then_image_default_then_built_in() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let (c, _, src, warn) = apply::choose(r);
    assert_eq!((c.hostname.as_str(), src, warn.len()), ("cairn", Source::BuiltIn, 0));

    fs::create_dir_all(r.join("usr/lib/cairn")).unwrap();
    fs::write(r.join("usr/lib/cairn/node.toml"), WG).unwrap();
    let (c, _, src, _) = apply::choose(r);
    assert_eq!(
        (c.hostname.as_str(), src),
        ("cp-9", Source::File(apply::IMAGE_DEFAULT.into()))
    );

    // A saved config that no longer validates is skipped with a warning naming it.
    fs::create_dir_all(r.join("var/lib/cairn")).unwrap();
    fs::write(
        r.join("var/lib/cairn/node.toml"),
        "version = 1\ngeneration = 1\nhostname = \"bad_name\"\n",
    )
    .unwrap();
    let (c, _, src, warn) = apply::choose(r);
    assert_eq!(c.hostname, "cp-9");
    assert!(src != Source::File(apply::SAVED.into()));
    assert!(
        warn[0].contains("/var/lib/cairn/node.toml:3") && warn[0].contains("bad_name"),
        "{warn:?}"
    );

    fs::write(r.join("var/lib/cairn/node.toml"), WG.replace("cp-9", "cp-10")).unwrap();
    let (c, _, src, _) = apply::choose(r);
    assert_eq!((c.hostname.as_str(), src), ("cp-10", Source::File(apply::SAVED.into())));
}

#[test]
fn apply_writes_every_file_with_its_mode_and_drops_stale_keys() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("var/lib/cairn/wireguard")).unwrap();
    fs::write(r.join("var/lib/cairn/wireguard/old0.key"), "stale").unwrap();
    fs::create_dir_all(r.join("etc")).unwrap();
    fs::write(
        r.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nsystemd-network:x:998:998::/:/usr/sbin/nologin\n",
    )
    .unwrap();
    fs::create_dir_all(r.join("usr/lib/cairn")).unwrap();
    fs::write(r.join("usr/lib/cairn/node.toml"), WG).unwrap();
    let log = apply::apply(r).unwrap();
    assert!(
        log.last()
            .unwrap()
            .contains("generation 5 from /usr/lib/cairn/node.toml: host cp-9"),
        "{log:?}"
    );
    let key = r.join("var/lib/cairn/wireguard/wg0.key");
    assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!r.join("var/lib/cairn/wireguard/old0.key").exists(), "stale key kept");
    assert!(fs::read_to_string(r.join("run/systemd/network/50-cairn-wg0.netdev"))
        .unwrap()
        .contains("PrivateKeyFile=/var/lib/cairn/wireguard/wg0.key"));
    assert!(fs::read_to_string(r.join("run/cairn/etcd.env"))
        .unwrap()
        .contains("ETCD_NAME=cp-9\n"));
    assert_eq!(fs::read_to_string(r.join("run/cairn/node.toml")).unwrap(), WG);
    // No temporary files are left beside the outputs.
    let leftovers: Vec<_> = walk(r).into_iter().filter(|p| p.contains("cairn-tmp")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(apply::lookup_user(r, "systemd-network"), Some((998, 998)));
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn http_get_reads_status_and_body() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /health HTTP/1.0\r\n"));
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n{\"health\":\"true\"}\n")
            .unwrap();
    });
    let (code, body) = health::http_get(&format!("http://{addr}/health"), Duration::from_secs(5)).unwrap();
    server.join().unwrap();
    assert_eq!((code, body.as_str()), (200, "{\"health\":\"true\"}"));
    let e = health::http_get(&format!("http://{addr}/health"), Duration::from_secs(1)).unwrap_err();
    assert!(e.contains("connecting to"), "{e}");
}

#[test]
fn a_gate_passes_when_its_probe_does_and_fails_at_its_limit() {
    let mut tries = 0;
    let probe = Probe::Check(Box::new(move || {
        tries += 1;
        if tries < 3 {
            Err(format!("try {tries}"))
        } else {
            Ok("up".into())
        }
    }));
    let mut log = Vec::new();
    let ok = health::run(Gate::Etcd, probe, Duration::from_secs(30), &mut |l| {
        log.push(l.to_string())
    })
    .unwrap();
    assert!(
        ok.starts_with("cairn: health gate etcd passed after") && ok.ends_with(": up"),
        "{ok}"
    );
    assert_eq!(log.len(), 1, "one waiting line per 10 s: {log:?}");
    assert!(log[0].contains("waiting (0s of 30s): try 1"), "{log:?}");

    let probe = Probe::Check(Box::new(|| Err("connection refused".into())));
    let e = health::run(Gate::Containerd, probe, Duration::from_secs(1), &mut |_| {}).unwrap_err();
    assert!(
        e.starts_with("cairn: health gate containerd FAILED after 1s: connection refused"),
        "{e}"
    );

    let skip = health::run(
        Gate::Wireguard,
        Probe::Skip("no WireGuard interface is configured".into()),
        Duration::ZERO,
        &mut |_| {},
    );
    assert_eq!(
        skip.unwrap(),
        "cairn: health gate wireguard passed: nothing to check (no WireGuard interface is configured)"
    );
}

#[test]
fn gates_skip_what_the_node_does_not_run() {
    let root = tempfile::tempdir().unwrap();
    let worker = cairn_node::config::NodeConfig::parse(
        "version = 1\ngeneration = 1\nhostname = \"w\"\nrole = \"worker\"\n",
        "x",
    )
    .unwrap();
    for (gate, why) in [
        (Gate::Etcd, "a worker does not run etcd"),
        (Gate::Wireguard, "no WireGuard interface is configured"),
        (Gate::Kubelet, "this image has no kubelet"),
    ] {
        match health::probe(gate, &worker, root.path()) {
            Probe::Skip(w) => assert!(w.contains(why), "{w}"),
            Probe::Check(_) => panic!("{gate:?} should have nothing to check"),
        }
    }
}
