//! The dashboard in headless Debian chromium, driven over the DevTools protocol (tests/cdp):
//! the login form is typed into and submitted by the browser, the session cookie is checked
//! as the browser stored it, the dashboard lists the fleet, a tampered CSRF token is refused,
//! and logout ends the session. Screenshots land in target/test-artifacts/. Without chromium
//! the tests are skipped loudly, unless CI is set (then they fail: ci/setup.sh installs it).

mod cdp;
mod common;

use cdp::{Browser, CHROMIUM};
use common::{pack, target_dir, Hub, ADMIN};
use serde_json::json;

fn have_chromium(test: &str) -> bool {
    if Browser::available() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{CHROMIUM} is missing and CI is set: add `chromium` to ci/setup.sh packages");
    }
    eprintln!("\n\n!!!!! SKIPPED {test}: {CHROMIUM} not installed (apt-get install -y chromium) !!!!!\n\n");
    false
}

/// An agent advertising pack `web` (hash `1…1`), trusted at the hub: (id, token).
fn web_agent(hub: &Hub, host: &str) -> (String, String) {
    let (id, token) = hub.new_agent(host);
    assert_eq!(
        hub.heartbeat_packs(&id, &token, json!([pack("web", "1.0.0", '1')]))
            .0,
        200
    );
    let trust = format!("/api/v1/packs/web/{}/trust", "1".repeat(64));
    assert_eq!(hub.admin("POST", &trust, None).0, 200);
    (id, token)
}

/// Create `web/restart unit=db` on agent `id` (the admin API): the run's id.
fn create_restart(hub: &Hub, id: &str) -> String {
    let body = json!({"target": {"agent": id}, "action": "web/restart", "params": {"unit": "db"}});
    let (s, v) = hub.admin("POST", "/api/v1/runs", Some(&body));
    assert_eq!(s, 201, "{v}");
    v["runs"][0]["id"].as_str().unwrap().to_string()
}

fn artifact(name: &str) -> std::path::PathBuf {
    let dir = target_dir().join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

/// Logs in through the form: types the token and clicks the button.
fn login(page: &mut cdp::Page<'_>, hub: &Hub, token: &str) {
    page.goto(&format!("{}/login", hub.url));
    page.wait_for("document.querySelector('#token')");
    page.type_into("#token", token);
    page.click("#login");
}

#[test]
fn dashboard_lists_live_agent_in_chromium() {
    if !have_chromium("dashboard_lists_live_agent_in_chromium") {
        return;
    }
    let hub = Hub::start();
    let (id, token) = hub.new_agent("dash-host-1");
    assert_eq!(hub.heartbeat(&id, &token, 1, "a").0, 200);
    let (id2, token2) = hub.new_agent("<b>evil</b>");
    assert_eq!(hub.heartbeat(&id2, &token2, 1, "a").0, 200);
    assert_eq!(
        hub.admin("POST", &format!("/api/v1/agents/{id2}/revoke"), None)
            .0,
        200
    );
    let (s, _) = hub.req(
        "POST",
        "/api/v1/diagnostics",
        Some(&token),
        Some(&json!({"agent_id": id, "report": {}})),
    );
    assert_eq!(s, 202);

    let mut browser = Browser::launch();
    let mut page = browser.page();
    login(&mut page, &hub, ADMIN);
    page.wait_for("location.pathname === '/' && document.querySelector('table')");
    let html = page.html();
    assert!(
        html.contains("dash-host-1"),
        "hostname missing from the DOM:\n{html}"
    );
    assert!(
        html.contains("badge online\">online<"),
        "online badge missing:\n{html}"
    );
    assert!(
        html.contains("badge revoked\">revoked<"),
        "revoked badge missing:\n{html}"
    );
    assert!(
        html.contains("&lt;b&gt;evil&lt;/b&gt;") && !html.contains("<b>evil</b>"),
        "hostname not escaped:\n{html}"
    );
    assert!(html.contains("6.1.0-test") && html.contains("debian 12"));
    page.screenshot(&artifact("dashboard.png"));
}

#[test]
fn login_session_csrf_and_logout_in_chromium() {
    if !have_chromium("login_session_csrf_and_logout_in_chromium") {
        return;
    }
    let hub = Hub::start();
    let (id, token) = hub.new_agent("browser-host");
    assert_eq!(hub.heartbeat(&id, &token, 1, "a").0, 200);
    let mut browser = Browser::launch();
    let mut page = browser.page();

    // Anonymous: the dashboard sends the browser to the login form.
    page.goto(&format!("{}/", hub.url));
    page.wait_for("location.pathname === '/login' && document.querySelector('#token')");
    assert!(!page.html().contains("browser-host"));
    page.screenshot(&artifact("login.png"));

    // A wrong token: refused, still on the form, no session.
    login(&mut page, &hub, "not-the-admin-token-000000");
    page.wait_for("document.querySelector('#login-error')");
    assert!(page.html().contains("wrong admin token"));
    assert_eq!(page.path(), "/login");
    assert!(
        !page
            .cookies(&hub.url)
            .iter()
            .any(|c| c["name"] == "outpost_session"),
        "a wrong token must not get a session"
    );
    assert!(page.statuses(&format!("{}/login", hub.url)).contains(&401));
    page.screenshot(&artifact("login-refused.png"));

    // The right token: the browser stores a Secure, HttpOnly, SameSite=Strict session
    // cookie (Secure works on http://127.0.0.1: loopback is a secure context).
    login(&mut page, &hub, ADMIN);
    page.wait_for("location.pathname === '/' && document.querySelector('table')");
    assert!(page.html().contains("browser-host"));
    let cookies = page.cookies(&hub.url);
    let session = cookies
        .iter()
        .find(|c| c["name"] == "outpost_session")
        .unwrap_or_else(|| panic!("no session cookie in {cookies:?}"));
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["secure"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    assert_eq!(session["path"], "/", "{session}");
    assert_eq!(session["value"].as_str().unwrap().len(), 64);
    // Scripts cannot read it.
    assert_eq!(
        page.eval("document.cookie.includes('outpost_session')"),
        json!(false)
    );
    page.screenshot(&artifact("dashboard-logged-in.png"));

    // The session holds across page loads.
    page.goto(&format!("{}/", hub.url));
    page.wait_for("document.querySelector('table')");
    assert_eq!(page.path(), "/");

    // A tampered CSRF token on the logout button: 403, and the session lives on.
    page.eval(&format!(
        "document.querySelector('form.logout input[name=csrf]').value = '{}'",
        "0".repeat(64)
    ));
    page.click("form.logout button");
    page.wait_for("location.pathname === '/logout' && document.querySelector('#message')");
    assert!(page.html().contains("request refused"), "{}", page.html());
    assert!(page.statuses(&format!("{}/logout", hub.url)).contains(&403));
    page.screenshot(&artifact("csrf-refused.png"));
    page.goto(&format!("{}/", hub.url));
    page.wait_for("document.querySelector('table')");
    assert!(page.html().contains("browser-host"), "still logged in");

    // Logout: back to the form, the cookie is gone, the dashboard is closed again.
    page.click("form.logout button");
    page.wait_for("location.pathname === '/login' && document.querySelector('#token')");
    assert!(
        !page
            .cookies(&hub.url)
            .iter()
            .any(|c| c["name"] == "outpost_session"),
        "logout must delete the cookie"
    );
    page.goto(&format!("{}/", hub.url));
    page.wait_for("location.pathname === '/login'");
    assert!(!page.html().contains("browser-host"));
    page.screenshot(&artifact("logged-out.png"));
}

#[test]
fn packs_page_trusts_a_pending_pack_in_chromium() {
    if !have_chromium("packs_page_trusts_a_pending_pack_in_chromium") {
        return;
    }
    let hub = Hub::start();
    let (id, token) = hub.new_agent("pack-host");
    let catalog = json!([pack("web", "1.0.0", '1'), pack("db", "2.0.0", '2')]);
    assert_eq!(hub.heartbeat_packs(&id, &token, catalog).0, 200);

    let mut browser = Browser::launch();
    let mut page = browser.page();
    login(&mut page, &hub, ADMIN);
    page.wait_for("location.pathname === '/' && document.querySelector('#nav-packs')");
    page.click("#nav-packs");
    page.wait_for("location.pathname === '/packs' && document.querySelector('#packs')");
    let web_row = "tr[data-pack=web]";
    let html = page.html();
    assert!(html.contains("2 pending"), "{html}");
    assert_eq!(
        page.eval(&format!(
            "document.querySelector('{web_row} .badge').textContent"
        )),
        json!("pending")
    );
    page.screenshot(&artifact("packs-pending.png"));

    // Trust: a CSRF-protected POST, then back on the page with web trusted.
    page.click(&format!("{web_row} form.trust button"));
    page.wait_for(&format!(
        "location.pathname === '/packs' && document.querySelector('{web_row} .badge').textContent === 'trusted'"
    ));
    let html = page.html();
    assert!(html.contains("1 pending"), "{html}");
    assert!(html.contains("by dashboard session "), "{html}");
    assert!(
        page.eval(&format!(
            "document.querySelector('{web_row} form.trust') === null"
        )) == json!(true),
        "a trusted pack has no button"
    );
    page.screenshot(&artifact("packs-trusted.png"));

    // The agent page shows its catalog with states; a changed hash shows drifted.
    assert_eq!(
        hub.heartbeat_packs(
            &id,
            &token,
            json!([pack("web", "1.1.0", '3'), pack("db", "2.0.0", '2')])
        )
        .0,
        200
    );
    page.goto(&format!("{}/agents/{id}", hub.url));
    page.wait_for("document.querySelector('#catalog')");
    let badge = |page: &mut cdp::Page<'_>, name: &str| {
        page.eval(&format!(
            "document.querySelector('#catalog tr[data-pack={name}] .badge').textContent"
        ))
    };
    assert_eq!(badge(&mut page, "web"), json!("drifted"));
    assert_eq!(badge(&mut page, "db"), json!("pending"));
    page.screenshot(&artifact("agent-catalog.png"));

    // A tampered CSRF token on a Trust button: 403, nothing trusted.
    page.goto(&format!("{}/packs", hub.url));
    page.wait_for("document.querySelector('tr[data-pack=db] form.trust')");
    page.eval(&format!(
        "document.querySelector('tr[data-pack=db] form.trust input[name=csrf]').value = '{}'",
        "0".repeat(64)
    ));
    page.click("tr[data-pack=db] form.trust button");
    page.wait_for("document.querySelector('#message')");
    assert!(page.html().contains("request refused"), "{}", page.html());
    let (_, list) = hub.admin("GET", "/api/v1/packs", None);
    let db = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "db")
        .unwrap();
    assert_eq!(db["state"], "pending", "{db}");
}

/// A fake agent's upload for run `run` (`what`: `claim`, `events`, `result`).
fn agent_post(hub: &Hub, token: &str, run: &str, what: &str, body: serde_json::Value) {
    let (s, v) = hub.req(
        "POST",
        &format!("/api/v1/agent/runs/{run}/{what}"),
        Some(token),
        Some(&body),
    );
    assert_eq!(s, 200, "{what}: {v}");
}

fn agent_log(hub: &Hub, token: &str, run: &str, offset: u64, data: &[u8]) {
    let auth = format!("Bearer {token}");
    let r = hub.raw(
        "POST",
        &format!("/api/v1/agent/runs/{run}/log?offset={offset}"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/octet-stream"),
        ],
        data,
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

fn runs_of(hub: &Hub, id: &str) -> Vec<serde_json::Value> {
    let (s, v) = hub.admin("GET", &format!("/api/v1/runs?agent={id}"), None);
    assert_eq!(s, 200, "{v}");
    v.as_array().unwrap().clone()
}

#[test]
fn agent_page_starts_a_run_shows_its_live_log_and_cancels_it_in_chromium() {
    if !have_chromium("agent_page_starts_a_run_shows_its_live_log_and_cancels_it_in_chromium") {
        return;
    }
    let hub = Hub::start();
    let (id, token) = web_agent(&hub, "run-host");
    // A finished run with a log, through the fake agent.
    let old = create_restart(&hub, &id);
    agent_post(&hub, &token, &old, "claim", json!({"claimant": "p"}));
    agent_log(&hub, &token, &old, 0, b"hello from <the> agent\n");
    agent_post(
        &hub,
        &token,
        &old,
        "result",
        json!({"outcome": "succeeded", "exit_code": 0, "finished_at": "2024-01-01T00:00:05Z", "log_bytes": 23}),
    );

    let mut browser = Browser::launch();
    let mut page = browser.page();
    login(&mut page, &hub, ADMIN);
    page.wait_for("location.pathname === '/'");
    let agent_url = format!("{}/agents/{id}", hub.url);
    page.goto(&agent_url);
    page.wait_for("document.querySelector('#runs') && document.querySelector('form.start')");
    let row = format!("#runs tr[data-run={old}] .badge");
    assert_eq!(
        page.eval(&format!("document.querySelector('{row}').textContent")),
        json!("succeeded")
    );
    page.screenshot(&artifact("agent-runs.png"));

    // The start form without the right CSRF token: 403, nothing created.
    let form = r#"form.start[data-action="web/restart"]"#;
    page.eval(&format!(
        "document.querySelector({}).value = '{}'",
        json!(format!("{form} input[name=csrf]")),
        "0".repeat(64)
    ));
    page.type_into(&format!(r#"{form} input[name="param.unit"]"#), "nginx");
    page.click(&format!("{form} button"));
    page.wait_for("document.querySelector('#message')");
    assert!(page.html().contains("request refused"), "{}", page.html());
    assert!(page.statuses(&format!("{agent_url}/runs")).contains(&403));
    assert_eq!(
        runs_of(&hub, &id).len(),
        1,
        "a refused form creates nothing"
    );
    page.screenshot(&artifact("start-csrf-refused.png"));

    // The real form: to the new run's page, queued, with its parameter.
    page.goto(&agent_url);
    page.wait_for("document.querySelector('form.start')");
    page.type_into(&format!(r#"{form} input[name="param.unit"]"#), "nginx");
    page.click(&format!("{form} button"));
    page.wait_for(
        "location.pathname.startsWith('/runs/') && document.querySelector('#state').textContent === 'queued'",
    );
    let run = page.path().trim_start_matches("/runs/").to_string();
    assert!(page.html().contains("nginx"));
    assert_eq!(runs_of(&hub, &id).len(), 2);
    page.screenshot(&artifact("run-queued.png"));

    // Live: the agent takes it and logs; the page reloads itself and shows the new bytes.
    agent_post(&hub, &token, &run, "claim", json!({"claimant": "p"}));
    agent_post(
        &hub,
        &token,
        &run,
        "events",
        json!({"events": [{"seq": 1, "kind": "started", "at": "2024-01-01T00:00:00Z"}]}),
    );
    agent_log(&hub, &token, &run, 0, b"step 1\n");
    page.wait_for(
        "document.querySelector('#state').textContent === 'running' && document.querySelector('#log').textContent.includes('step 1')",
    );
    agent_log(&hub, &token, &run, 7, b"step 2\n");
    page.wait_for("document.querySelector('#log').textContent.includes('step 2')");
    page.screenshot(&artifact("run-live-log.png"));

    // Cancel (a CSRF-protected POST): requested; the agent hears it and reports canceled.
    page.click("#cancel");
    page.wait_for("document.querySelector('#cancel-requested')");
    let (_, p) = hub.req(
        "POST",
        "/api/v1/agent/poll",
        Some(&token),
        Some(&json!({"agent_id": id, "wait_secs": 0, "holding": [run]})),
    );
    assert_eq!(p["cancel"], json!([run]));
    agent_post(
        &hub,
        &token,
        &run,
        "result",
        json!({"outcome": "canceled", "signal": "SIGTERM", "reason": "canceled by admin",
               "finished_at": "2024-01-01T00:00:09Z", "log_bytes": 14}),
    );
    page.wait_for(
        "document.querySelector('#state').textContent === 'canceled' && !document.querySelector('#cancel')",
    );
    assert!(page.html().contains("canceled by admin"));
    page.screenshot(&artifact("run-canceled.png"));

    // The finished run's page shows its log, escaped.
    page.goto(&format!("{}/runs/{old}", hub.url));
    page.wait_for("document.querySelector('#log')");
    assert_eq!(
        page.eval("document.querySelector('#log').textContent"),
        json!("hello from <the> agent\n")
    );
    assert!(page.html().contains("hello from &lt;the&gt; agent"));

    // Drain from the agent page, then the kill switch from the dashboard: both audited as
    // this session.
    page.goto(&agent_url);
    page.wait_for("document.querySelector('#drain')");
    page.click("#drain");
    page.wait_for("document.querySelector('#drained')");
    let (_, a) = hub.admin("GET", &format!("/api/v1/agents/{id}"), None);
    assert_eq!(a["drained"], true, "{a}");
    page.screenshot(&artifact("agent-drained.png"));
    page.goto(&format!("{}/", hub.url));
    page.wait_for("document.querySelector('#dispatch-stop')");
    page.click("#dispatch-stop");
    page.wait_for(
        "document.querySelector('#dispatch-state').textContent === 'dispatch stopped' && document.querySelector('#audit')",
    );
    let (_, d) = hub.admin("GET", "/api/v1/dispatch", None);
    assert_eq!(d["stopped"], true, "{d}");
    assert!(d["stopped_by"]
        .as_str()
        .unwrap()
        .starts_with("dashboard session "));
    page.screenshot(&artifact("dispatch-stopped.png"));
    page.click("#dispatch-start");
    page.wait_for("document.querySelector('#dispatch-state').textContent === 'dispatch running'");
    let (_, log) = hub.admin("GET", "/api/v1/audit", None);
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    // Newest first: this session's kill switch, drain, cancel and start (the start refused
    // for its CSRF token wrote nothing), then the admin token's run, trust and key.
    assert_eq!(
        actions,
        [
            "dispatch_start",
            "dispatch_stop",
            "drain",
            "run_cancel",
            "run_start",
            "run_start",
            "pack_trust",
            "key_create"
        ],
        "{log}"
    );
    let who: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["who"].as_str().unwrap())
        .collect();
    assert!(
        who[..5].iter().all(|w| *w == who[0]) && who[0].starts_with("dashboard session "),
        "{log}"
    );
    assert!(who[5..].iter().all(|w| *w == "admin token"), "{log}");
    assert_eq!(log[3]["target"], format!("run {run}"), "{log}");
    assert!(
        log[4]["detail"].as_str().unwrap().contains("params: unit")
            && !log[4]["detail"].as_str().unwrap().contains("nginx"),
        "{log}"
    );
}

#[test]
fn run_page_shows_a_workloads_rounds_in_chromium() {
    if !have_chromium("run_page_shows_a_workloads_rounds_in_chromium") {
        return;
    }
    let hub = Hub::start();
    let (id, token) = web_agent(&hub, "wl-host");
    let run = create_restart(&hub, &id);
    agent_post(&hub, &token, &run, "claim", json!({"claimant": "p"}));
    let at = "2026-12-02T10:00:00Z";
    agent_post(
        &hub,
        &token,
        &run,
        "events",
        json!({"events": [
            {"seq": 1, "kind": "started", "at": at, "data": {"kind": "supervised"}},
            {"seq": 2, "kind": "round_start", "at": at, "data": {"round": "1"}},
            {"seq": 3, "kind": "round_end", "at": at, "data": {"round": "1", "exit_code": "0", "result": "success", "duration_ms": "20100"}},
            {"seq": 4, "kind": "round_start", "at": "2026-12-02T10:00:21Z", "data": {"round": "2"}},
        ]}),
    );
    agent_log(&hub, &token, &run, 0, b"round 1\nround 2\n");
    let mut browser = Browser::launch();
    let mut page = browser.page();
    login(&mut page, &hub, ADMIN);
    page.wait_for("location.pathname === '/'");
    page.goto(&format!("{}/runs/{run}", hub.url));
    page.wait_for("document.querySelector('#rounds') && document.querySelector('#events')");
    assert_eq!(
        page.eval("document.querySelector('#rounds').textContent"),
        json!("workload round 2 in flight since 2026-12-02T10:00:21Z")
    );
    assert_eq!(
        page.eval("document.querySelectorAll('#events tbody tr').length"),
        json!(4)
    );
    page.screenshot(&artifact("run-workload.png"));
}
