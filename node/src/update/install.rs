//! Installing a bundle into the inactive slot, in the order the module's safety argument
//! gives: look, check the signature, make the slot unreachable, stream and check, name the
//! slot, install the UKI.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use cairn_disk::gpt::ATTR_NO_AUTO;
use cairn_disk::guid::Guid;
use cairn_signing::bundle::{BundleManifest, BundleReader};
use cairn_signing::PublicKey;
use sha2::{Digest, Sha256};

use super::record::{failed_versions, record_exhausted};
use super::slots::{entries, uki_root_hash, Entry, PartitionWriter, SlotParts, Table, Target};
use super::trust::{lock_updates, trust};
use super::{compare_versions, io_at, UpdateError, PARTIAL, TRIES};
use crate::system::Slot;

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
    let mut entries = entries(&t.esp)?;
    // An empty UKI under Cairn's name is what a power loss right after an install leaves
    // on FAT (a renamed file whose entry was never filled in): it boots nothing, and the
    // firmware skips it. Take it away, so the release can be installed again.
    let linux = t.esp.join("EFI/Linux");
    let empty: Vec<String> = entries
        .iter()
        .filter(|e| e.root_hash.is_none())
        .filter(|e| fs::metadata(linux.join(&e.file)).is_ok_and(|m| m.is_file() && m.len() == 0))
        .map(|e| e.file.clone())
        .collect();
    for file in &empty {
        let path = linux.join(file);
        fs::remove_file(&path).map_err(io_at("removing", &path))?;
        log(&format!(
            "cairn: update: EFI/Linux/{file} was empty (an install cut short by a power loss); removed"
        ));
    }
    if !empty.is_empty() {
        sync_dir(&linux)?;
        entries.retain(|e| !empty.contains(&e.file));
    }
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
        let mut w = PartitionWriter::new(&table.file, part.offset(), part.size());
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
    // On FAT a file's size and first cluster live in its directory entry, and a rename
    // writes a new entry that the file's inode fills in only when it is written back: the
    // directory's fsync alone makes a zero-length UKI durable (a power cut right after
    // the reboot line left one, found by the QEMU cluster test). The file's own fsync
    // writes its entry whole.
    File::open(&dest)
        .and_then(|f| f.sync_all())
        .map_err(io_at("syncing", &dest))?;
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
