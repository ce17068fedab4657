//! `cairn verify`: check a build output against its signed manifest.
//!
//! Order matters: the signature is checked before the manifest is parsed, and every
//! later check compares the disk against values from the now-trusted manifest: the
//! disk's size and sha256, each payload's sha256, the partition table (both copies, all
//! CRCs, every entry), the active slot's UUIDs against the root hash, a recomputed
//! verity tree against both the stored tree and the root hash, and the UKI's command
//! line against the root hash.
//!
//! A build directory's `update.cairn` is checked as a bundle alone ([`verify_bundle`]:
//! header, signature, every payload hash while streaming, the verity tree recomputed from
//! the root payload, the UKI's `roothash=`) and then against the image manifest: same
//! image, version, root hash and payload hashes.

use crate::ioerr::{io_err, IoError};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use cairn_signing::bundle::{self, BundleError, BundleManifest, BundleReader};
use cairn_signing::{Manifest, ManifestError, PublicKey};

use crate::build::{sha256_range, MANIFEST_FILE, SIGNATURE_FILE};
use crate::formats::uki;
use crate::gpt::{self, BACKUP_SECTORS, FIRST_USABLE, SECTOR};
use crate::verity::{self, VerityParams};
use cairn_disk::extents;

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// IO on a named file.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The manifest or its signature.
    #[error("{path}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: ManifestError,
    },
    /// The update bundle is not sound.
    #[error("{path}")]
    Bundle {
        /// The bundle file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: BundleError,
    },
    /// Something on disk differs from the manifest.
    #[error("MISMATCH: {what}: manifest says {expected}, found {found}")]
    Mismatch {
        /// What was compared.
        what: String,
        /// The manifest's value.
        expected: String,
        /// What is there.
        found: String,
    },
}

fn expect_eq(what: impl Into<String>, expected: impl ToString, found: impl ToString) -> Result<(), VerifyError> {
    let (e, f) = (expected.to_string(), found.to_string());
    if e == f {
        Ok(())
    } else {
        Err(VerifyError::Mismatch {
            what: what.into(),
            expected: e,
            found: f,
        })
    }
}

fn read_range(file: &mut File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(offset))?;
    let mut v = vec![0u8; len as usize];
    file.read_exact(&mut v)?;
    Ok(v)
}

/// Verify the build in `dir`; returns the manifest and a line per check that passed.
pub fn verify_dir(dir: &Path, key: &PublicKey) -> Result<(Manifest, Vec<String>), VerifyError> {
    let mpath = dir.join(MANIFEST_FILE);
    let spath = dir.join(SIGNATURE_FILE);
    let bytes = std::fs::read(&mpath).map_err(io_err("reading", &mpath))?;
    let sig = std::fs::read(&spath).map_err(io_err("reading", &spath))?;
    let m = Manifest::from_signed(&bytes, &sig, key).map_err(|source| VerifyError::Manifest {
        path: mpath.clone(),
        source,
    })?;
    let mut ok = vec![format!("signature: good, key {}", key.fingerprint())];

    let dpath = dir.join(&m.disk.file);
    let mut disk = File::open(&dpath).map_err(io_err("opening", &dpath))?;
    let size = disk.metadata().map_err(io_err("reading", &dpath))?.len();
    expect_eq("disk size", m.disk.size, size)?;
    let want: Vec<extents::DataRange> = m
        .disk
        .data
        .iter()
        .map(|r| extents::DataRange {
            offset: r.offset,
            size: r.size,
            sha256: hex::decode(&r.sha256)
                .ok()
                .and_then(|v| v.try_into().ok())
                .unwrap_or_default(),
        })
        .collect();
    if let Err(e) = extents::check(&disk, size, &want).map_err(io_err("reading", &dpath))? {
        return Err(VerifyError::Mismatch {
            what: "disk data".into(),
            expected: format!("{} data ranges with these sha256s, zeros elsewhere", want.len()),
            found: e.to_string(),
        });
    }
    let data: u64 = want.iter().map(|r| r.size).sum();
    ok.push(format!(
        "disk: {size} bytes; {} data ranges ({data} bytes) match, the rest is zero",
        want.len()
    ));
    if m.build == cairn_signing::BuildKind::Development {
        ok.push("build: a development build (--dev), not a release".into());
    }

    for p in &m.payloads {
        if p.offset.checked_add(p.size).is_none_or(|end| end > size) {
            return Err(VerifyError::Mismatch {
                what: format!("payload {} range", p.name),
                expected: format!("inside the {size}-byte disk"),
                found: format!("{}+{}", p.offset, p.size),
            });
        }
        let h = sha256_range(&mut disk, p.offset, p.size).map_err(io_err("hashing", &dpath))?;
        expect_eq(format!("payload {} sha256", p.name), &p.sha256, hex::encode(h))?;
        ok.push(format!("payload {}: {} bytes, sha256 matches", p.name, p.size));
    }

    // Partition table.
    let head = read_range(&mut disk, 0, FIRST_USABLE * SECTOR).map_err(io_err("reading", &dpath))?;
    let tail = read_range(&mut disk, size - BACKUP_SECTORS * SECTOR, BACKUP_SECTORS * SECTOR)
        .map_err(io_err("reading", &dpath))?;
    let (disk_guid, parts) = gpt::read(&head, &tail, size).map_err(|e| VerifyError::Mismatch {
        what: "partition table".into(),
        expected: "a valid GPT".into(),
        found: e.to_string(),
    })?;
    expect_eq("disk GUID", &m.disk.guid, disk_guid)?;
    expect_eq("number of partitions", m.partitions.len(), parts.len())?;
    for (want, got) in m.partitions.iter().zip(&parts) {
        let n = &want.label;
        expect_eq(format!("partition {n} label"), n, &got.name)?;
        expect_eq(format!("partition {n} type"), &want.type_guid, got.type_guid)?;
        expect_eq(format!("partition {n} UUID"), &want.uuid, got.uuid)?;
        expect_eq(format!("partition {n} offset"), want.offset, got.offset())?;
        expect_eq(format!("partition {n} size"), want.size, got.size())?;
        expect_eq(format!("partition {n} attributes"), want.attributes, got.attributes)?;
    }
    let uuid_of = |label: &str| parts.iter().find(|p| p.name == label).map(|p| p.uuid.0);
    let root_hash = hex::decode(&m.root_hash).map_err(|_| VerifyError::Mismatch {
        what: "root hash".into(),
        expected: "64 hex digits".into(),
        found: m.root_hash.clone(),
    })?;
    expect_eq(
        "root-a UUID (first half of the root hash)",
        hex::encode(&root_hash[..16]),
        hex::encode(uuid_of("root-a").unwrap_or_default()),
    )?;
    expect_eq(
        "verity-a UUID (second half of the root hash)",
        hex::encode(&root_hash[16..]),
        hex::encode(uuid_of("verity-a").unwrap_or_default()),
    )?;
    ok.push(format!(
        "partition table: {} partitions, both copies and CRCs good",
        parts.len()
    ));

    // Verity: recompute from the root payload with the stored superblock's salt and UUID.
    let (Some(root), Some(vp)) = (m.payload("root"), m.payload("verity")) else {
        return Err(VerifyError::Mismatch {
            what: "payloads".into(),
            expected: "root and verity".into(),
            found: "missing".into(),
        });
    };
    let stored = read_range(&mut disk, vp.offset, vp.size).map_err(io_err("reading", &dpath))?;
    disk.seek(SeekFrom::Start(root.offset))
        .map_err(io_err("reading", &dpath))?;
    check_verity("", &mut disk, root.size, &stored, &m.verity_salt, &m.root_hash, &dpath)?;
    ok.push(format!("verity: recomputed root hash {} matches", m.root_hash));

    // UKI command line.
    if let Some(up) = m.payload("uki") {
        let image = read_range(&mut disk, up.offset, up.size).map_err(io_err("reading", &dpath))?;
        let cmdline = uki::section(&image, ".cmdline")
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .unwrap_or_default();
        let want = format!("roothash={}", m.root_hash);
        if !cmdline.split_whitespace().any(|w| w == want) {
            return Err(VerifyError::Mismatch {
                what: "UKI command line".into(),
                expected: want,
                found: cmdline,
            });
        }
        ok.push("uki: command line carries the root hash".to_string());
    }

    // The update bundle beside the disk: sound alone, and the same release.
    let bpath = dir.join(bundle::FILE);
    let (b, checks) = verify_bundle(&bpath, key)?;
    ok.extend(checks.into_iter().map(|c| format!("{}: {c}", bundle::FILE)));
    expect_eq("bundle image name", &m.name, &b.name)?;
    expect_eq("bundle version", &m.version, &b.version)?;
    expect_eq("bundle root hash", &m.root_hash, &b.root_hash)?;
    for bp in &b.payloads {
        let dp = m.payload(&bp.name).map(|p| p.sha256.as_str()).unwrap_or("(none)");
        expect_eq(format!("bundle payload {} sha256", bp.name), dp, &bp.sha256)?;
    }
    ok.push(format!("{}: same release as the disk image", bundle::FILE));
    ok.extend(verify_outputs(dir, &bytes, key)?);
    Ok((m, ok))
}

/// The build's other outputs (`outputs.json`: the SBOM and the disk image's other forms): signed with `key`, naming this manifest,
/// and every file it lists there with its size and sha256. An output file that no signed
/// list names is a mismatch too (a stale or planted bmap must not pass as this build's).
fn verify_outputs(dir: &Path, manifest_bytes: &[u8], key: &PublicKey) -> Result<Vec<String>, VerifyError> {
    use cairn_signing::outputs::{self, Outputs};
    use sha2::{Digest, Sha256};
    let lpath = dir.join(outputs::FILE);
    let known = crate::definition::OutputFormat::ALL
        .into_iter()
        .filter(|f| *f != crate::definition::OutputFormat::Raw)
        .map(|f| f.file())
        .chain([crate::sbom::FILE]);
    if !lpath.exists() {
        if let Some(f) = known.into_iter().find(|f| dir.join(f).exists()) {
            return Err(VerifyError::Mismatch {
                what: f.to_string(),
                expected: format!("listed in a signed {}", outputs::FILE),
                found: format!("no {} beside it", outputs::FILE),
            });
        }
        return Ok(vec![]);
    }
    let spath = dir.join(outputs::SIGNATURE_FILE);
    let bytes = std::fs::read(&lpath).map_err(io_err("reading", &lpath))?;
    let sig = std::fs::read(&spath).map_err(io_err("reading", &spath))?;
    let list = Outputs::from_signed(&bytes, &sig, key).map_err(|e| VerifyError::Mismatch {
        what: outputs::FILE.into(),
        expected: "signed with the manifest's key".into(),
        found: e.to_string(),
    })?;
    expect_eq(
        format!("{} manifest sha256", outputs::FILE),
        &list.manifest_sha256,
        hex::encode(Sha256::digest(manifest_bytes)),
    )?;
    let mut ok = vec![format!("{}: signature good, names this manifest", outputs::FILE)];
    for f in known {
        if dir.join(f).exists() && !list.files.iter().any(|l| l.file == f) {
            return Err(VerifyError::Mismatch {
                what: f.to_string(),
                expected: format!("listed in {}", outputs::FILE),
                found: "not listed".into(),
            });
        }
    }
    for f in &list.files {
        let path = dir.join(&f.file);
        let missing = |e: &dyn std::fmt::Display| VerifyError::Mismatch {
            what: f.file.clone(),
            expected: format!("{} bytes", f.size),
            found: e.to_string(),
        };
        let size = std::fs::metadata(&path).map_err(|e| missing(&e))?.len();
        let sha256 = crate::packages::store::sha256_file(&path).map_err(|e| missing(&e))?;
        expect_eq(format!("{} size", f.file), f.size, size)?;
        expect_eq(format!("{} sha256", f.file), &f.sha256, sha256)?;
        ok.push(format!("{} ({}): {size} bytes, sha256 matches", f.file, f.format));
    }
    Ok(ok)
}

/// Recompute the verity tree of `len` bytes of `root` with the salt and UUID of the stored
/// tree's superblock, and compare it with the stored tree and `root_hash`. `prefix` names
/// the copy in mismatches ("" for the disk, "bundle " for the bundle).
fn check_verity(
    prefix: &str,
    root: &mut dyn Read,
    len: u64,
    stored: &[u8],
    salt_hex: &str,
    root_hash: &str,
    path: &Path,
) -> Result<(), VerifyError> {
    let salt: [u8; 32] = hex::decode(salt_hex)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| VerifyError::Mismatch {
            what: format!("{prefix}verity salt"),
            expected: "64 hex digits".into(),
            found: salt_hex.to_string(),
        })?;
    if stored.len() < 4096 || stored[88..120] != salt {
        return Err(VerifyError::Mismatch {
            what: format!("{prefix}verity superblock salt"),
            expected: salt_hex.to_string(),
            found: hex::encode(stored.get(88..120).unwrap_or(&[])),
        });
    }
    let params = VerityParams {
        salt,
        uuid: stored[16..32].try_into().expect("16 bytes"),
    };
    let tree = verity::build(root, len, &params).map_err(io_err("hashing", path))?;
    expect_eq(
        format!("{prefix}verity root hash"),
        root_hash,
        hex::encode(tree.root_hash),
    )?;
    if tree.hash_device != stored {
        return Err(VerifyError::Mismatch {
            what: format!("{prefix}verity hash tree"),
            expected: "the tree of the root payload".into(),
            found: "different bytes".into(),
        });
    }
    Ok(())
}

/// Verify an update bundle alone: signature, structure, payload hashes, the verity tree
/// recomputed from the root payload, and the UKI's command line. Returns the manifest and
/// a line per check that passed.
pub fn verify_bundle(path: &Path, key: &PublicKey) -> Result<(BundleManifest, Vec<String>), VerifyError> {
    verify_bundle_any(path, std::slice::from_ref(key))
}

/// [`verify_bundle`] with any of `keys`.
pub fn verify_bundle_any(path: &Path, keys: &[PublicKey]) -> Result<(BundleManifest, Vec<String>), VerifyError> {
    let berr = |source| VerifyError::Bundle {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err("opening", path))?;
    let size = file.metadata().map_err(io_err("reading", path))?.len();
    let mut reader = BundleReader::open_any(io::BufReader::with_capacity(1 << 20, file), keys).map_err(berr)?;
    let mut ok = vec![format!("signature: good, key {}", reader.manifest().signing_key)];
    let expected = reader.manifest().bundle_size();
    expect_eq("bundle size", expected, size)?;
    let mut root = tempfile::tempfile().map_err(io_err("creating", Path::new("a temporary file")))?;
    let mut tree = Vec::new();
    let mut uki = Vec::new();
    for out in [&mut root as &mut dyn io::Write, &mut tree, &mut uki] {
        let p = reader.next_payload(out, &mut |_, _| {}).map_err(berr)?;
        if let Some(p) = p {
            ok.push(format!("payload {}: {} bytes, sha256 matches", p.name, p.size));
        }
    }
    let m = reader.finish().map_err(berr)?;

    root.seek(SeekFrom::Start(0)).map_err(io_err("reading", path))?;
    let mut root = io::BufReader::new(root);
    check_verity(
        "bundle ",
        &mut root,
        m.payload("root").size,
        &tree,
        &m.verity_salt,
        &m.root_hash,
        path,
    )?;
    ok.push(format!("verity: recomputed root hash {} matches", m.root_hash));
    let found = cairn_disk::pe::uki_root_hash(&uki).unwrap_or_else(|| "(no roothash=)".into());
    expect_eq("bundle UKI roothash=", &m.root_hash, found)?;
    ok.push("uki: command line carries the root hash".to_string());
    Ok((m, ok))
}
