//! Booting a Cairn disk image under QEMU with real UEFI firmware (OVMF), for `cairn boot`
//! and the QEMU tests.
//!
//! The built image is never written: QEMU runs on a qcow2 copy-on-write overlay in a
//! temporary directory, with its own copy of the OVMF variable store. The machine is a
//! q35 with a virtio disk, user-mode networking with SSH forwarded to a host port, and
//! the serial console on a pipe read line by line ([`console`]), each line timestamped, so
//! callers wait on what the node prints (never on sleeps), the boot phases can be measured
//! from the console ([`phases`]), and tests can run shell commands on it ([`shell`]).
//!
//! Acceleration: `auto` tries KVM and falls back to TCG when KVM is missing or fails
//! (on hosts with broken nested virtualization QEMU prints "KVM internal error").

pub mod console;
pub mod phases;
pub mod shell;

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use console::Console;
pub use console::{strip_ansi, ConsoleInput};
pub use phases::{boot_phases, render_budget, BootPhases};
pub use shell::is_kernel_message;

/// OVMF firmware code (Debian package `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF variable store template.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Problems running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// QEMU or its firmware is not installed.
    #[error("missing {}\n  hint: apt-get install {}", .missing.join(", "), .packages.join(" "))]
    Missing {
        /// Commands or firmware files not found.
        missing: Vec<String>,
        /// Debian packages that provide them.
        packages: Vec<String>,
    },
    /// QEMU or `qemu-img` could not be run, or a file it needs could not be made.
    #[error("{op} {path}")]
    Io {
        /// What was being done ("starting", "copying", …).
        op: &'static str,
        /// The program or file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `qemu-img` could not make the copy-on-write overlay.
    #[error("qemu-img could not make an overlay of the disk ({0})")]
    Overlay(String),
    /// The awaited console output did not come.
    #[error("timed out after {secs:.0}s waiting for {waiting_for}; last console lines:\n{last}")]
    Timeout {
        /// What was awaited.
        waiting_for: String,
        /// Seconds waited.
        secs: f64,
        /// The console's last lines.
        last: String,
    },
    /// QEMU ended.
    #[error("QEMU exited ({status}) while waiting for {waiting_for}; last console lines:\n{last}")]
    Exited {
        /// Exit status.
        status: String,
        /// What was awaited.
        waiting_for: String,
        /// The console's last lines.
        last: String,
    },
}

/// CPU acceleration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Accel {
    /// KVM when it works, else TCG.
    Auto,
    /// Hardware virtualization.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// How the image is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Medium {
    /// A virtio disk.
    Disk,
    /// A read-only CD-ROM on the SATA controller (2048-byte sectors): `live.iso` as a CD.
    Cdrom,
    /// A USB mass-storage stick on an XHCI controller.
    Usb,
}

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The raw disk image (never modified unless `writable`).
    pub disk: PathBuf,
    /// Boot the disk itself, so what the node writes persists across boots (tests that
    /// reboot use a copy); otherwise a throwaway copy-on-write overlay takes the writes.
    /// A CD-ROM is never written.
    pub writable: bool,
    /// How `disk` is attached.
    pub medium: Medium,
    /// A second drive for the node's configuration, if any.
    pub config_drive: Option<PathBuf>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Host port forwarded to the guest's SSH port.
    pub ssh_port: Option<u16>,
    /// Acceleration.
    pub accel: Accel,
    /// Copy the console to this process's stdout as it comes.
    pub echo: bool,
    /// With `echo`: put this and `| ` before every echoed line (several VMs on one
    /// terminal).
    pub label: Option<String>,
    /// A second network card on a segment shared with other VMs, if any.
    pub lan: Option<Lan>,
}

/// A network segment VMs share without root or tap devices: QEMU's multicast socket
/// backend on the loopback interface (every VM with the same `port` is on the segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lan {
    /// UDP port of the segment's multicast group (230.0.0.1), one per segment.
    pub port: u16,
    /// This VM's MAC address on it (fixed, so node.toml can match the card by it).
    pub mac: String,
}

impl Lan {
    /// The card of VM number `n` (1-based, below 256) on segment `port`: MAC
    /// `52:54:00:77:00:<n>`.
    pub fn member(port: u16, n: u8) -> Lan {
        Lan {
            port,
            mac: format!("52:54:00:77:00:{n:02x}"),
        }
    }
}

/// A running VM.
pub struct Vm {
    child: Child,
    stdin_shared: Arc<Mutex<ChildStdin>>,
    console: Arc<(Mutex<Console>, Condvar)>,
    started: Instant,
    /// The acceleration actually in use.
    pub accel: Accel,
    _dir: tempfile::TempDir,
    /// The last marker number [`Vm::run`] used.
    pub(crate) marker: u32,
}

/// QEMU, `qemu-img` and OVMF, or one error naming every one that is missing.
fn require() -> Result<(), VmError> {
    let on_path = |tool: &str| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path).any(|d| d.join(tool).is_file())
    };
    let mut missing = Vec::new();
    let mut packages = Vec::new();
    for (tool, package) in [("qemu-system-x86_64", "qemu-system-x86"), ("qemu-img", "qemu-utils")] {
        if !on_path(tool) {
            missing.push(tool.to_string());
            packages.push(package.to_string());
        }
    }
    for f in [OVMF_CODE, OVMF_VARS] {
        if !Path::new(f).exists() {
            missing.push(f.to_string());
            packages.push("ovmf".to_string());
        }
    }
    packages.dedup();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(VmError::Missing { missing, packages })
    }
}

/// For `map_err`: an IO error about `op` on `path`.
pub(crate) fn io_err(op: &'static str, path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> VmError {
    let path = path.as_ref().to_owned();
    move |source| VmError::Io { op, path, source }
}

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

impl Vm {
    /// Start the VM. With [`Accel::Auto`], a KVM start that fails falls back to TCG.
    pub fn start(spec: &VmSpec) -> Result<Vm, VmError> {
        require()?;
        let first = match spec.accel {
            Accel::Auto if kvm_usable() => Accel::Kvm,
            Accel::Auto => Accel::Tcg,
            a => a,
        };
        let vm = Self::start_with(spec, first)?;
        if spec.accel == Accel::Auto && first == Accel::Kvm {
            // A broken KVM says so (or QEMU dies) within moments; working firmware
            // reaches its boot manager.
            let seen = |c: &Console, s: &str| c.partial.contains(s) || c.lines.iter().any(|l| l.1.contains(s));
            let broken = vm.wait_until(Duration::from_secs(8), |c| {
                c.closed || seen(c, "KVM internal error") || seen(c, "failed to initialize kvm") || seen(c, "BdsDxe")
            });
            if broken.is_some_and(|c| !seen(&c, "BdsDxe")) {
                drop(vm);
                return Self::start_with(spec, Accel::Tcg);
            }
        }
        Ok(vm)
    }

    /// Block until `done` holds for the console (re-checked on every new output and when
    /// QEMU's output closes), or `timeout` passes. Returns the console at that moment,
    /// `None` on timeout.
    fn wait_until(&self, timeout: Duration, done: impl Fn(&Console) -> bool) -> Option<Console> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.console;
        let mut c = lock.lock().expect("console lock");
        loop {
            if done(&c) {
                return Some(Console {
                    lines: c.lines.clone(),
                    partial: c.partial.clone(),
                    closed: c.closed,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            c = cv.wait_timeout(c, deadline - now).expect("console lock").0;
        }
    }

    fn start_with(spec: &VmSpec, accel: Accel) -> Result<Vm, VmError> {
        let dir = tempfile::Builder::new()
            .prefix("cairn-vm-")
            .tempdir()
            .map_err(io_err("creating", Path::new("a temporary directory")))?;
        let disk = std::fs::canonicalize(&spec.disk).map_err(io_err("opening", &spec.disk))?;
        // The boot medium's drive; how it is attached follows (`medium`).
        // (A disk stays `if=virtio`, created before the config drive's, so it is vda.)
        let attach = if spec.medium == Medium::Disk {
            "if=virtio"
        } else {
            "if=none,id=boot0"
        };
        let drive = if spec.medium == Medium::Cdrom {
            format!("{attach},media=cdrom,readonly=on,format=raw,file={}", disk.display())
        } else if spec.writable {
            format!("{attach},format=raw,file={}", disk.display())
        } else {
            let overlay = dir.path().join("overlay.qcow2");
            let mut cmd = Command::new("qemu-img");
            cmd.args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&disk)
                .arg(&overlay);
            let out = cmd
                .stdin(Stdio::null())
                .output()
                .map_err(io_err("starting", "qemu-img"))?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                return Err(VmError::Overlay(format!("{}: {}", out.status, stderr.trim())));
            }
            format!("{attach},format=qcow2,file={}", overlay.display())
        };
        let vars = dir.path().join("OVMF_VARS.fd");
        std::fs::copy(OVMF_VARS, &vars).map_err(io_err("copying", Path::new(OVMF_VARS)))?;

        let mut q = Command::new("qemu-system-x86_64");
        q.args([
            "-machine",
            "q35",
            "-m",
            &spec.memory_mib.to_string(),
            "-smp",
            &spec.cpus.to_string(),
        ])
        .args(["-accel", if accel == Accel::Kvm { "kvm" } else { "tcg" }])
        .args([
            "-nographic",
            "-nodefaults",
            "-no-user-config",
            "-serial",
            "stdio",
            "-monitor",
            "none",
        ])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()))
        .arg("-drive")
        .arg(&drive)
        .args(["-device", "virtio-rng-pci"])
        // A hardware watchdog as real machines have one: PID 1 arms it (RuntimeWatchdogSec=),
        // and QEMU resets the machine when a hung guest stops petting it.
        .args(["-device", "i6300esb", "-action", "watchdog=reset"]);
        match spec.medium {
            Medium::Disk => &mut q,
            Medium::Cdrom => q.args(["-device", "ide-cd,drive=boot0,bus=ide.0"]),
            Medium::Usb => q.args([
                "-device",
                "qemu-xhci,id=xhci",
                "-device",
                "usb-storage,bus=xhci.0,drive=boot0,removable=on",
            ]),
        };
        if accel == Accel::Kvm {
            q.args(["-cpu", "host"]);
        }
        if let Some(cd) = &spec.config_drive {
            let cd = std::fs::canonicalize(cd).map_err(io_err("opening", cd))?;
            q.arg("-drive")
                .arg(format!("if=virtio,format=raw,readonly=on,file={}", cd.display()));
        }
        let mut netdev = "user,id=n0".to_string();
        if let Some(p) = spec.ssh_port {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{p}-:22"));
        }
        q.args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"]);
        if let Some(lan) = &spec.lan {
            let mac_ok = lan.mac.len() == 17
                && lan
                    .mac
                    .split(':')
                    .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
            if !mac_ok || lan.port == 0 {
                return Err(VmError::Io {
                    op: "using",
                    path: PathBuf::from(format!("LAN card {}:{}", lan.mac, lan.port)),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a MAC address and a port"),
                });
            }
            q.args([
                "-netdev",
                &format!("socket,id=n1,mcast=230.0.0.1:{},localaddr=127.0.0.1", lan.port),
                "-device",
                &format!("virtio-net-pci,netdev=n1,mac={}", lan.mac),
            ]);
        }
        q.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = q.spawn().map_err(io_err("starting", "qemu-system-x86_64"))?;
        let started = Instant::now();
        let console: console::Shared = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        console::read_output(&console, &mut child, started, spec.echo, spec.label.clone());
        let stdin = child.stdin.take().expect("piped");
        Ok(Vm {
            child,
            stdin_shared: Arc::new(Mutex::new(stdin)),
            console,
            started,
            accel,
            _dir: dir,
            marker: 0,
        })
    }

    /// Seconds since QEMU started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Console lines so far, with their times.
    pub fn lines(&self) -> Vec<(Duration, String)> {
        self.console.0.lock().expect("console lock").lines.clone()
    }

    fn last_lines(&self, n: usize) -> String {
        let c = self.console.0.lock().expect("console lock");
        let start = c.lines.len().saturating_sub(n);
        let mut s: Vec<String> = c.lines[start..].iter().map(|l| format!("  | {}", l.1)).collect();
        if !c.partial.is_empty() {
            s.push(format!("  | {}", strip_ansi(&c.partial)));
        }
        s.join("\n")
    }

    /// Wait until a console line (or the unfinished last line) contains `needle`, looking
    /// only at output from line `from` on. Returns the index of the matching line.
    pub fn wait_for_from(&mut self, from: usize, needle: &str, timeout: Duration) -> Result<usize, VmError> {
        self.wait_inner(from, needle, timeout, true)
    }

    /// Wait until a *complete* console line contains `needle` (for lines other output
    /// may interleave with, like the ready line and a login prompt).
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<usize, VmError> {
        self.wait_inner(0, needle, timeout, false)
    }

    /// [`Vm::wait_for_line`], looking only at lines from `from` on.
    pub fn wait_for_line_from(&mut self, from: usize, needle: &str, timeout: Duration) -> Result<usize, VmError> {
        self.wait_inner(from, needle, timeout, false)
    }

    fn wait_inner(&mut self, from: usize, needle: &str, timeout: Duration, partial: bool) -> Result<usize, VmError> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.console;
        let mut c = lock.lock().expect("console lock");
        loop {
            if let Some(i) = c.lines.iter().skip(from).position(|l| l.1.contains(needle)) {
                return Ok(from + i);
            }
            if partial && strip_ansi(&c.partial).contains(needle) {
                return Ok(c.lines.len());
            }
            if c.closed {
                drop(c);
                let status = self
                    .child
                    .wait()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                return Err(VmError::Exited {
                    status,
                    waiting_for: format!("'{needle}'"),
                    last: self.last_lines(25),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                drop(c);
                return Err(VmError::Timeout {
                    waiting_for: format!("'{needle}' on the console"),
                    secs: timeout.as_secs_f64(),
                    last: self.last_lines(25),
                });
            }
            c = cv.wait_timeout(c, deadline - now).expect("console lock").0;
        }
    }

    /// Wait for `needle` anywhere in the console output.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<usize, VmError> {
        self.wait_for_from(0, needle, timeout)
    }

    /// A handle that types on the serial console from another thread.
    pub fn console_input(&self) -> ConsoleInput {
        ConsoleInput::new(self.stdin_shared.clone())
    }

    /// How many complete lines the console has so far.
    pub fn lines_len(&self) -> usize {
        self.console.0.lock().expect("console lock").lines.len()
    }

    /// Type a line on the serial console.
    pub fn send_line(&mut self, line: &str) -> Result<(), VmError> {
        ConsoleInput::new(self.stdin_shared.clone()).send(&format!("{line}\n"))
    }

    /// Stop QEMU.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait for QEMU to exit on its own, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        // QEMU's output closes when it exits, which wakes the console's waiters.
        self.wait_until(timeout, |c| c.closed)?;
        self.child.wait().ok()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
