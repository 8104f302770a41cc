//! `outpost status` and the human rendering of `outpost detect`.
use outpost_core::exit;
use outpost_core::layout::Layout;
use outpost_installer::apply::Host;
use outpost_installer::detect::{Detection, Distro, Init, Probe};
use outpost_installer::error::Result;
use outpost_installer::receipt::Receipt;
use outpost_systemd::UnitStatus;
use serde::Serialize;
use std::io::Write;
use std::path::Path;

/// Exit code of `status` when outpost is not installed or the service is not running.
pub const NOT_RUNNING: i32 = 3;

#[derive(Debug, Serialize)]
struct StatusReport<'a> {
    installed: bool,
    binary_version: &'static str,
    mode: String,
    installed_version: Option<&'a str>,
    service_user: Option<&'a str>,
    installed_at: Option<&'a str>,
    unit: Option<&'a UnitStatus>,
    unit_error: Option<String>,
    agent: crate::cli::agentctl::AgentStatus,
    paths: &'a Layout,
}

pub fn run(
    probe: &dyn Probe,
    host: &dyn Host,
    root: &Path,
    mode: Option<outpost_core::layout::Mode>,
    json: bool,
    out: &mut dyn Write,
) -> Result<i32> {
    let (layout, receipt) = outpost_installer::uninstall::find_install(probe, root, mode)?;
    let receipt: Option<Receipt> = receipt.filter(|r| r.uninstalled_at.is_none());
    let scope = outpost_installer::uninstall::scope(&layout, probe.euid());
    let (unit, unit_error) = match host
        .service_manager(scope)
        .and_then(|s| s.status(outpost_installer::UNIT))
    {
        Ok(u) => (Some(u), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let report = StatusReport {
        installed: receipt.is_some(),
        binary_version: outpost_release::VERSION,
        mode: layout.mode.to_string(),
        installed_version: receipt.as_ref().map(|r| r.version.as_str()),
        service_user: receipt.as_ref().map(|r| r.service_user.as_str()),
        installed_at: receipt.as_ref().map(|r| r.installed_at.as_str()),
        unit: unit.as_ref(),
        unit_error,
        agent: crate::cli::agentctl::agent_status(&layout),
        paths: &layout,
    };
    let running = unit.as_ref().is_some_and(|u| u.is_active());
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        )
        .ok();
        return Ok(if running { exit::OK } else { NOT_RUNNING });
    }
    let Some(r) = &receipt else {
        if let Some(u) = unit.as_ref().filter(|u| u.is_loaded()) {
            writeln!(
                out,
                "{} is {} ({}), but there is no readable install receipt at {} ({} mode)",
                outpost_installer::UNIT,
                u.active_state,
                u.sub_state,
                layout.receipt_file().display(),
                layout.mode
            )
            .ok();
            writeln!(out, "next: `sudo outpost install` writes a new receipt (config, secrets and state are kept)").ok();
            return Ok(if running { exit::OK } else { NOT_RUNNING });
        }
        writeln!(
            out,
            "outpost is not installed ({} mode: no receipt at {})",
            layout.mode,
            layout.receipt_file().display()
        )
        .ok();
        writeln!(
            out,
            "next: `sudo outpost install` (system) or `outpost install --user`"
        )
        .ok();
        return Ok(NOT_RUNNING);
    };
    writeln!(
        out,
        "outpost {} ({} mode, runs as {})",
        r.version, r.mode, r.service_user
    )
    .ok();
    match (&unit, &report.unit_error) {
        (Some(u), _) => {
            let pid = if u.main_pid > 0 {
                format!(", pid {}", u.main_pid)
            } else {
                String::new()
            };
            writeln!(
                out,
                "  service    {} {} ({}){pid}, {} restart(s), {}",
                outpost_installer::UNIT,
                u.active_state,
                u.sub_state,
                u.n_restarts,
                if u.unit_file_state.is_empty() {
                    "unknown"
                } else {
                    &u.unit_file_state
                }
            )
            .ok();
        }
        (None, Some(e)) => {
            writeln!(out, "  service    unknown ({e})").ok();
        }
        _ => {}
    }
    writeln!(out, "  installed  {}", r.installed_at).ok();
    writeln!(out, "  binary     {}", layout.current_binary().display()).ok();
    writeln!(out, "  config     {}", layout.config_file.display()).ok();
    writeln!(out, "  secrets    {}", layout.env_file.display()).ok();
    writeln!(out, "  state      {}", layout.state_dir.display()).ok();
    crate::cli::agentctl::render_agent_status(&report.agent, out);
    if !running {
        let j = if layout.mode == outpost_core::layout::Mode::User {
            "journalctl --user -u outpost -n 50"
        } else {
            "journalctl -u outpost -n 50"
        };
        writeln!(
            out,
            "next: `{j}` shows why it is not running; `outpost start` starts it"
        )
        .ok();
    }
    Ok(if running { exit::OK } else { NOT_RUNNING })
}

pub fn render_detection(d: &Detection) -> String {
    let mut s = String::new();
    let distro = match &d.distro {
        Distro::Ubuntu { version, desktop } => format!(
            "ubuntu {} ({})",
            version.as_deref().unwrap_or("?"),
            if *desktop { "desktop" } else { "server" }
        ),
        Distro::Debian { version } => format!("debian {}", version.as_deref().unwrap_or("?")),
        Distro::DietPi => "dietpi".into(),
        Distro::RaspberryPiOs { version } => {
            format!("raspberry pi os {}", version.as_deref().unwrap_or("?"))
        }
        Distro::Alpine { version } => format!("alpine {}", version.as_deref().unwrap_or("?")),
        Distro::Other { id } => format!("{id} (untested)"),
    };
    let pretty = d.os_release.pretty_name.as_deref().unwrap_or("");
    s.push_str(&format!("distro       {distro}  [{pretty}]\n"));
    let init = match &d.topology.init {
        Init::Systemd { version } => format!(
            "systemd {} (PID 1)",
            version.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
        ),
        Init::Other { name } => format!("{name} (not systemd)"),
    };
    s.push_str(&format!("init         {init}\n"));
    if let Some(c) = &d.topology.container {
        s.push_str(&format!("container    {c}\n"));
    }
    let inv = &d.topology.invoking;
    s.push_str(&format!("invoked by   {} (uid {})", inv.name, inv.uid));
    if let Some(su) = &d.topology.sudo_user {
        s.push_str(&format!(" via sudo from {} (uid {})", su.name, su.uid));
    }
    s.push('\n');
    if let Some(t) = &d.topology.target_user {
        s.push_str(&format!(
            "user manager {}: linger {}, user@{} {}, bus {}\n",
            t.account.name,
            if t.linger { "on" } else { "off" },
            t.account.uid,
            if t.manager_running {
                "running"
            } else {
                "not running"
            },
            if t.bus { "present" } else { "absent" }
        ));
    }
    match &d.topology.polkit {
        Some(p) => s.push_str(
            &format!(
                "polkit       {} ({:?})\n",
                p.version.as_deref().unwrap_or("?"),
                p.flavor
            )
            .to_lowercase(),
        ),
        None => s.push_str("polkit       not found\n"),
    }
    s.push_str(&format!("arch         {}\n", d.topology.arch));
    match &d.unsupported {
        Some(reason) => s.push_str(&format!("unsupported  {reason}\n")),
        None => {
            let r = &d.recommendation;
            let linger = if r.enable_linger { " + linger" } else { "" };
            s.push_str(&format!(
                "recommended  {} mode{linger}: {}\n",
                r.mode, r.reason
            ));
        }
    }
    for w in &d.warnings {
        s.push_str(&format!("warning: {w}\n"));
    }
    s
}

/// `outpost events [--follow] [--json]`: the journal in the state dir.
pub fn events(
    probe: &dyn Probe,
    root: &Path,
    mode: Option<outpost_core::layout::Mode>,
    follow: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<i32> {
    use outpost_core::journal::{Journal, Record};
    use outpost_core::text::{json_terminal_safe, terminal_safe};
    let (layout, _) = outpost_installer::uninstall::find_install(probe, root, mode)?;
    // Root's journal (install and upgrade events) and the agent's own, merged by time.
    let journals = [
        ("install", Journal::open(&layout.host(&layout.state_dir))),
        ("agent", Journal::open(&layout.host(&layout.agent_dir))),
    ];
    let show = |src: &str, r: &Record, out: &mut dyn Write| {
        if json {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["journal"] = serde_json::json!(src);
            writeln!(out, "{}", json_terminal_safe(&v.to_string())).ok();
        } else {
            // Agent-written strings reach a terminal: control characters are escaped.
            let data = json_terminal_safe(&r.data.to_string());
            let kind = terminal_safe(&r.kind);
            writeln!(
                out,
                "{}  {:<7} #{:<4} {:<32} {}",
                terminal_safe(&r.time),
                src,
                r.seq,
                kind,
                data
            )
            .ok();
        }
        out.flush().ok();
    };
    let j_err = |e: outpost_core::journal::JournalError| {
        outpost_installer::error::Error::failed(e.to_string(), e.hint())
    };
    let mut all: Vec<(&str, Record)> = Vec::new();
    for (src, j) in &journals {
        match j.read_all() {
            Ok(recs) => all.extend(recs.into_iter().map(|r| (*src, r))),
            // The agent's journal may be unreadable for this user: show root's anyway.
            Err(e) if !follow && *src == "agent" => {
                writeln!(out, "note: cannot read the agent's journal: {e}").ok();
            }
            Err(e) => return Err(j_err(e)),
        }
    }
    all.sort_by(|a, b| a.1.time.cmp(&b.1.time));
    for (src, r) in &all {
        show(src, r, out);
    }
    if !follow {
        return Ok(exit::OK);
    }
    let mut cursors = journals
        .iter()
        .map(|(src, j)| j.follow(false).map(|f| (*src, f)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(j_err)?;
    loop {
        let mut any = false;
        for (src, f) in cursors.iter_mut() {
            for r in f.poll().map_err(j_err)? {
                any = true;
                show(src, &r, out);
            }
        }
        if !any {
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }
}
