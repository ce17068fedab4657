//! `cairn keygen`, `verify`, `publish` and `config-drive`: keys, checking a build,
//! publishing its bundle, and giving a node its identity.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::build::{self};

#[derive(Debug, clap::Args)]
pub(super) struct KeygenArgs {
    /// Private key file to write.
    #[arg(default_value = "cairn-release.pem")]
    private_key: PathBuf,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
}

pub(super) fn keygen(args: KeygenArgs, out: &mut dyn Write, _err: &mut dyn Write) -> Result<()> {
    let KeygenArgs { private_key, force } = args;
    let key = cairn_signing::PrivateKey::generate();
    let public = build::public_path_for(&private_key);
    key.write_pair(&private_key, &public, force)?;
    writeln!(
        out,
        "private key  {} (mode 0600; keep it secret)",
        private_key.display()
    )?;
    writeln!(out, "public key   {}", public.display())?;
    writeln!(out, "fingerprint  {}", key.public().fingerprint())?;
    writeln!(
        out,
        "use it with  cairn build DEFINITION --out DIR --key {}",
        private_key.display()
    )?;
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(super) struct VerifyArgs {
    /// A build output directory (manifest.json, disk.raw, update.cairn) or an update
    /// bundle file.
    #[arg(value_name = "DIR|BUNDLE")]
    dir: PathBuf,
    /// Public key the manifest must be signed with.
    #[arg(long, value_name = "PUBLIC_KEY")]
    key: PathBuf,
}

pub(super) fn verify(args: VerifyArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    let VerifyArgs { dir, key } = args;
    let public = cairn_signing::PublicKey::read(&key)?;
    let context = || format!("verifying {}", dir.display());
    let (name, version, root_hash, development_key, checks) = if dir.is_dir() {
        let (m, checks) = crate::release::verify::verify_dir(&dir, &public).with_context(context)?;
        (m.name, m.version, m.root_hash, m.development_key, checks)
    } else {
        let (m, checks) = crate::release::verify::verify_bundle(&dir, &public).with_context(context)?;
        (m.name, m.version, m.root_hash, m.development_key, checks)
    };
    for c in checks {
        writeln!(out, "ok  {c}")?;
    }
    writeln!(out, "verified {name} {version} (root hash {root_hash})")?;
    if development_key {
        writeln!(err, "warning: this image is signed with a development key")?;
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(super) struct PublishArgs {
    /// A build output directory (holding update.cairn) or a bundle file.
    #[arg(value_name = "OUT|BUNDLE")]
    out: PathBuf,
    /// The directory a web server serves.
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
    /// The release private key that signed the bundle; it signs the index too. Give a
    /// second --key during a key rotation, so nodes that trust either key take the index.
    #[arg(long, value_name = "PRIVATE_KEY", required = true)]
    key: Vec<PathBuf>,
    /// How many days the index stays valid.
    #[arg(long, value_name = "DAYS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3650))]
    valid_days: u64,
    /// Publish a development build (`cairn build --dev`), e.g. for a test fleet; refused
    /// without it.
    #[arg(long)]
    allow_development: bool,
}

pub(super) fn publish(args: PublishArgs, out: &mut dyn Write, _err: &mut dyn Write) -> Result<()> {
    let PublishArgs {
        out: src,
        to,
        key,
        valid_days,
        allow_development,
    } = args;
    let keys = key
        .iter()
        .map(|k| cairn_signing::PrivateKey::read(k).with_context(|| format!("reading the release key {}", k.display())))
        .collect::<Result<Vec<_>>>()?;
    let p = crate::release::publish::publish(&src, &to, &keys, valid_days * 86400, allow_development)
        .with_context(|| format!("publishing {}", src.display()))?;
    let latest = p.index.release(&p.index.latest).expect("an index names its latest");
    if p.unchanged {
        writeln!(
            out,
            "already published: {} {} (the index is signed anew)",
            p.index.name, latest.version
        )?;
    }
    writeln!(
        out,
        "index    {} (signed by {}; expires {})",
        p.dir.join(cairn_signing::bundle::INDEX_FILE).display(),
        keys.iter()
            .map(|k| k.public().fingerprint())
            .collect::<Vec<_>>()
            .join(", "),
        p.index.expires
    )?;
    for r in &p.index.releases {
        let mark = if r.version == p.index.latest { "  (latest)" } else { "" };
        writeln!(
            out,
            "release  {} {:>8.1} MiB  {}{mark}",
            r.version,
            r.size as f64 / 1048576.0,
            p.dir.join(&r.file).display()
        )?;
    }
    writeln!(
        out,
        "serve {} over HTTP(S) and set in node.toml:  [update] source = \"http://HOST/{}/\"",
        to.display(),
        p.index.name
    )?;
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(super) struct ConfigDriveArgs {
    /// The node config to put on the drive.
    #[arg(required_unless_present = "cluster", conflicts_with = "cluster")]
    node: Option<PathBuf>,
    /// Write one drive per node of this cluster file instead (docs/cluster.md): OUT is then
    /// a directory, which gets NAME.toml and NAME.img for every node.
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// The drive image to write (replaced if it exists); with --cluster, the directory.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// File system of the drive.
    #[arg(long, value_enum, default_value = "fat")]
    format: crate::release::configdrive::DriveFormat,
    /// Sign node.toml with this ed25519 key (PKCS#8 PEM, as `cairn keygen` writes);
    /// required by images built with a node-config key.
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
    /// Enroll the node with the keyserver whose state is STATE: register what its
    /// certificates may name (from NODE.toml), make a one-time token, and put the token
    /// and the keyserver CA's fingerprint in the drive's node.toml ([key-agent] server
    /// must say where the node reaches the keyserver).
    #[arg(long, value_name = "STATE")]
    keyserver: Option<PathBuf>,
    /// How long the token lives (with --keyserver): until the node first boots.
    #[arg(long, value_name = "DURATION", default_value = "24h", requires = "keyserver")]
    token_ttl: String,
}

/// node.toml's text with `[key-agent]`'s ca-fingerprint and bootstrap-token set (the
/// rest of the file, comments included, as written).
fn with_key_agent(text: &str, file: &str, fingerprint: &str, token: &str) -> Result<String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    let table = doc
        .get_mut("key-agent")
        .and_then(|t| t.as_table_mut())
        .filter(|t| t.contains_key("server"))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{file} has no [key-agent] server, so the node would not know where the keyserver is\n  hint: add [key-agent] with server = \"https://HOST:PORT\" (the address nodes reach `cairn keyserver serve` at); --keyserver fills in the rest"
            )
        })?;
    table["ca-fingerprint"] = toml_edit::value(fingerprint);
    table["bootstrap-token"] = toml_edit::value(token);
    Ok(doc.to_string())
}

pub(super) fn config_drive(args: ConfigDriveArgs, out: &mut dyn Write, _err: &mut dyn Write) -> Result<()> {
    let ConfigDriveArgs {
        node,
        cluster,
        out: drive,
        format,
        sign,
        keyserver,
        token_ttl,
    } = args;
    let opts = DriveOptions {
        format,
        sign,
        keyserver,
        token_ttl,
    };
    match (node, cluster) {
        (Some(node), _) => {
            let text = std::fs::read_to_string(&node).with_context(|| format!("reading {}", node.display()))?;
            one_drive(text, &node.display().to_string(), &drive, &opts, out)
        }
        (None, Some(file)) => cluster_drives(&file, &drive, &opts, out),
        (None, None) => unreachable!("clap requires NODE or --cluster"),
    }
}

/// How drives are written.
struct DriveOptions {
    format: crate::release::configdrive::DriveFormat,
    sign: Option<PathBuf>,
    keyserver: Option<PathBuf>,
    token_ttl: String,
}

/// One drive per node of the cluster file `file`, in `dir`. Every node.toml is made and
/// checked before the keyserver registers any node or a drive is written.
fn cluster_drives(
    file: &std::path::Path,
    dir: &std::path::Path,
    opts: &DriveOptions,
    out: &mut dyn Write,
) -> Result<()> {
    let cluster = crate::cluster::Cluster::read(file)?;
    if cluster.keyserver.is_some() != opts.keyserver.is_some() {
        anyhow::bail!(
            "{}: {}\n  hint: a cluster with `keyserver = \"https://…\"` takes --keyserver STATE (its state directory), one without takes neither",
            file.display(),
            if cluster.keyserver.is_some() {
                "the cluster has a keyserver, but no --keyserver STATE was given to enroll its nodes with"
            } else {
                "--keyserver was given, but the cluster file names no keyserver for nodes to reach"
            }
        );
    }
    let mut texts = Vec::new();
    for n in &cluster.nodes {
        let text = cluster.node_toml(n);
        let label = format!("{} (node {})", file.display(), n.name);
        // The same checks one_drive makes, with a stand-in token, before anything is written.
        let trial = match &cluster.keyserver {
            Some(_) => with_key_agent(
                &text,
                &label,
                &format!("sha256:{}", "00".repeat(32)),
                &cairn_keys::Token::generate(&mut rand_core::OsRng).to_string(),
            )?,
            None => text.clone(),
        };
        let config = cairn_node_config::NodeConfig::parse(&trial, &label).map_err(|e| anyhow::anyhow!("{e}"))?;
        cairn_node_config::render::plan(&config, &trial).map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
        texts.push((n.name.clone(), label, text));
    }
    // Every drive's target before any node is registered or any drive written.
    for n in &cluster.nodes {
        crate::release::configdrive::check_target(&dir.join(format!("{}.img", n.name)))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, label, text) in texts {
        let toml = dir.join(format!("{name}.toml"));
        let tmp = dir.join(format!(".{name}.toml.tmp"));
        std::fs::write(&tmp, &text)
            .and_then(|_| std::fs::rename(&tmp, &toml))
            .with_context(|| format!("writing {}", toml.display()))?;
        one_drive(text, &label, &dir.join(format!("{name}.img")), opts, out)?;
    }
    writeln!(
        out,
        "cluster {}: {} drives in {} (generation {})",
        cluster.name,
        cluster.nodes.len(),
        dir.display(),
        cluster.generation
    )?;
    Ok(())
}

/// Write the drive `drive` for the node config `text` (from `file`, for messages).
fn one_drive(
    mut text: String,
    file: &str,
    drive: &std::path::Path,
    opts: &DriveOptions,
    out: &mut dyn Write,
) -> Result<()> {
    let DriveOptions {
        format,
        sign,
        keyserver,
        token_ttl,
    } = opts;
    let format = *format;
    let file = file.to_string();
    // What can fail without the keyserver fails before it registers the node or makes a
    // token: a target that is a device (or any other non-file), an unreadable signing key.
    crate::release::configdrive::check_target(drive)?;
    let key = match &sign {
        Some(k) => Some((
            k,
            cairn_signing::PrivateKey::read(k).with_context(|| format!("reading the signing key {}", k.display()))?,
        )),
        None => None,
    };
    let mut enrolled = None;
    if let Some(state) = &keyserver {
        let ks = cairn_keyserver::Keyserver::open(state)?;
        let ttl = cairn_keyserver::parse_duration(token_ttl)?;
        let fingerprint = cairn_keyserver::ca::fingerprint(&cairn_keyserver::ca::certificate(&ks, "keyserver")?)
            .map_err(|why| anyhow::anyhow!("the keyserver CA: {why}"))?;
        // Everything is checked with a stand-in token before the keyserver registers the
        // node or makes its token: a bad node.toml changes nothing there.
        let stand_in = cairn_keys::Token::generate(&mut rand_core::OsRng).to_string();
        let trial = with_key_agent(&text, &file, &fingerprint, &stand_in)?;
        let config = cairn_node_config::NodeConfig::parse(&trial, &file).map_err(|e| anyhow::anyhow!("{e}"))?;
        cairn_node_config::render::plan(&config, &trial).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        let now = cairn_signing::time::now();
        let record = cairn_keyserver::registry::record_for(&config);
        cairn_keyserver::registry::register(&ks, &record, &super::keys::admin(), now)?;
        let (token, rec) =
            cairn_keyserver::tokens::create(&ks, &config.hostname, config.role, ttl, &super::keys::admin(), now)?;
        text = with_key_agent(&text, &file, &fingerprint, &token.to_string())?;
        let addresses = record.addresses.len() + record.etcd_client_ips.len() + record.etcd_peer_ips.len();
        enrolled = Some(format!(
            "  key agent  token {} for {} ({}) until {}; registered with {addresses} addresses in {}",
            rec.id,
            rec.node,
            rec.role.as_str(),
            cairn_signing::time::format_utc(rec.not_after),
            state.display()
        ));
    }
    let config = cairn_node_config::NodeConfig::parse(&text, &file).map_err(|e| anyhow::anyhow!("{e}"))?;
    // What the node will render from it must be writable too (the second wall).
    cairn_node_config::render::plan(&config, &text).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    let mut files = vec![("node.toml".to_string(), text.clone().into_bytes())];
    let signed = match key {
        Some((k, key)) => {
            files.push(("node.toml.sig".to_string(), key.sign(text.as_bytes()).to_vec()));
            format!("signed with {} ({})", k.display(), key.public().fingerprint())
        }
        None => "not signed".to_string(),
    };
    let epoch = build::plan::effective_epoch(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref())?;
    crate::release::configdrive::write(drive, format, &files, epoch)
        .with_context(|| format!("writing the config drive {}", drive.display()))?;
    writeln!(
        out,
        "wrote {} ({:?}, label {}): node {} generation {}, role {}, {signed}",
        drive.display(),
        format,
        crate::release::configdrive::LABEL,
        config.hostname,
        config.generation,
        config.role.as_str()
    )?;
    if let Some(line) = &enrolled {
        writeln!(out, "{line}")?;
    }
    if let Some(w) = &config.wireguard {
        match &w.private_key {
            Some(k) => writeln!(
                out,
                "  wireguard  {} public key {} (give it to the peers)",
                w.interface,
                k.public().to_base64()
            )?,
            None => writeln!(
                out,
                "  wireguard  {}: the node makes its key at first boot; its peers come from the keyserver",
                w.interface
            )?,
        }
    }
    Ok(())
}
