//! The HTML pages: the dashboard (one server-rendered page that refreshes itself every
//! 5 s), the login form and error pages. No scripts; everything agent-supplied is escaped.

use std::fmt::Write;

use crate::duration::format_age;
use crate::state::{AgentView, Status};
use crate::web::{csrf_field, post_button, Session};
use outpost_proto::{
    AgentPack, AuditEntry, CatalogState, DispatchView, PackTrust, PackView, RunView,
};

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
form.login input[type=password]{width:100%;box-sizing:border-box;padding:.4rem;margin:0 0 .8rem;font:inherit}p.error{color:#cf222e;font-weight:600}\
h2{font-size:1.15rem;margin:1.5rem 0 .5rem}form.start{background:#fff;box-shadow:0 1px 2px #0002;padding:.8rem 1rem;margin:0 0 .8rem}\
form.start label{display:inline-block;margin:0 1rem .4rem 0}form.start input,form.start select{font:inherit;padding:.2rem .4rem;margin-left:.3rem}\
form button{font:inherit;padding:.2rem .8rem;cursor:pointer}form.inline{display:inline}pre.log{background:#0d1117;color:#e6edf3;padding:1rem;overflow:auto;max-height:32rem;font-size:.8rem}\
.queued,.claimed,.running,.unknown{background:#0969da}.succeeded{background:#1a7f37}.failed,.lost,.rejected,.timed_out{background:#cf222e}.canceled{background:#6e7781}\
.drained{background:#8250df}.stopped{background:#cf222e}.controls form{display:inline-block;margin-right:.6rem}dl.facts{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dl.facts dt{font-weight:600}";

fn head(h: &mut String, title: &str, refresh: bool) {
    head_every(h, title, refresh.then_some(5));
}

/// The page head; `refresh`: reload every so many seconds.
fn head_every(h: &mut String, title: &str, refresh: Option<u32>) {
    h.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    if let Some(secs) = refresh {
        let _ = write!(h, "<meta http-equiv=\"refresh\" content=\"{secs}\">");
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

/// The fleet controls the dashboard shows: the kill switch and the newest audit entries.
pub struct Fleet<'a> {
    pub dispatch: &'a DispatchView,
    pub audit: &'a [AuditEntry],
}

/// Renders the dashboard for `agents`, for the admin `session` (its logout button), with
/// the kill switch and the audit log.
pub fn render(
    agents: &[AgentView],
    interval_secs: u64,
    fleet: &Fleet<'_>,
    session: &Session,
) -> String {
    let count = |s: Status| agents.iter().filter(|a| a.status == s).count();
    let mut h = String::with_capacity(2048 + agents.len() * 512);
    head(&mut h, "outpost hub", true);
    header(&mut h, session);
    dispatch_controls(&mut h, fleet.dispatch, session);
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
                "<tr data-agent=\"{}\"><td><a href=\"/agents/{}\">{}</a>",
                escape(&a.id),
                escape(&a.id),
                escape(&a.hostname)
            );
            if a.drained {
                h.push_str(" <span class=\"badge drained\">drained</span>");
            }
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
    audit_table(&mut h, fleet.audit);
    h.push_str("</body></html>\n");
    h
}

/// The kill switch: its state and the buttons (CSRF-protected forms).
fn dispatch_controls(h: &mut String, d: &DispatchView, session: &Session) {
    let csrf = csrf_field(session);
    h.push_str("<div class=\"controls\" id=\"dispatch\">");
    if d.stopped {
        let _ = write!(
            h,
            "<p><span class=\"badge stopped\" id=\"dispatch-state\">dispatch stopped</span> since {} by {}: no run is offered, claimed or created.</p><form method=\"post\" action=\"/dispatch/start\">{csrf}<button type=\"submit\" id=\"dispatch-start\">start dispatch</button></form>",
            escape(d.stopped_at.as_deref().unwrap_or("")),
            escape(d.stopped_by.as_deref().unwrap_or("")),
        );
    } else {
        let _ = write!(
            h,
            "<p><span class=\"badge online\" id=\"dispatch-state\">dispatch running</span> at most {} runs in flight and {} queued per agent.</p><form method=\"post\" action=\"/dispatch/stop\">{csrf}<button type=\"submit\" id=\"dispatch-stop\">stop dispatch</button></form><form method=\"post\" action=\"/dispatch/stop\">{csrf}<input type=\"hidden\" name=\"cancel_in_flight\" value=\"true\"><button type=\"submit\" id=\"dispatch-stop-cancel\">stop and cancel everything in flight</button></form>",
            d.max_runs_in_flight, d.max_runs_queued
        );
    }
    h.push_str("</div>");
}

/// The newest audit entries.
fn audit_table(h: &mut String, audit: &[AuditEntry]) {
    if audit.is_empty() {
        return;
    }
    h.push_str("<h2>audit log</h2><table id=\"audit\"><thead><tr><th>at</th><th>who</th><th>action</th><th>target</th><th>detail</th></tr></thead><tbody>");
    for e in audit {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&e.at),
            escape(&e.who),
            escape(&e.action),
            escape(&e.target),
            escape(&e.detail)
        );
    }
    h.push_str("</tbody></table>");
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

/// One agent's page: its facts, the drain toggle, its catalog with each pack's state, a
/// start form per action of its trusted packs (fields from the advertised parameters) and
/// its runs, newest first.
pub fn render_agent(
    a: &AgentView,
    packs: Option<&[AgentPack]>,
    runs: &[RunView],
    session: &Session,
) -> String {
    let mut h = String::with_capacity(4096 + runs.len() * 256);
    head(&mut h, &format!("outpost hub: {}", a.hostname), false);
    header(&mut h, session);
    let status = a.status.as_str();
    let _ = write!(
        h,
        "<h2 id=\"agent\">{} <span class=\"badge {status}\">{status}</span>{}</h2><p class=\"sub\">{} · {} {} · {} · {} mode</p>",
        escape(&a.hostname),
        if a.drained {
            " <span class=\"badge drained\" id=\"drained\">drained</span>"
        } else {
            ""
        },
        escape(&a.id),
        escape(&a.distro),
        escape(&a.arch),
        escape(&a.version),
        escape(&a.mode),
    );
    let (label, undo, note) = if a.drained {
        (
            "undrain",
            "true",
            "No new runs are offered to this agent; its runs in flight finish.",
        )
    } else {
        ("drain", "false", "")
    };
    let _ = write!(
        h,
        "<form method=\"post\" action=\"/agents/{}/drain\" class=\"inline\">{}<input type=\"hidden\" name=\"undo\" value=\"{undo}\"><button type=\"submit\" id=\"drain\">{label}</button></form> <span class=\"sub\">{note}</span>",
        escape(&a.id),
        csrf_field(session),
    );
    match packs {
        None => {
            h.push_str("<p id=\"no-catalog\">This agent has not advertised a pack catalog yet.</p>")
        }
        Some([]) => h.push_str("<p id=\"no-catalog\">No packs installed on this host.</p>"),
        Some(packs) => {
            catalog_table(&mut h, packs);
            start_forms(&mut h, a, packs, session);
        }
    }
    runs_table(&mut h, runs);
    h.push_str("</body></html>\n");
    h
}

fn catalog_table(h: &mut String, packs: &[AgentPack]) {
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
    h.push_str("</tbody></table>");
}

/// Name of a start form's field for parameter `name`.
pub const PARAM_FIELD: &str = "param.";

/// A start form per action of the agent's trusted packs: a field per advertised parameter
/// (`bool`: a choice, `int`: a number, others: text; required ones marked).
fn start_forms(h: &mut String, a: &AgentView, packs: &[AgentPack], session: &Session) {
    let trusted: Vec<&AgentPack> = packs
        .iter()
        .filter(|p| p.state == CatalogState::Trusted)
        .collect();
    h.push_str("<h2>start a run</h2>");
    if trusted.is_empty() {
        h.push_str("<p id=\"no-actions\">No trusted pack on this agent: trust one on the <a href=\"/packs\">packs</a> page first.</p>");
        return;
    }
    for p in trusted {
        for x in &p.pack.actions {
            let action = format!("{}/{}", p.pack.name, x.id);
            let _ = write!(
                h,
                "<form method=\"post\" action=\"/agents/{}/runs\" class=\"start\" data-action=\"{}\">{}<input type=\"hidden\" name=\"action\" value=\"{}\"><strong>{}</strong> <span class=\"sub\">{}</span><br>",
                escape(&a.id),
                escape(&action),
                csrf_field(session),
                escape(&action),
                escape(&action),
                escape(&x.description),
            );
            for param in &x.params {
                let name = format!("{PARAM_FIELD}{}", param.name);
                let req = if param.required { " required" } else { "" };
                let mark = if param.required { " *" } else { "" };
                let _ = write!(h, "<label>{}{mark}", escape(&param.name));
                match param.kind.as_str() {
                    "bool" => {
                        let _ = write!(h, "<select name=\"{}\"{req}>", escape(&name));
                        if !param.required {
                            h.push_str("<option value=\"\">(unset)</option>");
                        }
                        h.push_str("<option>true</option><option>false</option></select>");
                    }
                    "int" => {
                        let _ = write!(
                            h,
                            "<input type=\"number\" step=\"1\" name=\"{}\"{req}>",
                            escape(&name)
                        );
                    }
                    _ => {
                        let _ = write!(
                            h,
                            "<input type=\"text\" name=\"{}\" maxlength=\"4096\"{req}>",
                            escape(&name)
                        );
                    }
                }
                h.push_str("</label>");
            }
            h.push_str("<button type=\"submit\">start</button></form>");
        }
    }
}

fn runs_table(h: &mut String, runs: &[RunView]) {
    h.push_str("<h2>runs</h2>");
    if runs.is_empty() {
        h.push_str("<p id=\"no-runs\">No runs yet.</p>");
        return;
    }
    h.push_str("<table id=\"runs\"><thead><tr><th>run</th><th>action</th><th>state</th><th>created</th><th>started</th><th>finished</th><th>exit</th></tr></thead><tbody>");
    for r in runs {
        let state = r.state.as_str();
        let _ = write!(
            h,
            "<tr data-run=\"{}\"><td class=\"mono\"><a href=\"/runs/{}\">{}</a></td><td>{}/{}</td><td><span class=\"badge {state}\">{state}</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.id),
            escape(&r.id),
            escape(&r.id),
            escape(&r.pack),
            escape(&r.action),
            escape(&r.created_at),
            escape(r.started_at.as_deref().unwrap_or("")),
            escape(r.finished_at.as_deref().unwrap_or("")),
            r.exit_code.map(|c| c.to_string()).unwrap_or_default(),
        );
    }
    h.push_str("</tbody></table>");
}

/// One run's page: state, times, result, params and the log (`log` from `log_from` of
/// `log_size` bytes). While the run is not final the page reloads itself every 2 s (no
/// script: the CSP allows none) and has a Cancel button.
pub fn render_run(
    r: &RunView,
    agent: Option<&AgentView>,
    events: &[outpost_proto::RunEvent],
    log: &[u8],
    log_from: u64,
    session: &Session,
) -> String {
    let live = !r.state.is_final();
    let mut h = String::with_capacity(4096 + log.len() * 2);
    head_every(
        &mut h,
        &format!("outpost hub: run {}", r.id),
        live.then_some(2),
    );
    header(&mut h, session);
    let state = r.state.as_str();
    let host = agent.map_or(r.agent_id.as_str(), |a| a.hostname.as_str());
    let _ = write!(
        h,
        "<h2 id=\"run\">{}/{} <span class=\"badge {state}\" id=\"state\">{state}</span></h2><p class=\"sub\">{} on <a href=\"/agents/{}\">{}</a>{}</p>",
        escape(&r.pack),
        escape(&r.action),
        escape(&r.id),
        escape(&r.agent_id),
        escape(host),
        if live { " · this page reloads every 2 s" } else { "" },
    );
    if live {
        if r.cancel_requested {
            h.push_str("<p id=\"cancel-requested\">Cancel requested: the agent stops the run at its next poll.</p>");
        } else {
            let _ = write!(
                h,
                "<form method=\"post\" action=\"/runs/{}/cancel\" class=\"inline\">{}<button type=\"submit\" id=\"cancel\">cancel</button></form>",
                escape(&r.id),
                csrf_field(session)
            );
        }
    }
    let opt = |v: &Option<String>| escape(v.as_deref().unwrap_or("—"));
    let _ = write!(
        h,
        "<dl class=\"facts\"><dt>created</dt><dd>{}</dd><dt>claimed</dt><dd>{}</dd><dt>started</dt><dd>{}</dd><dt>finished</dt><dd>{}</dd><dt>exit code</dt><dd id=\"exit\">{}</dd><dt>signal</dt><dd>{}</dd><dt>reason</dt><dd>{}</dd><dt>log</dt><dd>{} bytes received{}</dd></dl>",
        escape(&r.created_at),
        opt(&r.claimed_at),
        opt(&r.started_at),
        opt(&r.finished_at),
        r.exit_code.map_or("—".to_string(), |c| c.to_string()),
        opt(&r.signal),
        escape(r.reason.as_deref().filter(|s| !s.is_empty()).unwrap_or("—")),
        r.log_bytes,
        match r.result_log_bytes {
            Some(n) if n != r.log_bytes => format!(" of {n} the agent reported"),
            _ => String::new(),
        },
    );
    if r.late {
        h.push_str("<p class=\"flag\">The result arrived after the run was lost.</p>");
    }
    if !r.params.is_empty() {
        h.push_str(
            "<table id=\"params\"><thead><tr><th>parameter</th><th>value</th></tr></thead><tbody>",
        );
        for (k, v) in &r.params {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"mono\">{}</td></tr>",
                escape(k),
                escape(v)
            );
        }
        h.push_str("</tbody></table>");
    }
    if let Some(line) = rounds_summary(events, live) {
        let _ = write!(h, "<p id=\"rounds\"><b>workload</b> {}</p>", escape(&line));
    }
    if !events.is_empty() {
        h.push_str("<h2>events</h2><table id=\"events\"><thead><tr><th>seq</th><th>at</th><th>event</th><th>data</th></tr></thead><tbody>");
        for e in events {
            let data = e
                .data
                .iter()
                .map(|(k, v)| match v {
                    outpost_proto::FlatValue::String(s) => format!("{k}={s}"),
                    other => format!("{k}={}", serde_json::to_string(other).unwrap_or_default()),
                })
                .collect::<Vec<_>>()
                .join(" ");
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
                e.seq,
                escape(&e.at),
                escape(&e.kind),
                escape(&data)
            );
        }
        h.push_str("</tbody></table>");
    }
    h.push_str("<h2>log</h2>");
    if log_from > 0 {
        let _ = write!(h, "<p class=\"sub\">the last {} bytes; the whole log: <code>outpost-hub logs {}</code></p>", log.len(), escape(&r.id));
    }
    let _ = writeln!(
        h,
        "<pre class=\"log\" id=\"log\">{}</pre></body></html>",
        escape(&String::from_utf8_lossy(log))
    );
    h
}

/// A supervised run's state from its events: the round in flight, or the last one's end.
fn rounds_summary(events: &[outpost_proto::RunEvent], live: bool) -> Option<String> {
    let get = |e: &outpost_proto::RunEvent, k: &str| match e.data.get(k) {
        Some(outpost_proto::FlatValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    let last = events
        .iter()
        .rev()
        .find(|e| e.kind == "round_start" || e.kind == "round_end")?;
    let backoff = events
        .iter()
        .rev()
        .take_while(|e| e.kind != "round_start")
        .find(|e| e.kind == "round_backoff");
    Some(match last.kind.as_str() {
        "round_start" if live => {
            format!("round {} in flight since {}", get(last, "round"), last.at)
        }
        "round_start" => format!("round {} started at {}", get(last, "round"), last.at),
        _ => {
            let code = get(last, "exit_code");
            let ms: f64 = get(last, "duration_ms").parse().unwrap_or(0.0);
            let mut s = format!(
                "round {} ended: {} {}, after {:.1} s",
                get(last, "round"),
                get(last, "result"),
                if code.is_empty() {
                    String::new()
                } else {
                    format!("(exit {code})")
                },
                ms / 1000.0
            );
            if let (Some(b), true) = (backoff, live) {
                s.push_str(&format!("; backing off {} s", get(b, "secs")));
            }
            s
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_are_summarised() {
        let ev = |seq: u64, kind: &str, data: &[(&str, &str)]| outpost_proto::RunEvent {
            seq,
            kind: kind.into(),
            at: "2026-12-02T10:00:00Z".into(),
            data: data
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        outpost_proto::FlatValue::String(v.to_string()),
                    )
                })
                .collect(),
        };
        assert_eq!(rounds_summary(&[ev(1, "started", &[])], true), None);
        let evs = vec![
            ev(1, "started", &[]),
            ev(2, "round_start", &[("round", "1")]),
            ev(
                3,
                "round_end",
                &[
                    ("round", "1"),
                    ("exit_code", "75"),
                    ("result", "exit-code"),
                    ("duration_ms", "1500"),
                ],
            ),
            ev(4, "round_backoff", &[("next_round", "2"), ("secs", "2")]),
        ];
        assert_eq!(
            rounds_summary(&evs, true).unwrap(),
            "round 1 ended: exit-code (exit 75), after 1.5 s; backing off 2 s"
        );
        let mut evs = evs;
        evs.push(ev(5, "round_start", &[("round", "2")]));
        assert_eq!(
            rounds_summary(&evs, true).unwrap(),
            "round 2 in flight since 2026-12-02T10:00:00Z"
        );
    }

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
        let html = render(&[v], 30, &fleet_of(&dispatch_view(false), &[]), &session);
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
        let html = render(&[v], 30, &fleet_of(&dispatch_view(false), &[]), &session);
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
        let html = render_agent(&a, Some(&packs), &[], &session);
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("badge drifted\">drifted<") && html.contains("cdcdcdcdcdcd<"));
        assert!(render_agent(&a, None, &[], &session).contains("not advertised a pack catalog"));
        assert!(render_agent(&a, Some(&[]), &[], &session).contains("No packs installed"));
    }

    fn dispatch_view(stopped: bool) -> DispatchView {
        DispatchView {
            stopped,
            stopped_at: stopped.then(|| "2024-05-01T10:00:00Z".into()),
            stopped_by: stopped.then(|| "admin token".into()),
            drained: Vec::new(),
            max_runs_in_flight: 4,
            max_runs_queued: 100,
        }
    }

    fn fleet_of<'a>(d: &'a DispatchView, audit: &'a [AuditEntry]) -> Fleet<'a> {
        Fleet { dispatch: d, audit }
    }

    #[test]
    fn runs_and_fleet_controls_render_escaped_with_csrf() {
        use outpost_proto::{ActionAdvert, PackAdvert, ParamAdvert, RunState};
        let x = "\"'><img src=x onerror=alert(1)>";
        let session = crate::web::Store::new(std::time::Duration::from_secs(60), 1)
            .create()
            .unwrap();
        let csrf = format!("value=\"{}\"", session.csrf);
        // The kill switch: stop buttons while running, start while stopped; audit escaped.
        let audit = [AuditEntry {
            at: "2024-05-01T10:00:00Z".into(),
            who: x.into(),
            action: "drain".into(),
            target: x.into(),
            detail: x.into(),
        }];
        let running = dispatch_view(false);
        let html = render(&[], 30, &fleet_of(&running, &audit), &session);
        assert!(
            html.contains("id=\"dispatch-stop\"") && html.contains("id=\"dispatch-stop-cancel\"")
        );
        assert!(
            !html.contains("id=\"dispatch-start\"") && !html.contains("<img"),
            "{html}"
        );
        assert!(html.matches(&csrf).count() >= 3, "{html}");
        let stopped = dispatch_view(true);
        let html = render(&[], 30, &fleet_of(&stopped, &[]), &session);
        assert!(html.contains("id=\"dispatch-start\"") && html.contains("dispatch stopped"));
        // The agent page: a start form per action of trusted packs only, fields by type.
        let p = |name: &str, kind: &str, required| ParamAdvert {
            name: name.into(),
            kind: kind.into(),
            required,
        };
        let pack = |name: &str, state| AgentPack {
            pack: PackAdvert {
                name: name.into(),
                version: "1".into(),
                sha256: "ab".repeat(32),
                actions: vec![ActionAdvert {
                    id: "restart".into(),
                    description: x.into(),
                    params: vec![
                        p("unit", "string", true),
                        p("force", "bool", false),
                        p("n", "int", false),
                    ],
                    idempotent: false,
                    privileged: false,
                }],
            },
            state,
        };
        let a = AgentView {
            drained: true,
            ..sample_view()
        };
        let packs = [
            pack("web", CatalogState::Trusted),
            pack("db", CatalogState::Pending),
        ];
        let run = RunView {
            id: "r_1".into(),
            agent_id: "a_1".into(),
            pack: "web".into(),
            sha256: "ab".repeat(32),
            action: "restart".into(),
            params: [("unit".to_string(), x.to_string())].into(),
            idempotent: false,
            state: RunState::Running,
            created_at: "2024-05-01T10:00:00Z".into(),
            claimed_at: None,
            started_at: None,
            finished_at: None,
            lease_expires_at: None,
            cancel_requested: false,
            exit_code: None,
            signal: None,
            reason: Some(x.into()),
            late: false,
            log_bytes: 5,
            result_log_bytes: None,
            retry_of: None,
        };
        let html = render_agent(&a, Some(&packs), std::slice::from_ref(&run), &session);
        assert!(!html.contains("<img"), "{html}");
        assert_eq!(html.matches("class=\"start\"").count(), 1, "{html}");
        assert!(html.contains("data-action=\"web/restart\""), "{html}");
        assert!(
            html.contains("name=\"param.unit\" maxlength=\"4096\" required"),
            "{html}"
        );
        assert!(
            html.contains("<select name=\"param.force\"><option value=\"\">(unset)"),
            "{html}"
        );
        assert!(
            html.contains("type=\"number\" step=\"1\" name=\"param.n\">"),
            "{html}"
        );
        assert!(
            html.contains("id=\"drain\">undrain<") && html.contains("badge drained"),
            "{html}"
        );
        assert!(html.contains("href=\"/runs/r_1\""), "{html}");
        // The run page: live (reloads, cancel button) until final; the log escaped.
        let events = vec![outpost_proto::RunEvent {
            seq: 1,
            kind: "round_start".into(),
            at: "2026-12-02T10:00:00Z".into(),
            data: [(
                "round".to_string(),
                outpost_proto::FlatValue::String("<3>".into()),
            )]
            .into(),
        }];
        let html = render_run(&run, Some(&a), &events, b"<b>out</b>\n", 0, &session);
        assert!(html.contains("round &lt;3&gt; in flight"), "{html}");
        assert!(html.contains("<table id=\"events\">"), "{html}");
        assert!(
            html.contains("http-equiv=\"refresh\" content=\"2\""),
            "{html}"
        );
        assert!(
            html.contains("action=\"/runs/r_1/cancel\"") && html.contains(&csrf),
            "{html}"
        );
        assert!(
            html.contains("&lt;b&gt;out&lt;/b&gt;") && !html.contains("<img"),
            "{html}"
        );
        let done = RunView {
            state: RunState::Failed,
            exit_code: Some(3),
            ..run
        };
        let html = render_run(&done, None, &[], b"", 0, &session);
        assert!(
            !html.contains("refresh") && !html.contains("/cancel"),
            "{html}"
        );
        assert!(html.contains("<dd id=\"exit\">3</dd>"), "{html}");
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
