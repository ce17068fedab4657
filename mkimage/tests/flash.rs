//! `cairn flash` on the fixture image: to files (the result `cmp`-identical to `disk.raw`,
//! from `disk.raw` and from `disk.raw.zst`), to loop devices where `losetup` works (the
//! written range identical, `sfdisk` reads the table, a damaged image leaves the disk with
//! no partition table), and every refusal: a bad signature or key, a damaged image, a
//! directory, a character device, a FIFO, a missing device, a partition, a mounted or
//! swapped-on disk (through the mountinfo and swaps seam), the disk holding the real `/`,
//! a read-only, a too small disk, and no confirmation without a terminal. From web
//! servers: busybox httpd (answers Range requests) and Python's http.server (does not):
//! `disk.raw.zst` streamed, `disk.raw` by ranges and whole, and every bad answer refused
//! with nothing written.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cairn_mkimage::flash::{self, Host, Target};
use common::*;

fn flash_cmd(args: &[&str]) -> Output {
    cairn().arg("flash").args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn flip(file: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let fd = fs::OpenOptions::new().read(true).write(true).open(file).unwrap();
    let mut b = [0u8; 1];
    fd.read_exact_at(&mut b, at).unwrap();
    fd.write_all_at(&[b[0] ^ 0x01], at).unwrap();
}

/// The fixture built with `disk.raw.zst` too.
fn built() -> (Fixture, PathBuf, String) {
    let f = Fixture::new();
    f.write_definition("\n[output]\nformats = [\"raw.zst\"]\n");
    let out = f.build_ok("out");
    let key = f.path("release.pub").display().to_string();
    (f, out, key)
}

/// No file a flash writes beside its target is left in `dir`.
fn no_temporary_files(dir: &Path) {
    let left: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("cairn-flash"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn same_bytes(a: &Path, b: &Path, len: u64) -> bool {
    Command::new("cmp")
        .arg("-n")
        .arg(len.to_string())
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

#[test]
fn to_files_from_raw_and_zst() {
    let (f, out, key) = built();
    let disk = out.join("disk.raw");
    let size = fs::metadata(&disk).unwrap().len();
    let dir = out.display().to_string();

    // A dry run writes nothing.
    let target = f.path("copy.raw");
    let o = flash_cmd(&[&dir, target.to_str().unwrap(), "--key", &key, "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("dry run: nothing written") && !target.exists(),
        "{}",
        text(&o)
    );

    // From the directory (disk.raw) and from disk.raw.zst: the same bytes, a sparse file.
    for (source, name) in [
        (dir.clone(), "copy.raw"),
        (out.join("disk.raw.zst").display().to_string(), "from-zst.raw"),
    ] {
        let target = f.path(name);
        let o = flash_cmd(&[&source, target.to_str().unwrap(), "--key", &key]);
        assert!(o.status.success(), "{source}: {}", text(&o));
        assert!(text(&o).contains("read back past the page cache"), "{}", text(&o));
        assert_eq!(fs::metadata(&target).unwrap().len(), size);
        assert!(same_bytes(&disk, &target, size), "{source}: differs from disk.raw");
        use std::os::unix::fs::MetadataExt;
        let m = manifest(&out);
        let data: u64 = m["disk"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["size"].as_u64().unwrap())
            .sum();
        assert!(
            fs::metadata(&target).unwrap().blocks() * 512 < data + (4 << 20),
            "{name} is not sparse"
        );
    }
    // Two flashes into one file at once: each writes its own file beside it and renames
    // it, so the file is whole either way and no temporary file stays.
    let both = f.path("both.raw");
    let runs: Vec<_> = (0..2)
        .map(|_| {
            cairn()
                .args(["flash", &dir, both.to_str().unwrap(), "--key", &key])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut r in runs {
        assert!(r.wait().unwrap().success());
    }
    assert!(same_bytes(&disk, &both, size));
    // Over an existing file: replaced whole. The image itself: refused.
    fs::write(f.path("old.raw"), vec![0x55; 4096]).unwrap();
    let o = flash_cmd(&[&dir, f.path("old.raw").to_str().unwrap(), "--key", &key]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(same_bytes(&disk, &f.path("old.raw"), size));
    let o = flash_cmd(&[&dir, disk.to_str().unwrap(), "--key", &key]);
    assert!(
        !o.status.success() && text(&o).contains("is the image itself"),
        "{}",
        text(&o)
    );

    // Another key, a changed manifest, no manifest: refused before anything is written.
    run_ok(cairn().arg("keygen").arg(f.path("other.pem")));
    let t = f.path("never.raw");
    let o = flash_cmd(&[
        &dir,
        t.to_str().unwrap(),
        "--key",
        f.path("other.pub").to_str().unwrap(),
    ]);
    assert!(!o.status.success() && text(&o).contains("signature"), "{}", text(&o));
    flip(&out.join("manifest.json"), 30);
    let o = flash_cmd(&[&dir, t.to_str().unwrap(), "--key", &key]);
    assert!(!o.status.success() && text(&o).contains("signature"), "{}", text(&o));
    flip(&out.join("manifest.json"), 30);
    let lone = f.path("lone");
    fs::create_dir(&lone).unwrap();
    fs::copy(&disk, lone.join("disk.raw")).unwrap();
    let o = flash_cmd(&[
        lone.join("disk.raw").to_str().unwrap(),
        t.to_str().unwrap(),
        "--key",
        &key,
    ]);
    assert!(
        !o.status.success() && text(&o).contains("manifest.json"),
        "{}",
        text(&o)
    );
    assert!(!t.exists());

    // A damaged image: stopped at the damaged range; no file, no temporary file left.
    let (r_off, r_len) = payload(&manifest(&out), "root");
    flip(&disk, r_off + r_len / 3);
    let o = flash_cmd(&[&dir, t.to_str().unwrap(), "--key", &key]);
    assert!(
        !o.status.success() && text(&o).contains("does not match its signed manifest in data range"),
        "{}",
        text(&o)
    );
    flip(&disk, r_off + r_len / 3);
    assert!(!t.exists());
    no_temporary_files(f.dir.path());
}

#[test]
fn targets_that_are_not_disks_or_files_are_refused() {
    let (f, out, key) = built();
    let dir = out.display().to_string();
    fs::create_dir(f.path("a-dir")).unwrap();
    run_ok(Command::new("mkfifo").arg(f.path("a-fifo")));
    for (target, says) in [
        (f.path("a-dir").display().to_string(), "is a directory"),
        (f.path("a-fifo").display().to_string(), "is a FIFO"),
        ("/dev/null".to_string(), "is a character device"),
        ("/dev/cairn-no-such-disk".to_string(), "no such device"),
    ] {
        let o = flash_cmd(&[&dir, &target, "--key", &key]);
        assert!(!o.status.success() && text(&o).contains(says), "{target}: {}", text(&o));
    }
    assert!(fs::symlink_metadata("/dev/cairn-no-such-disk").is_err());
}

#[test]
fn the_disk_holding_the_running_root_is_refused() {
    // Whatever holds / here (a whole disk, a partition's disk), found the way cairn does.
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let source = info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let dash = f.iter().position(|x| *x == "-")?;
        (f[4] == "/").then(|| f[dash + 2].to_string())
    });
    let Some(source) = source.filter(|s| s.starts_with("/dev/")) else {
        eprintln!("skipping: / is not on a block device here");
        return;
    };
    let (_f, out, key) = built();
    // The root's own device (a partition is refused as one, a whole disk as the system's),
    // and its disk through sysfs.
    let o = flash_cmd(&[out.to_str().unwrap(), &source, "--key", &key, "--dry-run"]);
    let said = text(&o);
    assert!(!o.status.success(), "{said}");
    assert!(
        said.contains("holds / of the running system") || said.contains("is partition"),
        "{said}"
    );
    if said.contains("is partition") {
        let disk = said.split("hint: flash ").nth(1).unwrap().trim().to_string();
        let o = flash_cmd(&[out.to_str().unwrap(), &disk, "--key", &key, "--dry-run"]);
        assert!(
            !o.status.success() && text(&o).contains("holds / of the running system"),
            "{}",
            text(&o)
        );
    }
}

/// A loop device over a sparse file of `size` bytes, detached when dropped.
struct Loop {
    dev: String,
    _dir: tempfile::TempDir,
}

impl Loop {
    fn new(size: u64, read_only: bool) -> Option<Loop> {
        let dir = tempfile::tempdir().unwrap();
        let back = dir.path().join("back.img");
        fs::File::create(&back).unwrap().set_len(size).unwrap();
        let mut c = Command::new("losetup");
        c.args(["-f", "--show"]);
        if read_only {
            c.arg("-r");
        }
        let o = c.arg(&back).output().ok()?;
        if !o.status.success() {
            eprintln!("skipping: losetup: {}", String::from_utf8_lossy(&o.stderr).trim());
            return None;
        }
        Some(Loop {
            dev: String::from_utf8_lossy(&o.stdout).trim().to_string(),
            _dir: dir,
        })
    }

    fn devno(&self) -> String {
        fs::read_to_string(format!("/sys/class/block/{}/dev", self.name()))
            .unwrap()
            .trim()
            .to_string()
    }

    fn name(&self) -> &str {
        self.dev.trim_start_matches("/dev/")
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        for (tool, arg) in [("partx", "-d"), ("losetup", "-d")] {
            let _ = Command::new(tool)
                .arg(arg)
                .arg(&self.dev)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn first_mib_is_zero(dev: &str) -> bool {
    let mut b = vec![0u8; 1 << 20];
    use std::io::Read;
    fs::File::open(dev).unwrap().read_exact(&mut b).unwrap();
    b.iter().all(|x| *x == 0)
}

#[test]
fn to_loop_devices_and_what_is_refused_there() {
    if skip_without_root("loop devices need root") {
        return;
    }
    let (f, out, key) = built();
    let dir = out.display().to_string();
    let disk = out.join("disk.raw");
    let size = fs::metadata(&disk).unwrap().len();
    let Some(lo) = Loop::new(size + (8 << 20), false) else {
        return;
    };

    // Without a terminal and without --yes: nothing is written.
    let o = cairn()
        .args(["flash", &dir, &lo.dev, "--key", &key])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success() && text(&o).contains("pass --yes"), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("to       {} ({}", lo.dev, lo.name())),
        "{}",
        text(&o)
    );

    // Written: the image's bytes, a partition table sfdisk reads.
    let o = flash_cmd(&[&dir, &lo.dev, "--key", &key, "--yes"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        same_bytes(&disk, Path::new(&lo.dev), size),
        "the loop device differs from disk.raw"
    );
    let table = run_ok(Command::new("sfdisk").arg("-d").arg(&lo.dev));
    assert!(
        table.contains("label: gpt") && table.contains("name=\"root-a\""),
        "{table}"
    );

    // Its partition is refused as one (the kernel here may not scan GPTs: partx adds them,
    // and a device node of our own stands for it).
    let _ = Command::new("partx").arg("-a").arg(&lo.dev).status();
    let p2 = format!("/sys/class/block/{}/{}p2/dev", lo.name(), lo.name());
    match fs::read_to_string(&p2) {
        Err(e) => eprintln!("skipping the partition cases: {p2}: {e}"),
        Ok(devno) => {
            let (maj, min) = devno.trim().split_once(':').unwrap();
            let node = f.path("part2");
            run_ok(Command::new("mknod").arg(&node).args(["b", maj, min]));
            let o = flash_cmd(&[&dir, node.to_str().unwrap(), "--key", &key, "--dry-run"]);
            assert!(
                !o.status.success() && text(&o).contains(&format!("is partition {}p2 of {}", lo.name(), lo.name())),
                "{}",
                text(&o)
            );
            // Mounted, as far as the mountinfo seam says: the disk and its partition.
            let m = f.path("mountinfo");
            fs::write(
                &m,
                format!(
                    "22 1 254:0 / / rw - ext4 /dev/vda rw\n36 22 {} / /mnt/usb\\040stick rw - vfat /dev/{}p2 rw\n",
                    devno.trim(),
                    lo.name()
                ),
            )
            .unwrap();
            let host = Host {
                mountinfo: m.clone(),
                swaps: "/proc/swaps".into(),
                sys_dev_block: "/sys/dev/block".into(),
            };
            let err = flash::target::inspect(&host, Path::new(&lo.dev), size)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("{}p2 is mounted on /mnt/usb stick", lo.name())),
                "{err}"
            );
        }
    }
    // The whole disk mounted, or as the running root, or swapped on (the swaps seam).
    let m = f.path("mountinfo-root");
    fs::write(&m, format!("22 1 {} / / rw - ext4 {} rw\n", lo.devno(), lo.dev)).unwrap();
    let swaps = f.path("swaps");
    fs::write(
        &swaps,
        format!(
            "Filename\tType\tSize\tUsed\tPriority\n{}\tpartition\t1024\t0\t-2\n",
            lo.dev
        ),
    )
    .unwrap();
    let empty = f.path("empty");
    fs::write(&empty, "").unwrap();
    let host = |mountinfo: &Path, swaps: &Path| Host {
        mountinfo: mountinfo.to_owned(),
        swaps: swaps.to_owned(),
        sys_dev_block: "/sys/dev/block".into(),
    };
    let err = flash::target::inspect(&host(&m, &empty), Path::new(&lo.dev), size)
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds / of the running system"), "{err}");
    let err = flash::target::inspect(&host(&empty, &swaps), Path::new(&lo.dev), size)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{} is swap", lo.dev)), "{err}");
    // Nothing uses it: a disk, described.
    match flash::target::inspect(&host(&empty, &empty), Path::new(&lo.dev), size).unwrap() {
        Target::Disk(d) => assert_eq!((d.size, d.sector), (size + (8 << 20), 512)),
        t => panic!("{t:?}"),
    }
    // Too small by a sector.
    let err = flash::target::inspect(&host(&empty, &empty), Path::new(&lo.dev), size + (8 << 20) + 512)
        .unwrap_err()
        .to_string();
    assert!(err.contains("the image needs"), "{err}");

    // A damaged image stops the write, and the disk is left with no partition table.
    let (r_off, r_len) = payload(&manifest(&out), "root");
    flip(&disk, r_off + r_len - 100);
    let o = flash_cmd(&[&dir, &lo.dev, "--key", &key, "--yes"]);
    flip(&disk, r_off + r_len - 100);
    assert!(
        !o.status.success() && text(&o).contains("its partition table was wiped"),
        "{}",
        text(&o)
    );
    assert!(first_mib_is_zero(&lo.dev), "a partition table is left");
    let o = Command::new("sfdisk").arg("-d").arg(&lo.dev).output().unwrap();
    assert!(!String::from_utf8_lossy(&o.stdout).contains("root-a"), "{}", text(&o));

    // Read-only and too small, as the kernel reports them.
    if let Some(ro) = Loop::new(size + (8 << 20), true) {
        let o = flash_cmd(&[&dir, &ro.dev, "--key", &key, "--yes"]);
        assert!(!o.status.success() && text(&o).contains("is read-only"), "{}", text(&o));
    }
    if let Some(small) = Loop::new(size - (1 << 20), false) {
        let o = flash_cmd(&[&dir, &small.dev, "--key", &key, "--yes"]);
        assert!(
            !o.status.success() && text(&o).contains("the image needs"),
            "{}",
            text(&o)
        );
    }
}

/// A free TCP port on the loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A web server for a directory, stopped when dropped.
struct Server {
    child: std::process::Child,
    port: u16,
}

impl Server {
    /// busybox httpd (answers Range requests) or, with `ranges` false, Python's
    /// http.server (answers every GET with the whole file).
    fn start(dir: &Path, ranges: bool) -> Server {
        let port = free_port();
        let mut c = if ranges {
            let mut c = Command::new("busybox");
            c.args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
                .arg(dir);
            c
        } else {
            let mut c = Command::new("python3");
            c.args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir);
            c
        };
        let child = c
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Dropped (killed and waited for) however this ends.
        let server = Server { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the web server on port {port} did not start");
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn from_web_servers_with_and_without_ranges() {
    require(&["busybox", "python3", "zstd", "cmp"]);
    let (f, out, key) = built();
    let disk = out.join("disk.raw");
    let size = fs::metadata(&disk).unwrap().len();
    // A directory without the compressed image, and damaged copies.
    let plain = f.path("www/plain");
    let bad = f.path("www/bad");
    let odd = f.path("www/odd");
    for d in [&plain, &bad, &odd] {
        fs::create_dir_all(d).unwrap();
    }
    for name in ["disk.raw", "manifest.json", "manifest.json.sig"] {
        run_ok(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(out.join(name))
                .arg(plain.join(name)),
        );
        run_ok(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(out.join(name))
                .arg(bad.join(name)),
        );
    }
    let (r_off, r_len) = payload(&manifest(&out), "root");
    flip(&bad.join("disk.raw"), r_off + r_len / 2);
    let zst = fs::read(out.join("disk.raw.zst")).unwrap();
    fs::write(bad.join("disk.raw.zst"), &zst[..zst.len() / 2]).unwrap();
    // A "manifest" far larger than any manifest, and a signature that is not one.
    let huge = fs::File::create(odd.join("manifest.json")).unwrap();
    huge.set_len(64 << 20).unwrap();
    fs::write(odd.join("manifest.json.sig"), b"x").unwrap();
    fs::create_dir_all(f.path("www/out")).unwrap();
    let served = f.path("www");
    run_ok(
        Command::new("cp")
            .args(["-a", "--sparse=always"])
            .arg(&out)
            .arg(served.join("build")),
    );
    let busybox = Server::start(&served, true);
    let python = Server::start(&served, false);

    let good = |url: &str, name: &str, says: &str| {
        let target = f.path(name);
        let o = flash_cmd(&[url, target.to_str().unwrap(), "--key", &key]);
        assert!(o.status.success(), "{url}: {}", text(&o));
        assert!(text(&o).contains(says), "{url}: {}", text(&o));
        assert!(same_bytes(&disk, &target, size), "{url}: differs from disk.raw");
        assert_eq!(fs::metadata(&target).unwrap().len(), size);
    };
    // A directory with disk.raw.zst: streamed through zstd.
    good(&busybox.url("build/"), "a.raw", "downloaded as a zstd stream");
    good(&busybox.url("build"), "b.raw", "downloaded as a zstd stream");
    // disk.raw by Range requests; from a server without them, whole and in order.
    good(&busybox.url("build/disk.raw"), "c.raw", "by HTTP Range requests");
    good(&busybox.url("plain/"), "d.raw", "by HTTP Range requests");
    good(
        &python.url("plain/disk.raw"),
        "e.raw",
        "the server ignores HTTP Range requests",
    );
    good(
        &python.url("build/disk.raw.zst"),
        "f.raw",
        "downloaded as a zstd stream",
    );

    // Refused with nothing written: another key, no manifest, a huge one, a damaged
    // image by ranges and by stream, a cut-off download, a URL with a newline.
    let t = f.path("never.raw");
    let refused = |url: &str, key: &str, says: &str| {
        let o = flash_cmd(&[url, t.to_str().unwrap(), "--key", key]);
        assert!(!o.status.success(), "{url}: {}", text(&o));
        assert!(text(&o).contains(says), "{url}: wanted {says:?} in {}", text(&o));
        assert!(!t.exists(), "{url}: left {}", t.display());
    };
    run_ok(cairn().arg("keygen").arg(f.path("other.pem")));
    let other = f.path("other.pub").display().to_string();
    refused(&busybox.url("build/"), &other, "signature");
    refused(&busybox.url("out/"), &key, "HTTP 404");
    refused(
        &busybox.url("nowhere/disk.raw"),
        &key,
        "hint: serve the build directory's manifest.json",
    );
    refused(&busybox.url("odd/"), &key, "larger than");
    refused(&busybox.url("bad/disk.raw"), &key, "does not match its signed manifest");
    refused(&python.url("bad/disk.raw"), &key, "does not match its signed manifest");
    refused(&busybox.url("bad/disk.raw.zst"), &key, "reading the image");
    refused(&format!("{}\n", busybox.url("build/")), &key, "not an image location");
    no_temporary_files(f.dir.path());
}

#[test]
fn the_live_iso_by_its_signed_outputs_list_from_here_and_from_a_web_server() {
    require(&["busybox", "xorriso", "cmp"]);
    let f = Fixture::new();
    f.write_definition("\n[output]\nformats = [\"iso\"]\n");
    let out = f.build_ok("out");
    let key = f.path("release.pub").display().to_string();
    let iso = out.join("live.iso");
    let size = fs::metadata(&iso).unwrap().len();

    // From here and from a web server (by a Range request): the ISO's bytes exactly.
    let target = f.path("stick.img");
    let o = flash_cmd(&[iso.to_str().unwrap(), target.to_str().unwrap(), "--key", &key]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("read back past the page cache"), "{}", text(&o));
    assert_eq!(fs::metadata(&target).unwrap().len(), size);
    assert!(same_bytes(&iso, &target, size), "differs from live.iso");
    let served = f.path("www");
    run_ok(
        Command::new("cp")
            .args(["-a", "--sparse=always"])
            .arg(&out)
            .arg(&served),
    );
    let server = Server::start(&served, true);
    let from_web = f.path("web.img");
    let o = flash_cmd(&[&server.url("live.iso"), from_web.to_str().unwrap(), "--key", &key]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(same_bytes(&iso, &from_web, size), "differs from live.iso");

    // Refused with nothing written: a damaged ISO, a list from another build, no list, an
    // ISO the list does not name, another key.
    let t = f.path("never.img");
    let refused = |image: &str, key: &str, says: &str| {
        let o = flash_cmd(&[image, t.to_str().unwrap(), "--key", key]);
        assert!(!o.status.success(), "{image}: {}", text(&o));
        assert!(text(&o).contains(says), "{image}: wanted {says:?} in {}", text(&o));
        assert!(!t.exists(), "{image}: left {}", t.display());
    };
    flip(&iso, size / 2);
    refused(iso.to_str().unwrap(), &key, "does not match its signed manifest");
    flip(&iso, size / 2);
    fs::copy(&iso, served.join("other.iso")).unwrap();
    refused(&server.url("other.iso"), &key, "lists no ISO named other.iso");
    fs::copy(&iso, out.join("copy.iso")).unwrap();
    refused(
        out.join("copy.iso").to_str().unwrap(),
        &key,
        "lists no ISO named copy.iso",
    );
    run_ok(cairn().arg("keygen").arg(f.path("other.pem")));
    refused(
        iso.to_str().unwrap(),
        f.path("other.pub").to_str().unwrap(),
        "signature",
    );
    // The list of another build of the same image (another version): not this manifest's.
    let list = fs::read(out.join("outputs.json")).unwrap();
    let sig = fs::read(out.join("outputs.json.sig")).unwrap();
    let text_def = fs::read_to_string(f.path("image.toml"))
        .unwrap()
        .replace("1.2.3", "1.2.4");
    fs::write(f.path("image.toml"), text_def).unwrap();
    let other = f.build_ok("other");
    fs::copy(other.join("outputs.json"), out.join("outputs.json")).unwrap();
    fs::copy(other.join("outputs.json.sig"), out.join("outputs.json.sig")).unwrap();
    refused(iso.to_str().unwrap(), &key, "belongs to another build");
    fs::remove_file(out.join("outputs.json")).unwrap();
    refused(
        iso.to_str().unwrap(),
        &key,
        "keep outputs.json and outputs.json.sig beside the ISO",
    );
    fs::write(out.join("outputs.json"), list).unwrap();
    fs::write(out.join("outputs.json.sig"), sig).unwrap();
    no_temporary_files(f.dir.path());
}
