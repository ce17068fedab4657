//! The other forms of the disk image (`[output] formats`, `--format`), each checked by the
//! tool that reads it: `bmaptool copy` with our bmap (from `disk.raw` and from
//! `disk.raw.zst`) writes exactly `disk.raw` and stops at a flipped byte; `zstd -d` gives
//! `disk.raw` back; `qemu-img check` and `qemu-img compare` accept the qcow2; `sgdisk`,
//! `fsck.fat` and `xorriso` read the live ISO, whose root and verity partitions are the
//! disk image's, under the root hash's GUIDs (it boots in qemu-tests). All are
//! listed in the signed `outputs.json` that `cairn verify` checks, byte-identical across
//! two builds, and removed when a later build into the same directory does not ask for
//! them.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

fn flip(file: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let fd = fs::OpenOptions::new().read(true).write(true).open(file).unwrap();
    let mut b = [0u8; 1];
    fd.read_exact_at(&mut b, at).unwrap();
    fd.write_all_at(&[b[0] ^ 0x01], at).unwrap();
}

fn verify(dir: &Path, key: &Path) -> (bool, String, String) {
    let o = cairn().arg("verify").arg(dir).arg("--key").arg(key).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `bmaptool copy` of `image` with `bmap` to `to`; its success and what it said.
fn bmaptool_copy(bmap: &Path, image: &Path, to: &Path) -> (bool, String) {
    let o = Command::new("bmaptool")
        .arg("copy")
        .arg("--bmap")
        .arg(bmap)
        .arg(image)
        .arg(to)
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn bmap_zst_and_qcow2_are_read_by_their_tools_listed_signed_and_reproducible() {
    require(&["bmaptool", "zstd", "qemu-img", "cmp"]);
    let f = Fixture::new();
    // One format from the definition, two from the command line.
    f.write_definition("\n[output]\nformats = [\"raw\", \"bmap\"]\n");
    let build = |out: &str| {
        let o = cairn()
            .current_dir(f.dir.path())
            .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
            .env("XDG_DATA_HOME", f.path("xdg"))
            .args([
                "build",
                "image.toml",
                "--format",
                "raw.zst",
                "--format",
                "qcow2",
                "--out",
                out,
            ])
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{log}");
        f.path(out)
    };
    let a = build("a");
    let files = [
        "disk.raw.bmap",
        "disk.raw.zst",
        "disk.qcow2",
        "sbom.spdx.json",
        "outputs.json",
        "outputs.json.sig",
    ];
    for name in files {
        assert!(a.join(name).is_file(), "{name} missing");
    }
    let disk = a.join("disk.raw");

    // bmaptool: the same bytes from the raw image and from the compressed one.
    for (i, image) in ["disk.raw", "disk.raw.zst"].iter().enumerate() {
        let to = f.path(&format!("flashed-{i}.img"));
        let (ok, said) = bmaptool_copy(&a.join("disk.raw.bmap"), &a.join(image), &to);
        assert!(ok, "{image}: {said}");
        let st = Command::new("cmp").arg(&disk).arg(&to).status().unwrap();
        assert!(st.success(), "bmaptool's copy of {image} differs from disk.raw");
    }
    // A flipped byte inside a mapped range (the root filesystem) is caught.
    let bad = f.path("bad.raw");
    fs::copy(&disk, &bad).unwrap();
    let (r_off, r_len) = payload(&manifest(&a), "root");
    flip(&bad, r_off + r_len / 2);
    let (ok, said) = bmaptool_copy(&a.join("disk.raw.bmap"), &bad, &f.path("bad.img"));
    assert!(!ok && said.contains("checksum mismatch"), "{said}");

    // zstd and qemu-img read theirs.
    let unpacked = f.path("unpacked.raw");
    let st = Command::new("zstd")
        .args(["-q", "-d", "-o"])
        .arg(&unpacked)
        .arg(a.join("disk.raw.zst"))
        .status()
        .unwrap();
    assert!(st.success());
    assert!(Command::new("cmp")
        .arg(&disk)
        .arg(&unpacked)
        .status()
        .unwrap()
        .success());
    let check = run_ok(Command::new("qemu-img").arg("check").arg(a.join("disk.qcow2")));
    assert!(check.contains("No errors were found"), "{check}");
    let same = run_ok(
        Command::new("qemu-img")
            .arg("compare")
            .arg(a.join("disk.qcow2"))
            .arg(&disk),
    );
    assert!(same.contains("Images are identical"), "{same}");

    // Listed and signed; cairn verify checks each.
    let key = f.path("release.pub");
    let (ok, out, err) = verify(&a, &key);
    assert!(ok, "{err}");
    for name in [
        "sbom.spdx.json (spdx)",
        "disk.raw.bmap (bmap)",
        "disk.raw.zst (raw.zst)",
        "disk.qcow2 (qcow2)",
    ] {
        assert!(out.contains(&format!("ok  {name}: ")), "{name}: {out}");
    }
    assert!(
        out.contains("outputs.json: signature good, names this manifest"),
        "{out}"
    );
    let size = fs::metadata(a.join("disk.qcow2")).unwrap().len();
    flip(&a.join("disk.qcow2"), size / 2);
    let (ok, _, err) = verify(&a, &key);
    assert!(!ok && err.contains("MISMATCH: disk.qcow2 sha256"), "{err}");
    flip(&a.join("disk.qcow2"), size / 2);

    // Reproducible.
    let b = build("b");
    for name in files {
        assert!(
            fs::read(a.join(name)).unwrap() == fs::read(b.join(name)).unwrap(),
            "{name} differs between two builds"
        );
    }

    // The list cut off from its files or its manifest is refused.
    fs::rename(b.join("outputs.json"), f.path("outputs.json")).unwrap();
    let (ok, _, err) = verify(&b, &key);
    assert!(
        !ok && err.contains("MISMATCH: disk.raw.bmap: manifest says listed in a signed outputs.json"),
        "{err}"
    );
    fs::rename(f.path("outputs.json"), b.join("outputs.json")).unwrap();
    assert!(verify(&b, &key).0);

    // A later build into the same directory without them leaves none behind (the SBOM
    // and the list that signs it are in every build).
    f.write_definition("");
    let o = f.build("a");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for name in &files[..3] {
        assert!(!a.join(name).exists(), "{name} left behind by the earlier build");
    }
    let (ok, out, err) = verify(&a, &key);
    assert!(ok && out.contains("ok  sbom.spdx.json (spdx)"), "{out}{err}");
    assert!(!out.contains("disk.raw.bmap"), "{out}");
}

#[test]
fn the_plan_names_the_outputs_and_their_tools() {
    let f = Fixture::new();
    let plan = |args: &[&str]| {
        run_ok(
            cairn()
                .current_dir(f.dir.path())
                .env("XDG_DATA_HOME", f.path("xdg"))
                .args(["build", "image.toml", "--plan"])
                .args(args),
        )
    };
    let line = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("no {key} line: {text}"))
            .to_string()
    };
    let default = plan(&[]);
    assert!(
        line(&default, "outputs").ends_with("disk.raw update.cairn manifest.json sbom.spdx.json outputs.json"),
        "{default}"
    );
    let more = plan(&["--format", "qcow2", "--format", "bmap"]);
    assert!(
        line(&more, "outputs")
            .ends_with("disk.raw disk.raw.bmap disk.qcow2 update.cairn manifest.json sbom.spdx.json outputs.json"),
        "{more}"
    );
    assert!(line(&more, "tools").contains("qemu-img"), "{more}");
    let iso = plan(&["--format", "iso"]);
    assert!(
        line(&iso, "outputs").ends_with("disk.raw live.iso update.cairn manifest.json sbom.spdx.json outputs.json"),
        "{iso}"
    );
    assert!(line(&iso, "tools").contains("xorriso mkfs.fat mmd mcopy"), "{iso}");
    let o = cairn()
        .current_dir(f.dir.path())
        .args(["build", "image.toml", "--plan", "--format", "vhd"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("vhd") && err.contains("raw.zst") && err.contains("qcow2"),
        "{err}"
    );
}

/// The ISO's GPT as `sfdisk -J` reads it: (type, uuid, name, attrs, start, size) in
/// 512-byte sectors.
fn iso_partitions(iso: &Path) -> Vec<serde_json::Value> {
    let json = run_ok(Command::new("sfdisk").arg("-J").arg(iso));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["partitiontable"]["partitions"].as_array().unwrap().clone()
}

fn find_type<'a>(parts: &'a [serde_json::Value], ty: &str) -> &'a serde_json::Value {
    let found: Vec<_> = parts
        .iter()
        .filter(|p| p["type"].as_str().unwrap().eq_ignore_ascii_case(ty))
        .collect();
    assert_eq!(found.len(), 1, "partitions of type {ty}: {parts:?}");
    found[0]
}

#[test]
fn the_live_iso_carries_the_verified_root_under_the_root_hash_and_an_el_torito_esp() {
    require(&["xorriso", "sfdisk", "sgdisk", "fsck.fat", "mtype", "mdir", "cmp"]);
    let f = Fixture::new();
    f.write_definition("\n[output]\nformats = [\"raw\", \"iso\"]\n");
    let a = f.build_ok("a");
    let iso = a.join("live.iso");
    let m = manifest(&a);
    let root_hash = m["root-hash"].as_str().unwrap().to_string();

    // The GPT is sound, and the root and verity partitions carry the root hash's halves,
    // the names the initrd does not need but people read, and the read-only flag.
    let v = run_ok(Command::new("sgdisk").arg("-v").arg(&iso));
    assert!(v.contains("No problems found"), "{v}");
    let parts = iso_partitions(&iso);
    let root = find_type(&parts, "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    let verity = find_type(&parts, "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5");
    let esp = find_type(&parts, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    // The GUID's text form: the first three fields little-endian, as the disk image's.
    let disk_uuid = |label: &str| -> String {
        m["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["label"] == label)
            .unwrap()["uuid"]
            .as_str()
            .unwrap()
            .to_ascii_uppercase()
    };
    assert_eq!(root["uuid"].as_str().unwrap(), disk_uuid("root-a"), "{root}");
    assert_eq!(verity["uuid"].as_str().unwrap(), disk_uuid("verity-a"), "{verity}");
    assert_eq!(root["name"], "root-live");
    assert_eq!(verity["name"], "verity-live");
    for p in [root, verity] {
        assert!(p["attrs"].as_str().unwrap_or("").contains("60"), "{p}");
    }

    // The partitions hold exactly the disk image's root and verity payloads.
    for (part, name) in [(root, "root"), (verity, "verity")] {
        let (_, len) = payload(&m, name);
        let from_iso = f.path(&format!("{name}.iso-part"));
        let start = part["start"].as_u64().unwrap() * 512;
        assert!(part["size"].as_u64().unwrap() * 512 >= len);
        extract(&iso, start, len, &from_iso);
        let from_disk = f.path(&format!("{name}.disk-part"));
        extract_payload(&a, name, &from_disk);
        assert!(
            Command::new("cmp")
                .arg(&from_iso)
                .arg(&from_disk)
                .status()
                .unwrap()
                .success(),
            "{name} differs between live.iso and disk.raw"
        );
    }

    // The ESP (also the El Torito image) is a clean FAT with systemd-boot and a UKI whose
    // command line has the live words after the image's.
    let esp_img = f.path("esp.img");
    extract(
        &iso,
        esp["start"].as_u64().unwrap() * 512,
        esp["size"].as_u64().unwrap() * 512,
        &esp_img,
    );
    let fsck = run_ok(Command::new("fsck.fat").arg("-n").arg(&esp_img));
    assert!(
        !fsck.contains("differ") && !fsck.contains("Free cluster summary wrong"),
        "{fsck}"
    );
    let listing = run_ok(
        Command::new("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-/", "-b", "-i"])
            .arg(&esp_img)
            .arg("::/"),
    );
    assert!(listing.contains("::/EFI/BOOT/BOOTX64.EFI"), "{listing}");
    let uki_path = listing
        .lines()
        .find(|l| l.starts_with("::/EFI/Linux/") && l.ends_with(".efi"))
        .unwrap_or_else(|| panic!("no UKI: {listing}"));
    let uki = f.path("live.efi");
    run_ok(
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&esp_img)
            .arg(uki_path)
            .arg(&uki),
    );
    let uki_bytes = fs::read(&uki).unwrap();
    let text = String::from_utf8_lossy(&uki_bytes);
    let cmdline = format!("roothash={root_hash}");
    let at = text
        .find(&cmdline)
        .unwrap_or_else(|| panic!("no {cmdline} in the live UKI"));
    let line: String = text[at..].chars().take_while(|c| *c != '\0').collect();
    assert!(
        line.contains("console=ttyS0 quiet") && line.ends_with("cairn.live fstab=no systemd.volatile=state"),
        "{line}"
    );
    let el_torito = run_ok(
        Command::new("xorriso")
            .args(["-indev"])
            .arg(&iso)
            .args(["-report_el_torito", "plain"]),
    );
    assert!(
        el_torito
            .lines()
            .any(|l| l.contains("El Torito boot img") && l.contains("UEFI")),
        "{el_torito}"
    );

    // Listed and signed; a flipped byte is caught.
    let key = f.path("release.pub");
    let (ok, out, err) = verify(&a, &key);
    assert!(ok && out.contains("ok  live.iso (iso): "), "{out}{err}");
    let size = fs::metadata(&iso).unwrap().len();
    flip(&iso, size - 4096);
    let (ok, _, err) = verify(&a, &key);
    assert!(!ok && err.contains("MISMATCH: live.iso sha256"), "{err}");
    flip(&iso, size - 4096);

    // Reproducible.
    let b = f.build_ok("b");
    assert!(
        fs::read(&iso).unwrap() == fs::read(b.join("live.iso")).unwrap(),
        "live.iso differs between two builds"
    );
}

#[test]
fn an_esp_too_big_for_el_torito_is_refused_with_a_hint_and_leaves_no_iso() {
    require(&["xorriso", "sfdisk", "sgdisk", "mkfs.fat", "mcopy"]);
    let f = Fixture::new();
    // 34 MB of kernel: the live ESP cannot fit El Torito's 32 MiB.
    fs::write(f.path("vmlinuz"), vec![0x4b; 34_000_000]).unwrap();
    f.write_definition("\n[output]\nformats = [\"raw\", \"iso\"]\n");
    let o = f.build("a");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("El Torito") && err.contains("make the UKI smaller"),
        "{err}"
    );
    assert!(!f.path("a/live.iso").exists());
    assert!(!f.path("a/.iso-work").exists());
}
