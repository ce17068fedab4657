//! `disk.raw.bmap`: the disk image's block map in bmap format 2.0, as `bmaptool copy`
//! reads it (yoctoproject/bmaptool, `BmapCopy.py`).
//!
//! The map is not taken from how the file happens to be stored (FIEMAP, holes) but from
//! the manifest's data ranges (`cairn_disk::extents`): what the bytes are, so the bmap of
//! two byte-identical images is byte-identical, and the sha256 of each range is the one
//! the signed manifest already carries.
//!
//! The format, element by element under `<bmap version="2.0">`: `ImageSize` (bytes),
//! `BlockSize` (4096), `BlocksCount` (the image's blocks, rounded up), `MappedBlocksCount`,
//! `ChecksumType` (`sha256`), `BmapFileChecksum` (the sha256 of the whole file with this
//! value written as 64 ASCII zeros), and `BlockMap` with one `Range` per data range:
//! inclusive first and last block numbers and the `chksum` of exactly those bytes.

use sha2::{Digest, Sha256};

use cairn_disk::extents::BLOCK;

/// One range of the image that holds data, with the sha256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// Byte offset; a multiple of [`BLOCK`].
    pub offset: u64,
    /// Length in bytes; a multiple of [`BLOCK`] unless the range ends the image.
    pub size: u64,
    /// sha256 of the bytes (hex).
    pub sha256: String,
}

/// Why a map cannot be written as a bmap.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bmap: {0}")]
pub struct BmapError(String);

/// The bmap file for an image of `image_size` bytes whose data is `ranges` (in order, not
/// overlapping; everything else zero).
pub fn render(image_size: u64, ranges: &[Range]) -> Result<String, BmapError> {
    let blocks = image_size.div_ceil(BLOCK);
    let mut mapped = 0u64;
    let mut lines = String::new();
    let mut next_free = 0u64;
    for r in ranges {
        let end = r.offset.checked_add(r.size).filter(|&e| e <= image_size);
        let Some(end) = end else {
            return Err(BmapError(format!(
                "range {}+{} runs past the {image_size}-byte image",
                r.offset, r.size
            )));
        };
        if r.size == 0 || r.offset % BLOCK != 0 || (r.size % BLOCK != 0 && end != image_size) {
            return Err(BmapError(format!(
                "range {}+{} is not made of whole {BLOCK}-byte blocks",
                r.offset, r.size
            )));
        }
        if r.offset < next_free {
            return Err(BmapError(format!(
                "range {}+{} overlaps the one before",
                r.offset, r.size
            )));
        }
        if r.sha256.len() != 64
            || !r
                .sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(BmapError(format!(
                "range {}+{}: {:?} is not a sha256",
                r.offset, r.size, r.sha256
            )));
        }
        next_free = end;
        let (first, last) = (r.offset / BLOCK, end.div_ceil(BLOCK) - 1);
        mapped += last - first + 1;
        let span = if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        };
        lines.push_str(&format!("        <Range chksum=\"{}\"> {span} </Range>\n", r.sha256));
    }
    let percent = if blocks == 0 {
        0.0
    } else {
        mapped as f64 * 100.0 / blocks as f64
    };
    let zeros = "0".repeat(64);
    let text = format!(
        "<?xml version=\"1.0\" ?>\n\
         <!-- A block map (bmap) of a Cairn disk image, for `bmaptool copy`: only the listed\n     \
         ranges hold data ({mapped} of {blocks} blocks, {percent:.1}%); every other byte is zero. -->\n\
         <bmap version=\"2.0\">\n    \
         <ImageSize> {image_size} </ImageSize>\n    \
         <BlockSize> {BLOCK} </BlockSize>\n    \
         <BlocksCount> {blocks} </BlocksCount>\n    \
         <MappedBlocksCount> {mapped} </MappedBlocksCount>\n    \
         <ChecksumType> sha256 </ChecksumType>\n    \
         <BmapFileChecksum> {zeros} </BmapFileChecksum>\n    \
         <BlockMap>\n{lines}    </BlockMap>\n\
         </bmap>\n"
    );
    let sum = hex::encode(Sha256::digest(text.as_bytes()));
    // The zeros appear once: every other 64-digit value in the file is a range's chksum
    // attribute, which sits in quotes, not between spaces.
    Ok(text.replacen(&format!(" {zeros} "), &format!(" {sum} "), 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(offset: u64, size: u64) -> Range {
        Range {
            offset,
            size,
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn blocks_counts_and_the_file_checksum() {
        let text = render(
            64 << 20,
            &[range(0, 4096), range(1 << 20, 5 * 4096), range((64 << 20) - 4096, 4096)],
        )
        .unwrap();
        assert!(text.contains("<ImageSize> 67108864 </ImageSize>"), "{text}");
        assert!(text.contains("<BlocksCount> 16384 </BlocksCount>"), "{text}");
        assert!(text.contains("<MappedBlocksCount> 7 </MappedBlocksCount>"), "{text}");
        assert!(
            text.contains("> 0 </Range>") && text.contains("> 256-260 </Range>"),
            "{text}"
        );
        assert!(text.contains("> 16383 </Range>"), "{text}");
        // The checksum is over the file with its own value zeroed, as bmaptool checks it.
        let start = text.find("<BmapFileChecksum> ").unwrap() + "<BmapFileChecksum> ".len();
        let sum = &text[start..start + 64];
        let zeroed = text.replacen(sum, &"0".repeat(64), 1);
        assert_eq!(hex::encode(Sha256::digest(zeroed.as_bytes())), sum);
        // Byte-identical for the same map.
        assert_eq!(
            text,
            render(
                64 << 20,
                &[range(0, 4096), range(1 << 20, 5 * 4096), range((64 << 20) - 4096, 4096)]
            )
            .unwrap()
        );
    }

    #[test]
    fn a_short_last_range_ends_the_image() {
        let text = render(10_000, &[range(8192, 10_000 - 8192)]).unwrap();
        assert!(
            text.contains("<BlocksCount> 3 </BlocksCount>") && text.contains("> 2 </Range>"),
            "{text}"
        );
    }

    #[test]
    fn maps_that_are_not_block_maps_are_refused() {
        for (bad, says) in [
            (vec![range(100, 4096)], "whole"),
            (vec![range(0, 100)], "whole"),
            (vec![range(0, 0)], "whole"),
            (vec![range(60 << 20, 8 << 20)], "runs past"),
            (vec![range(u64::MAX - 4095, 4096)], "runs past"),
            (vec![range(8192, 8192), range(4096, 4096)], "overlaps"),
            (
                vec![Range {
                    sha256: "</Range><x>".into(),
                    ..range(0, 4096)
                }],
                "not a sha256",
            ),
        ] {
            let err = render(64 << 20, &bad).unwrap_err();
            assert!(err.0.contains(says), "{bad:?}: {err}");
        }
    }
}
