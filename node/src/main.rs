//! `cairn-node`: parse the subcommand and dispatch.

use std::process::ExitCode;

const USAGE: &str =
    "usage: cairn-node <command>\n\ncommands:\n  ready    print the ready line (run by cairn-ready.service)\n";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ready") => {
            println!("{}", cairn_node::ready::line(&cairn_node::system::Root::default()));
            ExitCode::SUCCESS
        }
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
