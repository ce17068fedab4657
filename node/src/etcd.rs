//! A small etcd v3 client for the node agent, driving Debian's `etcdctl` (the etcd-client
//! package in the image): the reboot lease needs a range, a transaction and leases, and
//! `etcdctl -w json` gives exactly those over etcd's gRPC API, with TLS and the key agent's
//! etcd-client certificate, failing over between endpoints by itself.
//!
//! Why not etcd's JSON gateway over plain HTTP: on a TLS client port with client
//! certificates required (how Cairn runs etcd), etcd 3.4's gateway dials its own gRPC
//! server showing the *server* certificate as its client certificate, which the etcd-client
//! CA does not sign, so every gateway call fails with "connection closed". And a gRPC stack
//! in the agent would be the largest thing in it.
//!
//! Everything that reaches `etcdctl`'s arguments or its transaction text is ours (keys
//! under `/cairn/`) or checked by the caller (node names are host names), and values are
//! read back base64-decoded from its JSON.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

/// What etcd says when users or roles changed between checking a request and applying it.
const AUTH_OLD_REVISION: &str = "revision of auth store is old";

/// What went wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// etcdctl failed: no endpoint answered, or etcd refused.
    #[error("etcdctl {what} at {endpoints}: {message}")]
    Failed {
        /// The command.
        what: String,
        /// The endpoints asked.
        endpoints: String,
        /// What etcdctl said.
        message: String,
    },
    /// The client's own settings (URLs, certificate files, etcdctl itself).
    #[error("{0}")]
    Setup(String),
}

/// Files of the client certificate: the CA that signed the members' certificates, and the
/// client's certificate and key (PEM).
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The CA bundle to check members with.
    pub ca: PathBuf,
    /// The client certificate (with its chain).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

impl ClientTls {
    /// The key agent's etcd client certificate under `root`: a control-plane node's
    /// `etcd-client` (checking members against the CA of its own etcd-server
    /// certificate), or else a worker's `etcd-lease` (whose bundle is the etcd servers' CA;
    /// etcd lets it use the reboot lease only).
    pub fn from_key_agent(root: &Path) -> ClientTls {
        let pki = crate::apply::at(root, crate::key_agent::PKI_DIR);
        if !pki.join("etcd-client/current").exists() && pki.join("etcd-lease/current").exists() {
            return ClientTls {
                ca: pki.join("etcd-lease/current/bundle.pem"),
                cert: pki.join("etcd-lease/current/cert.pem"),
                key: pki.join("etcd-lease/current/key.pem"),
            };
        }
        ClientTls {
            ca: pki.join("etcd-server/current/bundle.pem"),
            cert: pki.join("etcd-client/current/cert.pem"),
            key: pki.join("etcd-client/current/key.pem"),
        }
    }
}

/// A client for one cluster.
#[derive(Debug, Clone)]
pub struct Etcd {
    endpoints: String,
    tls: Option<ClientTls>,
    timeout: Duration,
    program: PathBuf,
}

/// A member: its name (empty for one that never started) and client URLs.
pub type Member = (String, Vec<String>);

/// One key-value of a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The lease it is attached to (0: none).
    pub lease: i64,
}

fn unb64(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .unwrap_or_default()
}

impl Etcd {
    /// A client for the members at `urls` (`http://` or `https://HOST:PORT`); `tls` is
    /// required for https.
    pub fn new(urls: &[String], tls: Option<&ClientTls>, timeout: Duration) -> Result<Etcd, EtcdError> {
        let mut endpoints = Vec::new();
        for u in urls {
            let url = cairn_node_config::Url::parse(u)
                .map_err(|_| EtcdError::Setup(format!("'{}' is not an etcd client URL", u.escape_debug())))?;
            if url.scheme == "https" && tls.is_none() {
                return Err(EtcdError::Setup(format!(
                    "{url} needs a client certificate (the key agent's etcd-client)"
                )));
            }
            endpoints.push(url.to_string());
        }
        if endpoints.is_empty() {
            return Err(EtcdError::Setup("no etcd endpoints".into()));
        }
        Ok(Etcd {
            endpoints: endpoints.join(","),
            tls: tls.cloned(),
            timeout,
            program: PathBuf::from("etcdctl"),
        })
    }

    /// Run `etcdctl -w json ARGS` (with `stdin` when given); its JSON answer.
    fn run(&self, what: &str, args: &[&str], stdin: Option<&str>) -> Result<Value, EtcdError> {
        self.run_with(what, args, stdin, |_| None)
    }

    /// [`Etcd::run`], with `why` to read the reason of a failure from what etcdctl wrote
    /// on stdout (its JSON), before its last "Error:" line is taken.
    fn run_with(
        &self,
        what: &str,
        args: &[&str],
        stdin: Option<&str>,
        why: impl Fn(&Value) -> Option<String>,
    ) -> Result<Value, EtcdError> {
        let out = self.output(what, args, stdin, why)?;
        serde_json::from_slice(&out).map_err(|e| EtcdError::Failed {
            what: what.into(),
            endpoints: self.endpoints.clone(),
            message: format!("unreadable answer ({e})"),
        })
    }

    /// Run `etcdctl -w json ARGS` for a command that answers in plain text whatever `-w`
    /// says (`auth enable`); its answer.
    fn run_text(&self, what: &str, args: &[&str]) -> Result<String, EtcdError> {
        let out = self.output(what, args, None, |_| None)?;
        Ok(String::from_utf8_lossy(&out).trim().to_string())
    }

    /// Run `etcdctl -w json ARGS`; what it wrote on stdout when it succeeded.
    fn output(
        &self,
        what: &str,
        args: &[&str],
        stdin: Option<&str>,
        why: impl Fn(&Value) -> Option<String>,
    ) -> Result<Vec<u8>, EtcdError> {
        // etcd refuses a request whose authentication was checked against users and roles
        // that changed before it was applied ("revision of auth store is old"): while the
        // control-plane nodes set up etcd's users at once, any of them may see it. Nothing
        // was applied, so asking again is safe.
        let mut tries = 0u64;
        loop {
            match self.output_once(what, args, stdin, &why) {
                Err(EtcdError::Failed { message, .. }) if message.contains(AUTH_OLD_REVISION) && tries < 8 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(250 * tries));
                }
                other => return other,
            }
        }
    }

    fn output_once(
        &self,
        what: &str,
        args: &[&str],
        stdin: Option<&str>,
        why: &impl Fn(&Value) -> Option<String>,
    ) -> Result<Vec<u8>, EtcdError> {
        let mut cmd = Command::new(&self.program);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints))
            .arg(format!("--dial-timeout={}s", self.timeout.as_secs().max(1)))
            .arg(format!("--command-timeout={}s", 2 * self.timeout.as_secs().max(1)))
            .args(["-w", "json"]);
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cacert={}", t.ca.display()))
                .arg(format!("--cert={}", t.cert.display()))
                .arg(format!("--key={}", t.key.display()));
        }
        cmd.args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            EtcdError::Setup(format!(
                "running {}: {e} (etcdctl is in Debian's etcd-client package)",
                self.program.display()
            ))
        })?;
        if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
            input
                .write_all(text.as_bytes())
                .map_err(|e| EtcdError::Setup(format!("writing to etcdctl: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| EtcdError::Setup(format!("waiting for etcdctl: {e}")))?;
        let failed = |message: String| EtcdError::Failed {
            what: what.into(),
            endpoints: self.endpoints.clone(),
            message,
        };
        if !out.status.success() {
            // etcdctl ends with "Error: …"; the retry warnings before it are noise.
            let err = String::from_utf8_lossy(&out.stderr);
            let said = serde_json::from_slice(&out.stdout).ok().and_then(|v| why(&v));
            let message = said.unwrap_or_else(|| {
                err.lines()
                    .rev()
                    .find(|l| l.starts_with("Error:"))
                    .unwrap_or_else(|| err.lines().last().unwrap_or("no message"))
                    .trim_start_matches("Error:")
                    .trim()
                    .to_string()
            });
            return Err(failed(message));
        }
        Ok(out.stdout)
    }

    /// The key-values whose keys start with `prefix`.
    pub fn range_prefix(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        let answer = self.run("get", &["get", "--prefix", "--", prefix], None)?;
        Ok(answer
            .get("kvs")
            .and_then(Value::as_array)
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| Kv {
                        key: unb64(&kv["key"]),
                        value: unb64(&kv["value"]),
                        lease: kv["lease"].as_i64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The cluster's members: name (empty for one that never started) and client URLs.
    pub fn members(&self) -> Result<Vec<Member>, EtcdError> {
        self.cluster().map(|(_, m)| m)
    }

    /// The cluster's id and its [`Etcd::members`].
    pub fn cluster(&self) -> Result<(u64, Vec<Member>), EtcdError> {
        let answer = self.run("member list", &["member", "list"], None)?;
        let id = answer["header"]["cluster_id"].as_u64().unwrap_or(0);
        let members = answer
            .get("members")
            .and_then(Value::as_array)
            .map(|ms| {
                ms.iter()
                    .map(|m| {
                        let name = m["name"].as_str().unwrap_or_default().to_string();
                        let urls = m["clientURLs"]
                            .as_array()
                            .map(|u| u.iter().filter_map(|u| u.as_str().map(String::from)).collect())
                            .unwrap_or_default();
                        (name, urls)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok((id, members))
    }

    /// The same client for other endpoints (`urls`: what a member advertises).
    pub fn at(&self, urls: &[String]) -> Result<Etcd, EtcdError> {
        Etcd::new(urls, self.tls.as_ref(), self.timeout)
    }

    /// Whether every endpoint of this client answers healthy (etcd's own check: it
    /// serves a linearizable read, so a member without a leader is not healthy).
    pub fn healthy(&self) -> Result<(), EtcdError> {
        // Each endpoint's answer is on stdout, with its error; stderr ends in a bare
        // "unhealthy cluster".
        let why = |v: &Value| {
            let errors: Vec<String> = v
                .as_array()?
                .iter()
                .filter(|e| e["health"] != Value::Bool(true))
                .map(|e| {
                    format!(
                        "{}: {}",
                        e["endpoint"].as_str().unwrap_or("?"),
                        e["error"].as_str().unwrap_or("not healthy")
                    )
                })
                .collect();
            (!errors.is_empty()).then(|| errors.join("; "))
        };
        self.run_with("endpoint health", &["endpoint", "health"], None, why)
            .map(|_| ())
    }

    /// A lease of `ttl` seconds; its id.
    pub fn grant(&self, ttl: u64) -> Result<i64, EtcdError> {
        let answer = self.run("lease grant", &["lease", "grant", &ttl.to_string()], None)?;
        answer["ID"]
            .as_i64()
            .filter(|id| *id != 0)
            .ok_or_else(|| EtcdError::Failed {
                what: "lease grant".into(),
                endpoints: self.endpoints.clone(),
                message: format!("no lease in {answer}"),
            })
    }

    /// Keep lease `id` alive for another TTL; the seconds it has now, or `None` when it has
    /// expired or was revoked.
    pub fn keep_alive(&self, id: i64) -> Result<Option<i64>, EtcdError> {
        let hex = format!("{id:x}");
        // An expired lease makes keep-alive fail; timetolive says which it was.
        let _ = self.run("lease keep-alive", &["lease", "keep-alive", "--once", &hex], None);
        let answer = self.run("lease timetolive", &["lease", "timetolive", &hex], None)?;
        let ttl = answer["ttl"].as_i64().unwrap_or(-1);
        Ok((ttl > 0).then_some(ttl))
    }

    /// End lease `id` now, deleting its keys (an unknown lease is not an error).
    pub fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        match self.run("lease revoke", &["lease", "revoke", &format!("{id:x}")], None) {
            Ok(_) => Ok(()),
            Err(EtcdError::Failed { message, .. }) if message.contains("not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A transaction in etcdctl's text form (comparisons, then the requests if they hold,
    /// then those if not; one per line); whether the comparisons held.
    pub fn txn(&self, compare: &[String], success: &[String], failure: &[String]) -> Result<bool, EtcdError> {
        for line in compare.iter().chain(success).chain(failure) {
            if line.is_empty() || line.contains(['\n', '\r', '\0']) {
                return Err(EtcdError::Setup(format!(
                    "'{}' cannot be a line of a transaction",
                    line.escape_debug()
                )));
            }
        }
        let text = format!(
            "{}\n\n{}\n\n{}\n\n",
            compare.join("\n"),
            success.join("\n"),
            failure.join("\n")
        );
        let answer = self.run("txn", &["txn"], Some(&text))?;
        Ok(answer.get("succeeded").and_then(Value::as_bool).unwrap_or(false))
    }

    /// User `name` (no password: it is known by its client certificate's CN) with `role`;
    /// one that exists gets the role too. Whether the user was made now.
    pub fn add_user(&self, name: &str, role: &str) -> Result<bool, EtcdError> {
        for v in [name, role] {
            if v.is_empty() || v.starts_with('-') || v.contains(|c: char| c.is_control() || c.is_whitespace()) {
                return Err(EtcdError::Setup(format!(
                    "'{}' cannot be an etcd user or role",
                    v.escape_debug()
                )));
            }
        }
        let made = match self.run("user add", &["user", "add", "--no-password", "--", name], None) {
            Err(EtcdError::Failed { message, .. }) if message.contains("already exists") => false,
            r => r.map(|_| true)?,
        };
        self.run("user grant-role", &["user", "grant-role", "--", name, role], None)?;
        Ok(made)
    }

    /// Role `role` (made when missing) may read and write the keys under `prefix`.
    pub fn allow_prefix(&self, role: &str, prefix: &str) -> Result<(), EtcdError> {
        match self.run("role add", &["role", "add", "--", role], None) {
            Err(EtcdError::Failed { message, .. }) if message.contains("already exists") => {}
            r => r.map(|_| ())?,
        }
        self.run(
            "role grant-permission",
            &[
                "role",
                "grant-permission",
                "--prefix=true",
                "--",
                role,
                "readwrite",
                prefix,
            ],
            None,
        )
        .map(|_| ())
    }

    /// Turn authentication on (it may be on already): from then on a client is the user its
    /// certificate's CN names, with that user's roles.
    pub fn enable_auth(&self) -> Result<(), EtcdError> {
        let said = self.run_text("auth enable", &["auth", "enable"])?;
        if said != "Authentication Enabled" {
            return Err(EtcdError::Failed {
                what: "auth enable".into(),
                endpoints: self.endpoints.clone(),
                message: format!("unexpected answer '{}'", said.escape_debug()),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An etcdctl stand-in that fails with `message` the first `fails` times, then answers.
    fn fake(dir: &Path, fails: u32, message: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("etcdctl");
        let count = dir.join("runs");
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\nn=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}\n\
                 if [ $n -le {fails} ]; then echo '{{\"level\":\"warn\"}}' >&2; echo 'Error: {message}' >&2; exit 1; fi\necho '{{}}'\n",
                c = count.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn runs(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("runs")).unwrap().trim().to_string()
    }

    #[test]
    fn an_old_auth_revision_is_asked_again_and_nothing_else_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut etcd = Etcd::new(&["http://127.0.0.1:1".into()], None, Duration::from_secs(1)).unwrap();
        etcd.program = fake(dir.path(), 2, "etcdserver: revision of auth store is old");
        assert_eq!(etcd.run_text("auth enable", &["auth", "enable"]).unwrap(), "{}");
        assert_eq!(runs(dir.path()), "3");

        let dir = tempfile::tempdir().unwrap();
        etcd.program = fake(dir.path(), 2, "etcdserver: permission denied");
        let err = etcd
            .run_text("user add", &["user", "add", "x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("permission denied"), "{err}");
        assert_eq!(runs(dir.path()), "1");
    }
}
