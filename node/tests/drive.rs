//! Config drives: each fixture under tests/fixtures/cairn/<scenario>/ is what a drive holds;
//! parsing, signatures, and the generation rule that decides whether it replaces the
//! saved config.

use std::fs;
use std::path::{Path, PathBuf};

use cairn_node::drive::{self, Decision, DriveFiles, Format, Saved, Signed};
use cairn_node::firstboot;

fn fixture(scenario: &str) -> DriveFiles {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cairn")
        .join(scenario);
    let mut files = drive::read_dir(&dir, Format::Cairn).unwrap();
    files.others.retain(|n| n != ".keep");
    files
}

#[test]
fn a_good_drive_parses() {
    let c = drive::parse(Format::Cairn, &fixture("good"), None, 1).unwrap();
    assert_eq!(
        (c.config.hostname.as_str(), c.config.generation, c.signed),
        ("drive-node", 7, Signed::No)
    );
}

#[test]
fn bad_drives_name_the_file_and_the_problem() {
    for (scenario, want) in [
        ("malformed", "node.toml:3: "),
        ("truncated", "node.toml:3: "),
        ("unknown-key", "node.toml:4: unknown field `colour`"),
        ("empty", "the drive is empty: it has no node.toml"),
        ("wrong-name", "the drive has no node.toml (it has node.tml)"),
    ] {
        let e = drive::parse(Format::Cairn, &fixture(scenario), None, 1).unwrap_err();
        assert!(e.message.contains(want), "{scenario}: wanted '{want}', got: {e}");
    }
}

#[test]
fn signatures_are_required_when_the_image_pins_a_key() {
    let key = cairn_signing::PrivateKey::from_bytes([9; 32]);
    let other = cairn_signing::PrivateKey::from_bytes([10; 32]);
    let mut files = fixture("good");
    let body = files.files["node.toml"].clone();
    // Unsigned: refused with the key, accepted (and said so) without.
    let e = drive::parse(Format::Cairn, &files, Some(&key.public()), 1).unwrap_err();
    assert!(e.message.contains("node.toml is not signed"), "{e}");
    files.files.insert("node.toml.sig".into(), other.sign(&body).to_vec());
    let e = drive::parse(Format::Cairn, &files, Some(&key.public()), 1).unwrap_err();
    assert!(e.message.contains("not a valid signature"), "{e}");
    files.files.insert("node.toml.sig".into(), key.sign(&body).to_vec());
    assert_eq!(
        drive::parse(Format::Cairn, &files, Some(&key.public()), 1)
            .unwrap()
            .signed,
        Signed::Yes
    );
    // One changed byte in the config breaks the signature.
    let mut tampered = body.clone();
    tampered[body.len() - 3] ^= 1;
    files.files.insert("node.toml".into(), tampered);
    assert!(drive::parse(Format::Cairn, &files, Some(&key.public()), 1).is_err());
}

#[test]
fn only_a_higher_generation_replaces_the_saved_config() {
    let c = drive::parse(Format::Cairn, &fixture("good"), None, 1).unwrap();
    assert!(matches!(drive::decide(None, &c), Decision::Replace(_)));
    assert!(
        matches!(drive::decide(Some(&Saved { generation: 6, instance_id: None }), &c), Decision::Replace(w) if w == "generation 7 replaces 6")
    );
    for g in [7, 8] {
        match drive::decide(
            Some(&Saved {
                generation: g,
                instance_id: None,
            }),
            &c,
        ) {
            Decision::Keep(w) => assert!(w.contains(&format!("not newer than the saved generation {g}")), "{w}"),
            d => panic!("{d:?}"),
        }
    }
}

fn root_with_saved(text: Option<&str>) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let saved = root.path().join("var/lib/cairn/node.toml");
    if let Some(t) = text {
        fs::create_dir_all(saved.parent().unwrap()).unwrap();
        fs::write(&saved, t).unwrap();
    }
    (root, saved)
}

#[test]
fn import_saves_newer_configs_and_keeps_the_saved_one_otherwise() {
    let old = "version = 1\ngeneration = 3\nhostname = \"old\"\n";
    let (root, saved) = root_with_saved(Some(old));
    let log = firstboot::import(root.path(), "CAIRN (/dev/vdb)", Format::Cairn, &fixture("good")).unwrap();
    assert_eq!(
        log,
        ["cairn: config drive CAIRN (/dev/vdb) saved: generation 7 replaces 3; host drive-node, not signed (this image accepts unsigned node configs)"]
    );
    assert_eq!(fs::read(&saved).unwrap(), fixture("good").files["node.toml"]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&saved).unwrap().permissions().mode() & 0o777, 0o600);

    // The same drive again: equal generation, ignored.
    let log = firstboot::import(root.path(), "CAIRN", Format::Cairn, &fixture("good")).unwrap();
    assert_eq!(
        log,
        ["cairn: config drive CAIRN ignored: generation 7 is not newer than the saved generation 7"]
    );

    // A bad drive: one message, the saved config untouched.
    let before = fs::read(&saved).unwrap();
    let log = firstboot::import(root.path(), "CAIRN", Format::Cairn, &fixture("malformed")).unwrap();
    assert_eq!(log.len(), 1);
    assert!(
        log[0].starts_with("cairn: config drive CAIRN refused: node.toml:3: "),
        "{log:?}"
    );
    assert!(log[0].ends_with("keeping the saved config (generation 7)"), "{log:?}");
    assert_eq!(fs::read(&saved).unwrap(), before);
}

#[test]
fn import_refuses_unsigned_drives_when_the_image_has_a_node_config_key() {
    let (root, saved) = root_with_saved(None);
    let key = cairn_signing::PrivateKey::from_bytes([9; 32]);
    let pubf = root.path().join("usr/share/cairn/node-config.pub");
    fs::create_dir_all(pubf.parent().unwrap()).unwrap();
    fs::write(&pubf, key.public().to_pem()).unwrap();
    let log = firstboot::import(root.path(), "CAIRN", Format::Cairn, &fixture("good")).unwrap();
    assert!(log[0].contains("refused: node.toml is not signed"), "{log:?}");
    assert!(
        log[0].ends_with("no config saved yet, so the node runs its default"),
        "{log:?}"
    );
    assert!(!saved.exists());
    let mut files = fixture("good");
    let sig = key.sign(&files.files["node.toml"]);
    files.files.insert("node.toml.sig".into(), sig.to_vec());
    let log = firstboot::import(root.path(), "CAIRN", Format::Cairn, &files).unwrap();
    assert!(log[0].ends_with("signed with this image's node-config key"), "{log:?}");
    assert!(saved.exists());
}

#[test]
fn drives_are_found_by_label() {
    let root = tempfile::tempdir().unwrap();
    assert_eq!(firstboot::find(root.path()), None);
    let dev = root.path().join("dev");
    fs::create_dir_all(dev.join("disk/by-label")).unwrap();
    fs::write(dev.join("vdb"), "").unwrap();
    std::os::unix::fs::symlink("../../vdb", dev.join("disk/by-label/CAIRN")).unwrap();
    let f = firstboot::find(root.path()).unwrap();
    assert_eq!((f.label, f.format), ("CAIRN", Format::Cairn));
    assert_eq!(f.device, fs::canonicalize(dev.join("vdb")).unwrap());
}

#[test]
fn a_hostile_drive_costs_little_and_hangs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = fixture("good").files["node.toml"].clone();
    fs::write(d.join("node.toml"), &good).unwrap();
    // A hundred megabytes of other files and folders are never opened.
    for i in 0..100 {
        fs::write(d.join(format!("junk-{i:03}")), vec![0u8; 1 << 20]).unwrap();
    }
    fs::create_dir_all(d.join("deep/er/still")).unwrap();
    let files = drive::read_dir(d, Format::Cairn).unwrap();
    assert_eq!(files.files.keys().collect::<Vec<_>>(), ["node.toml"]);
    assert_eq!(files.others.len(), 16, "names listed for messages are bounded");
    // The files it reads: bounded, regular, not through links.
    fs::write(d.join("node.toml"), vec![b'#'; (drive::MAX_FILE + 1) as usize]).unwrap();
    let e = drive::read_dir(d, Format::Cairn).unwrap_err().to_string();
    assert!(e.contains("node.toml is 1048577 bytes"), "{e}");
    fs::remove_file(d.join("node.toml")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", d.join("node.toml")).unwrap();
    let e = drive::read_dir(d, Format::Cairn).unwrap_err().to_string();
    assert!(e.contains("node.toml is not a regular file"), "{e}");
    fs::remove_file(d.join("node.toml")).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(d.join("node.toml"))
        .status()
        .unwrap()
        .success());
    let e = drive::read_dir(d, Format::Cairn).unwrap_err().to_string();
    assert!(e.contains("node.toml is not a regular file"), "{e}");
}

#[test]
fn an_instance_id_is_one_printable_line() {
    let mut files = DriveFiles::default();
    for (id, ok) in [
        ("iid-local01", true),
        ("\"iid\\nsecond\"", false),
        ("\"a\\u0007b\"", false),
    ] {
        files.files.insert(
            "meta-data".into(),
            format!("instance-id: {id}\nlocal-hostname: n1\n").into_bytes(),
        );
        let r = drive::parse(Format::NoCloud, &files, None, 1);
        assert_eq!(r.is_ok(), ok, "{id}: {r:?}");
        if !ok {
            let e = r.unwrap_err().to_string();
            assert!(e.starts_with("meta-data instance-id") && e.contains("printable"), "{e}");
        }
    }
}

#[test]
fn the_first_machine_id_is_kept_and_a_different_one_is_reported() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("etc")).unwrap();
    fs::create_dir_all(r.join("var/lib/cairn")).unwrap();
    let first = "0123456789abcdef0123456789abcdef";
    fs::write(r.join("etc/machine-id"), format!("{first}\n")).unwrap();
    let line = firstboot::save_machine_id(r).unwrap().unwrap();
    assert!(line.contains(&format!("machine-id {first} saved")), "{line}");
    assert_eq!(
        fs::read_to_string(r.join("var/lib/cairn/machine-id")).unwrap(),
        format!("{first}\n")
    );
    // The next boot runs with it: nothing to say.
    assert_eq!(firstboot::save_machine_id(r).unwrap(), None);
    // A boot whose initrd did not put it back: reported, the saved one is kept.
    fs::write(r.join("etc/machine-id"), "ffffffffffffffffffffffffffffffff\n").unwrap();
    let line = firstboot::save_machine_id(r).unwrap().unwrap();
    assert!(line.contains("is not the node's saved"), "{line}");
    assert_eq!(
        fs::read_to_string(r.join("var/lib/cairn/machine-id")).unwrap(),
        format!("{first}\n")
    );
    // No id at all (the link points nowhere): an error, nothing written.
    fs::remove_file(r.join("etc/machine-id")).unwrap();
    assert!(firstboot::save_machine_id(r).is_err());
}
