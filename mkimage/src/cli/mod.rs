//! The `cairn` command line: argument parsing and the human-facing output.
//!
//! `main.rs` only calls [`run`]; argv and the output streams are parameters, so tests
//! drive the CLI like a user would. The reference in `docs/cli.md` is generated from the
//! doc comments here (`cairn help-markdown`) and checked for drift by a test.

mod boot;
mod build;
mod flash;
mod keys;
mod packages;
mod release;

use std::ffi::OsString;
use std::io::Write;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

/// Build immutable, verity-protected OS images for Kubernetes nodes.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a signed GPT disk image from an image definition.
    ///
    /// Outputs `disk.raw`, `manifest.json`, `manifest.json.sig` and the update bundle
    /// `update.cairn` in the output directory, which is only touched once the build has
    /// succeeded.
    Build(build::BuildArgs),
    /// Boot a built image under QEMU with UEFI firmware (OVMF).
    ///
    /// Runs on a copy-on-write overlay, so the image itself is never modified. The serial
    /// console is this terminal; SSH is forwarded to 127.0.0.1:<ssh-port>. When the node
    /// prints its ready line, the boot-phase budget is printed. Stop with Ctrl-C.
    Boot(boot::BootArgs),
    /// Create an ed25519 signing key pair.
    ///
    /// Writes the private key (PKCS#8 PEM, mode 0600) and the public key (SPKI PEM) beside
    /// it with the extension `.pub`. Both are readable by OpenSSL 3.
    Keygen(release::KeygenArgs),
    /// Check a build output against its signed manifest, or an update bundle alone.
    ///
    /// Verifies the signature first, then checks the disk's data ranges (each by its
    /// sha256, every other byte zero) and every payload's sha256, reads back the partition table, recomputes the dm-verity tree and checks
    /// the UKI command line; then the same for `update.cairn` and that it carries the
    /// same release. Given a `.cairn` file, checks that bundle alone (what a node will
    /// accept). Exits non-zero on the first mismatch.
    Verify(release::VerifyArgs),
    /// Write a verified image to a whole disk, a USB stick or an image file.
    ///
    /// Checks the manifest's signature first, then refuses a target that is not a whole
    /// disk or a regular file, that is mounted, swapped on or held by device-mapper, that
    /// holds the running system, is read-only, smaller than the image or has other than
    /// 512-byte sectors. Shows the disk (model, size, partitions) and asks unless --yes.
    /// Writes only the image's data ranges (each checked against its signed sha256; the
    /// rest of the image is zero), the first MiB last, with progress once a second; reads
    /// every range back past the page cache; asks the kernel to re-read the partition
    /// table. On a failure the partition table is wiped so the disk never boots
    /// half-written. A file target is written beside its name and renamed once verified.
    Flash(flash::FlashArgs),
    /// Publish a build's update bundle for nodes to fetch from a static web server.
    ///
    /// Verifies `update.cairn` with the release key, copies it to
    /// `DIR/<image>/<image>_<version>.cairn`, then writes `DIR/<image>/index.json` (latest
    /// version, every release, and when the index expires) signed in `index.json.sig`.
    /// Nodes refuse an index they cannot verify or whose time has passed: publish again
    /// (the same build is fine) before it expires. Serve DIR with any web server
    /// (`python3 -m http.server -d DIR`, nginx) and point nodes at it with
    /// `[update] source = "http://HOST/<image>/"` in node.toml.
    Publish(release::PublishArgs),
    /// Resolve a Debian root's packages and write its lock file.
    ///
    /// With a lock that answers the definition and whose packages are still to be had, this
    /// only fetches them and builds the tree. A missing or stale lock is resolved anew, with
    /// the versions still served kept, and the packages that moved are listed. `--update`
    /// resolves the newest versions on purpose. The tree lands in the cache, so the next
    /// `cairn build` starts warm.
    Lock(packages::LockArgs),
    /// The package store: export the packages of locks as an apt repository.
    #[command(subcommand)]
    Store(packages::StoreCommand),
    /// Show what the build cache holds, or prune it.
    ///
    /// Without a subcommand, lists the package store, the cached root trees (with the lock
    /// each answers) and leftovers, with what each costs on disk.
    Cache(packages::CacheArgs),
    /// Check a kernel's config against what Cairn needs (kernel-config/cairn.config).
    ///
    /// Lists every missing option with its class and exits non-zero when any is missing.
    /// Builds of Debian roots run the same check on the tree's /boot/config-*.
    CheckKernel(build::CheckKernelArgs),
    /// Write a config drive that gives one node its identity at first boot.
    ///
    /// Validates NODE.toml (see docs/node-config.md) and writes a volume labelled CAIRN
    /// holding it as node.toml, plus node.toml.sig with --sign. Attach it to the node (a USB
    /// stick, a second virtual disk, `cairn boot --config-drive FILE`); the node reads it on
    /// every boot and takes it when its generation is higher than the saved one.
    ConfigDrive(release::ConfigDriveArgs),
    /// The keyserver: the cluster's certificate authorities and its audit log.
    #[command(subcommand)]
    Keyserver(keys::KeyserverCommand),
    /// One-time tokens that let a new node enroll with the keyserver.
    #[command(subcommand)]
    Token(keys::TokenCommand),
    /// Sign an admin's SSH key with the keyserver's user CA, for logging in to every node.
    ///
    /// Nodes that enrolled with the keyserver trust its SSH user CA (sshd's
    /// `TrustedUserCAKeys`), so the certificate logs in without authorized_keys. It names
    /// the accounts it may log in as and lives 8 hours unless --ttl says otherwise. ssh
    /// finds it beside the key by itself.
    SshCert(keys::SshCertArgs),
    /// Print this CLI's reference as Markdown (the source of docs/cli.md).
    #[command(hide = true)]
    HelpMarkdown,
}

/// Run the CLI with `argv` (including the program name). Returns the exit code.
pub fn run(argv: Vec<OsString>, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let code = e.exit_code();
            let text = e.render().ansi().to_string();
            let _ = if code == 0 {
                write!(out, "{text}")
            } else {
                write!(err, "{text}")
            };
            return code;
        }
    };
    match dispatch(cli, out, err) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            for cause in e.chain().skip(1) {
                let _ = writeln!(err, "  caused by: {cause}");
            }
            1
        }
    }
}

fn dispatch(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    match cli.command {
        Command::Build(a) => build::build(a, out, err),
        Command::Boot(a) => boot::boot(a, out, err),
        Command::Keygen(a) => release::keygen(a, out, err),
        Command::Verify(a) => release::verify(a, out, err),
        Command::Flash(a) => flash::flash(a, out, err),
        Command::Publish(a) => release::publish(a, out, err),
        Command::Lock(a) => packages::lock(a, out, err),
        Command::Store(c) => packages::store(c, out, err),
        Command::Cache(a) => packages::cache(a, out, err),
        Command::CheckKernel(a) => build::check_kernel(a, out, err),
        Command::ConfigDrive(a) => release::config_drive(a, out, err),
        Command::Keyserver(c) => keys::keyserver(c, out, err),
        Command::Token(c) => keys::token(c, out, err),
        Command::SshCert(a) => keys::ssh_cert(a, out),
        Command::HelpMarkdown => {
            write!(out, "{}", help_markdown())?;
            Ok(())
        }
    }
}

/// One command's section of the reference: its long help under its full name.
fn section(s: &mut String, full_name: &str, cmd: &mut clap::Command) {
    s.push_str(&format!("## `{full_name}`\n\n```text\n"));
    let help = cmd.clone().bin_name(full_name).render_long_help().to_string();
    s.push_str(help.trim_end());
    s.push_str("\n```\n\n");
}

/// The CLI reference in Markdown, generated from the clap definitions.
pub fn help_markdown() -> String {
    let mut cmd = Cli::command();
    let mut s = String::from(
        "# `cairn` command reference\n\n<!-- generated by `cairn help-markdown`; a test checks it matches -->\n\n",
    );
    s.push_str(&format!(
        "{}\n\n",
        cmd.get_about().map(|a| a.to_string()).unwrap_or_default()
    ));
    for sub in cmd.get_subcommands_mut() {
        if sub.is_hide_set() {
            continue;
        }
        let name = sub.get_name().to_string();
        section(&mut s, &format!("cairn {name}"), sub);
        // Groups (`cairn token create`, …): each of their commands has a section too.
        for nested in sub.get_subcommands_mut() {
            let nested_name = nested.get_name().to_string();
            if nested_name != "help" {
                section(&mut s, &format!("cairn {name} {nested_name}"), nested);
            }
        }
    }
    s
}
