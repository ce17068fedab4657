//! dm-verity hash device, byte-identical to `veritysetup format` (format version 1).
//!
//! The hash device starts with a superblock in its own hash block, followed by the hash
//! tree with the *top* level first and the level over the data blocks last. Every hash is
//! `sha256(salt || block)`; a hash block holds `4096 / 32 = 128` hashes and is zero
//! padded. The root hash is `sha256(salt || top block)`.
//!
//! Superblock (little endian, 512 bytes, zero padded to the hash block size):
//!
//! | offset | size | field | Cairn's value |
//! |---|---|---|---|
//! | 0 | 8 | signature | `"verity\0\0"` |
//! | 8 | 4 | version | 1 |
//! | 12 | 4 | hash type | 1 (normal; 0 is the Chrome OS variant) |
//! | 16 | 16 | UUID | derived from the build inputs |
//! | 32 | 32 | algorithm | `"sha256"`, NUL padded |
//! | 64 | 4 | data block size | 4096 |
//! | 68 | 4 | hash block size | 4096 |
//! | 72 | 8 | data blocks | ⌈data size / 4096⌉ |
//! | 80 | 2 | salt size | 32 |
//! | 82 | 6 | padding | 0 |
//! | 88 | 256 | salt | the salt, zero padded |
//! | 344 | 168 | padding | 0 |

use std::io::{self, Read};

use sha2::{Digest, Sha256};

/// Data and hash block size. Cairn uses 4 KiB for both, as veritysetup does by default.
pub const BLOCK: usize = 4096;
const DIGEST: usize = 32;
const HASHES_PER_BLOCK: usize = BLOCK / DIGEST;

/// The inputs that fix a verity tree besides the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerityParams {
    /// Salt mixed into every hash.
    pub salt: [u8; 32],
    /// UUID stored in the superblock.
    pub uuid: [u8; 16],
}

/// A computed hash device.
#[derive(Debug, Clone)]
pub struct VerityTree {
    /// The root hash that goes on the kernel command line.
    pub root_hash: [u8; 32],
    /// The full hash device: superblock block then the tree.
    pub hash_device: Vec<u8>,
    /// Number of 4 KiB data blocks covered.
    pub data_blocks: u64,
}

/// Number of hash blocks on each level for `data_blocks`, from the level over the data
/// up to the single top block.
fn level_sizes(data_blocks: u64) -> Vec<u64> {
    let mut sizes = vec![data_blocks.div_ceil(HASHES_PER_BLOCK as u64)];
    while *sizes.last().expect("non-empty") > 1 {
        let next = sizes.last().expect("non-empty").div_ceil(HASHES_PER_BLOCK as u64);
        sizes.push(next);
    }
    sizes
}

/// Bytes of hash device (superblock included) that `data_bytes` of data need.
pub fn hash_device_size(data_bytes: u64) -> u64 {
    let data_blocks = data_bytes.div_ceil(BLOCK as u64).max(1);
    (1 + level_sizes(data_blocks).iter().sum::<u64>()) * BLOCK as u64
}

fn salted_hash(salt: &[u8], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Hash every 4 KiB block of `blocks` (a multiple of BLOCK long) into `out`, splitting
/// the work over the available cores.
fn hash_blocks_parallel(salt: &[u8], blocks: &[u8], out: &mut Vec<[u8; 32]>) {
    let n = blocks.len() / BLOCK;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if threads == 1 || n < 64 {
        out.extend(blocks.chunks_exact(BLOCK).map(|b| salted_hash(salt, b)));
        return;
    }
    let per = n.div_ceil(threads) * BLOCK;
    let parts: Vec<Vec<[u8; 32]>> = std::thread::scope(|s| {
        let handles: Vec<_> = blocks
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    part.chunks_exact(BLOCK)
                        .map(|b| salted_hash(salt, b))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("hash worker panicked"))
            .collect()
    });
    for p in parts {
        out.extend(p);
    }
}

/// Pack digests into zero-padded hash blocks.
fn pack(digests: &[[u8; 32]]) -> Vec<u8> {
    let blocks = digests.len().div_ceil(HASHES_PER_BLOCK);
    let mut out = vec![0u8; blocks * BLOCK];
    for (i, d) in digests.iter().enumerate() {
        out[i * DIGEST..(i + 1) * DIGEST].copy_from_slice(d);
    }
    out
}

/// Build the hash device for `len` bytes read from `data`. A final partial block is
/// zero padded, as the kernel sees it on a device of whole blocks.
pub fn build(data: &mut dyn Read, len: u64, params: &VerityParams) -> io::Result<VerityTree> {
    let data_blocks = len.div_ceil(BLOCK as u64);
    if data_blocks == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "dm-verity over no data"));
    }
    let salt = &params.salt[..];

    // Level over the data, read in large chunks.
    const CHUNK: usize = 8 << 20;
    let mut level0 = Vec::with_capacity(data_blocks as usize);
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let want = left.min(CHUNK as u64) as usize;
        data.read_exact(&mut buf[..want])?;
        let whole = want.div_ceil(BLOCK) * BLOCK;
        buf[want..whole].fill(0);
        hash_blocks_parallel(salt, &buf[..whole], &mut level0);
        left -= want as u64;
    }

    // Upper levels: each level hashes the packed blocks of the one below.
    let mut levels = vec![pack(&level0)];
    while levels.last().expect("non-empty").len() > BLOCK {
        let below = levels.last().expect("non-empty");
        let mut digests = Vec::with_capacity(below.len() / BLOCK);
        hash_blocks_parallel(salt, below, &mut digests);
        levels.push(pack(&digests));
    }
    let root_hash = salted_hash(salt, levels.last().expect("non-empty"));

    let mut hash_device = superblock(params, data_blocks);
    for level in levels.iter().rev() {
        hash_device.extend_from_slice(level);
    }
    debug_assert_eq!(hash_device.len() as u64, hash_device_size(len));
    Ok(VerityTree {
        root_hash,
        hash_device,
        data_blocks,
    })
}

/// The superblock, zero padded to one hash block.
fn superblock(params: &VerityParams, data_blocks: u64) -> Vec<u8> {
    let mut sb = vec![0u8; BLOCK];
    sb[0..8].copy_from_slice(b"verity\0\0");
    sb[8..12].copy_from_slice(&1u32.to_le_bytes());
    sb[12..16].copy_from_slice(&1u32.to_le_bytes());
    sb[16..32].copy_from_slice(&params.uuid);
    sb[32..38].copy_from_slice(b"sha256");
    sb[64..68].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    sb[68..72].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    sb[80..82].copy_from_slice(&(params.salt.len() as u16).to_le_bytes());
    sb[88..88 + params.salt.len()].copy_from_slice(&params.salt);
    sb
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: VerityParams = VerityParams {
        salt: [0x5a; 32],
        uuid: [0x11; 16],
    };

    #[test]
    fn superblock_layout() {
        let sb = superblock(&PARAMS, 0x0102);
        assert_eq!(&sb[..16], b"verity\0\0\x01\0\0\0\x01\0\0\0");
        assert_eq!(&sb[16..32], &[0x11; 16]);
        assert_eq!(&sb[32..40], b"sha256\0\0");
        assert_eq!(&sb[64..82], b"\0\x10\0\0\0\x10\0\0\x02\x01\0\0\0\0\0\0\x20\0");
        assert_eq!(&sb[88..120], &[0x5a; 32]);
        assert!(sb[120..].iter().all(|&b| b == 0));
    }

    #[test]
    fn level_shapes() {
        assert_eq!(level_sizes(1), vec![1]);
        assert_eq!(level_sizes(128), vec![1]);
        assert_eq!(level_sizes(129), vec![2, 1]);
        assert_eq!(level_sizes(128 * 128 + 1), vec![129, 2, 1]);
        assert_eq!(hash_device_size(4096), 2 * 4096);
        assert_eq!(hash_device_size(129 * 4096), 4 * 4096);
    }

    #[test]
    fn single_block_tree_by_hand() {
        let data = vec![0xa5u8; 100]; // one partial block, zero padded
        let tree = build(&mut &data[..], data.len() as u64, &PARAMS).unwrap();
        let mut block = data.clone();
        block.resize(BLOCK, 0);
        let leaf = salted_hash(&PARAMS.salt, &block);
        let mut top = vec![0u8; BLOCK];
        top[..32].copy_from_slice(&leaf);
        assert_eq!(tree.root_hash, salted_hash(&PARAMS.salt, &top));
        assert_eq!(&tree.hash_device[BLOCK..], &top[..]);
        assert_eq!(tree.data_blocks, 1);
    }

    #[test]
    fn top_level_is_stored_first() {
        let data: Vec<u8> = (0..200 * BLOCK).map(|i| (i / BLOCK) as u8).collect();
        let tree = build(&mut &data[..], data.len() as u64, &PARAMS).unwrap();
        // 200 data blocks: level 0 has 2 blocks, the top level 1.
        assert_eq!(tree.hash_device.len(), (1 + 1 + 2) * BLOCK);
        let top = &tree.hash_device[BLOCK..2 * BLOCK];
        let level0 = &tree.hash_device[2 * BLOCK..];
        assert_eq!(&top[..32], &salted_hash(&PARAMS.salt, &level0[..BLOCK]));
        assert_eq!(&top[32..64], &salted_hash(&PARAMS.salt, &level0[BLOCK..]));
        assert_eq!(&level0[32..64], &salted_hash(&PARAMS.salt, &data[BLOCK..2 * BLOCK]));
        assert_eq!(tree.root_hash, salted_hash(&PARAMS.salt, top));
    }

    #[test]
    fn empty_data_is_an_error() {
        assert!(build(&mut &[][..], 0, &PARAMS).is_err());
    }
}
