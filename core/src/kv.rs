//! `KEY=value` files (os-release(5), the secrets file `outpost.env`): the one parser of the
//! workspace, and the one editor of the secrets file ([`scrub_env_key`]). Shell-compatible:
//! `export KEY=…`, `#` comments, `'…'` and `"…"` quoting.
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One `KEY=value` line → `(KEY, unquoted value)`; `None` for blanks, comments and garbage.
pub fn assignment(line: &str) -> Option<(&str, String)> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let line = line
        .strip_prefix("export ")
        .map(str::trim_start)
        .unwrap_or(line);
    let (key, raw) = line.split_once('=')?;
    let valid_key = key
        .chars()
        .enumerate()
        .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
    if key.is_empty() || !valid_key {
        return None;
    }
    Some((key, unquote(raw)?))
}

/// Shell word unquoting: `'…'` literal, `"…"` with `\"` `\\` `\$` `` \` `` escapes, bare
/// `\x` → `x`. The value ends at the first unquoted blank (anything after it, e.g. a
/// trailing `# comment`, is ignored). `None` for an unterminated quote.
fn unquote(raw: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next()? {
                    '\'' => break,
                    c => out.push(c),
                }
            },
            '"' => loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => match chars.next()? {
                        c @ ('"' | '\\' | '$' | '`') => out.push(c),
                        '\n' => {}
                        c => {
                            out.push('\\');
                            out.push(c);
                        }
                    },
                    c => out.push(c),
                }
            },
            '\\' => {
                if let Some(c) = chars.next() {
                    out.push(c);
                }
            }
            c if c.is_whitespace() => break,
            c => out.push(c),
        }
    }
    Some(out)
}

#[derive(Debug, thiserror::Error)]
#[error("cannot remove the used enrollment key from {path}: {reason}")]
pub struct ScrubError {
    pub path: PathBuf,
    pub reason: String,
}

impl ScrubError {
    pub fn hint(&self) -> String {
        format!(
            "the key is used up and harmless, but delete the {} line from {} by hand \
             (the service cannot write it: ProtectSystem= or file ownership)",
            crate::env::ENROLL_KEY,
            self.path.display()
        )
    }
}

/// Is `line` an assignment of `var` in an EnvironmentFile (`VAR=…`, `export VAR=…`)?
fn assigns(line: &str, var: &str) -> bool {
    let l = line.trim_start();
    let l = l.strip_prefix("export ").map(str::trim_start).unwrap_or(l);
    l.split_once('=').is_some_and(|(k, _)| k.trim_end() == var)
}

/// Remove every `var=` line from `path`, keeping all other lines byte for byte and the file's
/// mode and owner. Returns whether something was removed (a file without the line is left
/// untouched).
pub fn scrub_env_key(path: &Path, var: &str) -> Result<bool, ScrubError> {
    let err = |reason: String| ScrubError {
        path: path.to_path_buf(),
        reason,
    };
    let meta = fs_err::metadata(path).map_err(|e| err(e.kind().to_string()))?;
    let text = fs_err::read_to_string(path).map_err(|e| err(e.kind().to_string()))?;
    let kept: String = text
        .split_inclusive('\n')
        .filter(|l| !assigns(l, var))
        .collect();
    if kept.len() == text.len() {
        return Ok(false);
    }
    let me = rustix::process::getuid().as_raw();
    let owner = (meta.uid() != me).then(|| (meta.uid(), meta.gid()));
    crate::atomic::write_atomic(path, kept.as_bytes(), meta.mode() & 0o7777, owner)
        .map_err(|e| err(e.kind().to_string()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    #[test]
    fn scrub_table() {
        let cases: &[(&str, &str, bool)] = &[
            (
                "# c\nOUTPOST_ENROLL_KEY=k1\nOTHER=1\n",
                "# c\nOTHER=1\n",
                true,
            ),
            (
                "A=1\n  export OUTPOST_ENROLL_KEY = \"k\"\nB=2",
                "A=1\nB=2",
                true,
            ),
            ("OUTPOST_ENROLL_KEY=k", "", true),
            (
                "OUTPOST_ENROLL_KEY_OLD=x\n#OUTPOST_ENROLL_KEY=y\nA=OUTPOST_ENROLL_KEY=z\n",
                "OUTPOST_ENROLL_KEY_OLD=x\n#OUTPOST_ENROLL_KEY=y\nA=OUTPOST_ENROLL_KEY=z\n",
                false,
            ),
            (
                "X=1\r\nOUTPOST_ENROLL_KEY=k\r\nY=2\r\n",
                "X=1\r\nY=2\r\n",
                true,
            ),
            ("", "", false),
        ];
        for (mode, (before, after, removed)) in [0o600u32, 0o640].into_iter().cycle().zip(cases) {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("outpost.env");
            std::fs::write(&p, before).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(
                scrub_env_key(&p, crate::env::ENROLL_KEY).unwrap(),
                *removed,
                "{before:?}"
            );
            assert_eq!(&std::fs::read_to_string(&p).unwrap(), after, "{before:?}");
            assert_eq!(
                std::fs::metadata(&p).unwrap().mode() & 0o777,
                mode,
                "{before:?}"
            );
            assert_eq!(
                std::fs::read_dir(d.path()).unwrap().count(),
                1,
                "temp file left"
            );
        }
    }

    #[test]
    fn scrub_unwritable_dir_is_an_error_with_hint() {
        // A directory nobody can create files in, even root (this suite runs as root in CI,
        // where chmod would not stop it): the file seen through /proc/self/fd.
        use std::os::fd::AsRawFd;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("outpost.env");
        std::fs::write(&p, "A=1\nOUTPOST_ENROLL_KEY=k\n").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let via_proc = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
        let e = scrub_env_key(&via_proc, crate::env::ENROLL_KEY).unwrap_err();
        assert!(e.hint().contains("by hand"), "{}", e.hint());
        assert!(!e.to_string().contains("OUTPOST_ENROLL_KEY=k"));
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "A=1\nOUTPOST_ENROLL_KEY=k\n"
        );
    }

    #[test]
    fn missing_file_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(scrub_env_key(&d.path().join("none"), "X").is_err());
    }

    #[test]
    fn assignment_table() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("ID=debian", Some(("ID", "debian"))),
            (
                "export OUTPOST_ENROLL_KEY=abc",
                Some(("OUTPOST_ENROLL_KEY", "abc")),
            ),
            (
                "  PRETTY_NAME=\"Debian GNU/Linux 12\"",
                Some(("PRETTY_NAME", "Debian GNU/Linux 12")),
            ),
            ("K='a b'", Some(("K", "a b"))),
            ("K=\"q \\\" k\"", Some(("K", "q \" k"))),
            ("K=v # comment", Some(("K", "v"))),
            ("K=", Some(("K", ""))),
            ("# K=v", None),
            ("", None),
            ("9K=v", None),
            ("K-X=v", None),
            ("K=\"unterminated", None),
            ("garbage", None),
        ];
        for (line, want) in cases {
            let got = assignment(line);
            assert_eq!(
                got.as_ref().map(|(k, v)| (*k, v.as_str())),
                *want,
                "{line:?}"
            );
        }
    }
}
