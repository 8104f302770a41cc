//! Text another program wrote (an agent's hostname, a journal record) on its way to an
//! operator's terminal: the one escaper, used by `outpost events` and `outpost-hub`.

/// `s` safe for a terminal: control characters (C0, DEL, C1) and bidirectional-text
/// overrides are written as escapes (`\x1b`, `\n`, `\u{9b}`, `\u{202e}`); everything else,
/// backslashes included, is kept. Every human-readable line with agent-supplied text goes
/// through this, so a hostname cannot move the cursor, recolour or retitle the terminal.
pub fn terminal_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let bidi = bidi_control(c);
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() || bidi => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Serialized JSON safe for a terminal: serde_json already escapes C0 controls; DEL, C1
/// controls and bidirectional overrides (which can only occur inside strings) become
/// `\uXXXX` escapes too, so the text stays valid JSON with the same value.
pub fn json_terminal_safe(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c == '\u{7f}' || ('\u{80}'..='\u{9f}').contains(&c) || bidi_control(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped() {
        for (i, want) in [
            ("plain host", "plain host"),
            ("a\u{1b}[2Jb", "a\\x1b[2Jb"),
            ("x\ry", "x\\ry"),
            ("ünïcode", "ünïcode"),
            ("\u{9b}31m", "\\u{9b}31m"),
            ("ab\u{202e}c", "ab\\u{202e}c"),
        ] {
            assert_eq!(terminal_safe(i), want, "{i:?}");
        }
        let j = json_terminal_safe(&serde_json::json!({"k": "\u{7f}\u{202e}"}).to_string());
        assert_eq!(j, r#"{"k":"\u007f\u202e"}"#);
        let back: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(back["k"], "\u{7f}\u{202e}");
    }
}
