//! The key agent's life after enrollment, against a real keyserver on loopback with one
//! hand-set clock for both (no sleeps): renewal at the deadline with new keys, a keyserver
//! that is away, an identity that expired while the node was off, a lost answer asked for
//! again, and a copied disk that gets the node locked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_keys::audit::Outcome;
use cairn_keys::profiles::{profile_names, Role};
use cairn_keys::Clock;
use cairn_keyserver::serve::Server;
use cairn_keyserver::{ca, renew as ks_renew, tokens, Keyserver};
use cairn_node::key_agent::run::{Agent, Settings};
use cairn_node::key_agent::state::AgentState;
use cairn_node::key_agent::{self, AgentError};

const DAY: u64 = 86_400;

struct World {
    state: PathBuf,
    port: u16,
    fingerprint: [u8; 32],
    time: Arc<AtomicU64>,
    clock: Clock,
    root: tempfile::TempDir,
    _tmp: tempfile::TempDir,
}

impl World {
    /// A keyserver, and a node with a token for `name` as `role`, sharing one clock.
    fn new(name: &str, role: Role) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let time = Arc::new(AtomicU64::new(cairn_signing::time::now()));
        let clock = Clock::manual(time.clone());
        let state = tmp.path().join("ks");
        let made = ca::init(&state, "test", clock.now()).unwrap();
        let server = Server::bind_with_clock(
            Keyserver::open(&state).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            &["127.0.0.1".into()],
            clock.clone(),
        )
        .unwrap();
        let port = server.local_addr().port();
        std::thread::spawn(move || server.run());
        let fingerprint = hex::decode(made.keyserver_fingerprint.strip_prefix("sha256:").unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let ks = Keyserver::open(&state).unwrap();
        let (token, _) = tokens::create(&ks, name, role, 3600, "alice", clock.now()).unwrap();
        let root = tempfile::tempdir().unwrap();
        let token_file = root.path().join("var/lib/cairn/key-agent/token");
        std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        World {
            state,
            port,
            fingerprint,
            time,
            clock,
            root,
            _tmp: tmp,
        }
    }

    fn settings(&self, name: &str, role: Role) -> Settings {
        Settings {
            hostname: name.into(),
            role,
            server: Some(key_agent::Server {
                host: "127.0.0.1".into(),
                port: self.port,
                ca_fingerprint: self.fingerprint,
            }),
            token_file: "/var/lib/cairn/key-agent/token".into(),
            etcd: None,
            mesh: None,
        }
    }

    fn agent(&self, root: &Path, name: &str, role: Role) -> Agent {
        Agent::new(root, self.settings(name, role), self.clock.clone()).with_timeout(Duration::from_secs(10))
    }

    fn advance(&self, secs: u64) {
        self.time.fetch_add(secs, Ordering::SeqCst);
    }

    fn ks(&self) -> Keyserver {
        Keyserver::open(&self.state).unwrap()
    }
}

/// Serial of each profile's current certificate.
fn serials(root: &Path, role: Role) -> BTreeMap<&'static str, String> {
    profile_names(role)
        .into_iter()
        .map(|p| (p, key_agent::current(root, p).unwrap().serial))
        .collect()
}

fn key_of(root: &Path, profile: &str) -> String {
    std::fs::read_to_string(root.join("var/lib/cairn/pki").join(profile).join("current/key.pem")).unwrap()
}

fn openssl_verify(root: &Path, profile: &str) {
    let cur = root.join("var/lib/cairn/pki").join(profile).join("current");
    // OpenSSL checks times on the real clock; the test clock is at most weeks ahead, so
    // check the chain as of the certificate's own start.
    let start = key_agent::current(root, profile).unwrap().validity.not_before + 600;
    let out = Command::new("openssl")
        .args(["verify", "-attime", &start.to_string(), "-CAfile"])
        .arg(cur.join("bundle.pem"))
        .arg(cur.join("cert.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_agent_enrolls_then_renews_at_the_deadline_with_new_keys() {
    let w = World::new("cp-1", Role::ControlPlane);
    let root = w.root.path();
    let mut agent = w.agent(root, "cp-1", Role::ControlPlane);
    let p = agent.pass();
    assert!(p.ready, "{p:?}");
    assert!(
        p.lines[0].starts_with("cairn: key agent enrolled cp-1 (control-plane) with 127.0.0.1:"),
        "{p:?}"
    );
    assert!(p.sleep <= 300, "never sleeps longer than five minutes: {p:?}");
    assert!(!root.join("var/lib/cairn/key-agent/token").exists());
    let first = serials(root, Role::ControlPlane);
    let first_key = key_of(root, "etcd-peer");

    // Day 15: a third of 30 days is 10, so nothing is due until day 20 (± a day).
    w.advance(15 * DAY);
    let p = agent.pass();
    assert_eq!((p.lines.len(), p.ready, p.sleep), (0, true, 300), "{p:?}");
    assert_eq!(serials(root, Role::ControlPlane), first);

    // Day 22: due; every certificate is new, each with a new key.
    w.advance(7 * DAY);
    let p = agent.pass();
    assert!(
        p.lines[0].starts_with("cairn: key agent renewed 6 certificates of cp-1 with 127.0.0.1:")
            && p.lines[0].contains("(generation 2)"),
        "{p:?}"
    );
    let second = serials(root, Role::ControlPlane);
    for (profile, serial) in &second {
        assert_ne!(serial, &first[profile], "{profile}");
        openssl_verify(root, profile);
    }
    assert_ne!(key_of(root, "etcd-peer"), first_key);
    let state = AgentState::load(root).unwrap().unwrap();
    assert_eq!((state.generation, state.last_error.clone()), (2, None));
    assert!(!root.join("var/lib/cairn/key-agent/pending.json").exists());

    // Two more renewals: the generation before the current one is kept, older ones go.
    for _ in 0..2 {
        w.advance(21 * DAY);
        let p = agent.pass();
        assert!(p.lines[0].contains("renewed 6 certificates"), "{p:?}");
    }
    let dir = root.join("var/lib/cairn/pki/identity");
    let mut gens: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    gens.sort();
    assert_eq!(gens, ["current", "gen-3", "gen-4"]);
    assert_eq!(AgentState::load(root).unwrap().unwrap().generation, 4);
    let status = key_agent::status::status(root, w.clock.now()).unwrap();
    assert!(
        status.contains("generation 4") && status.contains("last error: none"),
        "{status}"
    );
    assert_eq!(status.lines().count(), 3 + 6, "{status}");
}

#[test]
fn a_keyserver_that_is_away_changes_nothing_and_renewal_resumes_when_it_returns() {
    let w = World::new("w-1", Role::Worker);
    let root = w.root.path();
    let mut agent = w.agent(root, "w-1", Role::Worker);
    assert!(agent.pass().ready);
    let before = serials(root, Role::Worker);
    let listing = |root: &Path| {
        let out = Command::new("find")
            .arg(root.join("var/lib/cairn/pki"))
            .args(["-printf", "%p %s %T@\n"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let files = listing(root);

    // The keyserver goes away (nothing listens where the node's state says it is).
    let mut state = AgentState::load(root).unwrap().unwrap();
    let real_port = state.server.port;
    state.server.port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    state.save(root).unwrap();
    w.advance(22 * DAY);
    let mut sleeps = Vec::new();
    for i in 0..6 {
        let p = agent.pass();
        assert!(p.ready, "the certificates in use stay in use: {p:?}");
        if i == 0 {
            // (The node.toml's keyserver differs from the state's now: said once.)
            assert!(
                p.lines.len() == 2
                    && p.lines[0].contains("it stays with that one")
                    && p.lines[1].starts_with("cairn: key agent: ")
                    && p.lines[1].contains("Connection refused")
                    && p.lines[1].contains("stay valid until"),
                "{p:?}"
            );
        } else {
            assert!(
                p.lines.is_empty(),
                "a failure is printed once an hour, not every try: {p:?}"
            );
        }
        sleeps.push(p.sleep);
        w.advance(p.sleep);
    }
    assert!(sleeps.iter().all(|s| (1..=300).contains(s)), "{sleeps:?}");
    assert_eq!(listing(root), files, "nothing under pki was touched");
    assert_eq!(serials(root, Role::Worker), before);
    let state = AgentState::load(root).unwrap().unwrap();
    assert!(state.last_error.is_some());
    let status = key_agent::status::status(root, w.clock.now()).unwrap();
    assert!(
        status.contains("last error: ") && !status.contains("last error: none"),
        "{status}"
    );

    // It comes back.
    let mut state = AgentState::load(root).unwrap().unwrap();
    state.server.port = real_port;
    state.save(root).unwrap();
    let p = agent.pass();
    assert!(p.lines[0].contains("renewed 4 certificates of w-1"), "{p:?}");
    assert!(AgentState::load(root).unwrap().unwrap().last_error.is_none());
}

#[test]
fn an_identity_that_expired_while_the_node_was_off_renews_within_the_grace() {
    let w = World::new("w-2", Role::Worker);
    let root = w.root.path();
    assert!(w.agent(root, "w-2", Role::Worker).pass().ready);
    // Off for 40 days: every certificate has ended, the identity within its grace.
    w.advance(40 * DAY);
    let p = w.agent(root, "w-2", Role::Worker).pass();
    assert!(p.lines[0].contains("renewed 4 certificates"), "{p:?}");

    // Off for 130 more days: beyond the grace, which only a new token can mend.
    w.advance(130 * DAY);
    let p = w.agent(root, "w-2", Role::Worker).pass();
    assert!(
        p.lines[0].contains("identity_expired_beyond_grace") && p.lines[0].contains("cairn token create --node w-2"),
        "{p:?}"
    );
}

fn copy(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    let out = Command::new("cp")
        .args(["-a", &format!("{}/.", from.display())])
        .arg(to.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    to
}

#[test]
fn a_lost_answer_is_asked_for_again_and_a_copied_disk_gets_the_node_locked() {
    let w = World::new("cp-2", Role::ControlPlane);
    let root = w.root.path();
    assert!(w.agent(root, "cp-2", Role::ControlPlane).pass().ready);
    w.advance(22 * DAY);
    let timeout = Duration::from_secs(10);

    // A copy of the disk as it was at generation 1 (a cloned VM, a stolen disk).
    let clone = copy(root);

    // The request is made and kept; the answer to the first send is "lost" (the node
    // holding the copy sends it as well, byte for byte, and installs what it gets).
    let mut state = AgentState::load(root).unwrap().unwrap();
    key_agent::renew::prepare(root, &state).unwrap();
    let lost = copy(root);
    key_agent::renew::renew(root, &mut state, timeout, &w.clock).unwrap();
    let mut again = AgentState::load(lost.path()).unwrap().unwrap();
    key_agent::renew::renew(lost.path(), &mut again, timeout, &w.clock).unwrap();
    assert_eq!(again.generation, 2);
    assert_eq!(
        serials(lost.path(), Role::ControlPlane),
        serials(root, Role::ControlPlane),
        "the same answer, again"
    );

    // The clone at generation 1 makes its own request: refused, and the node locked.
    let mut old = AgentState::load(clone.path()).unwrap().unwrap();
    let e = key_agent::renew::renew(clone.path(), &mut old, timeout, &w.clock).unwrap_err();
    assert!(
        matches!(&e, AgentError::Refused { code, retry: false, .. } if code == "generation_mismatch"),
        "{e}"
    );
    let ks = w.ks();
    let alerts: Vec<_> = ks
        .audit_records()
        .unwrap()
        .into_iter()
        .filter(|r| r.result == Outcome::Alert)
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].code.as_deref(), Some("generation_mismatch"));

    // Now the real node cannot renew either, until an admin unlocks it.
    w.advance(21 * DAY);
    let e = key_agent::renew::renew(root, &mut state, timeout, &w.clock).unwrap_err();
    assert!(
        matches!(&e, AgentError::Refused { code, .. } if code == "node_locked"),
        "{e}"
    );
    assert!(e.to_string().contains("cairn keyserver unlock STATE cp-2"), "{e}");
    ks_renew::unlock(&ks, "cp-2", "alice", w.clock.now()).unwrap();
    key_agent::renew::renew(root, &mut state, timeout, &w.clock).unwrap();
    assert_eq!(state.generation, 3);
}

#[test]
fn an_enrollment_whose_answer_was_lost_asks_again_with_the_same_keys() {
    let w = World::new("w-9", Role::Worker);
    let root = w.root.path();
    let mut agent = w.agent(root, "w-9", Role::Worker);
    // The answer comes but cannot be written (as if the node lost power after it came).
    let pki = root.join("var/lib/cairn/pki");
    std::fs::write(&pki, "in the way").unwrap();
    let p = agent.pass();
    assert!(!p.ready, "{p:?}");
    let kept = root.join("var/lib/cairn/key-agent/enrolling.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(
        root.join("var/lib/cairn/key-agent/token").exists(),
        "the token stays until it has paid"
    );

    // The next try sends the same keys: the keyserver answers again, and raises no alarm.
    std::fs::remove_file(&pki).unwrap();
    let p = agent.pass();
    assert!(p.ready && p.lines[0].contains("enrolled w-9 (worker)"), "{p:?}");
    assert!(!kept.exists() && !root.join("var/lib/cairn/key-agent/token").exists());
    let records = w.ks().audit_records().unwrap();
    assert!(records.iter().all(|r| r.result == Outcome::Ok), "{records:?}");
    let again = records
        .iter()
        .filter(|r| r.action == "claim" && r.code.as_deref() == Some("again"));
    assert_eq!(again.count(), 1, "{records:?}");
}

#[test]
fn no_enrollment_on_a_clock_before_the_image_was_built() {
    let w = World::new("w-8", Role::Worker);
    let root = w.root.path();
    // The image was built a minute from now by this node's (and the keyserver's) clock.
    let epoch = root.join("usr/lib/clock-epoch");
    std::fs::create_dir_all(epoch.parent().unwrap()).unwrap();
    std::fs::write(&epoch, "").unwrap();
    let built = w.clock.now() + 60;
    let ok = Command::new("touch")
        .arg("-d")
        .arg(format!("@{built}"))
        .arg(&epoch)
        .status()
        .unwrap();
    assert!(ok.success());
    let before = w.ks().audit_records().unwrap().len();
    let mut agent = w.agent(root, "w-8", Role::Worker);
    let p = agent.pass();
    assert!(!p.ready, "{p:?}");
    assert!(
        p.lines[0].contains("before its image was built") && p.lines[0].contains("retrying in"),
        "{p:?}"
    );
    assert_eq!(w.ks().audit_records().unwrap().len(), before, "nothing was asked");
    assert!(root.join("var/lib/cairn/key-agent/token").exists());
    w.advance(120);
    assert!(agent.pass().ready);
}

#[test]
fn a_clock_that_differs_from_the_keyservers_is_reported() {
    let w = World::new("w-7", Role::Worker);
    let root = w.root.path();
    // The node's clock runs two minutes ahead of the keyserver's.
    let node_time = Arc::new(AtomicU64::new(w.clock.now() + 120));
    let mut agent = Agent::new(root, w.settings("w-7", Role::Worker), Clock::manual(node_time))
        .with_timeout(Duration::from_secs(10));
    let p = agent.pass();
    assert!(p.ready, "{p:?}");
    assert!(
        p.lines.iter().any(|l| l.contains("is 120 s ahead of the keyserver's")),
        "{p:?}"
    );
}
