//! The image's software bill of materials: `sbom.spdx.json`, SPDX 2.3 JSON, written by
//! every build next to `disk.raw` and listed (size, sha256) in the signed `outputs.json`.
//!
//! What it lists: the image itself (the described package), every Debian package the lock
//! pins (version, architecture, the `.deb`'s sha256 and where the archive serves it, a
//! `pkg:deb` purl, the license its copyright file declares — see [`copyright`]), Cairn's
//! own binaries in the image (`cairn-node`, `cairn-keyserver`: version and sha256 as
//! installed) and the pinned kubelet when there is one. The image `CONTAINS` each.
//!
//! It is a function of the build's inputs only, so two builds give the same bytes: the
//! creation time is the build's `SOURCE_DATE_EPOCH`, the namespace is made from the image
//! name, version and root hash, and packages are sorted.
//!
//! What it does not claim: a license for a package whose copyright file is not
//! machine-readable (`NOASSERTION`, with the reason in the package comment), a concluded
//! license or copyright text for anything (`NOASSERTION`: Cairn does not review them),
//! the Rust crates compiled into Cairn's binaries (not yet recorded in them).

pub mod copyright;

use serde_json::{json, Value};

use copyright::Declared;

/// The SBOM's file name in a build directory.
pub const FILE: &str = "sbom.spdx.json";

/// What a component is, for its SPDX purpose and identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// A Debian binary package (`.deb`) from the lock.
    Debian,
    /// A binary Cairn builds and puts in the image.
    Cairn,
    /// A pinned artifact from the definition (the kubelet).
    Artifact,
}

/// One component of the image.
#[derive(Debug, Clone)]
pub struct Component {
    /// Where it comes from.
    pub origin: Origin,
    /// Package or binary name.
    pub name: String,
    /// Its version, when known.
    pub version: Option<String>,
    /// Architecture (`amd64`, `all`), for Debian packages.
    pub architecture: Option<String>,
    /// sha256 (hex) of the package file or binary.
    pub sha256: Option<String>,
    /// Where it can be downloaded, when it has such a place.
    pub download: Option<String>,
    /// Its declared license.
    pub license: Declared,
}

/// The image the SBOM describes.
#[derive(Debug, Clone)]
pub struct Image<'a> {
    /// Image name.
    pub name: &'a str,
    /// Release version.
    pub version: &'a str,
    /// Architecture.
    pub architecture: &'a str,
    /// The dm-verity root hash: names exactly this root.
    pub root_hash: &'a str,
    /// `SOURCE_DATE_EPOCH` of the build.
    pub epoch: u64,
    /// The Debian suite, for purls (`bookworm`).
    pub suite: Option<&'a str>,
}

/// Counts for the build log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Debian packages listed.
    pub debian: usize,
    /// Of them, with a license read from their copyright file.
    pub debian_licensed: usize,
    /// Other components (Cairn's binaries, the kubelet).
    pub other: usize,
}

/// An SPDX identifier part: `[A-Za-z0-9.-]`, other bytes as `.XX` upper-case hex
/// (Debian names are lower case, so an escape never equals a plain name).
fn id_part(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!(".{b:02X}"));
        }
    }
    out
}

/// Percent-encoding for a purl segment: everything but unreserved characters.
fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn spdx_id(c: &Component) -> String {
    let origin = match c.origin {
        Origin::Debian => "deb",
        Origin::Cairn => "cairn",
        Origin::Artifact => "artifact",
    };
    match &c.architecture {
        Some(a) => format!("SPDXRef-{origin}-{}-{}", id_part(&c.name), id_part(a)),
        None => format!("SPDXRef-{origin}-{}", id_part(&c.name)),
    }
}

/// The SPDX 2.3 JSON document for `image` and its `components`, with a final newline,
/// and its counts.
pub fn document(image: &Image, components: &[Component]) -> (Vec<u8>, Summary) {
    let mut components: Vec<&Component> = components.iter().collect();
    components.sort_by(|a, b| {
        (a.origin, &a.name, &a.architecture, &a.version).cmp(&(b.origin, &b.name, &b.architecture, &b.version))
    });
    components.dedup_by(|a, b| spdx_id(a) == spdx_id(b));
    let mut summary = Summary::default();
    let mut refs: Vec<(String, String)> = Vec::new();
    let image_id = format!("SPDXRef-image-{}", id_part(image.name));
    let mut packages = vec![json!({
        "SPDXID": image_id,
        "name": image.name,
        "versionInfo": image.version,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "supplier": "NOASSERTION",
        "comment": format!(
            "Cairn image for {}, dm-verity root hash {}; its disk image is described and signed by manifest.json",
            image.architecture, image.root_hash
        ),
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];
    for c in components {
        let id = spdx_id(c);
        let mut p = serde_json::Map::new();
        p.insert("SPDXID".into(), json!(id));
        p.insert("name".into(), json!(c.name));
        if let Some(v) = &c.version {
            p.insert("versionInfo".into(), json!(v));
        }
        p.insert(
            "downloadLocation".into(),
            json!(c.download.as_deref().unwrap_or("NOASSERTION")),
        );
        p.insert("filesAnalyzed".into(), json!(false));
        if let Some(sha) = &c.sha256 {
            p.insert(
                "checksums".into(),
                json!([{ "algorithm": "SHA256", "checksumValue": sha }]),
            );
        }
        p.insert("licenseConcluded".into(), json!("NOASSERTION"));
        p.insert("copyrightText".into(), json!("NOASSERTION"));
        match &c.license {
            Declared::Expression { spdx, refs: r } => {
                p.insert("licenseDeclared".into(), json!(spdx));
                for r in r {
                    if !refs.iter().any(|(id, _)| *id == r.0) {
                        refs.push(r.clone());
                    }
                }
                if c.origin == Origin::Debian {
                    summary.debian_licensed += 1;
                }
            }
            Declared::NoAssertion(why) => {
                p.insert("licenseDeclared".into(), json!("NOASSERTION"));
                p.insert("comment".into(), json!(format!("license not declared here: {why}")));
            }
        }
        let purpose = match c.origin {
            Origin::Debian => {
                summary.debian += 1;
                p.insert("supplier".into(), json!("Organization: Debian"));
                let mut purl = format!(
                    "pkg:deb/debian/{}@{}",
                    pct(&c.name),
                    pct(c.version.as_deref().unwrap_or_default())
                );
                let mut q = Vec::new();
                if let Some(a) = &c.architecture {
                    q.push(format!("arch={}", pct(a)));
                }
                if let Some(s) = image.suite {
                    q.push(format!("distro=debian-{}", pct(s)));
                }
                if !q.is_empty() {
                    purl = format!("{purl}?{}", q.join("&"));
                }
                p.insert(
                    "externalRefs".into(),
                    json!([{
                        "referenceCategory": "PACKAGE-MANAGER",
                        "referenceType": "purl",
                        "referenceLocator": purl,
                    }]),
                );
                "INSTALL"
            }
            Origin::Cairn => {
                summary.other += 1;
                p.insert("supplier".into(), json!("Organization: Cairn"));
                "APPLICATION"
            }
            Origin::Artifact => {
                summary.other += 1;
                p.insert("supplier".into(), json!("NOASSERTION"));
                "APPLICATION"
            }
        };
        p.insert("primaryPackagePurpose".into(), json!(purpose));
        packages.push(Value::Object(p));
        relationships.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    refs.sort();
    let extracted: Vec<Value> = refs
        .iter()
        .map(|(id, name)| {
            json!({
                "licenseId": id,
                "name": name,
                "extractedText": format!(
                    "The license Debian's machine-readable copyright files call \"{name}\"; \
                     its text is in /usr/share/doc/PACKAGE/copyright of each package that names it."
                ),
            })
        })
        .collect();
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}-{}", image.name, image.version),
        "documentNamespace": format!(
            "https://cairn.invalid/spdx/{}-{}-{}",
            pct(image.name),
            pct(image.version),
            pct(image.root_hash)
        ),
        "creationInfo": {
            "created": cairn_signing::time::format_utc(image.epoch),
            "creators": [format!("Tool: cairn-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": relationships,
    });
    if !extracted.is_empty() {
        doc["hasExtractedLicensingInfos"] = Value::Array(extracted);
    }
    let mut bytes = serde_json::to_vec_pretty(&doc).expect("the SBOM always serializes");
    bytes.push(b'\n');
    (bytes, summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deb(name: &str, version: &str, license: Declared) -> Component {
        Component {
            origin: Origin::Debian,
            name: name.into(),
            version: Some(version.into()),
            architecture: Some("amd64".into()),
            sha256: Some("ab".repeat(32)),
            download: Some(format!("http://deb.debian.org/debian/pool/main/x/{name}.deb")),
            license,
        }
    }

    fn image() -> Image<'static> {
        Image {
            name: "node",
            version: "0.1.0",
            architecture: "x86-64",
            root_hash: "cd",
            epoch: 315_532_800,
            suite: Some("bookworm"),
        }
    }

    #[test]
    fn identifiers_are_unique_and_in_the_spdx_alphabet() {
        let comps = [
            deb("libstdc++6", "12.2.0-14", Declared::NoAssertion("x")),
            deb("libstdc.2B.2B6", "1", Declared::NoAssertion("x")),
            deb("zstd", "1.5.4+dfsg2-5", Declared::NoAssertion("x")),
        ];
        let (bytes, s) = document(&image(), &comps);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let ids: Vec<&str> = v["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["SPDXID"].as_str().unwrap())
            .collect();
        let mut uniq = ids.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), ids.len(), "{ids:?}");
        for id in ids {
            let rest = id.strip_prefix("SPDXRef-").unwrap();
            assert!(
                rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'),
                "{id}"
            );
        }
        assert_eq!(s.debian, 3);
        assert_eq!(s.debian_licensed, 0);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains("pkg:deb/debian/zstd@1.5.4%2Bdfsg2-5?arch=amd64&distro=debian-bookworm"),
            "{text}"
        );
        assert!(text.contains("\"created\": \"1980-01-01T00:00:00Z\""), "{text}");
    }

    #[test]
    fn the_same_inputs_in_any_order_give_the_same_bytes() {
        let mit = || Declared::Expression {
            spdx: "MIT".into(),
            refs: vec![],
        };
        let a = [deb("a", "1", mit()), deb("b", "2", mit())];
        let b = [deb("b", "2", mit()), deb("a", "1", mit())];
        assert_eq!(document(&image(), &a).0, document(&image(), &b).0);
    }
}
