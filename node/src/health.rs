//! `cairn-node health GATE`: the checks ordered before `boot-complete.target`.
//!
//! A slot is blessed only when its node can serve, so each gate asks the component itself,
//! not systemd: etcd's `/health`, containerd over its socket, the WireGuard interface with
//! the configured key, the kubelet's `/healthz`. A gate polls until its probe passes or its
//! time limit runs out, logging what it is waiting for; a component the node does not run
//! (etcd on a worker, WireGuard not configured, no kubelet in the image) passes with that
//! reason. The gates read the config `cairn-node apply` put in effect this boot.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::config::NodeConfig;
use crate::render;

/// A health gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// etcd answers `/health` with `"health":"true"`.
    Etcd,
    /// containerd answers a version request on its socket.
    Containerd,
    /// The WireGuard interface is up with the configured key.
    Wireguard,
    /// The kubelet answers `/healthz`.
    Kubelet,
    /// sshd answers on port 22 with its SSH banner: the way an operator reaches the node.
    Sshd,
    /// With a keyserver: the node holds a certificate for every profile of its role, each
    /// for the key beside it.
    Keys,
}

impl Gate {
    /// Parse a gate name.
    pub fn parse(s: &str) -> Option<Gate> {
        Some(match s {
            "etcd" => Gate::Etcd,
            "containerd" => Gate::Containerd,
            "wireguard" => Gate::Wireguard,
            "kubelet" => Gate::Kubelet,
            "sshd" => Gate::Sshd,
            "keys" => Gate::Keys,
            _ => return None,
        })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Gate::Etcd => "etcd",
            Gate::Containerd => "containerd",
            Gate::Wireguard => "wireguard",
            Gate::Kubelet => "kubelet",
            Gate::Sshd => "sshd",
            Gate::Keys => "keys",
        }
    }

    /// The default time limit.
    pub fn default_limit(self) -> Duration {
        Duration::from_secs(match self {
            Gate::Etcd | Gate::Kubelet => 180,
            Gate::Containerd => 120,
            Gate::Wireguard | Gate::Sshd => 60,
            // Its unit runs after the key agent is ready (or gave up): nothing to wait for.
            Gate::Keys => 30,
        })
    }
}

/// What a gate must check on this node, or why it has nothing to check.
pub enum Probe {
    /// Nothing to wait for, with the reason.
    Skip(String),
    /// Poll this until it returns `Ok`.
    Check(Box<dyn FnMut() -> Result<String, String>>),
}

/// Plain HTTP/1.0 GET; returns status code and body.
pub fn http_get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (hostport, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let addr: SocketAddr = hostport.parse().map_err(|_| format!("{hostport} is not ADDR:PORT"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n").as_bytes())
        .map_err(|e| format!("sending to {addr}: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no HTTP status")?;
    Ok((code, body.trim().to_string()))
}

/// Connect to an SSH server at `addr` and read its identification line (`SSH-2.0-…`).
pub fn ssh_banner(addr: &str, timeout: Duration) -> Result<String, String> {
    let a: SocketAddr = addr.parse().map_err(|_| format!("{addr} is not ADDR:PORT"))?;
    let mut s = TcpStream::connect_timeout(&a, timeout).map_err(|e| format!("connecting to {a}: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 255];
    let mut got = 0;
    while got < buf.len() && !buf[..got].contains(&b'\n') {
        match s.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("reading from {a}: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&buf[..got]);
    let line = line.lines().next().unwrap_or("").trim();
    if line.starts_with("SSH-2.0-") {
        Ok(format!("sshd answers on {a}: {line}"))
    } else {
        Err(format!("{a} answered {line:?}, not an SSH-2.0 banner"))
    }
}

/// How long one probe command may run before the gate counts it as no answer.
pub const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// Run `program args…` under coreutils' `timeout`, so a component that accepts the
/// connection but never answers cannot hold the gate past its limit.
fn command(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("timeout")
        .args(["--kill-after=2", &PROBE_LIMIT.as_secs().to_string(), program])
        .args(args)
        .output()
        .map_err(|e| format!("running {program}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match out.status.code() {
        Some(0) => Ok(text),
        Some(124) | Some(137) => Err(format!("{program} did not answer within {}s", PROBE_LIMIT.as_secs())),
        _ => Err(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// The probe for `gate` on a node running `config`; `root` prefixes filesystem paths.
pub fn probe(gate: Gate, config: &NodeConfig, root: &Path) -> Probe {
    match gate {
        Gate::Etcd => {
            if config.etcd.is_none() {
                return Probe::Skip(format!("a {} does not run etcd", config.role.as_str()));
            }
            let url = format!("{}/health", render::ETCD_METRICS_URL);
            Probe::Check(Box::new(move || {
                let (code, body) = http_get(&url, Duration::from_secs(5)).map_err(|e| format!("GET {url}: {e}"))?;
                if code == 200 && body.contains("\"health\":\"true\"") {
                    Ok(format!("GET {url}: {body}"))
                } else {
                    Err(format!("GET {url}: {code} {body}"))
                }
            }))
        }
        Gate::Containerd => Probe::Check(Box::new(|| {
            let out = command(
                "ctr",
                &["--address", render::CONTAINERD_SOCKET, "--timeout", "5s", "version"],
            )?;
            let server = out
                .split("Server:")
                .nth(1)
                .ok_or("ctr version printed no server version")?;
            let v = server
                .lines()
                .find_map(|l| l.trim().strip_prefix("Version:"))
                .unwrap_or("?")
                .trim();
            Ok(format!("containerd {v} answers on {}", render::CONTAINERD_SOCKET))
        })),
        Gate::Wireguard => {
            let Some(w) = config.wireguard.clone() else {
                return Probe::Skip("no WireGuard interface is configured".into());
            };
            let flags = crate::apply::at(root, &format!("/sys/class/net/{}/flags", w.interface));
            let Some(want) = crate::mesh::node_public(root, &w) else {
                return Probe::Check(Box::new(move || {
                    Err(format!(
                        "{} has no key yet (made when the node config is applied)",
                        w.interface
                    ))
                }));
            };
            Probe::Check(Box::new(move || {
                let f =
                    std::fs::read_to_string(&flags).map_err(|_| format!("interface {} does not exist", w.interface))?;
                let bits = u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).unwrap_or(0);
                if bits & 1 == 0 {
                    return Err(format!("interface {} is down", w.interface));
                }
                let have = command("wg", &["show", &w.interface, "public-key"])?;
                if have != want {
                    return Err(format!("{} has public key {have}, the config's is {want}", w.interface));
                }
                Ok(format!("{} is up with public key {want}", w.interface))
            }))
        }
        Gate::Sshd => Probe::Check(Box::new(|| ssh_banner("127.0.0.1:22", Duration::from_secs(5)))),
        Gate::Keys => {
            if config.key_agent.is_none() && !crate::key_agent::state::enrolled(root) {
                return Probe::Skip("no keyserver is configured ([key-agent] in node.toml)".into());
            }
            let root = root.to_path_buf();
            Probe::Check(Box::new(move || keys_held(&root, cairn_keys::Clock::system().now())))
        }
        Gate::Kubelet => {
            if !crate::apply::at(root, "/usr/bin/kubelet").exists() {
                return Probe::Skip("this image has no kubelet: no [kubelet] artifact was pinned".into());
            }
            Probe::Check(Box::new(|| {
                let url = "http://127.0.0.1:10248/healthz";
                match http_get(url, Duration::from_secs(5)) {
                    Ok((200, body)) if body == "ok" => Ok(format!("GET {url}: ok")),
                    Ok((code, body)) => Err(format!("GET {url}: {code} {body}")),
                    Err(e) => Err(format!("GET {url}: {e}")),
                }
            }))
        }
    }
}

/// The keys gate's check: every certificate of the role on disk and for its key. One that
/// has ended passes with a warning: rolling back the OS cannot bring a keyserver back.
pub fn keys_held(root: &Path, now: u64) -> Result<String, String> {
    use crate::key_agent::{current, state::AgentState};
    let state = AgentState::load(root)
        .map_err(|e| e.to_string())?
        .ok_or("the key agent has not enrolled (`cairn-node key-agent --status`, `journalctl -u cairn-key-agent`)")?;
    let names = cairn_keys::profiles::profile_names(state.role);
    let mut ended = Vec::new();
    let mut not_yet = Vec::new();
    let mut earliest = u64::MAX;
    for p in &names {
        // A profile this node never held is one its running release added (a worker's
        // etcd-lease, for one enrolled before it): the agent asks for it at once, and a
        // rollback would not bring it, so it does not fail the boot.
        if !crate::apply::at(root, crate::key_agent::PKI_DIR).join(p).exists() {
            not_yet.push(*p);
            continue;
        }
        let c = current(root, p).map_err(|e| {
            let last = state
                .last_error
                .as_ref()
                .map_or(String::new(), |(_, e)| format!("; the agent's last error: {e}"));
            format!("{e}{last}")
        })?;
        if now >= c.validity.not_after {
            ended.push(*p);
        }
        earliest = earliest.min(c.validity.not_after);
    }
    let mut line = format!(
        "{} holds {} certificates of generation {}, the first ends {}",
        state.node,
        names.len() - not_yet.len(),
        state.generation,
        crate::key_agent::run::date(earliest)
    );
    if !ended.is_empty() {
        line.push_str(&format!(
            "; WARNING: {} ended (the keyserver has not been reached; they renew when it answers)",
            ended.join(", ")
        ));
    }
    if !not_yet.is_empty() {
        line.push_str(&format!(
            "; {} not issued yet (new in this release; the key agent asks for {} now)",
            not_yet.join(", "),
            if not_yet.len() == 1 { "it" } else { "them" }
        ));
    }
    Ok(line)
}

impl Gate {
    /// The systemd unit that runs the component, when systemd can give up on it.
    pub fn unit(self) -> Option<&'static str> {
        match self {
            Gate::Etcd => Some("etcd.service"),
            Gate::Containerd => Some("containerd.service"),
            Gate::Kubelet => Some("kubelet.service"),
            Gate::Sshd => Some("ssh.service"),
            Gate::Wireguard => None,
            Gate::Keys => Some("cairn-key-agent.service"),
        }
    }
}

/// Whether systemd has given up on `unit` (it is in the failed state: crashed more often
/// than its restart limit allows). Asked between probes, so a gate whose component is
/// gone for good fails at once instead of waiting out its limit.
pub fn unit_failed(unit: &str) -> Option<String> {
    let ok = Command::new("systemctl")
        .args(["is-failed", "--quiet", unit])
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| format!("{unit} failed and systemd stopped restarting it"))
}

/// Run a gate until it passes or `limit` runs out. `log` gets progress lines; the result
/// is the final line (pass or failure).
pub fn run(gate: Gate, probe: Probe, limit: Duration, log: &mut dyn FnMut(&str)) -> Result<String, String> {
    run_watching(gate, probe, limit, &mut || None, log)
}

/// [`run`], and fail as soon as `gave_up` names a reason (see [`unit_failed`]).
pub fn run_watching(
    gate: Gate,
    probe: Probe,
    limit: Duration,
    gave_up: &mut dyn FnMut() -> Option<String>,
    log: &mut dyn FnMut(&str),
) -> Result<String, String> {
    let name = gate.name();
    let mut check = match probe {
        Probe::Skip(why) => return Ok(format!("cairn: health gate {name} passed: nothing to check ({why})")),
        Probe::Check(c) => c,
    };
    let start = Instant::now();
    let mut last_log: Option<Instant> = None;
    loop {
        match check() {
            Ok(what) => {
                return Ok(format!(
                    "cairn: health gate {name} passed after {:.1}s: {what}",
                    start.elapsed().as_secs_f64()
                ))
            }
            Err(why) => {
                if let Some(reason) = gave_up() {
                    return Err(format!(
                        "cairn: health gate {name} FAILED after {:.0}s: {reason}; last check: {why}",
                        start.elapsed().as_secs_f64()
                    ));
                }
                if start.elapsed() >= limit {
                    return Err(format!(
                        "cairn: health gate {name} FAILED after {:.0}s: {why}",
                        start.elapsed().as_secs_f64()
                    ));
                }
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    log(&format!(
                        "cairn: health gate {name}: waiting ({:.0}s of {}s): {why}",
                        start.elapsed().as_secs_f64(),
                        limit.as_secs()
                    ));
                    last_log = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}
