//! `KEY=value` files (os-release(5), the secrets file `outpost.env`): the one parser of the
//! workspace. Shell-compatible: `export KEY=…`, `#` comments, `'…'` and `"…"` quoting.

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

#[cfg(test)]
mod tests {
    use super::*;

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
