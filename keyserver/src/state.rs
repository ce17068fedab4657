//! The state directory: opening it, the writer lock, whole-file records and the audit log.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use cairn_keys::audit::{self, Record};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{io_err, KeyserverError};

/// The state format this code reads and writes.
pub const FORMAT: u32 = 1;

/// `STATE/keyserver.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The state format.
    pub format: u32,
    /// The cluster's name, in every CA's subject.
    pub cluster: String,
    /// When the state was made (Unix seconds).
    pub created: u64,
}

/// An open state directory.
#[derive(Debug)]
pub struct Keyserver {
    dir: PathBuf,
    /// Its settings.
    pub settings: Settings,
    /// The name this process writes its audit log under.
    pub replica: String,
    /// Where the audit log ended when this process last checked or appended to it.
    audit_seen: std::sync::Mutex<Option<Seen>>,
    /// The CAs' signing keys, read once.
    pub(crate) issuers: std::sync::Mutex<std::collections::BTreeMap<String, std::sync::Arc<crate::issue::Ca>>>,
    /// The SSH CAs' keys and public lines, read once.
    pub(crate) ssh_cas: std::sync::Mutex<std::collections::BTreeMap<String, std::sync::Arc<crate::ssh::SshCa>>>,
}

/// The audit log's size and modification time, and where its chain ended then.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    len: u64,
    modified: Option<std::time::SystemTime>,
    last: [u8; 32],
    lines: usize,
}

/// Held while the state is changed; dropping it releases the lock.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] File);

impl Keyserver {
    /// Open the state in `dir`, made by `cairn keyserver init`.
    pub fn open(dir: &Path) -> Result<Keyserver, KeyserverError> {
        let path = dir.join("keyserver.json");
        if !path.is_file() {
            return Err(KeyserverError::NotInitialized(dir.to_owned()));
        }
        let settings: Settings = read_record(&path)?;
        if settings.format != FORMAT {
            return Err(KeyserverError::Record {
                path,
                why: format!(
                    "state format {} is not {FORMAT}, the one this Cairn reads",
                    settings.format
                ),
            });
        }
        Ok(Keyserver {
            dir: dir.to_owned(),
            settings,
            replica: "admin".into(),
            audit_seen: Default::default(),
            issuers: Default::default(),
            ssh_cas: Default::default(),
        })
    }

    /// Make the directory's state (which must not exist yet) for `cluster`; the caller
    /// then creates the CAs under the lock.
    pub(crate) fn create(dir: &Path, cluster: &str, now: u64) -> Result<(Keyserver, Lock), KeyserverError> {
        if dir.join("keyserver.json").exists() || dir.join("ca").exists() {
            return Err(KeyserverError::AlreadyInitialized(dir.to_owned()));
        }
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let ks = Keyserver {
            dir: dir.to_owned(),
            settings: Settings {
                format: FORMAT,
                cluster: cluster.to_string(),
                created: now,
            },
            replica: "admin".into(),
            audit_seen: Default::default(),
            issuers: Default::default(),
            ssh_cas: Default::default(),
        };
        let lock = ks.lock()?;
        // Another init may have won while this one waited for the lock.
        if dir.join("keyserver.json").exists() {
            return Err(KeyserverError::AlreadyInitialized(dir.to_owned()));
        }
        Ok((ks, lock))
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Take the writer lock, waiting for another process or thread that holds it.
    pub fn lock(&self) -> Result<Lock, KeyserverError> {
        use rustix::fs::{flock, FlockOperation};
        let path = self.dir.join("LOCK");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        flock(&file, FlockOperation::LockExclusive).map_err(|e| io_err("locking", &path)(e.into()))?;
        Ok(Lock(file))
    }

    /// Write `value` as the record at `rel` (under the state directory), whole and durably.
    pub(crate) fn write<T: Serialize>(
        &self,
        _lock: &Lock,
        rel: &Path,
        value: &T,
        mode: u32,
    ) -> Result<(), KeyserverError> {
        let path = self.dir.join(rel);
        let mut text = serde_json::to_string_pretty(value).expect("records always serialize");
        text.push('\n');
        cairn_signing::write_file_atomic(&path, text.as_bytes(), mode).map_err(io_err("writing", &path))
    }

    /// Write raw bytes (a certificate, a key) at `rel`, whole and durably.
    pub(crate) fn write_bytes(&self, _lock: &Lock, rel: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyserverError> {
        let path = self.dir.join(rel);
        cairn_signing::write_file_atomic(&path, bytes, mode).map_err(io_err("writing", &path))
    }

    /// The record at `rel`, or `None` if there is none.
    pub(crate) fn read<T: DeserializeOwned>(&self, rel: &Path) -> Result<Option<T>, KeyserverError> {
        let path = self.dir.join(rel);
        if !path.exists() {
            return Ok(None);
        }
        read_record(&path).map(Some)
    }

    /// Check this replica's audit log before a decision is made, so that a broken chain
    /// stops the decision before anything is written; the returned tail appends its record.
    pub fn audit_tail(&self, _lock: &Lock) -> Result<AuditTail<'_>, KeyserverError> {
        let path = self.audit_path();
        // Unchanged since this process last read or wrote it (same size and time): the
        // chain was checked then, and reading it all again would make every decision cost
        // as much as the log is long.
        let meta = fs::metadata(&path).ok();
        let now_seen = meta.as_ref().map(|m| (m.len(), m.modified().ok()));
        if let (Some((len, modified)), Some(seen)) = (
            now_seen,
            self.audit_seen.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        ) {
            if seen.len == len && seen.modified == modified {
                return Ok(AuditTail {
                    path,
                    last: seen.last,
                    lines: seen.lines,
                    seen: &self.audit_seen,
                });
            }
        }
        let (records, last, path) = self.read_audit()?;
        Ok(AuditTail {
            path,
            last,
            lines: records.len(),
            seen: &self.audit_seen,
        })
    }

    /// The log checked line by line, and its end checked against the head file that every
    /// append updates: a chain alone cannot show that its last line was changed or that
    /// lines were cut from its end.
    fn read_audit(&self) -> Result<(Vec<Record>, [u8; 32], PathBuf), KeyserverError> {
        let path = self.audit_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        let broken = |line: usize, why: String| KeyserverError::Audit {
            path: path.clone(),
            source: audit::AuditError { line, why },
        };
        let (records, last) = audit::verify(&text).map_err(|source| KeyserverError::Audit {
            path: path.clone(),
            source,
        })?;
        let head_path = path.with_extension("head");
        let head: Head = match fs::read_to_string(&head_path) {
            Ok(t) => serde_json::from_str(&t)
                .map_err(|e| broken(records.len(), format!("its head file is unreadable ({e})")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Head {
                lines: 0,
                last: hex::encode(audit::GENESIS),
            },
            Err(e) => return Err(io_err("reading", &head_path)(e)),
        };
        // The head may lag the log (it is not synced on every append, so a crash can leave
        // it some lines behind), but it must point at a line of this chain: a log shorter
        // than the head says, or whose line there is not the one the head saw, was cut or
        // changed.
        let n = records.len();
        let at_head = match head.lines {
            0 => Some(hex::encode(audit::GENESIS)),
            k if k <= n => Some(hex::encode(audit::line_hash(
                text.split('\n').nth(k - 1).expect("verify counted these lines"),
            ))),
            _ => None,
        };
        if at_head.as_deref() != Some(head.last.as_str()) {
            return Err(broken(
                n.max(1).min(head.lines.max(1)),
                format!(
                    "the log does not go through where it did: its head file says line {} ends in {}, so lines were changed or removed",
                    head.lines, head.last
                ),
            ));
        }
        if let Ok(m) = fs::metadata(&path) {
            *self.audit_seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(Seen {
                len: m.len(),
                modified: m.modified().ok(),
                last,
                lines: records.len(),
            });
        }
        Ok((records, last, path))
    }

    fn audit_path(&self) -> PathBuf {
        self.dir.join("audit").join(format!("{}.jsonl", self.replica))
    }

    /// This replica's audit log, checked.
    pub fn audit_records(&self) -> Result<Vec<Record>, KeyserverError> {
        self.read_audit().map(|(records, _, _)| records)
    }

    /// The names of every audit log in the state (`audit/<replica>.jsonl`): the admin
    /// machine's, and one per node that served this state.
    pub fn audit_replicas(&self) -> Result<Vec<String>, KeyserverError> {
        let dir = self.dir.join("audit");
        let mut names: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".jsonl").map(str::to_string)
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("reading", &dir)(e)),
        };
        names.sort();
        Ok(names)
    }
}

/// `audit/<replica>.head`: where the log ended after the last append.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    lines: usize,
    last: String,
}

/// The end of a checked audit log, where the next record goes.
#[derive(Debug)]
pub struct AuditTail<'a> {
    path: PathBuf,
    last: [u8; 32],
    lines: usize,
    seen: &'a std::sync::Mutex<Option<Seen>>,
}

impl AuditTail<'_> {
    /// Append `record`, chained to the line before, and make it durable.
    pub fn append(self, _lock: &Lock, record: Record) -> Result<(), KeyserverError> {
        let mut line = audit::seal(record, &self.last);
        line.push('\n');
        let path = self.path;
        fs::create_dir_all(path.parent().expect("under audit/")).map_err(io_err("creating", &path))?;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(io_err("appending to", &path))?;
        let last = audit::line_hash(line.trim_end_matches('\n'));
        let head = Head {
            lines: self.lines + 1,
            last: hex::encode(last),
        };
        write_head(&path.with_extension("head"), &head)?;
        let meta = f.metadata().map_err(io_err("reading", &path))?;
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(Seen {
            len: meta.len(),
            modified: meta.modified().ok(),
            last,
            lines: self.lines + 1,
        });
        Ok(())
    }
}

/// The head's fixed size: one write at offset 0 replaces it whole, without a temp file and
/// a rename (the head is rewritten on every append, and three durable writes a decision
/// were most of a renewal's cost).
const HEAD_SIZE: usize = 128;

/// Write the head in place. It is not synced: the log line before it is, and a head the
/// crash left behind still points into the chain (see `read_audit`).
fn write_head(path: &Path, head: &Head) -> Result<(), KeyserverError> {
    use std::os::unix::fs::FileExt;
    let mut text = serde_json::to_string(head).expect("a head always serializes");
    assert!(text.len() < HEAD_SIZE, "a head is at most 20 digits and 64 hex");
    let pad = HEAD_SIZE - 1 - text.len();
    text.push_str(&" ".repeat(pad));
    text.push('\n');
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("opening", path))?;
    f.write_all_at(text.as_bytes(), 0)
        .and_then(|_| f.set_len(HEAD_SIZE as u64))
        .map_err(io_err("writing", path))
}

fn read_record<T: DeserializeOwned>(path: &Path) -> Result<T, KeyserverError> {
    let text = fs::read_to_string(path).map_err(io_err("reading", path))?;
    serde_json::from_str(&text).map_err(|e| KeyserverError::Record {
        path: path.to_owned(),
        why: e.to_string(),
    })
}
