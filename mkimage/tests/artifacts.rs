//! Artifact tests: build an image from the fixture and check every format with the
//! reference tool that reads it (sgdisk, sfdisk, fsck.fat, mtools, objdump, unsquashfs,
//! sqfs2tar, e2fsck, veritysetup, systemd-dissect, openssl).

mod common;

use std::fs;
use std::process::Command;

use common::*;

#[test]
fn disk_passes_the_reference_tools() {
    require(&[
        "sgdisk",
        "sfdisk",
        "fsck.fat",
        "mcopy",
        "objdump",
        "unsquashfs",
        "sqfs2tar",
        "e2fsck",
        "dumpe2fs",
        "veritysetup",
    ]);
    let f = Fixture::new();
    let out = f.build_ok("out");
    let disk = out.join("disk.raw");
    let m = manifest(&out);

    // GPT: both tools agree it is sound, and it holds the planned partitions.
    let v = run_ok(Command::new("sgdisk").arg("-v").arg(&disk));
    assert!(v.contains("No problems found"), "{v}");
    run_ok(Command::new("sfdisk").arg("--verify").arg(&disk));
    let table: serde_json::Value =
        serde_json::from_str(&run_ok(Command::new("sfdisk").arg("--json").arg(&disk))).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["esp", "root-a", "verity-a", "root-b", "verity-b", "state"]);
    let root_hash = m["root-hash"].as_str().unwrap();
    let uuid = |i: usize| parts[i]["uuid"].as_str().unwrap().to_lowercase().replace('-', "");
    assert_eq!(
        uuid(1),
        root_hash[..32],
        "root-a UUID is the first half of the root hash"
    );
    assert_eq!(uuid(2), root_hash[32..], "verity-a UUID is the second half");
    assert_eq!(parts[1]["type"], "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    assert_eq!(parts[2]["type"], "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5");
    assert_eq!(parts[5]["type"], "4D21B016-B534-45C2-A9FB-5C16E091FD2D");
    assert_eq!(parts[3]["attrs"], "GUID:60,63", "empty slot B is read-only and no-auto");

    // ESP: fsck.fat is clean, mtools reads back exactly what was written.
    let tmp = f.path("x");
    fs::create_dir(&tmp).unwrap();
    let (esp_off, esp_len) = partition(&m, "esp");
    let esp = tmp.join("esp.img");
    extract(&disk, esp_off, esp_len, &esp);
    run_ok(Command::new("fsck.fat").arg("-n").arg(&esp));
    let get = |name: &str| {
        let to = tmp.join(name.replace('/', "_"));
        run_ok(
            Command::new("mcopy")
                .arg("-n")
                .arg("-i")
                .arg(&esp)
                .arg(format!("::{name}"))
                .arg(&to),
        );
        fs::read(to).unwrap()
    };
    assert_eq!(
        get("EFI/BOOT/BOOTX64.EFI"),
        fs::read("/usr/lib/systemd/boot/efi/systemd-bootx64.efi").unwrap()
    );
    assert!(String::from_utf8(get("loader/loader.conf"))
        .unwrap()
        .contains("default cairn_*"));
    let uki = get("EFI/Linux/cairn_1.2.3.efi");
    let (uki_off, uki_len) = payload(&m, "uki");
    extract(&disk, uki_off, uki_len, &tmp.join("uki-payload"));
    assert_eq!(
        fs::read(tmp.join("uki-payload")).unwrap(),
        uki,
        "the manifest's UKI range is the file on the ESP"
    );

    // UKI: objdump sees the stub's sections and the four Cairn adds, in order.
    fs::write(tmp.join("uki.efi"), &uki).unwrap();
    let sections = run_ok(Command::new("objdump").arg("-h").arg(tmp.join("uki.efi")));
    let order: Vec<&str> = sections
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|s| s.starts_with('.'))
        .collect();
    assert!(
        order.ends_with(&[".osrel", ".cmdline", ".linux", ".initrd"]),
        "{sections}"
    );
    assert!(sections.contains("file format pei-x86-64"));
    let text = String::from_utf8_lossy(&uki);
    assert!(text.contains(&format!(
        "roothash={root_hash} rd.shell=0 rd.emergency=reboot rd.timeout=120 console=ttyS0 quiet"
    )));
    assert!(text.contains("IMAGE_VERSION=1.2.3"));

    // State: a clean, labelled ext4.
    let (st_off, st_len) = partition(&m, "state");
    let state = tmp.join("state.img");
    extract(&disk, st_off, st_len, &state);
    run_ok(Command::new("e2fsck").arg("-fn").arg(&state));
    let dump = run_ok(Command::new("dumpe2fs").arg("-h").arg(&state));
    assert!(dump.contains("Filesystem volume name:   state"), "{dump}");

    // Root: a zstd squashfs whose content is the source plus overlay and Cairn's files.
    let root = tmp.join("root.sqfs");
    extract_payload(&out, "root", &root);
    let s = run_ok(Command::new("unsquashfs").arg("-s").arg(&root));
    assert!(s.contains("Compression zstd"), "{s}");
    let listing = run_ok(Command::new("unsquashfs").arg("-lln").arg(&root));
    assert!(
        listing.contains("crw-rw---- 0/6"),
        "device node with its group: {listing}"
    );
    assert!(listing.contains("drwx------ 1000/1000"), "{listing}");
    assert!(listing.contains("-rwsr-xr-x 0/0"), "setuid bit: {listing}");
    let back = tmp.join("back.tar");
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("sqfs2tar {} > {}", root.display(), back.display())),
    );
    let got = describe_tar(&back);
    let mut want = describe_tar(&f.path("root.tar"));
    for d in want.values_mut() {
        d.mtime = d.mtime.min(EPOCH);
    }
    // sqfs2tar leaves out the root directory itself; unsquashfs lists it.
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("drwxr-xr-x 0/0") && l.ends_with(" squashfs-root")),
        "{listing}"
    );
    want.remove("");
    for (path, d) in &want {
        assert_eq!(got.get(path), Some(d), "entry /{path} differs");
    }
    assert_eq!(
        got["usr/bin/ping"].xattrs,
        vec![("security.capability".to_string(), CAP_NET_RAW.to_vec())]
    );
    assert_eq!(got["usr/bin/zz"].links, ["usr/bin/aa", "usr/bin/zz"]);
    // Parents the source did not list are made root-owned, 0755, at the epoch.
    for (p, d) in got
        .iter()
        .filter(|(p, d)| p.starts_with("usr/nested-directory") && d.kind == "dir")
    {
        assert_eq!(
            (d.kind.as_str(), d.mode, d.uid, d.mtime),
            ("dir", 0o755, 0, EPOCH),
            "/{p}"
        );
    }
    let added: Vec<&String> = got
        .keys()
        .filter(|k| !want.contains_key(*k) && !k.starts_with("usr/nested-directory"))
        .collect();
    assert_eq!(
        added,
        [
            "etc/cairn",
            "etc/cairn/node.conf",
            "etc/motd",
            "etc/os-release",
            "usr/lib",
            "usr/lib/clock-epoch",
            "usr/lib/os-release",
            "usr/share",
            "usr/share/cairn",
            "usr/share/cairn/release.pub"
        ]
    );
    let epoch_file = &got["usr/lib/clock-epoch"];
    assert_eq!(
        (epoch_file.kind.as_str(), epoch_file.mtime),
        ("file", EPOCH),
        "systemd's clock floor is the build time"
    );
    let motd = &got["etc/motd"];
    assert_eq!(
        (motd.uid, motd.gid, motd.mode, motd.mtime),
        (0, 0, 0o644, EPOCH),
        "overlay files are root's"
    );
    let baked = fs::read_to_string(f.path("release.pub")).unwrap();
    assert_eq!(
        got["usr/share/cairn/release.pub"].content,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(baked.as_bytes()))
    );

    // Verity: veritysetup accepts the tree, and writes the same bytes for the same salt.
    let (v_off, v_len) = payload(&m, "verity");
    let hashdev = tmp.join("verity.img");
    extract(&disk, v_off, v_len, &hashdev);
    run_ok(
        Command::new("veritysetup")
            .arg("verify")
            .arg(&root)
            .arg(&hashdev)
            .arg(root_hash),
    );
    let sb = fs::read(&hashdev).unwrap();
    let sb_uuid = uuid_text(&sb[16..32]);
    let reference = tmp.join("reference.img");
    let fmt = run_ok(
        Command::new("veritysetup")
            .arg("format")
            .arg(&root)
            .arg(&reference)
            .arg(format!("--salt={}", m["verity-salt"].as_str().unwrap()))
            .arg(format!("--uuid={sb_uuid}")),
    );
    assert!(fmt.contains(root_hash), "{fmt}");
    assert_eq!(
        fs::read(&reference).unwrap(),
        sb,
        "hash device is byte-identical to veritysetup format"
    );

    // And cairn verify agrees with all of it.
    let v = run_ok(cairn().arg("verify").arg(&out).arg("--key").arg(f.path("release.pub")));
    assert!(v.contains("verified test 1.2.3"), "{v}");
}

fn uuid_text(b: &[u8]) -> String {
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[test]
fn two_builds_are_byte_identical() {
    let f = Fixture::new();
    let a = f.build_ok("a");
    let b = f.build_ok("b");
    for file in ["disk.raw", "manifest.json", "manifest.json.sig"] {
        assert!(
            fs::read(a.join(file)).unwrap() == fs::read(b.join(file)).unwrap(),
            "{file} differs between two builds"
        );
    }
    // A different epoch changes the image: timestamps really come from SOURCE_DATE_EPOCH.
    let o = cairn()
        .current_dir(f.dir.path())
        .env("SOURCE_DATE_EPOCH", "1600000000")
        .args(["build", "image.toml", "--out", "c"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_ne!(manifest(&a)["root-hash"], manifest(&f.path("c"))["root-hash"]);
}

#[test]
fn verify_catches_every_kind_of_tampering() {
    let f = Fixture::new();
    let out = f.build_ok("out");
    let key = f.path("release.pub");
    let verify = |dir: &std::path::Path, key: &std::path::Path| {
        cairn().arg("verify").arg(dir).arg("--key").arg(key).output().unwrap()
    };
    assert!(verify(&out, &key).status.success());

    // A flipped byte inside the root filesystem.
    let m = manifest(&out);
    let (r_off, r_len) = payload(&m, "root");
    let flip = |file: &std::path::Path, at: u64| {
        use std::os::unix::fs::FileExt;
        let fd = fs::OpenOptions::new().read(true).write(true).open(file).unwrap();
        let mut b = [0u8; 1];
        fd.read_exact_at(&mut b, at).unwrap();
        fd.write_all_at(&[b[0] ^ 0x01], at).unwrap();
    };
    flip(&out.join("disk.raw"), r_off + r_len / 2);
    let o = verify(&out, &key);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("MISMATCH: disk data"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    flip(&out.join("disk.raw"), r_off + r_len / 2);
    assert!(verify(&out, &key).status.success(), "flipping back restores the image");
    // A byte where the manifest says the disk is zero (the empty B slot).
    let b = m["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == "root-b")
        .unwrap()["offset"]
        .as_u64()
        .unwrap();
    flip(&out.join("disk.raw"), b + 12345);
    let o = verify(&out, &key);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("MISMATCH: disk data"), "{err}");
    assert!(err.contains("zeros elsewhere"), "{err}");
    flip(&out.join("disk.raw"), b + 12345);
    assert!(verify(&out, &key).status.success());

    // The manifest itself.
    flip(&out.join("manifest.json"), 40);
    let o = verify(&out, &key);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("signature"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    flip(&out.join("manifest.json"), 40);

    // Another key.
    let other = f.path("other.pem");
    run_ok(cairn().arg("keygen").arg(&other));
    let o = verify(&out, &f.path("other.pub"));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("signature does not match"));
}

#[test]
fn keys_are_readable_by_openssl() {
    require(&["openssl"]);
    let f = Fixture::new();
    let key = f.path("k/release.pem");
    let o = run_ok(cairn().arg("keygen").arg(&key));
    assert!(o.contains("fingerprint  sha256:"), "{o}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    run_ok(Command::new("openssl").args(["pkey", "-noout", "-in"]).arg(&key));
    run_ok(
        Command::new("openssl")
            .args(["pkey", "-noout", "-pubin", "-in"])
            .arg(f.path("k/release.pub")),
    );
    // Refuses to overwrite without --force.
    let again = cairn().arg("keygen").arg(&key).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    // A manifest signed by a keygen key verifies with openssl as raw ed25519.
    let out = f.path("out");
    let o = cairn()
        .current_dir(f.dir.path())
        .args(["build", "image.toml", "--out"])
        .arg(&out)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = run_ok(
        Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
            .arg(f.path("k/release.pub"))
            .arg("-in")
            .arg(out.join("manifest.json"))
            .arg("-sigfile")
            .arg(out.join("manifest.json.sig")),
    );
    assert!(v.contains("Signature Verified Successfully"), "{v}");
}

#[test]
fn first_build_creates_and_announces_a_development_key() {
    let f = Fixture::new();
    let def = fs::read_to_string(f.path("image.toml"))
        .unwrap()
        .replace("[signing]\nkey = \"release.pem\"\n", "");
    fs::write(f.path("image.toml"), def).unwrap();
    let o = f.build("out");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("SIGNED WITH THE DEVELOPMENT KEY (created by this build)"),
        "{stdout}"
    );
    let dev_pub = f.path("xdg/cairn/dev-key.pub");
    assert!(manifest(&f.path("out"))["development-key"].as_bool().unwrap());
    let v = cairn()
        .arg("verify")
        .arg(f.path("out"))
        .arg("--key")
        .arg(&dev_pub)
        .output()
        .unwrap();
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stderr).contains("development key"));
    // The second build reuses it.
    let o = f.build("out2");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("SIGNED WITH THE DEVELOPMENT KEY") && !stdout.contains("created by this build"),
        "{stdout}"
    );
}

#[test]
fn systemd_dissect_reads_the_disk() {
    // systemd-dissect attaches a loop device, which needs root.
    if skip_without_root("systemd-dissect needs root for loop devices") {
        return;
    }
    require(&["systemd-dissect"]);
    let f = Fixture::new();
    let out = f.build_ok("out");
    let m = manifest(&out);
    let rh = m["root-hash"].as_str().unwrap();
    let o = run_ok(
        Command::new("systemd-dissect")
            .arg(format!("--root-hash={rh}"))
            .arg(out.join("disk.raw")),
    );
    let row = |designator: &str| {
        o.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(designator))
            .map(str::to_string)
    };
    let root = row("root").unwrap_or_else(|| panic!("no root partition found:\n{o}"));
    assert!(
        root.contains("root-a") && root.contains("squashfs") && root.contains(" yes "),
        "root-a, verity on: {root}"
    );
    assert!(row("root-verity").unwrap().contains("verity-a"));
    assert!(row("esp").unwrap().contains("vfat"));
    let var = row("var").unwrap();
    assert!(var.contains("ext4") && var.contains("state"), "{var}");
    assert!(
        !o.contains("root-b") && !o.contains("verity-b"),
        "the empty slot is never picked:\n{o}"
    );
    assert!(o.contains("IMAGE_VERSION=1.2.3"), "{o}");
}

#[test]
fn directory_source_keeps_owners_devices_links_and_capabilities() {
    if skip_without_root("making device nodes and foreign owners in a directory needs root") {
        return;
    }
    require(&["sqfs2tar", "unsquashfs"]);
    let f = Fixture::new();
    let tree = f.path("tree");
    // Unpack the fixture tarball as root (GNU tar keeps owners, devices and xattrs).
    fs::create_dir(&tree).unwrap();
    run_ok(
        Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "-xpf"])
            .arg(f.path("root.tar"))
            .arg("-C")
            .arg(&tree),
    );
    let def = fs::read_to_string(f.path("image.toml"))
        .unwrap()
        .replace("source = \"root.tar\"", "source = \"tree\"");
    fs::write(f.path("image.toml"), def).unwrap();
    let out = f.build_ok("out");
    let root = f.path("root.sqfs");
    extract_payload(&out, "root", &root);
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "sqfs2tar {} > {}",
        root.display(),
        f.path("back.tar").display()
    )));
    let got = describe_tar(&f.path("back.tar"));
    let want = describe_tar(&f.path("root.tar"));
    for (path, d) in want.iter().filter(|(p, _)| !p.is_empty()) {
        let g = got.get(path).unwrap_or_else(|| panic!("/{path} missing"));
        let mut d = d.clone();
        d.mtime = d.mtime.min(EPOCH);
        if d.kind == "dir" {
            // GNU tar does not restore the time of a directory the archive revisits later.
            d.mtime = g.mtime;
        }
        assert_eq!(g, &d, "/{path}");
    }
}

#[test]
fn pinned_kubelet_is_installed_and_reported() {
    require(&["unsquashfs"]);
    let f = Fixture::new();
    let bin = b"#!/bin/sh\necho kubelet\n";
    fs::write(f.path("kubelet"), bin).unwrap();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bin));
    f.write_definition(&format!("[kubelet]\npath = \"kubelet\"\nsha256 = \"{sha}\"\n"));
    let o = f.build("out");
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        summary.contains(&format!("kubelet      included, sha256 {}", &sha[..16])),
        "{summary}"
    );
    let root = f.path("root.sqfs");
    extract_payload(&f.path("out"), "root", &root);
    let listing = run_ok(Command::new("unsquashfs").arg("-lln").arg(&root));
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x 0/0") && l.ends_with("squashfs-root/usr/bin/kubelet")),
        "{listing}"
    );

    // Without a pin the summary says the image has no kubelet.
    f.write_definition("");
    let o = f.build("out2");
    assert!(String::from_utf8_lossy(&o.stdout).contains("kubelet      NOT INCLUDED"));
}

/// A root with a small fake module tree: what the classes keep, what they don't.
fn module_tree(f: &Fixture) {
    let base = f.path("modroot/usr/lib/modules/6.1.0-test");
    for m in [
        "kernel/fs/squashfs/squashfs.ko",
        "kernel/drivers/md/dm-verity.ko",
        "kernel/drivers/md/dm-bufio.ko",
        "kernel/drivers/md/dm-mod.ko",
        "kernel/sound/core/snd.ko",
        "kernel/drivers/gpu/drm/drm.ko",
    ] {
        let p = base.join(m);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, format!("not really {m}")).unwrap();
    }
    fs::write(
        base.join("modules.dep"),
        "kernel/fs/squashfs/squashfs.ko:\nkernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko\n\
         kernel/drivers/md/dm-bufio.ko:\nkernel/drivers/md/dm-mod.ko:\nkernel/sound/core/snd.ko:\nkernel/drivers/gpu/drm/drm.ko:\n",
    )
    .unwrap();
    fs::write(
        base.join("modules.order"),
        "kernel/sound/core/snd.ko\nkernel/fs/squashfs/squashfs.ko\n",
    )
    .unwrap();
    let def = fs::read_to_string(f.path("image.toml"))
        .unwrap()
        .replace("source = \"root.tar\"", "source = \"modroot\"");
    fs::write(f.path("image.toml"), def).unwrap();
}

#[test]
fn modules_are_trimmed_to_the_classes_with_their_dependencies() {
    require(&["unsquashfs", "depmod"]);
    let f = Fixture::new();
    module_tree(&f);
    let out = f.build_ok("out");
    let root = f.path("root.sqfs");
    extract_payload(&out, "root", &root);
    let list = run_ok(Command::new("unsquashfs").arg("-l").arg(&root));
    let m = "squashfs-root/usr/lib/modules/6.1.0-test/";
    for kept in [
        "kernel/fs/squashfs/squashfs.ko",
        "kernel/drivers/md/dm-verity.ko",
        "kernel/drivers/md/dm-bufio.ko",
    ] {
        assert!(list.contains(&format!("{m}{kept}")), "{kept} dropped:\n{list}");
    }
    for gone in ["kernel/sound", "kernel/drivers/gpu"] {
        assert!(!list.contains(&format!("{m}{gone}")), "{gone} kept:\n{list}");
    }
    // depmod rebuilt the indexes for what is left.
    for index in ["modules.dep", "modules.dep.bin", "modules.alias.bin"] {
        assert!(list.contains(&format!("{m}{index}")), "{index} missing");
    }
    let x = f.path("x");
    run_ok(
        Command::new("unsquashfs")
            .arg("-d")
            .arg(&x)
            .arg(&root)
            .arg("usr/lib/modules/6.1.0-test/modules.dep"),
    );
    let dep = fs::read_to_string(x.join("usr/lib/modules/6.1.0-test/modules.dep")).unwrap();
    assert!(
        dep.contains("kernel/drivers/md/dm-verity.ko:") && !dep.contains("snd.ko"),
        "{dep}"
    );
    // depmod's scratch copy stays out of the outputs.
    assert!(!out.join("depmod").exists());
    let summary = String::from_utf8_lossy(&f.build("out2").stdout).into_owned();
    assert!(summary.contains("modules      6.1.0-test: 4 of 6 kept"), "{summary}");
}

#[test]
fn extra_modules_add_to_the_classes_and_typos_are_named() {
    require(&["unsquashfs", "depmod"]);
    let f = Fixture::new();
    module_tree(&f);
    let def = fs::read_to_string(f.path("image.toml")).unwrap();
    let with = |extra: &str| def.replace("cmdline = [", &format!("extra-modules = [{extra}]\ncmdline = ["));
    fs::write(f.path("image.toml"), with("\"kernel/sound/\"")).unwrap();
    let out = f.build_ok("out");
    extract_payload(&out, "root", &f.path("root.sqfs"));
    let list = run_ok(Command::new("unsquashfs").arg("-l").arg(f.path("root.sqfs")));
    assert!(
        list.contains("kernel/sound/core/snd.ko") && !list.contains("drm.ko"),
        "{list}"
    );

    fs::write(f.path("image.toml"), with("\"kernel/sund/\"")).unwrap();
    let o = f.build("out3");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("extra-modules entry 'kernel/sund/' matches no module of kernel 6.1.0-test"),
        "{err}"
    );
    assert!(!f.path("out3").exists());

    fs::write(
        f.path("image.toml"),
        def.replace("cmdline = [", "modules = \"all\"\ncmdline = ["),
    )
    .unwrap();
    let out = f.build_ok("out4");
    extract_payload(&out, "root", &f.path("all.sqfs"));
    let list = run_ok(Command::new("unsquashfs").arg("-l").arg(f.path("all.sqfs")));
    assert!(list.contains("drm.ko") && list.contains("snd.ko"), "{list}");
}

#[test]
fn a_node_config_key_is_baked_in_and_reported() {
    require(&["unsquashfs"]);
    let f = Fixture::new();
    run_ok(cairn().current_dir(f.path("")).args(["keygen", "node-config.pem"]));
    f.write_definition("node-config-key = \"node-config.pub\"\n");
    // The extra line lands in [signing], the last table of the fixture's definition.
    let o = f.build("out");
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pem = fs::read_to_string(f.path("node-config.pub")).unwrap();
    let fp = cairn_signing::PublicKey::from_pem(&pem).unwrap().fingerprint();
    assert!(
        summary.contains(&format!("node config  config drives must be signed by {fp}")),
        "{summary}"
    );
    let root = f.path("root.sqfs");
    extract_payload(&f.path("out"), "root", &root);
    let x = f.path("x");
    run_ok(
        Command::new("unsquashfs")
            .arg("-d")
            .arg(&x)
            .arg(&root)
            .arg("usr/share/cairn/node-config.pub"),
    );
    assert_eq!(
        fs::read_to_string(x.join("usr/share/cairn/node-config.pub")).unwrap(),
        pem
    );

    // Without one the summary says unsigned drives are accepted.
    f.write_definition("");
    let summary = String::from_utf8_lossy(&f.build("out2").stdout).into_owned();
    assert!(summary.contains("unsigned config drives accepted"), "{summary}");

    // A file that is not a public key is refused at its line.
    fs::write(f.path("junk.pub"), "not a key").unwrap();
    f.write_definition("node-config-key = \"junk.pub\"\n");
    let o = f.build("out3");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("image.toml:23:19:") && err.contains("is not a readable ed25519 public key"),
        "{err}"
    );
}

#[test]
fn a_dev_build_is_marked_reproducible_and_not_published_by_default() {
    let f = Fixture::new();
    let dev = |out: &str| {
        let o = cairn()
            .current_dir(f.dir.path())
            .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
            .env("XDG_DATA_HOME", f.path("xdg"))
            .args(["build", "image.toml", "--dev", "--out", out])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let summary = dev("dev-a");
    assert!(summary.contains("build        DEVELOPMENT"), "{summary}");
    dev("dev-b");
    let (a, b) = (f.path("dev-a"), f.path("dev-b"));
    for file in ["disk.raw", "manifest.json", "update.cairn"] {
        assert!(
            fs::read(a.join(file)).unwrap() == fs::read(b.join(file)).unwrap(),
            "{file} differs between two --dev builds"
        );
    }
    let m = manifest(&a);
    assert_eq!(m["build"], "development");
    let release = f.build_ok("release");
    assert_eq!(manifest(&release)["build"], "release");
    assert_ne!(m["root-hash"], manifest(&release)["root-hash"]);

    // The mark is inside the image too: os-release in the root and in the UKI.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root.sqfs");
    extract_payload(&a, "root", &root);
    let osr = run_ok(
        Command::new("unsquashfs")
            .args(["-cat"])
            .arg(&root)
            .arg("usr/lib/os-release"),
    );
    assert!(osr.contains("VARIANT_ID=development\n"), "{osr}");
    assert!(
        osr.contains("PRETTY_NAME=\"Cairn test 1.2.3 (development build)\""),
        "{osr}"
    );

    let o = cairn()
        .arg("verify")
        .arg(&a)
        .arg("--key")
        .arg(f.path("release.pub"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && text.contains("a development build"), "{text}");

    // Publishing it takes --allow-development.
    let served = tmp.path().join("served");
    let publish = || {
        let mut c = cairn();
        c.arg("publish")
            .arg(&a)
            .arg("--to")
            .arg(&served)
            .arg("--key")
            .arg(f.path("release.pem"));
        c
    };
    let o = publish().output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("is a development build"), "{err}");
    assert!(err.contains("--allow-development"), "{err}");
    assert!(!served.join("test/index.json").exists());
    run_ok(publish().arg("--allow-development"));
    assert!(served.join("test/index.json").exists());
}
