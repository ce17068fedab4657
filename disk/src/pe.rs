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

/// How many bytes from the start of the file the headers and the section table take, as
/// the headers declare it (`e_lfanew`, the optional header's size, the number of sections),
/// once `head` holds the DOS header and the COFF header; `None` for what is not a PE image.
pub fn headers_len(head: &[u8]) -> Option<usize> {
    if head.get(0..2)? != b"MZ" {
        return None;
    }
    let pe = u32_at(head, 0x3c)? as usize;
    let coff = pe.checked_add(4)?;
    let n = u16_at(head, coff + 2)? as usize;
    let opt = u16_at(head, coff + 16)? as usize;
    coff.checked_add(20)?.checked_add(opt)?.checked_add(n * SECTION_HEADER)
}

/// The largest header area [`read_section`] reads.
pub const MAX_HEADERS: usize = 1 << 20;

/// Read section `name` of the PE image `f`: first as much of the headers as they declare
/// (up to [`MAX_HEADERS`]), then the section's bytes (up to `max` of them).
pub fn read_section(f: &std::fs::File, name: &str, max: u64) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let read = |len: usize| -> Option<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match f.read_at(&mut buf[got..], got as u64) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        buf.truncate(got);
        Some(buf)
    };
    let mut head = read(4096)?;
    // The DOS header names where the PE header is; read up to it, then the whole table.
    let pe = (u32_at(&head, 0x3c)? as usize).checked_add(24)?;
    if head.len() < pe && pe <= MAX_HEADERS {
        head = read(pe)?;
    }
    let need = headers_len(&head)?;
    if need > MAX_HEADERS {
        return None;
    }
    if head.len() < need {
        head = read(need)?;
    }
    let (off, len) = section_location(&head, name)?;
    if len > max {
        return None;
    }
    let mut data = vec![0u8; usize::try_from(len).ok()?];
    f.read_exact_at(&mut data, off).ok()?;
    Some(data)
}

/// Where section `name` lies in the file: `(offset, length)` from the headers alone, so a
/// caller can read just the headers and then that range of a large image. `head` must
/// hold the PE headers and the section table ([`headers_len`] bytes; [`read_section`] reads
/// exactly that much).
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

    /// A PE image whose headers start at `lfanew`, with `n` sections, the last `.cmdline`.
    fn image(lfanew: usize, n: usize, cmdline: &[u8]) -> Vec<u8> {
        let opt = 240;
        let table = lfanew + 24 + opt;
        let data = (table + n * SECTION_HEADER).div_ceil(512) * 512;
        let mut d = vec![0u8; data + cmdline.len()];
        d[0..2].copy_from_slice(b"MZ");
        d[0x3c..0x40].copy_from_slice(&(lfanew as u32).to_le_bytes());
        d[lfanew..lfanew + 4].copy_from_slice(b"PE\0\0");
        d[lfanew + 6..lfanew + 8].copy_from_slice(&(n as u16).to_le_bytes());
        d[lfanew + 20..lfanew + 22].copy_from_slice(&(opt as u16).to_le_bytes());
        for i in 0..n {
            let h = table + i * SECTION_HEADER;
            let name: &[u8] = if i + 1 == n { b".cmdline" } else { b".pad" };
            d[h..h + name.len()].copy_from_slice(name);
            if i + 1 == n {
                d[h + 8..h + 12].copy_from_slice(&(cmdline.len() as u32).to_le_bytes());
                d[h + 20..h + 24].copy_from_slice(&(data as u32).to_le_bytes());
            }
        }
        d[data..].copy_from_slice(cmdline);
        d
    }

    #[test]
    fn headers_past_the_first_page_are_read_as_declared() {
        let dir = tempfile::tempdir().unwrap();
        let line = b"roothash=abcd rd.shell=0";
        for (lfanew, n) in [(0x80, 4), (0x80, 120), (0x1800, 2)] {
            let img = image(lfanew, n, line);
            assert!(headers_len(&img).unwrap() <= img.len());
            let p = dir.path().join("x.efi");
            std::fs::write(&p, &img).unwrap();
            let f = std::fs::File::open(&p).unwrap();
            let got = read_section(&f, ".cmdline", 1 << 16).unwrap_or_else(|| panic!("{lfanew:#x} {n}"));
            assert_eq!(got, line);
            assert_eq!(cmdline_root_hash(&got).as_deref(), Some("abcd"));
            // What the first 4 KiB alone said: nothing, when the table lies beyond them.
            let first_page = section(&img[..img.len().min(4096)], ".cmdline").is_some();
            assert_eq!(first_page, headers_len(&img).unwrap() <= 4096, "{lfanew:#x} {n}");
        }
        // Over the limits: nothing, not a huge allocation.
        let img = image(0x80, 2, line);
        let p = dir.path().join("big.efi");
        std::fs::write(&p, &img).unwrap();
        assert!(read_section(&std::fs::File::open(&p).unwrap(), ".cmdline", 4).is_none());
        let mut huge = img.clone();
        huge[0x3c..0x40].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&p, &huge).unwrap();
        assert!(read_section(&std::fs::File::open(&p).unwrap(), ".cmdline", 1 << 16).is_none());
    }

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
