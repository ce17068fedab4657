//! Sizes as a definition writes them (`512M`, `1G`, `4096`).

use std::fmt;

use super::MIB;
use serde::Deserialize;

/// A size in bytes, written as an integer or a string with a unit: `"512M"`, `"1G"`,
/// `"1GiB"`, `"300MiB"`, `"4096"`. Units are binary (K = 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    /// Parse the string form.
    pub fn parse(s: &str) -> Result<Size, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if unit.starts_with('.') {
            return Err(format!("'{s}' is not a whole number; write e.g. \"1536M\" for 1.5G"));
        }
        let n: u64 = num.parse().map_err(|_| format!("'{s}' is not a size"))?;
        let mult = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            u => return Err(format!("unknown unit '{u}' in '{s}'")),
        };
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| format!("'{s}' is too large"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        let text = if b >= 1 << 30 && b % (1 << 30) == 0 {
            format!("{} GiB", b >> 30)
        } else if b >= MIB && b % MIB == 0 {
            format!("{} MiB", b >> 20)
        } else if b >= MIB {
            format!("{:.1} MiB", b as f64 / MIB as f64)
        } else if b >= 1024 && b % 1024 == 0 {
            format!("{} KiB", b >> 10)
        } else if b >= 1024 {
            format!("{:.1} KiB", b as f64 / 1024.0)
        } else {
            format!("{b} B")
        };
        // Honour width and alignment, so sizes line up in tables.
        f.pad(&text)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size: a whole number of bytes or a string like \"512M\"")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n)
                    .map(Size)
                    .map_err(|_| E::custom(format!("a size cannot be negative ({n})")))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Size, E> {
                Err(E::custom(format!(
                    "sizes are whole numbers, not {n}; write e.g. \"1536M\" for 1.5G"
                )))
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Size, E> {
                Err(E::custom(format!("{b} is not a size; write e.g. \"512M\"")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Size, E> {
                Size::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}
