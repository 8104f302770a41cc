//! The audit log's vocabulary (docs/PROTOCOL.md, Audit log): who acted, and the kind of
//! every admin action that changes what agents may do or what runs. Each entry is written by
//! the store in the transaction of the change it records ([`crate::store::Store`]), so a
//! change is never stored without its entry nor an entry without its change; a refused
//! request writes none.

use outpost_proto::RunTarget;

use crate::store::AuditRow;

/// Who an API call (and so the CLI) is in audit records.
pub const ADMIN_TOKEN: &str = "admin token";

/// The `action` of an audit entry. The strings are part of the API (`GET /api/v1/audit`,
/// `outpost-hub audit --json`): never rename one.
pub mod kind {
    /// `POST /api/v1/drain`, the agent page's Drain button. Target `agent a_…` or `group G`;
    /// detail `N agents: a_…, …`.
    pub const DRAIN: &str = "drain";
    /// The same with `undo`.
    pub const UNDRAIN: &str = "undrain";
    /// The kill switch on. Target `all`; detail `and cancel every run in flight` or empty.
    pub const DISPATCH_STOP: &str = "dispatch_stop";
    /// The kill switch off. Target `all`.
    pub const DISPATCH_START: &str = "dispatch_start";
    /// `outpost-hub packs trust`, `POST /api/v1/packs/{name}/{sha256}/trust`, the packs
    /// page's Trust button. Target `pack NAME SHA256`; detail `version V` (and `already
    /// trusted` when it was).
    pub const PACK_TRUST: &str = "pack_trust";
    /// `outpost-hub keys create`, `POST /api/v1/keys`. Target `key k_…`; detail the expiry,
    /// group and labels (never the key).
    pub const KEY_CREATE: &str = "key_create";
    /// `outpost-hub revoke`, `POST /api/v1/agents/{id}/revoke`: the agent's token stops
    /// working. Target `agent a_…`.
    pub const AGENT_REVOKE: &str = "agent_revoke";
    /// `outpost-hub delete`, `DELETE /api/v1/agents/{id}`. Target `agent a_…`.
    pub const AGENT_DELETE: &str = "agent_delete";
    /// `outpost-hub run`, `POST /api/v1/runs`, an agent page's start form. Target the
    /// request's (`agent a_…`, `group G`, `labels k=v,…`); detail the action, the names of
    /// the params (never their values) and the runs created with their agents. An
    /// idempotent retry that returns the runs created before writes no entry.
    pub const RUN_START: &str = "run_start";
    /// `outpost-hub cancel`, `POST /api/v1/runs/{id}/cancel`, a run page's Cancel button.
    /// Target `run r_…`; detail the agent and what the cancel did
    /// ([`crate::store::cancel_outcome`]).
    pub const RUN_CANCEL: &str = "run_cancel";

    /// Every kind, for documentation checks.
    pub const ALL: &[&str] = &[
        DRAIN,
        UNDRAIN,
        DISPATCH_STOP,
        DISPATCH_START,
        PACK_TRUST,
        KEY_CREATE,
        AGENT_REVOKE,
        AGENT_DELETE,
        RUN_START,
        RUN_CANCEL,
    ];
}

/// An entry of `kind` by `who` at `at_ms`.
pub fn entry(
    at_ms: i64,
    who: &str,
    kind: &str,
    target: impl Into<String>,
    detail: impl Into<String>,
) -> AuditRow {
    AuditRow {
        at_ms,
        who: who.to_string(),
        action: kind.to_string(),
        target: target.into(),
        detail: detail.into(),
    }
}

/// The target of a run request: `agent a_…`, `group G` or `labels k=v,…`.
pub fn run_target(t: &RunTarget) -> String {
    match (&t.agent, &t.group) {
        (Some(a), _) => format!("agent {a}"),
        (None, Some(g)) => format!("group {g}"),
        (None, None) => {
            let pairs: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("labels {}", pairs.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn run_targets() {
        let agent = RunTarget {
            agent: Some("a_1".into()),
            ..Default::default()
        };
        assert_eq!(run_target(&agent), "agent a_1");
        let group = RunTarget {
            group: Some("edge".into()),
            ..Default::default()
        };
        assert_eq!(run_target(&group), "group edge");
        let labels = RunTarget {
            labels: BTreeMap::from([("role".into(), "web".into()), ("dc".into(), "fsn".into())]),
            ..Default::default()
        };
        assert_eq!(run_target(&labels), "labels dc=fsn,role=web");
    }

    #[test]
    fn every_kind_is_documented() {
        let protocol = include_str!("../../docs/PROTOCOL.md");
        let audit = protocol
            .split("* **Audit log**")
            .nth(1)
            .expect("docs/PROTOCOL.md has an Audit log bullet");
        let openapi = include_str!("../../docs/openapi.yaml");
        let schema = openapi
            .split("    AuditEntry:")
            .nth(1)
            .and_then(|s| s.lines().find(|l| l.trim_start().starts_with("action:")))
            .expect("docs/openapi.yaml has AuditEntry.action");
        for k in kind::ALL {
            assert!(
                audit.contains(&format!("`{k}`")),
                "{k} not in docs/PROTOCOL.md"
            );
            assert!(schema.contains(k), "{k} not in docs/openapi.yaml: {schema}");
        }
    }

    #[test]
    fn kinds_are_distinct_snake_case() {
        let mut seen = std::collections::BTreeSet::new();
        for k in kind::ALL {
            assert!(seen.insert(*k), "{k} twice");
            assert!(k.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{k}");
        }
    }
}
