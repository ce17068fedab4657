//! `cairn-node`: parse the subcommand and dispatch.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use cairn_node::{apply, config::NodeConfig, health, render, update};

const USAGE: &str = "usage: cairn-node <command>

commands:
  firstboot                      take a newer node config from a config drive, then apply
                                 (run by cairn-firstboot.service every boot)
  apply                          choose this boot's node config and write what it renders
  check FILE                     validate a node.toml and print what it would write
  health GATE [--timeout SECS]   wait until GATE (etcd, containerd, wireguard, kubelet, sshd)
                                 passes (run by cairn-health-GATE.service)
  ssh-hostkeys                   make the node's SSH host keys, or mend them after a power
                                 loss (run by cairn-ssh-hostkeys.service every boot)
  prestart COMPONENT             mend COMPONENT's state that a power loss broke
                                 (containerd; run by its unit before it starts)
  ready                          print the ready line (run by cairn-ready.service)
  gate-failed GATE               after GATE failed: on a counted try of a new version,
                                 record why and reboot (cairn-gate-failed@GATE.service)
  boot-deadline                  on a counted try, reboot if boot-complete.target is not
                                 reached within cairn.boot_deadline= seconds of boot
                                 (default 900; cairn-boot-deadline.service)
  update SOURCE [--force] [--reboot]
                                 install the signed bundle at SOURCE (https://, http://
                                 or a file) into the inactive slot; --force allows a
                                 version that is not newer or failed before; --reboot
                                 reboots into it when it is installed
  update --status                which version runs, which is the fallback, which failed
                                 and why
  update --auto                  poll the node config's [update] source (index.json) and
                                 install a newer release; reboot as [update] reboot says
                                 (run by cairn-update.timer)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["firstboot"] => report(cairn_node::firstboot::firstboot(), "first boot"),
        ["apply"] => report(apply::apply(Path::new("/")), "applying the node config"),
        ["check", file] => {
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
        ["health", gate, rest @ ..] => {
            let Some(g) = health::Gate::parse(gate) else {
                eprint!("unknown gate {gate}\n{USAGE}");
                return ExitCode::from(2);
            };
            let text = std::fs::read_to_string(render::EFFECTIVE).unwrap_or_default();
            let config = match NodeConfig::parse(&text, render::EFFECTIVE) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!(
                        "cairn: health gate {gate} FAILED: no applied node config ({e}); did cairn-firstboot.service run?"
                    );
                    return ExitCode::FAILURE;
                }
            };
            let limit = match rest {
                [] => config
                    .health
                    .get(*gate)
                    .map_or(g.default_limit(), |s| Duration::from_secs(*s)),
                ["--timeout", s] => match s.parse() {
                    Ok(n) => Duration::from_secs(n),
                    Err(_) => {
                        eprintln!("--timeout takes whole seconds, not {s}");
                        return ExitCode::from(2);
                    }
                },
                _ => {
                    eprint!("{USAGE}");
                    return ExitCode::from(2);
                }
            };
            let probe = health::probe(g, &config, Path::new("/"));
            let mut gave_up = || g.unit().and_then(health::unit_failed);
            match health::run_watching(g, probe, limit, &mut gave_up, &mut |l| println!("{l}")) {
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
        ["gate-failed", gate] => {
            let Some(g) = health::Gate::parse(gate) else {
                eprint!("unknown gate {gate}\n{USAGE}");
                return ExitCode::from(2);
            };
            let unit = format!("cairn-health-{}.service", g.name());
            let reason = std::process::Command::new("journalctl")
                .args(["-b", "-u", &unit, "-o", "cat", "--no-pager", "-n", "100"])
                .output()
                .ok()
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .rfind(|l| l.contains("FAILED"))
                        .map(str::to_string)
                })
                .unwrap_or_else(|| format!("cairn: health gate {} FAILED ({unit} failed)", g.name()));
            let lines = update::on_gate_failure(Path::new("/"), &reason);
            if lines.is_empty() {
                println!(
                    "cairn: health gate {} failed on a version that is not on a counted try: nothing to roll back to; fix the node and run `systemctl restart {unit}`",
                    g.name()
                );
            } else {
                lines.iter().for_each(|l| println!("{l}"));
                reboot();
            }
            ExitCode::SUCCESS
        }
        ["update", "--status"] => match update::Target::discover().and_then(|t| update::status(&t)) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cairn: update status: {}", chain(&e));
                ExitCode::FAILURE
            }
        },
        ["update", "--auto"] => {
            let text = std::fs::read_to_string(render::EFFECTIVE).unwrap_or_default();
            let config = match NodeConfig::parse(&text, render::EFFECTIVE) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("cairn: update: no applied node config ({e}); did cairn-firstboot.service run?");
                    return ExitCode::FAILURE;
                }
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
            match result {
                Ok(update::AutoOutcome::Nothing(why)) => {
                    println!("cairn: update: {why}");
                    ExitCode::SUCCESS
                }
                Ok(update::AutoOutcome::Installed(i)) => {
                    reboot_by_policy(u.reboot, &i.manifest.version);
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
        ["update", rest @ ..] => {
            let mut opts = update::Options::default();
            let (mut source, mut then_reboot) = (None, false);
            for a in rest {
                match *a {
                    "--force" => opts.force = true,
                    "--reboot" => then_reboot = true,
                    s if !s.starts_with('-') && source.is_none() => source = Some(s),
                    _ => {
                        eprint!("{USAGE}");
                        return ExitCode::from(2);
                    }
                }
            }
            let Some(source) = source else {
                eprint!("{USAGE}");
                return ExitCode::from(2);
            };
            let result = (|| {
                let target = update::Target::discover()?;
                let keys = update::trusted_keys(Path::new(update::RELEASE_KEY), &target.state_dir)?;
                let mut input = update::open_source(source)?;
                update::install(&target, &keys, &mut input, &opts, &mut |l| println!("{l}"))
            })();
            match result {
                Ok(_) if then_reboot => {
                    println!("cairn: update: rebooting into the new version");
                    reboot();
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
        ["boot-deadline"] => {
            let root = Path::new("/");
            let Some(file) = update::counted_boot(root) else {
                println!("cairn: boot deadline: not a counted boot; nothing to watch");
                return ExitCode::SUCCESS;
            };
            let sys = cairn_node::system::Root::default();
            let Some(limit) = update::boot_deadline(&sys.cmdline().unwrap_or_default()) else {
                println!("cairn: boot deadline: off (cairn.boot_deadline=0)");
                return ExitCode::SUCCESS;
            };
            println!(
                "cairn: boot deadline: {file} must reach boot-complete.target within {}s of boot",
                limit.as_secs()
            );
            loop {
                let reached = std::process::Command::new("systemctl")
                    .args(["is-active", "--quiet", "boot-complete.target"])
                    .status()
                    .is_ok_and(|s| s.success());
                let up = sys.uptime().unwrap_or(0.0);
                if reached {
                    println!("cairn: boot deadline: boot-complete.target reached {up:.1}s after boot");
                    return ExitCode::SUCCESS;
                }
                if up >= limit.as_secs_f64() {
                    update::on_deadline(root, &file, limit)
                        .iter()
                        .for_each(|l| println!("{l}"));
                    reboot();
                    return ExitCode::FAILURE;
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        }
        ["ssh-hostkeys"] => match cairn_node::hostkeys::ensure(Path::new(cairn_node::hostkeys::DIR)) {
            Ok(reports) => {
                for r in reports {
                    println!("{}", r.line());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cairn: SSH host keys: {}", chain(&e));
                ExitCode::FAILURE
            }
        },
        ["prestart", component] => match cairn_node::mend::prestart(Path::new("/"), component) {
            Ok(lines) => {
                lines.iter().for_each(|l| println!("{l}"));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cairn: prestart {component}: {e}");
                ExitCode::FAILURE
            }
        },
        ["ready"] => {
            println!("{}", cairn_node::ready::line(&cairn_node::system::Root::default()));
            ExitCode::SUCCESS
        }
        ["-h" | "--help" | "help"] => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprint!("{USAGE}");
            ExitCode::from(2)
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
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

/// Ask systemd for a reboot without waiting for it.
fn reboot() {
    if let Err(e) = std::process::Command::new("systemctl")
        .args(["reboot", "--no-block"])
        .status()
    {
        eprintln!("cairn: systemctl reboot: {e}");
    }
}

/// Reboot into `version` as the node config says: now, at a time of day, or not at all.
fn reboot_by_policy(policy: cairn_node::config::RebootPolicy, version: &str) {
    use cairn_node::config::RebootPolicy;
    match policy {
        RebootPolicy::Now => {
            println!("cairn: update: rebooting into {version} now ([update] reboot = \"now\")");
            reboot();
        }
        RebootPolicy::Never => {
            println!("cairn: update: {version} is installed; reboot to run it ([update] reboot = \"never\")");
        }
        RebootPolicy::At(h, m) => {
            let when = format!("{h:02}:{m:02}");
            match std::process::Command::new("shutdown").args(["-r", &when]).status() {
                Ok(s) if s.success() => {
                    println!("cairn: update: {version} is installed; rebooting into it at {when} (the reboot window)")
                }
                other => eprintln!("cairn: update: could not schedule the reboot at {when}: {other:?}"),
            }
        }
    }
}
