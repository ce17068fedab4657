//! `cairn-node ssh-hostkeys`: the node's SSH host keys, made at first boot on the state
//! partition (never in the image) and checked on every boot after.
//!
//! A node can lose power moments after first boot wrote its keys. ext4 then keeps the
//! file names but may lose their contents (delayed allocation), and sshd refuses to start
//! with an empty host key — a node nobody can log into. So keys are written like every
//! other file the agent owns (temporary file, fsync, rename, fsync of the directory), and
//! each boot checks that every private key loads and that its `.pub` matches it: a key
//! that does not load is made anew (said on the console: its fingerprint changes); a
//! missing or wrong `.pub` is derived again from the private key (the identity stays).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::apply::write_atomic;

/// Where sshd finds the keys (`/etc/ssh/sshd_config.d/cairn.conf` names them).
pub const DIR: &str = "/var/lib/cairn/ssh";

/// Key types and the `ssh-keygen` arguments that make one. Ed25519 only: every OpenSSH
/// since 6.5 (2014) and every maintained client speaks it, the keyserver signs it, and an
/// RSA-3072 key cost the first boot 3 s of CPU on a real core and 19 s under emulation.
/// A node that made an RSA key under an older release keeps the file; sshd no longer
/// offers it.
const KINDS: [(&str, &[&str]); 1] = [("ed25519", &["-t", "ed25519"])];

/// What happened to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It loads and its `.pub` matches.
    Kept,
    /// There was none: made.
    Made,
    /// The private key did not load (`why`): made anew.
    Replaced(String),
    /// The `.pub` was missing or did not match: written again from the private key.
    PublicRestored,
}

/// One key's outcome, with its type and fingerprint (`SHA256:…`).
#[derive(Debug, Clone)]
pub struct Report {
    /// `ed25519`.
    pub kind: &'static str,
    /// What was done.
    pub outcome: Outcome,
    /// Its fingerprint as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

impl Report {
    /// The line for the journal (and the console when something changed).
    pub fn line(&self) -> String {
        let what = match &self.outcome {
            Outcome::Kept => "kept".to_string(),
            Outcome::Made => "made".to_string(),
            Outcome::Replaced(why) => format!("made anew: the saved key did not load ({why}); its fingerprint changed"),
            Outcome::PublicRestored => "public half written again from the private key".to_string(),
        };
        format!("cairn: SSH host key {} {}: {what}", self.kind, self.fingerprint)
    }
}

/// Why keys could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    /// A file could not be read, written or removed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `ssh-keygen` failed or is missing.
    #[error("ssh-keygen {args}: {why}")]
    Keygen {
        /// Its arguments.
        args: String,
        /// Its error output or why it could not run.
        why: String,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> HostKeyError + 'a {
    move |source| HostKeyError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

fn keygen(args: &[&str]) -> Result<String, String> {
    crate::system::run("ssh-keygen", args)
}

fn keygen_err(args: &[&str], why: String) -> HostKeyError {
    HostKeyError::Keygen {
        args: args.join(" "),
        why,
    }
}

/// Type and key material (the first two fields) of a public key line, comment dropped.
fn public_fields(line: &str) -> Option<String> {
    let mut f = line.split_whitespace();
    Some(format!("{} {}", f.next()?, f.next()?))
}

/// `SHA256:…` as `ssh-keygen -l` prints it: the unpadded base64 of the sha256 of the key blob.
fn fingerprint(public_line: &str) -> Option<String> {
    use base64::Engine;
    use sha2::Digest;
    let blob = public_line.split_whitespace().nth(1)?;
    let blob = base64::engine::general_purpose::STANDARD.decode(blob).ok()?;
    let digest = sha2::Sha256::digest(blob);
    Some(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    ))
}

/// Where ssh-keygen puts the public half of the key at `key`.
fn public_of(key: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pub", key.display()))
}

/// Make sure every host key under `dir` loads and has a matching `.pub`; make what is
/// missing or broken. Leftovers of an interrupted run are removed first.
pub fn ensure(dir: &Path) -> Result<Vec<Report>, HostKeyError> {
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let mut reports = Vec::new();
    for (kind, args) in KINDS {
        let tmp = dir.join(format!(".new-ssh_host_{kind}_key"));
        for p in [tmp.clone(), public_of(&tmp)] {
            match fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("removing", &p)(e)),
                _ => {}
            }
        }
        let key = dir.join(format!("ssh_host_{kind}_key"));
        let public = public_of(&key);
        let outcome = match fs::metadata(&key) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                make(&tmp, args, &key, &public)?;
                Outcome::Made
            }
            Err(e) => return Err(io_err("reading", &key)(e)),
            Ok(meta) => check(&meta, &tmp, args, &key, &public)?,
        };
        let public_line = fs::read_to_string(&public).map_err(io_err("reading", &public))?;
        let fingerprint = fingerprint(&public_line).ok_or_else(|| HostKeyError::Io {
            what: "reading",
            path: public.display().to_string(),
            source: io::Error::new(io::ErrorKind::InvalidData, "not an OpenSSH public key line"),
        })?;
        reports.push(Report {
            kind,
            outcome,
            fingerprint,
        });
    }
    Ok(reports)
}

/// An existing private `key`: keep it if it loads (mending its mode and `.pub`), else make
/// a new one.
fn check(meta: &fs::Metadata, tmp: &Path, args: &[&str], key: &Path, public: &Path) -> Result<Outcome, HostKeyError> {
    // ssh-keygen and sshd refuse a private key others can read; that is no reason to
    // change the node's identity.
    if meta.is_file() && meta.permissions().mode() & 0o777 != 0o600 {
        fs::set_permissions(key, fs::Permissions::from_mode(0o600)).map_err(io_err("setting the mode of", key))?;
    }
    let key_s = key.to_string_lossy().into_owned();
    let derived = match keygen(&["-y", "-f", &key_s]) {
        Err(why) => {
            make(tmp, args, key, public)?;
            return Ok(Outcome::Replaced(why));
        }
        Ok(derived) => derived,
    };
    let derived =
        public_fields(&derived).ok_or_else(|| keygen_err(&["-y", "-f", &key_s], "printed no public key".into()))?;
    let saved = fs::read_to_string(public).ok();
    if saved.as_deref().and_then(public_fields).as_deref() == Some(derived.as_str()) {
        return Ok(Outcome::Kept);
    }
    write_atomic(public, format!("{derived}\n").as_bytes(), 0o644, None).map_err(io_err("writing", public))?;
    Ok(Outcome::PublicRestored)
}

/// Generate a key at `tmp` (and `tmp.pub`) with `args`, then put both halves in place
/// durably.
fn make(tmp: &Path, args: &[&str], key: &Path, public: &Path) -> Result<(), HostKeyError> {
    let tmp_pub = public_of(tmp);
    let tmp_s = tmp.to_string_lossy().into_owned();
    let mut all = vec!["-q"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-N", "", "-C", "", "-f", &tmp_s]);
    keygen(&all).map_err(|why| keygen_err(&all, why))?;
    let private = fs::read(tmp).map_err(io_err("reading", tmp))?;
    let public_line = fs::read(&tmp_pub).map_err(io_err("reading", &tmp_pub))?;
    // The private half first: a key without its `.pub` is mended on the next boot.
    write_atomic(key, &private, 0o600, None).map_err(io_err("writing", key))?;
    write_atomic(public, &public_line, 0o644, None).map_err(io_err("writing", public))?;
    for p in [tmp, &tmp_pub] {
        fs::remove_file(p).map_err(io_err("removing", p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: PathBuf) -> Vec<u8> {
        fs::read(p).unwrap()
    }

    #[test]
    fn makes_keeps_and_mends() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("ssh");
        let made = ensure(&d).unwrap();
        assert_eq!(
            made.iter().map(|r| r.outcome.clone()).collect::<Vec<_>>(),
            [Outcome::Made]
        );
        for r in &made {
            let p = d.join(format!("ssh_host_{}_key", r.kind));
            let l = keygen(&["-l", "-f", &p.to_string_lossy()]).unwrap();
            assert_eq!(l.split_whitespace().nth(1), Some(r.fingerprint.as_str()), "{l}");
        }
        let ed = d.join("ssh_host_ed25519_key");
        let ed_pub = d.join("ssh_host_ed25519_key.pub");
        assert_eq!(fs::metadata(&ed).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&ed_pub).unwrap().permissions().mode() & 0o777, 0o644);
        let mut names: Vec<String> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]);

        // Every boot after: nothing changes.
        let (key, public) = (read(ed.clone()), read(ed_pub.clone()));
        let kept = ensure(&d).unwrap();
        assert!(kept.iter().all(|r| r.outcome == Outcome::Kept), "{kept:?}");
        assert_eq!(kept[0].fingerprint, made[0].fingerprint);
        assert_eq!((read(ed.clone()), read(ed_pub.clone())), (key.clone(), public.clone()));

        // A private key others may read is kept, made private again.
        fs::set_permissions(&ed, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(ensure(&d).unwrap()[0].outcome, Outcome::Kept);
        assert_eq!(fs::metadata(&ed).unwrap().permissions().mode() & 0o777, 0o600);

        // A lost `.pub` comes back from the private key: same identity.
        fs::remove_file(&ed_pub).unwrap();
        let r = ensure(&d).unwrap();
        assert_eq!(r[0].outcome, Outcome::PublicRestored);
        assert_eq!(r[0].fingerprint, made[0].fingerprint);
        assert_eq!(
            public_fields(&String::from_utf8(read(ed_pub.clone())).unwrap()),
            public_fields(&String::from_utf8(public).unwrap())
        );

        // A private key emptied by a power loss is made anew, and said so.
        fs::write(&ed, b"").unwrap();
        // An interrupted earlier run left its temporary files.
        fs::write(d.join(".new-ssh_host_ed25519_key"), b"junk").unwrap();
        let r = ensure(&d).unwrap();
        match &r[0].outcome {
            Outcome::Replaced(why) => assert!(!why.is_empty()),
            o => panic!("{o:?}"),
        }
        assert_ne!(r[0].fingerprint, made[0].fingerprint);
        assert!(
            r[0].line().contains("made anew: the saved key did not load"),
            "{}",
            r[0].line()
        );
        assert_ne!(read(ed.clone()), key);
        assert!(!d.join(".new-ssh_host_ed25519_key").exists());
        assert_eq!(ensure(&d).unwrap()[0].outcome, Outcome::Kept);
    }
}
