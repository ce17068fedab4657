//! `cairn-node`: the command line lives in [`cairn_node::cli`]; this only hands it argv.

fn main() -> std::process::ExitCode {
    cairn_node::cli::run(std::env::args_os().collect())
}
