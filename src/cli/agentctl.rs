//! Agent-facing commands: `diagnostics`, `heartbeat --now`, `audit verify`, and the agent
//! half of `status` (enrollment, last heartbeat, pending upgrade).
use outpost_agent::diagnostics::{self, Check};
use outpost_core::exit;
use outpost_core::layout::{Layout, Mode};
use outpost_installer::apply::Host;
use outpost_installer::detect::Probe;
use outpost_installer::error::{Error, Result};
use serde::Serialize;
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// The agent's view for `outpost status`.
#[derive(Debug, Serialize)]
pub struct AgentStatus {
    pub hub: Option<String>,
    pub enrolled: bool,
    pub agent_id: Option<String>,
    pub last_heartbeat: Option<serde_json::Value>,
    pub last_heartbeat_age_secs: Option<u64>,
    pub pending_upgrade: Option<serde_json::Value>,
    /// The agent's own state dir could be read by this caller (it is the service user's,
    /// 0700: other users see no enrollment or heartbeat).
    pub agent_state_readable: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A small JSON file the agent wrote, for display: `None` when missing, unsafe or invalid.
fn read_agent_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Option<T> {
    let bytes = outpost_core::trust::read_untrusted(path, None, 64 << 10).ok()??;
    serde_json::from_slice(&bytes).ok()
}

pub fn agent_status(layout: &Layout) -> AgentStatus {
    let sd = layout.host(&layout.state_dir);
    let ad = layout.host(&layout.agent_dir);
    let config = outpost_core::Config::load(&layout.host(&layout.config_file)).ok();
    // The agent's files: read without following links, bounded, parsed, never written.
    let identity: Option<outpost_agent::enroll::Identity> =
        read_agent_json(&ad.join(outpost_core::layout::files::IDENTITY));
    let hb: Option<outpost_core::state::HeartbeatState> =
        read_agent_json(&ad.join(outpost_core::layout::files::HEARTBEAT));
    let pending = outpost_upgrade::record::load(&layout.root, &sd)
        .ok()
        .flatten();
    AgentStatus {
        hub: config.and_then(|c| c.hub.url.clone()),
        enrolled: identity.is_some(),
        agent_id: identity.map(|i| i.agent_id),
        last_heartbeat_age_secs: hb.as_ref().map(|h| now_ms().saturating_sub(h.at_ms) / 1000),
        last_heartbeat: hb.map(|h| json!({"at": h.at, "ok": h.ok, "error": h.error, "interval_secs": h.interval_secs, "failures": h.failures})),
        pending_upgrade: pending.map(|r| json!({"from": r.from, "to": r.to, "step": r.step})),
        agent_state_readable: std::fs::read_dir(&ad).is_ok(),
    }
}

pub fn render_agent_status(a: &AgentStatus, out: &mut dyn Write) {
    match (&a.hub, &a.agent_id) {
        (None, _) => writeln!(out, "  hub        none configured ([hub] url)").ok(),
        (Some(h), Some(id)) => writeln!(out, "  hub        {h} (enrolled as {id})").ok(),
        (Some(h), None) if !a.agent_state_readable => writeln!(
            out,
            "  hub        {h} (enrollment: the agent's state is not readable by you; `sudo outpost status` shows it)"
        )
        .ok(),
        (Some(h), None) => writeln!(out, "  hub        {h} (not enrolled yet)").ok(),
    };
    if let (Some(hb), Some(age)) = (&a.last_heartbeat, a.last_heartbeat_age_secs) {
        let res = if hb["ok"] == true {
            "accepted".to_string()
        } else {
            format!("failed: {}", hb["error"].as_str().unwrap_or("?"))
        };
        writeln!(out, "  heartbeat  {age}s ago, {res}").ok();
    }
    if let Some(p) = &a.pending_upgrade {
        writeln!(
            out,
            "  upgrade    pending {} → {} (step {})",
            p["from"].as_str().unwrap_or("?"),
            p["to"].as_str().unwrap_or("?"),
            p["step"].as_str().unwrap_or("?")
        )
        .ok();
    }
}

/// `outpost diagnostics [--json] [--send]`: non-zero exit when a check fails.
pub fn diagnostics(
    probe: &dyn Probe,
    host: &dyn Host,
    root: &Path,
    mode: Option<Mode>,
    json_out: bool,
    send: bool,
    out: &mut dyn Write,
) -> Result<i32> {
    let (layout, _) = outpost_installer::uninstall::find_install(probe, root, mode)?;
    let sd = layout.host(&layout.agent_dir);
    let config = outpost_core::Config::load(&layout.host(&layout.config_file))?;
    let mut report = diagnostics::run_checks(&config, &sd);
    let scope = outpost_installer::uninstall::scope(&layout, probe.euid());
    report.checks.push(match host.service_manager(scope) {
        Ok(svc) => diagnostics::check_unit(svc.as_ref(), outpost_installer::UNIT),
        Err(e) => Check {
            name: "unit".into(),
            ok: false,
            detail: e.to_string(),
            hint: Some(e.hint()),
        },
    });
    report.checks.push(diagnostics::check_upgrade(
        &layout.root,
        &layout.host(&layout.state_dir),
    ));
    if layout.mode == Mode::User {
        let det = outpost_installer::detect::probe::detect(probe);
        let linger = det.topology.target_user.as_ref().is_some_and(|t| t.linger);
        report.checks.push(Check {
            name: "linger".into(),
            ok: linger,
            detail: if linger {
                "on: the user service runs without a login".into()
            } else {
                "off: the user service stops at logout".into()
            },
            hint: (!linger).then(|| {
                "run `loginctl enable-linger $USER` (or `sudo loginctl enable-linger USER`)".into()
            }),
        });
    }
    let mut sent = None;
    if send {
        sent = Some(diagnostics::send(&report, &config, &sd).map_err(|e| e.to_string()));
    }
    if json_out {
        let mut v = serde_json::to_value(&report).unwrap_or_default();
        v["ok"] = json!(report.ok());
        if let Some(s) = &sent {
            v["sent"] = json!(s.is_ok());
            if let Err(e) = s {
                v["send_error"] = json!(e);
            }
        }
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        )
        .ok();
    } else {
        for c in &report.checks {
            writeln!(
                out,
                "{} {:<12} {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            )
            .ok();
            if let (false, Some(h)) = (c.ok, &c.hint) {
                writeln!(out, "     hint: {h}").ok();
            }
        }
        match &sent {
            Some(Ok(())) => writeln!(out, "report sent to the hub").ok(),
            Some(Err(e)) => writeln!(out, "could not send the report: {e}").ok(),
            None => None,
        };
    }
    if let Some(Err(e)) = sent {
        return Err(Error::failed(
            format!("cannot send diagnostics: {e}"),
            "check the hub checks above",
        ));
    }
    Ok(if report.ok() { exit::OK } else { exit::FAILURE })
}

/// `outpost heartbeat --now`: signal the running agent and print the exchange's result.
pub fn heartbeat_now(
    probe: &dyn Probe,
    host: &dyn Host,
    root: &Path,
    mode: Option<Mode>,
    json_out: bool,
    out: &mut dyn Write,
) -> Result<i32> {
    let (layout, _) = outpost_installer::uninstall::find_install(probe, root, mode)?;
    let svc = host.service_manager(outpost_installer::uninstall::scope(&layout, probe.euid()))?;
    let st = svc.status(outpost_installer::UNIT)?;
    if !st.is_active() || st.main_pid == 0 {
        return Err(Error::failed(
            format!(
                "{} is not running ({})",
                outpost_installer::UNIT,
                st.active_state
            ),
            "start it with `outpost start`",
        ));
    }
    let sd = layout.host(&layout.agent_dir);
    let hb = outpost_agent::run::heartbeat_now(st.main_pid as i32, &sd, Duration::from_secs(20))
        .map_err(|e| {
            let hint = e.hint();
            Error::failed(e.to_string(), hint)
        })?;
    if json_out {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&hb).unwrap_or_default()
        )
        .ok();
    } else if hb.ok {
        writeln!(
            out,
            "heartbeat accepted by {} (next in {}s)",
            hb.hub_url, hb.interval_secs
        )
        .ok();
    } else {
        writeln!(
            out,
            "heartbeat failed: {}",
            hb.error.as_deref().unwrap_or("unknown error")
        )
        .ok();
    }
    Ok(if hb.ok { exit::OK } else { exit::FAILURE })
}

/// `outpost audit verify`: check the journal's hash chain; names the first broken record.
pub fn audit_verify(
    probe: &dyn Probe,
    root: &Path,
    mode: Option<Mode>,
    json_out: bool,
    out: &mut dyn Write,
) -> Result<i32> {
    let (layout, _) = outpost_installer::uninstall::find_install(probe, root, mode)?;
    let mut reports = Vec::new();
    let mut failed = None;
    for dir in [&layout.state_dir, &layout.agent_dir] {
        let journal = outpost_core::journal::Journal::open(&layout.host(dir));
        match journal.verify() {
            Ok(r) => reports.push((journal.path().to_path_buf(), r)),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failed {
        let hint = e.hint();
        return Err(Error::failed(e.to_string(), hint));
    }
    if json_out {
        let v: Vec<_> = reports.iter().map(|(p, r)| json!({"journal": p, "ok": true, "records": r.records, "head": r.head.as_ref().map(|(s, h)| json!({"seq": s, "hash": h})), "torn_tail": r.torn_tail})).collect();
        writeln!(out, "{}", json!({"ok": true, "journals": v})).ok();
        return Ok(exit::OK);
    }
    for (path, r) in reports {
        let head = r
            .head
            .map(|(s, h)| format!(", head #{s} {}", &h[..16.min(h.len())]))
            .unwrap_or_default();
        writeln!(
            out,
            "journal {} intact: {} record(s){head}",
            path.display(),
            r.records
        )
        .ok();
        if r.torn_tail {
            writeln!(
                out,
                "note: the last line is incomplete (a crash mid-write); the next append repairs it"
            )
            .ok();
        }
    }
    Ok(exit::OK)
}
