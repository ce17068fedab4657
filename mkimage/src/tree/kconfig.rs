//! Kernel configuration requirements: `kernel-config/cairn.config` against a kernel's
//! `.config`.
//!
//! The fragment is a list of `CONFIG_X=y` (must be built in) and `CONFIG_X=m` (built in or
//! a module) lines, grouped by `# class: NAME` comments. A kernel config is read the way
//! Kconfig writes it: `CONFIG_X=value`, and `# CONFIG_X is not set` for an option that is
//! off. The fragment is embedded in the binary, so `cairn` checks without the repository.

use std::collections::HashMap;

/// Cairn's requirements, as shipped in `kernel-config/cairn.config`.
pub const CAIRN_FRAGMENT: &str = include_str!("../../../kernel-config/cairn.config");

/// How an option must be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `=y`: built in.
    BuiltIn,
    /// `=m`: built in or a module.
    Available,
}

/// One required option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// `CONFIG_…` name.
    pub option: String,
    /// How it must be set.
    pub level: Level,
    /// The group it belongs to.
    pub class: String,
}

/// A fragment line that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("kernel config fragment line {line}: '{text}' is not CONFIG_NAME=y, CONFIG_NAME=m or a module path")]
pub struct FragmentError {
    /// 1-based line.
    pub line: usize,
    /// The text.
    pub text: String,
}

/// Parse a requirements fragment.
pub fn parse_fragment(text: &str) -> Result<Vec<Requirement>, FragmentError> {
    let mut class = "general".to_string();
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if let Some(c) = l.strip_prefix("# class:") {
            class = c.trim().to_string();
            continue;
        }
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let bad = || FragmentError {
            line: i + 1,
            text: l.to_string(),
        };
        let (name, value) = l.split_once('=').ok_or_else(bad)?;
        if !name.starts_with("CONFIG_") || !name[7..].chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad());
        }
        let level = match value {
            "y" => Level::BuiltIn,
            "m" => Level::Available,
            _ => return Err(bad()),
        };
        out.push(Requirement {
            option: name.to_string(),
            level,
            class: class.clone(),
        });
    }
    Ok(out)
}

/// The `# keep:` module rules of each class, in fragment order: `(class, rules)`. A rule
/// is a module file (`….ko`) or a directory (`…/`) relative to `/usr/lib/modules/<version>/`.
pub fn parse_keep(text: &str) -> Result<Vec<(String, Vec<String>)>, FragmentError> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut class = "general".to_string();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if let Some(c) = l.strip_prefix("# class:") {
            class = c.trim().to_string();
            continue;
        }
        let Some(rules) = l.strip_prefix("# keep:") else {
            continue;
        };
        for r in rules.split_whitespace() {
            if let Err(why) = valid_keep_rule(r) {
                return Err(FragmentError {
                    line: i + 1,
                    text: format!("{r}: {why}"),
                });
            }
            match out.iter_mut().find(|(c, _)| *c == class) {
                Some((_, v)) => v.push(r.to_string()),
                None => out.push((class.clone(), vec![r.to_string()])),
            }
        }
    }
    Ok(out)
}

/// A module keep rule: a relative path under `kernel/` (or `updates/`, `extra/`) naming a
/// `.ko` file or a directory ending in `/`.
pub fn valid_keep_rule(r: &str) -> Result<(), &'static str> {
    if !["kernel/", "updates/", "extra/"].iter().any(|p| r.starts_with(p)) {
        return Err("module paths start with kernel/ (relative to /usr/lib/modules/<version>/)");
    }
    if r.split('/').any(|c| c == ".." || c == ".") || r.contains("//") {
        return Err("no '.', '..' or empty path components");
    }
    if !(r.ends_with('/') || r.ends_with(".ko")) {
        return Err("name a module file (….ko) or a directory (ending in /)");
    }
    Ok(())
}

/// The options a kernel config sets, with their values (`y`, `m`, strings, numbers).
pub fn parse_config(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| l.starts_with("CONFIG_"))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// A requirement the config does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The requirement.
    pub requirement: Requirement,
    /// What the config has (`None`: not set).
    pub found: Option<String>,
}

/// Check a config against requirements; returns what is missing, in fragment order.
pub fn check(reqs: &[Requirement], config: &HashMap<String, String>) -> Vec<Missing> {
    reqs.iter()
        .filter_map(|r| {
            let have = config.get(&r.option);
            let ok = matches!(
                (r.level, have.map(String::as_str)),
                (Level::BuiltIn, Some("y")) | (Level::Available, Some("y" | "m"))
            );
            (!ok).then(|| Missing {
                requirement: r.clone(),
                found: have.cloned(),
            })
        })
        .collect()
}

/// One line per missing option: `CONFIG_X (class): want y, found m`.
pub fn render_missing(missing: &[Missing]) -> String {
    missing
        .iter()
        .map(|m| {
            let want = match m.requirement.level {
                Level::BuiltIn => "built in (=y)",
                Level::Available => "built in or a module (=y or =m)",
            };
            format!(
                "  {} ({}): needs {want}, found {}",
                m.requirement.option,
                m.requirement.class,
                m.found.as_deref().map_or("not set".to_string(), |v| format!("={v}"))
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_parses_with_classes() {
        let r = parse_fragment("# x\n# class: verity\nCONFIG_DM_VERITY=m\n\nCONFIG_EFI=y\n").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].option.as_str(), r[0].level, r[0].class.as_str()),
            ("CONFIG_DM_VERITY", Level::Available, "verity")
        );
        assert_eq!(r[1].level, Level::BuiltIn);
        assert_eq!(
            parse_fragment("CONFIG_X=n\n").unwrap_err(),
            FragmentError {
                line: 1,
                text: "CONFIG_X=n".into()
            }
        );
        assert!(parse_fragment("DM_VERITY=m\n").is_err());
        assert!(!parse_fragment(CAIRN_FRAGMENT).unwrap().is_empty());
    }

    #[test]
    fn keep_rules_group_by_class() {
        let k = parse_keep("# class: a\n# keep: kernel/x/ kernel/y.ko\nCONFIG_A=m\n# class: b\n# keep: kernel/z/\n")
            .unwrap();
        assert_eq!(
            k,
            [
                (
                    "a".to_string(),
                    vec!["kernel/x/".to_string(), "kernel/y.ko".to_string()]
                ),
                ("b".to_string(), vec!["kernel/z/".to_string()])
            ]
        );
        let e = parse_keep("\n# keep: kernel/x\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(parse_keep("# keep: drivers/x/\n").is_err());
        assert!(parse_keep("# keep: kernel/../x/\n").is_err());
        let shipped = parse_keep(CAIRN_FRAGMENT).unwrap();
        let classes: Vec<&str> = shipped.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(
            classes,
            [
                "boot",
                "verity",
                "storage",
                "containers",
                "network",
                "kube-proxy",
                "hardware"
            ]
        );
    }

    #[test]
    fn check_levels() {
        let reqs = parse_fragment("CONFIG_A=y\nCONFIG_B=m\nCONFIG_C=m\nCONFIG_D=y\n").unwrap();
        let config = parse_config("CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=m\n");
        let missing = check(&reqs, &config);
        let names: Vec<&str> = missing.iter().map(|m| m.requirement.option.as_str()).collect();
        assert_eq!(names, ["CONFIG_C", "CONFIG_D"]);
        let text = render_missing(&missing);
        assert!(
            text.contains("CONFIG_C (general): needs built in or a module (=y or =m), found not set"),
            "{text}"
        );
        assert!(
            text.contains("CONFIG_D (general): needs built in (=y), found =m"),
            "{text}"
        );
    }
}
