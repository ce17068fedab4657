//! The other forms of the disk image (`[output] formats`, `--format`), each checked by the
//! tool that reads it: `bmaptool copy` with our bmap (from `disk.raw` and from
//! `disk.raw.zst`) writes exactly `disk.raw` and stops at a flipped byte; `zstd -d` gives
//! `disk.raw` back; `qemu-img check` and `qemu-img compare` accept the qcow2. All are
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
