//! `cairn-node update`: install a signed release into the inactive A/B slot.
//!
//! The order of steps is the safety argument; each one holds if the node loses power
//! right after it:
//!
//! 1. **Look before touching anything.** Find the running slot (the root partition whose
//!    UUID is the first half of the command line's `roothash=`), the ESP and its UKIs.
//!    Refuse while the running version is not blessed yet (its UKI still carries a boot
//!    counter): the other slot is its fallback.
//! 2. **Check the bundle's signature** with the key baked into the running image, its
//!    image name, and that its version is newer (unless forced) and has not already
//!    failed here (unless forced), before a byte is written.
//! 3. **Make the inactive slot unreachable**: remove every UKI that does not boot the
//!    running root hash (they can only point at the inactive slot or at nothing), then
//!    give the slot's partitions UUIDs derived from a purpose string and the *no-auto*
//!    attribute. No UKI and no discovery can open it now.
//! 4. **Stream** root and verity payloads straight into the slot's partitions and the UKI
//!    into a temporary file on the ESP, hashing as they pass; nothing is downloaded first.
//!    Then check every hash, that the written hash tree's top block gives the signed root
//!    hash, and that the UKI's `roothash=` is that hash.
//! 5. **Name the slot**: its partition UUIDs become the halves of the new root hash and
//!    *no-auto* is cleared.
//! 6. **Install the UKI** as `EFI/Linux/cairn_<version>+3.efi` by renaming the temporary
//!    file: systemd-boot now prefers the new version and counts its tries.
//!
//! The running slot's partitions and UKI are never written. A crash before step 6 leaves a
//! slot nothing boots; running the update again starts over at step 1.
//!
//! Blessing is systemd's: `systemd-bless-boot.service` renames the UKI to
//! `cairn_<version>.efi` once `boot-complete.target` is reached, which Cairn's health
//! gates are ordered before. A gate that fails on a counted boot records why (under
//! `/var/lib/cairn/update/`) and reboots, so systemd-boot spends a try; after three, it
//! boots the previous version again.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_disk::gpt::{self, Partition, ATTR_NO_AUTO, SECTOR};
use cairn_disk::guid::Guid;
use cairn_disk::pe;
use cairn_signing::bundle::{BundleError, BundleManifest, BundleReader};
use cairn_signing::PublicKey;
use sha2::{Digest, Sha256};

use crate::system::{self, Slot};

/// The release key baked into every image.
pub const RELEASE_KEY: &str = "/usr/share/cairn/release.pub";
/// Where the agent keeps what it knows about updates (on the state partition).
pub const STATE_DIR: &str = "/var/lib/cairn/update";
/// Tries systemd-boot gives a new version.
pub const TRIES: u32 = 3;
/// Where a UKI is written before it is complete and checked.
const PARTIAL: &str = "EFI/Linux/cairn-update.partial";
/// The EFI variable systemd-boot sets when it boots a counted entry.
pub const BOOT_COUNT_VAR: &str = "/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// Why an update did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The running system is not what an update needs (not a Cairn A/B disk, no ESP, …).
    #[error("{0}")]
    System(String),
    /// IO on a named file or device.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or device.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Fetching the bundle.
    #[error("fetching {url}: {detail}")]
    Fetch {
        /// The source.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The bundle is bad (signature, structure, a hash).
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// A sound bundle this node must not install.
    #[error("{0}")]
    Refused(String),
}

fn io_at(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UpdateError {
    let path = path.to_owned();
    move |source| UpdateError::Io { what, path, source }
}

pub use cairn_signing::bundle::compare_versions;

/// One UKI on the ESP, by its file name `cairn_<version>[+<left>[-<done>]].efi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File name in `EFI/Linux`.
    pub file: String,
    /// The version part.
    pub version: String,
    /// Tries left, when the entry is still being counted.
    pub tries_left: Option<u32>,
    /// Tries done, when the entry is being counted.
    pub tries_done: Option<u32>,
    /// The `roothash=` it boots, if it could be read.
    pub root_hash: Option<String>,
}

impl Entry {
    /// Parse a file name; `None` for anything that is not a Cairn UKI.
    pub fn from_file_name(file: &str) -> Option<Entry> {
        let stem = file.strip_prefix("cairn_")?.strip_suffix(".efi")?;
        let (version, counter) = match stem.rsplit_once('+') {
            Some((v, c)) => (v, Some(c)),
            None => (stem, None),
        };
        let (left, done) = match counter {
            None => (None, None),
            Some(c) => {
                let (l, d) = match c.split_once('-') {
                    Some((l, d)) => (l, Some(d.parse().ok()?)),
                    None => (c, None),
                };
                (Some(l.parse().ok()?), d.or(Some(0)))
            }
        };
        if version.is_empty() {
            return None;
        }
        Some(Entry {
            file: file.to_string(),
            version: version.to_string(),
            tries_left: left,
            tries_done: done,
            root_hash: None,
        })
    }

    /// Blessed (no counter left in the name).
    pub fn blessed(&self) -> bool {
        self.tries_left.is_none()
    }

    /// Counted and out of tries: systemd-boot will not pick it again.
    pub fn exhausted(&self) -> bool {
        self.tries_left == Some(0)
    }
}

/// Read the `roothash=` of the UKI at `path` from its headers (as long as they declare
/// themselves to be) and `.cmdline` only.
pub fn uki_root_hash(path: &Path) -> Option<String> {
    let f = File::open(path).ok()?;
    pe::cmdline_root_hash(&pe::read_section(&f, ".cmdline", 1 << 16)?)
}

/// The Cairn UKIs on the ESP mounted at `esp`, sorted by file name.
pub fn entries(esp: &Path) -> Result<Vec<Entry>, UpdateError> {
    let dir = esp.join("EFI/Linux");
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).map_err(io_at("listing", &dir))? {
        let e = e.map_err(io_at("listing", &dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(mut entry) = Entry::from_file_name(&name) {
            entry.root_hash = uki_root_hash(&e.path());
            out.push(entry);
        }
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(out)
}

/// The A/B partitions of a disk, by GPT name.
#[derive(Debug, Clone)]
pub struct SlotParts {
    /// The slot.
    pub slot: Slot,
    /// (number, entry) of `root-<slot>`.
    pub root: (u32, Partition),
    /// (number, entry) of `verity-<slot>`.
    pub verity: (u32, Partition),
}

/// What the update works on: a disk (a block device on a node, a file in tests), the
/// mounted ESP, and the running release.
#[derive(Debug, Clone)]
pub struct Target {
    /// The whole disk.
    pub disk: PathBuf,
    /// Where the ESP is mounted.
    pub esp: PathBuf,
    /// The running root hash (from `roothash=`).
    pub running_hash: [u8; 32],
    /// The running image's `IMAGE_ID`.
    pub image: String,
    /// The running image's `IMAGE_VERSION`.
    pub version: String,
    /// Where update state is kept (`/var/lib/cairn/update`).
    pub state_dir: PathBuf,
}

/// Find where the ESP is mounted: the first of `/efi`, `/boot`, `/boot/efi` holding
/// `loader/loader.conf` (touching it mounts an automounted ESP).
pub fn find_esp(root: &Path) -> Option<PathBuf> {
    ["efi", "boot", "boot/efi"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.join("loader/loader.conf").is_file())
}

impl Target {
    /// The running node's target.
    pub fn discover() -> Result<Target, UpdateError> {
        let sys = system::Root::default();
        let cmdline = sys
            .cmdline()
            .map_err(|e| UpdateError::System(format!("reading /proc/cmdline: {e}")))?;
        let running_hash = system::roothash_from_cmdline(&cmdline).ok_or_else(|| {
            UpdateError::System("the kernel command line has no roothash=: not booted from a Cairn UKI".into())
        })?;
        let link = Path::new("/dev/disk/by-partuuid").join(system::root_partuuid(&running_hash));
        let part = fs::canonicalize(&link)
            .map_err(|e| UpdateError::System(format!("{}: {e} (the running root partition)", link.display())))?;
        let name = part
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sys_part = fs::canonicalize(format!("/sys/class/block/{name}"))
            .map_err(|e| UpdateError::System(format!("/sys/class/block/{name}: {e}")))?;
        let disk_name = sys_part
            .parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| UpdateError::System(format!("{name} has no parent disk in sysfs")))?;
        let esp = find_esp(Path::new("/")).ok_or_else(|| {
            UpdateError::System("no ESP mounted at /efi, /boot or /boot/efi (loader/loader.conf not found)".into())
        })?;
        let osrel = fs::read_to_string("/usr/lib/os-release").unwrap_or_default();
        Ok(Target {
            disk: PathBuf::from("/dev").join(disk_name),
            esp,
            running_hash,
            image: system::os_release_field(&osrel, "IMAGE_ID").unwrap_or_default(),
            version: system::os_release_field(&osrel, "IMAGE_VERSION").unwrap_or_default(),
            state_dir: PathBuf::from(STATE_DIR),
        })
    }

    fn running_hex(&self) -> String {
        hex::encode(self.running_hash)
    }

    /// Read the disk's partition table; returns the disk handle, its size, the raw table
    /// regions and both slots.
    fn table(&self, write: bool) -> Result<Table, UpdateError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(write)
            .open(&self.disk)
            .map_err(io_at("opening", &self.disk))?;
        let size = file.seek(SeekFrom::End(0)).map_err(io_at("sizing", &self.disk))?;
        let head_len = (2 + 32) * SECTOR;
        let tail_len = 33 * SECTOR;
        if size < head_len + tail_len {
            return Err(UpdateError::System(format!(
                "{} is too small for a GPT",
                self.disk.display()
            )));
        }
        let mut head = vec![0u8; head_len as usize];
        let mut tail = vec![0u8; tail_len as usize];
        file.read_exact_at(&mut head, 0).map_err(io_at("reading", &self.disk))?;
        file.read_exact_at(&mut tail, size - tail_len)
            .map_err(io_at("reading", &self.disk))?;
        // A table written halfway (power lost between the backup and the primary) is mended
        // first, or this node could never update again by itself.
        let mended = gpt::mend(&mut head, &mut tail, size)
            .map_err(|e| UpdateError::System(format!("{}: partition table: {e}", self.disk.display())))?;
        if mended.is_some() && write {
            file.write_all_at(&tail, size - tail_len)
                .and_then(|_| file.sync_data())
                .and_then(|_| file.write_all_at(&head, 0))
                .and_then(|_| file.sync_data())
                .map_err(io_at("mending the partition table of", &self.disk))?;
        }
        let (guid, parts) = gpt::read_numbered(&head, &tail, size)
            .map_err(|e| UpdateError::System(format!("{}: partition table: {e}", self.disk.display())))?;
        let find = |label: &str| {
            parts.iter().find(|(_, p)| p.name == label).cloned().ok_or_else(|| {
                UpdateError::System(format!(
                    "{} has no partition {label}: not a Cairn A/B disk",
                    self.disk.display()
                ))
            })
        };
        let a = SlotParts {
            slot: Slot::A,
            root: find("root-a")?,
            verity: find("verity-a")?,
        };
        let b = SlotParts {
            slot: Slot::B,
            root: find("root-b")?,
            verity: find("verity-b")?,
        };
        let running_uuid = Guid(self.running_hash[..16].try_into().expect("16 bytes"));
        let (running, inactive) = if a.root.1.uuid == running_uuid {
            (a, b)
        } else if b.root.1.uuid == running_uuid {
            (b, a)
        } else {
            return Err(UpdateError::System(format!(
                "neither root-a nor root-b has the running root's UUID {running_uuid}"
            )));
        };
        Ok(Table {
            file,
            size,
            head,
            tail,
            disk_guid: guid,
            running,
            inactive,
            mended,
        })
    }
}

struct Table {
    file: File,
    size: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
    disk_guid: Guid,
    running: SlotParts,
    inactive: SlotParts,
    /// What was mended when the table was read, if anything.
    mended: Option<String>,
}

impl Table {
    fn set(&mut self, number: u32, uuid: Guid, attributes: u64) -> Result<(), UpdateError> {
        gpt::set_entry(&mut self.head, &mut self.tail, number, uuid, attributes)
            .map_err(|e| UpdateError::System(format!("editing the partition table: {e}")))
    }

    /// Backup copy first, then the primary, each made durable.
    fn write(&mut self, disk: &Path) -> Result<(), UpdateError> {
        let tail_at = self.size - self.tail.len() as u64;
        self.file
            .write_all_at(&self.tail, tail_at)
            .and_then(|_| self.file.sync_data())
            .and_then(|_| self.file.write_all_at(&self.head, 0))
            .and_then(|_| self.file.sync_data())
            .map_err(io_at("writing the partition table of", disk))
    }
}

/// Writes a stream into one partition of the disk, refusing to pass its end.
struct PartitionWriter<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Write for PartitionWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pos + buf.len() as u64 > self.len {
            return Err(io::Error::other("payload is larger than the partition"));
        }
        self.file.write_all_at(buf, self.start + self.pos)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How an update is run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Install even if the version is not newer or failed here before.
    pub force: bool,
}

/// What an update installed.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The bundle's manifest.
    pub manifest: BundleManifest,
    /// The slot it went into.
    pub slot: Slot,
    /// The UKI's file name on the ESP.
    pub uki: String,
    /// Bytes read from the source.
    pub bytes: u64,
}

fn invalid_uuid(purpose: &str, disk: Guid, slot: Slot) -> Guid {
    Guid::derive(&format!("stale slot {purpose}-{}", slot.letter()), &disk.0)
}

/// Versions that failed on this node, from `failed-<version>` files in the state dir.
pub fn failed_versions(state_dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(state_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = name.strip_prefix("failed-") {
                let why = fs::read_to_string(e.path()).unwrap_or_default();
                out.push((v.to_string(), why.trim().to_string()));
            }
        }
    }
    out.sort();
    out
}

/// Record every UKI systemd-boot gave up on (out of tries) as a failed version.
fn record_exhausted(t: &Target, entries: &[Entry]) {
    for e in entries.iter().filter(|e| e.exhausted()) {
        let why = format!(
            "{}: out of boot tries ({} failed boots)",
            e.file,
            e.tries_done.unwrap_or(0)
        );
        let _ = record_failure(&t.state_dir, &e.version, &why);
    }
}

/// Record that `version` failed and why (appending to what is known).
pub fn record_failure(state_dir: &Path, version: &str, why: &str) -> io::Result<()> {
    let path = state_dir.join(format!("failed-{version}"));
    let mut text = fs::read_to_string(&path).unwrap_or_default();
    if !text.lines().any(|l| l == why) {
        text.push_str(why);
        text.push('\n');
    }
    cairn_signing::write_file_atomic(&path, text.as_bytes(), 0o644)
}

/// Install the bundle read from `source` into the inactive slot of `t`. `log` gets a line
/// per step and progress.
pub fn install(
    t: &Target,
    keys: &[PublicKey],
    source: &mut dyn Read,
    opts: &Options,
    log: &mut dyn FnMut(&str),
) -> Result<Installed, UpdateError> {
    // 0. One install at a time: a hand-run update and the timer's would both stream into the
    // inactive slot and edit the GPT.
    let _turn = lock_updates(&t.state_dir)?;
    // 1. Look.
    let mut table = t.table(true)?;
    if let Some(what) = &table.mended {
        log(&format!("cairn: update: {}: {what}", t.disk.display()));
    }
    let entries = entries(&t.esp)?;
    let running_hex = t.running_hex();
    // Every entry must say what it boots, and exactly one must boot what runs: anything
    // else and the ESP is not what this updater expects, so it touches nothing.
    if let Some(e) = entries.iter().find(|e| e.root_hash.is_none()) {
        return Err(UpdateError::Refused(format!(
            "cannot read which root EFI/Linux/{} boots (no roothash= in its .cmdline): refusing to change the ESP; remove the file if it is not Cairn's",
            e.file
        )));
    }
    let running: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.root_hash.as_deref() == Some(running_hex.as_str()))
        .collect();
    if running.len() != 1 {
        return Err(UpdateError::Refused(format!(
            "{} entries in EFI/Linux boot the running root {running_hex} ({}): expected exactly one; refusing to change the ESP",
            running.len(),
            running.iter().map(|e| e.file.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    let running_entry = running.first().copied();
    if let Some(e) = running_entry {
        if !e.blessed() {
            return Err(UpdateError::Refused(format!(
                "the running version {} is not blessed yet ({}): until it passes its health gates, slot {} is its fallback and must not be overwritten",
                e.version,
                e.file,
                table.inactive.slot.letter()
            )));
        }
    }
    record_exhausted(t, &entries);
    let inactive = table.inactive.clone();
    log(&format!(
        "cairn: update: running {} {} from slot {}; slot {} is inactive",
        t.image,
        t.version,
        table.running.slot.letter(),
        inactive.slot.letter()
    ));

    // 2. The bundle's signature and identity, before writing anything.
    let reader = BundleReader::open_any(source, keys)?;
    let m = reader.manifest().clone();
    log(&format!(
        "cairn: update: bundle {} {} signed by {} (good signature), root hash {}",
        m.name, m.version, m.signing_key, m.root_hash
    ));
    if m.name != t.image {
        return Err(UpdateError::Refused(format!(
            "the bundle is for image {:?}, this node runs {:?}",
            m.name, t.image
        )));
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        "aarch64" => "arm64",
        other => other,
    };
    if m.architecture != arch {
        return Err(UpdateError::Refused(format!(
            "the bundle is built for {}, this node is {arch}",
            m.architecture
        )));
    }
    if m.root_hash == running_hex {
        return Err(UpdateError::Refused(format!("{} is already running", m.version)));
    }
    if !opts.force {
        if compare_versions(&m.version, &t.version) != std::cmp::Ordering::Greater {
            return Err(UpdateError::Refused(format!(
                "{} is not newer than the running {} (pass --force to install it anyway)",
                m.version, t.version
            )));
        }
        if let Some((_, why)) = failed_versions(&t.state_dir).into_iter().find(|(v, _)| *v == m.version) {
            return Err(UpdateError::Refused(format!(
                "{} already failed on this node ({}); pass --force to try it again",
                m.version,
                why.lines().last().unwrap_or("")
            )));
        }
    }
    let (root_p, verity_p, uki_p) = (m.payload("root"), m.payload("verity"), m.payload("uki"));
    for (p, part) in [(root_p, &inactive.root.1), (verity_p, &inactive.verity.1)] {
        if p.size > part.size() {
            return Err(UpdateError::Refused(format!(
                "payload {} ({} bytes) does not fit partition {} ({} bytes)",
                p.name,
                p.size,
                part.name,
                part.size()
            )));
        }
    }
    let free = rustix::fs::statvfs(&t.esp)
        .map(|s| s.f_bavail * s.f_frsize)
        .map_err(|e| io_at("checking free space on", &t.esp)(e.into()))?;
    let partial = t.esp.join(PARTIAL);
    let partial_size = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    let stale: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.root_hash.as_deref() != Some(running_hex.as_str()))
        .collect();
    let freed: u64 = stale
        .iter()
        .filter_map(|e| fs::metadata(t.esp.join("EFI/Linux").join(&e.file)).ok())
        .map(|m| m.len())
        .sum();
    if uki_p.size + (1 << 20) > free + freed + partial_size {
        return Err(UpdateError::Refused(format!(
            "the UKI needs {} MiB on the ESP, {} MiB would be free",
            uki_p.size >> 20,
            (free + freed + partial_size) >> 20
        )));
    }

    // 3. Make the inactive slot unreachable.
    let linux = t.esp.join("EFI/Linux");
    for e in &stale {
        let p = linux.join(&e.file);
        fs::remove_file(&p).map_err(io_at("removing", &p))?;
        log(&format!(
            "cairn: update: removed {} (it does not boot the running root)",
            e.file
        ));
    }
    let _ = fs::remove_file(&partial);
    sync_dir(&linux)?;
    let attrs_root = inactive.root.1.attributes | ATTR_NO_AUTO;
    let attrs_verity = inactive.verity.1.attributes | ATTR_NO_AUTO;
    table.set(
        inactive.root.0,
        invalid_uuid("root", table.disk_guid, inactive.slot),
        attrs_root,
    )?;
    table.set(
        inactive.verity.0,
        invalid_uuid("verity", table.disk_guid, inactive.slot),
        attrs_verity,
    )?;
    table.write(&t.disk)?;
    log(&format!(
        "cairn: update: slot {} marked stale (no-auto, UUIDs cleared) before writing",
        inactive.slot.letter()
    ));

    // 4.–6., leaving no partial UKI behind on failure.
    let result = write_slot(&mut table, t, &inactive, reader, &partial, &linux, log);
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    let (m, uki, bytes) = result?;
    // A release signed by a trusted key announces the key of the releases after it.
    if let Some(next) = &m.next_signing_key {
        let key = PublicKey::from_hex(next).map_err(|why| UpdateError::Refused(format!("next-signing-key: {why}")))?;
        if trust(&t.state_dir, &key)? {
            log(&format!(
                "cairn: update: {} announces the next release key {}: trusted from now on",
                m.version,
                key.fingerprint()
            ));
        }
    }
    Ok(Installed {
        manifest: m,
        slot: inactive.slot,
        uki,
        bytes,
    })
}

/// After `gate` failed (`cairn-node gate-failed`): take the gate's own FAILED line from this
/// boot's journal as the reason; on a counted try of a new version, record it, say so, and
/// reboot into the next try.
pub fn gate_failed(root: &Path, gate: crate::health::Gate, log: &mut dyn FnMut(&str)) {
    let unit = format!("cairn-health-{}.service", gate.name());
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
        .unwrap_or_else(|| format!("cairn: health gate {} FAILED ({unit} failed)", gate.name()));
    let lines = on_gate_failure(root, &reason);
    if lines.is_empty() {
        log(&format!(
            "cairn: health gate {} failed on a version that is not on a counted try: nothing to roll back to; fix the node and run `systemctl restart {unit}`",
            gate.name()
        ));
        return;
    }
    lines.iter().for_each(|l| log(l));
    crate::system::reboot();
}

/// `cairn-node boot-deadline`: on a counted try, wait for boot-complete.target and reboot
/// into the next try when it is not reached within the command line's deadline. Returns
/// whether the boot made it (or there was nothing to watch).
pub fn watch_deadline(root: &Path, sys: &crate::system::Root, log: &mut dyn FnMut(&str)) -> bool {
    let Some(file) = counted_boot(root) else {
        log("cairn: boot deadline: not a counted boot; nothing to watch");
        return true;
    };
    let Some(limit) = boot_deadline(&sys.cmdline().unwrap_or_default()) else {
        log("cairn: boot deadline: off (cairn.boot_deadline=0)");
        return true;
    };
    log(&format!(
        "cairn: boot deadline: {file} must reach boot-complete.target within {}s of boot",
        limit.as_secs()
    ));
    loop {
        let reached = std::process::Command::new("systemctl")
            .args(["is-active", "--quiet", "boot-complete.target"])
            .status()
            .is_ok_and(|s| s.success());
        let up = sys.uptime().unwrap_or(0.0);
        if reached {
            log(&format!(
                "cairn: boot deadline: boot-complete.target reached {up:.1}s after boot"
            ));
            return true;
        }
        if up >= limit.as_secs_f64() {
            on_deadline(root, &file, limit).iter().for_each(|l| log(l));
            crate::system::reboot();
            return false;
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

/// Reboot into `version` as the node config says: now, at a time of day, or not at all;
/// saying so first.
pub fn reboot_by_policy(policy: crate::config::RebootPolicy, version: &str, log: &mut dyn FnMut(&str)) {
    use crate::config::RebootPolicy;
    match policy {
        RebootPolicy::Now => {
            log(&format!(
                "cairn: update: rebooting into {version} now ([update] reboot = \"now\")"
            ));
            crate::system::reboot();
        }
        RebootPolicy::Never => log(&format!(
            "cairn: update: {version} is installed; reboot to run it ([update] reboot = \"never\")"
        )),
        RebootPolicy::At(h, m) => {
            let when = format!("{h:02}:{m:02}");
            match std::process::Command::new("shutdown").args(["-r", &when]).status() {
                Ok(s) if s.success() => log(&format!(
                    "cairn: update: {version} is installed; rebooting into it at {when} (the reboot window)"
                )),
                other => log(&format!(
                    "cairn: update: could not schedule the reboot at {when}: {other:?}"
                )),
            }
        }
    }
}

/// Where a node keeps release keys announced by releases it installed.
pub fn trust_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("trusted-keys")
}

/// The release keys this node trusts: the one its image carries (`image_key`), and every
/// next key a release it installed announced (key rotation), oldest first.
pub fn trusted_keys(image_key: &Path, state_dir: &Path) -> Result<Vec<PublicKey>, UpdateError> {
    let mut keys = vec![PublicKey::read(image_key).map_err(|e| UpdateError::System(e.to_string()))?];
    let dir = trust_dir(state_dir);
    if let Ok(rd) = fs::read_dir(&dir) {
        let mut names: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        for p in names.into_iter().filter(|p| p.extension().is_some_and(|e| e == "key")) {
            let text = fs::read_to_string(&p).map_err(io_at("reading", &p))?;
            match PublicKey::from_hex(text.trim()) {
                Ok(k) if !keys.contains(&k) => keys.push(k),
                Ok(_) => {}
                Err(why) => return Err(UpdateError::System(format!("{}: {why}", p.display()))),
            }
        }
    }
    Ok(keys)
}

/// Trust `key` from now on (announced by a release this node installed).
fn trust(state_dir: &Path, key: &PublicKey) -> Result<bool, UpdateError> {
    let dir = trust_dir(state_dir);
    let path = dir.join(format!("{}.key", &key.to_hex()[..16]));
    if fs::read_to_string(&path).is_ok_and(|t| t.trim() == key.to_hex()) {
        return Ok(false);
    }
    fs::create_dir_all(&dir).map_err(io_at("creating", &dir))?;
    cairn_signing::write_file_atomic(&path, format!("{}\n", key.to_hex()).as_bytes(), 0o644)
        .map_err(io_at("writing", &path))?;
    Ok(true)
}

/// Hold `state_dir/update.lock` for as long as the returned file lives; refuse when another
/// process holds it.
pub fn lock_updates(state_dir: &Path) -> Result<File, UpdateError> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    fs::create_dir_all(state_dir).map_err(io_at("creating", state_dir))?;
    let path = state_dir.join("update.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io_at("opening", &path))?;
    rustix::fs::flock(f.as_fd(), rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        UpdateError::Refused(format!(
            "another update is running (it holds {}); wait for it to finish",
            path.display()
        ))
    })?;
    Ok(f)
}

/// Stream the payloads into the stale slot, check them, name the slot, install the UKI.
fn write_slot(
    table: &mut Table,
    t: &Target,
    inactive: &SlotParts,
    mut reader: BundleReader<&mut dyn Read>,
    partial: &Path,
    linux: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<(BundleManifest, String, u64), UpdateError> {
    let m = reader.manifest().clone();
    let attrs_root = inactive.root.1.attributes | ATTR_NO_AUTO;
    let attrs_verity = inactive.verity.1.attributes | ATTR_NO_AUTO;
    let started = std::time::Instant::now();
    let mut progress = |p: &cairn_signing::Payload, done: u64| {
        log(&format!(
            "cairn: update: {} {}/{} MiB",
            p.name,
            done >> 20,
            p.size.div_ceil(1 << 20)
        ));
    };
    for part in [&inactive.root.1, &inactive.verity.1] {
        let mut w = PartitionWriter {
            file: &table.file,
            start: part.offset(),
            len: part.size(),
            pos: 0,
        };
        reader.next_payload(&mut w, &mut progress)?;
    }
    table.file.sync_data().map_err(io_at("syncing", &t.disk))?;
    let mut uki_file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(partial)
        .map_err(io_at("creating", partial))?;
    reader.next_payload(&mut uki_file, &mut progress)?;
    uki_file.sync_all().map_err(io_at("syncing", partial))?;
    drop(uki_file);
    let bytes = reader.position();
    reader.finish()?;
    log(&format!(
        "cairn: update: {} MiB received and written in {:.1}s, every payload's sha256 matches",
        bytes >> 20,
        started.elapsed().as_secs_f64()
    ));
    check_written(table, inactive, &m, partial)?;
    log("cairn: update: verity tree gives the signed root hash; UKI boots it");

    // 5. Name the slot.
    let hash: [u8; 32] = hex::decode(&m.root_hash)
        .ok()
        .and_then(|v| v.try_into().ok())
        .expect("a checked manifest has a 32-byte root hash");
    table.set(
        inactive.root.0,
        Guid(hash[..16].try_into().expect("16")),
        attrs_root & !ATTR_NO_AUTO,
    )?;
    table.set(
        inactive.verity.0,
        Guid(hash[16..].try_into().expect("16")),
        attrs_verity & !ATTR_NO_AUTO,
    )?;
    table.write(&t.disk)?;

    // 6. Install the UKI.
    let uki = format!("cairn_{}+{TRIES}.efi", m.version);
    let dest = linux.join(&uki);
    fs::rename(partial, &dest).map_err(io_at("installing", &dest))?;
    sync_dir(linux)?;
    let _ = fs::remove_file(t.state_dir.join(format!("failed-{}", m.version)));
    let mut note = String::new();
    let _ = write!(
        note,
        "cairn: update: installed {} {} into slot {} as {uki}; the next boot tries it ({TRIES} tries, then {} again)",
        m.name,
        m.version,
        inactive.slot.letter(),
        t.version
    );
    log(&note);
    Ok((m, uki, bytes))
}

fn sync_dir(dir: &Path) -> Result<(), UpdateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at("syncing", dir))
}

/// After streaming: the written hash device's superblock and top block against the
/// manifest, and the UKI's command line.
fn check_written(table: &Table, slot: &SlotParts, m: &BundleManifest, uki: &Path) -> Result<(), UpdateError> {
    let bad = |s: String| Err(UpdateError::Refused(s));
    let mut sb = vec![0u8; 8192];
    table
        .file
        .read_exact_at(&mut sb, slot.verity.1.offset())
        .map_err(io_at("reading back", Path::new(&slot.verity.1.name)))?;
    let salt = hex::decode(&m.verity_salt).unwrap_or_default();
    let data_blocks = u64::from_le_bytes(sb[72..80].try_into().expect("8"));
    if &sb[0..8] != b"verity\0\0" || sb[88..120] != salt[..] {
        return bad("the written verity superblock does not carry the signed salt".into());
    }
    if data_blocks != m.payload("root").size.div_ceil(4096) {
        return bad(format!(
            "the verity tree covers {data_blocks} blocks, the root payload is not that size"
        ));
    }
    let mut h = Sha256::new();
    h.update(&salt);
    h.update(&sb[4096..8192]);
    let root = hex::encode(h.finalize());
    if root != m.root_hash {
        return bad(format!(
            "the written verity tree gives root hash {root}, the bundle signs {}",
            m.root_hash
        ));
    }
    let found = uki_root_hash(uki).unwrap_or_default();
    if found != m.root_hash {
        return bad(format!("the bundle's UKI boots roothash={found}, not {}", m.root_hash));
    }
    Ok(())
}

/// How long fetching a whole bundle may take (a server that trickles a byte a minute
/// would otherwise hold the update, and the lock, forever).
pub const BUNDLE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30 * 60);
/// How long fetching an index may take.
pub const INDEX_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// A readable source: `http://…`/`https://…` streamed, or a file.
pub fn open_source(source: &str) -> Result<Box<dyn Read>, UpdateError> {
    open_source_within(source, BUNDLE_DEADLINE)
}

/// An HTTP(S) client whose whole transfer ends by `deadline`, verifying servers with the
/// system's trust store.
pub fn http_agent(deadline: std::time::Duration) -> ureq::Agent {
    use ureq::tls::{RootCerts, TlsConfig};
    ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(30).min(deadline)))
        .timeout_global(Some(deadline))
        .tls_config(TlsConfig::builder().root_certs(RootCerts::PlatformVerifier).build())
        .build()
        .into()
}

/// [`open_source`], with the whole transfer (connecting, every read) bounded by `deadline`.
pub fn open_source_within(source: &str, deadline: std::time::Duration) -> Result<Box<dyn Read>, UpdateError> {
    if source.starts_with("http://") || source.starts_with("https://") {
        let resp = http_agent(deadline)
            .get(source)
            .call()
            .map_err(|e| UpdateError::Fetch {
                url: source.to_string(),
                detail: e.to_string(),
            })?;
        Ok(Box::new(io::BufReader::with_capacity(
            1 << 20,
            resp.into_body().into_reader(),
        )))
    } else {
        let path = Path::new(source);
        let f = File::open(path).map_err(io_at("opening", path))?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, f)))
    }
}

/// Read a small document (an index) from a URL or file, at most 1 MiB.
pub fn fetch_small(source: &str) -> Result<Vec<u8>, UpdateError> {
    let mut buf = Vec::new();
    open_source_within(source, INDEX_DEADLINE)?
        .take(1 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| UpdateError::Fetch {
            url: source.to_string(),
            detail: e.to_string(),
        })?;
    Ok(buf)
}

/// What `--auto` decided.
#[derive(Debug)]
pub enum AutoOutcome {
    /// Nothing to do, and why.
    Nothing(String),
    /// A release was installed.
    Installed(Box<Installed>),
}

/// `cairn-node update --auto`: poll `<source>index.json` and install its latest release
/// when it is newer than the running one and has not failed here.
pub fn auto(
    t: &Target,
    keys: &[PublicKey],
    source: &str,
    log: &mut dyn FnMut(&str),
) -> Result<AutoOutcome, UpdateError> {
    auto_at(t, keys, source, cairn_signing::time::now(), log)
}

/// [`auto`] at the time `now` (Unix seconds).
pub fn auto_at(
    t: &Target,
    keys: &[PublicKey],
    source: &str,
    now: u64,
    log: &mut dyn FnMut(&str),
) -> Result<AutoOutcome, UpdateError> {
    use cairn_signing::bundle::{Index, INDEX_FILE, INDEX_SIG_FILE};
    let url = format!("{source}{INDEX_FILE}");
    let sig_url = format!("{source}{INDEX_SIG_FILE}");
    let (bytes, sigs) = (fetch_small(&url)?, fetch_small(&sig_url)?);
    let index =
        Index::verify(&bytes, &sigs, keys).map_err(|detail| UpdateError::Refused(format!("{url}: {detail}")))?;
    if now >= index.expires_at() {
        return Err(UpdateError::Refused(format!(
            "{url} expired at {} (now {}): the update server serves a stale index, by mistake or to hold this node on an old release; publish it again",
            index.expires,
            cairn_signing::time::format_utc(now)
        )));
    }
    if index.name != t.image {
        return Err(UpdateError::Refused(format!(
            "{url} lists image {:?}, this node runs {:?}",
            index.name, t.image
        )));
    }
    let latest = index.release(&index.latest).expect("a parsed index names its latest");
    if compare_versions(&latest.version, &t.version) != std::cmp::Ordering::Greater {
        return Ok(AutoOutcome::Nothing(format!(
            "up to date: running {}, {url} offers {}",
            t.version, latest.version
        )));
    }
    let bundle_url = format!("{source}{}", latest.file);
    record_exhausted(t, &entries(&t.esp)?);
    if failed_versions(&t.state_dir).iter().any(|(v, _)| *v == latest.version) {
        return Ok(AutoOutcome::Nothing(format!(
            "{} failed on this node before; waiting for a newer release (to retry it: cairn-node update --force {bundle_url})",
            latest.version
        )));
    }
    log(&format!(
        "cairn: update: {url} offers {}, running {}",
        latest.version, t.version
    ));
    let mut input = open_source(&bundle_url)?;
    install(t, keys, &mut input, &Options::default(), log).map(|i| AutoOutcome::Installed(Box::new(i)))
}

/// What `--status` reports.
pub fn status(t: &Target) -> Result<String, UpdateError> {
    let table = t.table(false)?;
    let entries = entries(&t.esp)?;
    let running_hex = t.running_hex();
    let mut s = String::new();
    let running_entry = entries
        .iter()
        .find(|e| e.root_hash.as_deref() == Some(running_hex.as_str()));
    let state = match running_entry {
        Some(e) if e.blessed() => "blessed".to_string(),
        Some(e) => format!(
            "NOT blessed yet: {} (boot {} of {})",
            e.file,
            e.tries_done.unwrap_or(0),
            e.tries_done.unwrap_or(0) + e.tries_left.unwrap_or(0)
        ),
        None => "no UKI on the ESP boots it".into(),
    };
    let _ = writeln!(
        s,
        "running  {} {} from slot {} ({state})",
        t.image,
        t.version,
        table.running.slot.letter()
    );
    let _ = writeln!(s, "         root hash {running_hex}");
    let inactive_uuid = table.inactive.root.1.uuid;
    let mut other = false;
    for e in entries
        .iter()
        .filter(|e| e.root_hash.as_deref() != Some(running_hex.as_str()))
    {
        other = true;
        let in_slot = e
            .root_hash
            .as_deref()
            .and_then(|h| hex::decode(h).ok())
            .is_some_and(|h| h.len() == 32 && h[..16] == inactive_uuid.0);
        let where_ = if in_slot {
            format!("slot {}", table.inactive.slot.letter())
        } else {
            "no slot holds its root".into()
        };
        let what = if e.exhausted() {
            format!("FAILED: out of tries after {} failed boots", e.tries_done.unwrap_or(0))
        } else if e.blessed() {
            "good (the fallback)".into()
        } else {
            format!("to be tried: {} tries left", e.tries_left.unwrap_or(0))
        };
        let _ = writeln!(s, "other    {} in {where_}: {what} ({})", e.version, e.file);
    }
    if !other {
        let _ = writeln!(s, "other    slot {}: nothing bootable", table.inactive.slot.letter());
    }
    let recorded = failed_versions(&t.state_dir);
    for (v, why) in &recorded {
        for line in why.lines() {
            let _ = writeln!(s, "failed   {v}: {line}");
        }
    }
    for e in entries.iter().filter(|e| e.exhausted()) {
        let gate = recorded
            .iter()
            .any(|(v, why)| *v == e.version && why.contains("health gate"));
        if !gate {
            let _ = writeln!(
                s,
                "failed   {}: no health gate reported: it failed before reaching them (kernel, initrd or early boot; see its console)",
                e.version
            );
        }
    }
    Ok(s)
}

/// Whether this boot is a counted try of a not yet blessed entry (systemd-boot set
/// `LoaderBootCountPath`), and that entry's file name.
pub fn counted_boot(root: &Path) -> Option<String> {
    let raw = fs::read(root.join(BOOT_COUNT_VAR.trim_start_matches('/'))).ok()?;
    let units: Vec<u16> = raw
        .get(4..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let path = String::from_utf16_lossy(&units);
    let file = path.rsplit(['\\', '/']).next()?.to_string();
    Some(file)
}

/// A health gate failed: on a counted boot of a new version, record why and reboot so
/// systemd-boot counts the try (and, after the last, boots the previous version). Returns
/// the lines to log; on an uncounted boot nothing happens (a blessed version never
/// reboot-loops on a gate).
pub fn on_gate_failure(root: &Path, line: &str) -> Vec<String> {
    let Some(file) = counted_boot(root) else {
        return vec![];
    };
    let Some(entry) = Entry::from_file_name(&file) else {
        return vec![];
    };
    if entry.blessed() {
        return vec![];
    }
    let state = root.join(STATE_DIR.trim_start_matches('/'));
    let mut out = vec![];
    if let Err(e) = fs::create_dir_all(&state).and_then(|_| record_failure(&state, &entry.version, line)) {
        out.push(format!("cairn: could not record the failure of {}: {e}", entry.version));
    }
    out.push(format!(
        "cairn: {} is on a counted try ({}) and a health gate failed: rebooting so systemd-boot counts it",
        entry.version, file
    ));
    out
}

/// How long a counted try may take to reach `boot-complete.target`, from the kernel
/// command line's `cairn.boot_deadline=SECONDS` (default 900 s; 0 turns it off).
pub fn boot_deadline(cmdline: &str) -> Option<std::time::Duration> {
    let secs = cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("cairn.boot_deadline="))
        .next_back()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_BOOT_DEADLINE);
    (secs > 0).then(|| std::time::Duration::from_secs(secs))
}

/// [`boot_deadline`]'s default: generous for a slow node, short enough that a hung try
/// does not keep a node out of service for long.
pub const DEFAULT_BOOT_DEADLINE: u64 = 900;

/// A counted try did not reach `boot-complete.target` in time: record why (when /var is
/// writable) and return the lines to log before rebooting.
pub fn on_deadline(root: &Path, file: &str, limit: std::time::Duration) -> Vec<String> {
    let version = Entry::from_file_name(file).map_or_else(|| file.to_string(), |e| e.version);
    let why = format!(
        "cairn: {version} did not reach boot-complete.target within {}s (cairn.boot_deadline)",
        limit.as_secs()
    );
    let state = root.join(STATE_DIR.trim_start_matches('/'));
    let mut out = vec![why.clone()];
    if let Err(e) = fs::create_dir_all(&state).and_then(|_| record_failure(&state, &version, &why)) {
        out.push(format!("cairn: could not record the failure of {version}: {e}"));
    }
    out.push(format!(
        "cairn: {version} is on a counted try ({file}) and is not healthy in time: rebooting so systemd-boot counts it"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_deadline_from_the_command_line() {
        use std::time::Duration;
        assert_eq!(boot_deadline("roothash=ab quiet"), Some(Duration::from_secs(900)));
        assert_eq!(boot_deadline("cairn.boot_deadline=60"), Some(Duration::from_secs(60)));
        assert_eq!(
            boot_deadline("cairn.boot_deadline=60 cairn.boot_deadline=120"),
            Some(Duration::from_secs(120)),
            "the last word wins"
        );
        assert_eq!(boot_deadline("cairn.boot_deadline=0"), None);
        assert_eq!(
            boot_deadline("cairn.boot_deadline=soon"),
            Some(Duration::from_secs(900))
        );
        let dir = tempfile::tempdir().unwrap();
        let lines = on_deadline(dir.path(), "cairn_0.4.0+1-2.efi", Duration::from_secs(60));
        assert!(
            lines[0].contains("0.4.0 did not reach boot-complete.target within 60s"),
            "{lines:?}"
        );
        let failed = failed_versions(&dir.path().join(STATE_DIR.trim_start_matches('/')));
        assert_eq!(failed[0].0, "0.4.0");
    }

    #[test]
    fn entry_names() {
        let e = Entry::from_file_name("cairn_0.2.0+3.efi").unwrap();
        assert_eq!(
            (e.version.as_str(), e.tries_left, e.tries_done),
            ("0.2.0", Some(3), Some(0))
        );
        assert!(!e.blessed() && !e.exhausted());
        let e = Entry::from_file_name("cairn_0.2.0+0-3.efi").unwrap();
        assert_eq!((e.tries_left, e.tries_done), (Some(0), Some(3)));
        assert!(e.exhausted());
        let e = Entry::from_file_name("cairn_0.1.0.efi").unwrap();
        assert!(e.blessed());
        assert_eq!(Entry::from_file_name("cairn-update.partial"), None);
        assert_eq!(Entry::from_file_name("cairn_0.2.0+x.efi"), None);
        assert_eq!(Entry::from_file_name("other_1.efi"), None);
    }

    #[test]
    fn counted_boot_reads_the_efi_variable() {
        let dir = tempfile::tempdir().unwrap();
        let var = dir.path().join(BOOT_COUNT_VAR.trim_start_matches('/'));
        fs::create_dir_all(var.parent().unwrap()).unwrap();
        let mut raw = vec![7, 0, 0, 0];
        for u in "\\EFI\\Linux\\cairn_0.2.0+2-1.efi\0".encode_utf16() {
            raw.extend(u.to_le_bytes());
        }
        fs::write(&var, raw).unwrap();
        assert_eq!(counted_boot(dir.path()).as_deref(), Some("cairn_0.2.0+2-1.efi"));
        let lines = on_gate_failure(dir.path(), "cairn: health gate etcd FAILED after 5s: x");
        assert!(lines[0].contains("rebooting"), "{lines:?}");
        let failed = failed_versions(&dir.path().join(STATE_DIR.trim_start_matches('/')));
        assert_eq!(failed[0].0, "0.2.0");
        assert!(failed[0].1.contains("etcd FAILED"));
        fs::remove_file(&var).unwrap();
        assert!(on_gate_failure(dir.path(), "x").is_empty());
    }
}
