//! Runs over HTTP (docs/PROTOCOL.md, Runs): the admin endpoints (create with fan-out, list,
//! show, log, cancel), the agent endpoints (long poll, claim, events, log, result) and the
//! lease sweeper. Decisions are in [`crate::runs`] and the store; this module only does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use outpost_proto::{
    CatalogState, ClaimRequest, Claimed, CreateRunRequest, ErrorCode, EventsAck, EventsUpload,
    LogAck, PollReply, PollRequest, ResultAck, RunOffer, RunResult, RunState, RunView,
    RunsCreated as RunsCreatedView, MAX_LIST_RUNS,
};
use serde::Deserialize;
use tokio::sync::Notify;

use crate::api::{agent_auth, parse, require_admin, same_agent, Hub};
use crate::audit::{self, kind, ADMIN_TOKEN};
use crate::error::ApiError;
use crate::limits::{Body, SMALL_BODY};
use crate::packs::TrustIndex;
use crate::runs::{check_params, resolve_action, take_bytes, Bucket, Gate, Unresolved};
use crate::state::{rfc3339, AgentEntry};
use crate::store::{Lease, NewRuns, RunFilter, RunRefusal, RunRow, RunsCreated};
use crate::token;

/// Default lease of a claimed run (`--run-lease`).
pub const DEFAULT_LEASE_SECS: u64 = 60;
/// Default time a run stays `unknown` before it is `lost` (`--lost-after`).
pub const DEFAULT_LOST_AFTER_SECS: u64 = 120;
/// Default of `--run-log-max`: most log bytes kept per run; an upload past it is 413.
pub const DEFAULT_LOG_CAP: u64 = 128 * 1024 * 1024;
/// Body limit of one log upload.
pub const LOG_CHUNK_BODY: usize = 1024 * 1024;
/// Body limit of an events upload.
pub const EVENTS_BODY: usize = 256 * 1024;
/// Most log bytes one `GET …/log` returns.
pub const LOG_READ_MAX: usize = 1024 * 1024;
/// How often the sweeper looks at leases.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// Default of `--max-runs-in-flight`: runs an agent may hold (claimed, running, unknown).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;
/// Default of `--max-runs-queued`: queued runs an agent may have.
pub const DEFAULT_MAX_QUEUED: usize = 100;
/// Default of `--run-retention`: finished runs and their logs are kept 30 days.
pub const DEFAULT_RETENTION_SECS: u64 = 30 * 86_400;
/// Default of `--run-log-rate`: log bytes a second one run may upload (0: no cap).
pub const DEFAULT_LOG_RATE: u64 = 32 * 1024 * 1024;
/// The sweeper deletes old runs at most this often (and at least once a retention period).
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Runs one prune deletes at most (a full batch prunes again at the next sweep).
pub const PRUNE_BATCH: usize = 1000;

/// The clock of runs: leases, `lost_after` and the sweeper read time only through it.
pub trait Clock: Send + Sync {
    /// Now, unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::state::now_ms()
    }
}

/// The run limits of `serve` (docs/PROTOCOL.md, Limits of runs).
#[derive(Debug, Clone, Copy)]
pub struct RunLimits {
    pub lease_secs: u64,
    pub lost_after_secs: u64,
    pub max_in_flight: usize,
    pub max_queued: usize,
    /// 0: finished runs are kept for ever.
    pub retention_secs: u64,
    /// Log bytes a second per run; 0: no cap.
    pub log_rate: u64,
    /// Log bytes kept per run.
    pub log_max: u64,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            lease_secs: DEFAULT_LEASE_SECS,
            lost_after_secs: DEFAULT_LOST_AFTER_SECS,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_queued: DEFAULT_MAX_QUEUED,
            retention_secs: DEFAULT_RETENTION_SECS,
            log_rate: DEFAULT_LOG_RATE,
            log_max: DEFAULT_LOG_CAP,
        }
    }
}

/// Run settings, the per-agent wake-ups of long polls and the per-run log buckets.
pub struct Runs {
    pub lease_secs: u64,
    pub lost_after_secs: u64,
    pub limits: RunLimits,
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Runs {
    pub fn new(limits: RunLimits) -> Runs {
        Runs {
            lease_secs: limits.lease_secs.max(1),
            lost_after_secs: limits.lost_after_secs,
            limits,
            wakers: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The burst of a run's log bucket: four seconds' worth, at least one upload.
    fn log_burst(&self) -> u64 {
        self.limits
            .log_rate
            .saturating_mul(4)
            .max(LOG_CHUNK_BODY as u64)
    }

    /// Admits `n` log bytes of run `id` at `now_ms`, or the seconds to wait.
    pub fn admit_log(&self, id: &str, now_ms: i64, n: u64) -> Result<(), u64> {
        let rate = self.limits.log_rate;
        if rate == 0 {
            return Ok(());
        }
        let burst = self.log_burst();
        let mut b = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if b.len() >= 4096 {
            // A bucket idle long enough to be full again is the same as none.
            let full_after_ms =
                i64::try_from(burst.saturating_mul(1000) / rate).unwrap_or(i64::MAX);
            b.retain(|_, v| now_ms.saturating_sub(v.at_ms) < full_after_ms);
        }
        let next = take_bytes(b.get(id).copied(), now_ms, rate, burst, n)?;
        b.insert(id.to_string(), next);
        Ok(())
    }

    fn lease(&self, now_ms: i64) -> Lease {
        Lease {
            now_ms,
            lease_ms: i64::try_from(self.lease_secs).unwrap_or(i64::MAX / 2000) * 1000,
        }
    }

    /// The wake-up of agent `id`'s polls.
    pub fn waker(&self, id: &str) -> Arc<Notify> {
        let mut w = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        w.entry(id.to_string()).or_default().clone()
    }

    /// Wakes agent `id`'s waiting polls (a hint: a lost wake-up costs only latency, the
    /// poll finds the run at its next look).
    pub fn wake(&self, id: &str) {
        self.waker(id).notify_waiters();
    }
}

type Shared = State<Arc<Hub>>;

/// The runs routes.
pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/api/v1/runs", post(create).get(list))
        .route("/api/v1/runs/{id}", get(show))
        .route("/api/v1/runs/{id}/log", get(read_log))
        .route("/api/v1/runs/{id}/cancel", post(cancel))
        .route("/api/v1/agent/poll", post(poll))
        .route("/api/v1/agent/runs/{id}/claim", post(claim))
        .route("/api/v1/agent/runs/{id}/events", post(events))
        .route("/api/v1/agent/runs/{id}/log", post(upload_log))
        .route("/api/v1/agent/runs/{id}/result", post(result))
}

/// The API view of a stored run.
pub fn view(r: &RunRow) -> RunView {
    let res = r.result.as_ref();
    RunView {
        id: r.id.clone(),
        agent_id: r.agent_id.clone(),
        pack: r.pack.clone(),
        sha256: r.sha256.clone(),
        action: r.action.clone(),
        params: r.params.clone(),
        idempotent: r.idempotent,
        state: r.state,
        created_at: rfc3339(r.created_ms),
        claimed_at: r.claimed_ms.map(rfc3339),
        started_at: r.started_ms.map(rfc3339),
        finished_at: r.finished_ms.map(rfc3339),
        lease_expires_at: r.lease_expires_ms.map(rfc3339),
        cancel_requested: r.cancel_requested,
        exit_code: res.and_then(|x| x.exit_code),
        signal: res.and_then(|x| x.signal.clone()),
        reason: res.map(|x| x.reason.clone()),
        late: r.late,
        log_bytes: r.log_bytes,
        result_log_bytes: res.map(|x| x.log_bytes),
        retry_of: r.retry_of.clone(),
    }
}

fn refused(id: &str, r: RunRefusal) -> ApiError {
    let conflict = StatusCode::CONFLICT;
    match r {
        RunRefusal::NotFound => ApiError::not_found(format!("no run {id} for this agent")),
        RunRefusal::Taken => ApiError::new(
            conflict,
            ErrorCode::RunClaimed,
            format!("run {id} is claimed by another claimant"),
            "drop the run: another process of this agent has it",
        ),
        RunRefusal::State(s) => ApiError::new(
            conflict,
            ErrorCode::RunState,
            format!("run {id} is {}", s.as_str()),
            "poll again for the runs this agent should work on",
        ),
        RunRefusal::Gap { expected } => {
            let mut e = ApiError::new(
                conflict,
                ErrorCode::LogGap,
                format!("log upload for run {id} leaves a gap: {expected} bytes received"),
                "upload again from expected_offset",
            );
            e.expected_offset = Some(expected);
            e
        }
        RunRefusal::TooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("the log of run {id} would pass the hub's cap (--run-log-max)"),
            "stop uploading the log of this run; its result is still accepted",
        ),
        RunRefusal::Conflict => ApiError::new(
            conflict,
            ErrorCode::ResultConflict,
            format!("run {id} already has a different result"),
            "the first result wins; do not report another",
        ),
        RunRefusal::Gated(Gate::Stopped) => ApiError::new(
            conflict,
            ErrorCode::DispatchStopped,
            format!("dispatch is stopped: run {id} stays queued"),
            "drop the offer; it comes again once an admin runs `outpost-hub dispatch start`",
        ),
        RunRefusal::Gated(Gate::Drained) => ApiError::new(
            conflict,
            ErrorCode::AgentDrained,
            format!("this agent is drained: run {id} stays queued"),
            "drop the offer; it comes again once an admin runs `outpost-hub drain --undo`",
        ),
        RunRefusal::Gated(Gate::InFlightFull { max }) => ApiError::new(
            conflict,
            ErrorCode::InFlightFull,
            format!("this agent already holds {max} runs: run {id} stays queued"),
            "drop the offer; polls offer it again once a held run has finished",
        ),
    }
}

/// The agents `target` names (revoked ones left out).
fn targets(hub: &Hub, req: &CreateRunRequest) -> Result<Vec<Arc<AgentEntry>>, ApiError> {
    let t = &req.target;
    let agents: Vec<Arc<AgentEntry>> = hub
        .registry
        .all()
        .into_iter()
        .filter(|e| {
            let st = e.lock();
            st.revoked_at_ms.is_none()
                && match (&t.agent, &t.group) {
                    (Some(a), _) => &e.id == a,
                    (None, Some(g)) => st.group.as_ref() == Some(g),
                    (None, None) => t.labels.iter().all(|(k, v)| st.labels.get(k) == Some(v)),
                }
        })
        .collect();
    if agents.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no agent matches the target",
            "list agents with `outpost-hub agents`; revoked agents get no runs",
        ));
    }
    Ok(agents)
}

/// Agent `e`'s queued run of `req`, or why it cannot have one.
fn plan_run(
    e: &AgentEntry,
    req: &CreateRunRequest,
    index: &TrustIndex,
    now_ms: i64,
) -> Result<RunRow, ApiError> {
    let catalog = e.lock().packs.clone();
    let packs = catalog.as_ref().map_or(&[][..], |c| c.packs.as_slice());
    let bad = StatusCode::BAD_REQUEST;
    let (pack, action) = resolve_action(packs, &req.action).map_err(|u| match u {
        Unresolved::Unknown => ApiError::new(
            bad,
            ErrorCode::ActionUnknown,
            format!("agent {} has no action {}", e.id, req.action),
            "see the agent's catalog with `outpost-hub agents` or GET /api/v1/agents/{id}",
        ),
        Unresolved::Ambiguous(packs) => ApiError::new(
            bad,
            ErrorCode::ActionUnknown,
            format!(
                "action {} is in several packs of agent {}: {}",
                req.action,
                e.id,
                packs.join(", ")
            ),
            "name it as PACK/ACTION",
        ),
    })?;
    let state = index.state(&pack.name, &pack.sha256);
    if state != CatalogState::Trusted {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::PackUntrusted,
            format!(
                "pack {} on agent {} is {} (sha256 {})",
                pack.name,
                e.id,
                state.as_str(),
                pack.sha256
            ),
            "trust that hash with `outpost-hub packs trust NAME SHA256` after reviewing it",
        ));
    }
    check_params(action, &req.params)?;
    Ok(RunRow::queued(
        token::new_id("r_")?,
        e.id.clone(),
        pack.name.clone(),
        pack.sha256.clone(),
        action.id.clone(),
        req.params.clone(),
        action.idempotent,
        now_ms,
    ))
}

/// `POST /api/v1/runs`: one run per targeted agent, all or none.
async fn create(
    State(hub): Shared,
    headers: HeaderMap,
    Body(body): Body<SMALL_BODY>,
) -> Result<Response, ApiError> {
    require_admin(&hub, &headers)?;
    let req: CreateRunRequest = parse(&body)?;
    req.validate()?;
    let rows = create_runs(&hub, req, ADMIN_TOKEN).await?;
    let status = if rows.0 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = RunsCreatedView {
        runs: rows.1.iter().map(view).collect(),
    };
    Ok((status, Json(body)).into_response())
}

/// Creates the runs of a validated `req` (the API and the dashboard's start form): true
/// with new runs, false with the runs an idempotency key created before. New runs are
/// audited as `who` ([`kind::RUN_START`]: param names, never their values).
pub async fn create_runs(
    hub: &Hub,
    req: CreateRunRequest,
    who: &str,
) -> Result<(bool, Vec<RunRow>), ApiError> {
    if let Some((_, by)) = hub.store.dispatch().await?.stopped {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::DispatchStopped,
            format!("dispatch is stopped (by {by}): no run is created"),
            "start it again with `outpost-hub dispatch start` (see `outpost-hub audit`)",
        ));
    }
    let matched = targets(hub, &req)?;
    let (drained, agents): (Vec<_>, Vec<_>) = matched
        .into_iter()
        .partition(|e| e.lock().drained_at_ms.is_some());
    if agents.is_empty() {
        let ids: Vec<&str> = drained.iter().map(|e| e.id.as_str()).collect();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::AgentDrained,
            format!(
                "every agent the target names is drained: {}",
                ids.join(", ")
            ),
            "undrain with `outpost-hub drain AGENT --undo` (or --group G --undo)",
        ));
    }
    let index = TrustIndex::new(&hub.store.packs().await?);
    let now = hub.clock.now_ms();
    let runs = agents
        .iter()
        .map(|e| plan_run(e, &req, &index, now))
        .collect::<Result<Vec<_>, _>>()?;
    let idempotency = req.idempotency_key.clone().map(|k| {
        let mut canonical = req.clone();
        canonical.idempotency_key = None;
        // A request of strings and maps serializes without failing.
        let text = serde_json::to_string(&canonical).unwrap_or_default();
        (k, token::hash_hex(&text))
    });
    let entry = audit::entry(
        now,
        who,
        kind::RUN_START,
        audit::run_target(&req.target),
        run_start_detail(&req, &runs),
    );
    let created = hub
        .store
        .create_runs(NewRuns {
            idempotency,
            runs,
            now_ms: now,
            max_queued: hub.runs.limits.max_queued,
            audit: Some(entry),
        })
        .await?;
    let (fresh, rows) = match created {
        RunsCreated::New(rows) => (true, rows),
        RunsCreated::Existing(rows) => (false, rows),
        RunsCreated::KeyConflict => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::IdempotencyConflict,
                "idempotency_key was used for a different request",
                "use a new idempotency_key for a new request",
            ))
        }
        RunsCreated::QueueFull { agent_id, queued } => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::QueueFull,
                format!(
                    "agent {agent_id} already has {queued} queued runs (--max-runs-queued {}): nothing created",
                    hub.runs.limits.max_queued
                ),
                "wait for its queue to drain, or cancel queued runs with `outpost-hub cancel RUN`",
            ))
        }
    };
    for r in &rows {
        hub.runs.wake(&r.agent_id);
    }
    Ok((fresh, rows))
}

/// The detail of a run start's audit entry: the action as resolved (pack, short hash), the
/// names of the params (their values may be secrets), and each run with its agent.
fn run_start_detail(req: &CreateRunRequest, runs: &[RunRow]) -> String {
    let mut actions: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "{}/{} {}",
                r.pack,
                r.action,
                r.sha256.get(..12).unwrap_or(&r.sha256)
            )
        })
        .collect();
    actions.dedup();
    let names: Vec<&str> = req.params.keys().map(String::as_str).collect();
    let params = if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    };
    let ids: Vec<String> = runs
        .iter()
        .map(|r| format!("{} ({})", r.id, r.agent_id))
        .collect();
    format!(
        "action {}; params: {params}; {} runs: {}",
        actions.join(", "),
        runs.len(),
        ids.join(", ")
    )
}

#[derive(Deserialize)]
struct ListQuery {
    agent: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/runs?agent=&state=&limit=`: newest first.
async fn list(
    State(hub): Shared,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    require_admin(&hub, &headers)?;
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(RunState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!("state {s} is not a run state"))
                .with_field("state")
                .with_code(ErrorCode::FieldInvalid)
        })?),
    };
    let filter = RunFilter {
        agent: q.agent.filter(|a| !a.is_empty()),
        state,
        limit: q.limit.unwrap_or(100).clamp(1, MAX_LIST_RUNS),
    };
    let rows = hub.store.runs(&filter).await?;
    Ok(Json(rows.iter().map(view).collect::<Vec<_>>()).into_response())
}

async fn stored(hub: &Hub, id: &str) -> Result<RunRow, ApiError> {
    hub.store
        .run(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run {id}")))
}

/// `GET /api/v1/runs/{id}`.
async fn show(
    State(hub): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&hub, &headers)?;
    Ok(Json(view(&stored(&hub, &id).await?)).into_response())
}

#[derive(Deserialize)]
struct OffsetQuery {
    offset: Option<u64>,
}

/// `GET /api/v1/runs/{id}/log?offset=N`: the bytes from N (at most 1 MiB), with the log's
/// size in `X-Log-Size` and where to read next in `X-Next-Offset`.
async fn read_log(
    State(hub): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<OffsetQuery>,
) -> Result<Response, ApiError> {
    require_admin(&hub, &headers)?;
    let offset = q.offset.unwrap_or(0);
    let Some((bytes, size)) = hub.store.read_log(&id, offset, LOG_READ_MAX).await? else {
        return Err(ApiError::not_found(format!("no run {id}")));
    };
    let next = offset.min(size) + bytes.len() as u64;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::HeaderName::from_static("x-log-size"),
                size.to_string(),
            ),
            (
                header::HeaderName::from_static("x-next-offset"),
                next.to_string(),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// `POST /api/v1/runs/{id}/cancel`: queued → canceled at once; held → cancel_requested
/// (the agent sees it in its next poll); final → unchanged.
async fn cancel(
    State(hub): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&hub, &headers)?;
    Ok(Json(view(&cancel_run(&hub, &id, ADMIN_TOKEN).await?)).into_response())
}

/// Cancels run `id` on behalf of `who`, audited (the API and the dashboard's Cancel
/// button); its agent is woken.
pub async fn cancel_run(hub: &Hub, id: &str, who: &str) -> Result<RunRow, ApiError> {
    let entry = audit::entry(
        hub.clock.now_ms(),
        who,
        kind::RUN_CANCEL,
        format!("run {id}"),
        "",
    );
    let Some(r) = hub.store.cancel_run(id, entry).await? else {
        return Err(ApiError::not_found(format!("no run {id}")));
    };
    hub.runs.wake(&r.agent_id);
    Ok(r)
}

fn offer(r: RunRow, lease_secs: u64) -> RunOffer {
    RunOffer {
        run_id: r.id,
        pack: r.pack,
        sha256: r.sha256,
        action: r.action,
        params: r.params,
        lease_secs,
    }
}

/// `POST /api/v1/agent/poll`: renews the held runs, then answers as soon as there is an
/// offer or a cancel for the agent, or after `wait_secs`.
async fn poll(
    State(hub): Shared,
    headers: HeaderMap,
    Body(body): Body<SMALL_BODY>,
) -> Result<Response, ApiError> {
    let entry = agent_auth(&hub, &headers)?;
    let req: PollRequest = parse(&body)?;
    req.validate()?;
    same_agent(&entry.id, &req.agent_id)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(req.wait_secs);
    let waker = hub.runs.waker(&entry.id);
    let mut holding = req.holding;
    loop {
        // Registered before looking, so a run created after the look still wakes us.
        let notified = waker.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let lease = hub.runs.lease(hub.clock.now_ms());
        let found = hub
            .store
            .poll_runs(&entry.id, &holding, lease, hub.runs.limits.max_in_flight)
            .await?;
        holding.clear();
        let done = tokio::time::Instant::now() >= deadline;
        if !found.queued.is_empty() || !found.cancel.is_empty() || done {
            let reply = PollReply {
                offers: found
                    .queued
                    .into_iter()
                    .map(|r| offer(r, hub.runs.lease_secs))
                    .collect(),
                cancel: found.cancel,
            };
            return Ok(Json(reply).into_response());
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// `POST /api/v1/agent/runs/{id}/claim`.
async fn claim(
    State(hub): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(body): Body<SMALL_BODY>,
) -> Result<Response, ApiError> {
    let entry = agent_auth(&hub, &headers)?;
    let req: ClaimRequest = parse(&body)?;
    req.validate()?;
    let lease = hub.runs.lease(hub.clock.now_ms());
    let r = hub
        .store
        .claim_run(
            &id,
            &entry.id,
            &req.claimant,
            lease,
            hub.runs.limits.max_in_flight,
        )
        .await?
        .map_err(|r| refused(&id, r))?;
    Ok(Json(Claimed {
        run_id: r.id,
        lease_secs: hub.runs.lease_secs,
    })
    .into_response())
}

/// `POST /api/v1/agent/runs/{id}/events`.
async fn events(
    State(hub): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(body): Body<EVENTS_BODY>,
) -> Result<Response, ApiError> {
    let entry = agent_auth(&hub, &headers)?;
    let up: EventsUpload = parse(&body)?;
    up.validate()?;
    let lease = hub.runs.lease(hub.clock.now_ms());
    let acked_seq = hub
        .store
        .run_events(&id, &entry.id, up.events, lease)
        .await?
        .map_err(|r| refused(&id, r))?;
    Ok(Json(EventsAck { acked_seq }).into_response())
}

/// `POST /api/v1/agent/runs/{id}/log?offset=N`, the body raw bytes.
async fn upload_log(
    State(hub): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<OffsetQuery>,
    Body(body): Body<LOG_CHUNK_BODY>,
) -> Result<Response, ApiError> {
    let entry = agent_auth(&hub, &headers)?;
    let offset = q
        .offset
        .ok_or_else(|| ApiError::bad_request("offset is required").with_field("offset"))?;
    let now = hub.clock.now_ms();
    if let Err(wait) = hub.runs.admit_log(&id, now, body.len() as u64) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            format!(
                "log uploads of run {id} pass {} bytes a second",
                hub.runs.limits.log_rate
            ),
            "upload the same bytes again after Retry-After seconds",
        );
        e.retry_after = Some(wait);
        return Err(e);
    }
    let lease = hub.runs.lease(now);
    let next_offset = hub
        .store
        .append_log(
            &id,
            &entry.id,
            offset,
            body.to_vec(),
            hub.runs.limits.log_max,
            lease,
        )
        .await?
        .map_err(|r| refused(&id, r))?;
    Ok(Json(LogAck { next_offset }).into_response())
}

/// `POST /api/v1/agent/runs/{id}/result`.
async fn result(
    State(hub): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(body): Body<SMALL_BODY>,
) -> Result<Response, ApiError> {
    let entry = agent_auth(&hub, &headers)?;
    let res: RunResult = parse(&body)?;
    res.validate()?;
    let (r, _same) = hub
        .store
        .finish_run(&id, &entry.id, res, hub.clock.now_ms())
        .await?
        .map_err(|r| refused(&id, r))?;
    // A finished run frees a slot of the agent's runs in flight: its waiting poll may offer.
    hub.runs.wake(&entry.id);
    Ok(Json(ResultAck {
        state: r.state,
        late: r.late,
    })
    .into_response())
}

/// One sweep: expired leases → `unknown`, long unknown → `lost` (idempotent ones queued
/// again, their agent woken). Returns what changed.
pub async fn sweep_once(hub: &Hub) -> Result<crate::store::Swept, crate::store::StoreError> {
    let lost_after_ms = i64::try_from(hub.runs.lost_after_secs).unwrap_or(i64::MAX / 2000) * 1000;
    let swept = hub
        .store
        .sweep_runs(hub.clock.now_ms(), lost_after_ms)
        .await?;
    for id in &swept.lost {
        eprintln!(
            "outpost-hub: run {id} is lost (unknown for {}s)",
            hub.runs.lost_after_secs
        );
    }
    for r in &swept.requeued {
        hub.runs.wake(&r.agent_id);
    }
    Ok(swept)
}

/// Retention: deletes one batch of the finished runs older than `--run-retention`, with
/// their logs. Returns the ids deleted (none when retention is off).
pub async fn prune_once(hub: &Hub) -> Result<Vec<String>, crate::store::StoreError> {
    let now = hub.clock.now_ms();
    match crate::runs::retention_cutoff(now, hub.runs.limits.retention_secs) {
        Some(before) => hub.store.prune_runs(before, PRUNE_BATCH).await,
        None => Ok(Vec::new()),
    }
}

/// The sweeper task: [`sweep_once`] every [`SWEEP_INTERVAL`], [`prune_once`] every
/// [`PRUNE_EVERY`] (or every retention period when that is shorter; at once again after a
/// full batch).
pub async fn sweeper(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let prune_every = PRUNE_EVERY.min(Duration::from_secs(hub.runs.limits.retention_secs.max(1)));
    let mut next_prune = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if let Err(e) = sweep_once(&hub).await {
            eprintln!("outpost-hub: sweeping run leases failed: {e}");
        }
        if tokio::time::Instant::now() < next_prune {
            continue;
        }
        match prune_once(&hub).await {
            Ok(ids) if ids.len() >= PRUNE_BATCH => {}
            Ok(_) => next_prune = tokio::time::Instant::now() + prune_every,
            Err(e) => {
                eprintln!("outpost-hub: deleting old runs failed: {e}");
                next_prune = tokio::time::Instant::now() + prune_every;
            }
        }
    }
}
