//! GUID Partition Table with protective MBR, written into a plain file.
//!
//! Sectors are 512 bytes. The table has 128 entries of 128 bytes (32 sectors).
//!
//! | where | what |
//! |---|---|
//! | LBA 0 | protective MBR: one entry of type 0xEE from LBA 1 to the end (capped at 2³²−1), signature `55 AA` |
//! | LBA 1 | primary header |
//! | LBA 2–33 | primary entry array |
//! | LBA n−33 – n−2 | backup entry array |
//! | LBA n−1 | backup header |
//!
//! Header (little endian, 92 bytes, rest of the sector zero):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | `"EFI PART"` |
//! | 8 | 4 | revision `00 00 01 00` |
//! | 12 | 4 | header size 92 |
//! | 16 | 4 | CRC32 of the header with this field zero |
//! | 20 | 4 | reserved 0 |
//! | 24 | 8 | this header's LBA |
//! | 32 | 8 | the other header's LBA |
//! | 40 | 8 | first usable LBA (34) |
//! | 48 | 8 | last usable LBA (n−34) |
//! | 56 | 16 | disk GUID (mixed endian) |
//! | 72 | 8 | LBA of the entry array |
//! | 80 | 4 | number of entries (128) |
//! | 84 | 4 | entry size (128) |
//! | 88 | 4 | CRC32 of the entry array |
//!
//! Entry (128 bytes): type GUID (16), unique GUID (16), first LBA (8), last LBA
//! inclusive (8), attributes (8), name in UTF-16LE (72, 36 code units).

use crate::guid::Guid;

/// Bytes per sector.
pub const SECTOR: u64 = 512;
const ENTRIES: usize = 128;
const ENTRY_SIZE: usize = 128;
const ARRAY_SECTORS: u64 = (ENTRIES * ENTRY_SIZE) as u64 / SECTOR;
/// First LBA a partition may use.
pub const FIRST_USABLE: u64 = 2 + ARRAY_SECTORS;
/// Sectors the backup table takes at the end of the disk.
pub const BACKUP_SECTORS: u64 = 1 + ARRAY_SECTORS;

/// GPT attribute: required by the platform.
pub const ATTR_REQUIRED: u64 = 1 << 0;
/// Discoverable Partitions Specification: read-only.
pub const ATTR_READ_ONLY: u64 = 1 << 60;
/// Discoverable Partitions Specification: do not mount automatically.
pub const ATTR_NO_AUTO: u64 = 1 << 63;

/// One partition of a planned table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Partition type.
    pub type_guid: Guid,
    /// Unique partition GUID.
    pub uuid: Guid,
    /// First sector.
    pub first_lba: u64,
    /// Last sector, inclusive.
    pub last_lba: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// Name (at most 36 UTF-16 code units).
    pub name: String,
}

impl Partition {
    /// Byte offset in the disk.
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

/// A table that [`Gpt::new`] found wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GptError {
    /// More partitions than entries.
    #[error("{0} partitions do not fit a 128-entry table")]
    TooMany(usize),
    /// A partition outside the usable area, or backwards.
    #[error("partition {name} ({first}–{last}) lies outside the usable sectors {lo}–{hi}")]
    OutOfRange {
        /// Partition name.
        name: String,
        /// Its first sector.
        first: u64,
        /// Its last sector.
        last: u64,
        /// First usable sector.
        lo: u64,
        /// Last usable sector.
        hi: u64,
    },
    /// Two partitions share sectors.
    #[error("partitions {0} and {1} overlap")]
    Overlap(String, String),
    /// A name longer than the entry holds.
    #[error("partition name '{0}' is longer than 36 UTF-16 code units")]
    NameTooLong(String),
}

/// A validated partition table for a disk of a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    disk_guid: Guid,
    sectors: u64,
    partitions: Vec<Partition>,
}

impl Gpt {
    /// Check the partitions against the disk size and each other.
    pub fn new(disk_guid: Guid, disk_bytes: u64, partitions: Vec<Partition>) -> Result<Gpt, GptError> {
        let sectors = disk_bytes / SECTOR;
        if partitions.len() > ENTRIES {
            return Err(GptError::TooMany(partitions.len()));
        }
        let (lo, hi) = (FIRST_USABLE, sectors.saturating_sub(BACKUP_SECTORS + 1));
        for p in &partitions {
            if p.name.encode_utf16().count() > 36 {
                return Err(GptError::NameTooLong(p.name.clone()));
            }
            if p.first_lba < lo || p.last_lba > hi || p.last_lba < p.first_lba {
                return Err(GptError::OutOfRange {
                    name: p.name.clone(),
                    first: p.first_lba,
                    last: p.last_lba,
                    lo,
                    hi,
                });
            }
        }
        for (i, a) in partitions.iter().enumerate() {
            for b in &partitions[i + 1..] {
                if a.first_lba <= b.last_lba && b.first_lba <= a.last_lba {
                    return Err(GptError::Overlap(a.name.clone(), b.name.clone()));
                }
            }
        }
        Ok(Gpt {
            disk_guid,
            sectors,
            partitions,
        })
    }

    /// The partitions in table order.
    pub fn partitions(&self) -> &[Partition] {
        &self.partitions
    }

    /// The disk GUID.
    pub fn disk_guid(&self) -> Guid {
        self.disk_guid
    }

    /// Last usable sector.
    pub fn last_usable(&self) -> u64 {
        self.sectors - BACKUP_SECTORS - 1
    }

    fn entry_array(&self) -> Vec<u8> {
        let mut array = vec![0u8; ENTRIES * ENTRY_SIZE];
        for (p, e) in self.partitions.iter().zip(array.chunks_exact_mut(ENTRY_SIZE)) {
            e[0..16].copy_from_slice(&p.type_guid.to_gpt_bytes());
            e[16..32].copy_from_slice(&p.uuid.to_gpt_bytes());
            e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
            e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
            e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
            for (i, unit) in p.name.encode_utf16().enumerate() {
                e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
            }
        }
        array
    }

    fn header(&self, my_lba: u64, other_lba: u64, array_lba: u64, array_crc: u32) -> Vec<u8> {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&other_lba.to_le_bytes());
        h[40..48].copy_from_slice(&FIRST_USABLE.to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable().to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.to_gpt_bytes());
        h[72..80].copy_from_slice(&array_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn protective_mbr(&self) -> Vec<u8> {
        let mut m = vec![0u8; SECTOR as usize];
        let e = &mut m[446..462];
        e[0] = 0x00; // not bootable
        e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
        e[4] = 0xee;
        e[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        e[8..12].copy_from_slice(&1u32.to_le_bytes());
        let size = (self.sectors - 1).min(u32::MAX as u64) as u32;
        e[12..16].copy_from_slice(&size.to_le_bytes());
        m[510] = 0x55;
        m[511] = 0xaa;
        m
    }

    /// The two regions to write: `(offset, bytes)` for the start of the disk (MBR,
    /// primary header and array) and for its end (backup array and header).
    pub fn render(&self) -> [(u64, Vec<u8>); 2] {
        let array = self.entry_array();
        let crc = crc32fast::hash(&array);
        let last = self.sectors - 1;
        let backup_array_lba = last - ARRAY_SECTORS;

        let mut head = self.protective_mbr();
        head.extend(self.header(1, last, 2, crc));
        head.extend(&array);

        let mut tail = array;
        tail.extend(self.header(last, 1, backup_array_lba, crc));
        [(0, head), (backup_array_lba * SECTOR, tail)]
    }
}

/// Problems reading a partition table back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    /// Not a GPT disk, or a damaged one.
    #[error("{0}")]
    Invalid(String),
}

/// Read and check a partition table from the first and last 34 sectors of a disk:
/// both headers' and arrays' CRCs, and that the two copies agree. Returns the disk GUID
/// and the used entries in table order.
pub fn read(head: &[u8], tail: &[u8], disk_bytes: u64) -> Result<(Guid, Vec<Partition>), ReadError> {
    let (guid, numbered) = read_numbered(head, tail, disk_bytes)?;
    Ok((guid, numbered.into_iter().map(|(_, p)| p).collect()))
}

/// [`read`], with each used entry's 1-based partition number (its slot in the array,
/// which is what names `/dev/vdaN`).
pub fn read_numbered(head: &[u8], tail: &[u8], disk_bytes: u64) -> Result<(Guid, Vec<(u32, Partition)>), ReadError> {
    let bad = |m: &str| ReadError::Invalid(m.to_string());
    let sectors = disk_bytes / SECTOR;
    if head.len() < (2 + ARRAY_SECTORS as usize) * 512 || tail.len() < BACKUP_SECTORS as usize * 512 {
        return Err(bad("disk too small for a GPT"));
    }
    if head[510..512] != [0x55, 0xaa] || head[446 + 4] != 0xee {
        return Err(bad("no protective MBR"));
    }
    let check = |h: &[u8], array: &[u8], my: u64| -> Result<Vec<u8>, ReadError> {
        if &h[0..8] != b"EFI PART" {
            return Err(bad("GPT header signature missing"));
        }
        let mut copy = h[..92].to_vec();
        let crc = u32::from_le_bytes(copy[16..20].try_into().expect("4"));
        copy[16..20].fill(0);
        if crc32fast::hash(&copy) != crc {
            return Err(bad("GPT header CRC mismatch"));
        }
        if u64::from_le_bytes(h[24..32].try_into().expect("8")) != my {
            return Err(bad("GPT header at the wrong LBA"));
        }
        if u32::from_le_bytes(h[88..92].try_into().expect("4")) != crc32fast::hash(array) {
            return Err(bad("GPT entry array CRC mismatch"));
        }
        Ok(h[..92].to_vec())
    };
    let primary = check(&head[512..1024], &head[1024..1024 + ENTRIES * ENTRY_SIZE], 1)?;
    let backup_array = &tail[..ENTRIES * ENTRY_SIZE];
    let backup = check(
        &tail[ENTRIES * ENTRY_SIZE..ENTRIES * ENTRY_SIZE + 512],
        backup_array,
        sectors - 1,
    )?;
    if head[1024..1024 + ENTRIES * ENTRY_SIZE] != *backup_array || primary[56..72] != backup[56..72] {
        return Err(bad("primary and backup GPT differ"));
    }
    let disk_guid = Guid::from_gpt_bytes(primary[56..72].try_into().expect("16"));
    let mut parts = Vec::new();
    for (i, e) in head[1024..1024 + ENTRIES * ENTRY_SIZE]
        .chunks_exact(ENTRY_SIZE)
        .enumerate()
    {
        let type_guid = Guid::from_gpt_bytes(e[0..16].try_into().expect("16"));
        if type_guid == Guid::NIL {
            continue;
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        parts.push((
            i as u32 + 1,
            Partition {
                type_guid,
                uuid: Guid::from_gpt_bytes(e[16..32].try_into().expect("16")),
                first_lba: u64::from_le_bytes(e[32..40].try_into().expect("8")),
                last_lba: u64::from_le_bytes(e[40..48].try_into().expect("8")),
                attributes: u64::from_le_bytes(e[48..56].try_into().expect("8")),
                name: String::from_utf16_lossy(&units),
            },
        ));
    }
    Ok((disk_guid, parts))
}

/// Make the two copies of a table agree again after a write was cut short, in memory:
/// `head` and `tail` as for [`read`]. When both copies are sound but differ (the backup was
/// written, the primary not: Cairn writes the backup first), the primary wins — it is what
/// the kernel and the firmware use — and the backup is rebuilt from it; when only one copy
/// is sound, the other is rebuilt from it. Returns what was mended (`None`: nothing to do);
/// the caller writes `tail`, then `head`, back. Fails when neither copy is sound.
pub fn mend(head: &mut [u8], tail: &mut [u8], disk_bytes: u64) -> Result<Option<String>, ReadError> {
    let array_len = ENTRIES * ENTRY_SIZE;
    if head.len() < 1024 + array_len || tail.len() < array_len + 512 || disk_bytes / SECTOR < 68 {
        return Err(ReadError::Invalid("disk too small for a GPT".into()));
    }
    if read_numbered(head, tail, disk_bytes).is_ok() {
        return Ok(None);
    }
    let last = disk_bytes / SECTOR - 1;
    let sound = |h: &[u8], array: &[u8], my: u64| {
        let mut copy = h[..92].to_vec();
        let crc = u32::from_le_bytes(copy[16..20].try_into().expect("4"));
        copy[16..20].fill(0);
        &h[0..8] == b"EFI PART"
            && crc32fast::hash(&copy) == crc
            && u64::from_le_bytes(h[24..32].try_into().expect("8")) == my
            && u32::from_le_bytes(h[88..92].try_into().expect("4")) == crc32fast::hash(array)
    };
    let primary_ok = sound(&head[512..1024], &head[1024..1024 + array_len], 1);
    let backup_ok = sound(&tail[array_len..array_len + 512], &tail[..array_len], last);
    // Copy one header over the other, pointing it at its own place and array.
    let rebuild = |from: &[u8], to: &mut [u8], my: u64, alternate: u64, array_lba: u64| {
        to[..512].copy_from_slice(&from[..512]);
        to[24..32].copy_from_slice(&my.to_le_bytes());
        to[32..40].copy_from_slice(&alternate.to_le_bytes());
        to[72..80].copy_from_slice(&array_lba.to_le_bytes());
        to[16..20].fill(0);
        let crc = crc32fast::hash(&to[..92]);
        to[16..20].copy_from_slice(&crc.to_le_bytes());
    };
    let what = if primary_ok {
        let (h, rest) = head.split_at_mut(1024);
        tail[..array_len].copy_from_slice(&rest[..array_len]);
        let from = h[512..1024].to_vec();
        rebuild(
            &from,
            &mut tail[array_len..array_len + 512],
            last,
            1,
            last - ARRAY_SECTORS,
        );
        if backup_ok {
            "the backup GPT differed from the primary (a write cut short); rewrote it from the primary"
        } else {
            "the backup GPT was damaged; rewrote it from the primary"
        }
    } else if backup_ok {
        if head[510..512] != [0x55, 0xaa] || head[446 + 4] != 0xee {
            return Err(ReadError::Invalid("no protective MBR".into()));
        }
        head[1024..1024 + array_len].copy_from_slice(&tail[..array_len]);
        let from = tail[array_len..array_len + 512].to_vec();
        rebuild(&from, &mut head[512..1024], 1, last, 2);
        "the primary GPT was damaged; restored it from the backup"
    } else {
        return Err(ReadError::Invalid("both copies of the GPT are damaged".into()));
    };
    read_numbered(head, tail, disk_bytes)?;
    Ok(Some(what.to_string()))
}

/// Change one entry's unique GUID and attributes in a table read with
/// [`read_numbered`], in both copies, and recompute every CRC. Everything else (other
/// entries, the headers' other fields, whoever wrote them) stays byte for byte. `head`
/// and `tail` are the first 34 and last 33 sectors of the disk; write `tail` back first,
/// then `head`, so that a crash in between leaves one consistent copy for the reader to
/// fall back on.
pub fn set_entry(head: &mut [u8], tail: &mut [u8], number: u32, uuid: Guid, attributes: u64) -> Result<(), ReadError> {
    let idx = (number as usize)
        .checked_sub(1)
        .filter(|&i| i < ENTRIES)
        .ok_or_else(|| ReadError::Invalid(format!("no partition entry {number}")))?;
    let array_len = ENTRIES * ENTRY_SIZE;
    if head.len() < 1024 + array_len || tail.len() < array_len + 512 {
        return Err(ReadError::Invalid("table regions too short".into()));
    }
    for array in [&mut head[1024..1024 + array_len], &mut tail[..array_len]] {
        let e = &mut array[idx * ENTRY_SIZE..(idx + 1) * ENTRY_SIZE];
        if e[0..16].iter().all(|&b| b == 0) {
            return Err(ReadError::Invalid(format!("partition entry {number} is unused")));
        }
        e[16..32].copy_from_slice(&uuid.to_gpt_bytes());
        e[48..56].copy_from_slice(&attributes.to_le_bytes());
    }
    let crc = crc32fast::hash(&head[1024..1024 + array_len]);
    for h in [&mut head[512..1024], &mut tail[array_len..array_len + 512]] {
        h[88..92].copy_from_slice(&crc.to_le_bytes());
        h[16..20].fill(0);
        let hcrc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&hcrc.to_le_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guid::guid;

    fn one_partition(first: u64, last: u64) -> Vec<Partition> {
        vec![Partition {
            type_guid: guid("0fc63daf-8483-4772-8e79-3d69d8477de4"),
            uuid: guid("01234567-89ab-cdef-0123-456789abcdef"),
            first_lba: first,
            last_lba: last,
            attributes: ATTR_READ_ONLY,
            name: "data".into(),
        }]
    }

    #[test]
    fn set_entry_changes_one_entry_in_both_copies() {
        let disk = 4 << 20;
        let mut parts = one_partition(2048, 3071);
        parts.push(Partition {
            name: "other".into(),
            uuid: guid("11111111-2222-4333-8444-555555555555"),
            ..one_partition(3072, 4095)[0].clone()
        });
        let gpt = Gpt::new(Guid::NIL, disk, parts.clone()).unwrap();
        let [(_, mut head), (_, mut tail)] = gpt.render();
        let new = guid("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee");
        set_entry(&mut head, &mut tail, 2, new, ATTR_NO_AUTO).unwrap();
        let (_, got) = read_numbered(&head, &tail, disk).unwrap();
        assert_eq!(got[0], (1, parts[0].clone()));
        assert_eq!(got[1].0, 2);
        assert_eq!(got[1].1.uuid, new);
        assert_eq!(got[1].1.attributes, ATTR_NO_AUTO);
        assert_eq!(got[1].1.name, "other");
        assert!(set_entry(&mut head, &mut tail, 3, new, 0).is_err());
        assert!(set_entry(&mut head, &mut tail, 0, new, 0).is_err());
    }

    #[test]
    fn a_table_written_halfway_is_mended_from_the_sound_copy() {
        let disk = 4 << 20;
        let gpt = Gpt::new(Guid::NIL, disk, one_partition(2048, 4095)).unwrap();
        let [(_, head), (_, tail)] = gpt.render();
        let new = guid("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee");
        let (mut new_head, mut new_tail) = (head.clone(), tail.clone());
        set_entry(&mut new_head, &mut new_tail, 1, new, 0).unwrap();
        // The power went after the backup was written: old primary, new backup.
        let (mut h, mut t) = (head.clone(), new_tail.clone());
        assert!(read(&h, &t, disk).unwrap_err().to_string().contains("differ"));
        let what = mend(&mut h, &mut t, disk).unwrap().unwrap();
        assert!(what.contains("rewrote it from the primary"), "{what}");
        assert_eq!(
            (h.as_slice(), t.as_slice()),
            (head.as_slice(), tail.as_slice()),
            "back to the old table"
        );
        // A damaged primary is restored from the backup, byte for byte as written.
        let (mut h, mut t) = (new_head.clone(), new_tail.clone());
        h[512 + 40] ^= 1;
        assert!(mend(&mut h, &mut t, disk)
            .unwrap()
            .unwrap()
            .contains("restored it from the backup"));
        assert_eq!((h.as_slice(), t.as_slice()), (new_head.as_slice(), new_tail.as_slice()));
        // Sound tables are left alone; two damaged copies are refused.
        let (mut h, mut t) = (head.clone(), tail.clone());
        assert_eq!(mend(&mut h, &mut t, disk).unwrap(), None);
        h[1024] ^= 1;
        t[0] ^= 1;
        assert!(mend(&mut h, &mut t, disk).is_err());
    }

    #[test]
    fn layout_and_entry_bytes() {
        let disk = 4 << 20;
        let gpt = Gpt::new(Guid::NIL, disk, one_partition(2048, 4095)).unwrap();
        let [(h_off, head), (t_off, tail)] = gpt.render();
        assert_eq!(h_off, 0);
        assert_eq!(head.len(), 34 * 512);
        assert_eq!(t_off, disk - 33 * 512);
        assert_eq!(tail.len(), 33 * 512);
        assert_eq!(&head[510..512], &[0x55, 0xaa]);
        assert_eq!(head[446 + 4], 0xee);
        assert_eq!(&head[512..520], b"EFI PART");
        let e = &head[1024..1024 + 128];
        assert_eq!(&e[0..4], &[0xaf, 0x3d, 0xc6, 0x0f]);
        assert_eq!(&e[16..20], &[0x67, 0x45, 0x23, 0x01]);
        assert_eq!(&e[32..48], &[0, 8, 0, 0, 0, 0, 0, 0, 0xff, 0x0f, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&e[48..56], &[0, 0, 0, 0, 0, 0, 0, 0x10]);
        assert_eq!(&e[56..64], b"d\0a\0t\0a\0");
        // The backup header points back at the primary and at its own array.
        let bh = &tail[32 * 512..];
        assert_eq!(u64::from_le_bytes(bh[24..32].try_into().unwrap()), disk / 512 - 1);
        assert_eq!(u64::from_le_bytes(bh[32..40].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(bh[72..80].try_into().unwrap()), disk / 512 - 33);
        // Both headers carry a valid CRC.
        for h in [&head[512..1024], bh] {
            let mut copy = h[..92].to_vec();
            let stored = u32::from_le_bytes(copy[16..20].try_into().unwrap());
            copy[16..20].fill(0);
            assert_eq!(crc32fast::hash(&copy), stored);
        }
    }

    #[test]
    fn bad_tables_are_refused() {
        let disk = 4 << 20;
        assert!(matches!(
            Gpt::new(Guid::NIL, disk, one_partition(10, 100)),
            Err(GptError::OutOfRange { .. })
        ));
        assert!(matches!(
            Gpt::new(Guid::NIL, disk, one_partition(2048, disk / 512 - 2)),
            Err(GptError::OutOfRange { .. })
        ));
        let mut two = one_partition(2048, 4095);
        two.extend(one_partition(4095, 5000));
        assert!(matches!(Gpt::new(Guid::NIL, disk, two), Err(GptError::Overlap(..))));
        let mut long = one_partition(2048, 4095);
        long[0].name = "x".repeat(37);
        assert!(matches!(Gpt::new(Guid::NIL, disk, long), Err(GptError::NameTooLong(_))));
    }

    #[test]
    fn read_back_what_was_written() {
        let disk = 4 << 20;
        let gpt = Gpt::new(
            guid("11111111-2222-4333-8444-555555555555"),
            disk,
            one_partition(2048, 4095),
        )
        .unwrap();
        let [(_, head), (_, tail)] = gpt.render();
        let (g, parts) = read(&head, &tail, disk).unwrap();
        assert_eq!(g, gpt.disk_guid());
        assert_eq!(parts, gpt.partitions());
        let mut broken = head.clone();
        broken[1024 + 40] ^= 1;
        assert!(read(&broken, &tail, disk).is_err());
    }
}
