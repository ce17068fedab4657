//! `cairn-node`: parse the subcommand and dispatch.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use cairn_node::{apply, config::NodeConfig, health, render};

const USAGE: &str = "usage: cairn-node <command>

commands:
  firstboot                      take a newer node config from a config drive, then apply
                                 (run by cairn-firstboot.service every boot)
  apply                          choose this boot's node config and write what it renders
  check FILE                     validate a node.toml and print what it would write
  health GATE [--timeout SECS]   wait until GATE (etcd, containerd, wireguard, kubelet)
                                 passes (run by cairn-health-GATE.service)
  ready                          print the ready line (run by cairn-ready.service)
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
            match NodeConfig::parse(&text, file) {
                Ok(c) => {
                    for o in render::plan(&c, &text) {
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
            match health::run(g, probe, limit, &mut |l| println!("{l}")) {
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
