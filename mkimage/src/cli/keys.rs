//! `cairn keyserver` and `cairn token`: the cluster's certificate authorities and the
//! one-time tokens that let new nodes enroll (the keyserver's state directory, on the admin
//! machine).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use cairn_keyserver::tokens::{self, TokenState};
use cairn_keyserver::{ca, Keyserver};
use cairn_signing::time::format_utc;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(super) enum KeyserverCommand {
    /// Make a keyserver's state directory: every certificate authority of the cluster.
    ///
    /// Creates X.509 CAs (ECDSA P-256, ten years) for the keyserver and node identities,
    /// etcd peers, etcd clients and Kubernetes, and SSH CAs (ed25519) for host and user
    /// certificates. Keys are written 0600. Prints the keyserver CA's fingerprint (node.toml's
    /// `[key-agent] ca-fingerprint`) and the line that makes `ssh` trust every node's host
    /// certificate. Never overwrites a directory that already holds state.
    Init {
        /// The state directory to create.
        state: PathBuf,
        /// The cluster's name, in every CA's subject.
        #[arg(long)]
        cluster: String,
    },
    /// Serve enrollment over HTTPS (TLS 1.3) until stopped.
    ///
    /// Answers `GET /v1/ca`, `POST /v1/enroll`, `POST /v1/renew` (with the node's identity
    /// certificate) and `GET /healthz`. Its certificate comes
    /// from the keyserver CA for the names given, lives a day and is renewed as it goes;
    /// nodes check it against `[key-agent] ca-fingerprint`. Without --name (and --listen)
    /// it serves as STATE/serve.toml says (`listen = "[::]:8443"`, `names = [...]`), the
    /// file cairn-keyserver.service reads on a control-plane node.
    Serve {
        /// The state directory.
        state: PathBuf,
        /// Address and port to listen on [default: serve.toml's, else [::]:8443].
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// A name or address nodes reach the keyserver at (repeatable): the serving
        /// certificate names exactly these.
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
    },
    /// Let a locked node renew again.
    ///
    /// A node is locked when a renewal comes with an identity or generation older than
    /// the current one: two machines hold its key (a copied disk, a stolen key). Make sure
    /// the other copy is gone first; the node keeps the identity that renewed last. A node
    /// that cannot renew with that one needs a new token instead.
    Unlock {
        /// The state directory.
        state: PathBuf,
        /// The node.
        node: String,
    },
    /// Check every audit log's chain and print its records: the admin machine's, and that
    /// of each node that served this state (after it moved into the cluster and back).
    Audit {
        /// The state directory.
        state: PathBuf,
    },
}

pub(super) fn keyserver(command: KeyserverCommand, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    match command {
        KeyserverCommand::Init { state, cluster } => {
            let made = ca::init(&state, &cluster, cairn_signing::time::now())?;
            writeln!(out, "keyserver state  {} (cluster {cluster})", made.dir.display())?;
            writeln!(out, "ca-fingerprint   {}", made.keyserver_fingerprint)?;
            writeln!(out, "known_hosts      @cert-authority * {}", made.ssh_host_ca)?;
            writeln!(out, "ssh user CA      {}", made.ssh_user_ca)?;
            writeln!(
                out,
                "next             cairn token create --state {} --node NAME --role control-plane|worker",
                made.dir.display()
            )?;
        }
        KeyserverCommand::Serve { state, listen, names } => {
            let ks = Keyserver::open(&state)?;
            let settings = cairn_keyserver::listen::resolve(&state, listen, names)?;
            let (listen, names) = (settings.listen, settings.names);
            let server = cairn_keyserver::serve::Server::bind(ks, listen, &names)?;
            writeln!(
                err,
                "keyserver: serving {} on https://{} as {}",
                state.display(),
                server.local_addr(),
                names.join(", ")
            )?;
            server.run();
        }
        KeyserverCommand::Unlock { state, node } => {
            let ks = Keyserver::open(&state)?;
            let s = cairn_keyserver::renew::unlock(&ks, &node, &admin(), cairn_signing::time::now())?;
            writeln!(
                out,
                "unlocked {node}: generation {} with identity {} may renew",
                s.generation, s.identity_serial
            )?;
        }
        KeyserverCommand::Audit { state } => {
            let mut ks = Keyserver::open(&state)?;
            let replicas = ks.audit_replicas()?;
            let mut summary = Vec::new();
            for replica in replicas {
                ks.replica = replica.clone();
                let records = ks.audit_records()?;
                for r in &records {
                    writeln!(out, "{}", serde_json::to_string(r)?)?;
                }
                summary.push(format!("{} records in audit/{replica}.jsonl", records.len()));
            }
            if summary.is_empty() {
                writeln!(out, "# no audit log")?;
            } else {
                writeln!(out, "# {}, chain intact", summary.join(", "))?;
            }
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Make a one-time token that lets NODE enroll with the keyserver in ROLE.
    ///
    /// Prints the token on standard output, once: it is stored only as a hash. Put it in
    /// the node's node.toml (`[key-agent] bootstrap-token`) on its config drive. The token
    /// works once, for that node and role, until it expires.
    Create {
        /// The keyserver's state directory.
        #[arg(long)]
        state: PathBuf,
        /// The node's name (its node.toml hostname).
        #[arg(long)]
        node: String,
        /// The node's role: control-plane or worker.
        #[arg(long)]
        role: String,
        /// How long the token may wait to be used: a number and s, m, h or d (at most 30d).
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
    /// List the tokens: id, node, role, state and expiry (never the secrets).
    List {
        /// The keyserver's state directory.
        #[arg(long)]
        state: PathBuf,
    },
    /// Withdraw a token that has not been used.
    Revoke {
        /// The keyserver's state directory.
        #[arg(long)]
        state: PathBuf,
        /// The token's id (the part after `ck1.`).
        id: String,
    },
}

/// Who runs the command, for the audit log: the login name, else the user id.
pub(super) fn admin() -> String {
    use std::os::unix::fs::MetadataExt;
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|u| !u.is_empty() && u.len() <= 64 && u.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| match std::fs::metadata("/proc/self") {
            Ok(m) => format!("uid:{}", m.uid()),
            Err(_) => "unknown".into(),
        })
}

pub(super) fn token(command: TokenCommand, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    let now = cairn_signing::time::now();
    match command {
        TokenCommand::Create { state, node, role, ttl } => {
            let ks = Keyserver::open(&state)?;
            let role = cairn_keyserver::parse_role(&role)?;
            let ttl = cairn_keyserver::parse_duration(&ttl)?;
            let (token, record) = tokens::create(&ks, &node, role, ttl, &admin(), now)?;
            writeln!(out, "{token}")?;
            writeln!(
                err,
                "token {} for {} ({}), valid until {}; shown once: put it in the node's node.toml as [key-agent] bootstrap-token",
                record.id,
                record.node,
                role.as_str(),
                format_utc(record.not_after)
            )?;
        }
        TokenCommand::List { state } => {
            let ks = Keyserver::open(&state)?;
            writeln!(
                out,
                "{:<10}  {:<24}  {:<13}  {:<28}  expires",
                "id", "node", "role", "state"
            )?;
            for r in tokens::list(&ks)? {
                let st = match &r.state {
                    TokenState::Issued if r.not_after < now => "expired".to_string(),
                    TokenState::Issued => "issued".to_string(),
                    TokenState::Claimed { at, .. } => format!("used {}", format_utc(*at)),
                    TokenState::Revoked { at, .. } => format!("revoked {}", format_utc(*at)),
                };
                writeln!(
                    out,
                    "{:<10}  {:<24}  {:<13}  {:<28}  {}",
                    r.id,
                    r.node,
                    r.role.as_str(),
                    st,
                    format_utc(r.not_after)
                )?;
            }
        }
        TokenCommand::Revoke { state, id } => {
            let ks = Keyserver::open(&state)?;
            let r = tokens::revoke(&ks, &id, &admin(), now)?;
            writeln!(out, "revoked token {} for {}", r.id, r.node)?;
        }
    }
    Ok(())
}

/// `cairn ssh-cert`.
#[derive(Debug, clap::Args)]
pub(super) struct SshCertArgs {
    /// The keyserver's state directory.
    state: PathBuf,
    /// The admin's ed25519 public key (`~/.ssh/id_ed25519.pub`).
    key: PathBuf,
    /// The account it may log in as on the nodes (repeatable).
    #[arg(long = "principal", value_name = "USER", default_value = "root")]
    principals: Vec<String>,
    /// How long the certificate lives (at most 7d).
    #[arg(long, default_value = "8h")]
    ttl: String,
    /// Where to write it (default: beside the key, `…-cert.pub`, where ssh looks for it).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub(super) fn ssh_cert(args: SshCertArgs, out: &mut dyn Write) -> Result<()> {
    let SshCertArgs {
        state,
        key,
        principals,
        ttl,
        out: dest,
    } = args;
    let ks = Keyserver::open(&state)?;
    let ttl = cairn_keyserver::parse_duration(&ttl)?;
    let line = std::fs::read_to_string(&key).map_err(|e| anyhow::anyhow!("reading {}: {e}", key.display()))?;
    let now = cairn_signing::time::now();
    let cert = cairn_keyserver::ssh::sign_user(&ks, line.trim(), &principals, ttl, &admin(), now)?;
    let dest = dest.unwrap_or_else(|| {
        let name = key
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = name.strip_suffix(".pub").unwrap_or(&name);
        key.with_file_name(format!("{stem}-cert.pub"))
    });
    cairn_signing::write_file_atomic(&dest, format!("{cert}\n").as_bytes(), 0o644)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", dest.display()))?;
    writeln!(
        out,
        "wrote {}: {} until {}",
        dest.display(),
        principals.join(", "),
        format_utc(now + ttl)
    )?;
    Ok(())
}
