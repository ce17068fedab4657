//! Reading an index or a bundle from an http(s) URL or a local path, each transfer bounded
//! by a deadline.

use super::{io_at, UpdateError};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// How long fetching a whole bundle may take (a server that trickles a byte a minute
/// would otherwise hold the update, and the lock, forever).
pub const BUNDLE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30 * 60);
/// How long fetching an index may take.
pub const INDEX_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// A readable source: `http://…`/`https://…` streamed, or a file.
pub fn open_source(source: &str) -> Result<Box<dyn Read>, UpdateError> {
    open_source_within(source, BUNDLE_DEADLINE)
}

/// An HTTP(S) client whose whole transfer ends by `deadline`, verifying servers with the
/// system's trust store.
pub fn http_agent(deadline: std::time::Duration) -> ureq::Agent {
    use ureq::tls::{RootCerts, TlsConfig};
    ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(30).min(deadline)))
        .timeout_global(Some(deadline))
        .tls_config(TlsConfig::builder().root_certs(RootCerts::PlatformVerifier).build())
        .build()
        .into()
}

/// [`open_source`], with the whole transfer (connecting, every read) bounded by `deadline`.
pub fn open_source_within(source: &str, deadline: std::time::Duration) -> Result<Box<dyn Read>, UpdateError> {
    if source.starts_with("http://") || source.starts_with("https://") {
        let resp = http_agent(deadline)
            .get(source)
            .call()
            .map_err(|e| UpdateError::Fetch {
                url: source.to_string(),
                detail: e.to_string(),
            })?;
        Ok(Box::new(io::BufReader::with_capacity(
            1 << 20,
            resp.into_body().into_reader(),
        )))
    } else {
        let path = Path::new(source);
        let f = File::open(path).map_err(io_at("opening", path))?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, f)))
    }
}

/// Read a small document (an index) from a URL or file, at most 1 MiB.
pub fn fetch_small(source: &str) -> Result<Vec<u8>, UpdateError> {
    let mut buf = Vec::new();
    open_source_within(source, INDEX_DEADLINE)?
        .take(1 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| UpdateError::Fetch {
            url: source.to_string(),
            detail: e.to_string(),
        })?;
    Ok(buf)
}
