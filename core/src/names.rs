//! Names outpost writes into units, `useradd` calls and user-data: the one validator.

/// POSIX-portable user/group name: `[a-z_][a-z0-9_-]{0,31}` (no trailing `$`, no uppercase).
pub fn valid_username(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

#[cfg(test)]
mod tests {
    #[test]
    fn username_table() {
        for (name, ok) in [
            ("outpost", true),
            ("_svc", true),
            ("deploy-1", true),
            ("a", true),
            ("", false),
            ("1abc", false),
            ("Alice", false),
            ("a b", false),
            ("a$", false),
            ("-a", false),
            (&"a".repeat(33), false),
        ] {
            assert_eq!(super::valid_username(name), ok, "{name:?}");
        }
    }
}
