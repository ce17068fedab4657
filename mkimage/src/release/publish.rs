//! `cairn publish OUT --to DIR`: lay out a build's update bundle for a static web server.
//!
//! ```text
//! DIR/<image>/index.json             what nodes poll: latest version, every release, expiry
//! DIR/<image>/index.json.sig         its signatures (64 bytes per release key)
//! DIR/<image>/<image>_<version>.cairn the bundles, never rewritten once published
//! ```
//!
//! The bundle is verified with the release key first (what a node will check), copied in
//! under a temporary name and renamed, and only then the index is replaced (also through a
//! rename), so a client never sees an index that names a missing or partial bundle. The
//! index is signed by every given release key (`index.json.sig`) and expires after the
//! given time: publishing the same release again only signs the index anew with a new
//! expiry; a different bundle under a published version is refused (versions are immutable
//! once nodes may have seen them). Publishers
//! running at once take turns on `DIR/<image>/.publish.lock`, so no index entry is lost
//! between one's read and another's write.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use cairn_signing::bundle::{self, compare_versions, Index, Release};
use cairn_signing::PrivateKey;

use crate::ioerr::io_err;
use crate::release::verify::{self, VerifyError};

/// What went wrong publishing.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The bundle does not verify.
    #[error("the bundle does not verify")]
    Verify(#[from] VerifyError),
    /// IO on a named path.
    #[error(transparent)]
    Io(#[from] crate::ioerr::IoError),
    /// The existing index cannot be read.
    #[error("{path}: {detail}\n  hint: the directory must hold only what `cairn publish` wrote")]
    Index {
        /// The index file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// A development build, and publishing one was not asked for.
    #[error("{name} {version} is a development build (cairn build --dev)\n  hint: build without --dev to publish a release, or pass --allow-development for a test fleet")]
    Development {
        /// Image name.
        name: String,
        /// Its version.
        version: String,
    },
    /// A version that is already published with other content.
    #[error("{version} is already published with another bundle ({path})\n  hint: published versions are immutable; build with a new --image-version")]
    Conflict {
        /// The version.
        version: String,
        /// The published bundle.
        path: PathBuf,
    },
}

/// What was published.
#[derive(Debug, Clone)]
pub struct Published {
    /// The index after publishing.
    pub index: Index,
    /// The image's directory under the publish root.
    pub dir: PathBuf,
    /// Whether the bundle was already there.
    pub unchanged: bool,
}

/// An index of format 1 (unsigned, no expiry; older Cairns) as format 2, so publishing
/// into an older directory carries its releases on. Anything else is returned as it is.
fn upgrade_index(bytes: &[u8]) -> Vec<u8> {
    let Ok(serde_json::Value::Object(mut v)) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return bytes.to_vec();
    };
    if v.get("index-format") != Some(&serde_json::Value::from(1)) {
        return bytes.to_vec();
    }
    v.insert("index-format".into(), bundle::INDEX_FORMAT.into());
    v.insert("expires".into(), "1970-01-01T00:00:00Z".into());
    serde_json::to_vec(&v).unwrap_or_else(|_| bytes.to_vec())
}

/// Hold `dir/.publish.lock` exclusively until the returned file is dropped.
fn lock_dir(dir: &Path) -> Result<File, PublishError> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(".publish.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io_err("opening", &path))?;
    rustix::fs::flock(f.as_fd(), rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err("locking", &path)(e.into()))?;
    Ok(f)
}

/// Publish the bundle of the build in `out` (or a bundle file) into `to`, signing the index
/// with `keys` (the bundle must be signed by one of them) and letting it expire in
/// `valid_secs`.
pub fn publish(
    out: &Path,
    to: &Path,
    keys: &[PrivateKey],
    valid_secs: u64,
    allow_development: bool,
) -> Result<Published, PublishError> {
    let src = if out.is_dir() {
        out.join(bundle::FILE)
    } else {
        out.to_owned()
    };
    let publics: Vec<_> = keys.iter().map(PrivateKey::public).collect();
    let (m, _) = verify::verify_bundle_any(&src, &publics)?;
    if m.development_build && !allow_development {
        return Err(PublishError::Development {
            name: m.name,
            version: m.version,
        });
    }
    // The bundle format admits only plain image names; check again where it becomes a path.
    assert!(
        bundle::valid_image_name(&m.name),
        "a verified bundle has a plain image name"
    );
    let dir = to.join(&m.name);
    fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    let _turn = lock_dir(&dir)?;
    let index_path = dir.join(bundle::INDEX_FILE);
    let mut index = match fs::read(&index_path) {
        Ok(b) => Index::parse(&upgrade_index(&b)).map_err(|detail| PublishError::Index {
            path: index_path.clone(),
            detail,
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Index {
            index_format: bundle::INDEX_FORMAT,
            name: m.name.clone(),
            latest: m.version.clone(),
            expires: String::new(),
            releases: vec![],
        },
        Err(e) => return Err(io_err("reading", &index_path)(e).into()),
    };
    if index.name != m.name {
        return Err(PublishError::Index {
            path: index_path,
            detail: format!("it lists image {:?}, the bundle is {:?}", index.name, m.name),
        });
    }
    let file = format!("{}_{}.cairn", m.name, m.version);
    let dest = dir.join(&file);
    let sha = crate::packages::store::sha256_file(&src)?;
    let size = fs::metadata(&src).map_err(io_err("reading", &src))?.len();
    let unchanged = match index.release(&m.version) {
        Some(r) if r.sha256 == sha && dest.is_file() => true,
        Some(_) => {
            return Err(PublishError::Conflict {
                version: m.version.clone(),
                path: dest,
            })
        }
        None => false,
    };
    if !unchanged {
        let tmp = dir.join(crate::packages::store::unique(&format!(".{file}.tmp")));
        let copied = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut t| {
                io::copy(&mut File::open(&src)?, &mut t)?;
                t.sync_all()
            })
            .and_then(|_| fs::rename(&tmp, &dest));
        if let Err(e) = copied {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("publishing", &dest)(e).into());
        }
        index.releases.push(Release {
            version: m.version.clone(),
            file,
            size,
            sha256: sha,
            root_hash: m.root_hash.clone(),
        });
        index.releases.sort_by(|a, b| compare_versions(&a.version, &b.version));
        index.latest = index.releases.last().expect("just added one").version.clone();
    }
    index.index_format = bundle::INDEX_FORMAT;
    index.expires = cairn_signing::time::format_utc(cairn_signing::time::now() + valid_secs);
    let refs: Vec<&PrivateKey> = keys.iter().collect();
    let (bytes, sigs) = index.sign(&refs);
    // Signatures first: a client that reads the new index with the old signatures in
    // between retries at its next poll; one that never sees a new index never trusts it.
    let sig_path = dir.join(bundle::INDEX_SIG_FILE);
    cairn_signing::write_file_atomic(&sig_path, &sigs, 0o644).map_err(io_err("writing", &sig_path))?;
    cairn_signing::write_file_atomic(&index_path, &bytes, 0o644).map_err(io_err("writing", &index_path))?;
    Ok(Published { index, dir, unchanged })
}
