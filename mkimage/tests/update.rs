//! Update bundles end to end on plain files: `cairn build` writes `update.cairn`,
//! `cairn verify` checks it, and the node agent's installer (`cairn_node::update`, the
//! code behind `cairn-node update`) writes it into the inactive slot of a copy of the v1
//! disk, with the ESP as a directory. Every result is checked with the reference tools
//! (sgdisk, sfdisk, veritysetup) and byte comparisons; the firmware half (systemd-boot
//! counting, blessing, rollback) is in qemu-tests/tests/node/ab.rs.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_node::update::{self, Options, Target, UpdateError};
use cairn_signing::PublicKey;
use common::*;
use sha2::{Digest, Sha256};

struct Releases {
    f: Fixture,
    v1: PathBuf,
    v2: PathBuf,
}

fn releases() -> Releases {
    let f = Fixture::new();
    f.write_definition("");
    let text = fs::read_to_string(f.path("image.toml")).unwrap();
    fs::write(f.path("image.toml"), text.replace("1.2.3", "0.1.0")).unwrap();
    let v1 = f.build_ok("v1");
    fs::write(f.path("image.toml"), text.replace("1.2.3", "0.2.0")).unwrap();
    fs::write(f.path("overlay/etc/motd"), "welcome to cairn 0.2.0\n").unwrap();
    let v2 = f.build_ok("v2");
    Releases { f, v1, v2 }
}

fn key(r: &Releases) -> PublicKey {
    PublicKey::read(&r.f.path("release.pub")).unwrap()
}

fn sha(path: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(path).unwrap()))
}

fn range_sha(disk: &Path, (off, len): (u64, u64)) -> String {
    use std::os::unix::fs::FileExt;
    let mut v = vec![0u8; len as usize];
    fs::File::open(disk).unwrap().read_exact_at(&mut v, off).unwrap();
    hex::encode(Sha256::digest(v))
}

/// A node running `out`: a copy of its disk and its ESP's files in a directory.
fn node(r: &Releases, out: &Path, tag: &str) -> Target {
    let dir = r.f.path(tag);
    fs::create_dir_all(dir.join("esp/EFI/Linux")).unwrap();
    fs::create_dir_all(dir.join("esp/loader")).unwrap();
    fs::create_dir_all(dir.join("state")).unwrap();
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(out.join("disk.raw"))
            .arg(dir.join("disk.raw")),
    );
    let m = manifest(out);
    let version = m["version"].as_str().unwrap().to_string();
    extract_payload(out, "uki", &dir.join(format!("esp/EFI/Linux/cairn_{version}.efi")));
    fs::write(dir.join("esp/loader/loader.conf"), "default cairn_*\n").unwrap();
    Target {
        disk: dir.join("disk.raw"),
        esp: dir.join("esp"),
        running_hash: hex::decode(m["root-hash"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap(),
        image: m["name"].as_str().unwrap().to_string(),
        version,
        state_dir: dir.join("state"),
    }
}

fn install(t: &Target, key: &PublicKey, bundle: &[u8], force: bool) -> Result<update::Installed, UpdateError> {
    let mut src = bundle;
    let mut lines = vec![];
    let r = update::install(t, std::slice::from_ref(key), &mut src, &Options { force }, &mut |l| {
        lines.push(l.to_string())
    });
    eprintln!("{}", lines.join("\n"));
    r
}

fn sfdisk_parts(disk: &Path) -> Vec<serde_json::Value> {
    let table: serde_json::Value =
        serde_json::from_str(&run_ok(Command::new("sfdisk").arg("--json").arg(disk))).unwrap();
    table["partitiontable"]["partitions"].as_array().unwrap().clone()
}

fn uuid(p: &serde_json::Value) -> String {
    p["uuid"].as_str().unwrap().to_lowercase().replace('-', "")
}

fn esp_files(t: &Target) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(t.esp.join("EFI/Linux"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn bundle_is_verified_alone_and_with_its_build() {
    let r = releases();
    let bundle = r.v2.join("update.cairn");
    let m = manifest(&r.v2);
    let total: u64 = ["root", "verity", "uki"].iter().map(|n| payload(&m, n).1).sum();
    let size = fs::metadata(&bundle).unwrap().len();
    assert!(size >= total && size < total + 4 * 4096, "{size} vs payloads {total}");
    let verify = |p: &Path| {
        cairn()
            .arg("verify")
            .arg(p)
            .arg("--key")
            .arg(r.f.path("release.pub"))
            .output()
            .unwrap()
    };
    let o = verify(&r.v2);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("update.cairn: same release as the disk image"), "{text}");
    let o = verify(&bundle);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("verified test 0.2.0"));

    // One flipped byte in the manifest, the signature or a payload; a v1 bundle beside
    // the v2 disk.
    let data = fs::read(&bundle).unwrap();
    let mlen = u32::from_le_bytes(data[12..16].try_into().unwrap()) as usize;
    let uki_at = data.len() - 100;
    for (at, want) in [
        (40, "signature check failed"),
        (32 + mlen + 5, "signature check failed"),
        (uki_at, "payload uki: sha256"),
    ] {
        let mut bad = data.clone();
        bad[at] ^= 0x40;
        let p = r.f.path("bad.cairn");
        fs::write(&p, &bad).unwrap();
        let o = verify(&p);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "byte {at}: {err}");
    }
    fs::copy(r.v1.join("update.cairn"), r.v2.join("update.cairn")).unwrap();
    let o = verify(&r.v2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bundle version"), "{err}");
}

#[test]
fn update_writes_only_the_inactive_slot_and_the_new_uki() {
    require(&["sgdisk", "sfdisk", "veritysetup"]);
    let r = releases();
    let key = key(&r);
    let t = node(&r, &r.v1, "node");
    let m1 = manifest(&r.v1);
    let m2 = manifest(&r.v2);
    let untouched = ["esp", "root-a", "verity-a", "state"].map(|l| (l, range_sha(&t.disk, partition(&m1, l))));
    let v1_uki = sha(&t.esp.join("EFI/Linux/cairn_0.1.0.efi"));
    let bundle = fs::read(r.v2.join("update.cairn")).unwrap();

    let done = install(&t, &key, &bundle, false).unwrap();
    assert_eq!(done.uki, "cairn_0.2.0+3.efi");
    assert_eq!(done.bytes, bundle.len() as u64);

    // The table is sound and names slot B by the v2 root hash; A is as it was.
    let v = run_ok(Command::new("sgdisk").arg("-v").arg(&t.disk));
    assert!(v.contains("No problems found"), "{v}");
    let parts = sfdisk_parts(&t.disk);
    let h2 = m2["root-hash"].as_str().unwrap();
    let h1 = m1["root-hash"].as_str().unwrap();
    assert_eq!(uuid(&parts[3]), h2[..32]);
    assert_eq!(uuid(&parts[4]), h2[32..]);
    assert_eq!(parts[3]["attrs"], "GUID:60", "slot B is read-only, no longer no-auto");
    assert_eq!(parts[3]["name"], "root-b");
    assert_eq!(uuid(&parts[1]), h1[..32]);
    assert_eq!(uuid(&parts[2]), h1[32..]);
    for (label, before) in &untouched {
        assert_eq!(&range_sha(&t.disk, partition(&m1, label)), before, "{label} changed");
    }

    // veritysetup accepts what landed in slot B with the v2 root hash.
    let tmp = r.f.path("check");
    fs::create_dir_all(&tmp).unwrap();
    let (b_off, _) = partition(&m1, "root-b");
    let (vb_off, _) = partition(&m1, "verity-b");
    let (_, root_len) = payload(&m2, "root");
    let (_, tree_len) = payload(&m2, "verity");
    extract(&t.disk, b_off, root_len, &tmp.join("root"));
    extract(&t.disk, vb_off, tree_len, &tmp.join("tree"));
    run_ok(
        Command::new("veritysetup")
            .arg("verify")
            .arg(tmp.join("root"))
            .arg(tmp.join("tree"))
            .arg(h2),
    );

    // The ESP: v1's UKI untouched, v2's as the counted entry, nothing else.
    assert_eq!(esp_files(&t), ["cairn_0.1.0.efi", "cairn_0.2.0+3.efi"]);
    assert_eq!(sha(&t.esp.join("EFI/Linux/cairn_0.1.0.efi")), v1_uki);
    extract_payload(&r.v2, "uki", &tmp.join("uki"));
    assert_eq!(sha(&t.esp.join("EFI/Linux/cairn_0.2.0+3.efi")), sha(&tmp.join("uki")));
    let status = update::status(&t).unwrap();
    assert!(status.contains("running  test 0.1.0 from slot a (blessed)"), "{status}");
    assert!(
        status.contains("other    0.2.0 in slot b: to be tried: 3 tries left"),
        "{status}"
    );

    // The same bundle again: v1 is still running, so it is written again (stale entry
    // removed first), and the result is the same.
    install(&t, &key, &bundle, false).unwrap();
    assert_eq!(esp_files(&t), ["cairn_0.1.0.efi", "cairn_0.2.0+3.efi"]);

    // Now v2 runs from slot B, blessed; v1 goes back into slot A only with --force.
    let mut t2 = t.clone();
    t2.running_hash = hex::decode(h2).unwrap().try_into().unwrap();
    t2.version = "0.2.0".into();
    fs::rename(
        t.esp.join("EFI/Linux/cairn_0.2.0+3.efi"),
        t.esp.join("EFI/Linux/cairn_0.2.0+2-1.efi"),
    )
    .unwrap();
    let v1_bundle = fs::read(r.v1.join("update.cairn")).unwrap();
    let err = install(&t2, &key, &v1_bundle, true).unwrap_err().to_string();
    assert!(err.contains("not blessed yet"), "{err}");
    fs::rename(
        t.esp.join("EFI/Linux/cairn_0.2.0+2-1.efi"),
        t.esp.join("EFI/Linux/cairn_0.2.0.efi"),
    )
    .unwrap();
    let err = install(&t2, &key, &v1_bundle, false).unwrap_err().to_string();
    assert!(err.contains("0.1.0 is not newer than the running 0.2.0"), "{err}");
    let slot_b = range_sha(&t.disk, (b_off, root_len));
    install(&t2, &key, &v1_bundle, true).unwrap();
    assert_eq!(esp_files(&t), ["cairn_0.1.0+3.efi", "cairn_0.2.0.efi"]);
    assert_eq!(
        range_sha(&t.disk, (b_off, root_len)),
        slot_b,
        "the running slot B is untouched"
    );
    let parts = sfdisk_parts(&t.disk);
    assert_eq!(uuid(&parts[1]), h1[..32]);
    assert_eq!(uuid(&parts[3]), h2[..32]);
    let v = run_ok(Command::new("sgdisk").arg("-v").arg(&t.disk));
    assert!(v.contains("No problems found"), "{v}");
}

#[test]
fn bad_bundles_never_make_the_slot_bootable() {
    require(&["sfdisk"]);
    let r = releases();
    let key = key(&r);
    let bundle = fs::read(r.v2.join("update.cairn")).unwrap();
    let mlen = u32::from_le_bytes(bundle[12..16].try_into().unwrap()) as usize;
    let m2 = manifest(&r.v2);
    let h2 = m2["root-hash"].as_str().unwrap().to_string();

    // Refused before a byte is written: the disk and the ESP are as they were.
    let t = node(&r, &r.v1, "before");
    let disk_before = sha(&t.disk);
    for (at, want) in [
        (3, "not a Cairn update bundle"),
        (40, "signature"),
        (32 + mlen + 1, "signature"),
    ] {
        let mut bad = bundle.clone();
        bad[at] ^= 1;
        let err = install(&t, &key, &bad, false).unwrap_err().to_string();
        assert!(err.contains(want), "byte {at}: {err}");
        assert_eq!(sha(&t.disk), disk_before, "byte {at}: the disk was written");
        assert_eq!(esp_files(&t), ["cairn_0.1.0.efi"]);
    }
    let other = cairn_signing::PrivateKey::from_bytes([7; 32]).public();
    let err = install(&t, &other, &bundle, false).unwrap_err().to_string();
    assert!(err.contains("not signed by the release key"), "{err}");
    let mut wrong = t.clone();
    wrong.image = "other".into();
    let err = install(&wrong, &key, &bundle, false).unwrap_err().to_string();
    assert!(err.contains("the bundle is for image \"test\""), "{err}");
    update::record_failure(&t.state_dir, "0.2.0", "cairn: health gate etcd FAILED after 20s").unwrap();
    let err = install(&t, &key, &bundle, false).unwrap_err().to_string();
    assert!(err.contains("0.2.0 already failed on this node"), "{err}");
    fs::remove_file(t.state_dir.join("failed-0.2.0")).unwrap();
    assert_eq!(sha(&t.disk), disk_before);

    // A flipped payload byte or a cut-off download (a node that loses power or its
    // server mid-write looks the same) over a slot that held a good v2: slot B is made
    // stale, the UKI that booted it is gone, and the next run with a good bundle
    // completes.
    let t = node(&r, &r.v1, "during");
    install(&t, &key, &bundle, false).unwrap();
    assert_eq!(uuid(&sfdisk_parts(&t.disk)[3]), h2[..32]);
    let bm: serde_json::Value = serde_json::from_slice(&bundle[32..32 + mlen]).unwrap();
    let offset_of = |name: &str| {
        bm["payloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["offset"]
            .as_u64()
            .unwrap() as usize
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            {
                let mut b = bundle.clone();
                b[offset_of("root") + 12345] ^= 1;
                b
            },
            "payload root: sha256",
        ),
        (
            {
                let mut b = bundle.clone();
                b[offset_of("uki") + 999] ^= 1;
                b
            },
            "payload uki: sha256",
        ),
        (bundle[..offset_of("root") + (1 << 20)].to_vec(), "truncated"),
        (bundle[..bundle.len() - 1].to_vec(), "truncated"),
    ];
    for (bad, want) in cases {
        let err = install(&t, &key, &bad, false).unwrap_err().to_string();
        assert!(err.contains(want), "{want}: {err}");
        let parts = sfdisk_parts(&t.disk);
        assert_eq!(parts[3]["attrs"], "GUID:60,63", "{want}: slot B must stay no-auto");
        assert_ne!(uuid(&parts[3]), h2[..32], "{want}: slot B must not carry the v2 UUID");
        assert_eq!(esp_files(&t), ["cairn_0.1.0.efi"], "{want}: no UKI for slot B");
        let status = update::status(&t).unwrap();
        assert!(status.contains("slot b: nothing bootable"), "{status}");
    }
    install(&t, &key, &bundle, false).unwrap();
    assert_eq!(uuid(&sfdisk_parts(&t.disk)[3]), h2[..32]);
    assert_eq!(esp_files(&t), ["cairn_0.1.0.efi", "cairn_0.2.0+3.efi"]);
}

#[test]
fn publish_lays_out_bundles_and_an_index_for_a_static_server() {
    let r = releases();
    let to = r.f.path("www");
    let publish = |out: &Path, key: &str| {
        cairn()
            .arg("publish")
            .arg(out)
            .arg("--to")
            .arg(&to)
            .arg("--key")
            .arg(r.f.path(key))
            .output()
            .unwrap()
    };
    // v2 first, then v1: latest is the newest version, not the last published.
    for out in [&r.v2, &r.v1] {
        let o = publish(out, "release.pem");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let index = cairn_signing::bundle::Index::parse(&fs::read(to.join("test/index.json")).unwrap()).unwrap();
    assert_eq!(index.name, "test");
    assert_eq!(index.latest, "0.2.0");
    let versions: Vec<&str> = index.releases.iter().map(|r| r.version.as_str()).collect();
    assert_eq!(versions, ["0.1.0", "0.2.0"]);
    for (rel, out) in index.releases.iter().zip([&r.v1, &r.v2]) {
        let file = to.join("test").join(&rel.file);
        assert_eq!(rel.file, format!("test_{}.cairn", rel.version));
        assert_eq!(sha(&file), rel.sha256);
        assert_eq!(sha(&file), sha(&out.join("update.cairn")));
        assert_eq!(rel.root_hash, manifest(out)["root-hash"].as_str().unwrap());
    }
    let mut names: Vec<String> = fs::read_dir(to.join("test"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".publish.lock",
            "index.json",
            "index.json.sig",
            "test_0.1.0.cairn",
            "test_0.2.0.cairn"
        ],
        "no temporary files left"
    );

    // The index is signed by the release key.
    let signed = |what: &str| {
        cairn_signing::bundle::Index::verify(
            &fs::read(to.join("test/index.json")).unwrap(),
            &fs::read(to.join("test/index.json.sig")).unwrap(),
            &[key(&r)],
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"))
    };
    assert_eq!(signed("first"), index);
    // Again: the releases stay, the index is signed anew.
    let o = publish(&r.v2, "release.pem");
    assert!(String::from_utf8_lossy(&o.stdout).contains("already published"));
    assert_eq!(signed("again").releases, index.releases);
    // A public key cannot sign an index.
    let o = publish(&r.v2, "release.pub");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("it holds a PEM \"PUBLIC KEY\", not a \"PRIVATE KEY\""),
        "{err}"
    );
    let before = fs::read(to.join("test/index.json")).unwrap();

    // Another bundle under a published version, a tampered bundle, a wrong key: refused,
    // nothing written.
    fs::write(r.f.path("overlay/etc/motd"), "something else\n").unwrap();
    let text = fs::read_to_string(r.f.path("image.toml")).unwrap();
    assert!(text.contains("0.2.0"));
    let v2b = r.f.build_ok("v2b");
    let o = publish(&v2b, "release.pem");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("0.2.0 is already published with another bundle"),
        "{err}"
    );
    let mut bad = fs::read(v2b.join("update.cairn")).unwrap();
    let at = bad.len() - 10;
    bad[at] ^= 1;
    fs::write(r.f.path("bad.cairn"), bad).unwrap();
    let o = publish(&r.f.path("bad.cairn"), "release.pem");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("payload uki: sha256"));
    run_ok(cairn().arg("keygen").arg(r.f.path("other.pem")));
    let o = publish(&r.v1, "other.pem");
    assert!(!o.status.success());
    assert_eq!(fs::read(to.join("test/index.json")).unwrap(), before);
}

#[test]
fn an_esp_it_cannot_read_whole_is_left_alone() {
    let r = releases();
    let key = key(&r);
    let bundle = fs::read(r.v2.join("update.cairn")).unwrap();
    let t = node(&r, &r.v1, "odd-esp");
    let disk_before = sha(&t.disk);
    let linux = t.esp.join("EFI/Linux");
    // An entry whose root hash cannot be read might be the running one: never deleted.
    fs::write(linux.join("cairn_0.0.9.efi"), b"MZ not really a UKI").unwrap();
    let err = install(&t, &key, &bundle, false).unwrap_err().to_string();
    assert!(
        err.contains("cannot read which root EFI/Linux/cairn_0.0.9.efi boots"),
        "{err}"
    );
    assert_eq!(esp_files(&t), ["cairn_0.0.9.efi", "cairn_0.1.0.efi"]);
    fs::remove_file(linux.join("cairn_0.0.9.efi")).unwrap();
    // Two entries booting the running root: which one is running cannot be told.
    fs::copy(linux.join("cairn_0.1.0.efi"), linux.join("cairn_0.1.0~copy.efi")).unwrap();
    let err = install(&t, &key, &bundle, false).unwrap_err().to_string();
    assert!(err.contains("2 entries in EFI/Linux boot the running root"), "{err}");
    assert_eq!(esp_files(&t), ["cairn_0.1.0.efi", "cairn_0.1.0~copy.efi"]);
    assert_eq!(sha(&t.disk), disk_before, "nothing was written");
}

#[test]
fn a_partition_table_written_halfway_is_mended_and_the_update_goes_on() {
    require(&["sgdisk"]);
    let r = releases();
    let key = key(&r);
    let bundle = fs::read(r.v2.join("update.cairn")).unwrap();
    let t = node(&r, &r.v1, "halfway");
    // Power lost while the table was written: the backup copy changed, the primary not.
    use std::os::unix::fs::FileExt;
    let disk = fs::OpenOptions::new().read(true).write(true).open(&t.disk).unwrap();
    let size = disk.metadata().unwrap().len();
    let (mut head, mut tail) = (vec![0u8; 34 * 512], vec![0u8; 33 * 512]);
    disk.read_exact_at(&mut head, 0).unwrap();
    disk.read_exact_at(&mut tail, size - 33 * 512).unwrap();
    let mut new_head = head.clone();
    let root_b = 4;
    cairn_disk::gpt::set_entry(&mut new_head, &mut tail, root_b, cairn_disk::guid::Guid([9; 16]), 0).unwrap();
    disk.write_all_at(&tail, size - 33 * 512).unwrap();
    drop(disk);
    let v = run_ok(Command::new("sgdisk").arg("-v").arg(&t.disk));
    assert!(!v.contains("No problems found"), "the copies differ: {v}");
    let mut lines = vec![];
    update::install(&t, &[key], &mut &bundle[..], &Options { force: false }, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("the backup GPT differed from the primary")),
        "{lines:?}"
    );
    let v = run_ok(Command::new("sgdisk").arg("-v").arg(&t.disk));
    assert!(v.contains("No problems found"), "{v}");
}

fn publish_to(r: &Releases, out: &Path, to: &Path, keys: &[&str]) {
    let mut c = cairn();
    c.arg("publish").arg(out).arg("--to").arg(to);
    for k in keys {
        c.arg("--key").arg(r.f.path(k));
    }
    run_ok(&mut c);
}

#[test]
fn an_index_that_expired_or_was_changed_is_refused() {
    use cairn_signing::bundle::Index;
    let r = releases();
    let key = key(&r);
    let www = r.f.path("www-signed");
    publish_to(&r, &r.v1, &www, &["release.pem"]);
    publish_to(&r, &r.v2, &www, &["release.pem"]);
    let dir = www.join("test");
    let source = format!("{}/", dir.display());
    let t = node(&r, &r.v1, "signed-index");
    let disk_before = sha(&t.disk);
    let index = Index::parse(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let auto = |now: u64| {
        let mut lines = vec![];
        let r = update::auto_at(&t, std::slice::from_ref(&key), &source, now, &mut |l| {
            lines.push(l.to_string())
        });
        r.map(|o| format!("{o:?}")).map_err(|e| e.to_string())
    };
    // Past its expiry (a server frozen on an old index): refused, nothing written.
    let err = auto(index.expires_at()).unwrap_err();
    assert!(
        err.contains(&format!("expired at {}", index.expires)) && err.contains("stale index"),
        "{err}"
    );
    // Changed without the key: the latest pointed at the older release, a signature cut.
    let good = fs::read(dir.join("index.json")).unwrap();
    let forged = String::from_utf8(good.clone())
        .unwrap()
        .replace("\"latest\": \"0.2.0\"", "\"latest\": \"0.1.0\"");
    assert_ne!(forged.as_bytes(), good.as_slice());
    fs::write(dir.join("index.json"), &forged).unwrap();
    let err = auto(cairn_signing::time::now()).unwrap_err();
    assert!(err.contains("is not signed by a release key this node trusts"), "{err}");
    fs::write(dir.join("index.json"), &good).unwrap();
    let sig = fs::read(dir.join("index.json.sig")).unwrap();
    fs::write(dir.join("index.json.sig"), &sig[..63]).unwrap();
    let err = auto(cairn_signing::time::now()).unwrap_err();
    assert!(err.contains("must hold 1 to 8 signatures"), "{err}");
    assert_eq!(sha(&t.disk), disk_before);
    // Whole and in time: v2 is installed.
    fs::write(dir.join("index.json.sig"), &sig).unwrap();
    let done = auto(cairn_signing::time::now()).unwrap();
    assert!(done.contains("Installed"), "{done}");
    // Its reboot put off (the reboot lease was busy): the next run finds it waiting for
    // its first boot and writes nothing again.
    let installed = sha(&t.disk);
    let again = auto(cairn_signing::time::now()).unwrap();
    assert_eq!(again, "Pending(\"0.2.0\")");
    assert_eq!(sha(&t.disk), installed);
    // A UKI cut to nothing (a power loss before FAT wrote its entry whole) is not a
    // pending release: the next run installs it again.
    let uki = t.esp.join("EFI/Linux/cairn_0.2.0+3.efi");
    let whole = fs::read(&uki).unwrap();
    fs::write(&uki, b"").unwrap();
    let again = auto(cairn_signing::time::now()).unwrap();
    assert!(again.contains("Installed"), "{again}");
    assert_eq!(fs::read(&uki).unwrap(), whole);
}

#[test]
fn a_release_key_rotates_across_two_releases() {
    let r = releases();
    let k1 = key(&r);
    run_ok(cairn().arg("keygen").arg(r.f.path("next.pem")));
    let k2 = PublicKey::read(&r.f.path("next.pub")).unwrap();
    // 0.2.0 signed by the current key announces the next; 0.3.0 is signed by the next.
    let text = fs::read_to_string(r.f.path("image.toml")).unwrap();
    let build = |version: &str, out: &str, extra: &[&str]| {
        fs::write(r.f.path("image.toml"), text.replace("0.2.0", version)).unwrap();
        run_ok(
            cairn()
                .current_dir(r.f.dir.path())
                .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
                .args(["build", "image.toml", "--out", out])
                .args(extra),
        );
        fs::read(r.f.path(out).join("update.cairn")).unwrap()
    };
    let announcing = build("0.2.0", "v2-announce", &["--next-key", "next.pub"]);
    let rotated = build("0.3.0", "v3-rotated", &["--key", "next.pem"]);
    assert!(manifest(&r.f.path("v3-rotated"))["signing-key"] == k2.fingerprint().as_str());
    let t = node(&r, &r.v1, "rotation");
    let image_key = r.f.path("release.pub");
    let trusted = || update::trusted_keys(&image_key, &t.state_dir).unwrap();
    assert_eq!(trusted(), [k1]);
    let install_with = |bundle: &[u8]| {
        let mut lines = vec![];
        let res = update::install(&t, &trusted(), &mut &bundle[..], &Options { force: false }, &mut |l| {
            lines.push(l.to_string())
        });
        (res, lines)
    };
    // Not yet: the next key is not trusted before a release announced it.
    let (res, _) = install_with(&rotated);
    assert!(res
        .unwrap_err()
        .to_string()
        .contains("not signed by the release key this node trusts"));
    // The announcing release is taken, and its next key trusted from then on.
    let (res, lines) = install_with(&announcing);
    res.unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("announces the next release key {}", k2.fingerprint()))),
        "{lines:?}"
    );
    assert_eq!(trusted(), [k1, k2]);
    let (res, _) = install_with(&rotated);
    assert_eq!(res.unwrap().manifest.version, "0.3.0");
    // A trust file that is not a key stops the node from guessing.
    fs::write(update::trust_dir(&t.state_dir).join("zz.key"), "garbage\n").unwrap();
    assert!(update::trusted_keys(&image_key, &t.state_dir).is_err());
}

#[test]
fn one_install_at_a_time() {
    let r = releases();
    let key = key(&r);
    let bundle = fs::read(r.v2.join("update.cairn")).unwrap();
    let t = node(&r, &r.v1, "busy");
    let disk_before = sha(&t.disk);
    // Another process (the timer's run) holds the lock: this one is refused at once.
    let held = update::lock_updates(&t.state_dir).unwrap();
    let err = install(&t, &key, &bundle, false).unwrap_err().to_string();
    assert!(err.contains("another update is running"), "{err}");
    assert_eq!(sha(&t.disk), disk_before);
    drop(held);
    install(&t, &key, &bundle, false).unwrap();
}

#[test]
fn publishers_running_at_once_lose_no_release() {
    let r = releases();
    for round in 0..4 {
        let to = r.f.path(&format!("www-{round}"));
        let children: Vec<_> = [&r.v1, &r.v2, &r.v1, &r.v2]
            .iter()
            .map(|out| {
                cairn()
                    .arg("publish")
                    .arg(out)
                    .arg("--to")
                    .arg(&to)
                    .arg("--key")
                    .arg(r.f.path("release.pem"))
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        let index = cairn_signing::bundle::Index::parse(&fs::read(to.join("test/index.json")).unwrap()).unwrap();
        let versions: Vec<&str> = index.releases.iter().map(|r| r.version.as_str()).collect();
        assert_eq!(versions, ["0.1.0", "0.2.0"], "round {round}: a release was lost");
    }
}

#[test]
fn a_disk_grown_by_systemd_repart_updates_too() {
    require(&["sfdisk", "sgdisk"]);
    let r = releases();
    let key = key(&r);
    let t = node(&r, &r.v1, "grown");
    // What first boot does on a bigger disk: the backup table moves to the new end and the
    // state partition (number 6) grows into the space (here with sfdisk, as repart would).
    let f = fs::OpenOptions::new().write(true).open(&t.disk).unwrap();
    let size = f.metadata().unwrap().len();
    f.set_len(size + (64 << 20)).unwrap();
    drop(f);
    run_ok(Command::new("sfdisk").args(["--relocate", "gpt-bak-std"]).arg(&t.disk));
    let mut grow = Command::new("sfdisk");
    grow.args(["--no-reread", "--no-tell-kernel", "-N", "6"]).arg(&t.disk);
    grow.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = grow.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b",+\n").unwrap();
    assert!(child.wait().unwrap().success());
    let state_before = &sfdisk_parts(&t.disk)[5];
    let (_, state_len) = partition(&manifest(&r.v1), "state");
    assert!(
        state_before["size"].as_u64().unwrap() * 512 > state_len,
        "{state_before}"
    );
    let bundle = fs::read(r.v2.join("update.cairn")).unwrap();
    install(&t, &key, &bundle, false).unwrap();
    let v = run_ok(Command::new("sgdisk").arg("-v").arg(&t.disk));
    assert!(v.contains("No problems found"), "{v}");
    let parts = sfdisk_parts(&t.disk);
    assert_eq!(&parts[5], state_before, "the grown state partition is kept as it is");
    let h2 = manifest(&r.v2)["root-hash"].as_str().unwrap().to_string();
    assert_eq!(uuid(&parts[3]), h2[..32]);
}

#[test]
fn a_version_out_of_tries_is_reported_and_not_taken_again() {
    let r = releases();
    let key = key(&r);
    let t = node(&r, &r.v1, "exhausted");
    let bundle = fs::read(r.v2.join("update.cairn")).unwrap();
    install(&t, &key, &bundle, false).unwrap();
    // systemd-boot spent all three tries without a health gate ever running (an initrd
    // that could not mount its root, say) and booted 0.1.0 again.
    fs::rename(
        t.esp.join("EFI/Linux/cairn_0.2.0+3.efi"),
        t.esp.join("EFI/Linux/cairn_0.2.0+0-3.efi"),
    )
    .unwrap();
    let status = update::status(&t).unwrap();
    assert!(
        status.contains("other    0.2.0 in slot b: FAILED: out of tries after 3 failed boots"),
        "{status}"
    );
    assert!(status.contains("failed   0.2.0: no health gate reported"), "{status}");
    let err = install(&t, &key, &bundle, false).unwrap_err().to_string();
    assert!(
        err.contains("0.2.0 already failed on this node (cairn_0.2.0+0-3.efi: out of boot tries"),
        "{err}"
    );
    assert_eq!(
        esp_files(&t),
        ["cairn_0.1.0.efi", "cairn_0.2.0+0-3.efi"],
        "refused before touching the ESP"
    );
    // Forced, it is written again and gets fresh tries.
    install(&t, &key, &bundle, true).unwrap();
    assert_eq!(esp_files(&t), ["cairn_0.1.0.efi", "cairn_0.2.0+3.efi"]);
}
