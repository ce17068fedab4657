//! Where a disk image holds data: its non-zero 4 KiB blocks, as ranges with a sha256 each.
//!
//! A Cairn disk image is mostly zeros (an empty B slot, an empty state file system, the
//! unused end of every partition). Hashing the whole file feeds gigabytes of zeros
//! through sha256; describing it by its data instead costs only the data, and is what a
//! flasher or a bmap file needs anyway: write and read back these ranges, everything
//! else is zero.
//!
//! The map is defined by the bytes alone, never by how the file happens to be stored
//! (sparse or not, which file system), so two byte-identical images have the same map:
//!
//! - the file is cut into [`BLOCK`]-sized blocks from offset 0 (a short last block is
//!   compared as if padded with zeros);
//! - a block is *data* when any byte in it is non-zero;
//! - runs of data blocks separated by fewer than [`MERGE_BLOCKS`] zero blocks form one
//!   range (the zeros inside are hashed with it), so a file system's scattered metadata
//!   gives tens of ranges, not thousands;
//! - each range is `offset`, `size` (a multiple of [`BLOCK`], but the last range ends at
//!   the end of the file) and the sha256 of exactly those bytes.
//!
//! [`map`] skips holes with `SEEK_DATA`/`SEEK_HOLE` (they read as zeros) so a sparse image
//! is mapped at the speed of its data; [`check`] recomputes the map and compares, which
//! proves every byte: the ranges by hash, the rest by being zero.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

/// The block the map is made of (the dm-verity block, the page size, bmap's usual block).
pub const BLOCK: u64 = 4096;
/// Zero runs shorter than this many blocks stay inside the range around them.
pub const MERGE_BLOCKS: u64 = 16;

/// One range of data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRange {
    /// Byte offset in the image.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
    /// sha256 of the range.
    pub sha256: [u8; 32],
}

/// The range being built: its start, hash so far, end of its last data block, and the
/// zero blocks seen since (hashed only if more data follows closely).
struct Open {
    offset: u64,
    hash: Sha256,
    end: u64,
}

struct Mapper {
    size: u64,
    open: Option<Open>,
    done: Vec<DataRange>,
}

impl Mapper {
    fn data_block(&mut self, at: u64, bytes: &[u8]) {
        if let Some(o) = &mut self.open {
            let gap = at - o.end;
            if gap < MERGE_BLOCKS * BLOCK {
                feed_zeros(&mut o.hash, gap);
                o.hash.update(bytes);
                o.end = at + bytes.len() as u64;
                return;
            }
        }
        self.close();
        let mut hash = Sha256::new();
        hash.update(bytes);
        self.open = Some(Open {
            offset: at,
            hash,
            end: at + bytes.len() as u64,
        });
    }

    fn close(&mut self) {
        if let Some(o) = self.open.take() {
            self.done.push(DataRange {
                offset: o.offset,
                size: o.end - o.offset,
                sha256: o.hash.finalize().into(),
            });
        }
    }

    fn finish(mut self) -> Vec<DataRange> {
        debug_assert!(self.open.as_ref().is_none_or(|o| o.end <= self.size));
        self.close();
        self.done
    }
}

fn feed_zeros(h: &mut Sha256, mut n: u64) {
    const ZEROS: [u8; BLOCK as usize] = [0; BLOCK as usize];
    while n > 0 {
        let k = n.min(BLOCK);
        h.update(&ZEROS[..k as usize]);
        n -= k;
    }
}

/// Where data may be, as `[start, end)` segments in increasing order, per
/// `SEEK_DATA`/`SEEK_HOLE`; the whole file when the file system cannot tell.
fn segments(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom};
    let mut out = Vec::new();
    let mut at = 0;
    while at < size {
        let data = match seek(file, SeekFrom::Data(at)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return Ok(vec![(0, size)]),
        };
        if data >= size {
            break;
        }
        let hole = match seek(file, SeekFrom::Hole(data)) {
            Ok(h) => h.min(size),
            Err(_) => size,
        };
        out.push((data, hole));
        at = hole;
    }
    Ok(out)
}

/// Map the first `size` bytes of `file`.
pub fn map(file: &File, size: u64) -> io::Result<Vec<DataRange>> {
    let mut m = Mapper {
        size,
        open: None,
        done: Vec::new(),
    };
    let mut buf = vec![0u8; 4 << 20];
    let mut at = 0u64; // everything before `at` has been looked at
    for (start, end) in segments(file, size)? {
        // Whole blocks only: a segment's edges need not fall on block boundaries.
        let mut pos = (start / BLOCK * BLOCK).max(at);
        let end = end.div_ceil(BLOCK).saturating_mul(BLOCK).min(size);
        while pos < end {
            let want = (end - pos).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..want], pos)?;
            for (i, block) in buf[..want].chunks(BLOCK as usize).enumerate() {
                if block.iter().any(|&b| b != 0) {
                    m.data_block(pos + (i as u64) * BLOCK, block);
                }
            }
            pos += want as u64;
        }
        at = at.max(end);
    }
    Ok(m.finish())
}

/// How a file differs from its map.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapMismatch {
    /// A range of the map is not where, or not what, the file holds.
    #[error("data range {index} ({offset}+{size}) differs")]
    Range {
        /// Index in the expected map.
        index: usize,
        /// Its offset.
        offset: u64,
        /// Its size.
        size: u64,
    },
    /// The file has a different number of ranges: data where zeros belong, or zeros where
    /// data belongs.
    #[error(
        "the file holds {found} data ranges where {expected} are expected (data outside them, or a range emptied)"
    )]
    Count {
        /// Expected ranges.
        expected: usize,
        /// Ranges found.
        found: usize,
    },
}

/// Check that the first `size` bytes of `file` are exactly what `expected` describes.
pub fn check(file: &File, size: u64, expected: &[DataRange]) -> io::Result<Result<(), MapMismatch>> {
    let found = map(file, size)?;
    for (index, (want, got)) in expected.iter().zip(&found).enumerate() {
        if want != got {
            return Ok(Err(MapMismatch::Range {
                index,
                offset: want.offset,
                size: want.size,
            }));
        }
    }
    if found.len() != expected.len() {
        return Ok(Err(MapMismatch::Count {
            expected: expected.len(),
            found: found.len(),
        }));
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(size: u64, writes: &[(u64, &[u8])]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let f = File::create(&p).unwrap();
        f.set_len(size).unwrap();
        for (off, b) in writes {
            f.write_all_at(b, *off).unwrap();
        }
        drop(f);
        let f = File::open(&p).unwrap();
        (dir, f)
    }

    /// The reference: the same rules on plain bytes, no seeking.
    fn map_bytes(all: &[u8]) -> Vec<(u64, u64)> {
        let data: Vec<u64> = all
            .chunks(BLOCK as usize)
            .enumerate()
            .filter(|(_, b)| b.iter().any(|&x| x != 0))
            .map(|(i, _)| i as u64)
            .collect();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for b in data {
            let start = b * BLOCK;
            let end = (start + BLOCK).min(all.len() as u64);
            match out.last_mut() {
                Some(last) if start - last.1 < MERGE_BLOCKS * BLOCK => last.1 = end,
                _ => out.push((start, end)),
            }
        }
        out
    }

    #[test]
    fn ranges_follow_the_bytes_and_hash_them() {
        let size = 10 << 20;
        let writes: &[(u64, &[u8])] = &[
            (0, b"x"),
            (BLOCK * 5, b"near"),           // merged with block 0 (gap 4 blocks)
            (BLOCK * 40, &[9u8; 10000]),    // new range, spans 3 blocks
            (BLOCK * 40 + 20000, b"y"),     // inside the same blocks
            ((4 << 20) + 17, b"unaligned"), // a range alone
            (size - 3, b"end"),
        ];
        let (_d, f) = file_with(size, writes);
        let all = {
            let mut v = vec![0u8; size as usize];
            f.read_exact_at(&mut v, 0).unwrap();
            v
        };
        let got = map(&f, size).unwrap();
        let want = map_bytes(&all);
        assert_eq!(
            got.iter().map(|r| (r.offset, r.offset + r.size)).collect::<Vec<_>>(),
            want
        );
        assert_eq!(want.len(), 4, "{want:?}");
        for r in &got {
            let bytes = &all[r.offset as usize..(r.offset + r.size) as usize];
            assert_eq!(r.sha256, <[u8; 32]>::from(Sha256::digest(bytes)));
        }
        assert_eq!(check(&f, size, &got).unwrap(), Ok(()));
    }

    #[test]
    fn written_zeros_map_like_holes() {
        // The same bytes stored sparse and dense give the same map.
        let size = 3 << 20;
        let (_a, sparse) = file_with(size, &[(BLOCK * 100, b"data")]);
        let zeros = vec![0u8; size as usize];
        let (_b, dense) = file_with(size, &[(0, &zeros), (BLOCK * 100, b"data")]);
        assert_eq!(map(&sparse, size).unwrap(), map(&dense, size).unwrap());
        assert_eq!(map(&sparse, size).unwrap().len(), 1);
    }

    #[test]
    fn a_short_last_block_and_an_empty_file() {
        let (_a, f) = file_with(5000, &[(4999, b"z")]);
        let m = map(&f, 5000).unwrap();
        assert_eq!((m[0].offset, m[0].size), (4096, 904));
        let (_b, e) = file_with(0, &[]);
        assert!(map(&e, 0).unwrap().is_empty());
        let (_c, z) = file_with(1 << 20, &[]);
        assert!(map(&z, 1 << 20).unwrap().is_empty());
    }

    #[test]
    fn check_names_a_changed_range_and_data_outside() {
        let size = 2 << 20;
        let (dir, f) = file_with(size, &[(0, b"a"), (1 << 20, b"b")]);
        let m = map(&f, size).unwrap();
        let p = dir.path().join("img");
        let w = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        w.write_all_at(b"c", 1 << 20).unwrap();
        assert!(matches!(
            check(&f, size, &m).unwrap(),
            Err(MapMismatch::Range { index: 1, .. })
        ));
        w.write_all_at(b"b", 1 << 20).unwrap();
        w.write_all_at(b"!", 1 << 19).unwrap();
        assert!(matches!(
            check(&f, size, &m).unwrap(),
            Err(MapMismatch::Range { index: 1, .. } | MapMismatch::Count { .. })
        ));
        w.write_all_at(b"\0", 1 << 19).unwrap();
        assert_eq!(check(&f, size, &m).unwrap(), Ok(()));
    }
}
