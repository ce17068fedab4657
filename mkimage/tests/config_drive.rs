//! `cairn config-drive`: the drive is a volume labelled CAIRN that the reference tools read
//! back (fsck.fat, mtools, blkid, xorriso), signed when asked; a bad node.toml is refused
//! with its line and leaves no drive behind.

mod common;

use std::fs;
use std::process::Command;

use common::*;

const NODE: &str = "version = 1\ngeneration = 2\nhostname = \"cp-4\"\n\n[wireguard]\nprivate-key = \"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\"\naddress = [\"10.90.0.4/24\"]\n";

#[test]
fn fat_drive_is_clean_labelled_and_holds_the_config() {
    require(&["fsck.fat", "mtype", "blkid"]);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("node.toml"), NODE).unwrap();
    let drive = dir.path().join("cp-4.img");
    let out = run_ok(
        cairn()
            .current_dir(dir.path())
            .args(["config-drive", "node.toml", "--out", "cp-4.img"]),
    );
    assert!(
        out.contains("node cp-4 generation 2, role control-plane, not signed"),
        "{out}"
    );
    assert!(out.contains("wg0 public key "), "{out}");
    run_ok(Command::new("fsck.fat").arg("-n").arg(&drive));
    let label = run_ok(Command::new("blkid").args(["-o", "value", "-s", "LABEL"]).arg(&drive));
    assert_eq!(label.trim(), "CAIRN");
    let back = run_ok(Command::new("mtype").arg("-i").arg(&drive).arg("::node.toml"));
    assert_eq!(back, NODE);
    // Sparse: a 34 MiB volume that takes a few KiB.
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(&drive).unwrap();
    assert!(m.blocks() * 512 < 1 << 20, "{} bytes allocated", m.blocks() * 512);
    // Reproducible.
    run_ok(
        cairn()
            .current_dir(dir.path())
            .args(["config-drive", "node.toml", "--out", "again.img"]),
    );
    assert_eq!(
        fs::read(&drive).unwrap(),
        fs::read(dir.path().join("again.img")).unwrap()
    );
}

#[test]
fn signed_drives_carry_a_signature_openssl_accepts() {
    require(&["mcopy", "openssl"]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    fs::write(p.join("node.toml"), NODE).unwrap();
    run_ok(cairn().current_dir(p).args(["keygen", "node-config.pem"]));
    let out = run_ok(cairn().current_dir(p).args([
        "config-drive",
        "node.toml",
        "--out",
        "d.img",
        "--sign",
        "node-config.pem",
    ]));
    assert!(out.contains("signed with node-config.pem"), "{out}");
    run_ok(
        Command::new("mcopy")
            .arg("-i")
            .arg(p.join("d.img"))
            .arg("::node.toml.sig")
            .arg(p.join("sig")),
    );
    run_ok(Command::new("openssl").current_dir(p).args([
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        "node-config.pub",
        "-rawin",
        "-in",
        "node.toml",
        "-sigfile",
        "sig",
    ]));
}

#[test]
fn iso_drive_is_labelled_and_holds_the_config() {
    require(&["xorriso", "blkid"]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    fs::write(p.join("node.toml"), NODE).unwrap();
    run_ok(
        cairn()
            .current_dir(p)
            .args(["config-drive", "node.toml", "--out", "d.iso", "--format", "iso"]),
    );
    let label = run_ok(
        Command::new("blkid")
            .args(["-o", "value", "-s", "LABEL"])
            .arg(p.join("d.iso")),
    );
    assert_eq!(label.trim(), "CAIRN");
    run_ok(Command::new("xorriso").current_dir(p).args([
        "-osirrox",
        "on",
        "-indev",
        "d.iso",
        "-extract",
        "/node.toml",
        "back.toml",
    ]));
    assert_eq!(fs::read_to_string(p.join("back.toml")).unwrap(), NODE);
    let leftovers: Vec<_> = fs::read_dir(p)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains("cairn-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_bad_node_config_is_refused_with_its_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    fs::write(p.join("node.toml"), NODE.replace("10.90.0.4/24", "10.90.0.4")).unwrap();
    fs::write(p.join("old.img"), "previous drive").unwrap();
    let o = cairn()
        .current_dir(p)
        .args(["config-drive", "node.toml", "--out", "old.img"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("node.toml:7: [wireguard] address: '10.90.0.4' has no prefix length"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(p.join("old.img")).unwrap(), "previous drive");
    assert_eq!(fs::read_dir(p).unwrap().count(), 2, "nothing else written");
}

#[test]
fn a_device_node_is_never_replaced_and_drives_are_private() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    fs::write(p.join("node.toml"), NODE).unwrap();
    // Drives hold a node's secrets (its WireGuard key here): only the owner reads them.
    for format in ["fat", "iso"] {
        let out = format!("cp-4.{format}");
        run_ok(
            cairn()
                .current_dir(p)
                .args(["config-drive", "node.toml", "--format", format, "--out", &out]),
        );
        let mode = fs::metadata(p.join(&out)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{format}");
    }
    // A device node of our own (a character device standing in for a USB stick; making one
    // needs root), a link to it, a directory, a FIFO: each refused and left as it was.
    let mut targets = vec![("a-dir", "a directory"), ("a-fifo", "a FIFO")];
    if is_root() {
        run_ok(Command::new("mknod").arg(p.join("stick")).args(["c", "1", "3"]));
        std::os::unix::fs::symlink(p.join("stick"), p.join("stick-link")).unwrap();
        targets.extend([("stick", "a character device"), ("stick-link", "a character device")]);
    }
    fs::create_dir(p.join("a-dir")).unwrap();
    run_ok(Command::new("mkfifo").arg(p.join("a-fifo")));
    for (target, kind) in targets {
        let o = cairn()
            .current_dir(p)
            .args(["config-drive", "node.toml", "--out", target])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{target}");
        assert!(err.contains(&format!("is {kind}, not a file")), "{target}: {err}");
    }
    if is_root() {
        assert!(fs::symlink_metadata(p.join("stick"))
            .unwrap()
            .file_type()
            .is_char_device());
    }
    let left: Vec<_> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("cairn-tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

const CLUSTER: &str = r#"version = 1
name = "lab"
generation = 3
keyserver = "https://10.0.2.2:8443"

[network]
prefix-length = 24
gateway = "10.0.2.2"

[[node]]
name = "cp-1"
role = "control-plane"
address = "10.0.2.11"

[[node]]
name = "cp-2"
role = "control-plane"
address = "10.0.2.12"

[[node]]
name = "cp-3"
role = "control-plane"
address = "10.0.2.13"

[[node]]
name = "w-1"
role = "worker"
address = "10.0.2.21"
"#;

#[test]
fn a_cluster_file_gives_every_node_its_drive_and_token() {
    require(&["fsck.fat", "mtype"]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    fs::write(p.join("lab.toml"), CLUSTER).unwrap();
    run_ok(
        cairn()
            .current_dir(p)
            .args(["keyserver", "init", "ks", "--cluster", "lab"]),
    );
    let out = run_ok(cairn().current_dir(p).args([
        "config-drive",
        "--cluster",
        "lab.toml",
        "--out",
        "drives",
        "--keyserver",
        "ks",
    ]));
    assert!(out.contains("cluster lab: 4 drives in drives (generation 3)"), "{out}");
    for name in ["cp-1", "cp-2", "cp-3", "w-1"] {
        let drive = p.join("drives").join(format!("{name}.img"));
        run_ok(Command::new("fsck.fat").arg("-n").arg(&drive));
        let text = run_ok(Command::new("mtype").arg("-i").arg(&drive).arg("::node.toml"));
        let config = cairn_node_config::NodeConfig::parse(&text, name).unwrap();
        assert_eq!((config.hostname.as_str(), config.generation), (name, 3));
        let agent = config.key_agent.expect("every node enrolls");
        assert_eq!(agent.server.to_string(), "https://10.0.2.2:8443");
        match config.etcd {
            Some(etcd) => {
                assert!(name.starts_with("cp-"));
                let members: Vec<String> = etcd.initial_cluster.keys().cloned().collect();
                assert_eq!(members, ["cp-1", "cp-2", "cp-3"], "{text}");
                assert!(text.contains("cp-3 = \"https://10.0.2.13:2380\""), "{text}");
            }
            None => assert_eq!(name, "w-1"),
        }
        // The node.toml beside the drive is the one on it, before the token was added.
        let beside = fs::read_to_string(p.join("drives").join(format!("{name}.toml"))).unwrap();
        assert!(!beside.contains("bootstrap-token") && text.contains("bootstrap-token"));
    }
    let tokens = run_ok(cairn().current_dir(p).args(["token", "list", "--state", "ks"]));
    assert_eq!(tokens.lines().filter(|l| l.contains(" issued ")).count(), 4, "{tokens}");
}

#[test]
fn a_bad_cluster_file_writes_no_drive_and_registers_no_node() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    run_ok(
        cairn()
            .current_dir(p)
            .args(["keyserver", "init", "ks", "--cluster", "lab"]),
    );
    let bad = CLUSTER.replace("name = \"cp-3\"", "name = \"cp-1\"");
    fs::write(p.join("lab.toml"), bad).unwrap();
    let o = cairn()
        .current_dir(p)
        .args([
            "config-drive",
            "--cluster",
            "lab.toml",
            "--out",
            "drives",
            "--keyserver",
            "ks",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("lab.toml:21: node cp-1 is listed twice"),
        "{err}"
    );
    assert!(!p.join("drives").exists());
    // A cluster with a keyserver needs its state, and the other way round.
    fs::write(p.join("lab.toml"), CLUSTER).unwrap();
    let o = cairn()
        .current_dir(p)
        .args(["config-drive", "--cluster", "lab.toml", "--out", "drives"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no --keyserver STATE"), "{err}");
    assert!(!p.join("drives").exists());
    // The third node's drive would replace a directory: refused before any node is
    // registered or any drive written.
    fs::create_dir_all(p.join("drives/cp-3.img")).unwrap();
    let o = cairn()
        .current_dir(p)
        .args([
            "config-drive",
            "--cluster",
            "lab.toml",
            "--out",
            "drives",
            "--keyserver",
            "ks",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("drives/cp-3.img is a directory, not a file"),
        "{err}"
    );
    let left: Vec<_> = fs::read_dir(p.join("drives"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["cp-3.img"]);
    assert!(!p.join("ks/nodes/cp-1.json").exists());
    let tokens = run_ok(cairn().current_dir(p).args(["token", "list", "--state", "ks"]));
    assert!(!tokens.contains(" issued "), "{tokens}");
}

#[test]
fn cairn_boot_cluster_refuses_what_it_cannot_boot_before_starting_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    fs::write(p.join("disk.raw"), b"").unwrap();
    fs::create_dir(p.join("drives")).unwrap();
    let boot = |cluster: &str| {
        fs::write(p.join("lab.toml"), cluster).unwrap();
        let o = cairn()
            .current_dir(p)
            .args([
                "boot",
                "disk.raw",
                "--cluster",
                "lab.toml",
                "--drives",
                "drives",
                "--until-ready",
            ])
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let node = |n: u8, mac: &str| {
        format!("[[node]]\nname = \"cp-{n}\"\nrole = \"control-plane\"\naddress = \"192.168.77.{n}\"\n{mac}")
    };
    let head = "version = 1\nname = \"lab\"\n";
    let err = boot(&format!("{head}{}", node(1, "")));
    assert!(err.contains("needs [network]"), "{err}");
    let net = "[network]\nprefix-length = 24\n";
    let err = boot(&format!(
        "{head}{net}{}{}",
        node(1, "mac = \"52:54:00:77:00:01\"\n"),
        node(2, "")
    ));
    assert!(
        err.contains("node cp-2 has no mac") && err.contains("mac = \"52:54:00:77:00:02\""),
        "{err}"
    );
    let err = boot(&format!("{head}{net}{}", node(1, "mac = \"52:54:00:77:00:01\"\n")));
    assert!(err.contains("cp-1.img is missing: write the drives first"), "{err}");
    // A bad cluster file is refused with its line, as config-drive refuses it.
    let err = boot(&format!("{head}{net}{}", node(1, "mac = \"52:54:00:77\"\n")));
    assert!(
        err.contains("lab.toml:9: mac '52:54:00:77' is not a MAC address"),
        "{err}"
    );
    // --cluster without --drives, or with --config-drive, is a usage error.
    let o = cairn()
        .current_dir(p)
        .args(["boot", "disk.raw", "--cluster", "lab.toml"])
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--drives"));
}
