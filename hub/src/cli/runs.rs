//! `run`, `runs`, `logs`, `cancel`: the admin client of runs (docs/PROTOCOL.md, Runs).

use std::io::Write as _;
use std::time::Duration;

use clap::Args;
use outpost_proto::{CreateRunRequest, RunState, RunTarget, RunView, RunsCreated};

use super::{json_terminal_safe, parse_labels, terminal_safe, Client, ClientArgs};
use crate::error::HubError;

/// How often `--follow` looks at the runs.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// `outpost-hub run AGENT ACTION` or `run --group G|--label k=v ACTION`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Every agent of this group.
    #[arg(long, conflicts_with = "labels")]
    pub group: Option<String>,
    /// Every agent with this label, k=v (repeatable: all must match).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// A parameter of the action, k=v (repeatable).
    #[arg(long = "param", value_name = "K=V")]
    pub params: Vec<String>,
    /// Stream the logs and wait for the results (exit 0 only if every run succeeded).
    #[arg(long)]
    pub follow: bool,
    /// Makes a retried `run` return the same runs instead of new ones.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// `AGENT ACTION`, or only `ACTION` with --group/--label. ACTION is PACK/ACTION, or
    /// ACTION when one pack has it.
    #[arg(required = true, num_args = 1..=2, value_name = "AGENT|ACTION")]
    pub args: Vec<String>,
}

/// The request `run` sends.
pub fn run_request(a: &RunArgs) -> Result<CreateRunRequest, HubError> {
    let labels = parse_labels(&a.labels)?;
    let by_set = a.group.is_some() || !labels.is_empty();
    let (target, action) = match (a.args.as_slice(), by_set) {
        ([agent, action], false) => (
            RunTarget {
                agent: Some(agent.clone()),
                ..Default::default()
            },
            action.clone(),
        ),
        ([action], true) => (
            RunTarget {
                agent: None,
                group: a.group.clone(),
                labels,
            },
            action.clone(),
        ),
        _ => {
            return Err(HubError::usage(
                "run needs AGENT ACTION, or --group G / --label k=v and ACTION",
                "e.g. `outpost-hub run a_0123456789abcdef web/restart --param unit=nginx`",
            ))
        }
    };
    let params = a
        .params
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(HubError::usage(
                format!("param {p:?} is not k=v"),
                "pass parameters as --param name=value",
            )),
        })
        .collect::<Result<_, _>>()?;
    Ok(CreateRunRequest {
        target,
        action,
        params,
        idempotency_key: a.idempotency_key.clone(),
    })
}

/// `run …`: prints the created run ids; with --follow, streams and summarizes.
pub fn run(a: &RunArgs) -> Result<(), HubError> {
    let req = run_request(a)?;
    let c = Client::new(&a.client)?;
    let created: RunsCreated = c.post("/api/v1/runs", &req)?;
    for r in &created.runs {
        println!("{} {}", r.id, r.agent_id);
    }
    if !a.follow {
        return Ok(());
    }
    let ids: Vec<String> = created.runs.iter().map(|r| r.id.clone()).collect();
    let done = follow(&c, &ids, ids.len() > 1)?;
    summarize(&done)
}

/// Prints one line per run: agent, run, state, exit code; fails unless all succeeded.
fn summarize(done: &[RunView]) -> Result<(), HubError> {
    for r in done {
        println!("{}", summary_line(r));
    }
    let failed = done
        .iter()
        .filter(|r| r.state != RunState::Succeeded)
        .count();
    if failed > 0 {
        return Err(HubError::RunsFailed {
            failed,
            total: done.len(),
        });
    }
    Ok(())
}

/// `a_… r_… succeeded exit 0` (+ signal, late, reason).
pub fn summary_line(r: &RunView) -> String {
    let mut line = format!("{} {} {}", r.agent_id, r.id, r.state.as_str());
    if let Some(code) = r.exit_code {
        line.push_str(&format!(" exit {code}"));
    }
    if let Some(sig) = &r.signal {
        line.push_str(&format!(" signal {}", terminal_safe(sig)));
    }
    if r.late {
        line.push_str(" (late)");
    }
    if let Some(reason) = r.reason.as_deref().filter(|s| !s.is_empty()) {
        line.push_str(&format!(": {}", terminal_safe(reason)));
    }
    line
}

/// Streams the logs of `ids` until every run is final and its log read; the final views.
fn follow(c: &Client, ids: &[String], prefix: bool) -> Result<Vec<RunView>, HubError> {
    let mut offsets = vec![0u64; ids.len()];
    loop {
        let mut views = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let v: RunView = c.call("GET", &format!("/api/v1/runs/{id}"), None)?;
            let chunk = c.bytes(&format!("/api/v1/runs/{id}/log?offset={}", offsets[i]))?;
            offsets[i] += chunk.len() as u64;
            print_log(&chunk, prefix.then_some(v.agent_id.as_str()));
            views.push(v);
        }
        let drained = views
            .iter()
            .zip(&offsets)
            .all(|(v, o)| v.state.is_final() && *o >= v.log_bytes);
        if drained {
            return Ok(views);
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

/// Log bytes with control characters escaped, each line prefixed with the agent (fan-out).
fn print_log(chunk: &[u8], agent: Option<&str>) {
    if chunk.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(chunk);
    let mut out = std::io::stdout().lock();
    for line in text.split_inclusive('\n') {
        let body = terminal_safe(line.strip_suffix('\n').unwrap_or(line));
        let _ = match agent {
            Some(a) => write!(out, "[{a}] {body}"),
            None => write!(out, "{body}"),
        };
        if line.ends_with('\n') {
            let _ = writeln!(out);
        }
    }
    let _ = out.flush();
}

/// `runs [--agent A] [--state S] [--json]`.
pub fn list(
    client: &ClientArgs,
    agent: Option<&str>,
    state: Option<&str>,
    json: bool,
) -> Result<(), HubError> {
    if let Some(s) = state.filter(|s| RunState::parse(s).is_none()) {
        return Err(HubError::usage(
            format!("--state {s} is not a run state"),
            "use queued, claimed, running, succeeded, failed, canceled, timed_out, rejected, unknown or lost",
        ));
    }
    let mut query = vec![];
    if let Some(a) = agent {
        query.push(format!("agent={a}"));
    }
    if let Some(s) = state {
        query.push(format!("state={s}"));
    }
    let path = format!("/api/v1/runs?{}", query.join("&"));
    let runs: Vec<RunView> = Client::new(client)?.call("GET", &path, None)?;
    if json {
        let text = serde_json::to_string_pretty(&runs)
            .map_err(|e| HubError::Internal(format!("cannot encode the runs: {e}")))?;
        println!("{}", json_terminal_safe(&text));
        return Ok(());
    }
    print!("{}", runs_table(&runs));
    Ok(())
}

/// Runs as a table: id, agent, action, state, created.
pub fn runs_table(runs: &[RunView]) -> String {
    let mut out = format!(
        "{:<20} {:<20} {:<28} {:<10} {}\n",
        "RUN", "AGENT", "ACTION", "STATE", "CREATED"
    );
    for r in runs {
        let action = format!("{}/{}", r.pack, r.action);
        out.push_str(&format!(
            "{:<20} {:<20} {:<28} {:<10} {}\n",
            r.id,
            r.agent_id,
            terminal_safe(&action),
            r.state.as_str(),
            r.created_at
        ));
    }
    out
}

/// `logs RUN [--follow]`.
pub fn logs(client: &ClientArgs, id: &str, follow_it: bool) -> Result<(), HubError> {
    let c = Client::new(client)?;
    if follow_it {
        let done = follow(&c, &[id.to_string()], false)?;
        return summarize(&done);
    }
    let mut offset = 0u64;
    loop {
        let chunk = c.bytes(&format!("/api/v1/runs/{id}/log?offset={offset}"))?;
        if chunk.is_empty() {
            return Ok(());
        }
        offset += chunk.len() as u64;
        print_log(&chunk, None);
    }
}

/// `cancel RUN`.
pub fn cancel(client: &ClientArgs, id: &str) -> Result<(), HubError> {
    let v: RunView =
        Client::new(client)?.call("POST", &format!("/api/v1/runs/{id}/cancel"), None)?;
    if v.cancel_requested && !v.state.is_final() {
        println!("cancel requested for {id} (the agent stops it at its next poll)");
    } else {
        println!("{id} is {}", v.state.as_str());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<CreateRunRequest, HubError> {
        let cli = crate::cli::Cli::try_parse_from(args).unwrap();
        let crate::cli::Cmd::Run(a) = cli.cmd else {
            panic!("not run")
        };
        run_request(&a)
    }

    #[test]
    fn run_targets() {
        let r = parse(&["h", "run", "a_1", "web/restart", "--param", "unit=nginx"]).unwrap();
        assert_eq!(r.target.agent.as_deref(), Some("a_1"));
        assert_eq!(r.action, "web/restart");
        assert_eq!(r.params.get("unit").map(String::as_str), Some("nginx"));
        let r = parse(&["h", "run", "--label", "role=web", "restart"]).unwrap();
        assert_eq!(r.target.labels.get("role").map(String::as_str), Some("web"));
        let r = parse(&["h", "run", "--group", "edge", "restart"]).unwrap();
        assert_eq!(r.target.group.as_deref(), Some("edge"));
        for bad in [
            &["h", "run", "restart"][..],
            &["h", "run", "--group", "g", "a_1", "restart"],
            &["h", "run", "a_1", "x", "--param", "nokv"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }
}
