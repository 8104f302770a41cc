//! `drain`, `dispatch`, `audit`: the admin client of the fleet controls (docs/PROTOCOL.md,
//! Fleet controls).

use clap::{Args, Subcommand};
use outpost_proto::{
    AuditEntry, DispatchView, DrainReply, DrainRequest, StopDispatchReply, StopDispatchRequest,
};

use super::{json_terminal_safe, terminal_safe, Client, ClientArgs};
use crate::error::HubError;

/// `outpost-hub drain AGENT | drain --group G [--undo]`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Agent id (a_…); or --group.
    #[arg(required_unless_present = "group", conflicts_with = "group")]
    pub agent: Option<String>,
    /// Every agent of this group.
    #[arg(long)]
    pub group: Option<String>,
    /// Undrain: offer them runs again.
    #[arg(long)]
    pub undo: bool,
}

/// `outpost-hub dispatch [stop [--cancel-in-flight] | start]`.
#[derive(Debug, Subcommand)]
pub enum DispatchCmd {
    /// The kill switch: offer, claim and create no run anywhere until `dispatch start`.
    Stop {
        #[command(flatten)]
        client: ClientArgs,
        /// Also cancel everything: queued runs at once, running ones at their agent's next
        /// poll.
        #[arg(long)]
        cancel_in_flight: bool,
    },
    /// Dispatch again after `dispatch stop`.
    Start {
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// The request `drain` sends.
pub fn drain_request(a: &DrainArgs) -> Result<DrainRequest, HubError> {
    let req = DrainRequest {
        agent: a.agent.clone(),
        group: a.group.clone(),
        undo: a.undo,
    };
    req.validate().map_err(|e| {
        HubError::usage(
            e.message,
            "name one agent (`drain a_…`) or one group (`drain --group G`)",
        )
    })?;
    Ok(req)
}

/// `drain …`: one line per agent.
pub fn drain(a: &DrainArgs) -> Result<(), HubError> {
    let req = drain_request(a)?;
    let reply: DrainReply = Client::new(&a.client)?.post("/api/v1/drain", &req)?;
    let verb = if reply.drained {
        "drained"
    } else {
        "undrained"
    };
    for v in &reply.agents {
        println!(
            "{verb} {} ({})",
            terminal_safe(&v.id),
            terminal_safe(&v.hostname)
        );
    }
    Ok(())
}

/// The dispatch state in lines: the switch, the limits, the drained agents.
pub fn dispatch_text(d: &DispatchView) -> String {
    let mut out = match (&d.stopped_at, &d.stopped_by) {
        (Some(at), Some(by)) if d.stopped => format!(
            "dispatch: stopped since {} by {}\n",
            terminal_safe(at),
            terminal_safe(by)
        ),
        _ => "dispatch: running\n".to_string(),
    };
    out.push_str(&format!(
        "limits: {} runs in flight, {} queued per agent\n",
        d.max_runs_in_flight, d.max_runs_queued
    ));
    for a in &d.drained {
        out.push_str(&format!(
            "drained: {} since {} by {}\n",
            terminal_safe(&a.agent_id),
            terminal_safe(&a.since),
            terminal_safe(&a.by)
        ));
    }
    out
}

/// `dispatch`, `dispatch stop`, `dispatch start`.
pub fn dispatch(cmd: Option<DispatchCmd>, client: &ClientArgs, json: bool) -> Result<(), HubError> {
    match cmd {
        None => {
            let d: DispatchView = Client::new(client)?.call("GET", "/api/v1/dispatch", None)?;
            if json {
                let text = serde_json::to_string_pretty(&d).map_err(|e| {
                    HubError::Internal(format!("cannot encode the dispatch state: {e}"))
                })?;
                println!("{}", json_terminal_safe(&text));
            } else {
                print!("{}", dispatch_text(&d));
            }
            Ok(())
        }
        Some(DispatchCmd::Stop {
            client,
            cancel_in_flight,
        }) => {
            let req = StopDispatchRequest { cancel_in_flight };
            let r: StopDispatchReply = Client::new(&client)?.post("/api/v1/dispatch/stop", &req)?;
            println!("dispatch stopped: no run is offered, claimed or created");
            if cancel_in_flight {
                println!(
                    "canceled {} queued runs; asked {} runs in flight to cancel",
                    r.canceled.len(),
                    r.cancel_requested.len()
                );
            }
            Ok(())
        }
        Some(DispatchCmd::Start { client }) => {
            let _: DispatchView =
                Client::new(&client)?.call("POST", "/api/v1/dispatch/start", None)?;
            println!("dispatch started");
            Ok(())
        }
    }
}

/// The audit log as a table: time, who, action, target, detail.
pub fn audit_table(entries: &[AuditEntry]) -> String {
    let mut rows = vec![[
        "AT".to_string(),
        "WHO".into(),
        "ACTION".into(),
        "TARGET".into(),
        "DETAIL".into(),
    ]];
    for e in entries {
        rows.push([
            terminal_safe(&e.at),
            terminal_safe(&e.who),
            terminal_safe(&e.action),
            terminal_safe(&e.target),
            terminal_safe(&e.detail),
        ]);
    }
    super::format_table(&rows)
}

/// `audit [--json]`.
pub fn audit(client: &ClientArgs, json: bool) -> Result<(), HubError> {
    let entries: Vec<AuditEntry> = Client::new(client)?.call("GET", "/api/v1/audit", None)?;
    if json {
        let text = serde_json::to_string_pretty(&entries)
            .map_err(|e| HubError::Internal(format!("cannot encode the audit log: {e}")))?;
        println!("{}", json_terminal_safe(&text));
        return Ok(());
    }
    print!("{}", audit_table(&entries));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<crate::cli::Cmd, clap::Error> {
        crate::cli::Cli::try_parse_from(args).map(|c| c.cmd)
    }

    #[test]
    fn drain_targets() {
        let req = |args: &[&str]| match parse(args).unwrap() {
            crate::cli::Cmd::Drain(a) => drain_request(&a).unwrap(),
            other => panic!("not drain: {other:?}"),
        };
        #[rustfmt::skip]
        let cases: [(&[&str], DrainRequest); 3] = [
            (&["h", "drain", "a_1"], DrainRequest { agent: Some("a_1".into()), group: None, undo: false }),
            (&["h", "drain", "--group", "edge"], DrainRequest { agent: None, group: Some("edge".into()), undo: false }),
            (&["h", "drain", "a_1", "--undo"], DrainRequest { agent: Some("a_1".into()), group: None, undo: true }),
        ];
        for (args, want) in cases {
            assert_eq!(req(args), want, "{args:?}");
        }
        for bad in [
            &["h", "drain"][..],
            &["h", "drain", "a_1", "--group", "g"],
            &["h", "drain", "--undo"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        // What clap lets through but the request cannot say: exit 2.
        let long = "g".repeat(300);
        let crate::cli::Cmd::Drain(a) = parse(&["h", "drain", "--group", &long]).unwrap() else {
            panic!("not drain")
        };
        assert_eq!(drain_request(&a).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn dispatch_commands() {
        let stop = |args: &[&str]| match parse(args).unwrap() {
            crate::cli::Cmd::Dispatch {
                cmd:
                    Some(DispatchCmd::Stop {
                        cancel_in_flight, ..
                    }),
                ..
            } => cancel_in_flight,
            other => panic!("not dispatch stop: {other:?}"),
        };
        assert!(!stop(&["h", "dispatch", "stop"]));
        assert!(stop(&["h", "dispatch", "stop", "--cancel-in-flight"]));
        assert!(matches!(
            parse(&["h", "dispatch", "start"]).unwrap(),
            crate::cli::Cmd::Dispatch {
                cmd: Some(DispatchCmd::Start { .. }),
                ..
            }
        ));
        assert!(matches!(
            parse(&["h", "dispatch"]).unwrap(),
            crate::cli::Cmd::Dispatch { cmd: None, .. }
        ));
        assert!(parse(&["h", "dispatch", "start", "--cancel-in-flight"]).is_err());
        assert!(parse(&["h", "dispatch", "pause"]).is_err());
    }

    #[test]
    fn texts() {
        let d = DispatchView {
            stopped: true,
            stopped_at: Some("2024-05-01T10:00:00Z".into()),
            stopped_by: Some("admin token".into()),
            drained: vec![outpost_proto::DrainedAgent {
                agent_id: "a_1".into(),
                since: "2024-05-01T09:00:00Z".into(),
                by: "dashboard session 0123456789ab".into(),
            }],
            max_runs_in_flight: 4,
            max_runs_queued: 100,
        };
        assert_eq!(
            dispatch_text(&d),
            "dispatch: stopped since 2024-05-01T10:00:00Z by admin token\nlimits: 4 runs in flight, 100 queued per agent\ndrained: a_1 since 2024-05-01T09:00:00Z by dashboard session 0123456789ab\n"
        );
        let running = DispatchView {
            stopped: false,
            stopped_at: None,
            stopped_by: None,
            drained: vec![],
            ..d
        };
        assert!(dispatch_text(&running).starts_with("dispatch: running\n"));
        let t = audit_table(&[AuditEntry {
            at: "2024-05-01T10:00:00Z".into(),
            who: "admin token".into(),
            action: "drain".into(),
            target: "group edge".into(),
            detail: "2 agents: a_1, a_2\u{1b}".into(),
        }]);
        assert_eq!(
            t,
            "AT                    WHO          ACTION  TARGET      DETAIL\n2024-05-01T10:00:00Z  admin token  drain   group edge  2 agents: a_1, a_2\\x1b\n"
        );
    }
}
