//! The build's files beside `disk.raw` and its manifest: the SBOM (`sbom.spdx.json`,
//! always) and the other forms of `disk.raw` asked for with `[output] formats` or
//! `--format`: `disk.raw.bmap` (from the manifest's data ranges), `disk.raw.zst` (zstd),
//! `disk.qcow2` (qemu-img) and `live.iso` (`formats::iso`). Each is listed with its size and sha256 in
//! `outputs.json`, signed with the manifest's key and bound to the manifest by its sha256
//! (why a second file: `cairn_signing::outputs`).
//!
//! Every one is a function of `disk.raw`'s bytes and the tools' versions, so two builds
//! of the same inputs give the same files: the bmap is rendered from the data map, not
//! from how the file is stored; zstd runs in its multi-threaded mode, whose output does
//! not depend on the number of threads (unlike its single-threaded mode); qemu-img writes
//! clusters in order.

use std::fs;
use std::path::Path;
use std::process::Command;

use cairn_signing::outputs::{self, OutputFile, Outputs};
use cairn_signing::{Manifest, PrivateKey};
use sha2::{Digest, Sha256};

use super::BuildError;
use crate::definition::OutputFormat;
use crate::formats::{bmap, iso};
use crate::ioerr::io_err;
use crate::tools;

/// The names of every file this module may write, for removing stale ones.
pub(super) fn all_files() -> Vec<&'static str> {
    OutputFormat::ALL
        .into_iter()
        .filter(|f| *f != OutputFormat::Raw)
        .map(OutputFormat::file)
        .chain([crate::sbom::FILE, outputs::FILE, outputs::SIGNATURE_FILE])
        .collect()
}

/// The signed manifest the outputs are bound to, and the key that signs their list.
pub(super) struct Signed<'a> {
    pub manifest: &'a Manifest,
    /// The manifest's bytes as written.
    pub bytes: &'a [u8],
    pub key: &'a PrivateKey,
}

/// Write the SBOM `sbom` and the outputs `formats` asks for besides `disk.raw` into
/// `dir` (which holds `disk.raw` and the signed manifest), then `outputs.json` and its
/// signature. `live_esp` is the live ISO's ESP files when `formats` has the ISO. Returns
/// the files written, `outputs.json` last.
pub(super) fn write(
    dir: &Path,
    formats: &[OutputFormat],
    signed: &Signed,
    sbom: &[u8],
    live_esp: Option<&[(String, Vec<u8>)]>,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<&'static str>, BuildError> {
    let Signed {
        manifest,
        bytes: manifest_bytes,
        key,
    } = *signed;
    let disk = dir.join(&manifest.disk.file);
    let path = dir.join(crate::sbom::FILE);
    fs::write(&path, sbom).map_err(io_err("writing", &path))?;
    let mut files = vec![OutputFile {
        file: crate::sbom::FILE.to_string(),
        format: "spdx".to_string(),
        size: sbom.len() as u64,
        sha256: hex::encode(Sha256::digest(sbom)),
    }];
    for &format in formats.iter().filter(|f| **f != OutputFormat::Raw) {
        let name = format.file();
        let path = dir.join(name);
        match format {
            OutputFormat::Raw => unreachable!("filtered out above"),
            OutputFormat::Bmap => {
                let ranges: Vec<bmap::Range> = manifest
                    .disk
                    .data
                    .iter()
                    .map(|r| bmap::Range {
                        offset: r.offset,
                        size: r.size,
                        sha256: r.sha256.clone(),
                    })
                    .collect();
                let text = bmap::render(manifest.disk.size, &ranges)
                    .map_err(|e| BuildError::Output(path.clone(), e.to_string()))?;
                fs::write(&path, text).map_err(io_err("writing", &path))?;
            }
            OutputFormat::RawZst => {
                log(&format!("outputs: {name} (zstd)"));
                tools::run(
                    Command::new("zstd")
                        .args(["-q", "-3", "-T0", "--no-progress", "-f", "-o"])
                        .arg(&path)
                        .arg(&disk),
                    "zstd",
                )?;
            }
            OutputFormat::Iso => {
                log(&format!(
                    "outputs: {name} (hybrid ISO: a CD-ROM or a USB stick, /var in memory)"
                ));
                let esp_files = live_esp.expect("the ESP stage makes the live UKI when the ISO is asked for");
                let range = |payload: &str| -> Result<iso::Range, BuildError> {
                    let p = manifest.payload(payload).ok_or_else(|| {
                        BuildError::Output(path.clone(), format!("the manifest has no {payload} payload"))
                    })?;
                    Ok(iso::Range {
                        file: disk.clone(),
                        offset: p.offset,
                        size: p.size,
                    })
                };
                let root_hash: [u8; 32] = hex::decode(&manifest.root_hash)
                    .ok()
                    .and_then(|h| h.try_into().ok())
                    .ok_or_else(|| {
                        BuildError::Output(path.clone(), "the manifest's root hash is not 32 bytes".into())
                    })?;
                let work = dir.join(".iso-work");
                let _ = fs::remove_dir_all(&work);
                let made = iso::write(
                    &iso::IsoSpec {
                        volume: "CAIRN_LIVE".into(),
                        esp_files: esp_files.to_vec(),
                        root: range("root")?,
                        verity: range("verity")?,
                        root_hash,
                        epoch: manifest.source_date_epoch,
                    },
                    &path,
                    &work,
                );
                let _ = fs::remove_dir_all(&work);
                made.map_err(|e| BuildError::Output(path.clone(), e.to_string()))?;
            }
            OutputFormat::Qcow2 => {
                log(&format!("outputs: {name} (qemu-img)"));
                tools::run(
                    Command::new("qemu-img")
                        .args(["convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1"])
                        .arg(&disk)
                        .arg(&path),
                    "qemu-img",
                )?;
            }
        }
        let size = fs::metadata(&path).map_err(io_err("reading", &path))?.len();
        let sha256 = crate::packages::store::sha256_file(&path)?;
        files.push(OutputFile {
            file: name.to_string(),
            format: format.name().to_string(),
            size,
            sha256,
        });
    }
    let listed = Outputs {
        format: outputs::FORMAT,
        manifest_sha256: hex::encode(Sha256::digest(manifest_bytes)),
        files,
    };
    let bytes = listed.to_bytes();
    let path = dir.join(outputs::FILE);
    fs::write(&path, &bytes).map_err(io_err("writing", &path))?;
    let sig = dir.join(outputs::SIGNATURE_FILE);
    fs::write(&sig, key.sign(&bytes)).map_err(io_err("writing", &sig))?;
    let mut names: Vec<&'static str> = vec![crate::sbom::FILE];
    names.extend(formats.iter().filter(|f| **f != OutputFormat::Raw).map(|f| f.file()));
    names.extend([outputs::SIGNATURE_FILE, outputs::FILE]);
    log(&format!(
        "outputs: {} listed and signed in {}",
        names.len() - 2,
        outputs::FILE
    ));
    Ok(names)
}
