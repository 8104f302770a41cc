//! The dashboard's runs and fleet pages and forms (docs/PROTOCOL.md, Endpoints): a run's page with its
//! log, the start form of an agent's page, Cancel, Drain and the kill switch. Every form is a
//! [`CsrfForm`] (session, origin and CSRF token checked); each calls the same function as the
//! API, so the pages decide nothing of their own.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use outpost_proto::{CreateRunRequest, DrainRequest, RunTarget};
use serde::Deserialize;

use crate::api::{Hub, NoFields};
use crate::dashboard::PARAM_FIELD;
use crate::error::ApiError;
use crate::state::now_ms;
use crate::web::{self, session_label, AdminPage, CsrfForm};

/// The most log bytes a run's page shows (the tail).
pub const PAGE_LOG_MAX: u64 = 256 * 1024;

type Shared = State<Arc<Hub>>;

pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/runs/{id}", get(run_page))
        .route("/runs/{id}/cancel", post(cancel_form))
        .route("/agents/{id}/runs", post(start_form))
        .route("/agents/{id}/drain", post(drain_form))
        .route("/dispatch/stop", post(stop_form))
        .route("/dispatch/start", post(start_dispatch_form))
}

fn page_error(e: ApiError) -> Response {
    web::error_page(e.status, &e.message, e.hint)
}

/// `GET /runs/{id}`: the run and the tail of its log.
async fn run_page(
    State(hub): Shared,
    AdminPage(session): AdminPage,
    Path(id): Path<String>,
) -> Response {
    let r = match hub.store.run(&id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return web::error_page(
                StatusCode::NOT_FOUND,
                &format!("no run {id}"),
                "check the id on the agent's page",
            )
        }
        Err(e) => return page_error(e.into()),
    };
    let from = r.log_bytes.saturating_sub(PAGE_LOG_MAX);
    let log = match hub.store.read_log(&id, from, PAGE_LOG_MAX as usize).await {
        Ok(Some((bytes, _))) => bytes,
        Ok(None) => Vec::new(),
        Err(e) => return page_error(e.into()),
    };
    let agent = hub
        .registry
        .by_id(&r.agent_id)
        .map(|e| e.view(now_ms(), hub.interval_secs));
    let v = crate::runs_api::view(&r);
    let events = hub.store.recent_events(&id, 20).await.unwrap_or_default();
    web::html(
        StatusCode::OK,
        crate::dashboard::render_run(&v, agent.as_ref(), &events, &log, from, &session),
    )
}

/// `POST /runs/{id}/cancel`: like `POST /api/v1/runs/{id}/cancel`, then back to the run.
async fn cancel_form(
    State(hub): Shared,
    Path(id): Path<String>,
    f: CsrfForm<NoFields>,
) -> Response {
    let NoFields {} = f.form;
    match crate::runs_api::cancel_run(&hub, &id, &session_label(&f.session)).await {
        Ok(r) => web::see_other_to(&format!("/runs/{}", r.id)),
        Err(e) => page_error(e),
    }
}

/// `POST /agents/{id}/runs`: `action` and `param.NAME` fields (empty ones left out) make a
/// run request for this agent; on success to the new run's page.
async fn start_form(
    State(hub): Shared,
    Path(id): Path<String>,
    f: CsrfForm<Vec<(String, String)>>,
) -> Response {
    let mut action = String::new();
    let mut params = std::collections::BTreeMap::new();
    for (k, v) in f.form {
        if k == "action" {
            action = v;
        } else if let Some(name) = k.strip_prefix(PARAM_FIELD) {
            if !v.is_empty() {
                params.insert(name.to_string(), v);
            }
        }
    }
    let req = CreateRunRequest {
        target: RunTarget {
            agent: Some(id),
            ..Default::default()
        },
        action,
        params,
        idempotency_key: None,
    };
    if let Err(e) = req.validate() {
        return page_error(e.into());
    }
    match crate::runs_api::create_runs(&hub, req, &session_label(&f.session)).await {
        Ok((_, rows)) => match rows.first() {
            Some(r) => web::see_other_to(&format!("/runs/{}", r.id)),
            None => web::see_other("/"),
        },
        Err(e) => page_error(e),
    }
}

#[derive(Deserialize)]
struct DrainForm {
    #[serde(default)]
    undo: String,
}

/// `POST /agents/{id}/drain` (`undo=true` undrains), audited as the session.
async fn drain_form(
    State(hub): Shared,
    Path(id): Path<String>,
    f: CsrfForm<DrainForm>,
) -> Response {
    let req = DrainRequest {
        agent: Some(id.clone()),
        group: None,
        undo: f.form.undo == "true",
    };
    match crate::fleet::drain(&hub, &req, &session_label(&f.session)).await {
        Ok(_) => web::see_other_to(&format!("/agents/{id}")),
        Err(e) => page_error(e),
    }
}

#[derive(Deserialize)]
struct StopForm {
    #[serde(default)]
    cancel_in_flight: String,
}

/// `POST /dispatch/stop` (`cancel_in_flight=true` also cancels), audited as the session.
async fn stop_form(State(hub): Shared, f: CsrfForm<StopForm>) -> Response {
    let cancel = f.form.cancel_in_flight == "true";
    match crate::fleet::stop(&hub, cancel, &session_label(&f.session)).await {
        Ok(_) => web::see_other("/"),
        Err(e) => page_error(e),
    }
}

/// `POST /dispatch/start`, audited as the session.
async fn start_dispatch_form(State(hub): Shared, f: CsrfForm<NoFields>) -> Response {
    let NoFields {} = f.form;
    match crate::fleet::start(&hub, &session_label(&f.session)).await {
        Ok(_) => web::see_other("/"),
        Err(e) => page_error(e),
    }
}
