//! Resolving a package request to exact packages with apt, without installing anything.
//!
//! apt runs on a private directory (its own `APT_CONFIG`, sources, preferences, an empty dpkg
//! status), so nothing of the host's apt configuration or state leaks in. `apt-get update`
//! fetches the suite's indexes and checks their signatures with Debian's archive keyring; then
//! `apt-get install --print-uris` resolves what mmdebstrap's `minbase` variant installs — every
//! `Essential: yes` and `Priority: required` package, apt, and the request — with its
//! dependencies. The verified indexes give each package's version, size, sha256 and path.
//!
//! Re-resolving after a lock went stale passes the old lock as apt pins (priority 1001): every
//! version a mirror still serves stays, only what moved moves, as cargo does with Cargo.lock.
//! If the pinned versions no longer fit together, it resolves again without them.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::definition::DebianSpec;
use crate::ioerr::io_err;
use crate::packages::debian::DebianError;
use crate::packages::lock::{include_list, Archive, Lock, LockedPackage, Mirrors};

/// Debian's archive keyring (package debian-archive-keyring).
pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// What apt selects besides the request: mmdebstrap's `minbase`.
const BASE: &[&str] = &["?or(?essential,?priority(required))", "apt"];

/// apt preferences that pin every locked package to its version.
pub fn render_pins(lock: &Lock) -> String {
    lock.package
        .iter()
        .map(|p| format!("Package: {}\nPin: version {}\nPin-Priority: 1001\n", p.name, p.version))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The private apt configuration rooted at `dir`.
fn render_apt_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "Dir \"{d}/\";\n\
         Dir::Etc \"{d}/etc/\";\n\
         Dir::Etc::SourceList \"{d}/etc/sources.list\";\n\
         Dir::Etc::SourceParts \"{d}/etc/sources.list.d/\";\n\
         Dir::Etc::Parts \"{d}/etc/apt.conf.d/\";\n\
         Dir::Etc::Preferences \"{d}/etc/preferences\";\n\
         Dir::Etc::PreferencesParts \"{d}/etc/preferences.d/\";\n\
         Dir::Etc::TrustedParts \"{d}/etc/trusted.gpg.d/\";\n\
         Dir::State \"{d}/state/\";\n\
         Dir::State::Lists \"{d}/state/lists/\";\n\
         Dir::State::Status \"{d}/status\";\n\
         Dir::Cache \"{d}/cache/\";\n\
         Dir::Log \"{d}/log/\";\n\
         APT::Architecture \"amd64\";\n\
         APT::Architectures \"amd64\";\n\
         APT::Install-Recommends \"false\";\n\
         APT::Sandbox::User \"root\";\n\
         Acquire::Languages \"none\";\n\
         Acquire::Retries \"3\";\n\
         Debug::NoLocking \"true\";\n"
    )
}

/// The three sources of a suite.
pub fn render_sources(spec: &DebianSpec, mirrors: &Mirrors) -> String {
    let c = spec.components.join(" ");
    let s = &spec.suite;
    format!(
        "deb [signed-by={KEYRING}] {main} {s} {c}\n\
         deb [signed-by={KEYRING}] {main} {s}-updates {c}\n\
         deb [signed-by={KEYRING}] {sec} {s}-security {c}\n",
        main = mirrors.main,
        sec = mirrors.security,
    )
}

/// Resolve `spec` against `mirrors` in the scratch directory `work` (which the caller
/// removes). `pins`: a previous lock whose versions should stay where they still can.
pub fn resolve(
    spec: &DebianSpec,
    mirrors: &Mirrors,
    pins: Option<&Lock>,
    work: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<LockedPackage>, DebianError> {
    if !Path::new(KEYRING).is_file() {
        return Err(DebianError::Tool(format!(
            "{KEYRING} is missing: apt-get install debian-archive-keyring"
        )));
    }
    let dir = work.join("apt");
    for sub in [
        "etc/apt.conf.d",
        "etc/preferences.d",
        "etc/sources.list.d",
        "etc/trusted.gpg.d",
        "state/lists/partial",
        "cache/archives/partial",
        "log",
    ] {
        let d = dir.join(sub);
        fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
    }
    let files = [
        ("apt.conf", render_apt_conf(&dir)),
        ("etc/sources.list", render_sources(spec, mirrors)),
        ("status", String::new()),
        ("etc/preferences", pins.map(render_pins).unwrap_or_default()),
    ];
    for (name, text) in &files {
        let p = dir.join(name);
        fs::write(&p, text).map_err(io_err("writing", &p))?;
    }
    let started = std::time::Instant::now();
    log(&format!(
        "resolve: reading the {} indexes from {} and {}",
        spec.suite, mirrors.main, mirrors.security
    ));
    let lines = apt(&dir, &["update", "--error-on=any"])?;
    if let Err(lines) = lines {
        return Err(classify(spec, mirrors, &lines));
    }
    let include = include_list(spec);
    let mut argv: Vec<&str> = vec!["install", "--print-uris", "--yes", "--quiet"];
    argv.extend(BASE);
    argv.extend(include.iter().map(String::as_str));
    let out = match apt(&dir, &argv)? {
        Ok(out) => out,
        Err(lines) if pins.is_some() && !is_missing_package(&lines) => {
            log("resolve: the locked versions no longer fit together; resolving every package afresh");
            fs::write(dir.join("etc/preferences"), "").map_err(io_err("writing", &dir))?;
            apt(&dir, &argv)?.map_err(|lines| classify(spec, mirrors, &lines))?
        }
        Err(lines) => return Err(classify(spec, mirrors, &lines)),
    };
    let index = read_indexes(&dir.join("state/lists"))?;
    let mut packages = Vec::new();
    for line in &out {
        let Some(rest) = line.strip_prefix('\'') else { continue };
        let Some((url, _)) = rest.split_once('\'') else {
            continue;
        };
        let (archive, path) = split_url(url, mirrors)
            .ok_or_else(|| DebianError::Tool(format!("apt offered {url}, which is under neither configured mirror")))?;
        let mut p = index
            .get(&path)
            .cloned()
            .ok_or_else(|| DebianError::Tool(format!("apt offered {url}, which no verified index lists")))?;
        p.archive = archive;
        packages.push(p);
    }
    if packages.is_empty() {
        return Err(DebianError::Tool(format!(
            "apt resolved no packages for {}:\n{}",
            spec.suite,
            out.join("\n")
        )));
    }
    packages.sort();
    packages.dedup_by(|a, b| a.name == b.name);
    log(&format!(
        "resolve: {} packages in {:.1}s",
        packages.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(packages)
}

/// Run apt-get with the private configuration; `Ok(Err(lines))` when it failed.
fn apt(dir: &Path, argv: &[&str]) -> Result<Result<Vec<String>, Vec<String>>, DebianError> {
    let o = Command::new("apt-get")
        .env("APT_CONFIG", dir.join("apt.conf"))
        .env("LC_ALL", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err("starting", "apt-get"))?;
    let mut lines: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect();
    lines.extend(String::from_utf8_lossy(&o.stderr).lines().map(str::to_string));
    Ok(if o.status.success() { Ok(lines) } else { Err(lines) })
}

fn is_missing_package(lines: &[String]) -> bool {
    lines
        .iter()
        .any(|l| l.contains("Unable to locate package") || l.contains("has no installation candidate"))
}

/// Turn apt's complaint into the error a user can act on.
pub fn classify(spec: &DebianSpec, mirrors: &Mirrors, lines: &[String]) -> DebianError {
    for l in lines {
        let name = l
            .split("Unable to locate package ")
            .nth(1)
            .map(|r| r.trim().to_string())
            .or_else(|| {
                l.contains("has no installation candidate")
                    .then(|| l.split("Package '").nth(1)?.split('\'').next().map(str::to_string))
                    .flatten()
            });
        if let Some(package) = name {
            return DebianError::NoSuchPackage {
                package,
                suite: spec.suite.clone(),
                components: spec.components.join(","),
                mirror: mirrors.main.clone(),
            };
        }
    }
    let unreachable = [
        "Could not resolve",
        "Temporary failure resolving",
        "Failed to fetch",
        "Unable to connect",
        "Connection refused",
        "Connection failed",
        "No route to host",
        "Could not connect",
    ];
    if let Some(l) = lines.iter().find(|l| unreachable.iter().any(|u| l.contains(u))) {
        let mirror = [&mirrors.security, &mirrors.main]
            .into_iter()
            .find(|m| l.contains(m.as_str()))
            .unwrap_or(&mirrors.main);
        return DebianError::MirrorUnreachable {
            mirror: mirror.clone(),
            detail: l.trim().to_string(),
        };
    }
    let start = lines.len().saturating_sub(15);
    DebianError::Tool(format!("apt-get failed:\n{}", lines[start..].join("\n")))
}

/// Which archive a URL apt offered lies under, and its path there (decoded).
fn split_url(url: &str, mirrors: &Mirrors) -> Option<(Archive, String)> {
    // The longer base first: one mirror's URL may be a prefix of the other's.
    let mut bases = [(Archive::Main, &mirrors.main), (Archive::Security, &mirrors.security)];
    bases.sort_by_key(|(_, b)| std::cmp::Reverse(b.len()));
    bases.iter().find_map(|(a, base)| {
        let rest = url.strip_prefix(base.as_str())?.strip_prefix('/')?;
        Some((*a, percent_decode(rest)?))
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Every package paragraph of the verified indexes in `lists`, by `Filename` (unique across
/// Debian's archives: the security archive keeps its files under `pool/updates/`). The archive
/// is set by the caller from the URL apt offered.
fn read_indexes(lists: &Path) -> Result<HashMap<String, LockedPackage>, DebianError> {
    let mut map = HashMap::new();
    let mut files: Vec<PathBuf> = fs::read_dir(lists)
        .map_err(io_err("listing", lists))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with("_Packages"))
        })
        .collect();
    files.sort();
    for f in files {
        let text = fs::read_to_string(&f).map_err(io_err("reading", &f))?;
        for para in text.split("\n\n") {
            if let Some(p) = parse_paragraph(para, Archive::Main) {
                map.entry(p.path.clone()).or_insert(p);
            }
        }
    }
    Ok(map)
}

/// A Packages paragraph as a locked package, when it has every field a lock needs.
fn parse_paragraph(para: &str, archive: Archive) -> Option<LockedPackage> {
    let mut f: HashMap<&str, &str> = HashMap::new();
    for l in para.lines() {
        if l.starts_with([' ', '\t']) {
            continue;
        }
        if let Some((k, v)) = l.split_once(':') {
            f.insert(k, v.trim());
        }
    }
    Some(LockedPackage {
        name: f.get("Package")?.to_string(),
        version: f.get("Version")?.to_string(),
        architecture: f.get("Architecture")?.to_string(),
        size: f.get("Size")?.parse().ok()?,
        sha256: f.get("SHA256")?.to_ascii_lowercase(),
        archive,
        path: f.get("Filename")?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_by_the_longest_mirror() {
        let m = Mirrors {
            main: "http://deb.debian.org/debian".into(),
            security: "http://deb.debian.org/debian-security".into(),
        };
        assert_eq!(
            split_url("http://deb.debian.org/debian-security/pool/updates/main/o/openssl/libssl3_3.0.17-1%7edeb12u3_amd64.deb", &m),
            Some((Archive::Security, "pool/updates/main/o/openssl/libssl3_3.0.17-1~deb12u3_amd64.deb".into()))
        );
        assert_eq!(
            split_url(
                "http://deb.debian.org/debian/pool/main/g/glibc/libc6_2.36-9%2bdeb12u14_amd64.deb",
                &m
            ),
            Some((
                Archive::Main,
                "pool/main/g/glibc/libc6_2.36-9+deb12u14_amd64.deb".into()
            ))
        );
        assert_eq!(split_url("http://elsewhere/pool/x.deb", &m), None);
    }

    #[test]
    fn paragraphs_need_every_field() {
        let para = "Package: adduser\nVersion: 3.134\nArchitecture: all\nDescription: add users\n more text\n\
                    Size: 1352\nSHA256: C24FE4EB8E60D8632D72ED104CCE7C92CFF200847C897DC8BA764B6C47B519E0\n\
                    Filename: pool/main/a/adduser/adduser_3.134_all.deb";
        let p = parse_paragraph(para, Archive::Main).unwrap();
        assert_eq!((p.name.as_str(), p.size, &p.sha256[..4]), ("adduser", 1352, "c24f"));
        assert!(parse_paragraph("Package: x\nVersion: 1", Archive::Main).is_none());
    }

    #[test]
    fn apt_config_is_private() {
        let c = render_apt_conf(Path::new("/w/apt"));
        assert!(c.contains("Dir::Etc::Parts \"/w/apt/etc/apt.conf.d/\";"));
        assert!(c.contains("Dir::State::Status \"/w/apt/status\";"));
    }
}
