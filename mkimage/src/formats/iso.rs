//! The hybrid ISO (`live.iso`): one file that boots under UEFI as a CD-ROM and, written
//! raw to a USB stick, as a disk, into a live system whose `/var` is in memory.
//!
//! Layout, made by `xorriso -as mkisofs` (research: shared/design/secure-boot-delta-flash.md
//! C6, X5):
//!
//! - an ISO 9660 file system holding `esp.img`, which is also the **El Torito** EFI boot
//!   image (what firmware reads from a CD) and, through `-efi-boot-part`, a GPT **EFI
//!   System partition** (what firmware reads from a disk): a small FAT with systemd-boot,
//!   `loader.conf` and the *live* UKI;
//! - the squashfs root and its verity tree as two **appended GPT partitions** with the
//!   Discoverable Partitions Specification types and, once xorriso is done, the unique
//!   GUIDs the root hash names (first and last 128 bits), names `root-live` and
//!   `verity-live` and the read-only attribute — so the initrd finds them by `roothash=`
//!   exactly as on the disk image.
//!
//! On a USB stick the kernel reads that GPT itself. A CD-ROM has 2048-byte sectors, and a
//! GPT written in 512-byte units is not found there: the live UKI's initrd (Cairn's dracut
//! module, `cairn.live` on the command line) puts a 512-byte-sector loop device with
//! partition scanning over the CD, which shows the same partitions.
//!
//! The live UKI is the image's UKI with [`LIVE_WORDS`] added to its command line: no
//! `/etc/fstab` (whose `/var` names a state partition a live medium has not), `/var` a
//! tmpfs (`systemd.volatile=state`), and `cairn.live`, which the node reads (no update
//! slots, no state partition to grow or read a machine-id from).
//!
//! Reproducible: xorriso takes its dates and GPT disk GUID from `SOURCE_DATE_EPOCH` and
//! `--gpt_disk_guid`, mkfs.fat is run with `--invariant` and mtools with
//! `SOURCE_DATE_EPOCH`, and the partition GUIDs are set by `sgdisk`. Tested with
//! `sgdisk -v`, `fsck.fat -n`, `xorriso -report_el_torito`, two builds compared, and
//! boots under OVMF as a CD-ROM and as a disk (qemu-tests).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_disk::guid::Guid;

use crate::ioerr::io_err;
use crate::tools;

/// Words the live UKI's command line adds to the image's.
pub const LIVE_WORDS: [&str; 3] = ["cairn.live", "fstab=no", "systemd.volatile=state"];

/// El Torito counts a boot image in 512-byte blocks in 16 bits: firmware that reads the
/// count literally sees at most this much of the EFI boot image.
pub const ELTORITO_MAX: u64 = 65535 * 512;

/// DPS root partition type (x86-64).
const ROOT_TYPE: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
/// DPS root verity partition type (x86-64).
const VERITY_TYPE: &str = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5";

/// A byte range of a file.
#[derive(Debug, Clone)]
pub struct Range {
    /// The file.
    pub file: PathBuf,
    /// Offset in it.
    pub offset: u64,
    /// Length.
    pub size: u64,
}

/// What goes into the ISO.
#[derive(Debug, Clone)]
pub struct IsoSpec {
    /// ISO 9660 volume id (A–Z, 0–9, `_`; at most 32).
    pub volume: String,
    /// The ESP's files: path (with `/`) and bytes.
    pub esp_files: Vec<(String, Vec<u8>)>,
    /// The squashfs root.
    pub root: Range,
    /// Its verity tree.
    pub verity: Range,
    /// The root hash: the root and verity partitions' GUIDs.
    pub root_hash: [u8; 32],
    /// `SOURCE_DATE_EPOCH`.
    pub epoch: u64,
}

/// Problems making the ISO.
#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    /// IO on a named file.
    #[error(transparent)]
    Io(#[from] crate::ioerr::IoError),
    /// A tool failed.
    #[error(transparent)]
    Tool(#[from] tools::ToolError),
    /// The input cannot be made into an ISO.
    #[error("{0}")]
    Invalid(String),
}

/// The ESP image's size for `files`: their clusters (4 KiB, rounded up) and directories,
/// plus a MiB for the FAT and slack, in whole MiB.
pub fn esp_size(files: &[(String, Vec<u8>)]) -> u64 {
    let data: u64 = files
        .iter()
        .map(|(_, b)| (b.len() as u64).div_ceil(4096) * 4096 + 4096)
        .sum();
    (data + (2 << 20)).div_ceil(1 << 20) * (1 << 20)
}

/// Make the ISO at `out`, using `work` (an empty scratch directory, removed by the
/// caller) for the ESP image and the partition payloads.
pub fn write(spec: &IsoSpec, out: &Path, work: &Path) -> Result<(), IsoError> {
    if spec.volume.is_empty()
        || spec.volume.len() > 32
        || !spec
            .volume
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(IsoError::Invalid(format!(
            "ISO volume id '{}' must be 1–32 characters of A–Z, 0–9 and '_'",
            spec.volume
        )));
    }
    let root_dir = work.join("isoroot");
    fs::create_dir_all(&root_dir).map_err(io_err("creating", &root_dir))?;
    let esp = root_dir.join("esp.img");
    write_esp(spec, &esp, work)?;
    let root = work.join("root.img");
    let verity = work.join("verity.img");
    copy_range(&spec.root, &root)?;
    copy_range(&spec.verity, &verity)?;
    for p in [&esp, &root, &verity] {
        set_mtime(p, spec.epoch)?;
    }
    set_mtime(&root_dir, spec.epoch)?;

    let disk_guid = Guid::derive("iso disk guid", &spec.root_hash);
    let _ = fs::remove_file(out);
    tools::run(
        Command::new("xorriso")
            .env("SOURCE_DATE_EPOCH", spec.epoch.to_string())
            .args(["-as", "mkisofs", "-quiet", "-o"])
            .arg(out)
            .args(["-R", "-J", "-V", &spec.volume])
            .args(["--gpt_disk_guid", &disk_guid.to_string()])
            .args(["-e", "esp.img", "-no-emul-boot", "-efi-boot-part", "--efi-boot-image"])
            .args(["-append_partition", "3", ROOT_TYPE])
            .arg(&root)
            .args(["-append_partition", "4", VERITY_TYPE])
            .arg(&verity)
            .arg("-appended_part_as_gpt")
            .arg(&root_dir),
        "xorriso",
    )?;
    name_partitions(spec, out)
}

/// The FAT ESP image: mkfs.fat (FAT12/16 at these sizes, as UEFI reads on removable
/// media), then mtools, both deterministic with `--invariant` and `SOURCE_DATE_EPOCH`.
fn write_esp(spec: &IsoSpec, esp: &Path, work: &Path) -> Result<(), IsoError> {
    let size = esp_size(&spec.esp_files);
    if size > ELTORITO_MAX {
        return Err(IsoError::Invalid(format!(
            "the ISO's EFI boot image would be {} MiB (systemd-boot and the live UKI); El Torito \
             describes at most 32 MiB, and firmware that reads the count literally would not see \
             the rest: make the UKI smaller (fewer [initrd] drivers or modules)",
            size >> 20
        )));
    }
    let volume_id = hex::encode(&Guid::derive("iso esp volume id", &spec.root_hash).0[..4]);
    tools::run(
        Command::new("mkfs.fat")
            .args(["--invariant", "-i", &volume_id, "-n", "CAIRN-LIVE", "-C"])
            .arg(esp)
            .arg((size / 1024).to_string())
            .stdout(std::process::Stdio::null()),
        "mkfs.fat",
    )?;
    let files = work.join("esp-files");
    let mut dirs: Vec<String> = Vec::new();
    for (path, bytes) in &spec.esp_files {
        let mut at = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            at = format!("{at}/{part}");
            if !dirs.contains(&at) {
                dirs.push(at.clone());
            }
        }
        let local = files.join(path);
        fs::create_dir_all(local.parent().expect("a file path has a parent")).map_err(io_err("creating", &files))?;
        fs::write(&local, bytes).map_err(io_err("writing", &local))?;
        set_mtime(&local, spec.epoch)?;
    }
    let mtools = |tool: &str| {
        let mut c = Command::new(tool);
        c.env("SOURCE_DATE_EPOCH", spec.epoch.to_string())
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(esp);
        c
    };
    if !dirs.is_empty() {
        tools::run(mtools("mmd").args(dirs.iter().map(|d| format!("::{d}"))), "mmd")?;
    }
    for (path, _) in &spec.esp_files {
        tools::run(
            mtools("mcopy")
                .arg("-m")
                .arg(files.join(path))
                .arg(format!("::/{path}")),
            "mcopy",
        )?;
    }
    Ok(())
}

/// Give the appended partitions their GUIDs, names and the read-only attribute. xorriso
/// numbers GPT entries itself (with "gap" entries for the ISO 9660 areas), so they are
/// found by type.
fn name_partitions(spec: &IsoSpec, iso: &Path) -> Result<(), IsoError> {
    let out = Command::new("sfdisk")
        .arg("-J")
        .arg(iso)
        .output()
        .map_err(|source| tools::ToolError::Spawn {
            tool: "sfdisk".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(tools::ToolError::Failed {
            tool: "sfdisk".into(),
            status: out.status.to_string(),
            stderr: tools::tail(&out.stderr),
        }
        .into());
    }
    let table: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| IsoError::Invalid(format!("sfdisk -J on {}: {e}", iso.display())))?;
    let parts = table["partitiontable"]["partitions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let number_of = |ty: &str| -> Result<String, IsoError> {
        let found: Vec<String> = parts
            .iter()
            .filter(|p| p["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case(ty)))
            .filter_map(|p| p["node"].as_str())
            .map(|node| {
                node.trim_start_matches(&*iso.to_string_lossy())
                    .trim_start_matches('p')
                    .to_string()
            })
            .collect();
        match found.as_slice() {
            [n] => Ok(n.clone()),
            _ => Err(IsoError::Invalid(format!(
                "xorriso's partition table has {} partitions of type {ty}, not one",
                found.len()
            ))),
        }
    };
    let root = number_of(ROOT_TYPE)?;
    let verity = number_of(VERITY_TYPE)?;
    let half = |h: &[u8]| Guid(h.try_into().expect("16 bytes")).to_string();
    tools::run(
        Command::new("sgdisk")
            .arg(format!("--partition-guid={root}:{}", half(&spec.root_hash[..16])))
            .arg(format!("--partition-guid={verity}:{}", half(&spec.root_hash[16..])))
            .arg(format!("--change-name={root}:root-live"))
            .arg(format!("--change-name={verity}:verity-live"))
            .arg(format!("--attributes={root}:set:60"))
            .arg(format!("--attributes={verity}:set:60"))
            .arg(iso)
            .stdout(std::process::Stdio::null()),
        "sgdisk",
    )?;
    Ok(())
}

fn copy_range(r: &Range, to: &Path) -> Result<(), IsoError> {
    let mut from = fs::File::open(&r.file).map_err(io_err("opening", &r.file))?;
    from.seek(SeekFrom::Start(r.offset))
        .map_err(io_err("reading", &r.file))?;
    let mut out = fs::File::create(to).map_err(io_err("creating", to))?;
    let n = std::io::copy(&mut Read::by_ref(&mut from).take(r.size), &mut out).map_err(io_err("copying", &r.file))?;
    if n != r.size {
        return Err(IsoError::Invalid(format!(
            "{} ends before {} bytes at offset {}",
            r.file.display(),
            r.size,
            r.offset
        )));
    }
    out.flush().map_err(io_err("writing", to))?;
    Ok(())
}

fn set_mtime(p: &Path, epoch: u64) -> Result<(), IsoError> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    let f = fs::File::open(p).map_err(io_err("opening", p))?;
    f.set_modified(t).map_err(io_err("setting the time of", p))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_esp_is_sized_for_its_files_in_whole_mib() {
        let files = vec![
            ("EFI/BOOT/BOOTX64.EFI".to_string(), vec![1; 140_000]),
            ("EFI/Linux/cairn_1.efi".to_string(), vec![1; 22 << 20]),
        ];
        let s = esp_size(&files);
        assert_eq!(s % (1 << 20), 0);
        assert!(s >= (22 << 20) + 140_000 + (1 << 20), "{s}");
        assert!(s <= 26 << 20, "{s}");
    }
}
