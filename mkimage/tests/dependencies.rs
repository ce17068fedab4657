//! What the workspace links must not carry crates with known advisories or that their
//! authors gave up. The RustSec advisory database cannot be fetched from where Cairn is
//! built and tested (only package registries are reachable), so `cargo audit` and
//! `cargo deny` cannot run in the test command; this keeps out, by name, what the last
//! review found, and says what to run where the database is reachable.

use std::path::Path;

/// Crate name, and why it must not come back.
const DENIED: &[(&str, &str)] = &[
    (
        "rustls-pemfile",
        "RUSTSEC-2025-0134 (unmaintained); ureq 3 parses PEM through rustls-pki-types",
    ),
    ("serde_yaml", "deprecated by its author; use serde_yaml_ng"),
    (
        "fatfs",
        "writes directories fsck.fat rejects (see DESIGN.md); Cairn writes FAT itself",
    ),
    (
        "squashfs-ng",
        "not reproducible, unmaintained dependencies with advisories",
    ),
];

#[test]
fn the_lockfile_carries_no_crate_known_to_be_bad() {
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock")).unwrap();
    let names: Vec<&str> = lock
        .lines()
        .filter_map(|l| l.strip_prefix("name = \"").and_then(|r| r.strip_suffix('"')))
        .collect();
    assert!(names.len() > 50, "Cargo.lock lists {} packages", names.len());
    let found: Vec<String> = DENIED
        .iter()
        .filter(|(n, _)| names.contains(n))
        .map(|(n, why)| format!("{n}: {why}"))
        .collect();
    assert!(
        found.is_empty(),
        "Cargo.lock carries denied crates:\n{}\n(where the RustSec database is reachable, also run `cargo deny check advisories`)",
        found.join("\n")
    );
}
