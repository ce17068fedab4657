//! `STATE/serve.toml`: where a keyserver listens and the names its serving certificate
//! carries, kept with the state so the unit in the image (and `cairn keyserver serve`
//! without flags) needs no arguments.
//!
//! ```toml
//! listen = "[::]:8443"
//! names = ["cp-1", "10.0.0.11"]
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::KeyserverError;

/// The file's name inside the state directory.
pub const FILE: &str = "serve.toml";

/// The port when `listen` is not given.
pub const DEFAULT_LISTEN: &str = "[::]:8443";

/// Where to listen and what to be called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// The address and port.
    pub listen: SocketAddr,
    /// The serving certificate's names and addresses.
    pub names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: Option<String>,
    names: Vec<String>,
}

/// Read `STATE/serve.toml`; `Ok(None)` when there is none.
pub fn read(state: &Path) -> Result<Option<Listen>, KeyserverError> {
    let path = state.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(crate::io_err("reading", &path)(e)),
    };
    parse(&text, &path).map(Some)
}

/// Parse the text of `path`.
pub fn parse(text: &str, path: &Path) -> Result<Listen, KeyserverError> {
    let bad = |message: String, hint: &str| KeyserverError::Invalid {
        message: format!("{}: {message}", path.display()),
        hint: hint.into(),
    };
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| format!("line {}: ", cairn_node_config::line_at(text, s.start)))
            .unwrap_or_default();
        bad(
            format!("{line}{}", e.message()),
            "serve.toml holds `listen = \"[::]:8443\"` and `names = [\"cp-1\", \"10.0.0.11\"]`",
        )
    })?;
    let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen_text.parse().map_err(|_| {
        bad(
            format!("listen = '{}' is not an address and port", listen_text.escape_debug()),
            "e.g. \"[::]:8443\" or \"10.0.0.11:8443\"",
        )
    })?;
    if raw.names.is_empty() {
        return Err(bad(
            "names is empty".into(),
            "list the names and addresses nodes reach this keyserver at",
        ));
    }
    for n in &raw.names {
        crate::serve::check_name(n).map_err(|_| {
            bad(
                format!("'{}' in names is not a host name or address", n.escape_debug()),
                "names are what nodes' [key-agent] server URLs name",
            )
        })?;
    }
    Ok(Listen {
        listen,
        names: raw.names,
    })
}

/// The settings to serve with: flags win, then `STATE/serve.toml`.
pub fn resolve(state: &Path, listen: Option<SocketAddr>, names: Vec<String>) -> Result<Listen, KeyserverError> {
    let file = read(state)?;
    let names = if names.is_empty() {
        match &file {
            Some(f) => f.names.clone(),
            None => {
                return Err(KeyserverError::Invalid {
                    message: format!(
                        "no names to serve under: no --name and no {}",
                        PathBuf::from(state).join(FILE).display()
                    ),
                    hint: "give --name keys.example.net (repeatable), or write serve.toml in the state directory"
                        .into(),
                })
            }
        }
    } else {
        names
    };
    let listen = match (listen, &file) {
        (Some(l), _) => l,
        (None, Some(f)) => f.listen,
        (None, None) => DEFAULT_LISTEN.parse().expect("the default address parses"),
    };
    Ok(Listen { listen, names })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Listen, String> {
        parse(text, Path::new("serve.toml")).map_err(|e| format!("{e}"))
    }

    #[test]
    fn reads_listen_and_names() {
        let l = p("listen = \"10.0.0.11:9443\"\nnames = [\"cp-1\", \"10.0.0.11\", \"fd00::1\"]\n").unwrap();
        assert_eq!(l.listen, "10.0.0.11:9443".parse().unwrap());
        assert_eq!(l.names, ["cp-1", "10.0.0.11", "fd00::1"]);
        let l = p("names = [\"cp-1\"]").unwrap();
        assert_eq!(l.listen.port(), 8443);
    }

    #[test]
    fn refuses_what_it_cannot_serve_with_the_line() {
        let e = p("names = [\"cp-1\"]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(e.contains("'nowhere' is not an address"), "{e}");
        let e = p("names = [\"cp-1\"]\nport = 1\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = p("names = []\n").unwrap_err();
        assert!(e.contains("names is empty"), "{e}");
        // As TOML basic strings: the escapes reach the parser, which makes a newline and a NUL.
        for bad in ["a b", "../x", "x\\ny", "x\\u0000", ""] {
            let e = p(&format!("names = [\"{bad}\"]\n")).unwrap_err();
            assert!(e.contains("not a host name"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(resolve(dir.path(), None, vec![])
            .unwrap_err()
            .to_string()
            .contains("no names"));
        std::fs::write(dir.path().join(FILE), "listen = \"127.0.0.1:1\"\nnames = [\"a\"]\n").unwrap();
        let l = resolve(dir.path(), None, vec![]).unwrap();
        assert_eq!((l.listen.port(), l.names.as_slice()), (1, &["a".to_string()][..]));
        let l = resolve(dir.path(), Some("127.0.0.1:2".parse().unwrap()), vec!["b".into()]).unwrap();
        assert_eq!((l.listen.port(), l.names.as_slice()), (2, &["b".to_string()][..]));
    }
}
