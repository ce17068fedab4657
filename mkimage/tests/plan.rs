//! `cairn build --plan` is pinned by golden files: the plan is the one value the build
//! executes, so a change in what a build would do shows up here as a diff to review.
//! Run with `CAIRN_UPDATE_GOLDEN=1` to rewrite the files after an intended change.

mod common;

use std::fs;
use std::path::Path;

use common::{cairn, Fixture};

/// Compare `text` with `tests/golden/<name>`, or rewrite it when asked to.
fn golden(name: &str, text: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("CAIRN_UPDATE_GOLDEN").is_some() {
        fs::write(&path, text).unwrap();
        return;
    }
    let want = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if want != text {
        let diff: Vec<String> = want
            .lines()
            .zip(text.lines())
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("- {a}\n+ {b}"))
            .collect();
        panic!(
            "{name} differs from the plan printed now (CAIRN_UPDATE_GOLDEN=1 rewrites it):\n{}\n--- now ---\n{text}",
            diff.join("\n")
        );
    }
}

fn plan(f: &Fixture, args: &[&str]) -> String {
    let o = cairn()
        .current_dir(f.dir.path())
        .env("XDG_DATA_HOME", f.path("xdg"))
        .env_remove("SOURCE_DATE_EPOCH")
        .args(["build", "image.toml", "--plan"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .replace(&f.dir.path().display().to_string(), "<fixture>")
}

#[test]
fn the_plan_of_a_release_build() {
    let f = Fixture::new();
    golden("plan-release.txt", &plan(&f, &["--out", "out"]));
}

#[test]
fn command_line_overrides_win_and_show() {
    let f = Fixture::new();
    fs::create_dir(f.path("debug")).unwrap();
    let text = plan(
        &f,
        &[
            "--out",
            "out/dev",
            "--dev",
            "--image-version",
            "2.0~rc1",
            "--cmdline",
            "systemd.log_level=debug",
            "--overlay",
            "debug",
            "--next-key",
            "release.pub",
        ],
    );
    golden("plan-dev-overrides.txt", &text);
}

#[test]
fn a_bad_override_is_refused_before_anything_is_planned() {
    let f = Fixture::new();
    for (args, needle) in [
        (&["--image-version", "1+2"][..], "--image-version \"1+2\""),
        (&["--image-version", "1\n2"][..], "--image-version \"1\\n2\""),
        (&["--image-version", "../../x"][..], "--image-version"),
        (&["--cmdline", "quiet\nroothash=00"][..], "--cmdline"),
        (&["--cmdline", "roothash=00"][..], "--cmdline"),
        (&["--overlay", "missing"][..], "--overlay missing: not a directory"),
        (&["--next-key", "nowhere.pub"][..], "nowhere.pub"),
    ] {
        let o = cairn()
            .current_dir(f.dir.path())
            .env("XDG_DATA_HOME", f.path("xdg"))
            .args(["build", "image.toml", "--plan"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} was accepted");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// The default image's plan, with what depends on this machine masked: the lock's
/// resolution (it follows the mirror), the host's mirrors and the paths of the cache, the
/// development key and the node agent.
#[test]
fn the_default_image_plan() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let o = cairn()
        .current_dir(repo)
        .env("CAIRN_CACHE_DIR", tmp.path().join("cache"))
        .env("XDG_DATA_HOME", tmp.path().join("xdg"))
        .env_remove("SOURCE_DATE_EPOCH")
        .args(["build", "images/node.toml", "--plan"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bin = Path::new(env!("CARGO_BIN_EXE_cairn")).parent().unwrap();
    let text: String = String::from_utf8(o.stdout)
        .unwrap()
        .replace(&tmp.path().display().to_string(), "<tmp>")
        .replace(&bin.display().to_string(), "<target>")
        .lines()
        .map(|l| {
            let key = l.split_whitespace().next().unwrap_or("");
            match key {
                "lock" => {
                    format!(
                        "  lock         {}",
                        l.split(" (").next().unwrap().trim_start_matches("  lock").trim()
                    ) + " (<state>)"
                }
                "sources" => "  sources      <mirrors>".to_string(),
                _ => l.to_string(),
            }
        })
        .map(|l| l + "\n")
        .collect();
    golden("plan-default-image.txt", &text);
}
