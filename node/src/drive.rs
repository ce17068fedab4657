//! Config drives: find one, read it, and decide whether it replaces the saved config.
//!
//! A drive is a FAT or ISO9660 volume found by its label:
//!
//! | label | format | files read |
//! |---|---|---|
//! | `CAIRN` | Cairn | `node.toml`, `node.toml.sig` (ed25519, raw 64 bytes) |
//! | `cidata` / `CIDATA` | cloud-init NoCloud | `meta-data`, `user-data`, `network-config` ([`crate::cloud`]) |
//! | `config-2` / `CONFIG-2` | OpenStack config drive | `openstack/latest/meta_data.json`, `network_data.json` |
//!
//! A Cairn drive replaces the saved config when its `generation` is higher. A cloud drive
//! has no generation: as with cloud-init, a different `instance-id` makes it newer, and it
//! is saved as the node.toml it stands for, one generation above the saved one.
//!
//! Reading is split from deciding: [`read_dir`] turns a mounted drive into [`DriveFiles`],
//! [`parse`] turns those into a validated [`Candidate`] (or one [`DriveError`] naming the
//! file and the problem), and [`decide`] compares it with the saved config. Only then does
//! `firstboot` write anything, atomically.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{ConfigError, NodeConfig};

/// Labels Cairn looks for, in order, with their format.
pub const LABELS: [(&str, Format); 5] = [
    ("CAIRN", Format::Cairn),
    ("cidata", Format::NoCloud),
    ("CIDATA", Format::NoCloud),
    ("config-2", Format::ConfigDrive),
    ("CONFIG-2", Format::ConfigDrive),
];

/// Largest file read from a drive.
pub const MAX_FILE: u64 = 1 << 20;

/// A drive's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Cairn's own: node.toml.
    Cairn,
    /// cloud-init NoCloud.
    NoCloud,
    /// OpenStack config drive.
    ConfigDrive,
}

impl Format {
    /// How the saved state names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Cairn => "cairn",
            Format::NoCloud => "nocloud",
            Format::ConfigDrive => "config-2",
        }
    }
}

/// The files of a drive that matter, by path relative to its root.
#[derive(Debug, Default, Clone)]
pub struct DriveFiles {
    /// Path → bytes.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Some other names at the drive's top (escaped), for messages.
    pub others: Vec<String>,
}

/// A drive that cannot be used: which file, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DriveError {
    /// What is wrong, naming the file.
    pub message: String,
}

impl From<ConfigError> for DriveError {
    fn from(e: ConfigError) -> DriveError {
        DriveError { message: e.to_string() }
    }
}

/// Whether a drive's config carried a valid signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed {
    /// Signed by the image's node-config key.
    Yes,
    /// Not signed (accepted: the image pins no node-config key).
    No,
}

/// A validated config from a drive.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Format it came in.
    pub format: Format,
    /// The node.toml text to save.
    pub text: String,
    /// The parsed config.
    pub config: NodeConfig,
    /// Signature state.
    pub signed: Signed,
    /// The cloud instance identity (cloud drives only).
    pub instance_id: Option<String>,
}

/// Most bytes read from one drive, all files together.
pub const MAX_TOTAL: u64 = 2 << 20;

/// Names listed when a drive lacks what its format needs.
const LISTED: usize = 16;

impl Format {
    /// The files a drive of this format is read for; nothing else on it is opened.
    pub fn files(self) -> &'static [&'static str] {
        match self {
            Format::Cairn => &["node.toml", "node.toml.sig"],
            Format::NoCloud => &["meta-data", "user-data", "network-config"],
            Format::ConfigDrive => &["openstack/latest/meta_data.json", "openstack/latest/network_data.json"],
        }
    }
}

/// Read the files `format` names from a mounted drive: regular files only (never through a
/// link, never a device or FIFO), each up to [`MAX_FILE`] bytes and [`MAX_TOTAL`] in all, so
/// a hostile drive costs a bounded amount of memory at first boot. `others` lists up to 16
/// other names at its top, for the message when the expected file is missing.
pub fn read_dir(dir: &Path, format: Format) -> std::io::Result<DriveFiles> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = DriveFiles::default();
    let mut total = 0u64;
    for name in format.files() {
        let path = dir.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            return Err(std::io::Error::other(format!("{name} is not a regular file")));
        }
        if meta.len() > MAX_FILE {
            return Err(std::io::Error::other(format!(
                "{name} is {} bytes, more than the {MAX_FILE} a drive's file may hold",
                meta.len()
            )));
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)?;
        let mut bytes = Vec::new();
        f.take(MAX_FILE + 1).read_to_end(&mut bytes)?;
        total += bytes.len() as u64;
        if bytes.len() as u64 > MAX_FILE || total > MAX_TOTAL {
            return Err(std::io::Error::other(format!(
                "{name} makes the drive larger than Cairn reads"
            )));
        }
        out.files.insert(name.to_string(), bytes);
    }
    let mut others: Vec<String> = std::fs::read_dir(dir)?
        .take(1024)
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().escape_debug().to_string())
        .filter(|n| !format.files().contains(&n.as_str()))
        .collect();
    others.sort();
    others.truncate(LISTED);
    out.others = others;
    Ok(out)
}

fn text<'a>(files: &'a DriveFiles, name: &str) -> Result<Option<&'a str>, DriveError> {
    match files.files.get(name) {
        None => Ok(None),
        Some(b) => std::str::from_utf8(b).map(Some).map_err(|_| DriveError {
            message: format!("{name} is not UTF-8 text"),
        }),
    }
}

/// Validate a drive's content. `node_key` is the image's node-config key, if it pins one:
/// then `node.toml` must carry a valid `node.toml.sig`, and unsigned cloud drives are
/// refused. A cloud drive's config gets `cloud_generation`.
pub fn parse(
    format: Format,
    files: &DriveFiles,
    node_key: Option<&cairn_signing::PublicKey>,
    cloud_generation: u64,
) -> Result<Candidate, DriveError> {
    let cloud = |node: Result<crate::cloud::CloudNode, crate::cloud::FileError>| -> Result<Candidate, DriveError> {
        if node_key.is_some() {
            return Err(DriveError {
                message: format!(
                    "this image only accepts node configs signed with its key, and a {} drive cannot be signed",
                    format.as_str()
                ),
            });
        }
        let node = node.map_err(|(file, why)| DriveError {
            message: format!("{file} {why}"),
        })?;
        let text = node.to_node_toml(cloud_generation, format.as_str());
        let config = NodeConfig::parse(
            &text,
            &format!("node.toml converted from the {} drive", format.as_str()),
        )?;
        Ok(Candidate {
            format,
            text,
            config,
            signed: Signed::No,
            instance_id: Some(node.instance_id),
        })
    };
    match format {
        Format::NoCloud => cloud(crate::cloud::nocloud(&files.files)),
        Format::ConfigDrive => cloud(crate::cloud::config_drive(&files.files)),
        Format::Cairn => {
            let Some(body) = text(files, "node.toml")? else {
                return Err(DriveError {
                    message: if files.files.is_empty() && files.others.is_empty() {
                        "the drive is empty: it has no node.toml".into()
                    } else {
                        let mut has: Vec<String> = files.files.keys().cloned().collect();
                        has.extend(files.others.iter().cloned());
                        format!("the drive has no node.toml (it has {})", has.join(", "))
                    },
                });
            };
            let signed = match (node_key, files.files.get("node.toml.sig")) {
                (None, _) => Signed::No,
                (Some(_), None) => {
                    return Err(DriveError {
                        message: "node.toml is not signed, and this image only accepts node configs signed with its key (node.toml.sig)".into(),
                    })
                }
                (Some(k), Some(sig)) => {
                    if k.verify(body.as_bytes(), sig).is_err() {
                        return Err(DriveError {
                            message: "node.toml.sig is not a valid signature of node.toml by this image's node-config key".into(),
                        });
                    }
                    Signed::Yes
                }
            };
            let config = NodeConfig::parse(body, "node.toml")?;
            Ok(Candidate {
                format,
                text: body.to_string(),
                config,
                signed,
                instance_id: None,
            })
        }
    }
}

/// What the saved config is, for [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// Its generation.
    pub generation: u64,
    /// The cloud instance it came from, if it came from a cloud drive.
    pub instance_id: Option<String>,
}

/// Whether a drive's config replaces the saved one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Save and apply it; the reason says why.
    Replace(String),
    /// Keep the saved config; the reason says why.
    Keep(String),
}

/// A drive's config replaces the saved one when there is none, or when its generation is
/// higher (Cairn drives) or its instance-id differs (cloud drives). Otherwise it is ignored.
pub fn decide(saved: Option<&Saved>, c: &Candidate) -> Decision {
    let g = c.config.generation;
    if let Some(id) = &c.instance_id {
        return match saved {
            None => Decision::Replace(format!("instance-id {id}, no saved config")),
            Some(s) if s.instance_id.as_deref() == Some(id.as_str()) => {
                Decision::Keep(format!("instance-id {id} is the one already applied"))
            }
            Some(s) => Decision::Replace(format!(
                "instance-id {id} is new (saved: {}); saved as generation {g}",
                s.instance_id.as_deref().unwrap_or("a Cairn config")
            )),
        };
    }
    match saved {
        None => Decision::Replace(format!("generation {g}, no saved config")),
        Some(s) if g > s.generation => Decision::Replace(format!("generation {g} replaces {}", s.generation)),
        Some(s) => Decision::Keep(format!(
            "generation {g} is not newer than the saved generation {}",
            s.generation
        )),
    }
}
