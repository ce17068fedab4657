//! A canonical POSIX tar (pax) writer: the stream Cairn feeds to `tar2sqfs`.
//!
//! Each entry is an optional pax extended header (`typeflag 'x'`) followed by a ustar
//! header and the file data padded to 512 bytes; the archive ends with two zero blocks.
//!
//! ustar header (512 bytes; numbers are NUL-terminated octal):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 100 | name (the pax `path` record holds longer names) |
//! | 100 | 8 | mode |
//! | 108 | 8 | uid |
//! | 116 | 8 | gid |
//! | 124 | 12 | size |
//! | 136 | 12 | mtime |
//! | 148 | 8 | checksum: byte sum with this field as spaces, 6 octal digits, NUL, space |
//! | 156 | 1 | type: `0` file, `1` hard link, `2` symlink, `3` char, `4` block, `5` dir, `6` fifo |
//! | 157 | 100 | link name |
//! | 257 | 8 | `"ustar\0" "00"` |
//! | 329 | 8 | device major |
//! | 337 | 8 | device minor |
//!
//! pax records are `"<len> <key>=<value>\n"` where `<len>` counts the whole record.
//! Cairn writes `path` and `linkpath` when a name does not fit the ustar field, `uid`/`gid`
//! when they exceed the octal field, and `SCHILY.xattr.<name>` for each extended attribute
//! (file capabilities travel this way).

use std::io::{self, Write};

/// What kind of entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Directory.
    Dir,
    /// Regular file of this many bytes.
    File(u64),
    /// Symbolic link to this target.
    Symlink(String),
    /// Hard link to this earlier path.
    HardLink(String),
    /// Character device (major, minor).
    Char(u32, u32),
    /// Block device (major, minor).
    Block(u32, u32),
    /// Named pipe.
    Fifo,
}

/// Metadata of one entry; the data of a file follows separately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Path relative to the root, without a leading `./` or `/`; empty for the root.
    pub path: String,
    /// The kind.
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time, seconds since 1970.
    pub mtime: u64,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

fn octal(field: &mut [u8], v: u64) -> bool {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() > digits {
        return false;
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    true
}

fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

// One parameter per header field keeps the byte table and the code side by side.
#[allow(clippy::too_many_arguments)]
fn ustar(
    name: &[u8],
    typeflag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    link: &[u8],
    dev: (u32, u32),
) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], uid.min(0o7777777));
    octal(&mut h[116..124], gid.min(0o7777777));
    assert!(octal(&mut h[124..136], size), "size checked by caller");
    octal(&mut h[136..148], mtime.min(0o77777777777));
    h[156] = typeflag;
    h[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    octal(&mut h[329..337], dev.0 as u64);
    octal(&mut h[337..345], dev.1 as u64);
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

/// Streams canonical tar entries to a writer.
pub struct TarWriter<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> TarWriter<W> {
    /// Start an archive.
    pub fn new(out: W) -> Self {
        TarWriter { out, written: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    /// Write one entry's headers. For a file, exactly `size` bytes must follow through
    /// [`TarWriter::data`], then [`TarWriter::pad`].
    pub fn header(&mut self, h: &Header) -> io::Result<()> {
        let name = match (&h.kind, h.path.as_str()) {
            (Kind::Dir, "") => "./".to_string(),
            (Kind::Dir, p) => format!("{p}/"),
            (_, p) => p.to_string(),
        };
        let (typeflag, size, link, dev) = match &h.kind {
            Kind::Dir => (b'5', 0, "", (0, 0)),
            Kind::File(n) => (b'0', *n, "", (0, 0)),
            Kind::Symlink(t) => (b'2', 0, t.as_str(), (0, 0)),
            Kind::HardLink(t) => (b'1', 0, t.as_str(), (0, 0)),
            Kind::Char(a, b) => (b'3', 0, "", (*a, *b)),
            Kind::Block(a, b) => (b'4', 0, "", (*a, *b)),
            Kind::Fifo => (b'6', 0, "", (0, 0)),
        };
        if size > 0o77777777777 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is larger than 8 GiB", h.path),
            ));
        }
        let mut pax = Vec::new();
        if name.len() > 100 || !name.is_ascii() {
            pax_record(&mut pax, "path", name.as_bytes());
        }
        if link.len() > 100 || !link.is_ascii() {
            pax_record(&mut pax, "linkpath", link.as_bytes());
        }
        if h.uid > 0o7777777 {
            pax_record(&mut pax, "uid", h.uid.to_string().as_bytes());
        }
        if h.gid > 0o7777777 {
            pax_record(&mut pax, "gid", h.gid.to_string().as_bytes());
        }
        for (k, v) in &h.xattrs {
            pax_record(&mut pax, &format!("SCHILY.xattr.{k}"), v);
        }
        if !pax.is_empty() {
            let xname = b"././@PaxHeader";
            let xh = ustar(xname, b'x', 0o644, 0, 0, pax.len() as u64, h.mtime, b"", (0, 0));
            self.put(&xh)?;
            self.put(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        let uh = ustar(
            name.as_bytes(),
            typeflag,
            h.mode & 0o7777,
            h.uid,
            h.gid,
            size,
            h.mtime,
            link.as_bytes(),
            dev,
        );
        self.put(&uh)
    }

    /// File data.
    pub fn data(&mut self, b: &[u8]) -> io::Result<()> {
        self.put(b)
    }

    /// Zero padding after `size` bytes of data.
    pub fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % 512) as usize;
        if rem != 0 {
            self.put(&[0u8; 512][..512 - rem])?;
        }
        Ok(())
    }

    /// End the archive and return the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.put(&[0u8; 1024])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        let mut v = Vec::new();
        pax_record(&mut v, "path", b"a");
        assert_eq!(v, b"9 path=a\n");
        let mut v = Vec::new();
        pax_record(&mut v, "k", &[b'x'; 94]); // body 1+94+3 = 98, +2 digits = 100 → 3 digits
        assert!(v.starts_with(b"101 k="), "{}", String::from_utf8_lossy(&v));
        assert_eq!(v.len(), 101);
    }

    #[test]
    fn header_bytes_and_readback() {
        let mut w = TarWriter::new(Vec::new());
        let long = format!("usr/{}", "d/".repeat(60)) + "file";
        w.header(&Header {
            path: long.clone(),
            kind: Kind::File(3),
            mode: 0o4755,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            xattrs: vec![("security.capability".into(), vec![1, 0, 0, 2])],
        })
        .unwrap();
        w.data(b"abc").unwrap();
        w.pad(3).unwrap();
        w.header(&Header {
            path: "dev/null".into(),
            kind: Kind::Char(1, 3),
            mode: 0o666,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: vec![],
        })
        .unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 512, 0);
        // The tar crate (an independent reader) sees what we meant.
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut entries = ar.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str().unwrap(), long);
        assert_eq!(e.header().mode().unwrap(), 0o4755);
        let caps: Vec<_> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|x| x.unwrap())
            .filter(|x| x.key().unwrap() == "SCHILY.xattr.security.capability")
            .map(|x| x.value_bytes().to_vec())
            .collect();
        assert_eq!(caps, vec![vec![1, 0, 0, 2]]);
        let mut s = String::new();
        io::Read::read_to_string(&mut e, &mut s).unwrap();
        assert_eq!(s, "abc");
        let e = entries.next().unwrap().unwrap();
        assert_eq!(e.header().entry_type(), tar::EntryType::Char);
        assert_eq!(e.header().device_major().unwrap(), Some(1));
        assert_eq!(e.header().device_minor().unwrap(), Some(3));
        assert!(entries.next().is_none());
    }
}
