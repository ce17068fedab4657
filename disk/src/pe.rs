//! Reading sections of a PE32+ image, enough to take a UKI's `.cmdline` or `.osrel`.
//!
//! | where | field |
//! |---|---|
//! | 0x3c | e_lfanew (u32): offset of `PE\0\0` |
//! | PE+4 | COFF header: number of sections (u16) at +2, optional header size (u16) at +16 |
//! | PE+24+optional header size | section table, 40 bytes each: name (8), virtual size (u32) at +8, raw pointer (u32) at +20 |
//!
//! A section's bytes are its virtual size from its raw pointer; sections the stub adds
//! (`.cmdline`, `.osrel`) are fully backed by file data.

/// Bytes per section table entry.
pub const SECTION_HEADER: usize = 40;

fn u16_at(d: &[u8], o: usize) -> Option<u16> {
    d.get(o..o.checked_add(2)?).map(|b| u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(d: &[u8], o: usize) -> Option<u32> {
    d.get(o..o.checked_add(4)?)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Where section `name` lies in the file: `(offset, length)` from the headers alone, so a
/// caller can read just the headers and then that range of a large image. `head` must
/// hold at least the PE headers and section table (the first 4 KiB do for a UKI).
pub fn section_location(head: &[u8], name: &str) -> Option<(u64, u64)> {
    if head.get(0..2)? != b"MZ" {
        return None;
    }
    let pe = u32_at(head, 0x3c)? as usize;
    if head.get(pe..pe.checked_add(4)?)? != b"PE\0\0" {
        return None;
    }
    let coff = pe + 4;
    let n = u16_at(head, coff + 2)? as usize;
    let table = coff + 20 + u16_at(head, coff + 16)? as usize;
    (0..n).find_map(|i| {
        let h = table + i * SECTION_HEADER;
        let raw = head.get(h..h + 8)?;
        if String::from_utf8_lossy(raw).trim_end_matches('\0') != name {
            return None;
        }
        Some((u32_at(head, h + 20)? as u64, u32_at(head, h + 8)? as u64))
    })
}

/// The bytes of section `name` in a PE image, if the image has it and holds its data.
pub fn section<'a>(image: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let (ptr, len) = section_location(image, name)?;
    image.get(usize::try_from(ptr).ok()?..usize::try_from(ptr.checked_add(len)?).ok()?)
}

/// The `roothash=` value of a kernel command line (a UKI's `.cmdline` section).
pub fn cmdline_root_hash(cmdline: &[u8]) -> Option<String> {
    String::from_utf8_lossy(cmdline)
        .trim_end_matches('\0')
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("roothash="))
        .map(str::to_string)
}

/// The `roothash=` value on a UKI's command line, if it has one.
pub fn uki_root_hash(image: &[u8]) -> Option<String> {
    cmdline_root_hash(section(image, ".cmdline")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_truncation_give_none() {
        assert_eq!(section(b"", ".cmdline"), None);
        assert_eq!(section(b"MZ", ".cmdline"), None);
        let mut d = vec![0u8; 0x200];
        d[0..2].copy_from_slice(b"MZ");
        d[0x3c..0x40].copy_from_slice(&0x1f0u32.to_le_bytes());
        assert_eq!(section(&d, ".cmdline"), None);
        d[0x3c..0x40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(section(&d, ".cmdline"), None);
    }
}
