//! `cairn keyserver` and `cairn token` as an admin runs them: the token on standard output
//! alone (so scripts can take it), bad values refused with a hint and nothing changed.

use std::path::Path;
use std::process::Command;

fn cairn(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env("USER", "alice")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn state(dir: &Path) -> String {
    dir.join("ks").display().to_string()
}

#[test]
fn an_admin_makes_lists_and_revokes_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let st = state(tmp.path());
    let (ok, out, err) = cairn(&["keyserver", "init", &st, "--cluster", "demo"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("ca-fingerprint   sha256:") && out.contains("@cert-authority * ssh-ed25519 "),
        "{out}"
    );

    let (ok, out, err) = cairn(&[
        "token",
        "create",
        "--state",
        &st,
        "--node",
        "cp-1",
        "--role",
        "control-plane",
    ]);
    assert!(ok, "{err}");
    let token = cairn_keys::Token::parse(&out).unwrap_or_else(|e| panic!("{out:?}: {e}"));
    assert_eq!(out, format!("{token}\n"), "standard output is the token alone");
    assert!(err.contains("shown once") && err.contains(token.id()), "{err}");

    let (ok, out, _) = cairn(&["token", "list", "--state", &st]);
    assert!(ok);
    assert!(
        out.contains(token.id()) && out.contains("cp-1") && out.contains("issued"),
        "{out}"
    );
    assert!(
        !out.contains(&token.to_string()[15..41]),
        "no secret in the list: {out}"
    );

    let (ok, out, err) = cairn(&["token", "revoke", "--state", &st, token.id()]);
    assert!(ok, "{err}");
    assert!(out.contains("revoked token"), "{out}");
    let (_, out, _) = cairn(&["token", "list", "--state", &st]);
    assert!(out.contains("revoked"), "{out}");

    let (ok, out, _) = cairn(&["keyserver", "audit", &st]);
    assert!(ok);
    assert!(
        out.contains("\"actor\":\"admin:alice\"") && out.ends_with("# 3 records in audit/admin.jsonl, chain intact\n"),
        "{out}"
    );
}

#[test]
fn bad_values_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let st = state(tmp.path());
    let (ok, _, err) = cairn(&["token", "list", "--state", &st]);
    assert!(!ok && err.contains("cairn keyserver init"), "{err}");
    assert!(cairn(&["keyserver", "init", &st, "--cluster", "demo"]).0);
    let (ok, _, err) = cairn(&["keyserver", "init", &st, "--cluster", "demo"]);
    assert!(!ok && err.contains("never overwritten"), "{err}");
    for (args, want) in [
        (vec!["--node", "cp-1", "--role", "admin"], "not a role"),
        (vec!["--node", "cp-1\n", "--role", "worker"], "not a node name"),
        (vec!["--node", "../../etc", "--role", "worker"], "not a node name"),
        (
            vec!["--node", "cp-1", "--role", "worker", "--ttl", "31d"],
            "a minute to 30 days",
        ),
        (
            vec!["--node", "cp-1", "--role", "worker", "--ttl", "1w"],
            "not a duration",
        ),
    ] {
        let mut a = vec!["token", "create", "--state", st.as_str()];
        a.extend(args.iter().copied());
        let (ok, out, err) = cairn(&a);
        assert!(
            !ok && out.is_empty() && err.contains(want) && err.contains("hint:"),
            "{a:?}: {err}"
        );
    }
    let (ok, _, err) = cairn(&["token", "revoke", "--state", &st, "ck1.nothing"]);
    assert!(!ok && err.contains("no token"), "{err}");
    let (_, out, _) = cairn(&["token", "list", "--state", &st]);
    assert_eq!(out.lines().count(), 1, "only the header: {out}");
}

#[test]
fn a_config_drive_with_keyserver_registers_the_node_and_carries_its_token() {
    let tmp = tempfile::tempdir().unwrap();
    let st = state(tmp.path());
    let (ok, out, err) = cairn(&["keyserver", "init", &st, "--cluster", "demo"]);
    assert!(ok, "{err}");
    let fingerprint = out
        .lines()
        .find_map(|l| l.strip_prefix("ca-fingerprint   "))
        .unwrap()
        .to_string();
    let node = tmp.path().join("cp-1.toml");
    std::fs::write(
        &node,
        "# cp-1, first of three\nversion = 1\ngeneration = 1\nhostname = \"cp-1\"\n[etcd]\nclient-urls = [\"https://10.90.0.1:2379\"]\npeer-urls = [\"https://10.90.0.1:2380\"]\n[key-agent]\nserver = \"https://10.0.0.5:8443\" # the admin machine\n",
    )
    .unwrap();
    let drive = tmp.path().join("cp-1.img");
    let drive_s = drive.display().to_string();
    let (ok, out, err) = cairn(&[
        "config-drive",
        &node.display().to_string(),
        "--out",
        &drive_s,
        "--keyserver",
        &st,
        "--token-ttl",
        "7d",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("key agent  token ")
            && out.contains("for cp-1 (control-plane) until ")
            && out.contains("registered with 2 addresses"),
        "{out}"
    );
    // The drive's node.toml: the admin's file with the fingerprint and a token filled in.
    let got = Command::new("mtype")
        .args(["-i", &drive_s, "::node.toml"])
        .output()
        .unwrap();
    let text = String::from_utf8(got.stdout).unwrap();
    assert!(
        text.starts_with("# cp-1, first of three\n") && text.contains("# the admin machine"),
        "{text}"
    );
    assert!(text.contains(&format!("ca-fingerprint = \"{fingerprint}\"")), "{text}");
    let token_line = text.lines().find(|l| l.starts_with("bootstrap-token = ")).unwrap();
    let token =
        cairn_keys::Token::parse(token_line.trim_start_matches("bootstrap-token = ").trim_matches('"')).unwrap();
    let (_, list, _) = cairn(&["token", "list", "--state", &st]);
    assert!(list.contains(token.id()) && list.contains("cp-1"), "{list}");
    let record = std::fs::read_to_string(tmp.path().join("ks/nodes/cp-1.json")).unwrap();
    assert!(record.contains("10.90.0.1"), "{record}");

    // Without [key-agent] server, or with a node.toml that does not validate: refused, and
    // the keyserver neither registers anything nor makes a token.
    for (name, body, says) in [
        (
            "no-server.toml",
            "version = 1\ngeneration = 1\nhostname = \"cp-2\"\n",
            "has no [key-agent] server",
        ),
        (
            "bad-host.toml",
            "version = 1\ngeneration = 1\nhostname = \"cp 2\"\n[key-agent]\nserver = \"https://10.0.0.5:8443\"\n",
            "is not a valid host name",
        ),
        (
            "http.toml",
            "version = 1\ngeneration = 1\nhostname = \"cp-2\"\n[key-agent]\nserver = \"http://10.0.0.5:8443\"\n",
            "https",
        ),
    ] {
        let f = tmp.path().join(name);
        std::fs::write(&f, body).unwrap();
        let out2 = tmp.path().join(format!("{name}.img"));
        let (ok, _, err) = cairn(&[
            "config-drive",
            &f.display().to_string(),
            "--out",
            &out2.display().to_string(),
            "--keyserver",
            &st,
        ]);
        assert!(!ok && err.contains(says), "{name}: {err}");
        assert!(!out2.exists(), "{name}");
    }
    // A good node.toml whose drive cannot be written (a directory or a FIFO where the image
    // goes: a USB stick's device node is refused the same way) or signed (no such key):
    // refused before the keyserver registers the node or makes its token.
    let good = tmp.path().join("cp-2.toml");
    std::fs::write(
        &good,
        "version = 1\ngeneration = 1\nhostname = \"cp-2\"\n[key-agent]\nserver = \"https://10.0.0.5:8443\"\n",
    )
    .unwrap();
    std::fs::create_dir(tmp.path().join("a-dir")).unwrap();
    assert!(Command::new("mkfifo")
        .arg(tmp.path().join("a-fifo"))
        .status()
        .unwrap()
        .success());
    let missing_key = tmp.path().join("no-such.key").display().to_string();
    for (target, extra, says) in [
        ("a-dir", vec![], "is a directory, not a file"),
        ("a-fifo", vec![], "is a FIFO, not a file"),
        (
            "cp-2.img",
            vec!["--sign", missing_key.as_str()],
            "reading the signing key",
        ),
    ] {
        let target = tmp.path().join(target).display().to_string();
        let mut args = vec![
            "config-drive",
            good.to_str().unwrap(),
            "--out",
            &target,
            "--keyserver",
            &st,
        ];
        args.extend(extra);
        let (ok, _, err) = cairn(&args);
        assert!(!ok && err.contains(says), "{target}: {err}");
    }
    assert!(tmp.path().join("a-dir").is_dir() && !tmp.path().join("cp-2.img").exists());
    let (_, list, _) = cairn(&["token", "list", "--state", &st]);
    assert_eq!(list.matches("cp-").count(), 1, "{list}");
    assert!(!tmp.path().join("ks/nodes/cp-2.json").exists());
}
