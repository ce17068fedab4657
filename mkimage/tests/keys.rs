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
        out.contains("\"actor\":\"admin:alice\"") && out.ends_with("# 3 records, chain intact\n"),
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
