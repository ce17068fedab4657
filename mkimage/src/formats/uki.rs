//! Unified kernel images: systemd's EFI stub with the kernel, initrd, command line and
//! os-release added as PE sections (what `ukify` or `objcopy --add-section` produce).
//!
//! The stub is parsed just enough to append sections:
//!
//! | where | field | use |
//! |---|---|---|
//! | 0x00 | `MZ` | DOS header magic |
//! | 0x3c | e_lfanew (u32) | offset of `PE\0\0` |
//! | PE+4 | COFF header (20 bytes) | machine `0x8664` at +0, number of sections at +2, time stamp at +4 (kept: 0 in Debian's stub), symbol table pointer/count at +8/+12 (cleared: the table is dropped) |
//! | PE+24 | optional header | magic `0x20b` (PE32+) at +0, section alignment at +32, file alignment at +36, size of image at +56, size of headers at +60, checksum at +64 |
//! | after it | section table, 40 bytes each | name (8), virtual size, virtual address, raw size, raw pointer, …, characteristics at +36 |
//!
//! New sections go after the stub's last one in this order: `.osrel` and `.cmdline`
//! (64 KiB aligned), `.linux` (2 MiB aligned), `.initrd` (2 MiB aligned), each marked
//! initialized read-only data. The PE checksum is recomputed, so the output depends only
//! on the inputs.

/// Problems building a UKI.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UkiError {
    /// The stub is not a PE32+ x86-64 image.
    #[error("the EFI stub is not a PE32+ x86-64 image: {0}")]
    NotPe(&'static str),
    /// The stub already has one of the sections Cairn adds.
    #[error("the EFI stub already has a {0} section; pass systemd's plain linuxx64.efi.stub")]
    HasSection(String),
    /// No room for four more section headers.
    #[error("the EFI stub has no room in its headers for more sections")]
    NoRoom,
}

const SECTION_HEADER: usize = 40;
const DATA_RO: u32 = 0x4000_0040; // IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ

fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

fn u16_at(d: &[u8], o: usize) -> Result<u16, UkiError> {
    d.get(o..o + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(UkiError::NotPe("truncated"))
}

fn u32_at(d: &[u8], o: usize) -> Result<u32, UkiError> {
    d.get(o..o + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(UkiError::NotPe("truncated"))
}

fn put_u32(d: &mut [u8], o: usize, v: u32) {
    d[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

/// The PE image checksum: 16-bit one's-complement-style sum of the file with the
/// checksum field skipped, plus the file length.
pub fn pe_checksum(data: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in data.chunks(2).enumerate() {
        let at = i * 2;
        if at == checksum_offset || at == checksum_offset + 2 {
            continue;
        }
        let w = if chunk.len() == 2 {
            u16::from_le_bytes([chunk[0], chunk[1]])
        } else {
            chunk[0] as u16
        };
        sum += w as u64;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(data.len() as u32)
}

/// The parts of a UKI.
pub struct UkiParts<'a> {
    /// systemd's `linuxx64.efi.stub`.
    pub stub: &'a [u8],
    /// os-release text.
    pub osrel: &'a [u8],
    /// Kernel command line.
    pub cmdline: &'a [u8],
    /// The kernel (bzImage).
    pub linux: &'a [u8],
    /// The initrd (cpio, possibly compressed).
    pub initrd: &'a [u8],
}

/// A section as placed in the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedSection {
    /// Section name.
    pub name: &'static str,
    /// Its virtual address (RVA).
    pub vma: u64,
    /// Its file offset.
    pub file_offset: u64,
    /// Its length.
    pub size: u64,
}

/// Build the UKI. Pure: returns the bytes and where each added section went.
pub fn build(parts: &UkiParts) -> Result<(Vec<u8>, Vec<PlacedSection>), UkiError> {
    let stub = parts.stub;
    if stub.get(0..2) != Some(b"MZ") {
        return Err(UkiError::NotPe("no MZ header"));
    }
    let pe = u32_at(stub, 0x3c)? as usize;
    if stub.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(UkiError::NotPe("no PE signature"));
    }
    let coff = pe + 4;
    if u16_at(stub, coff)? != 0x8664 {
        return Err(UkiError::NotPe("machine is not x86-64"));
    }
    let nsections = u16_at(stub, coff + 2)? as usize;
    let opt_size = u16_at(stub, coff + 16)? as usize;
    let opt = coff + 20;
    if u16_at(stub, opt)? != 0x20b {
        return Err(UkiError::NotPe("not PE32+"));
    }
    let section_align = u32_at(stub, opt + 32)? as u64;
    let file_align = u32_at(stub, opt + 36)? as u64;
    let size_of_headers = u32_at(stub, opt + 60)? as usize;
    if section_align == 0 || file_align == 0 {
        return Err(UkiError::NotPe("zero alignment"));
    }
    let table = opt + opt_size;

    // Where the existing sections end, in memory and in the file.
    let mut vm_end = 0u64;
    let mut raw_end = size_of_headers as u64;
    let mut lowest_raw = u64::MAX;
    for i in 0..nsections {
        let h = table + i * SECTION_HEADER;
        let name_bytes = stub.get(h..h + 8).ok_or(UkiError::NotPe("truncated section table"))?;
        let name = String::from_utf8_lossy(name_bytes).trim_end_matches('\0').to_string();
        if [".osrel", ".cmdline", ".linux", ".initrd"].contains(&name.as_str()) {
            return Err(UkiError::HasSection(name));
        }
        let (vsize, vaddr) = (u32_at(stub, h + 8)? as u64, u32_at(stub, h + 12)? as u64);
        let (rsize, rptr) = (u32_at(stub, h + 16)? as u64, u32_at(stub, h + 20)? as u64);
        vm_end = vm_end.max(vaddr + vsize.max(rsize));
        if rsize > 0 {
            raw_end = raw_end.max(rptr + rsize);
            lowest_raw = lowest_raw.min(rptr);
        }
    }
    let new_table_end = table + (nsections + 4) * SECTION_HEADER;
    if new_table_end > size_of_headers || (new_table_end as u64) > lowest_raw {
        return Err(UkiError::NoRoom);
    }
    if raw_end as usize > stub.len() {
        return Err(UkiError::NotPe("section data beyond end of file"));
    }

    // Keep headers and section data; drop the COFF symbol table that trails them.
    let mut out = stub[..raw_end as usize].to_vec();
    put_u32(&mut out, coff + 8, 0);
    put_u32(&mut out, coff + 12, 0);

    let adds: [(&'static str, &[u8], u64); 4] = [
        (".osrel", parts.osrel, 0x1_0000),
        (".cmdline", parts.cmdline, 0x1_0000),
        (".linux", parts.linux, 0x20_0000),
        (".initrd", parts.initrd, 0x20_0000),
    ];
    let mut placed = Vec::new();
    let mut vma = vm_end;
    for (i, (name, data, vm_align)) in adds.iter().enumerate() {
        vma = align(vma, (*vm_align).max(section_align));
        let file_offset = align(out.len() as u64, file_align);
        out.resize(file_offset as usize, 0);
        out.extend_from_slice(data);
        out.resize(align(out.len() as u64, file_align) as usize, 0);
        let raw_size = align(data.len() as u64, file_align);

        let h = table + (nsections + i) * SECTION_HEADER;
        out[h..h + SECTION_HEADER].fill(0);
        out[h..h + name.len()].copy_from_slice(name.as_bytes());
        put_u32(&mut out, h + 8, data.len() as u32);
        put_u32(&mut out, h + 12, vma as u32);
        put_u32(&mut out, h + 16, raw_size as u32);
        put_u32(&mut out, h + 20, file_offset as u32);
        put_u32(&mut out, h + 36, DATA_RO);
        placed.push(PlacedSection {
            name,
            vma,
            file_offset,
            size: data.len() as u64,
        });
        vma += data.len() as u64;
    }
    out[coff + 2..coff + 4].copy_from_slice(&((nsections + 4) as u16).to_le_bytes());
    put_u32(&mut out, opt + 56, align(vma, section_align) as u32);
    put_u32(&mut out, opt + 64, 0);
    let sum = pe_checksum(&out, opt + 64);
    put_u32(&mut out, opt + 64, sum);
    Ok((out, placed))
}

/// The bytes of section `name` in a PE image, if present (used by `cairn verify`).
pub use cairn_disk::pe::section;

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ with one section, enough for the parser.
    fn tiny_stub() -> Vec<u8> {
        let mut d = vec![0u8; 0x600];
        d[0..2].copy_from_slice(b"MZ");
        put_u32(&mut d, 0x3c, 0x80);
        d[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        d[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        d[coff + 2..coff + 4].copy_from_slice(&1u16.to_le_bytes());
        d[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        let opt = coff + 20;
        d[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        put_u32(&mut d, opt + 32, 0x200);
        put_u32(&mut d, opt + 36, 0x200);
        put_u32(&mut d, opt + 56, 0x2000);
        put_u32(&mut d, opt + 60, 0x400);
        let h = opt + 240;
        d[h..h + 5].copy_from_slice(b".text");
        put_u32(&mut d, h + 8, 0x10);
        put_u32(&mut d, h + 12, 0x1000);
        put_u32(&mut d, h + 16, 0x200);
        put_u32(&mut d, h + 20, 0x400);
        d
    }

    #[test]
    fn sections_are_appended_in_order() {
        let stub = tiny_stub();
        let parts = UkiParts {
            stub: &stub,
            osrel: b"ID=cairn\n",
            cmdline: b"roothash=00",
            linux: &[1u8; 5000],
            initrd: &[2u8; 3000],
        };
        let (out, placed) = build(&parts).unwrap();
        let names: Vec<_> = placed.iter().map(|p| p.name).collect();
        assert_eq!(names, [".osrel", ".cmdline", ".linux", ".initrd"]);
        assert_eq!(placed[0].vma, 0x10000);
        assert_eq!(placed[1].vma, 0x20000);
        assert_eq!(placed[2].vma, 0x200000);
        assert_eq!(placed[3].vma, 0x400000);
        for p in &placed {
            assert_eq!(p.file_offset % 0x200, 0);
        }
        let l = &placed[2];
        assert_eq!(
            &out[l.file_offset as usize..(l.file_offset + l.size) as usize],
            &[1u8; 5000][..]
        );
        assert_eq!(u16_at(&out, 0x86).unwrap(), 5);
        // size of image covers the initrd
        assert_eq!(u32_at(&out, 0x98 + 56).unwrap(), 0x400000 + 3072);
        // checksum is consistent
        assert_eq!(u32_at(&out, 0x98 + 64).unwrap(), pe_checksum(&out, 0x98 + 64));
        // the same inputs give the same bytes
        assert_eq!(build(&parts).unwrap().0, out);
        assert_eq!(section(&out, ".cmdline"), Some(&b"roothash=00"[..]));
        assert_eq!(section(&out, ".nope"), None);
    }

    #[test]
    fn bad_stubs_are_refused() {
        let parts = |stub| UkiParts {
            stub,
            osrel: b"",
            cmdline: b"",
            linux: b"k",
            initrd: b"i",
        };
        assert!(matches!(build(&parts(b"ELF")), Err(UkiError::NotPe(_))));
        let mut stub = tiny_stub();
        stub[0x98 + 240..0x98 + 246].copy_from_slice(b".linux");
        assert_eq!(build(&parts(&stub)).unwrap_err(), UkiError::HasSection(".linux".into()));
        let mut stub = tiny_stub();
        put_u32(&mut stub, 0x98 + 60, 0x200); // headers too small for 4 more sections
        assert_eq!(build(&parts(&stub)).unwrap_err(), UkiError::NoRoom);
    }
}
