//! `cairn flash IMAGE TARGET`: put a verified image on a disk, a USB stick or into a file.
//!
//! The safety model follows coreos-installer's and the writing bmaptool's, with Cairn's
//! signed data map instead of a bmap (research: shared/design/secure-boot-delta-flash.md,
//! part C):
//!
//! 1. The manifest's signature is checked before a byte is written ([`source`]); the
//!    target is refused when it is not a whole disk or a regular file, when anything
//!    uses it, when it holds the running system, is too small, read-only or has another
//!    sector size ([`target`]). A disk is then opened with `O_EXCL`, which the kernel
//!    refuses while any of its partitions is mounted.
//! 2. The first MiB of a disk (the partition table) is zeroed first, and the last MiB of a
//!    disk bigger than the image (an old backup partition table), so a disk whose writing
//!    stops midway is not mistaken for a bootable one.
//! 3. Only the data ranges are written, each checked against its sha256 as it is read;
//!    every other byte of the image is zero and is skipped (a file target is a new sparse
//!    file; on a disk, what the image leaves zero is not read by what the image's file
//!    systems mark unused, as with bmaptool). The first MiB is written last, whole.
//! 4. After an fsync every range is read back past the page cache (`O_DIRECT`) and
//!    checked again; then the kernel is asked to read the new partition table.
//! 5. On any failure after step 2 the partition table is wiped again (unless
//!    `--preserve-on-error`), so a half-written disk never boots; a file target is
//!    written beside its name and renamed only once verified.

pub mod source;
pub mod target;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use source::{Data, Image};
pub use target::{Disk, Host, Target};

/// The partition table's end: written last, zeroed first.
pub const HEAD: u64 = 1 << 20;
/// Bytes per read and write.
const CHUNK: usize = 4 << 20;
/// Flush a disk's dirty pages every so many bytes, so the final fsync is short and
/// progress tells the truth.
const SYNC_EVERY: u64 = 256 << 20;

/// Why flashing failed.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// The image or the key.
    #[error("{0}")]
    Input(String),
    /// The target is refused.
    #[error(transparent)]
    Target(#[from] target::TargetError),
    /// Reading or writing failed.
    #[error("{what}: {source}{wiped}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
        /// What became of the disk.
        wiped: String,
    },
    /// The image or the target does not hold what the manifest says.
    #[error("{0}")]
    Mismatch(String),
}

/// How to flash.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Keep what was written when something fails (for debugging).
    pub preserve_on_error: bool,
}

/// What a flash did.
#[derive(Debug, Clone)]
pub struct Report {
    /// Data bytes written (and read back).
    pub written: u64,
    /// Ranges written.
    pub ranges: usize,
    /// Time writing, including the fsync.
    pub write_secs: f64,
    /// Time reading back.
    pub verify_secs: f64,
    /// Whether reading back bypassed the page cache (`O_DIRECT`); else the cache was
    /// dropped first.
    pub direct: bool,
    /// What the kernel said to re-reading the partition table (disks only).
    pub reread: Option<String>,
}

/// The plan, as `--dry-run` prints it.
pub fn describe(image: &Image, target: &Target) -> Vec<String> {
    let m = &image.manifest;
    let data: u64 = m.disk.data.iter().map(|r| r.size).sum();
    let mut lines = vec![
        format!("image    {} {} ({} build)", m.name, m.version, m.build.as_str()),
        format!("signed   by {}: good", image.key),
        format!(
            "from     {}",
            match &image.data {
                Data::Raw(p) => p.display().to_string(),
                Data::Zst(p) => format!("{} (zstd stream)", p.display()),
                Data::ZstUrl(u) => format!("{u} (downloaded as a zstd stream)"),
                Data::RawUrl(u) => format!("{u} (the data ranges downloaded by HTTP Range requests)"),
            }
        ),
        format!(
            "writes   {} of data in {} ranges of a {} image; the rest is zero and skipped",
            crate::definition::Size(data),
            m.disk.data.len(),
            crate::definition::Size(m.disk.size)
        ),
    ];
    match target {
        Target::File(p) => lines.push(format!(
            "to       {} (a file: written beside it, renamed once read back)",
            p.display()
        )),
        Target::Disk(d) => {
            lines.push(format!("to       {}", d.describe()));
            lines.push(format!(
                "order    zero the first MiB{}; the data above it; fsync; the first MiB; read every range back (O_DIRECT); re-read the partition table",
                if d.size > m.disk.size {
                    " and the disk's last MiB"
                } else {
                    ""
                }
            ));
        }
    }
    lines
}

/// A line a second: done, rate, time left. Plain lines (`\r` on a terminal is the
/// caller's choice through `log`).
struct Progress<'a> {
    total: u64,
    done: u64,
    started: Instant,
    last: Instant,
    what: &'static str,
    log: &'a mut dyn FnMut(&str),
}

impl Progress<'_> {
    fn add(&mut self, n: u64) {
        self.done += n;
        if self.last.elapsed() >= Duration::from_secs(1) {
            self.last = Instant::now();
            self.say();
        }
    }

    fn say(&mut self) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / secs;
        let left = if rate > 0.0 {
            (self.total.saturating_sub(self.done)) as f64 / rate
        } else {
            0.0
        };
        let line = format!(
            "{} {} of {} ({:.0}%), {:.1} MiB/s, {:.0} s left",
            self.what,
            crate::definition::Size(self.done),
            crate::definition::Size(self.total),
            self.done as f64 * 100.0 / self.total.max(1) as f64,
            rate / 1048576.0,
            left
        );
        (self.log)(&line);
    }
}

fn io_at(what: impl Into<String>) -> impl FnOnce(io::Error) -> FlashError {
    let what = what.into();
    move |source| FlashError::Io {
        what,
        source,
        wiped: String::new(),
    }
}

/// A buffer of `len` bytes aligned to 4096, as `O_DIRECT` wants, without unsafe code:
/// a larger vector and the aligned window inside it.
struct Aligned {
    buf: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let buf = vec![0u8; len + 4096];
        let start = (4096 - (buf.as_ptr() as usize % 4096)) % 4096;
        Aligned { buf, start }
    }

    fn get(&mut self, len: usize) -> &mut [u8] {
        &mut self.buf[self.start..self.start + len]
    }
}

/// Write `image` to `target` (already inspected and confirmed). `log` gets progress and
/// what was done.
pub fn flash(image: &Image, target: &Target, opts: &Options, log: &mut dyn FnMut(&str)) -> Result<Report, FlashError> {
    match target {
        Target::File(path) => flash_file(image, path, log),
        Target::Disk(disk) => flash_disk(image, disk, opts, log),
    }
}

fn flash_file(image: &Image, path: &Path, log: &mut dyn FnMut(&str)) -> Result<Report, FlashError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Data::Raw(src) = &image.data {
        if same_file(src, path) {
            return Err(FlashError::Input(format!("{} is the image itself", path.display())));
        }
    }
    let tmp: PathBuf = dir.join(crate::packages::store::unique(&format!(
        ".{}.cairn-flash-",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    )));
    let result = (|| {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_at(format!("creating {}", tmp.display())))?;
        f.set_len(image.manifest.disk.size)
            .map_err(io_at(format!("sizing {}", tmp.display())))?;
        let mut report = write_and_verify(image, &f, &tmp, None, log)?;
        std::fs::rename(&tmp, path).map_err(io_at(format!("renaming into {}", path.display())))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        report.reread = None;
        Ok(report)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn flash_disk(image: &Image, disk: &Disk, opts: &Options, log: &mut dyn FnMut(&str)) -> Result<Report, FlashError> {
    // O_EXCL on a block device: the kernel refuses it while a partition is mounted or
    // otherwise claimed, whatever the checks before saw.
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(&disk.path)
        .map_err(io_at(format!(
            "opening {} for writing (exclusively: nothing may use it)",
            disk.path.display()
        )))?;
    let image_size = image.manifest.disk.size;
    let tail = (disk.size > image_size).then(|| disk.size.saturating_sub(HEAD).max(image_size));
    let wipe = |dev: &File| -> io::Result<()> {
        let zeros = vec![0u8; HEAD as usize];
        dev.write_all_at(&zeros, 0)?;
        if let Some(t) = tail {
            dev.write_all_at(&zeros[..(disk.size - t) as usize], t)?;
        }
        dev.sync_all()
    };
    wipe(&dev).map_err(io_at(format!(
        "zeroing the partition tables of {}",
        disk.path.display()
    )))?;
    log(&format!(
        "zeroed the first MiB{} of {}",
        if tail.is_some() { " and the last" } else { "" },
        disk.path.display()
    ));
    let result = write_and_verify(image, &dev, &disk.path, Some(disk), log);
    let mut report = match result {
        Ok(r) => r,
        Err(e) => {
            let wiped = if opts.preserve_on_error {
                "\n  the disk keeps what was written (--preserve-on-error); it may not boot".to_string()
            } else {
                match wipe(&dev) {
                    Ok(()) => "\n  its partition table was wiped: the disk will not boot half-written".to_string(),
                    Err(w) => format!("\n  wiping its partition table failed too ({w}): do not boot this disk"),
                }
            };
            return Err(match e {
                FlashError::Io { what, source, .. } => FlashError::Io { what, source, wiped },
                FlashError::Mismatch(m) => FlashError::Mismatch(format!("{m}{wiped}")),
                other => other,
            });
        }
    };
    drop(dev);
    let out = std::process::Command::new("blockdev")
        .arg("--rereadpt")
        .arg(&disk.path)
        .output();
    report.reread = Some(match out {
        Ok(o) if o.status.success() => "the kernel read the new partition table".to_string(),
        Ok(o) => format!(
            "the kernel did not re-read the partition table ({}); unplug and replug the disk, or run `partprobe`",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("blockdev --rereadpt could not run ({e}); unplug and replug the disk"),
    });
    Ok(report)
}

/// Steps 3 and 4 on an open target: the data above the first MiB, fsync, the first MiB
/// whole, fsync, then every range read back.
fn write_and_verify(
    image: &Image,
    out: &File,
    out_path: &Path,
    disk: Option<&Disk>,
    log: &mut dyn FnMut(&str),
) -> Result<Report, FlashError> {
    let m = &image.manifest;
    let head_len = HEAD.min(m.disk.size) as usize;
    let mut head = vec![0u8; head_len];
    let total: u64 = m.disk.data.iter().map(|r| r.size).sum();
    let mut reader = source::Reader::open(&image.data).map_err(io_at("reading the image"))?;
    let started = Instant::now();
    let mut progress = Progress {
        total,
        done: 0,
        started,
        last: started,
        what: "written",
        log: &mut *log,
    };
    let mut buf = vec![0u8; CHUNK];
    let mut since_sync = 0u64;
    for (i, r) in m.disk.data.iter().enumerate() {
        let end = r
            .offset
            .checked_add(r.size)
            .filter(|&e| e <= m.disk.size)
            .ok_or_else(|| {
                FlashError::Mismatch(format!("data range {i} ({}+{}) runs past the image", r.offset, r.size))
            })?;
        let mut h = Sha256::new();
        let mut at = r.offset;
        while at < end {
            let n = ((end - at) as usize).min(CHUNK);
            reader
                .read_at(at, &mut buf[..n])
                .map_err(io_at(format!("reading the image at byte {at}")))?;
            h.update(&buf[..n]);
            // Below HEAD into the buffer written last; above it straight to the target.
            let split = if at < HEAD { ((HEAD - at) as usize).min(n) } else { 0 };
            if split > 0 {
                head[at as usize..at as usize + split].copy_from_slice(&buf[..split]);
            }
            if split < n {
                out.write_all_at(&buf[split..n], at + split as u64)
                    .map_err(io_at(format!(
                        "writing {} at byte {}",
                        out_path.display(),
                        at + split as u64
                    )))?;
                since_sync += (n - split) as u64;
            }
            if disk.is_some() && since_sync >= SYNC_EVERY {
                out.sync_data()
                    .map_err(io_at(format!("flushing {}", out_path.display())))?;
                since_sync = 0;
            }
            at += n as u64;
            progress.add(n as u64);
        }
        if hex::encode(h.finalize()) != r.sha256 {
            return Err(FlashError::Mismatch(format!(
                "the image does not match its signed manifest in data range {i} (bytes {}..{end}): it is damaged or was changed",
                r.offset
            )));
        }
    }
    let streamed_whole = reader.streamed_whole();
    drop(reader);
    out.sync_all()
        .map_err(io_at(format!("flushing {}", out_path.display())))?;
    out.write_all_at(&head, 0)
        .map_err(io_at(format!("writing the first MiB of {}", out_path.display())))?;
    out.sync_all()
        .map_err(io_at(format!("flushing {}", out_path.display())))?;
    progress.say();
    if streamed_whole {
        log("the server ignores HTTP Range requests: the whole image was downloaded and its zeros skipped");
    }
    let write_secs = started.elapsed().as_secs_f64();
    log(&format!(
        "wrote {} in {} ranges in {write_secs:.1} s; reading it back",
        crate::definition::Size(total),
        m.disk.data.len()
    ));

    // Read back past the page cache.
    let started = Instant::now();
    let (back, direct) = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(out_path)
    {
        Ok(f) => (f, true),
        Err(_) => {
            let f = File::open(out_path).map_err(io_at(format!("opening {} to read it back", out_path.display())))?;
            let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
            (f, false)
        }
    };
    let mut progress = Progress {
        total,
        done: 0,
        started,
        last: started,
        what: "read back",
        log,
    };
    let mut aligned = Aligned::new(CHUNK);
    let mut chunk = vec![0u8; CHUNK];
    let mut got_head = vec![0u8; head_len];
    read_back(&back, &mut aligned, 0, &mut got_head, direct)
        .map_err(io_at(format!("reading back {}", out_path.display())))?;
    if got_head != head {
        return Err(FlashError::Mismatch(format!(
            "reading back {}: its first MiB is not what was written",
            out_path.display()
        )));
    }
    for (i, r) in m.disk.data.iter().enumerate() {
        let end = r.offset + r.size;
        let mut h = Sha256::new();
        let mut at = r.offset;
        while at < end {
            let n = ((end - at) as usize).min(CHUNK);
            read_back(&back, &mut aligned, at, &mut chunk[..n], direct)
                .map_err(io_at(format!("reading back {} at byte {at}", out_path.display())))?;
            h.update(&chunk[..n]);
            at += n as u64;
            progress.add(n as u64);
        }
        if hex::encode(h.finalize()) != r.sha256 {
            return Err(FlashError::Mismatch(format!(
                "reading back {}: data range {i} (bytes {}..{end}) is not what was written: the device lost or changed it",
                out_path.display(),
                r.offset
            )));
        }
    }
    progress.say();
    Ok(Report {
        written: total,
        ranges: m.disk.data.len(),
        write_secs,
        verify_secs: started.elapsed().as_secs_f64(),
        direct,
        reread: None,
    })
}

/// Read `out.len()` bytes at `offset`; with `O_DIRECT` through the aligned buffer (whose
/// reads are whole 512-byte sectors; a range's end is one).
fn read_back(f: &File, aligned: &mut Aligned, offset: u64, out: &mut [u8], direct: bool) -> io::Result<()> {
    if !direct {
        return f.read_exact_at(out, offset);
    }
    let mut done = 0;
    while done < out.len() {
        let n = (out.len() - done).min(CHUNK);
        let padded = n.div_ceil(512) * 512;
        let b = aligned.get(padded);
        f.read_exact_at(b, offset + done as u64)?;
        out[done..done + n].copy_from_slice(&b[..n]);
        done += n;
    }
    Ok(())
}
