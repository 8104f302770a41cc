//! URL checks shared by every crate (the one implementation): hub URLs, and whether a plain
//! `http://` host is loopback.

/// The host of `rest` (a URL after its `scheme://`): `None` when empty or when it carries
/// user info (`user@host`).
pub fn host_of(rest: &str) -> Option<&str> {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return None;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    (!host.is_empty()).then_some(host)
}

/// `localhost`, or an IP address in 127.0.0.0/8 or `::1`.
pub fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `url` is `https://HOST…`, or `http://` to a loopback host (pure).
pub fn https_or_loopback(url: &str) -> bool {
    match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => host_of(rest).is_some(),
        (_, Some(rest)) => host_of(rest).is_some_and(is_loopback),
        _ => false,
    }
}

/// Check a hub URL: `https://HOST…`, or `http://` only for a loopback host unless `insecure`
/// (pure; `Err` is the reason).
pub fn check_hub_url(url: &str, insecure: bool) -> Result<(), String> {
    if url
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c.is_control())
    {
        return Err("it contains blanks, quotes or control characters".into());
    }
    let (rest, plain) = if let Some(r) = url.strip_prefix("https://") {
        (r, false)
    } else if let Some(r) = url.strip_prefix("http://") {
        (r, true)
    } else {
        return Err("expected https://HOST[:PORT][/PATH]".into());
    };
    let Some(host) = host_of(rest) else {
        return Err("expected https://HOST[:PORT][/PATH] (no user name or password)".into());
    };
    if plain && !is_loopback(host) && !insecure {
        return Err(format!(
            "plain http:// to {host} would send the agent's token unencrypted; use https:// (http:// is accepted for loopback only, or with --insecure-http / [hub] insecure_http = true)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_url_table() {
        // (url, insecure, ok)
        let cases = [
            ("https://hub.example.com", false, true),
            ("https://hub.example.com:8443/base", false, true),
            ("http://127.0.0.1:8080", false, true),
            ("http://localhost:8080/x", false, true),
            ("http://[::1]:9000", false, true),
            ("http://hub.example.com", false, false),
            ("http://10.0.0.1:80", false, false),
            ("http://127.0.0.1.evil.com", false, false),
            ("http://127.0.0.1@evil.com", false, false),
            ("http://hub.example.com", true, true),
            ("ftp://x", false, false),
            ("https://", false, false),
            ("https://a b", false, false),
        ];
        for (url, insecure, ok) in cases {
            assert_eq!(check_hub_url(url, insecure).is_ok(), ok, "{url} {insecure}");
        }
    }

    #[test]
    fn https_or_loopback_table() {
        for (url, ok) in [
            ("https://ghe.example.com", true),
            ("http://127.0.0.1:9000", true),
            ("http://[::1]", true),
            ("http://localhost/x", true),
            ("http://ghe.example.com", false),
            ("http://localhost.evil.com", false),
            ("https://", false),
        ] {
            assert_eq!(https_or_loopback(url), ok, "{url}");
        }
    }
}
