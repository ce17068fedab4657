//! `cairn-node prestart COMPONENT`: before a component starts, mend the state of its that
//! a power loss is known to break and that it does not mend itself.
//!
//! A node can lose power at any moment, also in the first minute of its life. Programs
//! that write small state files without fsync leave them empty (ext4's delayed allocation
//! keeps the name, not the content), and some then fail on every start after. Each mend
//! here names the file, the symptom and how it is fixed, and says on the journal when it
//! acted; a file that is fine is left alone.
//!
//! - containerd (Debian 12: 1.6.20~ds1-1+deb12u3): the introspection service's UUID file
//!   (`/var/lib/containerd/io.containerd.grpc.v1.introspection/uuid`) is written on the
//!   first introspection call without fsync. Empty or garbled, every later `ctr` command
//!   fails with "invalid UUID length: 0" — and so the containerd health gate, for good.
//!   Removed, it is made again on the next call. (Upstream regenerates an empty file since
//!   containerd#10503, July 2024; Debian 12's containerd predates it.)

use std::fs;
use std::io;
use std::path::Path;

use crate::apply::at;

/// containerd's introspection UUID file.
pub const CONTAINERD_UUID: &str = "/var/lib/containerd/io.containerd.grpc.v1.introspection/uuid";

/// Whether `text` is one UUID in its 36-character form (an optional line end allowed).
fn is_uuid(text: &[u8]) -> bool {
    let t = text.strip_suffix(b"\n").unwrap_or(text);
    t.len() == 36
        && t.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Mend what `component`'s start needs under `root`; returns what was done (log lines).
pub fn prestart(root: &Path, component: &str) -> Result<Vec<String>, String> {
    match component {
        "containerd" => containerd(root).map_err(|e| format!("{CONTAINERD_UUID}: {e}")),
        other => Err(format!("no prestart mends for {other:?} (known: containerd)")),
    }
}

fn containerd(root: &Path) -> io::Result<Vec<String>> {
    let path = at(root, CONTAINERD_UUID);
    let text = match fs::read(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        r => r?,
    };
    if is_uuid(&text) {
        return Ok(vec![]);
    }
    fs::remove_file(&path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(vec![format!(
        "cairn: containerd's introspection UUID file held {} bytes that are not a UUID (what a power loss leaves): removed {CONTAINERD_UUID}, containerd makes a new one",
        text.len()
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        assert!(is_uuid(b"0b9c6d4e-3f2a-4c1d-9e8f-7a6b5c4d3e2f"));
        assert!(is_uuid(b"0B9C6D4E-3F2A-4C1D-9E8F-7A6B5C4D3E2F\n"));
        for bad in [
            &b""[..],
            b"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
            b"0b9c6d4e-3f2a-4c1d-9e8f-7a6b5c4d3e2",
            b"0b9c6d4e03f2a-4c1d-9e8f-7a6b5c4d3e2f",
            b"0b9c6d4e-3f2a-4c1d-9e8f-7a6b5c4d3e2g",
        ] {
            assert!(!is_uuid(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_broken_containerd_uuid_is_removed_and_a_good_one_kept() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // No state yet: nothing to do.
        assert_eq!(prestart(r, "containerd").unwrap(), Vec::<String>::new());
        let file = at(r, CONTAINERD_UUID);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, "0b9c6d4e-3f2a-4c1d-9e8f-7a6b5c4d3e2f").unwrap();
        assert!(prestart(r, "containerd").unwrap().is_empty());
        assert!(file.exists());
        fs::write(&file, "").unwrap();
        let said = prestart(r, "containerd").unwrap();
        assert_eq!(said.len(), 1);
        assert!(said[0].contains("held 0 bytes that are not a UUID"), "{said:?}");
        assert!(!file.exists());
        let e = prestart(r, "kubelet").unwrap_err();
        assert!(e.contains("known: containerd"), "{e}");
    }
}
