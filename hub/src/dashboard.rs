//! The dashboard: one server-rendered HTML page that refreshes itself every 5 s.

use std::fmt::Write;

use crate::duration::format_age;
use crate::state::{AgentView, Status};

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#1f2328;background:#f6f8fa}\
h1{font-size:1.4rem;margin:0 0 .25rem}p.sub{color:#59636e;margin:0 0 1rem}\
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0002}\
th,td{text-align:left;padding:.45rem .7rem;border-bottom:1px solid #d1d9e0;font-size:.9rem}\
th{background:#eef1f4;font-weight:600}td.mono{font-family:ui-monospace,monospace;font-size:.8rem}\
.badge{display:inline-block;padding:.1rem .55rem;border-radius:1rem;font-size:.8rem;font-weight:600;color:#fff}\
.online{background:#1a7f37}.stale{background:#bf8700}.offline{background:#6e7781}.revoked{background:#cf222e}\
.flag{color:#cf222e;font-size:.8rem}.summary span{margin-right:1rem}";

/// Renders the dashboard for `agents`.
pub fn render(agents: &[AgentView], interval_secs: u64) -> String {
    let count = |s: Status| agents.iter().filter(|a| a.status == s).count();
    let mut h = String::with_capacity(1024 + agents.len() * 512);
    h.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta http-equiv=\"refresh\" content=\"5\"><meta name=\"viewport\" content=\"width=device-width\">");
    h.push_str("<title>outpost hub</title><style>");
    h.push_str(STYLE);
    h.push_str("</style></head><body><h1>outpost hub</h1>");
    let _ = write!(
        h,
        "<p class=\"sub summary\"><span>{} agents</span><span>{} online</span><span>{} stale</span><span>{} offline</span><span>{} revoked</span><span>heartbeat every {}s</span></p>",
        agents.len(),
        count(Status::Online),
        count(Status::Stale),
        count(Status::Offline),
        count(Status::Revoked),
        interval_secs
    );
    if agents.is_empty() {
        h.push_str("<p>No agents enrolled yet. Mint a key with <code>outpost-hub keys create --ttl 1h</code>.</p>");
    } else {
        h.push_str("<table><thead><tr><th>hostname</th><th>status</th><th>version</th><th>last heartbeat</th><th>distro</th><th>arch</th><th>kernel</th><th>mode</th><th>group</th><th>id</th></tr></thead><tbody>");
        for a in agents {
            let age = a
                .last_heartbeat_age_secs
                .map(|s| format!("{} ago", format_age(s)))
                .unwrap_or_else(|| "never".into());
            let status = a.status.as_str();
            let _ = write!(h, "<tr><td>{}", escape(&a.hostname));
            for f in &a.flags {
                let _ = write!(h, " <span class=\"flag\">{}</span>", escape(f));
            }
            let _ = write!(
                h,
                "</td><td><span class=\"badge {status}\">{status}</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
                escape(&a.version),
                escape(&age),
                escape(&a.distro),
                escape(&a.arch),
                escape(&a.kernel),
                escape(&a.mode),
                escape(a.group.as_deref().unwrap_or("")),
                escape(&a.id)
            );
        }
        h.push_str("</tbody></table>");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn renders_escaped_hostnames() {
        let v = AgentView {
            id: "a_1".into(),
            hostname: "<script>alert(1)</script>".into(),
            status: Status::Online,
            version: "1.0".into(),
            distro: String::new(),
            arch: String::new(),
            kernel: String::new(),
            mode: String::new(),
            group: None,
            labels: Default::default(),
            machine_id: String::new(),
            enrolled_at: String::new(),
            revoked_at: None,
            last_heartbeat_at: None,
            last_heartbeat_age_secs: Some(3),
            uptime_secs: None,
            capabilities: None,
            journal_head: None,
            last_upgrade: None,
            flags: vec![],
        };
        let html = render(&[v], 30);
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("badge online"));
    }
}
