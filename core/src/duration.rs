//! Human durations: "90s", "30m", "1h", "2d" (a bare number is seconds): the one parser, for
//! the hub's flags and the packs' limits.

/// Parses a duration into seconds; `None` when malformed, zero or absurdly large.
pub fn parse_secs(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1),
        (i, 'm') => (&s[..i], 60),
        (i, 'h') => (&s[..i], 3600),
        (i, 'd') => (&s[..i], 86_400),
        (_, c) if c.is_ascii_digit() => (s, 1),
        _ => return None,
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    let secs = n.checked_mul(mult)?;
    (secs > 0 && secs <= 10 * 365 * 86_400).then_some(secs)
}

/// Formats an age compactly: "42s", "5m", "3h", "2d".
pub fn format_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse_secs("90s"), Some(90));
        assert_eq!(parse_secs("30m"), Some(1800));
        assert_eq!(parse_secs("1h"), Some(3600));
        assert_eq!(parse_secs("2d"), Some(172_800));
        assert_eq!(parse_secs("45"), Some(45));
        for bad in [
            "",
            "h",
            "0s",
            "-1h",
            "1.5h",
            "1w",
            "1 h",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_secs(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_age(5), "5s");
        assert_eq!(format_age(600), "10m");
        assert_eq!(format_age(7200), "2h");
        assert_eq!(format_age(200_000), "2d");
    }
}
