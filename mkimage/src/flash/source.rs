//! The image to flash: a build directory, its `disk.raw`, or its `disk.raw.zst`, always
//! with the signed `manifest.json` beside it. The signature is checked before anything
//! else is read; from then on the manifest's data ranges (each with its sha256) say what
//! to write, and every range read from the image is checked against its hash.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use cairn_signing::{Manifest, PublicKey};

use super::FlashError;
use crate::build::{self, MANIFEST_FILE, SIGNATURE_FILE};

/// Where the image's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// `disk.raw`, read where each range is.
    Raw(PathBuf),
    /// `disk.raw.zst`, decompressed as a stream by `zstd -dc`.
    Zst(PathBuf),
}

/// A verified image.
#[derive(Debug, Clone)]
pub struct Image {
    /// The manifest, its signature checked.
    pub manifest: Manifest,
    /// The image's bytes.
    pub data: Data,
    /// Which key checked it, for the plan.
    pub key: String,
}

/// Open `image` (a build directory, `disk.raw` or `disk.raw.zst`) and check its manifest
/// with `key`, or with this user's development key when no key is given and the image
/// was signed with it.
pub fn open(image: &str, key: Option<&Path>) -> Result<Image, FlashError> {
    if image.starts_with("http://") || image.starts_with("https://") {
        return Err(FlashError::Input(format!(
            "{image}: flashing from a URL is not supported by this Cairn\n  hint: download the build directory's manifest.json, manifest.json.sig and disk.raw.zst, then flash the directory"
        )));
    }
    let path = Path::new(image);
    let (dir, data) = if path.is_dir() {
        let raw = path.join(build::DISK_FILE);
        let zst = path.join("disk.raw.zst");
        let data = if raw.is_file() {
            Data::Raw(raw)
        } else if zst.is_file() {
            Data::Zst(zst)
        } else {
            return Err(FlashError::Input(format!(
                "{}: neither disk.raw nor disk.raw.zst is there",
                path.display()
            )));
        };
        (path.to_owned(), data)
    } else if path.is_file() {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        let data = if image.ends_with(".zst") {
            Data::Zst(path.to_owned())
        } else {
            Data::Raw(path.to_owned())
        };
        (dir, data)
    } else {
        return Err(FlashError::Input(format!(
            "{image}: no such build directory or image file"
        )));
    };
    let (public, which) = match key {
        Some(k) => (
            PublicKey::read(k).map_err(|e| FlashError::Input(format!("reading the key {}: {e}", k.display())))?,
            format!("{}", k.display()),
        ),
        None => {
            let dev = build::public_path_for(&build::dev_key_path());
            let Ok(k) = PublicKey::read(&dev) else {
                return Err(FlashError::Input(
                    "no --key given and no development key on this machine: the image's signature cannot be checked\n  hint: pass the release public key, --key release.pub".into(),
                ));
            };
            (k, format!("this machine's development key {}", dev.display()))
        }
    };
    let mpath = dir.join(MANIFEST_FILE);
    let spath = dir.join(SIGNATURE_FILE);
    let bytes = std::fs::read(&mpath).map_err(|e| {
        FlashError::Input(format!(
            "{}: {e}\n  hint: keep manifest.json and manifest.json.sig beside the image",
            mpath.display()
        ))
    })?;
    let sig = std::fs::read(&spath).map_err(|e| FlashError::Input(format!("{}: {e}", spath.display())))?;
    let manifest = Manifest::from_signed(&bytes, &sig, &public).map_err(|e| {
        FlashError::Input(format!(
            "{}: {e}{}",
            mpath.display(),
            if key.is_none() {
                " (checked with this machine's development key; pass --key with the key that signed it)"
            } else {
                ""
            }
        ))
    })?;
    if let Data::Raw(p) = &data {
        let size = std::fs::metadata(p)
            .map_err(|e| FlashError::Input(format!("{}: {e}", p.display())))?
            .len();
        if size != manifest.disk.size {
            return Err(FlashError::Input(format!(
                "{} holds {size} bytes; its manifest says {}",
                p.display(),
                manifest.disk.size
            )));
        }
    }
    Ok(Image {
        manifest,
        data,
        key: format!("{which} ({})", public.fingerprint()),
    })
}

/// Reads the image's ranges in increasing order.
pub struct Reader {
    kind: Kind,
    /// How far a stream has been read.
    pos: u64,
}

enum Kind {
    Raw(File),
    Zst(Child, ChildStdout),
}

impl Reader {
    /// Start reading `data`.
    pub fn open(data: &Data) -> io::Result<Reader> {
        let kind = match data {
            Data::Raw(p) => Kind::Raw(File::open(p)?),
            Data::Zst(p) => {
                let mut child = Command::new("zstd")
                    .args(["-d", "-c", "-q"])
                    .arg(p)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| io::Error::new(e.kind(), format!("running zstd: {e}")))?;
                let out = child.stdout.take().expect("piped stdout");
                Kind::Zst(child, out)
            }
        };
        Ok(Reader { kind, pos: 0 })
    }

    /// Fill `buf` with the image's bytes at `offset` (never before the last read's end).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match &mut self.kind {
            Kind::Raw(f) => f.read_exact_at(buf, offset)?,
            Kind::Zst(_, out) => {
                if offset < self.pos {
                    return Err(io::Error::other("the compressed image is read in order"));
                }
                let mut skip = offset - self.pos;
                let mut scratch = vec![0u8; 1 << 20];
                while skip > 0 {
                    let n = skip.min(scratch.len() as u64) as usize;
                    out.read_exact(&mut scratch[..n])?;
                    skip -= n as u64;
                }
                out.read_exact(buf)?;
            }
        }
        self.pos = offset + buf.len() as u64;
        Ok(())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Kind::Zst(child, _) = &mut self.kind {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
