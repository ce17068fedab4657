//! Booting an image under QEMU with real UEFI firmware (OVMF), for `cairn boot` and the
//! QEMU tests.
//!
//! The built image is never written: QEMU runs on a qcow2 copy-on-write overlay in a
//! temporary directory, with its own copy of the OVMF variable store. The machine is a
//! q35 with a virtio disk, user-mode networking with SSH forwarded to a host port, and
//! the serial console on a pipe that this module reads line by line, timestamping each
//! line, so callers wait on what the node prints (never on sleeps) and the boot phases
//! can be measured from the console.
//!
//! Acceleration: `auto` tries KVM and falls back to TCG when KVM is missing or fails
//! (on hosts with broken nested virtualization QEMU prints "KVM internal error").

use crate::ioerr::{io_err, IoError};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::tools::{self, ToolError};

/// OVMF firmware code (Debian package `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF variable store template.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Problems running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A tool is missing or failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// IO on a named file.
    #[error(transparent)]
    Io(#[from] IoError),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when it works, else TCG.
    Auto,
    /// Hardware virtualization.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The raw disk image (never modified unless `writable`).
    pub disk: PathBuf,
    /// Boot the disk itself, so what the node writes persists across boots (tests that
    /// reboot use a copy); otherwise a throwaway copy-on-write overlay takes the writes.
    pub writable: bool,
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
}

/// The console so far: every line with the time since QEMU started.
#[derive(Default)]
struct Console {
    lines: Vec<(Duration, String)>,
    partial: String,
    closed: bool,
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
    marker: u32,
}

/// Remove ANSI escape sequences and carriage returns from console text.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            out.push(c);
        }
    }
    out
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
        tools::require(&["qemu-system-x86_64", "qemu-img"])?;
        for f in [OVMF_CODE, OVMF_VARS] {
            if !Path::new(f).exists() {
                return Err(ToolError::Missing {
                    tools: vec![f.into()],
                    packages: vec!["ovmf".into()],
                }
                .into());
            }
        }
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
        let drive = if spec.writable {
            format!("if=virtio,format=raw,file={}", disk.display())
        } else {
            let overlay = dir.path().join("overlay.qcow2");
            let mut cmd = Command::new("qemu-img");
            cmd.args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&disk)
                .arg(&overlay);
            tools::run(&mut cmd, "qemu-img")?;
            format!("if=virtio,format=qcow2,file={}", overlay.display())
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
        q.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = q.spawn().map_err(|source| ToolError::Spawn {
            tool: "qemu-system-x86_64".into(),
            source,
        })?;
        let started = Instant::now();
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let echo = spec.echo;
        for (stream, is_err) in [
            (Box::new(stdout) as Box<dyn Read + Send>, false),
            (Box::new(stderr), true),
        ] {
            let console = console.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    // Read up to a newline, but hand over partial lines (prompts) too.
                    let n = match reader.fill_buf() {
                        Ok([]) | Err(_) => 0,
                        Ok(b) => {
                            let upto = b.iter().position(|&c| c == b'\n').map_or(b.len(), |i| i + 1);
                            buf.extend_from_slice(&b[..upto]);
                            upto
                        }
                    };
                    if n == 0 {
                        break;
                    }
                    reader.consume(n);
                    if echo && !is_err {
                        let mut o = std::io::stdout();
                        let _ = o.write_all(&buf);
                        let _ = o.flush();
                    }
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let (lock, cv) = &*console;
                    let mut c = lock.lock().expect("console lock");
                    c.partial.push_str(&text);
                    while let Some(i) = c.partial.find('\n') {
                        let line = strip_ansi(&c.partial[..i]);
                        c.partial.drain(..=i);
                        c.lines.push((started.elapsed(), line));
                    }
                    cv.notify_all();
                }
                let (lock, cv) = &*console;
                lock.lock().expect("console lock").closed = true;
                cv.notify_all();
            });
        }
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
        ConsoleInput(self.stdin_shared.clone())
    }

    /// Type a line on the serial console.
    pub fn send_line(&mut self, line: &str) -> Result<(), VmError> {
        ConsoleInput(self.stdin_shared.clone()).send(&format!("{line}\n"))
    }

    /// Run a shell command on a logged-in console and return its output and exit code.
    /// The output is framed by unique markers, so the echo of the command is not taken
    /// for its output.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<(String, i32), VmError> {
        self.marker += 1;
        let m = self.marker;
        let from = self.console.0.lock().expect("console lock").lines.len();
        // The markers are assembled by the shell, so the echoed command never matches.
        self.send_line(&format!("echo CAIRN{m}''BEGIN; {command}; echo CAIRN{m}''END=$?"))?;
        let begin = self.wait_inner(from, &format!("CAIRN{m}BEGIN"), timeout, false)?;
        let end = self.wait_inner(begin, &format!("CAIRN{m}END="), timeout, false)?;
        let lines = self.lines();
        // Kernel and journal messages reach the same console while the command runs; they
        // carry the kernel's timestamp and are not the command's output.
        let out: Vec<&str> = lines[begin + 1..end]
            .iter()
            .map(|l| l.1.as_str())
            .filter(|l| !is_kernel_message(l))
            .collect();
        let code = lines[end]
            .1
            .split(&format!("CAIRN{m}END="))
            .nth(1)
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(-1);
        Ok((out.join("\n"), code))
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

/// Types on a VM's serial console; cheap to clone into a thread.
#[derive(Clone)]
pub struct ConsoleInput(Arc<Mutex<ChildStdin>>);

impl ConsoleInput {
    /// Send text as typed.
    pub fn send(&self, text: &str) -> Result<(), VmError> {
        let mut w = self.0.lock().expect("stdin lock");
        w.write_all(text.as_bytes())
            .and_then(|_| w.flush())
            .map_err(io_err("writing to the console of", "qemu"))?;
        Ok(())
    }
}

/// Boot phases measured from the console (times since QEMU started).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BootPhases {
    /// OVMF hands over to the boot loader (`BdsDxe: starting`).
    pub loader_start: Option<f64>,
    /// The kernel's EFI stub runs (`EFI stub:`).
    pub kernel_start: Option<f64>,
    /// The kernel starts the initrd's init (`Run /init`).
    pub initrd_start: Option<f64>,
    /// systemd starts again from the real root (the second "running in system mode").
    pub switch_root: Option<f64>,
    /// The ready line.
    pub ready: Option<f64>,
}

/// Find the phase markers in console lines.
pub fn boot_phases(lines: &[(Duration, String)]) -> BootPhases {
    let mut p = BootPhases::default();
    let mut system_mode = 0;
    for (t, l) in lines {
        let t = t.as_secs_f64();
        if p.loader_start.is_none() && l.contains("BdsDxe: starting") {
            p.loader_start = Some(t);
        } else if p.kernel_start.is_none() && (l.contains("EFI stub:") || l.contains("Linux version")) {
            p.kernel_start = Some(t);
        } else if p.initrd_start.is_none() && l.contains("Run /init as init process") {
            p.initrd_start = Some(t);
        } else if l.contains("running in system mode") {
            system_mode += 1;
            if system_mode == 2 {
                p.switch_root = Some(t);
            }
        } else if p.ready.is_none() && l.contains("cairn: ready ") {
            p.ready = Some(t);
        }
    }
    p
}

/// The boot-phase budget as text.
pub fn render_budget(p: &BootPhases, accel: Accel) -> String {
    let mut s = format!(
        "boot phases ({}; wall clock from QEMU start, measured on the serial console)\n",
        match accel {
            Accel::Kvm => "KVM",
            _ => "TCG",
        }
    );
    let marks = [
        (
            "firmware",
            Some(0.0),
            p.loader_start,
            "OVMF until it starts the boot loader",
        ),
        (
            "loader",
            p.loader_start,
            p.kernel_start,
            "systemd-boot and the UKI's stub",
        ),
        (
            "kernel",
            p.kernel_start,
            p.initrd_start,
            "kernel until it runs the initrd",
        ),
        (
            "initrd",
            p.initrd_start,
            p.switch_root,
            "initrd: verity root opened, switch root",
        ),
        ("userspace", p.switch_root, p.ready, "system until the ready line"),
    ];
    for (name, a, b, what) in marks {
        match (a, b) {
            (Some(a), Some(b)) => s.push_str(&format!("  {name:<10} {:>6.1}s  {what}\n", b - a)),
            _ => s.push_str(&format!("  {name:<10}      ?   {what} (marker not seen)\n")),
        }
    }
    if let Some(r) = p.ready {
        s.push_str(&format!("  {:<10} {:>6.1}s\n", "total", r));
    }
    s
}

/// A console line the kernel printed (`[   51.074887] …`), as opposed to a program's output.
pub fn is_kernel_message(line: &str) -> bool {
    let Some(rest) = line.trim_start().strip_prefix('[') else {
        return false;
    };
    let Some((stamp, _)) = rest.split_once("] ") else {
        return false;
    };
    let stamp = stamp.trim_start();
    stamp.split_once('.').is_some_and(|(s, us)| {
        !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && us.len() == 6
            && us.bytes().all(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_messages_are_told_from_command_output() {
        assert!(is_kernel_message(
            "[   51.074887] cairn-node[282]: cairn: boot deadline: reached"
        ));
        assert!(is_kernel_message("[12345.000001] rcu: stall"));
        for out in [
            "good",
            "[x] item",
            "[   51.07] short",
            "0123456789abcdef0123456789abcdef",
            "[ 1.123456]no-space",
        ] {
            assert!(!is_kernel_message(out), "{out}");
        }
    }

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[0;32m  OK  \u{1b}[0m] Started x\r"),
            "  OK  ] Started x"
        );
    }

    #[test]
    fn phases_from_console() {
        let l = |t: f64, s: &str| (Duration::from_secs_f64(t), s.to_string());
        let lines = vec![
            l(3.0, "BdsDxe: starting Boot0002"),
            l(4.0, "EFI stub: Loaded initrd"),
            l(4.1, "[    0.0] Linux version 6.1"),
            l(8.0, "[    3.8] Run /init as init process"),
            l(8.5, "systemd[1]: systemd 252 running in system mode (+PAM)"),
            l(15.0, "systemd[1]: systemd 252 running in system mode (+PAM)"),
            l(30.0, "cairn-node[1]: cairn: ready version=1 slot=a boot=27.0s"),
        ];
        let p = boot_phases(&lines);
        assert_eq!(
            p,
            BootPhases {
                loader_start: Some(3.0),
                kernel_start: Some(4.0),
                initrd_start: Some(8.0),
                switch_root: Some(15.0),
                ready: Some(30.0)
            }
        );
        let text = render_budget(&p, Accel::Tcg);
        assert!(
            text.contains("firmware      3.0s")
                && text.contains("userspace    15.0s")
                && text.contains("total        30.0s"),
            "{text}"
        );
    }
}
