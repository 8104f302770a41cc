//! `outpost runs …` and `outpost action list`: what this host ran, from the agent's own run
//! records (docs/RUNS.md), and what it allows to run. Read only: root reads the records the
//! agent wrote without following links, bounded, and never writes them.
use clap::Subcommand;
use outpost_agent::runs::record::{self, Phase, RunRecord};
use outpost_core::exit;
use outpost_core::layout::Layout;
use outpost_installer::detect::Probe;
use outpost_installer::error::{Error, Result};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often `--follow` looks again.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// A run at a glance: a workload's round, phase, last outcome, back-off, recent events
    /// and the tail of its current round's log
    Peek {
        run: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        mode: super::ModeFlags,
    },
    /// Print a run's log (its stdout and stderr)
    Logs {
        run: String,
        /// Keep printing until the run has ended
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        mode: super::ModeFlags,
    },
}

#[derive(Debug, Subcommand)]
pub enum WorkloadCommand {
    /// Stop a supervised workload: after its current round, or at once with --now
    Stop {
        /// The workload's run id (`outpost runs` lists it), or the name of a `[[workload]]`
        run: String,
        /// Cancel the round in flight too (SIGTERM, then SIGKILL of its control group)
        #[arg(long)]
        now: bool,
        #[command(flatten)]
        mode: super::ModeFlags,
    },
}

#[derive(Debug, Subcommand)]
pub enum ActionCommand {
    /// List the actions of the installed packs, their parameters and limits
    List {
        #[command(flatten)]
        mode: super::ModeFlags,
        #[arg(long)]
        json: bool,
    },
}

fn runs_dir(layout: &Layout) -> PathBuf {
    layout.host(&layout.agent_dir).join("runs")
}

/// The records, or why they cannot be read (the agent's dir is the service user's).
fn records(layout: &Layout) -> Result<Vec<RunRecord>> {
    let dir = runs_dir(layout);
    if let Err(e) = std::fs::read_dir(&dir) {
        return match e.kind() {
            std::io::ErrorKind::NotFound => Ok(Vec::new()),
            std::io::ErrorKind::PermissionDenied => Err(Error::usage(
                format!(
                    "cannot read the runs in {}: permission denied",
                    dir.display()
                ),
                "they are the service user's: run it with sudo",
            )),
            _ => Err(Error::failed(
                format!("cannot read the runs in {}: {e}", dir.display()),
                "check the agent's state directory",
            )),
        };
    }
    let state = layout.host(&layout.agent_dir);
    Ok(record::all(&state).into_iter().flatten().collect())
}

/// `running`, `waiting`, or the outcome (`succeeded`, …), with `(delivering)` until the hub
/// has it.
fn state_of(r: &RunRecord) -> String {
    let outcome = || {
        r.result
            .as_ref()
            .and_then(|x| serde_json::to_value(x.outcome).ok())
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    };
    match r.phase {
        Phase::Claiming | Phase::Claimed => "waiting".into(),
        Phase::Started if r.cancel.is_some() => "stopping".into(),
        Phase::Started => "running".into(),
        Phase::Finished => format!("{} (delivering)", outcome()),
        Phase::Delivered => outcome(),
    }
}

fn line(r: &RunRecord) -> String {
    let exit = r
        .result
        .as_ref()
        .map(|x| match (&x.exit_code, &x.signal) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(s)) => s.clone(),
            _ => String::new(),
        })
        .unwrap_or_default();
    format!(
        "{:<20} {:<28} {:<24} {:<8} {}",
        r.run_id,
        format!("{}/{}", r.pack, r.action),
        state_of(r),
        exit,
        r.started_at.as_deref().unwrap_or(&r.claimed_at)
    )
}

fn json_of(r: &RunRecord) -> serde_json::Value {
    serde_json::json!({
        "id": r.run_id,
        "pack": r.pack,
        "action": r.action,
        "params": r.params,
        "unit": r.unit,
        "state": state_of(r),
        "phase": r.phase,
        "claimed_at": r.claimed_at,
        "started_at": r.started_at,
        "cancel": r.cancel,
        "result": r.result,
        "hub_state": r.hub_state,
        "log_sent": r.log_sent,
    })
}

/// `outpost runs [--follow] [--json]`.
pub fn list(
    probe: &dyn Probe,
    root: &Path,
    mode: super::ModeFlags,
    follow: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<i32> {
    let (layout, _) = outpost_installer::uninstall::find_install(probe, root, mode.mode())?;
    let mut shown: std::collections::BTreeMap<String, String> = Default::default();
    let header = "RUN                  ACTION                       STATE                    EXIT     STARTED";
    loop {
        let recs = records(&layout)?;
        if !follow {
            if json {
                let all: Vec<_> = recs.iter().map(json_of).collect();
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&all).unwrap_or_default()
                )
                .ok();
            } else if recs.is_empty() {
                writeln!(
                    out,
                    "no runs yet; the hub starts them (`outpost-hub run AGENT PACK/ACTION`)"
                )
                .ok();
            } else {
                writeln!(out, "{header}").ok();
                for r in &recs {
                    writeln!(out, "{}", line(r)).ok();
                }
            }
            return Ok(exit::OK);
        }
        if shown.is_empty() && !json {
            writeln!(out, "{header}").ok();
        }
        for r in &recs {
            let now = state_of(r);
            if shown.get(&r.run_id) != Some(&now) {
                if json {
                    writeln!(out, "{}", json_of(r)).ok();
                } else {
                    writeln!(out, "{}", line(r)).ok();
                }
                shown.insert(r.run_id.clone(), now);
            }
        }
        if out.flush().is_err() {
            return Ok(exit::OK); // the reader went away
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

/// `outpost runs logs RUN [--follow]`.
pub fn logs(
    probe: &dyn Probe,
    root: &Path,
    run: &str,
    follow: bool,
    mode: super::ModeFlags,
    out: &mut dyn Write,
) -> Result<i32> {
    if !outpost_agent::runs::plan::valid_run_id(run) {
        return Err(Error::usage(
            format!("invalid run id {run:?}"),
            "use an id `outpost runs` lists",
        ));
    }
    let (layout, _) = outpost_installer::uninstall::find_install(probe, root, mode.mode())?;
    let paths = outpost_agent::runs::plan::paths(&layout.host(&layout.agent_dir), run);
    let rec = match record::load(&paths.record) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(Error::usage(
                format!("no run {run} on this host"),
                "`outpost runs` lists the runs this host has",
            ))
        }
        Err(e) if e.to_string().contains("denied") => {
            return Err(Error::usage(
                format!("cannot read run {run}: permission denied"),
                "the runs are the service user's: run it with sudo",
            ))
        }
        Err(e) => return Err(Error::from_hint(&e)),
    };
    // A privileged run's log is root's (its unit ran as root); the record is the agent's.
    let log = if rec.privileged {
        outpost_agent::runs::plan::paths(&layout.host(&layout.state_dir), run).log
    } else {
        paths.log.clone()
    };
    if rec.supervise.is_some() {
        return round_logs(&paths.dir, &paths.record, follow, out);
    }
    let mut offset = 0u64;
    let mut ended = !matches!(rec.phase, Phase::Claiming | Phase::Claimed | Phase::Started);
    loop {
        offset += copy_from(&log, offset, out)?;
        if !follow || ended {
            return Ok(exit::OK);
        }
        if out.flush().is_err() {
            return Ok(exit::OK);
        }
        std::thread::sleep(FOLLOW_EVERY);
        // One more read after the end, for what was written just before it.
        ended = record::load(&paths.record)
            .ok()
            .flatten()
            .is_some_and(|r| !matches!(r.phase, Phase::Claiming | Phase::Claimed | Phase::Started));
    }
}

/// Copy the log from `offset` to `out`; the bytes copied.
fn copy_from(log: &Path, offset: u64, out: &mut dyn Write) -> Result<u64> {
    let f = outpost_core::trust::open_untrusted(log).map_err(|e| {
        Error::failed(
            e.to_string(),
            "the log must be a regular file the agent wrote; see the run's directory",
        )
    })?;
    let Some(mut f) = f else { return Ok(0) };
    f.seek(SeekFrom::Start(offset)).map_err(|e| {
        Error::failed(
            format!("cannot read {}: {e}", log.display()),
            "check the file",
        )
    })?;
    let mut buf = [0u8; 64 << 10];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(|e| {
            Error::failed(
                format!("cannot read {}: {e}", log.display()),
                "check the file",
            )
        })?;
        if k == 0 {
            return Ok(n);
        }
        if out.write_all(&buf[..k]).is_err() {
            return Ok(n);
        }
        n += k as u64;
    }
}

/// `outpost action list [--json]`.
pub fn actions(
    probe: &dyn Probe,
    root: &Path,
    command: ActionCommand,
    out: &mut dyn Write,
) -> Result<i32> {
    let ActionCommand::List { mode, json } = command;
    let (layout, _) = outpost_installer::uninstall::find_install(probe, root, mode.mode())?;
    let uid = match layout.mode {
        outpost_core::layout::Mode::System => 0,
        outpost_core::layout::Mode::User => probe.euid(),
    };
    let dir = outpost_pack::store::packs_dir(&layout.host(&layout.config_dir));
    let installed =
        outpost_pack::store::installed(&dir, Some(uid)).map_err(|e| Error::from_hint(&e))?;
    let mut rows = Vec::new();
    for (name, p) in installed {
        match p {
            Ok(p) => {
                for a in &p.actions {
                    rows.push(serde_json::json!({
                        "action": format!("{}/{}", p.name, a.id),
                        "description": a.description,
                        "params": a.params.iter().map(|x| serde_json::json!({
                            "name": x.name, "required": x.required, "default": x.default,
                        })).collect::<Vec<_>>(),
                        "env": a.env,
                        "limits": a.limits,
                        "max_concurrency": a.max_concurrency,
                        "idempotent": a.idempotent,
                        "privileged": a.privileged,
                    }));
                }
            }
            Err(e) => {
                writeln!(out, "warning: pack {name} is refused: {e}").ok();
            }
        }
    }
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        )
        .ok();
        return Ok(exit::OK);
    }
    if rows.is_empty() {
        writeln!(
            out,
            "no actions: install a pack with `sudo outpost pack install DIR`"
        )
        .ok();
        return Ok(exit::OK);
    }
    for r in &rows {
        let params: Vec<String> = r["params"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        let n = p["name"].as_str().unwrap_or_default();
                        if p["required"] == true {
                            n.to_string()
                        } else {
                            format!("[{n}]")
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        writeln!(
            out,
            "{}({}){}  timeout {}s",
            r["action"].as_str().unwrap_or_default(),
            params.join(", "),
            if r["privileged"] == true {
                " [privileged]"
            } else {
                ""
            },
            r["limits"]["timeout_secs"]
        )
        .ok();
    }
    Ok(exit::OK)
}

fn in_progress(r: &RunRecord) -> bool {
    matches!(r.phase, Phase::Claiming | Phase::Claimed | Phase::Started)
}

/// A workload's log: its round logs in order (the kept ones), following the live round.
fn round_logs(dir: &Path, record_path: &Path, follow: bool, out: &mut dyn Write) -> Result<i32> {
    use outpost_agent::runs::plan::round_log;
    let load = || record::load(record_path).ok().flatten();
    let first = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    n.strip_prefix("round-")?
                        .strip_suffix(".log")?
                        .parse::<u32>()
                        .ok()
                })
                .min()
                .unwrap_or(1)
        })
        .unwrap_or(1);
    let (mut round, mut offset) = (first, 0u64);
    loop {
        let rec = load();
        let last = rec
            .as_ref()
            .and_then(|r| r.supervise.as_ref())
            .map_or(0, |s| s.round);
        let running = rec.as_ref().is_some_and(in_progress);
        while round <= last {
            offset += copy_from(&round_log(dir, round), offset, out)?;
            if round == last {
                break;
            }
            round += 1;
            offset = 0;
        }
        if !follow || !running {
            return Ok(exit::OK);
        }
        if out.flush().is_err() {
            return Ok(exit::OK);
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

/// How much of the end of the agent's journal `runs peek` reads for a run's recent events.
const PEEK_JOURNAL_WINDOW: u64 = 4 << 20;

/// `outpost runs peek RUN [--json]`.
pub fn peek(
    probe: &dyn Probe,
    root: &Path,
    run: &str,
    json: bool,
    mode: super::ModeFlags,
    out: &mut dyn Write,
) -> Result<i32> {
    let (layout, rec) = one_record(probe, root, run, mode)?;
    let dir = layout.host(&layout.agent_dir);
    let paths = outpost_agent::runs::plan::paths(&dir, run);
    let journal = outpost_core::journal::Journal::open(&dir);
    let mut events: Vec<serde_json::Value> = journal
        // The tail only: a 24×7 workload's journal grows without end.
        .read_recent(PEEK_JOURNAL_WINDOW)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.data.get("run").and_then(|v| v.as_str()) == Some(run))
        .map(|e| serde_json::json!({"time": e.time, "kind": e.kind, "data": e.data}))
        .collect();
    let skip = events.len().saturating_sub(10);
    events.drain(..skip);
    let sup = rec.supervise.clone();
    let current = match &sup {
        Some(s) if s.round > 0 => Some(outpost_agent::runs::plan::round_log(&paths.dir, s.round)),
        Some(_) => None,
        None => Some(paths.log.clone()),
    };
    let tail = current
        .as_deref()
        .map(|p| tail_of(p, 10))
        .unwrap_or_default();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if json {
        let v = serde_json::json!({
            "run": json_of(&rec),
            "supervise": sup,
            "events": events,
            "log_tail": tail,
        });
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        )
        .ok();
        return Ok(exit::OK);
    }
    writeln!(
        out,
        "run {}  {}/{}  {}",
        rec.run_id,
        rec.pack,
        rec.action,
        state_of(&rec)
    )
    .ok();
    if let Some(s) = &sup {
        match &s.in_flight {
            Some(f) => writeln!(
                out,
                "round      {} in flight for {}s ({})",
                f.round,
                now_ms.saturating_sub(f.started_ms) / 1000,
                f.unit
            ),
            None => match s.next_at_ms {
                Some(at) if in_progress(&rec) => writeln!(
                    out,
                    "round      {} done; round {} due in {}s",
                    s.round,
                    s.round + 1,
                    at.saturating_sub(now_ms).div_ceil(1000)
                ),
                _ => writeln!(out, "round      {} (the last)", s.round),
            },
        }
        .ok();
        if let Some(l) = &s.last {
            writeln!(
                out,
                "last       round {}: {} after {:.1}s",
                l.round,
                outpost_agent::runs::supervise::describe(l).replace("exit 0", "succeeded"),
                l.duration_ms as f64 / 1000.0
            )
            .ok();
        }
        writeln!(
            out,
            "failures   {} short in a row, {} transient in a row",
            s.short_failures, s.transient
        )
        .ok();
    }
    if let Some(r) = &rec.result {
        writeln!(
            out,
            "result     {}",
            if r.reason.is_empty() { "-" } else { &r.reason }
        )
        .ok();
    }
    writeln!(out, "events").ok();
    for e in &events {
        writeln!(
            out,
            "  {} {} {}",
            e["time"].as_str().unwrap_or(""),
            e["kind"].as_str().unwrap_or(""),
            e["data"]
        )
        .ok();
    }
    if let Some(p) = &current {
        writeln!(out, "log        {} (last lines)", p.display()).ok();
        for l in tail.lines() {
            writeln!(out, "  {l}").ok();
        }
    }
    Ok(exit::OK)
}

/// The last `n` lines of a log (at most its last 64 KiB), empty when there is none.
fn tail_of(path: &Path, n: usize) -> String {
    let Ok(Some(mut f)) = outpost_core::trust::open_untrusted(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 << 10)));
    let mut buf = Vec::new();
    let _ = f.take(64 << 10).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The install and run `run`'s record, or one clear error.
fn one_record(
    probe: &dyn Probe,
    root: &Path,
    run: &str,
    mode: super::ModeFlags,
) -> Result<(Layout, RunRecord)> {
    if !outpost_agent::runs::plan::valid_run_id(run) {
        return Err(Error::usage(
            format!("invalid run id {run:?}"),
            "use an id `outpost runs` lists",
        ));
    }
    let (layout, _) = outpost_installer::uninstall::find_install(probe, root, mode.mode())?;
    let paths = outpost_agent::runs::plan::paths(&layout.host(&layout.agent_dir), run);
    match record::load(&paths.record) {
        Ok(Some(r)) => Ok((layout, r)),
        Ok(None) => Err(Error::usage(
            format!("no run {run} on this host"),
            "`outpost runs` lists the runs this host has",
        )),
        Err(e) if e.to_string().contains("denied") => Err(Error::usage(
            format!("cannot read run {run}: permission denied"),
            "the runs are the service user's: run it with sudo",
        )),
        Err(e) => Err(Error::from_hint(&e)),
    }
}

/// `outpost workload stop RUN [--now]`: a request in root's control dir, which the agent
/// reads (it never writes there).
pub fn workload(
    probe: &dyn Probe,
    root: &Path,
    command: WorkloadCommand,
    out: &mut dyn Write,
) -> Result<i32> {
    let WorkloadCommand::Stop { run, now, mode } = command;
    // A workload declared in the config is named by its name too (its run is w-NAME).
    let (layout, rec) = match one_record(probe, root, &run, mode) {
        Err(e) if e.to_string().starts_with("no run ") => {
            one_record(probe, root, &format!("w-{run}"), mode).map_err(|_| e)?
        }
        r => r?,
    };
    let run = rec.run_id.clone();
    let Some(st) = &rec.supervise else {
        return Err(Error::usage(
            format!("run {run} is not a supervised workload"),
            "`outpost-hub cancel RUN` stops a run",
        ));
    };
    if !in_progress(&rec) {
        writeln!(out, "workload {run} has ended already: {}", state_of(&rec)).ok();
        return Ok(exit::OK);
    }
    if layout.mode == outpost_core::layout::Mode::System && probe.euid() != 0 {
        return Err(Error::usage(
            "workload stop writes root's control dir",
            "run it with sudo: `sudo outpost workload stop RUN`",
        ));
    }
    let dir = layout
        .host(&layout.state_dir)
        .join(outpost_core::layout::files::CONTROL_DIR);
    outpost_core::atomic::create_dirs(&dir, 0o755, None).map_err(|e| {
        Error::failed(
            format!("cannot create {}: {e}", dir.display()),
            "check free space",
        )
    })?;
    let path = dir.join(outpost_agent::runs::engine::stop_request_file(&run));
    let body = if now { "now\n" } else { "after-round\n" };
    outpost_core::atomic::write_atomic(&path, body.as_bytes(), 0o644, None).map_err(|e| {
        Error::failed(
            format!("cannot write {}: {e}", path.display()),
            "check free space",
        )
    })?;
    if now {
        writeln!(
            out,
            "workload {run}: stopping now (round {} is canceled)",
            st.round
        )
        .ok();
    } else {
        writeln!(
            out,
            "workload {run}: stops after round {} (`outpost runs peek {run}` shows it)",
            st.round.max(1)
        )
        .ok();
    }
    Ok(exit::OK)
}
