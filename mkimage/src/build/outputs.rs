//! The build's files beside `disk.raw` and its manifest: the SBOM (`sbom.spdx.json`,
//! always) and the other forms of `disk.raw` asked for with `[output] formats` or
//! `--format`: `disk.raw.bmap` (from the manifest's data ranges), `disk.raw.zst` (zstd)
//! and `disk.qcow2` (qemu-img). Each is listed with its size and sha256 in
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
use crate::formats::bmap;
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

/// Write the SBOM `sbom` and the outputs `formats` asks for besides `disk.raw` into
/// `dir` (which holds `disk.raw` and the signed manifest `manifest_bytes`), then
/// `outputs.json` and its signature. Returns the files written, `outputs.json` last.
pub(super) fn write(
    dir: &Path,
    formats: &[OutputFormat],
    manifest: &Manifest,
    manifest_bytes: &[u8],
    sbom: &[u8],
    key: &PrivateKey,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<&'static str>, BuildError> {
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
