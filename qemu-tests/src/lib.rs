//! Shared setup for the QEMU tests: build each test image once with the real `cairn`
//! binary (a later test binary finds it built from the same inputs and uses it), and run
//! one VM at a time (the machine has two cores; a test with several VMs holds the one
//! slot for all of them).
//!
//! The test image is the default definition (`images/node.toml`) plus one overlay,
//! `qemu-tests/overlays/console-root`, that logs root in on the serial console so tests
//! can run commands there, built with `--dev` (zstd level 1: 2 s instead of 30–50 s per
//! image, and the update tests build four). Nothing else differs from what users build. Tests that need a
//! node config save one on a copy of the disk's state partition
//! ([`disk_with_saved_config`]), where `cairn-node apply` finds it as it will find the
//! config first boot saves.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

pub use cairn_vm::{self as vm, Accel, Medium, Vm, VmSpec};

/// How long a boot may take under TCG before a test gives up.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("qemu-tests sits in the workspace")
        .to_owned()
}

/// The release `cairn` binary (`CAIRN_BIN` overrides).
pub fn cairn_bin() -> PathBuf {
    let p = std::env::var_os("CAIRN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/cairn"));
    assert!(
        p.is_file() && p.with_file_name("cairn-node").is_file() && p.with_file_name("cairn-keyserver").is_file(),
        "{} (and cairn-node and cairn-keyserver beside it) missing: run `cargo build --release` first (./test.sh does)",
        p.display()
    );
    p
}

/// The built test image directory (disk.raw, manifest.json, update.cairn, live.iso):
/// version 0.1.0.
pub fn test_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| build_image("node", &["--format", "iso"]))
}

/// Build the default definition with the console overlay plus `extra` arguments into
/// `target/qemu-tests/<name>` with the real `cairn` (same signing key as the test image).
/// A test binary after the first finds the image built (the same [`inputs_stamp`]) and
/// uses it as it is.
pub fn build_image(name: &str, extra: &[&str]) -> PathBuf {
    let out = workspace().join("target/qemu-tests").join(name);
    let ws = workspace();
    let stamp_file = out.join(".qemu-tests-inputs");
    let stamp = inputs_stamp(extra);
    if std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str())
        && out.join("disk.raw").is_file()
        && out.join("manifest.json").is_file()
        && out.join("update.cairn").is_file()
    {
        eprintln!(
            "test image {name}: built before from the same inputs ({})",
            out.display()
        );
        return out;
    }
    let _ = std::fs::remove_file(&stamp_file);
    let status = Command::new(cairn_bin())
        .current_dir(&ws)
        .args([
            "build",
            "images/node.toml",
            "--overlay",
            "qemu-tests/overlays/console-root",
            "--dev",
        ])
        .args(extra)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("running cairn build");
    assert!(status.success(), "building the test image {name} failed");
    std::fs::write(&stamp_file, &stamp).expect("writing the test image's stamp");
    out
}

/// What a test image is built from, hashed: the `cairn` binaries (the builder, and the
/// agents it puts in the image), every file of the directories a build reads (the
/// definition and lock, overlays, units, rootfs scripts, kernel config, the tests'
/// overlays), the development key, the arguments and the environment a build reads.
pub fn inputs_stamp(extra: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    fn walk(h: &mut Sha256, base: &Path, dir: &Path) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            h.update(p.strip_prefix(base).unwrap_or(&p).to_string_lossy().as_bytes());
            h.update([0]);
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                h.update(
                    std::fs::read_link(&p)
                        .map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
            } else if meta.is_dir() {
                walk(h, base, &p);
            } else {
                h.update(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()).to_le_bytes());
                h.update(std::fs::read(&p).unwrap_or_default());
            }
            h.update([0]);
        }
    }
    let ws = workspace();
    let mut h = Sha256::new();
    let bin = cairn_bin();
    for b in ["cairn", "cairn-node", "cairn-keyserver"] {
        h.update(std::fs::read(bin.with_file_name(b)).unwrap_or_default());
    }
    for d in [
        "images",
        "overlays",
        "units",
        "rootfs",
        "kernel-config",
        "qemu-tests/overlays",
    ] {
        walk(&mut h, &ws, &ws.join(d));
    }
    h.update(std::fs::read(cairn_mkimage::build::dev_key_path()).unwrap_or_default());
    for a in extra {
        h.update(a.as_bytes());
        h.update([0]);
    }
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| (k.starts_with("CAIRN_") && k != "CAIRN_TEST_ECHO") || k == "SOURCE_DATE_EPOCH")
        .collect();
    env.sort();
    for (k, v) in env {
        h.update(format!("{k}={v}\0").as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The manifest of the test image.
pub fn manifest() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(test_image().join("manifest.json")).expect("manifest")).expect("json")
}

/// How many single-VM tests run at once: two one-vCPU VMs on a two-core machine boot more
/// per minute than one two-vCPU VM at a time (measured: 41 s per boot against 59.5 s).
/// `CAIRN_TEST_VMS` changes it.
pub fn vm_slots() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("CAIRN_TEST_VMS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(2)
    })
}

static SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// Slots taken from the machine's VM budget ([`vm_slots`]); given back when dropped.
#[must_use = "the slots are given back when this is dropped"]
pub struct VmSlot(usize);

impl Drop for VmSlot {
    fn drop(&mut self) {
        let (taken, freed) = &SLOTS;
        *taken.lock().unwrap_or_else(|e| e.into_inner()) -= self.0;
        freed.notify_all();
    }
}

fn take_slots(n: usize) -> VmSlot {
    let n = n.min(vm_slots());
    let (taken, freed) = &SLOTS;
    let mut t = taken.lock().unwrap_or_else(|e| e.into_inner());
    while *t + n > vm_slots() {
        t = freed.wait(t).unwrap_or_else(|e| e.into_inner());
    }
    *t += n;
    VmSlot(n)
}

/// One VM's place: held while a test's VM runs, so at most [`vm_slots`] run at once.
pub fn vm_slot() -> VmSlot {
    take_slots(1)
}

/// The whole machine: for a test whose VMs must not share it (a cluster of 1-vCPU guests
/// on two cores). A test holding it leaves the other test thread idle, so use it sparingly.
pub fn whole_machine() -> VmSlot {
    take_slots(usize::MAX)
}

/// How tests boot `disk`: 2 GiB, one CPU (see [`vm_slots`]), console captured (echoed with
/// `CAIRN_TEST_ECHO=1`), on a throwaway overlay.
pub fn spec(disk: &Path) -> VmSpec {
    VmSpec {
        disk: disk.to_owned(),
        config_drive: None,
        memory_mib: 2048,
        cpus: 1,
        ssh_port: None,
        accel: Accel::Auto,
        echo: std::env::var_os("CAIRN_TEST_ECHO").is_some(),
        writable: false,
        medium: Medium::Disk,
        lan: None,
        label: None,
    }
}

/// Start a VM on `disk` with the console captured (not echoed).
pub fn boot(disk: &Path) -> Vm {
    Vm::start(&spec(disk)).expect("starting QEMU")
}

/// Wait for the ready line after console line `from` (0: the first boot), which must
/// contain `expect` (e.g. `"version=0.1.0 slot=a boot="`), then for the root shell on the
/// console, and make its output plain. Returns the ready line's index.
pub fn ready_shell(vm: &mut Vm, from: usize, expect: &str) -> usize {
    let ready = vm
        .wait_for_line_from(from, "cairn: ready ", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let line = vm.lines()[ready].1.clone();
    assert!(
        line.contains(&format!("cairn: ready {expect}")),
        "expected `cairn: ready {expect}`: {line}"
    );
    // The autologin prompt may come before or after the ready line.
    vm.wait_for_from(from, "root@", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    run_ok(vm, "export SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 TERM=dumb");
    ready
}

/// How long one command on the serial console may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// Run `cmd` on the VM's root console; it must succeed. Returns its output.
pub fn run_ok(vm: &mut Vm, cmd: &str) -> String {
    let (out, code) = vm.run(cmd, COMMAND_TIMEOUT).unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert_eq!(code, 0, "`{cmd}` failed:\n{out}");
    out
}

/// Run `cmd` on the VM's root console; it must fail. Returns its output.
pub fn run_fails(vm: &mut Vm, cmd: &str) -> String {
    let (out, code) = vm.run(cmd, COMMAND_TIMEOUT).unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert_ne!(code, 0, "`{cmd}` should fail:\n{out}");
    out
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a port")
        .port()
}

/// Run `cmd` on `vm` over SSH (port `port`) as root with `key`; returns (stdout+stderr,
/// success). Call it after the ready line: `cairn-ready.service` is ordered after sshd
/// (Type=notify), so sshd is listening by then. When ssh cannot even reach sshd (exit
/// status 255 without a refused key), what the guest says about its network and sshd —
/// asked on the serial console — is appended: a node that cannot be logged into is a bug
/// to see, not to wait out. (Two CI failures of this kind were a node whose host keys a
/// power loss had emptied; `cairn-node ssh-hostkeys` mends those now.)
pub fn ssh(vm: &mut Vm, port: u16, key: &Path, cmd: &str) -> (String, bool) {
    let out = ssh_command(port, key).arg(cmd).output().expect("running ssh");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.code() == Some(255) && !text.contains("Permission denied") {
        let (seen, _) = vm
            .run(SSH_DIAGNOSIS, Duration::from_secs(120))
            .unwrap_or_else(|e| (format!("(console: {e})"), -1));
        text.push_str(&format!(
            "\n(ssh could not reach sshd {:.1?} into the boot; the guest says:)\n{seen}",
            vm.elapsed()
        ));
    }
    (text, out.status.success())
}

/// `ssh` as root to the guest whose SSH is forwarded to 127.0.0.1:`port`, with `key` only
/// and no host key checks (every test node is new); the caller adds the command or `-N`.
pub fn ssh_command(port: u16, key: &Path) -> Command {
    let mut c = Command::new("ssh");
    c.args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .args(["-o", "ConnectTimeout=20", "-o", "IdentitiesOnly=yes"])
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string(), "root@127.0.0.1"]);
    c
}

/// What a test prints about the guest when SSH cannot reach it.
const SSH_DIAGNOSIS: &str = "uptime; ip -br addr; ss -tlnp; systemctl is-active ssh.service systemd-networkd.service; \
     ls -l /var/lib/cairn/ssh; journalctl -b --no-pager -o short-monotonic -u ssh -u cairn-ssh-hostkeys -u systemd-networkd | tail -40";

/// A new ed25519 key pair in `dir`; returns the private key's path and the public line.
pub fn ssh_keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .expect("running ssh-keygen");
    assert!(st.success(), "ssh-keygen failed");
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    (key, public.trim().to_string())
}

/// Write a node config drive with the real `cairn config-drive`.
pub fn config_drive(dir: &Path, name: &str, node_toml: &str) -> PathBuf {
    let src = dir.join(format!("{name}.toml"));
    std::fs::write(&src, node_toml).expect("writing node.toml");
    let out = dir.join(format!("{name}.img"));
    let o = Command::new(cairn_bin())
        .arg("config-drive")
        .arg(&src)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running cairn config-drive");
    assert!(
        o.status.success(),
        "cairn config-drive: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The test image's disk written into a fresh temporary directory by `cairn flash` (its
/// signature checked with the development key the test images are signed with, every
/// range read back), so every VM boots what a user's flash wrote.
pub fn copy_disk(tag: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("cairn-qemu-{tag}-"))
        .tempdir()
        .expect("temp dir");
    let disk = dir.path().join("disk.raw");
    let out = Command::new(cairn_bin())
        .arg("flash")
        .arg(test_image())
        .arg(&disk)
        .output()
        .expect("running cairn flash");
    assert!(
        out.status.success(),
        "cairn flash of the test image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir, disk)
}

/// A copy of the test disk whose state partition holds `node_toml` as the saved node
/// config (`/var/lib/cairn/node.toml`), written with e2fsprogs' debugfs.
pub fn disk_with_saved_config(tag: &str, node_toml: &str) -> (tempfile::TempDir, PathBuf) {
    let (dir, disk) = copy_disk(tag);
    let state = partition_offset("state");
    let file = dir.path().join("node.toml");
    std::fs::write(&file, node_toml).expect("writing node.toml");
    let script = format!(
        "mkdir lib\nmkdir lib/cairn\nwrite {} lib/cairn/node.toml\n",
        file.display()
    );
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg("-")
        .arg(format!("{}?offset={state}", disk.display()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(script.as_bytes())?;
            c.wait_with_output()
        })
        .expect("running debugfs");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !text.contains("rror"), "debugfs: {text}");
    (dir, disk)
}

/// Where the partition labelled `label` starts in the test image's disk, in bytes.
pub fn partition_offset(label: &str) -> u64 {
    manifest()["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .find(|p| p["label"] == label)
        .unwrap_or_else(|| panic!("no partition labelled {label}"))["offset"]
        .as_u64()
        .expect("offset")
}

/// The UKIs in `EFI/Linux` on a (stopped) node's ESP, read with mtools.
pub fn esp_on_disk(disk: &Path) -> Vec<String> {
    let out = Command::new("mdir")
        .arg("-b")
        .arg("-i")
        .arg(format!("{}@@{}", disk.display(), partition_offset("esp")))
        .arg("::/EFI/Linux")
        .output()
        .expect("running mdir");
    assert!(out.status.success(), "mdir: {}", String::from_utf8_lossy(&out.stderr));
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// A file on a (stopped) node's state partition (`/var`), read with e2fsprogs' debugfs;
/// `path` is relative to `/var`.
pub fn state_file(disk: &Path, path: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat /{path}"))
        .arg(format!("{}?offset={}", disk.display(), partition_offset("state")))
        .output()
        .expect("running debugfs");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("not found"),
        "debugfs cat /{path}: {text}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `python3 -m http.server` serving `dir` on 127.0.0.1 (the guest reaches it as
/// 10.0.2.2 through QEMU's user network); stopped when dropped.
pub struct HttpServer {
    child: std::process::Child,
    /// The port.
    pub port: u16,
}

impl HttpServer {
    /// Serve `dir` and wait until the port answers.
    pub fn start(dir: &Path) -> HttpServer {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting python3 -m http.server");
        let server = HttpServer { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("python3 -m http.server did not listen on {port}");
    }

    /// The URL of `file` as the guest sees it.
    pub fn guest_url(&self, file: &str) -> String {
        format!("http://10.0.2.2:{}/{file}", self.port)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cairn keyserver serve`, stopped when dropped.
pub struct Keyserver(std::process::Child);

impl Drop for Keyserver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run the real `cairn` with `args`; it must succeed. Returns its stdout.
pub fn cairn(args: &[&str]) -> String {
    let o = Command::new(cairn_bin()).args(args).output().expect("running cairn");
    assert!(
        o.status.success(),
        "cairn {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `cairn keyserver serve STATE` on 127.0.0.1:`port` (10.0.2.2 from the guests, the name
/// its certificate carries), its log in `log`; returns once it listens.
pub fn serve(state: &Path, port: u16, log: &Path) -> Keyserver {
    let child = Command::new(cairn_bin())
        .args(["keyserver", "serve"])
        .arg(state)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--name", "10.0.2.2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("cairn keyserver serve");
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the keyserver did not listen"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Keyserver(child)
}

/// 0.2.0: the test image with a note file added (`/etc/cairn/release-note`), so its root
/// differs in more than os-release.
pub fn v2_image() -> &'static Path {
    static V: OnceLock<PathBuf> = OnceLock::new();
    V.get_or_init(|| {
        build_image(
            "node-0.2.0",
            &["--image-version", "0.2.0", "--overlay", "qemu-tests/overlays/v2-note"],
        )
    })
}

/// `cairn publish` of build output `out` into `to`, with the key the test images are
/// signed with.
pub fn publish(out: &Path, to: &Path) {
    let key = cairn_mkimage::build::dev_key_path();
    let o = Command::new(cairn_bin())
        .arg("publish")
        .arg(out)
        .arg("--to")
        .arg(to)
        .arg("--key")
        .arg(&key)
        .arg("--allow-development")
        .output()
        .expect("running cairn publish");
    assert!(
        o.status.success(),
        "cairn publish: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Cairn's families from the guest's node-exporter (:9100), after writing them afresh;
/// when that fails, what systemd says about both services fails the test.
pub fn cairn_metrics(vm: &mut Vm) -> String {
    let scraped = run_ok(
        vm,
        "{ systemctl start cairn-metrics.service && exec 3<>/dev/tcp/127.0.0.1/9100 && \
         printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && grep -a 'cairn_' <&3; } || \
         { systemctl status --no-pager cairn-metrics.service prometheus-node-exporter.service | tail -30; \
           journalctl -u prometheus-node-exporter.service --no-pager | tail -12; false; }",
    );
    scraped
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.starts_with("cairn_") || l.starts_with("# HELP cairn_") || l.starts_with("# TYPE cairn_"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Prometheus' `promtool check metrics` finds `text` clean: no error, no lint warning.
pub fn promtool_check(text: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    std::io::Write::write_all(&mut p.stdin.take().expect("stdin"), text.as_bytes()).expect("writing to promtool");
    let out = p.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}\n{text}"
    );
}
