//! The run loop against a fake hub (std TcpListener on 127.0.0.1): enrollment, heartbeats,
//! revocation, a refused key, a hub outage with backoff and recovery, heartbeat-now.
use outpost_agent::run::{read_heartbeat_state, RunError, RunOptions, Runner};
use outpost_core::journal::Journal;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "KEY-SECRET-7f3a9c";
const TOKEN: &str = "TOKEN-SECRET-b41e0d";

#[derive(Debug, Clone)]
struct Req {
    at: Instant,
    path: String,
    auth: Option<String>,
    body: serde_json::Value,
}

/// The real hub's idempotent enrollment, in miniature: the first `lose` answers are lost
/// (connection closed after the request is processed); the same nonce then gets the same
/// agent id, another nonce `key_used`.
#[derive(Default)]
struct Idempotent {
    lose: usize,
    /// nonce → agent id
    issued: Vec<(String, String)>,
    /// Where the agent keeps its nonce: its mode and content are recorded at each request.
    nonce_file: Option<PathBuf>,
    seen_file: Vec<Option<(u32, String)>>,
}

#[derive(Default)]
struct Script {
    idempotent: Option<Idempotent>,
    enroll: VecDeque<(u16, String)>,
    heartbeat: VecDeque<(u16, String)>,
    heartbeat_default: Option<(u16, String)>,
    requests: Vec<Req>,
}

#[derive(Clone)]
struct FakeHub {
    url: String,
    script: Arc<Mutex<Script>>,
}

fn hb_ok(interval: u64) -> (u16, String) {
    (
        200,
        format!(r#"{{"interval_secs":{interval},"server_time":"2024-01-01T00:00:00Z"}}"#),
    )
}

fn http_date() -> String {
    let f = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::OffsetDateTime::now_utc().format(&f).unwrap()
}

impl FakeHub {
    fn start(script: Script) -> FakeHub {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let script = Arc::new(Mutex::new(script));
        let s = Arc::clone(&script);
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let s = Arc::clone(&s);
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        FakeHub { url, script }
    }

    fn requests(&self, path: &str) -> Vec<Req> {
        let s = self.script.lock().unwrap();
        s.requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    fn wait_requests(&self, path: &str, n: usize, timeout: Duration) -> Vec<Req> {
        let end = Instant::now() + timeout;
        loop {
            let r = self.requests(path);
            if r.len() >= n || Instant::now() > end {
                return r;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn serve(conn: TcpStream, script: &Mutex<Script>) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let (mut len, mut auth) = (0usize, None);
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap(),
                "authorization" => auth = Some(v.trim().to_string()),
                _ => {}
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        let (status, text) = {
            let mut s = script.lock().unwrap();
            s.requests.push(Req {
                at: Instant::now(),
                path: path.clone(),
                auth,
                body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            });
            let body: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            match path.as_str() {
                "/api/v1/enroll" if s.idempotent.is_some() => {
                    let Some(idem) = s.idempotent.as_mut() else {
                        unreachable!()
                    };
                    let seen = idem.nonce_file.as_ref().and_then(|p| {
                        let mode = std::fs::metadata(p).ok()?.permissions().mode() & 0o777;
                        Some((mode, std::fs::read_to_string(p).ok()?.trim().to_string()))
                    });
                    idem.seen_file.push(seen);
                    let nonce = body["nonce"].as_str().unwrap_or_default().to_string();
                    let known = idem.issued.iter().find(|(n, _)| *n == nonce).cloned();
                    let answer = match known {
                        Some((_, id)) => (
                            200,
                            format!(
                                r#"{{"agent_id":"{id}","token":"{TOKEN}","heartbeat_interval_secs":3600}}"#
                            ),
                        ),
                        None if idem.issued.is_empty() && !nonce.is_empty() => {
                            let id = format!("a_{:016x}", fastrand::u64(..));
                            idem.issued.push((nonce, id.clone()));
                            (
                                201,
                                format!(
                                    r#"{{"agent_id":"{id}","token":"{TOKEN}","heartbeat_interval_secs":3600}}"#
                                ),
                            )
                        }
                        None => (
                            401,
                            r#"{"error":"key_used","message":"enrollment key already used"}"#
                                .into(),
                        ),
                    };
                    if idem.lose > 0 {
                        idem.lose -= 1;
                        (0, String::new())
                    } else {
                        answer
                    }
                }
                "/api/v1/enroll" => s.enroll.pop_front().unwrap_or((500, "{}".into())),
                "/api/v1/heartbeat" => s
                    .heartbeat
                    .pop_front()
                    .or_else(|| s.heartbeat_default.clone())
                    .unwrap_or((500, "{}".into())),
                "/api/v1/diagnostics" => (202, "{}".into()),
                "/healthz" => (200, r#"{"ok":true,"version":"0.0.0-fake"}"#.into()),
                _ => (404, r#"{"error":"not_found"}"#.into()),
            }
        };
        if status == 0 {
            // The answer is lost: hang up without a response.
            let _ = conn.shutdown(std::net::Shutdown::Both);
            return;
        }
        let resp = format!(
            "HTTP/1.1 {status} X\r\nDate: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            http_date(),
            text.len()
        );
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

struct Env {
    _dir: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
    env_file: PathBuf,
}

fn setup(hub_url: &str, extra: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("[hub]\nurl = \"{hub_url}\"\n{extra}")).unwrap();
    let env_file = dir.path().join("outpost.env");
    std::fs::write(
        &env_file,
        format!("# outpost secrets\nOUTPOST_ENROLL_KEY={KEY}\nOTHER=keep me\n"),
    )
    .unwrap();
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    Env {
        _dir: dir,
        config,
        state,
        env_file,
    }
}

fn runner(e: &Env) -> Runner {
    Runner::new(RunOptions {
        config_path: e.config.clone(),
        state_dir: e.state.clone(),
        mode: "user".into(),
    })
    .without_signals()
    .env_file(Some(e.env_file.clone()))
    .enroll_key(Some(KEY.into()))
}

fn write_identity(state: &Path, hub: &str) {
    let id = serde_json::json!({"agent_id": "a_pre", "token": TOKEN, "hub_url": hub, "enrolled_at": "2024-01-01T00:00:00Z"});
    std::fs::write(state.join("identity.json"), id.to_string()).unwrap();
    std::fs::set_permissions(
        state.join("identity.json"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_no_secrets(what: &str, text: &str) {
    assert!(
        !text.contains(KEY),
        "{what} leaks the enrollment key:\n{text}"
    );
    assert!(!text.contains(TOKEN), "{what} leaks the token:\n{text}");
}

#[test]
fn enroll_stores_identity_scrubs_key_then_heartbeats() {
    outpost_agent::log::capture_start();
    let hub = FakeHub::start(Script {
        enroll: [(
            201,
            format!(r#"{{"agent_id":"a_new","token":"{TOKEN}","heartbeat_interval_secs":3600}}"#),
        )]
        .into(),
        heartbeat_default: Some(hb_ok(3600)),
        ..Script::default()
    });
    let e = setup(&hub.url, "");
    let r = runner(&e);
    let h = r.handle();
    let t = std::thread::spawn(move || r.run());

    let hb = wait_for(Duration::from_secs(10), || read_heartbeat_state(&e.state))
        .expect("heartbeat.json");
    assert!(hb.ok, "{hb:?}");
    assert_eq!(hb.agent_id.as_deref(), Some("a_new"));
    assert_eq!(hb.interval_secs, 3600);
    assert_eq!(hb.hub_url, hub.url);
    assert!(hb.clock_skew_secs.is_some_and(|s| s.abs() <= 2), "{hb:?}");

    // identity.json: 0600, complete
    let idp = e.state.join("identity.json");
    assert_eq!(
        std::fs::metadata(&idp).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let id: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&idp).unwrap()).unwrap();
    assert_eq!(id["agent_id"], "a_new");
    assert_eq!(id["token"], TOKEN);
    assert_eq!(id["hub_url"], hub.url.as_str());
    assert!(id["enrolled_at"].as_str().unwrap().ends_with('Z'));

    // the key line is gone, everything else and the mode are kept
    assert_eq!(
        std::fs::read_to_string(&e.env_file).unwrap(),
        "# outpost secrets\nOTHER=keep me\n"
    );
    assert_eq!(
        std::fs::metadata(&e.env_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // what the hub saw
    let enr = hub.requests("/api/v1/enroll");
    assert_eq!(enr.len(), 1);
    assert_eq!(enr[0].body["key"], KEY);
    for f in [
        "hostname",
        "machine_id",
        "distro",
        "arch",
        "version",
        "mode",
    ] {
        assert!(
            enr[0].body["facts"][f].is_string(),
            "facts.{f}: {}",
            enr[0].body
        );
    }
    let hbs = hub.requests("/api/v1/heartbeat");
    assert_eq!(
        hbs[0].auth.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(hbs[0].body["agent_id"], "a_new");
    assert_eq!(hbs[0].body["mode"], "user");
    assert_eq!(hbs[0].body["journal_head"]["seq"], 1, "{}", hbs[0].body);
    assert!(hbs[0].body["capabilities"]["cpus"].as_u64().unwrap() >= 1);
    assert!(hbs[0].body["last_upgrade"].is_null());

    // heartbeat-now wakes the loop at once, and the journal head and last upgrade travel
    Journal::open(&e.state)
        .append(
            "service_upgraded",
            serde_json::json!({"from": "1.0.0", "to": "1.1.0", "steps_ms": {"swap": 12}}),
        )
        .unwrap();
    let t0 = Instant::now();
    h.heartbeat_now();
    let hbs = hub.wait_requests("/api/v1/heartbeat", 2, Duration::from_secs(5));
    assert_eq!(hbs.len(), 2);
    assert!(hbs[1].at.duration_since(t0) < Duration::from_secs(2));
    assert_eq!(hbs[1].body["journal_head"]["seq"], 2);
    assert_eq!(hbs[1].body["last_upgrade"]["to"], "1.1.0");
    assert_eq!(hbs[1].body["last_upgrade"]["result"], "service_upgraded");

    // stop is prompt and clean
    let t0 = Instant::now();
    h.stop();
    t.join().unwrap().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        t0.elapsed()
    );

    let journal = std::fs::read_to_string(e.state.join("events.jsonl")).unwrap();
    assert!(journal.contains("\"kind\":\"enrolled\""));
    assert_no_secrets("journal", &journal);
    assert_no_secrets(
        "heartbeat.json",
        &std::fs::read_to_string(e.state.join("heartbeat.json")).unwrap(),
    );
    assert_no_secrets("log", &outpost_agent::log::captured());
    Journal::open(&e.state).verify().unwrap();
}

#[test]
fn revoked_token_journals_and_exits_revoked() {
    outpost_agent::log::capture_start();
    let hub = FakeHub::start(Script {
        heartbeat: [
            hb_ok(1),
            (
                401,
                r#"{"error":"token_revoked","message":"revoked by admin","hint":"x"}"#.into(),
            ),
        ]
        .into(),
        ..Script::default()
    });
    let e = setup(&hub.url, "");
    write_identity(&e.state, &hub.url);
    let t0 = Instant::now();
    let err = runner(&e).run().unwrap_err();
    assert!(matches!(err, RunError::Revoked(_)), "{err}");
    assert_eq!(err.exit_code(), outpost_core::exit::REVOKED);
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        hub.requests("/api/v1/enroll").is_empty(),
        "already enrolled: no enroll"
    );
    let recs = Journal::open(&e.state).read_all().unwrap();
    let last = recs.last().unwrap();
    assert_eq!(last.kind, "token_revoked");
    assert_eq!(last.data["agent_id"], "a_pre");
    let hb = read_heartbeat_state(&e.state).unwrap();
    assert!(!hb.ok && hb.error.unwrap().contains("revoked"));
    assert_no_secrets(
        "journal",
        &std::fs::read_to_string(e.state.join("events.jsonl")).unwrap(),
    );
    assert_no_secrets("log", &outpost_agent::log::captured());
    // the key was not needed, so it stays
    assert!(std::fs::read_to_string(&e.env_file).unwrap().contains(KEY));
}

#[test]
fn refused_key_journals_and_fails() {
    outpost_agent::log::capture_start();
    let hub = FakeHub::start(Script {
        enroll: [(
            401,
            r#"{"error":"key_used","message":"key already used"}"#.into(),
        )]
        .into(),
        ..Script::default()
    });
    let e = setup(&hub.url, "");
    let err = runner(&e).run().unwrap_err();
    assert!(matches!(err, RunError::EnrollRefused(_)), "{err}");
    assert_eq!(err.exit_code(), outpost_core::exit::FAILURE);
    assert!(err.hint().contains("already used"), "{}", err.hint());
    let recs = Journal::open(&e.state).read_all().unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].kind, "enroll_refused");
    assert_eq!(recs[0].data["code"], "key_used");
    assert!(!e.state.join("identity.json").exists());
    assert!(hub.requests("/api/v1/heartbeat").is_empty());
    assert_no_secrets(
        "journal",
        &std::fs::read_to_string(e.state.join("events.jsonl")).unwrap(),
    );
    assert_no_secrets("log", &outpost_agent::log::captured());
}

#[test]
fn hub_down_backs_off_then_resumes_the_normal_interval() {
    let hub = FakeHub::start(Script {
        heartbeat: [
            (503, r#"{"error":"unavailable"}"#.into()),
            (503, r#"{"error":"unavailable"}"#.into()),
            (503, r#"{"error":"unavailable"}"#.into()),
        ]
        .into(),
        heartbeat_default: Some(hb_ok(1)),
        ..Script::default()
    });
    // heartbeat_secs is the interval until the hub says otherwise: the hub's 1 s must win.
    let e = setup(&hub.url, "heartbeat_secs = 3600\n");
    write_identity(&e.state, &hub.url);
    let r = runner(&e);
    let h = r.handle();
    let t = std::thread::spawn(move || r.run());
    let reqs = hub.wait_requests("/api/v1/heartbeat", 6, Duration::from_secs(20));
    h.stop();
    t.join().unwrap().unwrap();
    assert!(reqs.len() >= 6, "only {} heartbeats", reqs.len());
    let gaps: Vec<Duration> = reqs
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .collect();
    // failures 1, 2, 3: full jitter within [0, 1 s], [0, 2 s], [0, 4 s] (+ scheduling slack)
    for (i, cap) in [1u64, 2, 4].iter().enumerate() {
        assert!(
            gaps[i] <= Duration::from_millis(cap * 1000 + 300),
            "retry {i}: {:?}",
            gaps[i]
        );
    }
    // recovered: the hub's 1 s interval ±10 %, not the config's 3600 s and not a backoff
    for g in &gaps[3..] {
        assert!(
            *g >= Duration::from_millis(850) && *g <= Duration::from_millis(1400),
            "interval after recovery: {g:?} (all gaps {gaps:?})"
        );
    }
    let hb = read_heartbeat_state(&e.state).unwrap();
    assert!(hb.ok && hb.failures == 0 && hb.interval_secs == 1, "{hb:?}");
}

#[test]
fn no_key_and_no_identity_keeps_running_unenrolled() {
    let hub = FakeHub::start(Script::default());
    let e = setup(&hub.url, "");
    std::fs::write(&e.env_file, "OTHER=1\n").unwrap();
    let r = runner(&e).enroll_key(None);
    let h = r.handle();
    let t = std::thread::spawn(move || r.run());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!t.is_finished());
    assert!(hub.requests("/api/v1/enroll").is_empty());
    // the operator adds a key and reloads: the agent enrolls (the fake refuses it → exit)
    hub.script
        .lock()
        .unwrap()
        .enroll
        .push_back((401, r#"{"error":"key_expired"}"#.into()));
    std::fs::write(&e.env_file, format!("OUTPOST_ENROLL_KEY={KEY}\n")).unwrap();
    h.reload();
    let err = t.join().unwrap().unwrap_err();
    assert!(matches!(err, RunError::EnrollRefused(_)), "{err}");
    assert_eq!(hub.requests("/api/v1/enroll")[0].body["key"], KEY);
}

#[test]
fn diagnostics_against_the_fake_hub() {
    let hub = FakeHub::start(Script::default());
    let e = setup(&hub.url, "");
    write_identity(&e.state, &hub.url);
    let config = outpost_core::Config::load(&e.config).unwrap();
    let report = outpost_agent::diagnostics::run_checks(&config, &e.state);
    let by_name = |n: &str| report.checks.iter().find(|c| c.name == n).unwrap().clone();
    assert!(
        by_name("hub_reachable").ok,
        "{:?}",
        by_name("hub_reachable")
    );
    assert!(by_name("clock_skew").ok, "{:?}", by_name("clock_skew"));
    assert!(
        by_name("identity_file").ok,
        "{:?}",
        by_name("identity_file")
    );
    assert_eq!(report.agent_id.as_deref(), Some("a_pre"));
    std::fs::set_permissions(
        e.state.join("identity.json"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let report = outpost_agent::diagnostics::run_checks(&config, &e.state);
    assert!(
        !report
            .checks
            .iter()
            .find(|c| c.name == "identity_file")
            .unwrap()
            .ok
    );
    outpost_agent::diagnostics::send(&report, &config, &e.state).unwrap();
    let sent = hub.requests("/api/v1/diagnostics");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body["agent_id"], "a_pre");
    assert!(sent[0].body["report"]["checks"].is_array());
}

#[test]
fn lost_enrollment_answer_is_retried_with_the_same_nonce_and_gets_the_same_agent() {
    outpost_agent::log::capture_start();
    let hub = FakeHub::start(Script {
        heartbeat_default: Some(hb_ok(3600)),
        ..Script::default()
    });
    let e = setup(&hub.url, "");
    hub.script.lock().unwrap().idempotent = Some(Idempotent {
        lose: 2,
        nonce_file: Some(e.state.join("enroll-nonce")),
        ..Idempotent::default()
    });
    let r = runner(&e);
    let h = r.handle();
    let t = std::thread::spawn(move || r.run());
    let hb = wait_for(Duration::from_secs(20), || {
        read_heartbeat_state(&e.state).filter(|s| s.ok)
    })
    .expect("heartbeat after the retried enrollment");
    h.stop();
    t.join().unwrap().unwrap();

    let enr = hub.requests("/api/v1/enroll");
    assert_eq!(enr.len(), 3, "two lost answers, then the identity: {enr:?}");
    let nonce = enr[0].body["nonce"]
        .as_str()
        .expect("a nonce is sent")
        .to_string();
    assert_eq!(nonce.len(), 64);
    assert!(nonce.bytes().all(|b| b.is_ascii_hexdigit()));
    for r in &enr {
        assert_eq!(
            r.body["nonce"],
            nonce.as_str(),
            "every retry reuses the nonce"
        );
        assert_eq!(r.body["key"], KEY);
    }
    let (issued, seen) = {
        let s = hub.script.lock().unwrap();
        let idem = s.idempotent.as_ref().unwrap();
        (idem.issued.clone(), idem.seen_file.clone())
    };
    // The nonce was on disk, 0600, before the first attempt left.
    for s in &seen {
        assert_eq!(s.as_ref(), Some(&(0o600, nonce.clone())), "{seen:?}");
    }
    // The identity is the one the hub created on the first (lost) attempt.
    assert_eq!(issued.len(), 1);
    let id: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(e.state.join("identity.json")).unwrap())
            .unwrap();
    assert_eq!(id["agent_id"], issued[0].1.as_str());
    assert_eq!(hb.agent_id.as_deref(), Some(issued[0].1.as_str()));
    // The nonce is gone once the identity is saved; the key is scrubbed.
    assert!(!e.state.join("enroll-nonce").exists());
    assert!(!std::fs::read_to_string(&e.env_file).unwrap().contains(KEY));
    assert_no_secrets("log", &outpost_agent::log::captured());
    let journal = std::fs::read_to_string(e.state.join("events.jsonl")).unwrap();
    assert!(!journal.contains(&nonce), "the nonce is not journaled");
}
