//! The image to flash: a build directory, its `disk.raw`, or its `disk.raw.zst`, always
//! with the signed `manifest.json` beside it, on this machine or on a web server. The
//! signature is checked before anything else is read; from then on the manifest's data
//! ranges (each with its sha256) say what to write, and every range read from the image
//! is checked against its hash. The live ISO (`live.iso`) is flashed the same way as one
//! range, the whole file, with the size and sha256 the build's signed `outputs.json` lists
//! for it (that list names the manifest by its sha256, so both are checked).
//!
//! From a web server (`http://` or `https://`; a URL is a directory unless its last
//! segment ends in `.zst`, `.raw` or `.img`): `manifest.json` and its signature first
//! (bounded sizes), then `disk.raw.zst` streamed through zstd when the server has it
//! (the smallest transfer, one request), else `disk.raw` by HTTP Range requests for the
//! data ranges only — or, from a server that ignores `Range`, the whole file streamed in
//! order with the zeros between ranges skipped. Nothing the server says is trusted: sizes
//! are bounded, every byte is checked against the signed hashes before it reaches the
//! target's partition table, and plain `http` is as safe as `https` for integrity.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// `disk.raw` on a web server, each range by a Range request.
    RawUrl(String),
    /// `disk.raw.zst` on a web server, streamed through `zstd -dc`.
    ZstUrl(String),
}

/// The largest `outputs.json` read from a server (a real one is under a KiB).
const MAX_OUTPUTS: u64 = 1 << 20;

/// The live ISO `name` as the image to write, found in the build's signed `outputs.json`
/// (`outputs`, `outputs_sig`, bound to `manifest_bytes` by their sha256): the manifest's
/// disk becomes the ISO, one data range of the whole file with the listed sha256, so
/// everything after (plan, size checks, writing, reading back) treats it as it treats
/// `disk.raw`.
fn iso_as_disk(
    mut manifest: Manifest,
    manifest_bytes: &[u8],
    outputs: &[u8],
    outputs_sig: &[u8],
    public: &PublicKey,
    name: &str,
    from: &str,
) -> Result<Manifest, FlashError> {
    use cairn_signing::outputs::Outputs;
    let list =
        Outputs::from_signed(outputs, outputs_sig, public).map_err(|e| FlashError::Input(format!("{from}: {e}")))?;
    if list.manifest_sha256 != hex::encode(<sha2::Sha256 as sha2::Digest>::digest(manifest_bytes)) {
        return Err(FlashError::Input(format!(
            "{from} belongs to another build than the manifest beside it"
        )));
    }
    let Some(entry) = list.files.iter().find(|f| f.file == name && f.format == "iso") else {
        return Err(FlashError::Input(format!(
            "{from} lists no ISO named {name}\n  hint: build with --format iso, and flash the live.iso beside its outputs.json"
        )));
    };
    manifest.disk = cairn_signing::manifest::Disk {
        file: name.to_string(),
        size: entry.size,
        guid: String::new(),
        data: vec![cairn_signing::manifest::DataRange {
            offset: 0,
            size: entry.size,
            sha256: entry.sha256.clone(),
        }],
    };
    Ok(manifest)
}

/// The largest manifest read from a server (a real one is a few KiB).
const MAX_MANIFEST: u64 = 16 << 20;
/// The longest a server may take to answer one request.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);
/// The longest a whole transfer may take (a stalled server is not waited on forever).
const TRANSFER_WITHIN: Duration = Duration::from_secs(6 * 3600);

/// The HTTP client for images: trusted roots for https, bounded answers and transfers.
fn agent() -> ureq::Agent {
    use ureq::tls::{RootCerts, TlsConfig};
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(ANSWER_WITHIN))
        .timeout_global(Some(TRANSFER_WITHIN))
        .http_status_as_error(false)
        .tls_config(TlsConfig::builder().root_certs(RootCerts::PlatformVerifier).build())
        .build()
        .into()
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// A GET of `url` (with `range`, if any): the answer's status and body, or why there is none.
fn get(agent: &ureq::Agent, url: &str, range: Option<(u64, u64)>) -> Result<ureq::http::Response<ureq::Body>, String> {
    let mut req = agent.get(url);
    if let Some((from, len)) = range {
        req = req.header("Range", &format!("bytes={from}-{}", from + len - 1));
    }
    req.call().map_err(|e| format!("{url}: {e}"))
}

/// A small file from a server: at most `limit` bytes, status 200 only.
fn fetch_small(agent: &ureq::Agent, url: &str, limit: u64) -> Result<Vec<u8>, String> {
    let resp = get(agent, url, None)?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(format!("{url}: HTTP {status}"));
    }
    let mut buf = Vec::new();
    resp.into_body()
        .into_reader()
        .take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{url}: {e}"))?;
    if buf.len() as u64 > limit {
        return Err(format!("{url}: larger than {limit} bytes, not a Cairn manifest"));
    }
    Ok(buf)
}

/// The file name of an ISO URL (its last path segment ends in `.iso`).
fn iso_name(url: &str) -> Option<String> {
    let (path, _) = url.split_once(['?', '#']).unwrap_or((url, ""));
    let last = path.rsplit('/').next()?;
    last.ends_with(".iso").then(|| last.to_string())
}

/// Split an image URL into its directory (ending in `/`) and the image file it names, if any.
fn split_url(url: &str) -> (String, Option<Data>) {
    let (path, _) = url.split_once(['?', '#']).unwrap_or((url, ""));
    let last = path.rsplit('/').next().unwrap_or_default();
    let scheme_end = path.find("://").map_or(0, |i| i + 3);
    let is_host_only = !path[scheme_end..].contains('/');
    if !is_host_only && last.ends_with(".zst") {
        (
            path[..path.len() - last.len()].to_string(),
            Some(Data::ZstUrl(url.to_string())),
        )
    } else if !is_host_only && (last.ends_with(".raw") || last.ends_with(".img") || last.ends_with(".iso")) {
        (
            path[..path.len() - last.len()].to_string(),
            Some(Data::RawUrl(url.to_string())),
        )
    } else {
        (format!("{}/", path.trim_end_matches('/')), None)
    }
}

/// Open an image on a web server: the manifest and its signature first, then which file
/// to read (`disk.raw.zst` when there, else `disk.raw`).
fn open_url(url: &str, public: &PublicKey, key_given: bool) -> Result<(Manifest, Data), FlashError> {
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(FlashError::Input(format!(
            "{}: a URL with spaces or control characters is not an image location",
            url.escape_debug()
        )));
    }
    let agent = agent();
    let (dir, named) = split_url(url);
    let mpath = format!("{dir}{MANIFEST_FILE}");
    let bytes = fetch_small(&agent, &mpath, MAX_MANIFEST).map_err(|e| {
        FlashError::Input(format!(
            "{e}\n  hint: serve the build directory's manifest.json and manifest.json.sig beside the image"
        ))
    })?;
    let sig = fetch_small(&agent, &format!("{dir}{SIGNATURE_FILE}"), 4096).map_err(FlashError::Input)?;
    let manifest = check_manifest(&mpath, &bytes, &sig, public, key_given)?;
    let data = match named {
        Some(Data::RawUrl(iso)) if iso_name(&iso).is_some() => {
            let name = iso_name(&iso).unwrap_or_default();
            let opath = format!("{dir}{}", cairn_signing::outputs::FILE);
            let list = fetch_small(&agent, &opath, MAX_OUTPUTS).map_err(|e| {
                FlashError::Input(format!(
                    "{e}\n  hint: serve the build directory's outputs.json and outputs.json.sig beside the ISO"
                ))
            })?;
            let osig = fetch_small(
                &agent,
                &format!("{dir}{}", cairn_signing::outputs::SIGNATURE_FILE),
                4096,
            )
            .map_err(FlashError::Input)?;
            let manifest = iso_as_disk(manifest, &bytes, &list, &osig, public, &name, &opath)?;
            return Ok((manifest, Data::RawUrl(iso)));
        }
        Some(d) => d,
        None => {
            let zst = format!("{dir}disk.raw.zst");
            let head = agent
                .head(&zst)
                .call()
                .map_err(|e| FlashError::Input(format!("{zst}: {e}")))?;
            match head.status().as_u16() {
                200 => Data::ZstUrl(zst),
                404 | 403 | 410 => Data::RawUrl(format!("{dir}{}", build::DISK_FILE)),
                s => return Err(FlashError::Input(format!("{zst}: HTTP {s}"))),
            }
        }
    };
    Ok((manifest, data))
}

/// Check the manifest's signature; the error names where it came from.
fn check_manifest(
    from: &str,
    bytes: &[u8],
    sig: &[u8],
    public: &PublicKey,
    key_given: bool,
) -> Result<Manifest, FlashError> {
    Manifest::from_signed(bytes, sig, public).map_err(|e| {
        FlashError::Input(format!(
            "{from}: {e}{}",
            if key_given {
                ""
            } else {
                " (checked with this machine's development key; pass --key with the key that signed it)"
            }
        ))
    })
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

/// Open `image` (a build directory, `disk.raw` or `disk.raw.zst`, here or at an http(s)
/// URL) and check its manifest with `key`, or with this user's development key when no
/// key is given and the image was signed with it.
pub fn open(image: &str, key: Option<&Path>) -> Result<Image, FlashError> {
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
    let key_label = format!("{which} ({})", public.fingerprint());
    if is_url(image) {
        let (manifest, data) = open_url(image, &public, key.is_some())?;
        return Ok(Image {
            manifest,
            data,
            key: key_label,
        });
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
    } else if path.exists() {
        return Err(FlashError::Input(format!(
            "{image}: not a build directory or an image file"
        )));
    } else {
        return Err(FlashError::Input(format!(
            "{image}: no such build directory or image file"
        )));
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
    let mut manifest = check_manifest(&mpath.display().to_string(), &bytes, &sig, &public, key.is_some())?;
    if image.ends_with(".iso") && path.is_file() {
        let opath = dir.join(cairn_signing::outputs::FILE);
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| {
                FlashError::Input(format!(
                    "{}: {e}\n  hint: keep outputs.json and outputs.json.sig beside the ISO",
                    p.display()
                ))
            })
        };
        let list = read(&opath)?;
        let osig = read(&dir.join(cairn_signing::outputs::SIGNATURE_FILE))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        manifest = iso_as_disk(
            manifest,
            &bytes,
            &list,
            &osig,
            &public,
            &name,
            &opath.display().to_string(),
        )?;
    }
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
        key: key_label,
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
    /// zstd's output; for a download, the thread feeding it and what went wrong there.
    Zst {
        child: Child,
        out: ChildStdout,
        feeder: Option<Feeder>,
    },
    /// `disk.raw` on a server: Range requests, or one stream from a server without them.
    Http {
        agent: ureq::Agent,
        url: String,
        stream: Option<Box<dyn Read + Send>>,
    },
}

/// The thread copying a download into zstd.
struct Feeder {
    thread: Option<std::thread::JoinHandle<()>>,
    error: Arc<Mutex<Option<String>>>,
}

impl Reader {
    /// Start reading `data`.
    pub fn open(data: &Data) -> io::Result<Reader> {
        let zstd = |stdin: Stdio| {
            Command::new("zstd")
                .args(["-d", "-c", "-q"])
                .stdin(stdin)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| io::Error::new(e.kind(), format!("running zstd: {e}")))
        };
        let kind = match data {
            Data::Raw(p) => Kind::Raw(File::open(p)?),
            Data::Zst(p) => {
                let mut child = zstd(Stdio::from(File::open(p)?))?;
                let out = child.stdout.take().expect("piped stdout");
                Kind::Zst {
                    child,
                    out,
                    feeder: None,
                }
            }
            Data::ZstUrl(url) => {
                let resp = get(&agent(), url, None).map_err(io::Error::other)?;
                let status = resp.status().as_u16();
                if status != 200 {
                    return Err(io::Error::other(format!("{url}: HTTP {status}")));
                }
                let mut body = resp.into_body().into_reader();
                let mut child = zstd(Stdio::piped())?;
                let out = child.stdout.take().expect("piped stdout");
                let mut stdin = child.stdin.take().expect("piped stdin");
                let error = Arc::new(Mutex::new(None));
                let said = Arc::clone(&error);
                let url = url.clone();
                let thread = std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        let n = match body.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => n,
                            Err(e) => {
                                *said.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some(format!("downloading {url}: {e}"));
                                break;
                            }
                        };
                        // zstd gone (the flash stopped): nothing more to do.
                        if stdin.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
                Kind::Zst {
                    child,
                    out,
                    feeder: Some(Feeder {
                        thread: Some(thread),
                        error,
                    }),
                }
            }
            Data::RawUrl(url) => Kind::Http {
                agent: agent(),
                url: url.clone(),
                stream: None,
            },
        };
        Ok(Reader { kind, pos: 0 })
    }

    /// Fill `buf` with the image's bytes at `offset` (never before the last read's end).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match &mut self.kind {
            Kind::Raw(f) => f.read_exact_at(buf, offset)?,
            Kind::Zst { out, feeder, .. } => {
                let r = read_stream(out, &mut self.pos, offset, buf);
                if let (Err(e), Some(f)) = (&r, feeder) {
                    // Say why the download ended rather than that zstd's output did.
                    if let Some(t) = f.thread.take() {
                        let _ = t.join();
                    }
                    if let Some(why) = f.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
                        return Err(io::Error::new(e.kind(), why));
                    }
                }
                r?;
            }
            Kind::Http { agent, url, stream } => {
                if stream.is_none() && !buf.is_empty() {
                    let resp = get(agent, url, Some((offset, buf.len() as u64))).map_err(io::Error::other)?;
                    match resp.status().as_u16() {
                        206 => {
                            let range = resp
                                .headers()
                                .get("content-range")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let want = format!("bytes {offset}-{}/", offset + buf.len() as u64 - 1);
                            if !range.starts_with(&want) {
                                return Err(io::Error::other(format!(
                                    "{url}: asked for {want}…, the server sent {range:?}"
                                )));
                            }
                            resp.into_body().into_reader().read_exact(buf)?;
                            self.pos = offset + buf.len() as u64;
                            return Ok(());
                        }
                        200 => {
                            // The server ignores Range: read its one answer in order.
                            *stream = Some(Box::new(resp.into_body().into_reader()));
                            self.pos = 0;
                        }
                        s => return Err(io::Error::other(format!("{url}: HTTP {s}"))),
                    }
                }
                if let Some(s) = stream {
                    read_stream(s, &mut self.pos, offset, buf)?;
                }
            }
        }
        self.pos = offset + buf.len() as u64;
        Ok(())
    }

    /// Whether a download had to fall back to reading the whole file (no Range support).
    pub fn streamed_whole(&self) -> bool {
        matches!(&self.kind, Kind::Http { stream: Some(_), .. })
    }
}

/// Read `buf` at `offset` from a stream at `*pos`, skipping what lies between.
fn read_stream(s: &mut dyn Read, pos: &mut u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    if offset < *pos {
        return Err(io::Error::other("the image is streamed: it is read in order"));
    }
    let skip = offset - *pos;
    let copied = io::copy(&mut s.take(skip), &mut io::sink())?;
    if copied != skip {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the image ended early"));
    }
    s.read_exact(buf)?;
    *pos = offset + buf.len() as u64;
    Ok(())
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Kind::Zst { child, feeder, .. } = &mut self.kind {
            let _ = child.kill();
            let _ = child.wait();
            if let Some(t) = feeder.as_mut().and_then(|f| f.thread.take()) {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_directory_or_a_file() {
        let dir = |u: &str| split_url(u).0;
        assert_eq!(dir("https://h/r/0.2.0"), "https://h/r/0.2.0/");
        assert_eq!(dir("https://h/r/0.2.0/"), "https://h/r/0.2.0/");
        assert_eq!(dir("http://h"), "http://h/");
        assert_eq!(dir("http://h.zst"), "http://h.zst/");
        let (d, data) = split_url("https://h/r/disk.raw.zst");
        assert_eq!(
            (d.as_str(), data),
            ("https://h/r/", Some(Data::ZstUrl("https://h/r/disk.raw.zst".into())))
        );
        let (d, data) = split_url("https://h/r/node.img?x=1");
        assert_eq!(
            (d.as_str(), data),
            ("https://h/r/", Some(Data::RawUrl("https://h/r/node.img?x=1".into())))
        );
    }
}
