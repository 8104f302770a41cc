//! The HTML pages: the dashboard (one server-rendered page that refreshes itself every
//! 5 s), the login form and error pages. No scripts; everything agent-supplied is escaped.

use std::fmt::Write;

use crate::duration::format_age;
use crate::state::{AgentView, Status};
use crate::web::{csrf_field, post_button, Session};
use outpost_proto::{AgentPack, CatalogState, PackTrust, PackView};

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
.online{background:#1a7f37}.trusted{background:#1a7f37}.pending{background:#bf8700}.drifted{background:#cf222e}nav a{margin-right:1rem}form.trust{display:inline}form.trust button{font:inherit;padding:.1rem .6rem;cursor:pointer}.stale{background:#bf8700}.offline{background:#6e7781}.revoked{background:#cf222e}\
.flag{color:#cf222e;font-size:.8rem}.summary span{margin-right:1rem}\
header{display:flex;justify-content:space-between;align-items:baseline}form.logout button,form.login button{font:inherit;padding:.3rem .9rem;cursor:pointer}\
form.login{background:#fff;box-shadow:0 1px 2px #0002;padding:1.2rem;max-width:26rem}form.login label{display:block;margin:0 0 .4rem;font-weight:600}\
form.login input[type=password]{width:100%;box-sizing:border-box;padding:.4rem;margin:0 0 .8rem;font:inherit}p.error{color:#cf222e;font-weight:600}";

fn head(h: &mut String, title: &str, refresh: bool) {
    h.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    if refresh {
        h.push_str("<meta http-equiv=\"refresh\" content=\"5\">");
    }
    h.push_str("<meta name=\"viewport\" content=\"width=device-width\"><title>");
    h.push_str(&escape(title));
    h.push_str("</title><style>");
    h.push_str(STYLE);
    h.push_str("</style></head><body>");
}

/// The login form; `error` is shown above it (after a wrong token).
pub fn render_login(form: &Session, error: Option<&str>) -> String {
    let mut h = String::with_capacity(2048);
    head(&mut h, "outpost hub: log in", false);
    h.push_str("<h1>outpost hub</h1><p class=\"sub\">Log in with the hub's admin token (OUTPOST_HUB_ADMIN_TOKEN or --admin-token-file).</p>");
    if let Some(e) = error {
        let _ = write!(h, "<p class=\"error\" id=\"login-error\">{}</p>", escape(e));
    }
    let _ = write!(
        h,
        "<form method=\"post\" action=\"/login\" class=\"login\">{}<label for=\"token\">admin token</label><input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"current-password\" required autofocus><button type=\"submit\" id=\"login\">log in</button></form>",
        csrf_field(form)
    );
    h.push_str("</body></html>\n");
    h
}

/// A page with one message and a hint (errors, refusals).
pub fn render_message(message: &str, hint: &str) -> String {
    let mut h = String::with_capacity(1024);
    head(&mut h, "outpost hub", false);
    let _ = writeln!(
        h,
        "<h1>outpost hub</h1><p class=\"error\" id=\"message\">{}</p><p>{}</p><p><a href=\"/\">dashboard</a> · <a href=\"/login\">log in</a></p></body></html>",
        escape(message),
        escape(hint)
    );
    h
}

/// Renders the dashboard for `agents`, for the admin `session` (its logout button).
pub fn render(agents: &[AgentView], interval_secs: u64, session: &Session) -> String {
    let count = |s: Status| agents.iter().filter(|a| a.status == s).count();
    let mut h = String::with_capacity(2048 + agents.len() * 512);
    head(&mut h, "outpost hub", true);
    header(&mut h, session);
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
            let _ = write!(
                h,
                "<tr><td><a href=\"/agents/{}\">{}</a>",
                escape(&a.id),
                escape(&a.hostname)
            );
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

/// The page header: title, navigation, logout button.
fn header(h: &mut String, session: &Session) {
    let _ = write!(
        h,
        "<header><h1>outpost hub</h1>{}</header><nav><a href=\"/\">agents</a><a href=\"/packs\" id=\"nav-packs\">packs</a></nav>",
        post_button(session, "/logout", "log out", "logout")
    );
}

/// The short form of a sha256 shown in tables (the full one is the cell's title).
fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// The Packs page: every (name, sha256) seen, pending first, each pending one with a Trust
/// button (a CSRF-protected POST form).
pub fn render_packs(packs: &[PackView], session: &Session) -> String {
    let mut h = String::with_capacity(2048 + packs.len() * 512);
    head(&mut h, "outpost hub: packs", false);
    header(&mut h, session);
    let pending = packs
        .iter()
        .filter(|p| p.state == PackTrust::Pending)
        .count();
    let _ = write!(
        h,
        "<p class=\"sub summary\"><span>{} packs</span><span id=\"pending-count\">{pending} pending</span><span>{} trusted</span></p>",
        packs.len(),
        packs.len() - pending
    );
    if packs.is_empty() {
        h.push_str("<p>No pack advertised yet. Agents advertise the packs installed on their host with every heartbeat.</p></body></html>\n");
        return h;
    }
    h.push_str("<table id=\"packs\"><thead><tr><th>name</th><th>version</th><th>sha256</th><th>state</th><th>agents</th><th>actions</th><th>first seen</th><th>trusted</th><th></th></tr></thead><tbody>");
    let mut ordered: Vec<&PackView> = packs.iter().collect();
    ordered.sort_by_key(|p| p.state);
    for p in ordered {
        let state = p.state.as_str();
        let actions: Vec<&str> = p.actions.iter().map(|a| a.id.as_str()).collect();
        let trusted = match (&p.trusted_at, &p.trusted_by) {
            (Some(at), Some(by)) => format!("{at} by {by}"),
            _ => String::new(),
        };
        let button = if p.state == PackTrust::Pending {
            let action = format!("/packs/{}/{}/trust", p.name, p.sha256);
            post_button(session, &action, "trust", "trust")
        } else {
            String::new()
        };
        let _ = write!(
            h,
            "<tr data-pack=\"{}\" data-sha256=\"{}\"><td>{}</td><td>{}</td><td class=\"mono\" title=\"{}\">{}</td><td><span class=\"badge {state}\">{state}</span></td><td>{}</td><td>{}</td><td>{} by {}</td><td>{}</td><td>{button}</td></tr>",
            escape(&p.name),
            escape(&p.sha256),
            escape(&p.name),
            escape(&p.version),
            escape(&p.sha256),
            escape(short(&p.sha256)),
            p.agents,
            escape(&actions.join(", ")),
            escape(&p.first_seen),
            escape(&p.first_seen_by),
            escape(&trusted),
        );
    }
    h.push_str("</tbody></table></body></html>\n");
    h
}

/// One agent's page: its facts and its catalog with each pack's state.
pub fn render_agent(a: &AgentView, packs: Option<&[AgentPack]>, session: &Session) -> String {
    let mut h = String::with_capacity(2048);
    head(&mut h, &format!("outpost hub: {}", a.hostname), false);
    header(&mut h, session);
    let status = a.status.as_str();
    let _ = write!(
        h,
        "<h2 id=\"agent\">{} <span class=\"badge {status}\">{status}</span></h2><p class=\"sub\">{} · {} {} · {} · {} mode</p>",
        escape(&a.hostname),
        escape(&a.id),
        escape(&a.distro),
        escape(&a.arch),
        escape(&a.version),
        escape(&a.mode),
    );
    let Some(packs) = packs else {
        h.push_str("<p id=\"no-catalog\">This agent has not advertised a pack catalog yet.</p></body></html>\n");
        return h;
    };
    if packs.is_empty() {
        h.push_str("<p id=\"no-catalog\">No packs installed on this host.</p></body></html>\n");
        return h;
    }
    h.push_str("<table id=\"catalog\"><thead><tr><th>pack</th><th>version</th><th>sha256</th><th>state</th><th>actions</th></tr></thead><tbody>");
    for p in packs {
        let state = p.state.as_str();
        let actions: Vec<String> = p
            .pack
            .actions
            .iter()
            .map(|x| {
                if x.privileged {
                    format!("{} (root)", x.id)
                } else {
                    x.id.clone()
                }
            })
            .collect();
        let _ = write!(
            h,
            "<tr data-pack=\"{}\"><td>{}</td><td>{}</td><td class=\"mono\" title=\"{}\">{}</td><td><span class=\"badge {state}\">{state}</span>{}</td><td>{}</td></tr>",
            escape(&p.pack.name),
            escape(&p.pack.name),
            escape(&p.pack.version),
            escape(&p.pack.sha256),
            escape(short(&p.pack.sha256)),
            if p.state == CatalogState::Drifted {
                " <span class=\"flag\">another hash of this pack is trusted</span>"
            } else {
                ""
            },
            escape(&actions.join(", ")),
        );
    }
    h.push_str("</tbody></table></body></html>\n");
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
            drained: false,
        };
        let session = crate::web::Store::new(std::time::Duration::from_secs(60), 1)
            .create()
            .unwrap();
        let html = render(&[v], 30, &session);
        assert!(html.contains(&format!("value=\"{}\"", session.csrf)));
        assert!(html.contains("action=\"/logout\""));
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("badge online"));
    }

    #[test]
    fn every_agent_supplied_field_is_escaped() {
        let x = "\"'><img src=x onerror=alert(1)>";
        let v = AgentView {
            id: x.into(),
            hostname: x.into(),
            status: Status::Stale,
            version: x.into(),
            distro: x.into(),
            arch: x.into(),
            kernel: x.into(),
            mode: x.into(),
            group: Some(x.into()),
            labels: Default::default(),
            machine_id: x.into(),
            enrolled_at: String::new(),
            revoked_at: None,
            last_heartbeat_at: None,
            last_heartbeat_age_secs: None,
            uptime_secs: None,
            capabilities: None,
            journal_head: None,
            last_upgrade: None,
            flags: vec![x.into()],
            drained: false,
        };
        let session = crate::web::Store::new(std::time::Duration::from_secs(60), 1)
            .create()
            .unwrap();
        let html = render(&[v], 30, &session);
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("'>"), "{html}");
        assert!(
            html.matches("&lt;img src=x onerror=alert(1)&gt;").count() >= 8,
            "{html}"
        );
        let login = render_login(&session, Some(x));
        assert!(!login.contains("<img"), "{login}");
        let msg = render_message(x, x);
        assert!(!msg.contains("<img"), "{msg}");
    }

    #[test]
    fn pack_pages_escape_and_show_states() {
        use outpost_proto::{ActionAdvert, PackAdvert};
        let x = "\"'><img src=x onerror=alert(1)>";
        let session = crate::web::Store::new(std::time::Duration::from_secs(60), 1)
            .create()
            .unwrap();
        let view = |name: &str, state: PackTrust| PackView {
            name: name.into(),
            sha256: "ab".repeat(32),
            version: x.into(),
            state,
            actions: vec![ActionAdvert {
                id: x.into(),
                description: String::new(),
                params: Vec::new(),
                idempotent: false,
                privileged: true,
            }],
            first_seen: "2024-05-01T10:00:00Z".into(),
            first_seen_by: x.into(),
            trusted_at: None,
            trusted_by: None,
            agents: 1,
        };
        let html = render_packs(
            &[
                view("web", PackTrust::Trusted),
                view("db", PackTrust::Pending),
            ],
            &session,
        );
        assert!(!html.contains("<img"), "{html}");
        assert_eq!(
            html.matches("action=\"/packs/").count(),
            1,
            "one button: {html}"
        );
        assert!(html.contains(&format!("action=\"/packs/db/{}/trust\"", "ab".repeat(32))));
        assert!(html.contains(&format!("value=\"{}\"", session.csrf)));
        assert!(
            html.find("data-pack=\"db\"") < html.find("data-pack=\"web\""),
            "pending first"
        );
        assert!(render_packs(&[], &session).contains("No pack advertised yet"));

        let a = AgentView {
            hostname: x.into(),
            ..sample_view()
        };
        let packs = [AgentPack {
            pack: PackAdvert {
                name: "web".into(),
                version: x.into(),
                sha256: "cd".repeat(32),
                actions: Vec::new(),
            },
            state: CatalogState::Drifted,
        }];
        let html = render_agent(&a, Some(&packs), &session);
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("badge drifted\">drifted<") && html.contains("cdcdcdcdcdcd<"));
        assert!(render_agent(&a, None, &session).contains("not advertised a pack catalog"));
        assert!(render_agent(&a, Some(&[]), &session).contains("No packs installed"));
    }

    fn sample_view() -> AgentView {
        AgentView {
            id: "a_1".into(),
            hostname: "h".into(),
            status: Status::Online,
            version: String::new(),
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
            last_heartbeat_age_secs: None,
            uptime_secs: None,
            capabilities: None,
            journal_head: None,
            last_upgrade: None,
            flags: vec![],
            drained: false,
        }
    }
}
