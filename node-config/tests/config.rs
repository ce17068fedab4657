//! node.toml: every fixture under tests/fixtures/node-config/ parses and renders exactly to
//! its golden files; every bad one is refused with the expected line and message.
//! `CAIRN_BLESS=1 cargo test -p cairn-node-config --test config` rewrites the golden files.

use std::path::{Path, PathBuf};

use cairn_node_config::render;
use cairn_node_config::{NodeConfig, Role, WgKey};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node-config")
}

fn golden_name(path: &str) -> String {
    path.trim_start_matches('/').replace('/', "__")
}

#[test]
fn good_configs_render_their_golden_files() {
    let bless = std::env::var_os("CAIRN_BLESS").is_some();
    let mut checked = 0;
    for scenario in [
        "control-plane",
        "control-plane-tls",
        "control-plane-keyserver",
        "worker",
        "default",
        "static-network",
    ] {
        let dir = fixtures().join(scenario);
        let text = std::fs::read_to_string(dir.join("node.toml")).unwrap();
        let config = NodeConfig::parse(&text, "node.toml").unwrap_or_else(|e| panic!("{scenario}: {e}"));
        let outputs = render::plan(&config, &text).unwrap();
        let expected = dir.join("expected");
        if bless {
            let _ = std::fs::remove_dir_all(&expected);
            std::fs::create_dir_all(&expected).unwrap();
        }
        let mut names: Vec<String> = Vec::new();
        for o in &outputs {
            let name = golden_name(&o.path);
            let file = expected.join(&name);
            let body = format!("# mode {:o} owner {:?}\n{}", o.mode, o.owner, o.text);
            if bless {
                std::fs::write(&file, &body).unwrap();
            }
            let want = std::fs::read_to_string(&file).unwrap_or_else(|_| panic!("{scenario}: no golden file {name}"));
            assert_eq!(body, want, "{scenario}: {} differs from its golden file", o.path);
            names.push(name);
            checked += 1;
        }
        // No golden file is left that the config no longer produces.
        let mut on_disk: Vec<String> = std::fs::read_dir(&expected)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        names.sort();
        assert_eq!(on_disk, names, "{scenario}: golden files");
    }
    assert!(checked >= 12, "{checked}");
}

#[test]
fn bad_configs_name_the_line_and_the_problem() {
    let dir = fixtures().join("bad");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 12, "{cases:?}");
    for case in cases {
        let text = std::fs::read_to_string(&case).unwrap();
        let want = std::fs::read_to_string(case.with_extension("err")).unwrap();
        let (line, message) = want.trim_end().split_once(": ").unwrap();
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let e = NodeConfig::parse(&text, &name).expect_err(&name);
        assert_eq!(e.line, Some(line.parse().unwrap()), "{name}: {e}");
        assert!(e.message.contains(message), "{name}: wanted '{message}', got: {e}");
        assert!(e.to_string().starts_with(&format!("{name}:{line}: ")), "{e}");
    }
}

#[test]
fn the_built_in_default_is_a_healthy_single_node() {
    let c = NodeConfig::single_node();
    assert_eq!(
        (c.role, c.hostname.as_str(), c.generation),
        (Role::ControlPlane, "cairn", 0)
    );
    let e = c.etcd.as_ref().unwrap();
    assert_eq!(e.data_dir.as_str(), "/var/lib/etcd/default");
    assert_eq!(e.initial_cluster.len(), 1);
    assert!(c.wireguard.is_none());
    // The same as the shipped example of the smallest config.
    let text = std::fs::read_to_string(fixtures().join("default/node.toml")).unwrap();
    assert_eq!(NodeConfig::parse(&text, "x").unwrap(), c);
}

#[test]
fn wireguard_public_keys_match_wg_pubkey() {
    // RFC 7748 section 6.1: Alice's private key and the public key X25519 gives for it.
    let private = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a").unwrap();
    let public = hex::decode("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a").unwrap();
    let key = WgKey(private.try_into().unwrap());
    assert_eq!(key.public().0.to_vec(), public);
    assert_eq!(WgKey::parse(&key.to_base64()).unwrap(), key);
}

#[test]
fn a_peer_with_our_own_key_is_refused() {
    let private = WgKey([1; 32]);
    let text = format!(
        "version = 1\ngeneration = 1\nhostname = \"n\"\n[wireguard]\nprivate-key = \"{}\"\naddress = [\"10.0.0.1/24\"]\n[[wireguard.peer]]\npublic-key = \"{}\"\nallowed-ips = []\n",
        private.to_base64(),
        private.public().to_base64()
    );
    let e = NodeConfig::parse(&text, "n.toml").unwrap_err();
    assert!(e.message.contains("own public key"), "{e}");
    assert_eq!(e.line, Some(8));
}

#[test]
fn update_source_and_reboot_policy() {
    use cairn_node_config::RebootPolicy;
    let base = "version = 1\ngeneration = 1\nhostname = \"n1\"\n[update]\n";
    let parse = |extra: &str| NodeConfig::parse(&format!("{base}{extra}"), "node.toml");
    let u = parse("source = \"https://updates.example.net:8443/cairn/node\"\n")
        .unwrap()
        .update
        .unwrap();
    assert_eq!(
        u.source, "https://updates.example.net:8443/cairn/node/",
        "a directory URL"
    );
    assert_eq!(u.reboot, RebootPolicy::Now);
    for (r, want) in [
        ("now", RebootPolicy::Now),
        ("never", RebootPolicy::Never),
        ("03:30", RebootPolicy::At(3, 30)),
        ("23:59", RebootPolicy::At(23, 59)),
    ] {
        let c = parse(&format!("source = \"http://10.0.0.5/node/\"\nreboot = \"{r}\"\n")).unwrap();
        assert_eq!(c.update.unwrap().reboot, want, "{r}");
    }
    for r in ["24:00", "12:60", "noon", "1:00"] {
        let e = parse(&format!("source = \"http://10.0.0.5/node/\"\nreboot = \"{r}\"\n")).unwrap_err();
        assert!(e.to_string().contains("[update] reboot"), "{r}: {e}");
    }
    for s in ["updates/node/", "http://", "http:// host/", "https://h/x?y=1"] {
        let e = parse(&format!("source = \"{s}\"\n")).unwrap_err();
        assert!(e.to_string().contains("[update] source"), "{s}: {e}");
    }
    assert!(NodeConfig::single_node().update.is_none());
}

#[test]
fn the_reboot_lease_is_on_for_members_of_a_cluster_and_checked() {
    const KA: &str = "[key-agent]\nserver = \"https://10.0.0.5:8443\"\nca-fingerprint = \"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\nbootstrap-token = \"ck1.6QZ4B2K9TD.VX3Q7M2K4P8R1C6J9W5T2N7H3F-4JPG\"\n";
    let three = "[etcd]\nclient-urls = [\"https://10.90.0.1:2379\"]\npeer-urls = [\"https://10.90.0.1:2380\"]\ninitial-cluster = { cp-1 = \"https://10.90.0.1:2380\", cp-2 = \"https://10.90.0.2:2380\", cp-3 = \"https://10.90.0.3:2380\" }\n";
    let node = |role: &str, etcd: &str, update: &str| {
        NodeConfig::parse(
            &format!(
                "version = 1\ngeneration = 1\nhostname = \"cp-1\"\nrole = \"{role}\"\n{etcd}{KA}[update]\nsource = \"http://10.0.0.5/node/\"\n{update}"
            ),
            "node.toml",
        )
    };
    // A member of three: its own etcd on 127.0.0.1, one slot, 15 minutes.
    let lease = node("control-plane", three, "").unwrap().update.unwrap().lease.unwrap();
    assert_eq!(lease.etcd[0].to_string(), "https://127.0.0.1:2379");
    assert_eq!((lease.slots, lease.ttl), (1, 900));
    // A single node has no quorum to keep: no lease unless asked for.
    assert!(node("control-plane", "", "").unwrap().update.unwrap().lease.is_none());
    assert!(node("worker", "", "").unwrap().update.unwrap().lease.is_none());
    // A worker uses the control plane's etcd when told where.
    let lease = node(
        "worker",
        "",
        "lease-etcd = [\"https://10.90.0.1:2379\", \"https://[fd90::2]:2379\"]\nlease-slots = 2\nlease-ttl = 600\n",
    )
    .unwrap()
    .update
    .unwrap()
    .lease
    .unwrap();
    assert_eq!(lease.etcd.len(), 2);
    assert_eq!((lease.slots, lease.ttl), (2, 600));
    assert!(node("control-plane", three, "lease = false\n")
        .unwrap()
        .update
        .unwrap()
        .lease
        .is_none());
    for (extra, want, line) in [
        ("lease = true\n", "no etcd member", 11),
        ("lease-etcd = [\"10.90.0.1:2379\"]\n", "lease-etcd", 11),
        ("lease-etcd = [\"https://10.90.0.1:2379\\n\"]\n", "lease-etcd", 11),
        ("lease-slots = 0\n", "lease-slots = 0", 11),
        ("lease-ttl = 10\n", "lease-ttl = 10", 11),
        ("reboot = \"03:30\"\n", "reboot window", 11),
    ] {
        let etcd = if extra.starts_with("lease = true") { "" } else { three };
        let e = node("control-plane", etcd, extra).unwrap_err().to_string();
        assert!(e.contains(want), "{extra}: {e}");
        let line = if etcd.is_empty() { line } else { line + 4 };
        assert!(e.contains(&format!("node.toml:{line}")), "{extra}: {e}");
    }
}

#[test]
fn real_ssh_keys_of_every_type_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    for (ty, bits) in [
        ("ed25519", ""),
        ("rsa", "2048"),
        ("ecdsa", "256"),
        ("ecdsa", "384"),
        ("ecdsa", "521"),
    ] {
        let key = dir.path().join(format!("{ty}{bits}"));
        let mut c = std::process::Command::new("ssh-keygen");
        c.args(["-q", "-N", "", "-C", "me@laptop", "-t", ty, "-f"]).arg(&key);
        if !bits.is_empty() {
            c.args(["-b", bits]);
        }
        assert!(c.status().unwrap().success());
        let line = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let got = cairn_node_config::ssh_key(&line).unwrap_or_else(|e| panic!("{ty}{bits}: {e}"));
        assert_eq!(got, line.trim());
    }
}

#[test]
fn labels_a_kubelet_may_set() {
    use cairn_node_config::kubelet_may_set;
    for ok in [
        "tier",
        "example.com/team",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "topology.kubernetes.io/zone",
        "node.kubernetes.io/pool",
        "x.node.kubernetes.io/y",
        "kubelet.kubernetes.io/z",
    ] {
        assert!(kubelet_may_set(ok), "{ok}");
    }
    for no in [
        "k8s.io/team",
        "kubernetes.io/archx",
        "node-role.kubernetes.io/control-plane",
        "node-restriction.kubernetes.io/x",
        "x.k8s.io/y",
    ] {
        assert!(!kubelet_may_set(no), "{no}");
    }
}

#[test]
fn globs_and_endpoints() {
    use cairn_node_config::{glob_matches, glob_may_match_prefix, valid_endpoint};
    assert!(glob_matches("en*", "enp1s0") && glob_matches("*", "lo") && glob_matches("l?", "lo"));
    assert!(!glob_matches("en*", "eth0") && !glob_matches("eth?", "eth10"));
    assert!(
        glob_may_match_prefix("*", "wg") && glob_may_match_prefix("w*", "wg") && glob_may_match_prefix("?g0", "wg")
    );
    assert!(!glob_may_match_prefix("en*", "wg") && !glob_may_match_prefix("eth0", "wg"));
    for ok in ["192.0.2.2:51820", "[2001:db8::3]:51820", "peer.example.net:1"] {
        assert!(valid_endpoint(ok), "{ok}");
    }
    for no in [
        "2001:db8::1:51820",
        "192.0.2.2:+51820",
        "[1.2.3.4]:51820",
        "h:0",
        "h:65536",
        ":51820",
        "h:",
    ] {
        assert!(!valid_endpoint(no), "{no}");
    }
}

#[test]
fn a_tls_table_alone_means_etcd_with_tls() {
    let text = "version = 1\ngeneration = 1\nhostname = \"cp-1\"\n[etcd.tls]\ncert = \"/var/lib/cairn/pki/etcd.crt\"\nkey = \"/var/lib/cairn/pki/etcd.key\"\nca = \"/var/lib/cairn/pki/ca.crt\"\n";
    let c = NodeConfig::parse(text, "node.toml").unwrap();
    let e = c.etcd.unwrap();
    assert_eq!(e.client_urls[0].to_string(), "https://127.0.0.1:2379");
    assert_eq!(e.tls.unwrap().cert.as_str(), "/var/lib/cairn/pki/etcd.crt");
    let worker = "version = 1\ngeneration = 1\nhostname = \"w\"\nrole = \"worker\"\n\n[etcd.tls]\ncert = \"/var/lib/cairn/a\"\nkey = \"/var/lib/cairn/b\"\nca = \"/var/lib/cairn/c\"\n";
    let e = NodeConfig::parse(worker, "node.toml").unwrap_err();
    assert_eq!((e.line, e.message.as_str()), (Some(6), "a worker does not run etcd"));
}
