//! The WireGuard mesh on loopback: a real keyserver and real key agents, each node with the
//! key its config apply made, and the peer lists the keyserver hands out.
//!
//! This machine's kernel has no WireGuard, so `wg` is stood in for by [`FakeWg`], which
//! keeps a peer table the way the kernel does and takes `wg set` as `wg` parses it; the
//! real interface is driven in the QEMU cluster test.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_keys::profiles::Role;
use cairn_keys::Clock;
use cairn_keyserver::serve::Server;
use cairn_keyserver::{ca, registry, renew as ks_renew, tokens, Keyserver};
use cairn_node::config::NodeConfig;
use cairn_node::key_agent::run::{Agent, Settings, PEERS_STARTING_FOR, PEER_INTERVAL, PEER_INTERVAL_STARTING};
use cairn_node::mesh::{LivePeer, WgTool};

/// A WireGuard interface's peers, as `wg set` changes them and `wg show dump` prints them.
#[derive(Clone, Default)]
struct FakeWg {
    peers: Arc<Mutex<BTreeMap<String, LivePeer>>>,
    runs: Arc<AtomicU64>,
}

impl WgTool for FakeWg {
    fn dump(&self, interface: &str) -> Result<String, String> {
        assert!(interface.starts_with("wg"));
        let mut s = "(private)\t(public)\t51820\toff\n".to_string();
        for (k, p) in self.peers.lock().unwrap().iter() {
            let ips: Vec<&str> = p.allowed_ips.iter().map(String::as_str).collect();
            s.push_str(&format!(
                "{k}\t(none)\t{}\t{}\t0\t0\t0\t{}\n",
                p.endpoint.as_deref().unwrap_or("(none)"),
                if ips.is_empty() { "(none)".into() } else { ips.join(",") },
                p.keepalive.map_or("off".into(), |k| k.to_string())
            ));
        }
        Ok(s)
    }

    fn run(&self, args: &[String]) -> Result<(), String> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        let mut it = args.iter().map(String::as_str);
        assert_eq!(it.next(), Some("set"));
        assert!(it.next().is_some_and(|i| i.starts_with("wg")));
        assert_eq!(it.next(), Some("peer"));
        let key = it.next().ok_or("no key")?.to_string();
        cairn_keys::mesh::check_public_key(&key)?;
        let mut peers = self.peers.lock().unwrap();
        let mut p = peers.get(&key).cloned().unwrap_or_default();
        while let Some(word) = it.next() {
            match word {
                "remove" => {
                    peers.remove(&key);
                    return Ok(());
                }
                "endpoint" => p.endpoint = Some(it.next().ok_or("no endpoint")?.to_string()),
                "allowed-ips" => p.allowed_ips = it.next().ok_or("no ips")?.split(',').map(str::to_string).collect(),
                "persistent-keepalive" => p.keepalive = Some(it.next().ok_or("no keepalive")?.parse().unwrap()),
                other => return Err(format!("wg set: unknown word {other}")),
            }
        }
        peers.insert(key, p);
        Ok(())
    }
}

struct Cluster {
    ks: Keyserver,
    port: u16,
    fingerprint: [u8; 32],
    time: Arc<AtomicU64>,
    clock: Clock,
    tmp: tempfile::TempDir,
}

struct Node {
    name: String,
    root: std::path::PathBuf,
    wg: FakeWg,
    agent: Agent,
}

impl Cluster {
    fn new() -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let time = Arc::new(AtomicU64::new(cairn_signing::time::now()));
        let clock = Clock::manual(time.clone());
        let state = tmp.path().join("ks");
        let made = ca::init(&state, "mesh", clock.now()).unwrap();
        let server = Server::bind_with_clock(
            Keyserver::open(&state).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            &["127.0.0.1".into()],
            clock.clone(),
        )
        .unwrap();
        let port = server.local_addr().port();
        std::thread::spawn(move || server.run());
        Cluster {
            ks: Keyserver::open(&state).unwrap(),
            port,
            fingerprint: hex::decode(made.keyserver_fingerprint.strip_prefix("sha256:").unwrap())
                .unwrap()
                .try_into()
                .unwrap(),
            time,
            clock,
            tmp,
        }
    }

    fn tick(&self, secs: u64) {
        self.time.fetch_add(secs, Ordering::Relaxed);
    }

    /// A node registered from its node.toml, its config applied (which makes its key),
    /// with a token; `extra` is added to its node.toml.
    fn node(&self, n: u8, underlay: &str, extra: &str) -> Node {
        let ks = &self.ks;
        let name = format!("w-{n}");
        let (token, _) = tokens::create(ks, &name, Role::Worker, 3600, "alice", self.clock.now()).unwrap();
        let text = format!(
            "version = 1\ngeneration = 1\nhostname = \"{name}\"\nrole = \"worker\"\n\
             [[network.interface]]\nmac = \"52:54:00:00:00:0{n}\"\naddress = [\"{underlay}\"]\n\
             [wireguard]\naddress = [\"10.90.0.{n}/24\", \"fd90::{n}/64\"]\n{extra}\
             [key-agent]\nserver = \"https://127.0.0.1:{}\"\nca-fingerprint = \"sha256:{}\"\nbootstrap-token = \"{token}\"\n",
            self.port,
            hex::encode(self.fingerprint)
        );
        let config = NodeConfig::parse(&text, "node.toml").unwrap();
        registry::register(ks, &registry::record_for(&config), "alice", self.clock.now()).unwrap();
        let root = self.tmp.path().join(&name);
        let saved = root.join("var/lib/cairn/node.toml");
        std::fs::create_dir_all(saved.parent().unwrap()).unwrap();
        std::fs::write(&saved, &text).unwrap();
        let log = cairn_node::apply::apply(&root).unwrap();
        assert!(
            log.iter().any(|l| l.contains("made the WireGuard key of wg0")),
            "{log:?}"
        );
        let wg = FakeWg::default();
        let agent = Agent::new(&root, Settings::from_config(&config), self.clock.clone())
            .with_timeout(Duration::from_secs(10))
            .with_wg(Box::new(wg.clone()));
        Node { name, root, wg, agent }
    }
}

impl Node {
    fn public_key(&self) -> String {
        cairn_node::mesh::public_key(&self.root).unwrap()
    }

    fn peers(&self) -> BTreeMap<String, LivePeer> {
        self.wg.peers.lock().unwrap().clone()
    }
}

fn private_key_text(root: &Path) -> String {
    std::fs::read_to_string(root.join("var/lib/cairn/wireguard/wg0.key"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn nodes_find_each_other_through_the_keyserver() {
    let c = Cluster::new();
    let mut a = c.node(1, "192.0.2.1/24", "");
    let mut b = c.node(2, "2001:db8::2/64", "");
    let mut d = c.node(3, "192.0.2.3/24", "endpoint = \"nat.example.net:40000\"\n");

    // The key is the node's own: made once, 0600, kept when the config is applied again.
    let key_a = private_key_text(&a.root);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(a.root.join("var/lib/cairn/wireguard/wg0.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // Its public half is kept beside it for the health gate, which may not read the key.
    let public = std::fs::read_to_string(a.root.join("var/lib/cairn/wireguard/wg0.pub")).unwrap();
    assert_eq!(public.trim(), a.public_key());
    std::fs::remove_file(a.root.join("var/lib/cairn/wireguard/wg0.pub")).unwrap();
    cairn_node::apply::apply(&a.root).unwrap();
    assert_eq!(private_key_text(&a.root), key_a, "applying again keeps the key");
    let again = std::fs::read_to_string(a.root.join("var/lib/cairn/wireguard/wg0.pub")).unwrap();
    assert_eq!(again, public, "and puts its public half back");

    // The first node to enroll has no one to talk to yet; a pass soon after (every 10 s
    // while the agent is starting, then every minute) lists the others once they have
    // enrolled.
    let p = a.agent.pass();
    assert!(p.lines[0].contains("enrolled w-1"), "{p:?}");
    assert!(p.sleep <= PEER_INTERVAL_STARTING, "{p:?}");
    assert!(a.peers().is_empty());
    b.agent.pass();
    d.agent.pass();
    c.tick(PEER_INTERVAL);
    let p = a.agent.pass();
    assert!(
        p.lines
            .iter()
            .any(|l| l.contains("wg0 now has 2 peers from the keyserver")),
        "{p:?}"
    );
    let peers = a.peers();
    let pb = &peers[&b.public_key()];
    assert_eq!(
        pb.endpoint.as_deref(),
        Some("[2001:db8::2]:51820"),
        "IPv6 endpoints work"
    );
    assert_eq!(
        pb.allowed_ips.iter().cloned().collect::<Vec<_>>(),
        ["10.90.0.2/32", "fd90::2/128"]
    );
    assert_eq!(pb.keepalive, Some(cairn_keys::mesh::KEEPALIVE));
    assert_eq!(
        peers[&d.public_key()].endpoint.as_deref(),
        Some("nat.example.net:40000"),
        "node.toml's endpoint wins over the static address"
    );
    // w-2 and w-3 got theirs at enrollment (w-3 sees both, w-2 only w-1).
    assert_eq!(d.peers().len(), 2);
    assert_eq!(b.peers().len(), 1);

    // No private key ever left a node: the keyserver's state holds none of them.
    for root in [&a.root, &b.root, &d.root] {
        let secret = private_key_text(root);
        for entry in walk(c.ks.dir()) {
            let text = std::fs::read(&entry).unwrap();
            assert!(
                !String::from_utf8_lossy(&text).contains(&secret),
                "{} holds a private key",
                entry.display()
            );
        }
    }

    // A pass with nothing new changes nothing on the interface.
    let runs = a.wg.runs.load(Ordering::Relaxed);
    c.tick(PEER_INTERVAL);
    let p = a.agent.pass();
    assert!(!p.lines.iter().any(|l| l.contains("peers")), "{p:?}");
    assert_eq!(a.wg.runs.load(Ordering::Relaxed), runs);

    // A node added later is reached by the others at their next poll, untouched.
    let mut e = c.node(4, "192.0.2.4/24", "");
    e.agent.pass();
    assert_eq!(e.peers().len(), 3);
    c.tick(PEER_INTERVAL);
    for n in [&mut a, &mut b, &mut d] {
        n.agent.pass();
        assert!(n.peers().contains_key(&e.public_key()), "{} sees w-4", n.name);
    }

    // A node the keyserver locks drops out of the others' lists.
    let mut st = ks_renew::issued(&c.ks, "w-4").unwrap().unwrap();
    st.locked = Some("test".into());
    std::fs::write(c.ks.dir().join("issued/w-4.json"), serde_json::to_string(&st).unwrap()).unwrap();
    c.tick(PEER_INTERVAL);
    let p = a.agent.pass();
    assert!(p.lines.iter().any(|l| l.contains("1 removed")), "{p:?}");
    assert!(!a.peers().contains_key(&e.public_key()));
    let kept = cairn_node::mesh::load(&a.root, "wg0").unwrap();
    assert_eq!(kept.peers.len(), 2);

    // Past its start, the agent asks once a minute.
    c.tick(PEERS_STARTING_FOR);
    let p = a.agent.pass();
    assert!(p.sleep > PEER_INTERVAL_STARTING && p.sleep <= PEER_INTERVAL, "{p:?}");
}

#[test]
fn a_rebooted_node_is_back_on_the_mesh_while_the_keyserver_is_down() {
    let c = Cluster::new();
    let mut a = c.node(1, "192.0.2.1/24", "");
    let mut b = c.node(2, "192.0.2.2/24", "");
    a.agent.pass();
    b.agent.pass();
    assert_eq!(b.peers().len(), 1);

    // The keyserver's record is gone from reach: a new agent (a reboot: the interface
    // comes up with node.toml's peers only) on a node pointed at a dead port.
    let mut settings = Settings::from_config(
        &NodeConfig::parse(
            &std::fs::read_to_string(b.root.join("var/lib/cairn/node.toml")).unwrap(),
            "node.toml",
        )
        .unwrap(),
    );
    settings.server = None;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let mut st = cairn_node::key_agent::state::AgentState::load(&b.root)
        .unwrap()
        .unwrap();
    st.server.port = dead_port;
    st.save(&b.root).unwrap();
    let wg = FakeWg::default();
    let mut agent = Agent::new(&b.root, settings, c.clock.clone())
        .with_timeout(Duration::from_secs(2))
        .with_wg(Box::new(wg.clone()));
    let p = agent.pass();
    assert!(p.ready, "{p:?}");
    assert!(
        p.lines
            .iter()
            .any(|l| l.contains("has the 1 peers the keyserver listed")),
        "{p:?}"
    );
    assert!(p.lines.iter().any(|l| l.contains("keeps the peers it has")), "{p:?}");
    assert!(wg.peers.lock().unwrap().contains_key(&a.public_key()));
}

#[test]
fn a_key_in_node_toml_needs_no_keyserver_and_none_without_one_is_refused() {
    let e = NodeConfig::parse(
        "version = 1\ngeneration = 1\nhostname = \"w\"\nrole = \"worker\"\n[wireguard]\naddress = [\"10.90.0.1/24\"]\n",
        "node.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no private-key") && e.contains("[key-agent]"), "{e}");
    assert!(e.contains("node.toml:5"), "{e}");
    let e = NodeConfig::parse(
        "version = 1\ngeneration = 1\nhostname = \"w\"\nrole = \"worker\"\n[wireguard]\nprivate-key = \"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\"\naddress = [\"10.90.0.1/24\"]\nendpoint = \"192.0.2.1:51820\\n[x]\"\n",
        "node.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("is not HOST:PORT"), "{e}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
