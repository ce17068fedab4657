//! `cairn-node key-agent` (cairn-key-agent.service): enroll once, then keep the
//! certificates renewed, for as long as the node runs.
//!
//! Each pass ([`Agent::pass`]) looks at the clock and the certificates and does at most one
//! thing: enroll (no state yet and a token on disk), renew (a certificate is due, missing or
//! broken), or nothing; then says how long to sleep. Never longer than five minutes, so a
//! clock that jumped (suspend, NTP) is seen; after a failure, the jittered backoff of
//! [`cairn_keys::schedule::Backoff`]. A keyserver that cannot be reached changes nothing on
//! disk: the certificates in use stay in use. The service tells systemd it is ready as soon
//! as the node holds a certificate for every profile, so on every boot but the first the
//! agent never delays etcd, the kubelet or sshd.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_keys::profiles::{profile_names, Role};
use cairn_keys::schedule::{self, Backoff, Due};
use cairn_keys::Clock;

use super::state::AgentState;
use super::{current, enroll, renew, AgentError, Enrollment, Installed, Server};
use crate::config::NodeConfig;

/// Renew when this much of a certificate's life remains (or a third, when that is more).
pub const OUTAGE_BUDGET: u64 = 10 * 86_400;
/// How long one request to the keyserver may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// A failure is printed again after this long at the latest.
pub const REPEAT_FAILURE: u64 = 3600;
/// How often the mesh's peer list is asked for: a node added to the cluster is reached
/// by the others within this.
pub const PEER_INTERVAL: u64 = 60;
/// For this long after the agent starts, the peer list is asked for every
/// [`PEER_INTERVAL_STARTING`] seconds instead: nodes of a cluster that boot together find
/// each other within seconds of the last one's enrollment, not a minute later.
pub const PEERS_STARTING_FOR: u64 = 300;
/// See [`PEERS_STARTING_FOR`].
pub const PEER_INTERVAL_STARTING: u64 = 10;

/// What the node config says about the key agent.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The node's name.
    pub hostname: String,
    /// Its role.
    pub role: Role,
    /// The keyserver of node.toml, if it has one.
    pub server: Option<Server>,
    /// Where the bootstrap token is.
    pub token_file: PathBuf,
    /// etcd's local client address, when etcd runs on the agent's certificates: checked to
    /// serve each renewed one.
    pub etcd: Option<std::net::SocketAddr>,
    /// The WireGuard interface kept in step with the keyserver's peer list (node.toml's
    /// `[wireguard]`, on a node with a keyserver).
    pub mesh: Option<cairn_node_config::Wireguard>,
}

impl Settings {
    /// From an applied node config.
    pub fn from_config(c: &NodeConfig) -> Settings {
        Settings {
            hostname: c.hostname.clone(),
            role: c.role,
            server: c.key_agent.as_ref().map(|k| Server {
                host: k.server.host.clone(),
                port: k.server.port,
                ca_fingerprint: k.ca_fingerprint,
            }),
            token_file: PathBuf::from(cairn_node_config::render::KEY_AGENT_TOKEN),
            etcd: c
                .etcd
                .as_ref()
                .filter(|e| e.tls.as_ref() == Some(&cairn_node_config::EtcdTls::from_key_agent()))
                .map(|e| std::net::SocketAddr::from(([127, 0, 0, 1], e.client_urls[0].port))),
            mesh: c.wireguard.clone().filter(|_| c.key_agent.is_some()),
        }
    }
}

/// The renewal jitter's seed: fixed per node, so a restart does not move the deadline.
pub fn seed(hostname: &str) -> u64 {
    let h = <sha2::Sha256 as sha2::Digest>::digest(hostname.as_bytes());
    u64::from_le_bytes(h[..8].try_into().expect("8 bytes"))
}

/// The outcome of one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Lines for the console.
    pub lines: Vec<String>,
    /// Seconds until the next pass.
    pub sleep: u64,
    /// Whether the node holds a certificate for every profile of its role.
    pub ready: bool,
}

/// The key agent of one node.
pub struct Agent {
    root: PathBuf,
    settings: Settings,
    clock: Clock,
    timeout: Duration,
    seed: u64,
    backoff: Backoff,
    rng: Box<dyn rand_core::RngCore + Send>,
    last_printed: Option<u64>,
    warned_server: bool,
    wg: Box<dyn crate::mesh::WgTool + Send>,
    /// When to ask for the peer list next (0: at the first pass after enrolling).
    next_peers: u64,
    /// When the agent started (the clock's seconds).
    started: u64,
    /// Whether the kept peer list was applied at start.
    restored: bool,
    /// The peer list applied last, and when a mesh failure was last printed.
    applied: Vec<cairn_keys::mesh::Peer>,
    mesh_printed: Option<u64>,
}

impl Agent {
    /// An agent for the node under `root` (`/` on a node).
    pub fn new(root: &Path, settings: Settings, clock: Clock) -> Agent {
        let seed = seed(&settings.hostname);
        let started = clock.now();
        Agent {
            root: root.to_path_buf(),
            settings,
            clock,
            timeout: REQUEST_TIMEOUT,
            seed,
            backoff: Backoff::default(),
            rng: Box::new(rand_core::OsRng),
            last_printed: None,
            warned_server: false,
            wg: Box::new(crate::mesh::SystemWg),
            next_peers: 0,
            started,
            restored: false,
            applied: Vec::new(),
            mesh_printed: None,
        }
    }

    /// Drive WireGuard with `tool` instead of `wg` (tests: the host has no WireGuard).
    pub fn with_wg(mut self, tool: Box<dyn crate::mesh::WgTool + Send>) -> Agent {
        self.wg = tool;
        self
    }

    /// Use `timeout` for each request (tests use a short one).
    pub fn with_timeout(mut self, timeout: Duration) -> Agent {
        self.timeout = timeout;
        self
    }

    /// Whether every certificate of the role is on disk and for its key.
    fn holds_all(&self, role: Role) -> bool {
        profile_names(role).iter().all(|p| current(&self.root, p).is_ok())
    }

    /// When the first certificate is due (`None`: one is due now, missing or broken).
    fn next_deadline(&self, role: Role, now: u64) -> Option<u64> {
        let mut earliest = u64::MAX;
        for p in profile_names(role) {
            match current(&self.root, p) {
                Ok(c) => match schedule::due(c.validity, OUTAGE_BUDGET, self.seed, now) {
                    Due::At(t) => earliest = earliest.min(t),
                    Due::Now | Due::Invalid => return None,
                },
                Err(_) => return None,
            }
        }
        Some(earliest)
    }

    /// One look at the clock, the certificates and the mesh, and what follows from it.
    pub fn pass(&mut self) -> Pass {
        let mut restored = self.restore();
        let mut p = self.certs_pass();
        restored.append(&mut p.lines);
        p.lines = restored;
        let now = self.clock.now();
        if self.settings.mesh.is_some() && crate::key_agent::state::enrolled(&self.root) {
            if now >= self.next_peers {
                let lines = self.poll_peers(now);
                p.lines.extend(lines);
                self.next_peers = now + self.peer_interval(now);
            }
            p.sleep = p.sleep.min(self.next_peers.saturating_sub(now).max(1));
        }
        p
    }

    /// How long until the peer list is asked for again.
    fn peer_interval(&self, now: u64) -> u64 {
        if now < self.started.saturating_add(PEERS_STARTING_FOR) {
            PEER_INTERVAL_STARTING
        } else {
            PEER_INTERVAL
        }
    }

    /// At the first pass: put the kept peer list on the interface, before anything is
    /// asked of the keyserver (which may be down).
    fn restore(&mut self) -> Vec<String> {
        let Some(w) = self.settings.mesh.clone().filter(|_| !self.restored) else {
            return Vec::new();
        };
        let Some(kept) = crate::mesh::load(&self.root, &w.interface) else {
            self.restored = true;
            return Vec::new();
        };
        // Until it worked (the interface may not exist yet), every pass tries again.
        match self.apply_peers(&w, &kept.peers) {
            Ok((synced, mut lines)) => {
                self.restored = true;
                if synced.set + synced.removed > 0 {
                    lines.push(format!(
                        "cairn: key agent: {} has the {} peers the keyserver listed at {}",
                        w.interface,
                        synced.peers,
                        date(kept.fetched)
                    ));
                }
                lines
            }
            Err(why) => {
                let now = self.clock.now();
                if self.mesh_printed.is_some_and(|t| now < t + REPEAT_FAILURE) {
                    return Vec::new();
                }
                self.mesh_printed = Some(now);
                vec![format!(
                    "cairn: key agent: restoring the peers of {}: {why}",
                    w.interface
                )]
            }
        }
    }

    /// Check `list`, apply it, and remember it as applied.
    fn apply_peers(
        &mut self,
        w: &cairn_node_config::Wireguard,
        list: &[cairn_keys::mesh::Peer],
    ) -> Result<(crate::mesh::Synced, Vec<String>), String> {
        let statics = crate::mesh::static_keys(w);
        let own = crate::mesh::node_key(&self.root, w);
        let (good, bad) = crate::mesh::checked(list, own.as_ref(), &statics);
        let lines = bad.into_iter().map(|l| format!("cairn: key agent: {l}")).collect();
        let synced = crate::mesh::sync(&*self.wg, &w.interface, &good, &self.applied, &statics)?;
        self.applied = good;
        Ok((synced, lines))
    }

    /// Ask for the peer list; keep and apply it when it came. A failure leaves the
    /// interface as it is, and is printed at most once an hour.
    fn poll_peers(&mut self, now: u64) -> Vec<String> {
        let Some(w) = self.settings.mesh.clone() else {
            return Vec::new();
        };
        let result = AgentState::load(&self.root)
            .and_then(|s| s.ok_or_else(|| AgentError::BadState("not enrolled".into())))
            .and_then(|s| super::peers::fetch(&self.root, &s, self.timeout, &self.clock))
            .map_err(|e| crate::cli::chain(&e))
            .and_then(|resp| {
                let (synced, mut lines) = self.apply_peers(&w, &resp.peers)?;
                let kept = crate::mesh::Kept {
                    fetched: resp.server_time,
                    peers: self.applied.clone(),
                };
                if crate::mesh::load(&self.root, &w.interface).map(|k| k.peers) != Some(kept.peers.clone()) {
                    crate::mesh::save(&self.root, &w.interface, &kept)
                        .map_err(|e| format!("keeping the peer list: {e}"))?;
                }
                if synced.set + synced.removed > 0 {
                    lines.push(format!(
                        "cairn: key agent: {} now has {} peers from the keyserver ({} set, {} removed)",
                        w.interface, synced.peers, synced.set, synced.removed
                    ));
                }
                Ok(lines)
            });
        match result {
            Ok(lines) => {
                self.mesh_printed = None;
                lines
            }
            Err(why) if self.mesh_printed.is_none_or(|t| now >= t + REPEAT_FAILURE) => {
                self.mesh_printed = Some(now);
                vec![format!(
                    "cairn: key agent: the mesh's peer list: {why}; {} keeps the peers it has; asking again every {PEER_INTERVAL} s",
                    w.interface
                )]
            }
            Err(_) => Vec::new(),
        }
    }

    /// One look at the clock and the certificates, and what follows from it.
    fn certs_pass(&mut self) -> Pass {
        let now = self.clock.now();
        let mut lines = Vec::new();
        let state = match AgentState::load(&self.root) {
            Ok(s) => s,
            Err(e) => return self.failed(now, None, e, lines),
        };
        let Some(mut state) = state else {
            return self.enroll(now, lines);
        };
        if let Some(s) = self.settings.server.as_ref().filter(|_| !self.warned_server) {
            if state.server != s.clone().into() {
                self.warned_server = true;
                lines.push(format!(
                    "cairn: key agent: node.toml names keyserver {}:{}, but this node enrolled with {}:{}; it stays with that one (a new keyserver needs the node enrolled again)",
                    s.host, s.port, state.server.host, state.server.port
                ));
            }
        }
        match self.next_deadline(state.role, now) {
            Some(deadline) => {
                self.backoff = Backoff::default();
                Pass {
                    lines,
                    sleep: schedule::next_wake(now, deadline) - now,
                    ready: true,
                }
            }
            None => match renew::renew(&self.root, &mut state, self.timeout, &self.clock) {
                Ok(i) => {
                    self.backoff = Backoff::default();
                    self.last_printed = None;
                    lines.push(format!(
                        "cairn: key agent renewed {} certificates of {} with {}:{} (generation {}), valid until {}",
                        i.profiles.len(),
                        i.node,
                        state.server.host,
                        state.server.port,
                        i.generation,
                        date(i.not_after)
                    ));
                    lines.extend(super::skew_line(now, i.server_time));
                    if self.root == Path::new("/") {
                        // The kubelet takes its certificates when it starts (a restart
                        // leaves pods running); try-restart does nothing where it is off.
                        let _ = std::process::Command::new("systemctl")
                            .args(["try-restart", "kubelet.service"])
                            .status();
                    }
                    if let Some(addr) = self.settings.etcd {
                        lines.push(self.check_etcd(addr));
                    }
                    let deadline = self.next_deadline(state.role, now).unwrap_or(now + 1);
                    Pass {
                        lines,
                        sleep: schedule::next_wake(now, deadline).saturating_sub(now).max(1),
                        ready: true,
                    }
                }
                Err(e) => {
                    let held = self.holds_all(state.role);
                    let mut p = self.failed(now, Some(&mut state), e, lines);
                    p.ready = held;
                    p
                }
            },
        }
    }

    /// Check etcd serves the renewed certificate; restart it (on a node) when it does not.
    fn check_etcd(&self, addr: std::net::SocketAddr) -> String {
        match super::consumers::check_etcd(&self.root, addr, &self.clock, super::consumers::SETTLE) {
            Ok(line) => line,
            Err(why) if self.root == Path::new("/") => {
                let restarted = std::process::Command::new("systemctl")
                    .args(["try-restart", "etcd.service"])
                    .status()
                    .is_ok_and(|s| s.success());
                format!(
                    "cairn: key agent: {why}; {}",
                    if restarted {
                        "restarted etcd"
                    } else {
                        "restarting etcd FAILED"
                    }
                )
            }
            Err(why) => format!("cairn: key agent: {why}"),
        }
    }

    fn enroll(&mut self, now: u64, mut lines: Vec<String>) -> Pass {
        let Some(server) = self.settings.server.clone() else {
            lines.push("cairn: key agent: node.toml has no [key-agent]; nothing to do".into());
            return Pass {
                lines,
                sleep: schedule::MAX_SLEEP,
                ready: true,
            };
        };
        if let Some(floor) = super::clock_floor(&self.root).filter(|f| now < *f) {
            let e = AgentError::Clock(format!(
                "this node's clock says {}, before its image was built ({}): no certificate can be checked on it; waiting for the time to be set (NTP or the hardware clock)",
                cairn_signing::time::format_utc(now),
                cairn_signing::time::format_utc(floor)
            ));
            return self.failed(now, None, e, lines);
        }
        let token = match std::fs::read_to_string(crate::apply::at(
            &self.root,
            &self.settings.token_file.to_string_lossy(),
        )) {
            Ok(t) => t.trim().to_string(),
            Err(e) => {
                let e = AgentError::BadState(format!(
                    "not enrolled, and no bootstrap token ({}: {e}); write a config drive with a fresh token (`cairn token create --node {}`)",
                    self.settings.token_file.display(),
                    self.settings.hostname
                ));
                return self.failed(now, None, e, lines);
            }
        };
        let token_path = crate::apply::at(&self.root, &self.settings.token_file.to_string_lossy());
        let e = Enrollment {
            server: &server,
            token: &token,
            token_file: Some(&token_path),
            hostname: &self.settings.hostname,
            role: self.settings.role,
        };
        match enroll(&self.root, &e, self.timeout, &self.clock) {
            Ok(i) => {
                self.backoff = Backoff::default();
                self.last_printed = None;
                lines.push(enrolled_line(&i, self.settings.role, &server));
                lines.extend(super::skew_line(now, i.server_time));
                let deadline = self.next_deadline(self.settings.role, now).unwrap_or(now + 1);
                Pass {
                    lines,
                    sleep: schedule::next_wake(now, deadline).saturating_sub(now).max(1),
                    ready: true,
                }
            }
            Err(e) => self.failed(now, None, e, lines),
        }
    }

    /// Record and (at most once an hour, and on the first of a run) print a failure; sleep
    /// as the backoff says.
    fn failed(&mut self, now: u64, state: Option<&mut AgentState>, e: AgentError, mut lines: Vec<String>) -> Pass {
        let first = self.backoff.failures() == 0;
        let delay = self.backoff.fail(&mut *self.rng);
        let text = crate::cli::chain(&e);
        if first || self.last_printed.is_none_or(|t| now >= t + REPEAT_FAILURE) {
            self.last_printed = Some(now);
            let mut line = format!("cairn: key agent: {text}");
            if let Some(s) = &state {
                if let Some(earliest) = profile_names(s.role)
                    .iter()
                    .filter_map(|p| current(&self.root, p).ok())
                    .map(|c| c.validity.not_after)
                    .min()
                {
                    line.push_str(&format!(
                        "; the certificates in use stay valid until {}",
                        date(earliest)
                    ));
                }
            }
            line.push_str(&format!("; retrying in {delay} s"));
            lines.push(line);
        }
        if let Some(s) = state {
            s.last_error = Some((now, text));
            let _ = s.save(&self.root);
        }
        Pass {
            lines,
            sleep: delay,
            ready: false,
        }
    }
}

/// The console line of an enrollment.
fn enrolled_line(i: &Installed, role: Role, server: &Server) -> String {
    format!(
        "cairn: key agent enrolled {} ({}) with {}:{}: {} certificates, valid until {}",
        i.node,
        role.as_str(),
        server.host,
        server.port,
        i.profiles.len(),
        date(i.not_after)
    )
}

/// A Unix time as `YYYY-MM-DD HH:MM UTC`.
pub fn date(t: u64) -> String {
    let days = t / 86_400;
    let secs = t % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", secs / 3600, secs % 3600 / 60)
}

/// Tell systemd the service is ready (`sd_notify(READY=1)`), when it runs under one that
/// waits for it.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", &path)
    };
    if let Err(e) = sent {
        eprintln!("cairn: key agent: telling systemd it is ready: {e}");
    }
}

/// Run until the process ends: passes, their lines on stdout, ready once.
pub fn run(root: &Path, settings: Settings) -> ! {
    let mut agent = Agent::new(root, settings, Clock::system());
    let mut told = false;
    loop {
        let p = agent.pass();
        p.lines.iter().for_each(|l| println!("{l}"));
        if p.ready && !told {
            notify_ready();
            told = true;
        }
        std::thread::sleep(Duration::from_secs(p.sleep.max(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::date;

    #[test]
    fn dates_read_as_calendars_do() {
        assert_eq!(date(0), "1970-01-01 00:00 UTC");
        assert_eq!(date(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(date(1_798_675_200 + 3_600 * 13 + 60 * 7), "2026-12-31 13:07 UTC");
    }
}
