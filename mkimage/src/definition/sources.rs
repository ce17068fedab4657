//! Where the image's parts come from: the root (a Debian package set or a tarball), the
//! package sources and lock, pinned artifacts like the kubelet, and the node agent.

use std::path::PathBuf;

use toml::Spanned;

use super::context::Ctx;
use super::raw::*;
use super::DefinitionError;

/// Where the root tree comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource {
    /// An existing directory.
    Directory(PathBuf),
    /// A tarball (`.tar`, `.tar.gz`, `.tar.xz`, `.tar.zst`).
    Tarball(PathBuf),
    /// Debian packages, installed by mmdebstrap and pinned by a lock file.
    Debian(DebianSpec),
}

impl RootSource {
    /// A short description for the plan and progress lines.
    pub fn describe(&self) -> String {
        match self {
            RootSource::Directory(p) | RootSource::Tarball(p) => p.display().to_string(),
            RootSource::Debian(d) => format!("Debian {} ({} packages requested)", d.suite, d.packages.len()),
        }
    }
}

/// Debian packages for the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianSpec {
    /// Suite, e.g. `bookworm`; its `-updates` and `-security` suites are added.
    pub suite: String,
    /// Main archive URL; `None` takes the host's apt configuration.
    pub mirror: Option<String>,
    /// Security archive URL; `None` takes the host's apt configuration.
    pub security_mirror: Option<String>,
    /// Archive components.
    pub components: Vec<String>,
    /// Requested packages (the kernel and the initrd tools are added).
    pub packages: Vec<String>,
    /// The kernel package.
    pub kernel_package: String,
    /// The lock file.
    pub lock: PathBuf,
    /// Package stores (`cairn store export`) to take every package from, instead of the
    /// mirrors: set, the build never asks a mirror (an air-gapped rebuild of a locked image).
    pub package_sources: Vec<PackageSource>,
    /// Sources tried after the mirrors for locked packages they no longer serve, e.g. a dated
    /// snapshot archive; `{resolved}` becomes the lock's resolution time (`20261202T074012Z`).
    pub fallback_sources: Vec<PackageSource>,
}

/// Where packages can be fetched by their archive path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageSource {
    /// A local directory (a store export, or a mounted archive).
    Dir(PathBuf),
    /// An http(s) or file URL.
    Url(String),
}

impl std::fmt::Display for PackageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PackageSource::Dir(d) => write!(f, "{}", d.display()),
            PackageSource::Url(u) => f.write_str(u),
        }
    }
}

impl PackageSource {
    /// Parse a `--package-source` value: a URL, or a directory relative to the working directory.
    pub fn from_arg(v: &str) -> Result<PackageSource, String> {
        if v.contains("://") || v.starts_with("file:") {
            check_source_url(v)?;
            Ok(PackageSource::Url(v.trim_end_matches('/').to_string()))
        } else if v.is_empty() || v.chars().any(char::is_control) {
            Err(format!("package source {v:?} is not a directory"))
        } else {
            Ok(PackageSource::Dir(PathBuf::from(v)))
        }
    }
}

/// A mirror or package source URL: `http://`, `https://` or `file:/`, then printable ASCII
/// without spaces, quotes or brackets (it lands in apt's sources and on command lines).
pub fn check_source_url(u: &str) -> Result<(), String> {
    let scheme_ok = ["http://", "https://", "file:/"].iter().any(|p| u.starts_with(p));
    let rest_ok = u.len() <= 1024
        && u.bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"'`<>[]{}|^\\".contains(&b));
    if !scheme_ok {
        Err(format!("mirror {u:?} is not an http(s) or file URL"))
    } else if !rest_ok {
        Err(format!(
            "mirror {u:?} holds a space, a control character, a quote or a bracket"
        ))
    } else {
        Ok(())
    }
}

/// Where a pinned artifact comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactSource {
    /// A local file.
    Path(PathBuf),
    /// An http(s) or file URL, fetched with curl.
    Url(String),
}

/// A file pinned by its sha256 (the kubelet, which Debian does not package).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Where it comes from.
    pub source: ArtifactSource,
    /// Its expected sha256.
    pub sha256: [u8; 32],
}

/// Where one of Cairn's own binaries for the image (the node agent, the keyserver) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAgent {
    /// The binary of that name next to the running `cairn` executable (one `cargo build`
    /// makes them all).
    BesideCairn,
    /// A given file.
    Path(PathBuf),
}

impl Ctx<'_> {
    pub(super) fn root_source(&self, source: &Spanned<String>) -> Result<RootSource, DefinitionError> {
        let src_path = self.path(source);
        match std::fs::metadata(&src_path) {
            Ok(m) if m.is_dir() => Ok(RootSource::Directory(src_path)),
            Ok(m) if m.is_file() => {
                let n = src_path.to_string_lossy();
                if [".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.zst"]
                    .iter()
                    .any(|e| n.ends_with(e))
                {
                    Ok(RootSource::Tarball(src_path))
                } else {
                    self.err(
                        Some(source.span()),
                        format!("root source {n} is neither a directory nor a .tar, .tar.gz, .tar.xz or .tar.zst file"),
                        "point `source` at a directory or a tarball of the root tree",
                    )
                }
            }
            Ok(_) => self.err(
                Some(source.span()),
                format!("root source {} is not a file or directory", src_path.display()),
                "",
            ),
            Err(e) => self.err(
                Some(source.span()),
                format!("root source {}: {e}", src_path.display()),
                "point `source` at an existing directory or tarball (paths are relative to the definition file)",
            ),
        }
    }

    pub(super) fn debian(&self, d: &Spanned<RawDebian>) -> Result<DebianSpec, DefinitionError> {
        let raw = d.get_ref();
        let word = |s: &Spanned<String>, what: &str, hint: &str| -> Result<String, DefinitionError> {
            let v = s.get_ref();
            let ok = v.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && v.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
            if ok {
                Ok(v.clone())
            } else {
                self.err(Some(s.span()), format!("'{v}' is not a valid {what}"), hint)
            }
        };
        let url = |s: &Option<Spanned<String>>| -> Result<Option<String>, DefinitionError> {
            match s {
                None => Ok(None),
                Some(u) => match check_source_url(u.get_ref()) {
                    Ok(()) => Ok(Some(u.get_ref().trim_end_matches('/').to_string())),
                    Err(why) => self.err(Some(u.span()), why, "e.g. mirror = \"http://deb.debian.org/debian\""),
                },
            }
        };
        // A package source is a directory (relative to the definition) or a URL.
        let source = |s: &Spanned<String>, placeholder: bool| -> Result<PackageSource, DefinitionError> {
            let v = s.get_ref();
            if v.contains("://") || v.starts_with("file:") {
                let checked = if placeholder {
                    v.replace("{resolved}", "20000101T000000Z")
                } else {
                    v.clone()
                };
                match check_source_url(&checked) {
                    Ok(()) => Ok(PackageSource::Url(v.trim_end_matches('/').to_string())),
                    Err(why) => self.err(
                        Some(s.span()),
                        why,
                        "a package source is a directory or an http(s)/file URL of a `cairn store export`",
                    ),
                }
            } else if v.is_empty() || v.chars().any(char::is_control) {
                self.err(
                    Some(s.span()),
                    format!("package source {v:?} is not a directory"),
                    "name a directory written by `cairn store export`",
                )
            } else {
                Ok(PackageSource::Dir(self.path(s)))
            }
        };
        let package_sources = raw
            .package_sources
            .iter()
            .map(|s| source(s, false))
            .collect::<Result<Vec<_>, _>>()?;
        let fallback_sources = raw
            .fallback_sources
            .iter()
            .map(|s| source(s, true))
            .collect::<Result<Vec<_>, _>>()?;
        let suite = word(&raw.suite, "suite", "e.g. suite = \"bookworm\"")?;
        let mut packages = Vec::new();
        for p in &raw.packages {
            packages.push(word(
                p,
                "package name",
                "Debian package names are lower case letters, digits, '+', '-' and '.'",
            )?);
        }
        let components = match &raw.components {
            None => vec!["main".to_string()],
            Some(c) => c
                .iter()
                .map(|c| word(c, "component", "e.g. [\"main\"]"))
                .collect::<Result<_, _>>()?,
        };
        let kernel_package = match &raw.kernel {
            None => "linux-image-amd64".to_string(),
            Some(k) => word(k, "package name", "e.g. kernel = \"linux-image-amd64\"")?,
        };
        let lock = match &raw.lock {
            None => self.dir.join("cairn.lock"),
            Some(l) => self.path(l),
        };
        Ok(DebianSpec {
            suite,
            mirror: url(&raw.mirror)?,
            security_mirror: url(&raw.security_mirror)?,
            components,
            packages,
            kernel_package,
            lock,
            package_sources,
            fallback_sources,
        })
    }

    pub(super) fn artifact(&self, k: &RawKubelet) -> Result<Artifact, DefinitionError> {
        let mut sha = [0u8; 32];
        if hex::decode_to_slice(k.sha256.get_ref(), &mut sha).is_err() {
            return self.err(
                Some(k.sha256.span()),
                "kubelet sha256 is not 64 hex digits",
                "write the artifact's `sha256sum`",
            );
        }
        let source = match (&k.path, &k.url) {
            (Some(p), None) => ArtifactSource::Path(self.existing_file(
                p,
                "kubelet",
                "point `path` at the kubelet binary you pinned",
            )?),
            (None, Some(u))
                if ["http://", "https://", "file://"]
                    .iter()
                    .any(|s| u.get_ref().starts_with(s)) =>
            {
                ArtifactSource::Url(u.get_ref().clone())
            }
            (None, Some(u)) => {
                return self.err(
                    Some(u.span()),
                    format!("'{}' is not an http(s) or file URL", u.get_ref()),
                    "",
                )
            }
            _ => {
                return self.err(
                    Some(k.sha256.span()),
                    "[kubelet] needs exactly one of `path` and `url`",
                    "e.g. path = \"artifacts/kubelet\"",
                )
            }
        };
        Ok(Artifact { source, sha256: sha })
    }
}
