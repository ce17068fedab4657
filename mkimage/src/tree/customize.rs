//! Turn an installed Debian tree into an immutable image root, on the tree (nothing is
//! unpacked), so that the verified root is byte-identical on every node.
//!
//! * **Removed**: `/boot` contents and the `/vmlinuz*`, `/initrd.img*` links (the kernel
//!   and initrd travel in the UKI); SSH host keys (each node makes its own at first boot);
//!   `/etc/hostname` (set per node); apt's package lists and caches; log files.
//! * **Linked**: `/etc/machine-id` → `/run/cairn/machine-id`, which the initrd fills from
//!   the state partition (the same id across reboots and updates; see `rootfs/dracut`).
//! * **Linked**: `/etc/resolv.conf` → systemd-resolved's stub file when resolved is
//!   installed (the host's copy is never kept); `/root` → `var/roothome` and `/home` →
//!   `var/home`, so home directories (and root's SSH keys) live on the state partition.
//! * **Factory /var**: everything under `/var` moves to `/usr/share/factory/var`, and
//!   `/usr/lib/tmpfiles.d/cairn-factory-var.conf` copies it onto the state partition with
//!   `C` lines (and `d`/`L` lines for empty directories and links) — for paths no other
//!   tmpfiles.d file in the tree already manages.
//! * **Cairn's units**: every unit file of the `units/` directory goes to
//!   `/usr/lib/systemd/system`, presets to `/usr/lib/systemd/system-preset`, and each unit is
//!   enabled by the symlinks its `[Install]` section asks for.

use std::collections::BTreeSet;

use crate::ioerr::io_err;
use crate::tree::rootfs::{Tree, TreeError};

/// What customizing did, for the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomizeReport {
    /// Entries removed.
    pub removed: usize,
    /// Entries moved to the factory /var.
    pub factory_var: usize,
}

/// The tmpfiles.d file that lays the factory /var down.
pub const FACTORY_TMPFILES: &str = "usr/lib/tmpfiles.d/cairn-factory-var.conf";

/// Paths (second column) that tmpfiles.d lines in the given file texts *create*
/// (`f w d D v q Q p L c b C`, with or without `+`/`!`/`-`); lines that only adjust or
/// clean an existing path (`z Z t T h H a A x X r R e`) do not count.
pub fn tmpfiles_paths<'a>(texts: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for t in texts {
        for line in t.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(ty), Some(p)) = (words.next(), words.next()) else {
                continue;
            };
            if matches!(
                ty.chars().next(),
                Some('f' | 'F' | 'w' | 'd' | 'D' | 'v' | 'q' | 'Q' | 'p' | 'L' | 'c' | 'b' | 'C')
            ) {
                out.insert(p.trim_end_matches('/').to_string());
            }
        }
    }
    out
}

/// One entry of the factory /var, as tmpfiles needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarEntry {
    /// A top-level directory: created with its mode and owner.
    Dir {
        /// Path under /var.
        path: String,
        /// Mode bits.
        mode: u32,
        /// Owner.
        uid: u64,
        /// Group.
        gid: u64,
    },
    /// A symlink.
    Link {
        /// Path under /var.
        path: String,
        /// Target.
        target: String,
    },
    /// A file or a directory with content: copied from the factory.
    Copy {
        /// Path under /var.
        path: String,
    },
}

/// Render the tmpfiles.d lines for the factory /var, skipping paths other files manage.
pub fn render_factory_tmpfiles(entries: &[VarEntry], managed: &BTreeSet<String>) -> String {
    let mut s = String::from(
        "# Written by Cairn: lay the image's factory /var onto the state partition.\n\
         # Existing paths are left alone, so a node's data survives updates.\n",
    );
    for e in entries {
        let (path, line) = match e {
            VarEntry::Dir { path, mode, uid, gid } => (path, format!("d /var/{path} {mode:04o} {uid} {gid} -")),
            VarEntry::Link { path, target } => (path, format!("L /var/{path} - - - - {target}")),
            VarEntry::Copy { path } => (path, format!("C /var/{path} - - - - /usr/share/factory/var/{path}")),
        };
        if managed.contains(&format!("/var/{path}")) {
            continue;
        }
        s.push_str(&line);
        s.push('\n');
    }
    s
}

/// The targets a unit's `[Install]` section wants it in: `(target, "wants"|"requires")`.
pub fn install_targets(unit_text: &str) -> Vec<(String, &'static str)> {
    let mut section = "";
    let mut out = Vec::new();
    for line in unit_text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            section = if l == "[Install]" { "install" } else { "" };
            continue;
        }
        if section != "install" {
            continue;
        }
        if let Some((k, v)) = l.split_once('=') {
            let kind = match k.trim() {
                "WantedBy" => "wants",
                "RequiredBy" => "requires",
                _ => continue,
            };
            for t in v.split_whitespace() {
                out.push((t.to_string(), kind));
            }
        }
    }
    out
}

/// Whether an entry of an installed Debian tree must not ship in an immutable image:
/// `/boot`'s contents and the kernel links, SSH host keys, `/etc/hostname`, apt's lists
/// and caches, and log files (their directories stay).
pub fn not_in_an_image(path: &str, kind: &crate::tree::tarstream::Kind) -> bool {
    const EXACT: &[&str] = &["vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old", "etc/hostname"];
    EXACT.contains(&path)
        || path.starts_with("boot/")
        || path.starts_with("etc/ssh/ssh_host_")
        || (path.starts_with("var/lib/apt/lists/") && !path.ends_with("/partial") && path != "var/lib/apt/lists/lock")
        || (path.starts_with("var/cache/apt/") && path.ends_with(".bin"))
        || (path.starts_with("var/cache/apt/archives/") && path.ends_with(".deb"))
        || (path.starts_with("var/log/") && matches!(kind, crate::tree::tarstream::Kind::File(_)))
}

/// Apply the Debian-root rules to `tree` (see the module docs).
pub fn debian_root(tree: &mut Tree, epoch: u64) -> Result<CustomizeReport, TreeError> {
    let removed = tree.remove_where(|path, header| not_in_an_image(path, &header.kind));
    // Stable per node: the initrd puts the id the node saved on its state partition at
    // /run/cairn/machine-id (Cairn's dracut module); on a first boot systemd makes one there
    // and cairn-firstboot saves it.
    tree.add_symlink("etc/machine-id", "../run/cairn/machine-id", epoch)?;
    if tree.get("usr/lib/systemd/systemd-resolved").is_some() {
        tree.add_symlink("etc/resolv.conf", "../run/systemd/resolve/stub-resolv.conf", epoch)?;
    } else {
        tree.remove("etc/resolv.conf");
    }

    // Home directories live on the state partition: /root and /home become links.
    for (dir, target, mode) in [("root", "var/roothome", 0o700), ("home", "var/home", 0o755)] {
        if tree
            .get(dir)
            .is_some_and(|h| h.kind == crate::tree::tarstream::Kind::Dir)
        {
            tree.move_under(dir, target);
            tree.remove(dir);
            tree.ensure_dir(target, mode, epoch);
            tree.add_symlink(dir, target, epoch)?;
        }
    }

    // Factory /var.
    let mut texts = Vec::new();
    let confs: Vec<String> = tree
        .paths()
        .filter(|p| (p.starts_with("usr/lib/tmpfiles.d/") || p.starts_with("etc/tmpfiles.d/")) && p.ends_with(".conf"))
        .cloned()
        .collect();
    for c in confs {
        if let Some(b) = tree.read_file(&c)? {
            texts.push(String::from_utf8_lossy(&b).into_owned());
        }
    }
    let managed = tmpfiles_paths(texts.iter().map(String::as_str));
    let mut entries = Vec::new();
    let var_paths: Vec<String> = tree.paths().filter(|p| p.starts_with("var/")).cloned().collect();
    for p in &var_paths {
        let rel = &p["var/".len()..];
        let depth = rel.matches('/').count();
        let h = tree.get(p).expect("listed").clone();
        use crate::tree::tarstream::Kind;
        let entry = match (&h.kind, depth) {
            (Kind::Symlink(t), 0 | 1) => VarEntry::Link {
                path: rel.to_string(),
                target: t.clone(),
            },
            // Top-level directories are created with their mode and owner; their
            // children get their own lines.
            (Kind::Dir, 0) => VarEntry::Dir {
                path: rel.to_string(),
                mode: h.mode,
                uid: h.uid,
                gid: h.gid,
            },
            (_, 0 | 1) => VarEntry::Copy { path: rel.to_string() },
            _ => continue,
        };
        entries.push(entry);
    }
    tree.move_under("var", "usr/share/factory/var");
    tree.ensure_dir("usr/share/factory", 0o755, epoch);
    tree.ensure_dir("usr/share/factory/var", 0o755, epoch);
    tree.add_file(
        FACTORY_TMPFILES,
        0o644,
        render_factory_tmpfiles(&entries, &managed).into_bytes(),
        epoch,
    )?;
    Ok(CustomizeReport {
        removed,
        factory_var: var_paths.len(),
    })
}

/// A `systemd.preset(5)` verdict for `unit`: the first `enable`/`disable` line whose glob
/// matches wins; `None` when no line matches.
pub fn preset_verdict(presets: &str, unit: &str) -> Option<bool> {
    presets.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        let verdict = match w.next()? {
            "enable" => true,
            "disable" => false,
            _ => return None,
        };
        glob_match(w.next()?, unit).then_some(verdict)
    })
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len()).any(|i| rest.is_char_boundary(i) && glob_match(tail, &rest[i..]))
        }
    }
}

/// Install the unit files, drop-in directories (`NAME.d/*.conf`), presets and
/// `*.tmpfiles.conf` of `dir`, and enable the units the presets enable (every unit with an
/// `[Install]` section when `dir` has no preset). Returns what was installed.
pub fn install_units(tree: &mut Tree, dir: &std::path::Path, epoch: u64) -> Result<Vec<String>, TreeError> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(io_err("reading units from", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    let mut presets = String::new();
    for p in names.iter().filter(|p| p.extension().is_some_and(|e| e == "preset")) {
        presets.push_str(&std::fs::read_to_string(p).map_err(io_err("reading", p))?);
    }
    let mut installed = Vec::new();
    for path in names {
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        if path.is_dir() && name.ends_with(".d") {
            let mut confs: Vec<_> = std::fs::read_dir(&path)
                .map_err(io_err("reading drop-ins from", &path))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "conf"))
                .collect();
            confs.sort();
            for c in confs {
                let file = c
                    .file_name()
                    .expect("read_dir entries have names")
                    .to_string_lossy()
                    .into_owned();
                let text = std::fs::read(&c).map_err(io_err("reading", &c))?;
                tree.add_file(&format!("usr/lib/systemd/system/{name}/{file}"), 0o644, text, epoch)?;
                installed.push(format!("{name}/{file}"));
            }
            continue;
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let text = std::fs::read_to_string(&path).map_err(io_err("reading", &path))?;
        match ext {
            "service" | "timer" | "target" | "socket" | "path" | "mount" => {
                tree.add_file(
                    &format!("usr/lib/systemd/system/{name}"),
                    0o644,
                    text.clone().into_bytes(),
                    epoch,
                )?;
                let enable = presets.is_empty() || preset_verdict(&presets, &name) == Some(true);
                if enable {
                    for (target, kind) in install_targets(&text) {
                        tree.add_symlink(
                            &format!("etc/systemd/system/{target}.{kind}/{name}"),
                            &format!("/usr/lib/systemd/system/{name}"),
                            epoch,
                        )?;
                    }
                }
                installed.push(name);
            }
            "preset" => {
                tree.add_file(
                    &format!("usr/lib/systemd/system-preset/{name}"),
                    0o644,
                    text.into_bytes(),
                    epoch,
                )?;
            }
            "conf" if name.ends_with(".tmpfiles.conf") => {
                let base = name.trim_end_matches(".tmpfiles.conf");
                tree.add_file(
                    &format!("usr/lib/tmpfiles.d/{base}.conf"),
                    0o644,
                    text.into_bytes(),
                    epoch,
                )?;
            }
            _ => {}
        }
    }
    Ok(installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_first_match_wins() {
        let p = "# c\nenable cairn-health-*.service\nenable kubelet.service\ndisable *\n";
        assert_eq!(preset_verdict(p, "cairn-health-etcd.service"), Some(true));
        assert_eq!(preset_verdict(p, "kubelet.service"), Some(true));
        assert_eq!(preset_verdict(p, "other.service"), Some(false));
        assert_eq!(preset_verdict("enable a*b*c\n", "axxbyyc"), Some(true));
        assert_eq!(preset_verdict("enable a*b*c\n", "axxbyy"), None);
    }

    #[test]
    fn tmpfiles_paths_are_collected() {
        let p = tmpfiles_paths(
            ["# c\nd /var/log 0755 - - -\nL+ /var/run - - - - ../run\n\nf /var/log/wtmp 0664 root utmp -\nz /var/log/journal 2755\n"]
                .into_iter(),
        );
        assert_eq!(
            p.into_iter().collect::<Vec<_>>(),
            ["/var/log", "/var/log/wtmp", "/var/run"]
        );
    }

    #[test]
    fn factory_lines_golden() {
        let entries = vec![
            VarEntry::Dir {
                path: "mail".into(),
                mode: 0o2775,
                uid: 0,
                gid: 8,
            },
            VarEntry::Link {
                path: "run".into(),
                target: "/run".into(),
            },
            VarEntry::Copy {
                path: "lib/dpkg".into(),
            },
            VarEntry::Copy {
                path: "log/wtmp".into(),
            },
        ];
        let managed: BTreeSet<String> = ["/var/log/wtmp".to_string(), "/var/run".to_string()].into();
        let text = render_factory_tmpfiles(&entries, &managed);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "d /var/mail 2775 0 8 -",
                "C /var/lib/dpkg - - - - /usr/share/factory/var/lib/dpkg"
            ]
        );
    }

    #[test]
    fn what_an_image_must_not_carry() {
        use crate::tree::tarstream::Kind;
        let file = Kind::File(1);
        for p in [
            "boot/vmlinuz-6.1",
            "vmlinuz",
            "etc/hostname",
            "etc/ssh/ssh_host_rsa_key",
            "var/lib/apt/lists/x_Packages",
            "var/cache/apt/pkgcache.bin",
            "var/log/dpkg.log",
        ] {
            assert!(not_in_an_image(p, &file), "{p}");
        }
        for p in [
            "boot",
            "etc/ssh/sshd_config",
            "var/lib/apt/lists/partial",
            "var/lib/apt/lists/lock",
            "usr/bin/ls",
        ] {
            assert!(!not_in_an_image(p, &file), "{p}");
        }
        assert!(!not_in_an_image("var/log/journal", &Kind::Dir), "log directories stay");
    }

    #[test]
    fn install_sections() {
        let unit = "[Unit]\nWantedBy=nope.target\n[Install]\nWantedBy=multi-user.target graphical.target\nRequiredBy=x.service\nAlias=y\n";
        assert_eq!(
            install_targets(unit),
            [
                ("multi-user.target".to_string(), "wants"),
                ("graphical.target".to_string(), "wants"),
                ("x.service".to_string(), "requires")
            ]
        );
        assert!(install_targets("[Service]\nExecStart=/bin/true\n").is_empty());
    }
}
