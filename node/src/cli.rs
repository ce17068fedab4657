//! The `cairn-node` command line: clap parses, [`run`] dispatches to the library. Every
//! subcommand is a thin call; what a command decides (the gate's failure reason, the boot
//! deadline's watch, the reboot policy) lives in the modules that own it.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::{apply, config::NodeConfig, health, render, update};

/// The node agent of a Cairn image: first boot, health gates, updates.
#[derive(Debug, Parser)]
#[command(name = "cairn-node", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The health gates, as the command line names them.
const GATES: [&str; 6] = cairn_node_config::HEALTH_GATES;

#[derive(Debug, Subcommand)]
enum Command {
    /// Take a newer node config from a config drive, then apply (cairn-firstboot.service,
    /// every boot).
    Firstboot,
    /// Choose this boot's node config and write what it renders.
    Apply,
    /// Validate a node.toml and print the files it would write.
    Check {
        /// The node config.
        file: String,
    },
    /// Wait until a health gate passes (cairn-health-GATE.service).
    Health {
        /// The gate.
        #[arg(value_parser = GATES)]
        gate: String,
        /// Time limit in seconds; default: the node config's [health], else the gate's own.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// After a gate failed: on a counted try of a new version, record why and reboot
    /// (cairn-gate-failed@GATE.service).
    GateFailed {
        /// The gate.
        #[arg(value_parser = GATES)]
        gate: String,
    },
    /// On a counted try, reboot if boot-complete.target is not reached within
    /// cairn.boot_deadline= seconds of boot (default 900; cairn-boot-deadline.service).
    BootDeadline,
    /// Make the node's SSH host keys, or mend them after a power loss
    /// (cairn-ssh-hostkeys.service, every boot).
    SshHostkeys,
    /// Mend a component's state a power loss broke (containerd; run by its unit first).
    Prestart {
        /// The component.
        component: String,
    },
    /// Print the ready line (cairn-ready.service).
    Ready,
    /// Write Cairn's metrics for node-exporter's textfile collector
    /// (/run/cairn/metrics/cairn.prom; cairn-metrics.timer).
    Metrics {
        /// Print them instead.
        #[arg(long)]
        print: bool,
    },
    /// Enroll with the keyserver of node.toml's [key-agent], then keep the node's
    /// certificates renewed (cairn-key-agent.service).
    KeyAgent {
        /// Show each certificate, its end, when it renews and the last failure.
        #[arg(long)]
        status: bool,
    },
    /// The reboot lease in the cluster's etcd: who holds it, or take, keep or give up
    /// this node's slot (https endpoints use the key agent's etcd-client certificate).
    RebootLease {
        /// What to do.
        #[arg(value_parser = ["status", "take", "keep", "release"])]
        action: String,
        /// An etcd client URL (repeatable; tried in order) [default: the node config's
        /// [update] lease].
        #[arg(long = "etcd", value_name = "URL")]
        etcd: Vec<String>,
        /// The node taking or giving up a slot [default: this host's name].
        #[arg(long)]
        node: Option<String>,
        /// How many nodes may hold a slot at once [default: the node config's, else 1].
        #[arg(long)]
        max: Option<u32>,
        /// Seconds a slot stays held without being kept [default: the node config's, else 900].
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Make etcd's users and roles (the control plane: everything; workers' etcd-lease
    /// certificates: the reboot lease only) and turn its authentication on
    /// (cairn-etcd-auth.service, on control-plane nodes whose etcd TLS is the key agent's).
    EtcdAuth,
    /// Install a signed bundle into the inactive slot, poll for one, or show the slots.
    Update {
        /// The bundle: https://, http:// or a file.
        #[arg(required_unless_present_any = ["status", "auto"], conflicts_with_all = ["status", "auto"])]
        source: Option<String>,
        /// Allow a version that is not newer, or that failed here before.
        #[arg(long)]
        force: bool,
        /// Reboot into the new version once it is installed.
        #[arg(long)]
        reboot: bool,
        /// Which version runs, which is the fallback, which failed and why.
        #[arg(long, conflicts_with = "auto")]
        status: bool,
        /// Poll the node config's [update] source and install a newer release; reboot as
        /// [update] reboot says (cairn-update.timer).
        #[arg(long)]
        auto: bool,
    },
}

/// Parse `argv` (with the program name) and run the command.
pub fn run(argv: Vec<OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    match cli.command {
        Command::Firstboot => report(crate::firstboot::firstboot(), "first boot"),
        Command::Apply => report(apply::apply(Path::new("/")), "applying the node config"),
        Command::Check { file } => check(&file),
        Command::Health { gate, timeout } => health_gate(&gate, timeout),
        Command::GateFailed { gate } => {
            let g = health::Gate::parse(&gate).expect("clap checked the gate");
            update::gate_failed(Path::new("/"), g, &mut |l| println!("{l}"));
            ExitCode::SUCCESS
        }
        Command::BootDeadline => {
            let sys = crate::system::Root::default();
            if update::watch_deadline(Path::new("/"), &sys, &mut |l| println!("{l}")) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::SshHostkeys => match crate::hostkeys::ensure(Path::new(crate::hostkeys::DIR)) {
            Ok(reports) => {
                reports.iter().for_each(|r| println!("{}", r.line()));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cairn: SSH host keys: {}", chain(&e));
                ExitCode::FAILURE
            }
        },
        Command::Prestart { component } => match crate::mend::prestart(Path::new("/"), &component) {
            Ok(lines) => {
                lines.iter().for_each(|l| println!("{l}"));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cairn: prestart {component}: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Ready => {
            println!("{}", crate::ready::line(&crate::system::Root::default()));
            ExitCode::SUCCESS
        }
        Command::Metrics { print } => {
            let config = match applied("metrics") {
                Ok(c) => c,
                Err(code) => return code,
            };
            let text = crate::metrics::render(&crate::metrics::gather(
                Path::new("/"),
                &config,
                cairn_signing::time::now(),
            ));
            if print {
                print!("{text}");
                return ExitCode::SUCCESS;
            }
            match crate::metrics::write(Path::new("/"), &text) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cairn: metrics: writing {}/cairn.prom: {e}", crate::metrics::DIR);
                    ExitCode::FAILURE
                }
            }
        }
        Command::KeyAgent { status: true } => {
            match crate::key_agent::status::status(Path::new("/"), cairn_keys::Clock::system().now()) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cairn: key agent status: {}", chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Command::KeyAgent { status: false } => key_agent(),
        Command::RebootLease {
            action,
            etcd,
            node,
            max,
            ttl,
        } => reboot_lease(&action, &etcd, node, max, ttl),
        Command::EtcdAuth => etcd_auth(),
        Command::Update { status: true, .. } => match update::Target::discover().and_then(|t| update::status(&t)) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cairn: update status: {}", chain(&e));
                ExitCode::FAILURE
            }
        },
        Command::Update { auto: true, .. } => update_auto(),
        Command::Update {
            source, force, reboot, ..
        } => update_from(&source.expect("clap requires a source"), force, reboot),
    }
}

fn check(file: &str) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: reading {file}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match NodeConfig::parse(&text, file)
        .map_err(|e| e.to_string())
        .and_then(|c| render::plan(&c, &text).map_err(|e| format!("{file}: {e}")))
    {
        Ok(outputs) => {
            for o in outputs {
                println!("{} (mode {:o})", o.path, o.mode);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The applied node config (what firstboot wrote this boot).
fn applied(what: &str) -> Result<NodeConfig, ExitCode> {
    let text = std::fs::read_to_string(render::EFFECTIVE).unwrap_or_default();
    NodeConfig::parse(&text, render::EFFECTIVE).map_err(|e| {
        eprintln!("cairn: {what}: no applied node config ({e}); did cairn-firstboot.service run?");
        ExitCode::FAILURE
    })
}

fn health_gate(gate: &str, timeout: Option<u64>) -> ExitCode {
    let g = health::Gate::parse(gate).expect("clap checked the gate");
    let config = match applied(&format!("health gate {gate} FAILED")) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let limit = timeout.map(Duration::from_secs).unwrap_or_else(|| {
        config
            .health
            .get(gate)
            .map_or(g.default_limit(), |s| Duration::from_secs(*s))
    });
    let probe = health::probe(g, &config, Path::new("/"));
    let mut gave_up = || g.unit().and_then(health::unit_failed);
    let start = std::time::Instant::now();
    let result = health::run_watching(g, probe, limit, &mut gave_up, &mut |l| println!("{l}"));
    crate::metrics::record_gate(Path::new("/"), gate, result.is_ok(), start.elapsed().as_secs_f64());
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(line) => {
            eprintln!("{line}");
            ExitCode::FAILURE
        }
    }
}

fn key_agent() -> ExitCode {
    use crate::key_agent::{run, state};
    let config = match applied("key agent") {
        Ok(c) => c,
        Err(code) => return code,
    };
    if config.key_agent.is_none() && !state::enrolled(Path::new("/")) {
        println!("cairn: key agent: node.toml has no [key-agent] and the node never enrolled; nothing to do");
        run::notify_ready();
        return ExitCode::SUCCESS;
    }
    run::run(Path::new("/"), run::Settings::from_config(&config))
}

fn update_auto() -> ExitCode {
    let config = match applied("update") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(u) = config.update else {
        println!("cairn: update: no [update] source in the node config; nothing to poll");
        return ExitCode::SUCCESS;
    };
    let result = (|| {
        let target = update::Target::discover()?;
        let keys = update::trusted_keys(Path::new(update::RELEASE_KEY), &target.state_dir)?;
        update::auto(&target, &keys, &u.source, &mut |l| println!("{l}"))
    })();
    let now = cairn_signing::time::now();
    let record = |result: &str, version: Option<&str>, index_ok: bool| {
        crate::metrics::record_update(Path::new("/"), now, result, version, index_ok)
    };
    match &result {
        Ok(update::AutoOutcome::Nothing(why)) if why.starts_with("up to date") => record("up_to_date", None, true),
        Ok(update::AutoOutcome::Nothing(_)) => record("held_back", None, true),
        Ok(update::AutoOutcome::Installed(i)) => record("installed", Some(&i.manifest.version), true),
        Ok(update::AutoOutcome::Pending(v)) => record("pending", Some(v), true),
        Err(_) => record("failed", None, false),
    }
    match result {
        Ok(update::AutoOutcome::Nothing(why)) => {
            println!("cairn: update: {why}");
            ExitCode::SUCCESS
        }
        Ok(update::AutoOutcome::Installed(i)) => {
            reboot_into(&config.hostname, &u, &i.manifest.version, config.etcd.is_some());
            ExitCode::SUCCESS
        }
        Ok(update::AutoOutcome::Pending(version)) => {
            println!("cairn: update: {version} is installed and waits for its first boot");
            reboot_into(&config.hostname, &u, &version, config.etcd.is_some());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "cairn: update from {} FAILED: {}; the running version stays the default",
                u.source,
                chain(&e)
            );
            ExitCode::FAILURE
        }
    }
}

/// Reboot into `version` as `[update]` says, taking the cluster's reboot lease first when
/// the node config has one, and, for a node with an etcd member (`member`), seeing every
/// member healthy (no lease, no reboot: the next run asks again).
fn reboot_into(node: &str, u: &crate::config::Update, version: &str, member: bool) {
    let mut log = |l: &str| println!("{l}");
    if let Some(lease) = &u.lease {
        let etcd = match crate::lease::etcd_for(lease, Path::new("/")) {
            Ok(e) => e,
            Err(e) => {
                log(&format!(
                    "cairn: update: {version} is installed, but the reboot lease cannot be asked for ({e}); not rebooting"
                ));
                return;
            }
        };
        let patience = crate::lease::Patience {
            every: crate::lease::ASK_EVERY,
            at_most: crate::lease::ASK_FOR_AT_MOST,
            sleep: Box::new(std::thread::sleep),
        };
        if !crate::lease::before_reboot(&etcd, lease, node, version, member, patience, &mut log) {
            return;
        }
    }
    update::reboot_by_policy(u.reboot, version, &mut log);
}

fn update_from(source: &str, force: bool, then_reboot: bool) -> ExitCode {
    let opts = update::Options { force };
    let result = (|| {
        let target = update::Target::discover()?;
        let keys = update::trusted_keys(Path::new(update::RELEASE_KEY), &target.state_dir)?;
        let mut input = update::open_source(source)?;
        update::install(&target, &keys, &mut input, &opts, &mut |l| println!("{l}"))
    })();
    match result {
        Ok(_) if then_reboot => {
            println!("cairn: update: rebooting into the new version");
            crate::system::reboot();
            ExitCode::SUCCESS
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "cairn: update from {source} FAILED: {}; the running version stays the default",
                chain(&e)
            );
            ExitCode::FAILURE
        }
    }
}

/// Print a step's log lines, or its failure with every cause.
fn report(result: Result<Vec<String>, apply::ApplyError>, what: &str) -> ExitCode {
    match result {
        Ok(lines) => {
            lines.iter().for_each(|l| println!("{l}"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cairn: {what} failed: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

fn etcd_auth() -> ExitCode {
    let config = match applied("etcd auth") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(etcd) = config
        .etcd
        .as_ref()
        .filter(|e| e.tls == Some(cairn_node_config::EtcdTls::from_key_agent()))
    else {
        println!("cairn: etcd auth: nothing to do (no etcd member here whose TLS is the key agent's)");
        return ExitCode::SUCCESS;
    };
    // The node's own member, on loopback (its etcd-server certificate names 127.0.0.1).
    let url = format!("https://127.0.0.1:{}", etcd.client_urls[0].port);
    let tls = crate::etcd::ClientTls::from_key_agent(Path::new("/"));
    let client = match crate::etcd::Etcd::new(&[url], Some(&tls), Duration::from_secs(10)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cairn: etcd auth FAILED: {e}");
            return ExitCode::FAILURE;
        }
    };
    let members: Vec<String> = etcd.initial_cluster.keys().cloned().collect();
    match crate::etcd_auth::set_up(&client, &members, Some(Path::new(crate::etcd_auth::DONE_FILE))) {
        Ok(done) => {
            let added = if done.as_before {
                format!("{} users, as set up before", done.users)
            } else if done.added.is_empty() {
                format!("{} users, none new", done.users)
            } else {
                format!("{} users, new: {}", done.users, done.added.join(", "))
            };
            println!(
                "cairn: etcd auth: on ({added}); {} may use {} only",
                cairn_keys::profiles::LEASE_USER,
                crate::etcd_auth::LEASE_PREFIX
            );
            if !done.skipped.is_empty() {
                println!(
                    "cairn: etcd auth: members without a user (not node names): {}",
                    done.skipped.join(", ")
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cairn: etcd auth FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn reboot_lease(action: &str, urls: &[String], node: Option<String>, max: Option<u32>, ttl: Option<u64>) -> ExitCode {
    use crate::lease::{self, Acquired};
    let node = node.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_string()
    });
    // Without --etcd: the node config's [update] lease (cairn-lease-release.service).
    let configured = if urls.is_empty() {
        let config = match applied("reboot lease") {
            Ok(c) => c,
            Err(code) => return code,
        };
        match config.update.and_then(|u| u.lease) {
            Some(l) => Some(l),
            None if action == "release" || action == "status" => {
                println!("cairn: reboot lease: the node config has no [update] lease; nothing to do");
                return ExitCode::SUCCESS;
            }
            None => {
                eprintln!("cairn: reboot lease: give --etcd URL (the node config has no [update] lease)");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let max = max.or(configured.as_ref().map(|l| l.slots)).unwrap_or(1);
    let ttl = ttl.or(configured.as_ref().map(|l| l.ttl)).unwrap_or(900);
    let urls: Vec<String> = match &configured {
        Some(l) => l.etcd.iter().map(|u| u.to_string()).collect(),
        None => urls.to_vec(),
    };
    let tls = urls
        .iter()
        .any(|u| u.starts_with("https://"))
        .then(|| crate::etcd::ClientTls::from_key_agent(Path::new("/")));
    let etcd = match crate::etcd::Etcd::new(&urls, tls.as_ref(), Duration::from_secs(5)) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cairn: reboot lease: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Exit 2 when another node holds every slot, so scripts can wait and try again.
    let mut busy = false;
    let said = match action {
        "status" => lease::holders(&etcd).map(|h| {
            if h.is_empty() {
                "reboot lease: free".to_string()
            } else {
                h.iter()
                    .map(|h| {
                        format!(
                            "reboot lease: slot {} held by {} (etcd lease {:x})",
                            h.slot, h.node, h.lease
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }),
        "take" => lease::acquire(&etcd, &node, max, ttl).map(|a| match a {
            Acquired::Held(h) if h.taken_now => format!("reboot lease: {node} took slot {}", h.slot),
            Acquired::Held(h) => format!("reboot lease: {node} already holds slot {}", h.slot),
            Acquired::Busy(h) => {
                busy = true;
                format!(
                    "reboot lease: busy, held by {}",
                    h.iter().map(|h| h.node.as_str()).collect::<Vec<_>>().join(", ")
                )
            }
        }),
        "keep" => lease::keep(&etcd, &node).map(|kept| match kept {
            Some(secs) => format!("reboot lease: {node} keeps its slot for another {secs} s"),
            None => format!("reboot lease: {node} holds no slot"),
        }),
        _ => lease::release(&etcd, &node).map(|freed| {
            if freed {
                format!("reboot lease: {node} gave up its slot")
            } else {
                format!("reboot lease: {node} held no slot")
            }
        }),
    };
    match said {
        Ok(line) => {
            println!("{line}");
            if busy {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("cairn: reboot lease: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cairn-node").chain(args.iter().copied()))
    }

    #[test]
    fn every_command_the_units_run_parses() {
        Cli::command().debug_assert();
        // The command lines in units/*.service.
        for args in [
            &["firstboot"][..],
            &["health", "etcd"],
            &["health", "sshd", "--timeout", "30"],
            &["gate-failed", "containerd"],
            &["boot-deadline"],
            &["ssh-hostkeys"],
            &["prestart", "containerd"],
            &["ready"],
            &["update", "--auto"],
            &["key-agent"],
            &["key-agent", "--status"],
            &["update", "--status"],
            &["update", "http://10.0.0.5/node_0.2.0.cairn", "--force", "--reboot"],
        ] {
            parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        for bad in [
            &["health", "sshdd"][..],
            &["health", "etcd", "--timeout", "soon"],
            &["update"],
            &["update", "--status", "--auto"],
            &["update", "x.cairn", "--auto"],
            &["frobnicate"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        // Every command has its own --help.
        let help = parse(&["update", "--help"]).unwrap_err().to_string();
        assert!(
            help.contains("--reboot") && help.contains("Reboot into the new version"),
            "{help}"
        );
    }
}
