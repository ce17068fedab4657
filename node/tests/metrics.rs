//! Cairn's metrics as node-exporter's textfile collector reads them, checked by
//! Prometheus' own `promtool check metrics`: every family, hostile label values, and the
//! facts gathered from a node's files (gate records, the update record) and from a real
//! etcd holding the reboot lease.

use std::io::Write;
use std::process::{Command, Stdio};

use cairn_node::metrics::{self, Facts, GateRecord, LeaseFacts, UpdateRecord};

/// `promtool check metrics` on `text`: its complaints (empty when clean).
fn promtool(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        said
    } else {
        format!("promtool failed: {said}")
    }
}

fn full() -> Facts {
    Facts {
        node: "cp-1".into(),
        image: Some("node".into()),
        version: Some("0.2.0".into()),
        slot: Some("b".into()),
        blessed: Some(true),
        gates: vec![
            (
                "etcd".into(),
                GateRecord {
                    passed: true,
                    seconds: 4.25,
                },
            ),
            (
                "wireguard".into(),
                GateRecord {
                    passed: false,
                    seconds: 60.0,
                },
            ),
        ],
        update: Some(UpdateRecord {
            at: 1_800_000_100,
            result: "installed".into(),
            version: Some("0.2.0".into()),
            index_ok_at: Some(1_800_000_000),
        }),
        certificates: vec![
            ("identity".into(), 1_802_592_000),
            ("etcd-server".into(), 1_802_592_000),
        ],
        lease: Some(Ok(LeaseFacts {
            holders: vec![(0, "cp-1".into())],
        })),
        now: 1_800_000_300,
    }
}

#[test]
fn every_family_passes_promtool() {
    let text = metrics::render(&full());
    assert_eq!(promtool(&text), "", "{text}");
    for line in [
        "cairn_info{image=\"node\",version=\"0.2.0\",slot=\"b\",node=\"cp-1\"} 1",
        "cairn_boot_blessed 1",
        "cairn_health_gate_passed{gate=\"wireguard\"} 0",
        "cairn_health_gate_duration_seconds{gate=\"etcd\"} 4.250",
        "cairn_update_last_result{result=\"installed\",version=\"0.2.0\"} 1",
        "cairn_update_index_age_seconds 300",
        "cairn_certificate_expiry_timestamp_seconds{profile=\"identity\"} 1802592000",
        "cairn_reboot_lease_held 1",
        "cairn_reboot_lease_holder{slot=\"0\",node=\"cp-1\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line}:\n{text}");
    }
    // A node that knows little still writes a clean file.
    let bare = metrics::render(&Facts {
        node: "n".into(),
        ..Facts::default()
    });
    assert_eq!(promtool(&bare), "", "{bare}");
    assert!(bare.contains("cairn_reboot_lease_configured 0"), "{bare}");
}

#[test]
fn hostile_values_stay_inside_their_labels() {
    let mut f = full();
    f.node = "cp-1\"} 1\nfake_metric 1\n#".into();
    f.version = Some("0.2.0\\\"\n".into());
    f.update.as_mut().unwrap().result = "x\"\ny".into();
    let text = metrics::render(&f);
    assert_eq!(promtool(&text), "", "{text}");
    assert!(!text.lines().any(|l| l.starts_with("fake_metric")), "{text}");
}

#[test]
fn facts_come_from_the_nodes_records() {
    let root = tempfile::tempdir().unwrap();
    metrics::record_gate(root.path(), "etcd", true, 3.5);
    metrics::record_gate(root.path(), "containerd", false, 120.0);
    metrics::record_update(root.path(), 1_800_000_000, "up_to_date", None, true);
    // A failed poll keeps the time of the last good index.
    metrics::record_update(root.path(), 1_800_000_600, "failed", None, false);
    let config = cairn_node::config::NodeConfig::single_node();
    let f = metrics::gather(root.path(), &config, 1_800_000_700);
    assert_eq!(f.gates.len(), 2);
    assert_eq!(f.gates[0].0, "etcd");
    let u = f.update.clone().unwrap();
    assert_eq!(
        (u.result.as_str(), u.at, u.index_ok_at),
        ("failed", 1_800_000_600, Some(1_800_000_000))
    );
    assert!(f.lease.is_none() && f.certificates.is_empty());
    let text = metrics::render(&f);
    assert!(text.contains("cairn_update_index_age_seconds 700"), "{text}");
    assert!(
        text.contains("cairn_health_gate_passed{gate=\"containerd\"} 0"),
        "{text}"
    );
    assert_eq!(promtool(&text), "", "{text}");
    metrics::write(root.path(), &text).unwrap();
    assert_eq!(
        std::fs::read_to_string(root.path().join("run/cairn/metrics/cairn.prom")).unwrap(),
        text
    );
}
