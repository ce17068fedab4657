//! The SBOM every build writes (`sbom.spdx.json`), checked by a real SPDX validator
//! (`pyspdxtools` from PyPI's spdx-tools, installed by scripts/install-deps): Cairn's
//! binaries and a pinned kubelet are listed with their sha256; the file is signed in
//! `outputs.json` (a flipped byte fails `cairn verify`); hostile names and copyright files
//! still give a valid document. The Debian packages of the default image are checked
//! against its lock in tests/debian.rs.

mod common;

use std::fs;
use std::path::Path;

use cairn_mkimage::sbom::{self, copyright, Component, Image, Origin};
use common::*;

fn image(suite: Option<&str>) -> Image<'_> {
    Image {
        name: "node",
        version: "0.1.0",
        architecture: "x86-64",
        root_hash: "ab",
        epoch: 0,
        suite,
    }
}

fn package<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in the SBOM"))
}

#[test]
fn every_build_lists_its_components_valid_and_signed() {
    let f = Fixture::new();
    let kubelet = b"#!/bin/sh\necho pinned kubelet\n";
    fs::write(f.path("kubelet"), kubelet).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(kubelet))
    };
    f.write_definition(&format!("[kubelet]\npath = \"kubelet\"\nsha256 = \"{sha}\"\n"));
    let out = f.build_ok("out");
    let path = out.join("sbom.spdx.json");
    let (ok, said) = spdx_valid(&path);
    assert!(ok, "{said}");
    let doc: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    assert_eq!(
        doc["creationInfo"]["created"], "2023-11-14T22:13:20Z",
        "SOURCE_DATE_EPOCH"
    );
    let m = manifest(&out);
    let image = package(&doc, "test");
    assert_eq!(image["versionInfo"], "1.2.3");
    assert!(
        image["comment"]
            .as_str()
            .unwrap()
            .contains(m["root-hash"].as_str().unwrap()),
        "{image}"
    );
    let k = package(&doc, "kubelet");
    assert_eq!(k["checksums"][0]["checksumValue"], sha.as_str());
    assert_eq!(k["licenseDeclared"], "NOASSERTION");
    // Every package is contained by the image the document describes.
    let rels = doc["relationships"].as_array().unwrap();
    assert_eq!(rels.len(), doc["packages"].as_array().unwrap().len());
    assert!(rels.iter().any(|r| r["relationshipType"] == "DESCRIBES"));

    // Signed: cairn verify checks it; a flipped byte is a mismatch.
    let key = f.path("release.pub");
    let v = |dir: &Path| cairn().arg("verify").arg(dir).arg("--key").arg(&key).output().unwrap();
    let o = v(&out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let o = v(&out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("MISMATCH: sbom.spdx.json sha256"),
        "{err}"
    );
}

#[test]
fn hostile_names_and_copyright_files_still_give_a_valid_document() {
    let head = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n";
    let copyrights = [
        format!("{head}Files: *\nLicense: GPL-2+ with OpenSSL exception, or \"}}\u{0}\n"),
        format!("{head}Files: *\nLicense: ../../etc/passwd and\tLicenseRef-x or NOASSERTION\n"),
        format!("{head}Files: *\nLicense: {}\n", "A".repeat(100_000)),
        format!("{head}Files: *\nLicense: and , or , with\n"),
        format!("{head}Files: *\nLicense: MIT WITH\n"),
        "\u{feff}\u{0}binary".to_string(),
    ];
    let names = ["a\nb", "../x", "x\u{0}y", "ünïcödé", "plain"];
    let mut comps = Vec::new();
    for (i, c) in copyrights.iter().enumerate() {
        comps.push(Component {
            origin: Origin::Debian,
            name: names[i % names.len()].to_string() + &i.to_string(),
            version: Some(format!("1:2.3+{i}~rc\n\"")),
            architecture: Some("amd64\u{0}".into()),
            sha256: Some("00".repeat(32)),
            download: Some("http://example.invalid/a b\n".into()),
            license: copyright::declared(c.as_bytes()),
        });
    }
    let (bytes, summary) = sbom::document(&image(Some("bookworm")), &comps);
    assert_eq!(summary.debian, copyrights.len());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sbom.spdx.json");
    fs::write(&path, &bytes).unwrap();
    let (ok, said) = spdx_valid(&path);
    assert!(ok, "{said}\n{}", String::from_utf8_lossy(&bytes));
}

#[test]
fn the_validator_refuses_what_is_not_spdx() {
    // The check above can fail: an unknown license identifier is refused.
    let (bytes, _) = sbom::document(
        &image(None),
        &[Component {
            origin: Origin::Cairn,
            name: "cairn-node".into(),
            version: None,
            architecture: None,
            sha256: None,
            download: None,
            license: copyright::Declared::Expression {
                spdx: "Not-A-License-1.0".into(),
                refs: vec![],
            },
        }],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.spdx.json");
    fs::write(&path, bytes).unwrap();
    let (ok, said) = spdx_valid(&path);
    assert!(!ok, "{said}");
}
