//! `cairn-keyserver`: the keyserver as it runs on a control-plane node, from the state an
//! admin moved to `/var/lib/cairn/keyserver` (cairn-keyserver.service). The admin machine
//! runs the same server as `cairn keyserver serve`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cairn-keyserver", version, about = "Cairn's keyserver, inside the cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve enrollment and renewal over HTTPS until stopped.
    ///
    /// Listens and names itself as STATE/serve.toml says unless --listen and --name are
    /// given. Audit records are written under this machine's hostname.
    Serve {
        /// The state directory.
        #[arg(default_value = "/var/lib/cairn/keyserver")]
        state: PathBuf,
        /// Address and port to listen on.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// A name or address nodes reach the keyserver at (repeatable).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
    },
}

fn main() -> ExitCode {
    let Command::Serve { state, listen, names } = Cli::parse().command;
    match serve(&state, listen, names) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-keyserver: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(
    state: &std::path::Path,
    listen: Option<std::net::SocketAddr>,
    names: Vec<String>,
) -> Result<(), cairn_keyserver::KeyserverError> {
    let settings = cairn_keyserver::listen::resolve(state, listen, names)?;
    let mut ks = cairn_keyserver::Keyserver::open(state)?;
    ks.replica = replica_name();
    let server = cairn_keyserver::serve::Server::bind(ks, settings.listen, &settings.names)?;
    eprintln!(
        "cairn-keyserver: serving {} on https://{} as {}",
        state.display(),
        server.local_addr(),
        settings.names.join(", ")
    );
    server.run();
    Ok(())
}

/// This machine's hostname when it is a usable audit log name, else "node".
fn replica_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();
    if cairn_keyserver::check_node_name(&name).is_ok() {
        name
    } else {
        "node".into()
    }
}
