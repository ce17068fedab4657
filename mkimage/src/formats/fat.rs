//! FAT32 file systems written from a list of files, deterministically, into a byte range
//! of a plain file (no mount, no `mkfs.fat`).
//!
//! Used for the ESP. Every file and directory is laid out in one contiguous run of
//! clusters (root directory first, then directories, then files, in path order), so a
//! file's bytes sit at a known offset; the manifest records the UKI's range that way.
//!
//! Layout (512-byte sectors):
//!
//! | sector | content |
//! |---|---|
//! | 0 | boot sector / BPB (table below) |
//! | 1 | FSInfo: `52 52 61 41` at 0, `72 72 41 61` at 484, free clusters at 488, next free at 492, `00 00 55 AA` at 508 |
//! | 6, 7 | backup copies of sectors 0 and 1 |
//! | 32 | first FAT, then the second; entry 0 = `0x0FFFFFF8`, entry 1 = `0x0FFFFFFF` |
//! | 32 + 2·FATsz | cluster 2 (the root directory) onwards |
//!
//! BPB fields written (offset: value): 0: `EB 58 90`; 3: OEM `"CAIRN   "`; 11: 512
//! bytes/sector; 13: sectors/cluster; 14: 32 reserved sectors; 16: 2 FATs; 21: media
//! `F8`; 24: 63 sectors/track; 26: 255 heads; 28: hidden sectors (partition start);
//! 32: total sectors; 36: FAT size; 44: root cluster 2; 48: FSInfo sector 1; 50: backup
//! boot sector 6; 64: drive `80`; 66: signature `29`; 67: volume ID; 71: label (11);
//! 82: `"FAT32   "`; 510: `55 AA`.
//!
//! Names that are not plain 8.3 get VFAT long-name entries; all-lowercase 8.3 names use
//! the NT case bits instead. Timestamps are the build's `SOURCE_DATE_EPOCH` (UTC, clamped
//! to FAT's 1980–2107 range).

use std::collections::BTreeMap;

const SECTOR: u64 = 512;
const RESERVED: u64 = 32;
const FATS: u64 = 2;
/// FAT32 needs at least this many clusters, or readers take it for FAT16.
const MIN_CLUSTERS: u64 = 65525;
/// And at most this many.
const MAX_CLUSTERS: u64 = 0x0FFF_FFF5;

/// Problems planning a FAT file system.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FatError {
    /// Too small for FAT32.
    #[error("{size} bytes is too small for FAT32 (at least 33 MiB are needed)")]
    TooSmall {
        /// Requested size.
        size: u64,
    },
    /// The files do not fit.
    #[error("the files need {need} bytes but the file system has {have}; make it at least {more} bytes larger")]
    Full {
        /// Bytes the clusters would take.
        need: u64,
        /// Bytes available in the data area.
        have: u64,
        /// Shortfall.
        more: u64,
    },
    /// A path that cannot be stored.
    #[error("cannot store '{path}' on FAT: {why}")]
    BadPath {
        /// The path.
        path: String,
        /// Why.
        why: &'static str,
    },
    /// A volume label that cannot be stored.
    #[error("FAT volume label '{0}' must be 1–11 characters of A–Z, 0–9, '-' or '_'")]
    BadLabel(String),
}

/// A FAT32 file system ready to be written.
#[derive(Debug)]
pub struct FatImage {
    /// Size of the file system in bytes.
    pub size: u64,
    /// Non-zero regions `(offset within the file system, bytes)`; everything else is zero.
    pub regions: Vec<(u64, Vec<u8>)>,
    /// Byte range `(offset within the file system, length)` of each file, by path.
    pub extents: BTreeMap<String, (u64, u64)>,
}

enum Node {
    Dir(BTreeMap<String, Node>),
    File(Vec<u8>),
}

/// What goes into a FAT32 file system.
pub struct FatSpec {
    /// Total size in bytes (a multiple of 512).
    pub size: u64,
    /// Volume label (upper case, at most 11 characters).
    pub label: String,
    /// Volume serial number.
    pub volume_id: u32,
    /// Sector where the file system starts on its disk (BPB "hidden sectors").
    pub hidden_sectors: u32,
    /// Timestamp for every entry, seconds since 1970.
    pub epoch: u64,
    /// Files by slash-separated path; parent directories are created.
    pub files: Vec<(String, Vec<u8>)>,
}

struct Geometry {
    spc: u64,
    fat_sectors: u64,
    clusters: u64,
}

fn geometry(size: u64) -> Result<Geometry, FatError> {
    let total = size / SECTOR;
    for spc in [8u64, 4, 2, 1] {
        let avail = total.saturating_sub(RESERVED);
        // Upper bound on the FAT size: enough entries for every cluster the area could hold.
        let fat_sectors = ((avail / spc + 2) * 4).div_ceil(SECTOR);
        let data = avail.saturating_sub(FATS * fat_sectors);
        let clusters = (data / spc).min(MAX_CLUSTERS);
        if clusters >= MIN_CLUSTERS + 16 {
            return Ok(Geometry {
                spc,
                fat_sectors,
                clusters,
            });
        }
    }
    Err(FatError::TooSmall { size })
}

/// DOS date and time words for `epoch` (UTC).
fn dos_datetime(epoch: u64) -> (u16, u16) {
    const MIN: u64 = 315_532_800; // 1980-01-01
    const MAX: u64 = 4_354_819_198; // 2107-12-31 23:59:58
    let t = epoch.clamp(MIN, MAX);
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    // Civil date from days since 1970 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    let date = (((year - 1980) as u16) << 9) | ((month as u16) << 5) | day as u16;
    let time = (((secs / 3600) as u16) << 11) | ((((secs % 3600) / 60) as u16) << 5) | ((secs % 60) / 2) as u16;
    (date, time)
}

fn short_char_ok(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || "!#$%&'()-@^_{}~".contains(c)
}

/// How a name is stored: an 8.3 name with NT case bits, or that plus long-name entries.
struct StoredName {
    short: [u8; 11],
    nt_case: u8,
    long: Option<Vec<u16>>,
}

fn split_name(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    }
}

/// Store `name` as plain 8.3 when it is one (all upper, or base/extension each all lower).
fn plain_short(name: &str) -> Option<(String, String, u8)> {
    let (base, ext) = split_name(name);
    if base.is_empty() || base.len() > 8 || ext.len() > 3 || (name.contains('.') && ext.is_empty()) {
        return None;
    }
    let mut nt = 0u8;
    for (part, bit) in [(base, 0x08u8), (ext, 0x10)] {
        let upper = part.to_ascii_uppercase();
        if !upper.chars().all(short_char_ok) {
            return None;
        }
        if part.chars().any(|c| c.is_ascii_lowercase()) {
            if part.chars().any(|c| c.is_ascii_uppercase()) {
                return None; // mixed case needs a long name
            }
            nt |= bit;
        }
    }
    Some((base.to_ascii_uppercase(), ext.to_ascii_uppercase(), nt))
}

fn pad11(base: &str, ext: &str) -> [u8; 11] {
    let mut s = [b' '; 11];
    s[..base.len()].copy_from_slice(base.as_bytes());
    s[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    s
}

fn store_name(name: &str, taken: &mut Vec<[u8; 11]>) -> Result<StoredName, FatError> {
    let bad = |why| FatError::BadPath { path: name.into(), why };
    if name.is_empty() || name == "." || name == ".." {
        return Err(bad("empty or dot name"));
    }
    if name.encode_utf16().count() > 255 {
        return Err(bad("name longer than 255 characters"));
    }
    if name.chars().any(|c| c < ' ' || "\"*/:<>?\\|".contains(c)) || name.ends_with(['.', ' ']) {
        return Err(bad("character not allowed in FAT names"));
    }
    if let Some((base, ext, nt)) = plain_short(name) {
        let short = pad11(&base, &ext);
        if taken.contains(&short) {
            return Err(bad("two names differ only in case"));
        }
        taken.push(short);
        return Ok(StoredName {
            short,
            nt_case: nt,
            long: None,
        });
    }
    // Long name: derive a unique BASIS~N.EXT alias.
    let (base, ext) = split_name(name);
    let clean = |s: &str, n: usize| -> String {
        s.chars()
            .filter(|&c| c != ' ' && c != '.')
            .map(|c| {
                let u = c.to_ascii_uppercase();
                if short_char_ok(u) {
                    u
                } else {
                    '_'
                }
            })
            .take(n)
            .collect()
    };
    let (b, e) = (clean(base, 8), clean(ext, 3));
    let short = (1..=999_999)
        .map(|n| {
            let tail = format!("~{n}");
            let keep = 8 - tail.len();
            pad11(&format!("{}{tail}", &b[..b.len().min(keep)]), &e)
        })
        .find(|s| !taken.contains(s))
        .ok_or_else(|| bad("too many similar names"))?;
    taken.push(short);
    Ok(StoredName {
        short,
        nt_case: 0,
        long: Some(name.encode_utf16().collect()),
    })
}

fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &c| ((sum & 1) << 7).wrapping_add(sum >> 1).wrapping_add(c))
}

/// Directory entries (32 bytes each) for one name, long-name entries first.
fn dir_entries(name: &StoredName, attr: u8, cluster: u32, size: u32, dt: (u16, u16)) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(long) = &name.long {
        let sum = lfn_checksum(&name.short);
        let mut units = long.clone();
        if units.len() % 13 != 0 {
            units.push(0);
            while units.len() % 13 != 0 {
                units.push(0xffff);
            }
        }
        let count = units.len() / 13;
        for seq in (1..=count).rev() {
            let chunk = &units[(seq - 1) * 13..seq * 13];
            let mut e = [0u8; 32];
            e[0] = seq as u8 | if seq == count { 0x40 } else { 0 };
            e[11] = 0x0f;
            e[13] = sum;
            let slots = (1..11).step_by(2).chain((14..26).step_by(2)).chain((28..32).step_by(2));
            for (u, at) in chunk.iter().zip(slots) {
                e[at..at + 2].copy_from_slice(&u.to_le_bytes());
            }
            out.extend_from_slice(&e);
        }
    }
    out.extend_from_slice(&short_entry(&name.short, attr, name.nt_case, cluster, size, dt));
    out
}

fn short_entry(short: &[u8; 11], attr: u8, nt: u8, cluster: u32, size: u32, (date, time): (u16, u16)) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(short);
    e[11] = attr;
    e[12] = nt;
    e[14..16].copy_from_slice(&time.to_le_bytes());
    e[16..18].copy_from_slice(&date.to_le_bytes());
    e[18..20].copy_from_slice(&date.to_le_bytes());
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&time.to_le_bytes());
    e[24..26].copy_from_slice(&date.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

fn valid_label(label: &str) -> bool {
    (1..=11).contains(&label.len())
        && label
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl FatSpec {
    /// Lay out the file system. Pure: nothing is written.
    pub fn build(self) -> Result<FatImage, FatError> {
        if !valid_label(&self.label) {
            return Err(FatError::BadLabel(self.label));
        }
        let geo = geometry(self.size)?;
        let cluster_bytes = geo.spc * SECTOR;
        let dt = dos_datetime(self.epoch);

        // Build the tree.
        let mut root = BTreeMap::new();
        for (path, data) in self.files {
            let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            let Some((file, dirs)) = parts.split_last() else {
                return Err(FatError::BadPath {
                    path,
                    why: "empty path",
                });
            };
            let mut at = &mut root;
            for d in dirs {
                let node = at.entry((*d).to_string()).or_insert_with(|| Node::Dir(BTreeMap::new()));
                at = match node {
                    Node::Dir(children) => children,
                    Node::File(_) => {
                        return Err(FatError::BadPath {
                            path: path.clone(),
                            why: "a parent is a file",
                        })
                    }
                };
            }
            if at.insert((*file).to_string(), Node::File(data)).is_some() {
                return Err(FatError::BadPath {
                    path,
                    why: "listed twice",
                });
            }
        }

        // Pass 1: name every entry and size every directory, so clusters can be assigned.
        struct Dir<'a> {
            path: String,
            parent: usize,
            entries: Vec<(StoredName, &'a str, &'a Node)>,
            bytes: u64,
            first_cluster: u32,
        }
        let mut dirs: Vec<Dir> = Vec::new();
        let mut queue: Vec<(String, usize, &BTreeMap<String, Node>)> = vec![(String::new(), 0, &root)];
        let mut qi = 0;
        while qi < queue.len() {
            let (path, parent, children) = (queue[qi].0.clone(), queue[qi].1, queue[qi].2);
            let me = dirs.len();
            let mut taken = Vec::new();
            let mut entries = Vec::new();
            let mut bytes = if me == 0 { 32 } else { 64 }; // volume label, or "." and ".."
            for (name, node) in children {
                let stored = store_name(name, &mut taken).map_err(|e| match e {
                    FatError::BadPath { why, .. } => FatError::BadPath {
                        path: format!("{path}{name}"),
                        why,
                    },
                    other => other,
                })?;
                bytes += 32 * (1 + stored.long.as_ref().map_or(0, |l| (l.len() as u64).div_ceil(13)));
                if let Node::Dir(grand) = node {
                    queue.push((format!("{path}{name}/"), me, grand));
                }
                entries.push((stored, name.as_str(), node));
            }
            dirs.push(Dir {
                path,
                parent,
                entries,
                bytes: bytes.max(1),
                first_cluster: 0,
            });
            qi += 1;
        }

        // Pass 2: assign clusters: directories in creation order, then files in path order.
        let mut next: u64 = 2;
        for d in dirs.iter_mut() {
            d.first_cluster = next as u32;
            next += d.bytes.div_ceil(cluster_bytes);
        }
        let used_for_dirs = next - 2;
        let mut file_clusters: BTreeMap<String, (u32, u64)> = BTreeMap::new();
        for d in &dirs {
            for (_, name, node) in &d.entries {
                if let Node::File(data) = node {
                    let n = (data.len() as u64).div_ceil(cluster_bytes);
                    let first = if n == 0 { 0 } else { next as u32 };
                    file_clusters.insert(format!("{}{name}", d.path), (first, n));
                    next += n;
                }
            }
        }
        let used = next - 2;
        if used > geo.clusters {
            let have = geo.clusters * cluster_bytes;
            let need = used * cluster_bytes;
            return Err(FatError::Full {
                need,
                have,
                more: need - have,
            });
        }

        // The FAT: every run is a simple chain.
        let mut fat = vec![0u8; (next as usize) * 4];
        fat[0..4].copy_from_slice(&0x0FFF_FFF8u32.to_le_bytes());
        fat[4..8].copy_from_slice(&0x0FFF_FFFFu32.to_le_bytes());
        let mut chain = |first: u64, n: u64| {
            for c in first..first + n {
                let v: u32 = if c + 1 == first + n {
                    0x0FFF_FFFF
                } else {
                    (c + 1) as u32
                };
                fat[(c * 4) as usize..(c * 4 + 4) as usize].copy_from_slice(&v.to_le_bytes());
            }
        };
        let mut c = 2;
        for d in &dirs {
            let n = d.bytes.div_ceil(cluster_bytes);
            chain(c, n);
            c += n;
        }
        debug_assert_eq!(c - 2, used_for_dirs);
        for (first, n) in file_clusters.values() {
            if *n > 0 {
                chain(*first as u64, *n);
            }
        }

        let data_start = (RESERVED + FATS * geo.fat_sectors) * SECTOR;
        let cluster_offset = |cl: u64| data_start + (cl - 2) * cluster_bytes;
        let mut regions = Vec::new();
        let mut extents = BTreeMap::new();

        // Directories and file data.
        let label = pad11(&self.label, "");
        for d in &dirs {
            let mut bytes = Vec::new();
            if d.path.is_empty() {
                bytes.extend_from_slice(&short_entry(&label, 0x08, 0, 0, 0, dt));
            } else {
                let parent_cluster = if d.parent == 0 { 0 } else { dirs[d.parent].first_cluster };
                bytes.extend_from_slice(&short_entry(b".          ", 0x10, 0, d.first_cluster, 0, dt));
                bytes.extend_from_slice(&short_entry(b"..         ", 0x10, 0, parent_cluster, 0, dt));
            }
            for (stored, name, node) in &d.entries {
                let child_path = format!("{}{name}", d.path);
                match node {
                    Node::Dir(_) => {
                        let cl = dirs
                            .iter()
                            .find(|x| x.path == format!("{child_path}/"))
                            .expect("every directory was queued")
                            .first_cluster;
                        bytes.extend(dir_entries(stored, 0x10, cl, 0, dt));
                    }
                    Node::File(data) => {
                        let (first, _) = file_clusters[&child_path];
                        bytes.extend(dir_entries(stored, 0x20, first, data.len() as u32, dt));
                        if !data.is_empty() {
                            let at = cluster_offset(first as u64);
                            extents.insert(child_path, (at, data.len() as u64));
                            regions.push((at, data.clone()));
                        } else {
                            extents.insert(child_path, (0, 0));
                        }
                    }
                }
            }
            bytes.resize((d.bytes.div_ceil(cluster_bytes) * cluster_bytes) as usize, 0);
            regions.push((cluster_offset(d.first_cluster as u64), bytes));
        }

        // Boot sector, FSInfo and their backups.
        let mut boot = vec![0u8; SECTOR as usize];
        boot[0..3].copy_from_slice(&[0xeb, 0x58, 0x90]);
        boot[3..11].copy_from_slice(b"CAIRN   ");
        boot[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
        boot[13] = geo.spc as u8;
        boot[14..16].copy_from_slice(&(RESERVED as u16).to_le_bytes());
        boot[16] = FATS as u8;
        boot[21] = 0xf8;
        boot[24..26].copy_from_slice(&63u16.to_le_bytes());
        boot[26..28].copy_from_slice(&255u16.to_le_bytes());
        boot[28..32].copy_from_slice(&self.hidden_sectors.to_le_bytes());
        boot[32..36].copy_from_slice(&((self.size / SECTOR) as u32).to_le_bytes());
        boot[36..40].copy_from_slice(&(geo.fat_sectors as u32).to_le_bytes());
        boot[44..48].copy_from_slice(&2u32.to_le_bytes());
        boot[48..50].copy_from_slice(&1u16.to_le_bytes());
        boot[50..52].copy_from_slice(&6u16.to_le_bytes());
        boot[64] = 0x80;
        boot[66] = 0x29;
        boot[67..71].copy_from_slice(&self.volume_id.to_le_bytes());
        boot[71..82].copy_from_slice(&label);
        boot[82..90].copy_from_slice(b"FAT32   ");
        // Boot code: print nothing, halt. This volume is never booted through its VBR.
        boot[90..94].copy_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]); // cli; hlt; jmp $-1
        boot[510] = 0x55;
        boot[511] = 0xaa;

        let mut fsinfo = vec![0u8; SECTOR as usize];
        fsinfo[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
        fsinfo[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
        fsinfo[488..492].copy_from_slice(&((geo.clusters - used) as u32).to_le_bytes());
        fsinfo[492..496].copy_from_slice(&(next as u32).to_le_bytes());
        fsinfo[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());

        let mut head = Vec::with_capacity(8 * SECTOR as usize);
        head.extend_from_slice(&boot);
        head.extend_from_slice(&fsinfo);
        head.resize(6 * SECTOR as usize, 0);
        head.extend_from_slice(&boot);
        head.extend_from_slice(&fsinfo);
        regions.push((0, head));
        for i in 0..FATS {
            regions.push(((RESERVED + i * geo.fat_sectors) * SECTOR, fat.clone()));
        }
        regions.sort_by_key(|r| r.0);
        Ok(FatImage {
            size: self.size,
            regions,
            extents,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_dates() {
        assert_eq!(dos_datetime(0), ((1 << 5) | 1, 0)); // clamped to 1980-01-01: year 0, month 1, day 1
                                                        // 2023-11-14 22:13:20 UTC
        let (d, t) = dos_datetime(1_700_000_000);
        assert_eq!((d >> 9, (d >> 5) & 15, d & 31), (43, 11, 14));
        assert_eq!((t >> 11, (t >> 5) & 63, (t & 31) * 2), (22, 13, 20));
    }

    #[test]
    fn short_and_long_names() {
        let mut taken = Vec::new();
        let n = store_name("BOOTX64.EFI", &mut taken).unwrap();
        assert_eq!(&n.short, b"BOOTX64 EFI");
        assert!(n.long.is_none());
        let n = store_name("loader.conf", &mut taken).unwrap();
        assert!(n.long.is_some(), "'conf' is four characters");
        assert_eq!(&n.short, b"LOADER~1CON");
        let n = store_name("loader", &mut taken).unwrap();
        assert_eq!((&n.short, n.nt_case), (b"LOADER     ", 0x08));
        let n = store_name("Linux", &mut taken).unwrap();
        assert_eq!(&n.short, b"LINUX~1    ");
        let n = store_name("cairn_1.0+3.efi", &mut taken).unwrap();
        assert_eq!(&n.short, b"CAIRN_~1EFI");
        assert!(store_name("a/b", &mut taken).is_err());
        assert!(store_name("BOOTX64.EFI", &mut taken).is_err());
    }

    #[test]
    fn long_name_entry_bytes() {
        let stored = StoredName {
            short: *b"LOADER~1CON",
            nt_case: 0,
            long: Some("loader.conf".encode_utf16().collect()),
        };
        let e = dir_entries(&stored, 0x20, 5, 7, (0, 0));
        assert_eq!(e.len(), 64);
        assert_eq!(e[0], 0x41);
        assert_eq!(e[11], 0x0f);
        assert_eq!(e[13], lfn_checksum(b"LOADER~1CON"));
        assert_eq!(&e[1..11], b"l\0o\0a\0d\0e\0");
        assert_eq!(&e[14..26], b"r\0.\0c\0o\0n\0f\0");
        assert_eq!(&e[28..32], &[0, 0, 0xff, 0xff]); // terminator, then padding
        assert_eq!(&e[32..43], b"LOADER~1CON");
        assert_eq!(u16::from_le_bytes([e[58], e[59]]), 5);
    }

    #[test]
    fn too_small_and_full() {
        let spec = |size, files| FatSpec {
            size,
            label: "ESP".into(),
            volume_id: 1,
            hidden_sectors: 0,
            epoch: 0,
            files,
        };
        assert!(matches!(spec(8 << 20, vec![]).build(), Err(FatError::TooSmall { .. })));
        let big = vec![("big".to_string(), vec![1u8; 40 << 20])];
        match spec(40 << 20, big).build() {
            Err(FatError::Full { more, .. }) => assert!(more > 0),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            FatSpec {
                label: "esp".into(),
                ..spec(64 << 20, vec![])
            }
            .build(),
            Err(FatError::BadLabel(_))
        ));
    }

    #[test]
    fn extents_point_at_file_bytes() {
        let img = FatSpec {
            size: 64 << 20,
            label: "ESP".into(),
            volume_id: 1,
            hidden_sectors: 0,
            epoch: 1_700_000_000,
            files: vec![
                ("EFI/Linux/a.efi".into(), vec![0xab; 10_000]),
                ("loader/loader.conf".into(), b"timeout 0\n".to_vec()),
            ],
        }
        .build()
        .unwrap();
        let (off, len) = img.extents["EFI/Linux/a.efi"];
        assert_eq!(len, 10_000);
        let region = img.regions.iter().find(|r| r.0 == off).unwrap();
        assert_eq!(region.1, vec![0xab; 10_000]);
    }
}
