//! Fleet controls over HTTP (docs/PROTOCOL.md, Fleet controls): drain an agent or a group,
//! the kill switch (stop and start dispatch, optionally cancelling everything in flight) and
//! the audit log that records them and every other admin action ([`crate::audit`]). The
//! dashboard's forms call the same functions.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use outpost_proto::{
    AuditEntry, DispatchView, DrainReply, DrainRequest, DrainedAgent, ErrorCode, StopDispatchReply,
    StopDispatchRequest, MAX_LIST_AUDIT,
};
use serde::Deserialize;

use crate::api::{parse, require_admin, Hub};
use crate::error::ApiError;
use crate::limits::{Body, SMALL_BODY};
use crate::state::{rfc3339, AgentEntry};
use crate::store::DispatchRow;

pub use crate::audit::ADMIN_TOKEN;
use crate::audit::{self, kind};

type Shared = State<Arc<Hub>>;

/// The fleet control routes.
pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/api/v1/drain", post(drain_api))
        .route("/api/v1/dispatch", get(dispatch_api))
        .route("/api/v1/dispatch/stop", post(stop_api))
        .route("/api/v1/dispatch/start", post(start_api))
        .route("/api/v1/audit", get(audit_api))
}

/// The agents a drain request names: one by id, or every agent of a group.
fn drain_targets(
    hub: &Hub,
    req: &DrainRequest,
) -> Result<(String, Vec<Arc<AgentEntry>>), ApiError> {
    let not_found = |what: String| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no agent {what}"),
            "list agents with `outpost-hub agents`",
        )
    };
    match (&req.agent, &req.group) {
        (Some(id), _) => {
            let e = hub
                .registry
                .by_id(id)
                .ok_or_else(|| not_found(id.clone()))?;
            Ok((format!("agent {id}"), vec![e]))
        }
        (None, Some(g)) => {
            let all: Vec<_> = hub
                .registry
                .all()
                .into_iter()
                .filter(|e| e.lock().group.as_ref() == Some(g))
                .collect();
            if all.is_empty() {
                return Err(not_found(format!("in group {g}")));
            }
            Ok((format!("group {g}"), all))
        }
        (None, None) => Err(ApiError::bad_request("name an agent or a group").with_field("agent")),
    }
}

/// Drains (or undrains) what `req` names on behalf of `who`, audited.
pub async fn drain(hub: &Hub, req: &DrainRequest, who: &str) -> Result<DrainReply, ApiError> {
    req.validate()?;
    let (target, entries) = drain_targets(hub, req)?;
    let drain = !req.undo;
    let now = hub.clock.now_ms();
    let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
    let audit = audit::entry(
        now,
        who,
        if drain { kind::DRAIN } else { kind::UNDRAIN },
        target,
        format!("{} agents: {}", ids.len(), ids.join(", ")),
    );
    let stored = hub.store.set_drained(&ids, drain, audit).await?;
    for e in entries.iter().filter(|e| stored.contains(&e.id)) {
        let mut st = e.lock();
        if drain {
            st.drained_at_ms.get_or_insert(now);
            st.drained_by.get_or_insert_with(|| who.to_string());
        } else {
            st.drained_at_ms = None;
            st.drained_by = None;
        }
    }
    if !drain {
        for id in &stored {
            hub.runs.wake(id);
        }
    }
    Ok(DrainReply {
        drained: drain,
        agents: entries
            .iter()
            .map(|e| e.view(now, hub.interval_secs))
            .collect(),
    })
}

fn dispatch_view(hub: &Hub, row: &DispatchRow) -> DispatchView {
    let drained = hub
        .registry
        .all()
        .iter()
        .filter_map(|e| {
            let st = e.lock();
            st.drained_at_ms.map(|at| DrainedAgent {
                agent_id: e.id.clone(),
                since: rfc3339(at),
                by: st.drained_by.clone().unwrap_or_default(),
            })
        })
        .collect();
    let l = hub.runs.limits;
    DispatchView {
        stopped: row.stopped.is_some(),
        stopped_at: row.stopped.as_ref().map(|(at, _)| rfc3339(*at)),
        stopped_by: row.stopped.as_ref().map(|(_, by)| by.clone()),
        drained,
        max_runs_in_flight: l.max_in_flight as u64,
        max_runs_queued: l.max_queued as u64,
    }
}

/// The kill switch, the drained agents and the limits.
pub async fn dispatch(hub: &Hub) -> Result<DispatchView, ApiError> {
    let row = hub.store.dispatch().await?;
    Ok(dispatch_view(hub, &row))
}

/// Stops dispatch on behalf of `who` (audited); with `cancel_in_flight` cancels queued runs
/// and asks every held one to cancel (their agents are woken to hear it).
pub async fn stop(
    hub: &Hub,
    cancel_in_flight: bool,
    who: &str,
) -> Result<StopDispatchReply, ApiError> {
    let audit = audit::entry(
        hub.clock.now_ms(),
        who,
        kind::DISPATCH_STOP,
        "all",
        if cancel_in_flight {
            "and cancel every run in flight"
        } else {
            ""
        },
    );
    let changed = hub
        .store
        .set_dispatch(true, cancel_in_flight, audit)
        .await?;
    for (_, agent) in changed.canceled.iter().chain(&changed.cancel_requested) {
        hub.runs.wake(agent);
    }
    Ok(StopDispatchReply {
        dispatch: dispatch_view(hub, &changed.dispatch),
        canceled: changed.canceled.into_iter().map(|(id, _)| id).collect(),
        cancel_requested: changed
            .cancel_requested
            .into_iter()
            .map(|(id, _)| id)
            .collect(),
    })
}

/// Starts dispatch again on behalf of `who` (audited); every agent's waiting poll is woken.
pub async fn start(hub: &Hub, who: &str) -> Result<DispatchView, ApiError> {
    let audit = audit::entry(hub.clock.now_ms(), who, kind::DISPATCH_START, "all", "");
    let changed = hub.store.set_dispatch(false, false, audit).await?;
    for e in hub.registry.all() {
        hub.runs.wake(&e.id);
    }
    Ok(dispatch_view(hub, &changed.dispatch))
}

/// The newest `limit` audit entries as the API shows them.
pub async fn audit_entries(hub: &Hub, limit: usize) -> Result<Vec<AuditEntry>, ApiError> {
    Ok(hub
        .store
        .audit_log(limit)
        .await?
        .into_iter()
        .map(|a| AuditEntry {
            at: rfc3339(a.at_ms),
            who: a.who,
            action: a.action,
            target: a.target,
            detail: a.detail,
        })
        .collect())
}

/// `POST /api/v1/drain`.
async fn drain_api(
    State(hub): Shared,
    headers: HeaderMap,
    Body(body): Body<SMALL_BODY>,
) -> Result<Response, ApiError> {
    require_admin(&hub, &headers)?;
    let req: DrainRequest = parse(&body)?;
    Ok(Json(drain(&hub, &req, ADMIN_TOKEN).await?).into_response())
}

/// `GET /api/v1/dispatch`.
async fn dispatch_api(State(hub): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    require_admin(&hub, &headers)?;
    Ok(Json(dispatch(&hub).await?).into_response())
}

/// `POST /api/v1/dispatch/stop` (an empty body is `{}`).
async fn stop_api(
    State(hub): Shared,
    headers: HeaderMap,
    Body(body): Body<SMALL_BODY>,
) -> Result<Response, ApiError> {
    require_admin(&hub, &headers)?;
    let req: StopDispatchRequest = if body.is_empty() {
        StopDispatchRequest::default()
    } else {
        parse(&body)?
    };
    Ok(Json(stop(&hub, req.cancel_in_flight, ADMIN_TOKEN).await?).into_response())
}

/// `POST /api/v1/dispatch/start`.
async fn start_api(State(hub): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    require_admin(&hub, &headers)?;
    Ok(Json(start(&hub, ADMIN_TOKEN).await?).into_response())
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

/// `GET /api/v1/audit?limit=N`: newest first.
async fn audit_api(
    State(hub): Shared,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    require_admin(&hub, &headers)?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIST_AUDIT);
    Ok(Json(audit_entries(&hub, limit).await?).into_response())
}
