//! A Debian package's declared license, read from its `/usr/share/doc/<name>/copyright`.
//!
//! Only machine-readable copyright files (DEP-5, "copyright-format 1.0") are read: the
//! first line of each `License:` field of a paragraph that has `Files:` (and of the header
//! paragraph) is a license synopsis such as `GPL-2+ or Artistic` or `GPL-2+ with Autoconf
//! exception`. Each synopsis becomes an SPDX expression: Debian's short names map to SPDX
//! identifiers through a fixed table; a name the table does not know becomes a
//! `LicenseRef-` of its own, never a guess. The package's declared license is the
//! conjunction of its distinct synopses. A file in any other form declares nothing we can
//! read: the SBOM says `NOASSERTION` for it rather than guessing from prose.
//!
//! Copyright files come from packages, i.e. from outside: the text may be anything
//! (binary, huge, odd characters). What reaches the SBOM is either an identifier from the
//! table or a `LicenseRef-` made only of `[A-Za-z0-9.-]`, at most [`MAX_REF`] long.

/// The largest copyright file read; bigger ones declare nothing we read.
pub const MAX_FILE: usize = 4 << 20;
/// The longest `LicenseRef-` identifier made from a synopsis (after the prefix).
pub const MAX_REF: usize = 64;

/// What a copyright file declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declared {
    /// An SPDX license expression, and the `LicenseRef-` identifiers it uses with the
    /// Debian name each stands for.
    Expression {
        /// The expression.
        spdx: String,
        /// `(LicenseRef-…, Debian's name)`, in the order they appear.
        refs: Vec<(String, String)>,
    },
    /// Nothing readable; why.
    NoAssertion(&'static str),
}

/// Debian short name (lower case) → SPDX identifier.
const LICENSES: &[(&str, &str)] = &[
    ("0bsd", "0BSD"),
    ("afl-2.1", "AFL-2.1"),
    ("agpl-3", "AGPL-3.0-only"),
    ("agpl-3+", "AGPL-3.0-or-later"),
    ("apache-2", "Apache-2.0"),
    ("apache-2.0", "Apache-2.0"),
    ("artistic", "Artistic-1.0-Perl"),
    ("artistic-1.0", "Artistic-1.0"),
    ("artistic-2.0", "Artistic-2.0"),
    ("beerware", "Beerware"),
    ("bsd-1-clause", "BSD-1-Clause"),
    ("bsd-2-clause", "BSD-2-Clause"),
    ("bsd-3-clause", "BSD-3-Clause"),
    ("bsd-4-clause", "BSD-4-Clause"),
    ("bsd-4-clause-uc", "BSD-4-Clause-UC"),
    ("bsl-1.0", "BSL-1.0"),
    ("bzip2-1.0.6", "bzip2-1.0.6"),
    ("cc-by-3.0", "CC-BY-3.0"),
    ("cc-by-4.0", "CC-BY-4.0"),
    ("cc-by-sa-3.0", "CC-BY-SA-3.0"),
    ("cc-by-sa-4.0", "CC-BY-SA-4.0"),
    ("cc0", "CC0-1.0"),
    ("cc0-1.0", "CC0-1.0"),
    ("curl", "curl"),
    ("expat", "MIT"),
    ("fsfap", "FSFAP"),
    ("fsful", "FSFUL"),
    ("fsfullr", "FSFULLR"),
    ("gfdl-1.2", "GFDL-1.2-only"),
    ("gfdl-1.2+", "GFDL-1.2-or-later"),
    ("gfdl-1.3", "GFDL-1.3-only"),
    ("gfdl-1.3+", "GFDL-1.3-or-later"),
    ("gfdl-niv-1.2", "GFDL-1.2-no-invariants-only"),
    ("gfdl-niv-1.2+", "GFDL-1.2-no-invariants-or-later"),
    ("gfdl-niv-1.3", "GFDL-1.3-no-invariants-only"),
    ("gfdl-niv-1.3+", "GFDL-1.3-no-invariants-or-later"),
    ("gpl-1", "GPL-1.0-only"),
    ("gpl-1+", "GPL-1.0-or-later"),
    ("gpl-2", "GPL-2.0-only"),
    ("gpl-2+", "GPL-2.0-or-later"),
    ("gpl-2.0", "GPL-2.0-only"),
    ("gpl-2.0+", "GPL-2.0-or-later"),
    ("gpl-3", "GPL-3.0-only"),
    ("gpl-3+", "GPL-3.0-or-later"),
    ("gpl-3.0", "GPL-3.0-only"),
    ("gpl-3.0+", "GPL-3.0-or-later"),
    ("gplv2", "GPL-2.0-only"),
    ("gplv2+", "GPL-2.0-or-later"),
    ("gplv3", "GPL-3.0-only"),
    ("gplv3+", "GPL-3.0-or-later"),
    ("isc", "ISC"),
    ("lgpl-2", "LGPL-2.0-only"),
    ("lgpl-2+", "LGPL-2.0-or-later"),
    ("lgpl-2.0", "LGPL-2.0-only"),
    ("lgpl-2.0+", "LGPL-2.0-or-later"),
    ("lgpl-2.1", "LGPL-2.1-only"),
    ("lgpl-2.1+", "LGPL-2.1-or-later"),
    ("lgpl-3", "LGPL-3.0-only"),
    ("lgpl-3+", "LGPL-3.0-or-later"),
    ("lgpl-3.0", "LGPL-3.0-only"),
    ("lgpl-3.0+", "LGPL-3.0-or-later"),
    ("lgplv2.1", "LGPL-2.1-only"),
    ("lgplv2.1+", "LGPL-2.1-or-later"),
    ("lgplv3", "LGPL-3.0-only"),
    ("lgplv3+", "LGPL-3.0-or-later"),
    ("libpng", "Libpng"),
    ("mit", "MIT"),
    ("mit-0", "MIT-0"),
    ("mpl-1.1", "MPL-1.1"),
    ("mpl-2.0", "MPL-2.0"),
    ("ntp", "NTP"),
    ("ofl-1.1", "OFL-1.1"),
    ("openldap-2.8", "OLDAP-2.8"),
    ("openssl", "OpenSSL"),
    ("psf-2", "PSF-2.0"),
    ("python-2.0", "Python-2.0"),
    ("sleepycat", "Sleepycat"),
    ("unicode-dfs-2016", "Unicode-DFS-2016"),
    ("unlicense", "Unlicense"),
    ("vim", "Vim"),
    ("wtfpl", "WTFPL"),
    ("x11", "X11"),
    ("zlib", "Zlib"),
];

/// Debian exception name (lower case, without "exception") → SPDX exception, for the
/// licenses it goes with (`None`: any).
const EXCEPTIONS: &[(&str, Option<&str>, &str)] = &[
    ("autoconf", Some("GPL-2.0"), "Autoconf-exception-2.0"),
    ("autoconf", Some("GPL-3.0"), "Autoconf-exception-3.0"),
    ("bison", None, "Bison-exception-2.2"),
    ("classpath", None, "Classpath-exception-2.0"),
    ("font", None, "Font-exception-2.0"),
    ("gcc-exception-3.1", None, "GCC-exception-3.1"),
    ("libtool", None, "Libtool-exception"),
    ("linux-syscall-note", None, "Linux-syscall-note"),
    ("llvm", None, "LLVM-exception"),
];

/// The SPDX identifier for a Debian short name, if the table has it.
pub fn spdx_id(debian: &str) -> Option<&'static str> {
    let l = debian.to_ascii_lowercase();
    LICENSES.iter().find(|(d, _)| *d == l).map(|(_, s)| *s)
}

/// What the copyright file `text` declares.
pub fn declared(text: &[u8]) -> Declared {
    if text.len() > MAX_FILE {
        return Declared::NoAssertion("the copyright file is larger than Cairn reads");
    }
    let text = String::from_utf8_lossy(text).replace('\r', "");
    let mut paragraphs = text
        .split('\n')
        .collect::<Vec<_>>()
        .split(|l| l.trim().is_empty())
        .filter(|p| !p.is_empty())
        .map(fields)
        .collect::<Vec<_>>()
        .into_iter();
    let Some(header) = paragraphs.next() else {
        return Declared::NoAssertion("the copyright file is empty");
    };
    let machine_readable = header
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("format") && v.contains("copyright-format"));
    if !machine_readable {
        return Declared::NoAssertion("the copyright file is not machine-readable (DEP-5)");
    }
    let mut synopses = Vec::new();
    let header_license = header.iter().find(|(k, _)| k.eq_ignore_ascii_case("license"));
    synopses.extend(header_license.map(|(_, v)| v.clone()));
    for p in paragraphs {
        let has_files = p.iter().any(|(k, _)| k.eq_ignore_ascii_case("files"));
        if !has_files {
            continue; // a stand-alone license text
        }
        synopses.extend(
            p.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("license"))
                .map(|(_, v)| v.clone()),
        );
    }
    let mut exprs: Vec<String> = Vec::new();
    let mut refs: Vec<(String, String)> = Vec::new();
    for s in synopses.iter().filter(|s| !s.trim().is_empty()) {
        let (e, r) = synopsis(s);
        if !exprs.contains(&e) {
            exprs.push(e);
        }
        for r in r {
            if !refs.iter().any(|(id, _)| *id == r.0) {
                refs.push(r);
            }
        }
    }
    match exprs.len() {
        0 => Declared::NoAssertion("the copyright file names no license"),
        1 => Declared::Expression {
            spdx: exprs.remove(0),
            refs,
        },
        _ => Declared::Expression {
            spdx: exprs
                .iter()
                .map(|e| if e.contains(' ') { format!("({e})") } else { e.clone() })
                .collect::<Vec<_>>()
                .join(" AND "),
            refs,
        },
    }
}

/// A deb822 paragraph's fields: name and the first line of the value.
fn fields(lines: &[&str]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|l| !l.starts_with([' ', '\t', '#']))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// One synopsis as an SPDX expression and the references it made. Commas group: `A or
/// B, and C` is `(A OR B) AND C`; inside a group `and` binds tighter than `or`, as in
/// SPDX, so the operators carry over.
fn synopsis(s: &str) -> (String, Vec<(String, String)>) {
    let mut refs = Vec::new();
    let mut groups = Vec::new();
    for (i, group) in s.split(',').enumerate() {
        let mut words: Vec<&str> = group.split_whitespace().collect();
        let mut joiner = "AND";
        if i > 0 {
            match words.first().map(|w| w.to_ascii_lowercase()) {
                Some(w) if w == "or" => {
                    joiner = "OR";
                    words.remove(0);
                }
                Some(w) if w == "and" => {
                    words.remove(0);
                }
                _ => {}
            }
        }
        if words.is_empty() {
            continue;
        }
        let mut out = Vec::new();
        let mut term: Vec<&str> = Vec::new();
        let mut flush = |term: &mut Vec<&str>, out: &mut Vec<String>| {
            if !term.is_empty() {
                out.push(license_term(&term.join(" "), &mut refs));
                term.clear();
            }
        };
        for w in words {
            match w.to_ascii_lowercase().as_str() {
                "or" | "and/or" => {
                    flush(&mut term, &mut out);
                    out.push("OR".into());
                }
                "and" => {
                    flush(&mut term, &mut out);
                    out.push("AND".into());
                }
                _ => term.push(w),
            }
        }
        flush(&mut term, &mut out);
        // Operators with nothing on one side ("GPL-2 or", "and MIT") are dropped.
        let mut clean: Vec<String> = Vec::new();
        for t in out {
            let op = t == "OR" || t == "AND";
            if op && clean.last().is_none_or(|l| l == "OR" || l == "AND") {
                continue;
            }
            clean.push(t);
        }
        while clean.last().is_some_and(|l| l == "OR" || l == "AND") {
            clean.pop();
        }
        if clean.is_empty() {
            continue;
        }
        groups.push((joiner, clean.join(" ")));
    }
    let n = groups.len();
    let mut expr = String::new();
    for (i, (joiner, g)) in groups.into_iter().enumerate() {
        if i > 0 {
            expr.push_str(&format!(" {joiner} "));
        }
        if n > 1 && g.contains(' ') {
            expr.push_str(&format!("({g})"));
        } else {
            expr.push_str(&g);
        }
    }
    if expr.is_empty() {
        // Only operators and commas: name it as it was written.
        expr = license_ref(s, &mut refs);
    }
    (expr, refs)
}

/// One license term (`GPL-2+`, `GPL-2+ with Autoconf exception`, `public-domain`) as
/// an SPDX identifier, `ID WITH EXCEPTION`, or a `LicenseRef-`.
fn license_term(term: &str, refs: &mut Vec<(String, String)>) -> String {
    let words: Vec<&str> = term.split_whitespace().collect();
    if let [one] = words.as_slice() {
        if let Some(id) = spdx_id(one) {
            return id.to_string();
        }
    }
    if let Some(at) = words.iter().position(|w| w.eq_ignore_ascii_case("with")) {
        if let ([license], rest) = (&words[..at], &words[at + 1..]) {
            let mut exception = rest.join(" ").to_ascii_lowercase();
            if let Some(e) = exception.strip_suffix(" exception") {
                exception = e.to_string();
            }
            if let Some(id) = spdx_id(license) {
                let family = id.trim_end_matches("-only").trim_end_matches("-or-later");
                let known = EXCEPTIONS
                    .iter()
                    .find(|(e, for_license, _)| *e == exception && for_license.is_none_or(|f| f == family));
                if let Some((_, _, ex)) = known {
                    return format!("{id} WITH {ex}");
                }
            }
        }
    }
    license_ref(term, refs)
}

/// A `LicenseRef-` for a name the table does not know, recorded in `refs`.
fn license_ref(name: &str, refs: &mut Vec<(String, String)>) -> String {
    let mut id = String::new();
    for c in name.chars() {
        let c = match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '.' => Some(c),
            '+' => {
                id.push_str("-plus");
                None
            }
            _ => Some('-'),
        };
        if let Some(c) = c {
            if !(c == '-' && (id.is_empty() || id.ends_with('-'))) {
                id.push(c);
            }
        }
    }
    let mut id: String = id.trim_matches('-').chars().take(MAX_REF).collect();
    while id.ends_with('-') {
        id.pop();
    }
    if id.is_empty() {
        id = "unnamed".into();
    }
    let id = format!("LicenseRef-{id}");
    let shown: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect::<String>()
        .trim()
        .to_string();
    if !refs.iter().any(|(r, _)| *r == id) {
        refs.push((id.clone(), shown));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(text: &str) -> String {
        match declared(text.as_bytes()) {
            Declared::Expression { spdx, .. } => spdx,
            Declared::NoAssertion(why) => format!("NOASSERTION: {why}"),
        }
    }

    const HEAD: &str =
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: x\n\n";

    #[test]
    fn files_paragraphs_make_one_conjunction() {
        let t = format!(
            "{HEAD}Files: *\nCopyright: 2020 A\nLicense: BSD-3-clause or GPL-2\n\nFiles: lib/*\nCopyright: B\nLicense: Expat\n\nFiles: x/*\nLicense: BSD-3-clause or GPL-2\n\nLicense: Expat\n Permission is hereby granted\n .\n License: GPL-3 (in the text, not a field)\n"
        );
        assert_eq!(expr(&t), "(BSD-3-Clause OR GPL-2.0-only) AND MIT");
    }

    #[test]
    fn exceptions_commas_and_unknown_names() {
        let cases = [
            (
                "GPL-2+ with Autoconf exception",
                "GPL-2.0-or-later WITH Autoconf-exception-2.0",
            ),
            (
                "GPL-3+ with Autoconf exception",
                "GPL-3.0-or-later WITH Autoconf-exception-3.0",
            ),
            (
                "GPL-2 with Linux-syscall-note exception",
                "GPL-2.0-only WITH Linux-syscall-note",
            ),
            ("Apache-2.0 with LLVM exception", "Apache-2.0 WITH LLVM-exception"),
            (
                "GPL-2+ with OpenSSL exception",
                "LicenseRef-GPL-2-plus-with-OpenSSL-exception",
            ),
            ("GPL-1+ or Artistic", "GPL-1.0-or-later OR Artistic-1.0-Perl"),
            (
                "GPL-2+ or Artistic-2.0, and BSD-3-clause",
                "(GPL-2.0-or-later OR Artistic-2.0) AND BSD-3-Clause",
            ),
            ("LGPL-3+ or GPL-2+", "LGPL-3.0-or-later OR GPL-2.0-or-later"),
            ("public-domain", "LicenseRef-public-domain"),
            ("BSD (3 clause)", "LicenseRef-BSD-3-clause"),
            ("MIT and/or ISC", "MIT OR ISC"),
            ("or GPL-2 and", "GPL-2.0-only"),
            (", or ,", "LicenseRef-or"),
        ];
        for (synopsis, want) in cases {
            let t = format!("{HEAD}Files: *\nCopyright: x\nLicense: {synopsis}\n");
            assert_eq!(expr(&t), want, "{synopsis}");
        }
    }

    #[test]
    fn unreadable_files_declare_nothing() {
        assert!(expr("This package was debianized by ...\nLicense: GPL\n").starts_with("NOASSERTION"));
        assert!(expr("").starts_with("NOASSERTION"));
        assert!(expr(&format!("{HEAD}Files: *\nCopyright: x\n")).starts_with("NOASSERTION"));
        let huge = format!("{HEAD}Files: *\nLicense: MIT\n{}", " x\n".repeat(MAX_FILE / 3 + 1));
        assert!(expr(&huge).starts_with("NOASSERTION"));
    }

    #[test]
    fn hostile_names_stay_inside_the_reference_alphabet() {
        let nasty = "GPL\u{0}\"}\n ../../etc\u{202e} <script>";
        let t = format!("{HEAD}Files: *\nLicense: {nasty}{}\n", "x".repeat(500));
        let Declared::Expression { spdx, refs } = declared(t.as_bytes()) else {
            panic!("expected an expression")
        };
        assert!(spdx.starts_with("LicenseRef-"), "{spdx}");
        let id = spdx.trim_start_matches("LicenseRef-");
        assert!(id.len() <= MAX_REF, "{id}");
        assert!(
            id.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'),
            "{id}"
        );
        assert_eq!(refs.len(), 1);
        assert!(!refs[0].1.chars().any(char::is_control), "{:?}", refs[0].1);
        // Binary junk.
        let mut bin = HEAD.as_bytes().to_vec();
        bin.extend(b"Files: *\nLicense: \xff\xfe\x00MIT\n");
        assert!(matches!(declared(&bin), Declared::Expression { .. }));
    }
}
