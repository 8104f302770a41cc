//! The HTTP API (docs/PROTOCOL.md): router and handlers.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use outpost_proto::{
    AgentDetail, AgentPack, CreateKeyRequest, DiagnosticsReport, DiagnosticsUpload, ErrorCode,
    Health, HeartbeatAck, KeyCreated, PackAdvert, PackView,
};
use serde::Deserialize;
use serde_json::json;

use crate::audit::{self, kind, ADMIN_TOKEN};
use crate::error::ApiError;
use crate::limits::{Body, ClientIp, RateLimiter, DIAGNOSTICS_BODY, HEARTBEAT_BODY, SMALL_BODY};
use crate::packs::TrustIndex;
use crate::state::{
    now_ms, rfc3339, AgentEntry, AgentState, Catalog, EnrollRequest, Enrolled, Heartbeat, Registry,
};
use crate::store::{Enrolled as StoreEnrolled, KeyRefusal, KeyRow, NewAgent, Store};
use crate::token;
use crate::web::{self, AdminPage, CsrfForm, Web, LOGIN_COOKIE, SESSION_COOKIE};

/// Longest enrollment key lifetime accepted.
pub use outpost_proto::MAX_KEY_TTL_SECS;

/// Shared state of the running hub.
pub struct Hub {
    /// Where agents, keys and diagnostics persist (handlers see only the trait).
    pub store: Arc<dyn Store>,
    pub registry: Registry,
    pub interval_secs: u64,
    pub admin_hash: [u8; 32],
    /// Canonical release directory.
    pub releases: PathBuf,
    /// Sessions and login forms of the HTML pages.
    pub web: Web,
    /// Per-IP limit of `POST /api/v1/enroll`.
    pub enroll_limit: RateLimiter,
    /// Per-IP limit of `POST /login`.
    pub login_limit: RateLimiter,
    /// Serializes enrollments so that the database and the registry change together (a
    /// retried enrollment replaces the token of an agent a concurrent one just created).
    pub enroll_lock: tokio::sync::Mutex<()>,
    /// Serializes catalog writes (rare: only a changed catalog is written) so that the
    /// store and the registry keep the same latest catalog.
    pub catalog_lock: tokio::sync::Mutex<()>,
    /// Runs: leases, `lost_after`, the log cap, the per-agent wake-ups of long polls.
    pub runs: crate::runs_api::Runs,
    /// The clock of runs (leases, the sweeper); tests inject their own.
    pub clock: Arc<dyn crate::runs_api::Clock>,
}

/// Tunables of [`Hub::load`].
#[derive(Debug, Clone, Copy)]
pub struct HubOptions {
    /// The hub serves TLS itself.
    pub tls: bool,
    /// Enrollments per minute and address (0: unlimited).
    pub enroll_per_min: u32,
    /// Enrollments an address may make at once.
    pub enroll_burst: u32,
    /// Leases, `lost_after`, the per-agent limits, retention and the log rate of runs.
    pub runs: crate::runs_api::RunLimits,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            tls: false,
            enroll_per_min: 10,
            enroll_burst: 20,
            runs: crate::runs_api::RunLimits::default(),
        }
    }
}

/// Login attempts per minute and address.
pub const LOGIN_PER_MIN: u32 = 10;
/// Login attempts an address may make at once.
pub const LOGIN_BURST: u32 = 10;

impl Hub {
    /// Builds the hub state, loading every agent from the store.
    pub async fn load(
        store: Arc<dyn Store>,
        interval_secs: u64,
        admin_token: &str,
        releases: PathBuf,
        opts: HubOptions,
    ) -> Result<Hub, crate::error::HubError> {
        let registry = Registry::default();
        for a in store.load_agents().await? {
            let mut th = [0u8; 32];
            if hex::decode_to_slice(&a.token_hash, &mut th).is_err() {
                eprintln!(
                    "outpost-hub: agent {} has a malformed token hash; its token will not work",
                    a.id
                );
                continue;
            }
            registry.insert(AgentEntry::new(a.id, th, a.state));
        }
        Ok(Hub {
            store,
            registry,
            interval_secs,
            admin_hash: token::hash(admin_token),
            releases,
            web: Web::new(opts.tls),
            enroll_limit: RateLimiter::new(opts.enroll_per_min, opts.enroll_burst),
            login_limit: RateLimiter::new(LOGIN_PER_MIN, LOGIN_BURST),
            enroll_lock: tokio::sync::Mutex::new(()),
            catalog_lock: tokio::sync::Mutex::new(()),
            runs: crate::runs_api::Runs::new(opts.runs),
            clock: Arc::new(crate::runs_api::SystemClock),
        })
    }
}

type Shared = State<Arc<Hub>>;

/// The full router.
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/healthz", get(healthz))
        .route("/api/v1/keys", post(create_key))
        .route("/api/v1/enroll", post(enroll))
        .route("/api/v1/heartbeat", post(heartbeat))
        .route("/api/v1/diagnostics", post(diagnostics))
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/agents/{id}", get(get_agent).delete(delete_agent))
        .route("/api/v1/agents/{id}/revoke", post(revoke_agent))
        .route("/api/v1/packs", get(list_packs))
        .route("/api/v1/packs/{name}/{sha256}/trust", post(trust_pack))
        .route("/packs", get(packs_page))
        .route("/packs/{name}/{sha256}/trust", post(trust_pack_form))
        .route("/agents/{id}", get(agent_page))
        .merge(crate::releases::routes())
        .merge(crate::runs_api::routes())
        .merge(crate::fleet::routes())
        .merge(crate::pages::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(hub)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such path")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "method not allowed on this path",
        "see docs/PROTOCOL.md",
    )
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let t = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))?
        .trim();
    (!t.is_empty()).then_some(t)
}

pub(crate) fn require_admin(hub: &Hub, headers: &HeaderMap) -> Result<(), ApiError> {
    match bearer(headers) {
        Some(t) if token::ct_eq(&token::hash(t), &hub.admin_hash) => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}

pub(crate) fn agent_auth(hub: &Hub, headers: &HeaderMap) -> Result<Arc<AgentEntry>, ApiError> {
    let t = bearer(headers).ok_or_else(|| ApiError::token_invalid("missing agent token"))?;
    let entry = hub
        .registry
        .by_token(&token::hash(t))
        .ok_or_else(|| ApiError::token_invalid("unknown agent token"))?;
    if entry.lock().revoked_at_ms.is_some() {
        return Err(ApiError::token_revoked());
    }
    Ok(entry)
}

pub(crate) fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid json body: {e}")))
}

async fn healthz() -> Json<Health> {
    Json(Health {
        ok: true,
        version: Some(crate::VERSION.to_string()),
    })
}

/// Audit entries the dashboard shows.
const DASHBOARD_AUDIT: usize = 10;

async fn dashboard(State(hub): Shared, AdminPage(session): AdminPage) -> Response {
    let now = now_ms();
    let views: Vec<_> = hub
        .registry
        .all()
        .iter()
        .map(|e| e.view(now, hub.interval_secs))
        .collect();
    let fleet = async {
        let dispatch = crate::fleet::dispatch(&hub).await?;
        let audit = crate::fleet::audit_entries(&hub, DASHBOARD_AUDIT).await?;
        Ok::<_, ApiError>((dispatch, audit))
    };
    match fleet.await {
        Ok((dispatch, audit)) => {
            let fleet = crate::dashboard::Fleet {
                dispatch: &dispatch,
                audit: &audit,
            };
            web::html(
                StatusCode::OK,
                crate::dashboard::render(&views, hub.interval_secs, &fleet, &session),
            )
        }
        Err(e) => web::error_page(e.status, &e.message, e.hint),
    }
}

/// `GET /login`: the form, with a fresh pre-session (its CSRF token); a logged-in admin is
/// sent to the dashboard.
async fn login_page(State(hub): Shared, headers: HeaderMap) -> Response {
    if web::cookie(&headers, SESSION_COOKIE).is_some_and(|id| hub.web.sessions.get(id).is_some()) {
        return web::see_other("/");
    }
    let form = match hub.web.logins.create() {
        Ok(f) => f,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut r = web::html(StatusCode::OK, crate::dashboard::render_login(&form, None));
    r.headers_mut().append(
        header::SET_COOKIE,
        web::set_cookie(LOGIN_COOKIE, &form.id, web::LOGIN_TTL),
    );
    r
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

/// `POST /login`: CSRF and origin checked against the pre-session, then the admin token
/// (constant time). Success: a new session cookie and 303 to `/`; a wrong token: 401 and
/// the form again.
async fn login(State(hub): Shared, ClientIp(ip): ClientIp, req: Request) -> Response {
    if let Err(e) = hub.login_limit.admit(ip) {
        let mut r = web::error_page(
            StatusCode::TOO_MANY_REQUESTS,
            "too many login attempts from this address",
            "wait a minute, then log in again",
        );
        if let Some(s) = e.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        return r;
    }
    let (form, LoginForm { token: given }) =
        match web::verify_form(req, &hub, &hub.web.logins, LOGIN_COOKIE).await {
            Ok(x) => x,
            Err(r) => return r,
        };
    if !token::ct_eq(&token::hash(given.trim()), &hub.admin_hash) {
        return web::html(
            StatusCode::UNAUTHORIZED,
            crate::dashboard::render_login(&form, Some("wrong admin token")),
        );
    }
    hub.web.logins.remove(&form.id);
    let session = match hub.web.sessions.create() {
        Ok(s) => s,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut r = web::see_other("/");
    let h = r.headers_mut();
    h.append(
        header::SET_COOKIE,
        web::set_cookie(SESSION_COOKIE, &session.id, web::SESSION_TTL),
    );
    h.append(
        header::SET_COOKIE,
        web::set_cookie(LOGIN_COOKIE, "", std::time::Duration::ZERO),
    );
    r
}

#[derive(Deserialize)]
pub(crate) struct NoFields {}

/// `POST /logout`: ends the session (CSRF checked).
async fn logout(State(hub): Shared, f: CsrfForm<NoFields>) -> Response {
    let NoFields {} = f.form;
    hub.web.sessions.remove(&f.session.id);
    let mut r = web::see_other("/login");
    r.headers_mut().append(
        header::SET_COOKIE,
        web::set_cookie(SESSION_COOKIE, "", std::time::Duration::ZERO),
    );
    r
}

async fn create_key(
    State(hub): Shared,
    headers: HeaderMap,
    Body(body): Body<SMALL_BODY>,
) -> Result<Response, ApiError> {
    require_admin(&hub, &headers)?;
    let req: CreateKeyRequest = parse(&body)?;
    req.validate()?;
    let key = token::new_secret(token::KEY_PREFIX)?;
    let now = now_ms();
    let row = KeyRow {
        id: token::new_id("k_")?,
        key_hash: token::hash_hex(&key),
        created_at_ms: now,
        expires_at_ms: now
            .saturating_add(i64::try_from(req.ttl_secs).unwrap_or(i64::MAX / 2000) * 1000),
        group: req.group.filter(|g| !g.is_empty()),
        labels: req.labels,
    };
    let mut detail = format!("expires {}", rfc3339(row.expires_at_ms));
    if let Some(g) = &row.group {
        detail.push_str(&format!(", group {g}"));
    }
    if !row.labels.is_empty() {
        let pairs: Vec<String> = row.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        detail.push_str(&format!(", labels {}", pairs.join(",")));
    }
    let entry = audit::entry(
        now,
        ADMIN_TOKEN,
        kind::KEY_CREATE,
        format!("key {}", row.id),
        detail,
    );
    hub.store.insert_key(&row, entry).await?;
    let body = KeyCreated {
        id: row.id,
        key,
        expires_at: rfc3339(row.expires_at_ms),
        group: row.group,
        labels: row.labels,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

fn key_refused(refusal: KeyRefusal) -> ApiError {
    let (code, message, hint) = match refusal {
        KeyRefusal::Unknown => (
            ErrorCode::KeyUnknown,
            "unknown enrollment key",
            "mint a key with `outpost-hub keys create`",
        ),
        KeyRefusal::Expired => (
            ErrorCode::KeyExpired,
            "enrollment key expired",
            "mint a new key with `outpost-hub keys create`",
        ),
        KeyRefusal::Used => (
            ErrorCode::KeyUsed,
            "enrollment key already used",
            "keys are single use; mint one key per host with `outpost-hub keys create`",
        ),
    };
    ApiError::new(StatusCode::UNAUTHORIZED, code, message, hint)
}

async fn enroll(
    State(hub): Shared,
    ClientIp(ip): ClientIp,
    Body(body): Body<SMALL_BODY>,
) -> Result<Response, ApiError> {
    hub.enroll_limit.admit(ip)?;
    let req: EnrollRequest = parse(&body)?;
    req.validate()?;
    let agent_id = token::new_id("a_")?;
    let agent_token = token::new_secret(token::TOKEN_PREFIX)?;
    let token_hash = token::hash(&agent_token);
    let now = now_ms();
    let key_hash = token::hash_hex(&req.key);
    let nonce_hash = req.nonce.as_deref().map(token::hash_hex);
    let token_hash_hex = hex::encode(token_hash);
    // Held until the registry matches the database (see `Hub::enroll_lock`).
    let _serial = hub.enroll_lock.lock().await;
    let outcome = hub
        .store
        .enroll(NewAgent {
            key_hash: &key_hash,
            nonce_hash: nonce_hash.as_deref(),
            agent_id: &agent_id,
            token_hash: &token_hash_hex,
            facts: &req.facts,
            now_ms: now,
        })
        .await?;
    let reply = |agent_id: String| Enrolled {
        agent_id,
        token: agent_token.clone(),
        heartbeat_interval_secs: Some(hub.interval_secs),
    };
    match outcome.map_err(key_refused)? {
        StoreEnrolled::Created { group, labels } => {
            let f = req.facts;
            let state = AgentState {
                hostname: f.hostname,
                machine_id: f.machine_id,
                distro: f.distro,
                arch: f.arch,
                version: f.version,
                mode: f.mode,
                group,
                labels,
                enrolled_at_ms: now,
                ..Default::default()
            };
            hub.registry
                .insert(AgentEntry::new(agent_id.clone(), token_hash, state));
            Ok((StatusCode::CREATED, Json(reply(agent_id))).into_response())
        }
        StoreEnrolled::Retry { agent_id: existing } => {
            // The agent never got (or never used) its token: a heartbeat or a revocation
            // closes the retry window, so a leaked key + nonce cannot take over a live agent.
            let fresh = hub.registry.by_id(&existing).is_some_and(|e| {
                let st = e.lock();
                st.last_heartbeat_ms.is_none() && st.revoked_at_ms.is_none()
            });
            if !fresh {
                return Err(key_refused(KeyRefusal::Used));
            }
            if !hub.store.set_token(&existing, &token_hash_hex).await? {
                return Err(key_refused(KeyRefusal::Used));
            }
            hub.registry.replace_token(&existing, token_hash);
            Ok((StatusCode::OK, Json(reply(existing))).into_response())
        }
    }
}

async fn heartbeat(
    State(hub): Shared,
    headers: HeaderMap,
    Body(body): Body<HEARTBEAT_BODY>,
) -> Result<Response, ApiError> {
    let entry = agent_auth(&hub, &headers)?;
    let mut hb: Heartbeat = parse(&body)?;
    hb.validate()?;
    same_agent(&entry.id, &hb.agent_id)?;
    let now = now_ms();
    if let Some(packs) = hb.packs.take() {
        update_catalog(&hub, &entry, packs, now).await?;
    }
    entry.lock().apply(hb, now);
    hub.registry.mark_dirty(&entry);
    Ok(Json(HeartbeatAck {
        interval_secs: hub.interval_secs,
        server_time: Some(rfc3339(now)),
    })
    .into_response())
}

/// Keeps `packs` as the agent's catalog. Cheap when unchanged (the common case: one hash
/// compared); a changed catalog is written at once with its new pending packs, one writer
/// at a time so the store and the registry agree.
async fn update_catalog(
    hub: &Hub,
    entry: &Arc<AgentEntry>,
    packs: Vec<PackAdvert>,
    now: i64,
) -> Result<(), ApiError> {
    let hash = crate::packs::catalog_hash(&packs);
    let unchanged = || entry.lock().packs.as_ref().is_some_and(|c| c.hash == hash);
    if unchanged() {
        return Ok(());
    }
    let _serial = hub.catalog_lock.lock().await;
    if unchanged() {
        return Ok(());
    }
    let catalog = Arc::new(Catalog { packs, hash });
    if hub
        .store
        .store_catalog(&entry.id, catalog.clone(), now)
        .await?
    {
        entry.lock().packs = Some(catalog);
    }
    Ok(())
}

/// A body's `agent_id` must be the one the token belongs to.
pub(crate) fn same_agent(token_owner: &str, claimed: &str) -> Result<(), ApiError> {
    if claimed == token_owner {
        Ok(())
    } else {
        Err(ApiError::token_invalid(format!(
            "token does not belong to agent {claimed}"
        )))
    }
}

async fn diagnostics(
    State(hub): Shared,
    headers: HeaderMap,
    Body(body): Body<DIAGNOSTICS_BODY>,
) -> Result<Response, ApiError> {
    let entry = agent_auth(&hub, &headers)?;
    let d: DiagnosticsUpload<serde_json::Value> = parse(&body)?;
    d.validate()?;
    same_agent(&entry.id, &d.agent_id)?;
    let report = d.report.to_string();
    hub.store
        .store_diagnostics(&entry.id, &report, now_ms())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({}))).into_response())
}

async fn list_agents(State(hub): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    require_admin(&hub, &headers)?;
    let now = now_ms();
    let views: Vec<_> = hub
        .registry
        .all()
        .iter()
        .map(|e| e.view(now, hub.interval_secs))
        .collect();
    Ok(Json(views).into_response())
}

fn lookup(hub: &Hub, id: &str) -> Result<Arc<AgentEntry>, ApiError> {
    hub.registry
        .by_id(id)
        .ok_or_else(|| ApiError::not_found(format!("no agent {id}")))
}

async fn get_agent(
    State(hub): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&hub, &headers)?;
    let entry = lookup(&hub, &id)?;
    let diagnostics = hub
        .store
        .diagnostics(&id)
        .await?
        .map(|d| DiagnosticsReport {
            received_at: rfc3339(d.received_at_ms),
            report: serde_json::from_str::<serde_json::Value>(&d.report)
                .unwrap_or(serde_json::Value::Null),
        });
    let packs = agent_packs(&hub, &entry).await?;
    Ok(Json(AgentDetail {
        agent: entry.view(now_ms(), hub.interval_secs),
        diagnostics,
        packs,
    })
    .into_response())
}

/// Agent `entry`'s catalog with each pack's state; `None` before its first catalog.
async fn agent_packs(hub: &Hub, entry: &AgentEntry) -> Result<Option<Vec<AgentPack>>, ApiError> {
    let Some(catalog) = entry.lock().packs.clone() else {
        return Ok(None);
    };
    let index = TrustIndex::new(&hub.store.packs().await?);
    Ok(Some(crate::packs::agent_packs(&catalog, &index)))
}

/// Every trust record with the number of agents advertising it.
async fn pack_views(hub: &Hub) -> Result<Vec<PackView>, ApiError> {
    let rows = hub.store.packs().await?;
    let catalogs: Vec<Arc<Catalog>> = hub
        .registry
        .all()
        .iter()
        .filter_map(|e| e.lock().packs.clone())
        .collect();
    let counts = crate::packs::advertised(&catalogs);
    Ok(rows
        .iter()
        .map(|r| {
            let n = counts
                .get(&(r.name.clone(), r.sha256.clone()))
                .copied()
                .unwrap_or(0);
            crate::packs::view(r, n)
        })
        .collect())
}

/// Trusts (name, sha256) on behalf of `by`; 404 `not_found` for a pair never seen.
async fn trust(hub: &Hub, name: &str, sha256: &str, by: &str) -> Result<PackView, ApiError> {
    let entry = audit::entry(
        now_ms(),
        by,
        kind::PACK_TRUST,
        format!("pack {name} {sha256}"),
        "",
    );
    let Some(row) = hub.store.trust_pack(name, sha256, entry).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no pack {name} with sha256 {sha256}"),
            "list the packs agents advertised with `outpost-hub packs` (GET /api/v1/packs)",
        ));
    };
    let agents = hub
        .registry
        .all()
        .iter()
        .filter(|e| {
            e.lock().packs.as_ref().is_some_and(|c| {
                c.packs
                    .iter()
                    .any(|p| p.name == row.name && p.sha256 == row.sha256)
            })
        })
        .count();
    Ok(crate::packs::view(&row, agents as u64))
}

async fn list_packs(State(hub): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    require_admin(&hub, &headers)?;
    Ok(Json(pack_views(&hub).await?).into_response())
}

/// `POST /api/v1/packs/{name}/{sha256}/trust`: idempotent.
async fn trust_pack(
    State(hub): Shared,
    headers: HeaderMap,
    Path((name, sha256)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    require_admin(&hub, &headers)?;
    Ok(Json(trust(&hub, &name, &sha256, ADMIN_TOKEN).await?).into_response())
}

/// `GET /packs`: pending and trusted packs, a Trust button on each pending one.
async fn packs_page(State(hub): Shared, AdminPage(session): AdminPage) -> Response {
    match pack_views(&hub).await {
        Ok(packs) => web::html(
            StatusCode::OK,
            crate::dashboard::render_packs(&packs, &session),
        ),
        Err(e) => web::error_page(e.status, &e.message, e.hint),
    }
}

/// `POST /packs/{name}/{sha256}/trust` (CSRF checked): trusts, then back to `/packs`.
async fn trust_pack_form(
    State(hub): Shared,
    Path((name, sha256)): Path<(String, String)>,
    f: CsrfForm<NoFields>,
) -> Response {
    let NoFields {} = f.form;
    let by = web::session_label(&f.session);
    match trust(&hub, &name, &sha256, &by).await {
        Ok(_) => web::see_other("/packs"),
        Err(e) => web::error_page(e.status, &e.message, e.hint),
    }
}

/// Runs an agent's page lists (newest first).
const AGENT_PAGE_RUNS: usize = 50;

/// `GET /agents/{id}`: one agent with its catalog, each pack's state, start forms and runs.
async fn agent_page(
    State(hub): Shared,
    AdminPage(session): AdminPage,
    Path(id): Path<String>,
) -> Response {
    let Some(entry) = hub.registry.by_id(&id) else {
        return web::error_page(
            StatusCode::NOT_FOUND,
            &format!("no agent {id}"),
            "check the id on the dashboard",
        );
    };
    let found = async {
        let packs = agent_packs(&hub, &entry).await?;
        let filter = crate::store::RunFilter {
            agent: Some(id.clone()),
            state: None,
            limit: AGENT_PAGE_RUNS,
        };
        let runs = hub.store.runs(&filter).await?;
        Ok::<_, ApiError>((packs, runs))
    };
    match found.await {
        Ok((packs, runs)) => {
            let runs: Vec<_> = runs.iter().map(crate::runs_api::view).collect();
            web::html(
                StatusCode::OK,
                crate::dashboard::render_agent(
                    &entry.view(now_ms(), hub.interval_secs),
                    packs.as_deref(),
                    &runs,
                    &session,
                ),
            )
        }
        Err(e) => web::error_page(e.status, &e.message, e.hint),
    }
}

async fn revoke_agent(
    State(hub): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&hub, &headers)?;
    let entry = lookup(&hub, &id)?;
    let now = now_ms();
    let record = audit::entry(
        now,
        ADMIN_TOKEN,
        kind::AGENT_REVOKE,
        format!("agent {id}"),
        format!("hostname {}", entry.lock().hostname),
    );
    if !hub.store.revoke(&id, record).await? {
        return Err(ApiError::not_found(format!("no agent {id}")));
    }
    {
        let mut st = entry.lock();
        st.revoked_at_ms.get_or_insert(now);
    }
    Ok(Json(entry.view(now, hub.interval_secs)).into_response())
}

async fn delete_agent(
    State(hub): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&hub, &headers)?;
    let hostname = lookup(&hub, &id)?.lock().hostname.clone();
    let record = audit::entry(
        now_ms(),
        ADMIN_TOKEN,
        kind::AGENT_DELETE,
        format!("agent {id}"),
        format!("hostname {hostname}"),
    );
    let deleted = hub.store.delete(&id, record).await?;
    hub.registry.remove(&id);
    if !deleted {
        return Err(ApiError::not_found(format!("no agent {id}")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
