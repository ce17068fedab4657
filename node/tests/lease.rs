//! The reboot lease against a real etcd (Debian's etcd-server, one member on loopback,
//! plain http; the TLS cluster is in key_agent_etcd.rs): one holder per slot, however many
//! nodes race; a slot found again after a reboot; a holder that dies loses its slot after
//! the TTL; release deletes only the node's own slot.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use cairn_node::etcd::Etcd;
use cairn_node::lease::{self, Acquired};

/// The etcd process, and its data directory (removed after the process is gone).
struct Member(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd member on loopback; its client URL.
fn member() -> (Member, String) {
    member_named("m")
}

/// One etcd member called `name` on loopback; its client URL.
fn member_named(name: &str) -> (Member, String) {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let child = Command::new("etcd")
        .args(["--name", name, "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args([
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster",
            &format!("{name}=http://127.0.0.1:{peer}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (apt-get install etcd-server)");
    let m = Member(child, dir);
    let etcd = client_for(&url);
    let start = Instant::now();
    while lease::holders(&etcd).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "etcd did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    (m, url)
}

fn client_for(url: &str) -> Etcd {
    Etcd::new(&[url.to_string()], None, Duration::from_secs(5)).unwrap()
}

#[test]
fn one_node_per_slot_however_many_race_and_a_dead_holder_loses_it() {
    let (_m, url) = member();

    // Ten nodes race for one slot: exactly one gets it.
    let barrier = Arc::new(Barrier::new(10));
    let racers: Vec<_> = (0..10)
        .map(|i| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                let etcd = client_for(&url);
                barrier.wait();
                (
                    format!("n-{i}"),
                    lease::acquire(&etcd, &format!("n-{i}"), 1, 60).unwrap(),
                )
            })
        })
        .collect();
    let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    let winners: Vec<&String> = results
        .iter()
        .filter(|(_, a)| matches!(a, Acquired::Held(h) if h.taken_now))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let winner = winners[0].clone();
    let etcd = client_for(&url);
    let holders = lease::holders(&etcd).unwrap();
    assert_eq!((holders.len(), holders[0].node.as_str()), (1, winner.as_str()));
    for (n, a) in &results {
        if *n != winner {
            assert!(
                matches!(a, Acquired::Busy(h) if h.len() == 1 && h[0].node == winner),
                "{n}: {a:?}"
            );
        }
    }

    // After its reboot the winner finds its slot again and keeps it alive.
    match lease::acquire(&etcd, &winner, 1, 60).unwrap() {
        Acquired::Held(h) => assert!(!h.taken_now && h.slot == 0, "{h:?}"),
        other => panic!("{other:?}"),
    }
    let left = lease::keep(&etcd, &winner).unwrap().unwrap();
    assert!((50..=60).contains(&left), "{left}");

    // Another node's release frees nothing; the holder's does.
    assert!(!lease::release(&etcd, "n-x").unwrap());
    assert!(lease::release(&etcd, &winner).unwrap());
    assert!(lease::holders(&etcd).unwrap().is_empty());
    assert_eq!(lease::keep(&etcd, &winner).unwrap(), None);

    // Two slots: two holders, a third waits.
    for n in ["a", "b"] {
        assert!(matches!(lease::acquire(&etcd, n, 2, 60).unwrap(), Acquired::Held(_)));
    }
    assert!(matches!(lease::acquire(&etcd, "c", 2, 60).unwrap(), Acquired::Busy(h) if h.len() == 2));
    assert!(lease::release(&etcd, "a").unwrap() && lease::release(&etcd, "b").unwrap());

    // A holder that dies (keeps nothing alive) loses its slot after its TTL.
    assert!(matches!(
        lease::acquire(&etcd, "dies", 1, 2).unwrap(),
        Acquired::Held(_)
    ));
    assert!(matches!(
        lease::acquire(&etcd, "waits", 1, 60).unwrap(),
        Acquired::Busy(_)
    ));
    let start = Instant::now();
    loop {
        match lease::acquire(&etcd, "waits", 1, 60).unwrap() {
            Acquired::Held(h) => {
                assert!(h.taken_now);
                break;
            }
            Acquired::Busy(_) => {
                assert!(start.elapsed() < Duration::from_secs(15), "the TTL never ran out");
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
    eprintln!(
        "a 2 s lease was freed {:.1?} after it was last seen held",
        start.elapsed()
    );
}

#[test]
fn operators_see_and_free_the_lease_from_the_command_line() {
    let (_m, url) = member();
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_cairn-node"))
            .arg("reboot-lease")
            .args(args)
            .args(["--etcd", &url])
            .output()
            .unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    assert_eq!(run(&["status"]), (Some(0), "reboot lease: free".into()));
    assert_eq!(
        run(&["take", "--node", "cp-1"]),
        (Some(0), "reboot lease: cp-1 took slot 0".into())
    );
    assert_eq!(
        run(&["take", "--node", "cp-2"]),
        (Some(2), "reboot lease: busy, held by cp-1".into())
    );
    let (code, said) = run(&["status"]);
    assert!(
        code == Some(0) && said.starts_with("reboot lease: slot 0 held by cp-1"),
        "{said}"
    );
    let (code, said) = run(&["keep", "--node", "cp-1"]);
    assert!(
        code == Some(0) && said.starts_with("reboot lease: cp-1 keeps its slot for another "),
        "{said}"
    );
    // An operator frees the slot of a node that will not come back.
    assert_eq!(
        run(&["release", "--node", "cp-1"]),
        (Some(0), "reboot lease: cp-1 gave up its slot".into())
    );
    assert_eq!(
        run(&["take", "--node", "cp-2"]),
        (Some(0), "reboot lease: cp-2 took slot 0".into())
    );
}

#[test]
fn no_endpoint_answering_is_an_error_naming_them() {
    let closed = free_port();
    let etcd = client_for(&format!("http://127.0.0.1:{closed}"));
    let e = lease::holders(&etcd).unwrap_err().to_string();
    assert!(e.contains(&format!("127.0.0.1:{closed}")), "{e}");
    assert!(Etcd::new(&["https://127.0.0.1:1".into()], None, Duration::from_secs(1)).is_err());
    assert!(Etcd::new(&["127.0.0.1:1\n".into()], None, Duration::from_secs(1)).is_err());
}

#[test]
fn member_urls_that_are_not_one_endpoint_never_reach_etcdctl() {
    // The reboot guard dials what etcd's members advertise: each URL is one endpoint or
    // refused, so a member cannot add endpoints (a comma) or options to the command line.
    let base = client_for("http://127.0.0.1:2379");
    let huge = format!("http://{}:2379", "a".repeat(100_000));
    for bad in [
        "http://a,http://b:2379",
        "http://a:2379,http://b:2379",
        "http://a\n:2379",
        "http://a\0:2379",
        "http://a:2379/../x",
        "--endpoints=http://a:2379",
        "http://a:99999",
        huge.as_str(),
    ] {
        assert!(base.at(&[bad.to_string()]).is_err(), "{:?}", &bad[..bad.len().min(40)]);
    }
    assert!(base.at(&["http://[fd90::1]:2379".into()]).is_ok());
}

#[test]
fn node_names_that_are_not_host_names_never_reach_etcd() {
    let (_m, url) = member();
    let etcd = client_for(&url);
    for bad in ["a b", "x\ny", "cp-1\" = \"cp-1", "n\0", "", "../x", "-rf"] {
        let e = lease::acquire(&etcd, bad, 1, 60).unwrap_err().to_string();
        assert!(e.contains("is not a node name"), "{bad:?}: {e}");
        assert!(lease::release(&etcd, bad).is_err() && lease::keep(&etcd, bad).is_err());
    }
    assert!(lease::holders(&etcd).unwrap().is_empty());
}

#[test]
fn an_update_reboots_only_with_a_slot_and_says_why_not() {
    let (_m, url) = member();
    let lease = cairn_node_config::Lease {
        etcd: vec![cairn_node_config::Url::parse(&url).unwrap()],
        slots: 1,
        ttl: 60,
    };
    let etcd = lease::etcd_for(&lease, std::path::Path::new("/nonexistent")).unwrap();
    let mut lines = Vec::new();
    let mut log = |l: &str| lines.push(l.to_string());
    let once = lease::Patience::none;
    // One member, healthy: the guard lets it go.
    assert!(lease::before_reboot(
        &etcd,
        &lease,
        "cp-1",
        "0.2.0",
        true,
        once(),
        &mut log
    ));
    // Asked again (the timer ran again before the reboot): still the holder.
    assert!(lease::before_reboot(
        &etcd,
        &lease,
        "cp-1",
        "0.2.0",
        true,
        once(),
        &mut log
    ));
    // Another node waits, installed, and says for whom.
    assert!(!lease::before_reboot(
        &etcd,
        &lease,
        "cp-2",
        "0.2.0",
        false,
        once(),
        &mut log
    ));
    assert!(lines[0].contains("cp-1 took reboot lease slot 0"), "{lines:?}");
    assert!(lines[1].contains("cp-1 holds reboot lease slot 0"), "{lines:?}");
    assert!(
        lines[2].contains("0.2.0 is installed; not rebooting: the reboot lease is held by cp-1"),
        "{lines:?}"
    );

    // With patience, it asks again until the slot is free: the holder gives it up while
    // cp-2 waits (here: in cp-2's third wait), and the reason is said once.
    let mut lines = Vec::new();
    let mut waits = 0;
    let mut sleep = |d: Duration| {
        assert_eq!(d, Duration::from_secs(15));
        waits += 1;
        if waits == 3 {
            assert!(lease::release(&etcd, "cp-1").unwrap());
        }
    };
    let patience = lease::Patience {
        every: Duration::from_secs(15),
        at_most: Duration::from_secs(600),
        sleep: Box::new(&mut sleep),
    };
    assert!(lease::before_reboot(
        &etcd,
        &lease,
        "cp-2",
        "0.2.0",
        false,
        patience,
        &mut |l| lines.push(l.to_string())
    ));
    assert_eq!(waits, 3);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("waiting to reboot: the reboot lease is held by cp-1 (asking every 15 s for up to 10 min)"),
        "{lines:?}"
    );
    assert!(lines[1].contains("cp-2 took reboot lease slot 0"), "{lines:?}");

    // Patience runs out: it says so, and leaves the rest to the next update run.
    let mut lines = Vec::new();
    let mut waits = 0;
    let mut sleep = |_| waits += 1;
    let patience = lease::Patience {
        every: Duration::from_secs(15),
        at_most: Duration::from_secs(60),
        sleep: Box::new(&mut sleep),
    };
    assert!(!lease::before_reboot(
        &etcd,
        &lease,
        "cp-3",
        "0.2.0",
        false,
        patience,
        &mut |l| lines.push(l.to_string())
    ));
    assert_eq!(waits, 4);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[1].contains("not rebooting: the reboot lease is held by cp-2 (the next update run asks again)"),
        "{lines:?}"
    );

    // An etcd nobody answers on: no reboot, and the reason.
    let dead = cairn_node_config::Lease {
        etcd: vec![cairn_node_config::Url::parse(&format!("http://127.0.0.1:{}", free_port())).unwrap()],
        ..lease
    };
    let etcd = lease::etcd_for(&dead, std::path::Path::new("/")).unwrap();
    let mut said = String::new();
    assert!(!lease::before_reboot(
        &etcd,
        &dead,
        "cp-3",
        "0.2.0",
        true,
        once(),
        &mut |l| said.push_str(l)
    ));
    assert!(
        said.contains("cannot be asked for") && said.contains("not rebooting"),
        "{said}"
    );
}

#[test]
fn member_names_that_are_not_host_names_get_no_etcd_user() {
    // A member name is whatever its etcd was started with; only host names become users
    // (and the node config's names are checked the same way).
    let (_m, url) = member_named("cp 1;$(reboot)");
    let etcd = client_for(&url);
    let names = ["cp-2", "../cp-3", "-rf", "cp-4\n"].map(String::from);
    let done = cairn_node::etcd_auth::set_up(&etcd, &names, None).unwrap();
    assert_eq!(done.added, ["root", "cairn-node:cp-2", "cairn-lease"], "{done:?}");
    assert_eq!(
        done.skipped,
        ["../cp-3", "-rf", "cp-4\\n", "cp 1;$(reboot)"],
        "{done:?}"
    );
    // Authentication is on: this plain-http client (no certificate, no user) gets nothing.
    let e = lease::holders(&etcd).unwrap_err();
    assert!(e.to_string().contains("user name is empty"), "{e}");
}
