//! The HTTP API: JSON over axum, problem+json errors, Server-Sent Events.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/executions` | submit (the HTTP intake door) |
//! | `POST /v1/executions/batch` | submit up to [`MAX_BATCH`] specs, one result each |
//! | `GET /v1/executions` | list with filters and cursor pagination |
//! | `GET /v1/executions/{id}` | state, attempts, progress, output or error |
//! | `GET /v1/executions/{id}/events` | the raw history |
//! | `GET /v1/executions/{id}/logs` | log lines |
//! | `GET /v1/executions/{id}/cost` | what each attempt used (CPU, memory, bytes) and cost |
//! | `GET /v1/costs` | resources and cost summed by queue, kind, label or day |
//! | `POST /v1/executions/{id}/cancel` | cancel |
//! | `POST /v1/executions/{id}/retry` | a new attempt chain for an ended execution |
//! | `GET /v1/executions/{id}/stream` | SSE: its events, ending after the terminal one |
//! | `GET /v1/executions/{id}/logs/stream` | SSE: its log lines |
//! | `GET /v1/stream` | SSE: every execution's events (filters: queue, status, type) |
//! | `GET /v1/queues`, `GET /v1/workers`, `GET /v1/stats` | queues, live workers, counts and rates |
//! | `GET /v1/breakers` | the workers' circuit breakers and how many are in each state |
//! | `GET /healthz`, `GET /readyz` | liveness; readiness once the projection caught up |
//! | `GET /v1/dead-letters`, `GET /v1/dead-letters/{id}` | dead letters with filters; one with its error history |
//! | `POST /v1/dead-letters/replay` | replay dead letters by filter, once each (a bulk operation) |
//! | `POST /v1/executions/cancel` | cancel executions by filter (a bulk operation) |
//! | `GET /v1/operations`, `GET /v1/operations/{id}`, `POST /v1/operations/{id}/cancel` | bulk operations: audit, progress, cancel |
//! | `POST /v1/schedules`, `GET /v1/schedules` | create a schedule; list them |
//! | `GET`, `PUT`, `DELETE /v1/schedules/{id}` | one schedule: read (next ticks, run counts), replace, delete |
//! | `POST /v1/schedules/{id}/pause`, `/resume`, `/run-now`, `/backfill` | pause, resume, run now, run the ticks of a past range |
//! | `GET /v1/schedules/{id}/runs`, `/events` | its runs with their outcomes and durations; its own history |
//! | `GET /v1/secrets`, `PUT`, `DELETE /v1/secrets/{name}`, `POST /v1/secrets/rotate` | named secrets, sealed at rest: list names (never values), set, remove, seal everything again under the current key |
//! | `POST /v1/tokens`, `GET /v1/tokens`, `DELETE /v1/tokens/{id}` | API tokens: make one (its secret shown once), list, revoke |
//! | `GET`, `POST`, `DELETE /v1/session` | the dashboard's session: who is logged in, log in with a token, log out |
//! | `GET /`, `GET /assets/{file}` | the [dashboard](dashboard) |
//!
//! With auth on ([`auth`]), every route but health, metrics, the session
//! and the dashboard's files needs a token with the route's scope.

pub mod auth;
pub(crate) mod batch;
pub mod bodies;
mod breakers;
mod costs;
pub mod dashboard;
mod dead_letters;
pub(crate) mod executions;
mod log_search;
mod pools;
pub mod problem;
mod schedules;
mod secrets;
pub(crate) mod servers;
mod sse;
mod workflow_executions;
mod workflows;

use std::sync::Arc;

use async_nats::jetstream;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures::StreamExt;
use runlog_events::Subjects;
use runlog_events::journal::Journal;
use serde_json::json;

use crate::intake::Intake;
use crate::live::Live;
use crate::projection::Projection;
pub use batch::{MAX_BATCH, MAX_BATCH_BODY};
pub use executions::SubmitBody;
pub use problem::Problem;

/// The largest request body accepted (a submission with its input).
pub const MAX_BODY: usize = runlog_events::codec::DEFAULT_MAX_PAYLOAD + 64 * 1024;

/// What every handler reads.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Submissions.
    pub intake: Intake,
    /// Reads and transitions.
    pub journal: Journal,
    /// The read model.
    pub projection: Arc<Projection>,
    /// Live feeds.
    pub live: Live,
    /// Names.
    pub subjects: Subjects,
    /// The consuming connection's JetStream context (reads).
    pub js: jetstream::Context,
    /// Cancelled when the engine stops: open feeds end.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Bulk operations (replays, cancels).
    pub operations: crate::operations::Operations,
    /// The live workers (warnings about tasks none would take).
    pub workers: crate::workers::LiveWorkers,
    /// Workflow definitions.
    pub workflows: crate::workflows::Workflows,
    /// Agent pools and their tokens.
    pub pools: crate::pools::Pools,
    /// Workflow executions.
    pub runner: crate::workflow_runner::Runner,
    /// Schedules.
    pub scheduler: crate::scheduler::Scheduler,
    /// Retries of ended executions.
    pub retries: crate::retry::Retries,
    /// The reactor's counters (messages it could not read, retries).
    pub reactor: Arc<crate::reactor::ReactorStats>,
    /// How long a running attempt may go silent (worker alive) before it is
    /// shown as stuck.
    pub stuck_after: std::time::Duration,
    /// What `/metrics` shows.
    pub metrics: Arc<crate::metrics::EngineMetrics>,
    /// The Server-Sent-Event feeds open.
    pub feeds: crate::metrics::FeedCount,
    /// Where every state-changing request is recorded.
    pub audit: crate::audit::Audit,
    /// What resources cost (`[engine.prices]`; empty: no cost figures).
    pub prices: runlog_events::resources::Prices,
    /// The API tokens.
    pub tokens: crate::tokens::Tokens,
    /// Named secrets; `None` when the engine has no secret key.
    pub secrets: Option<runlog_events::secrets::Secrets>,
    /// Whether requests need a token ([`auth`]).
    pub auth: bool,
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    let audit = state.audit.clone();
    Router::new()
        .route(
            "/v1/executions",
            post(executions::submit).get(executions::list),
        )
        .route(
            "/v1/executions/batch",
            // Its own limit: the router's fits one submission.
            post(batch::submit).layer(DefaultBodyLimit::max(MAX_BATCH_BODY)),
        )
        .route("/v1/executions/{id}", get(executions::get))
        .route("/v1/executions/{id}/events", get(executions::events))
        .route("/v1/executions/{id}/logs", get(executions::logs))
        .route("/v1/executions/{id}/cost", get(costs::execution))
        .route("/v1/costs", get(costs::list))
        .route("/v1/executions/{id}/cancel", post(executions::cancel))
        .route("/v1/executions/{id}/retry", post(executions::retry))
        .route("/v1/executions/{id}/stream", get(sse::execution))
        .route("/v1/executions/{id}/logs/stream", get(sse::logs))
        .route("/v1/stream", get(sse::all))
        .route("/v1/queues", get(queues))
        .route("/v1/workers", get(workers))
        .route("/v1/breakers", get(breakers::list))
        .route("/v1/logs/search", get(log_search::search))
        .route("/v1/audit", get(audit_trail))
        .route("/v1/stats", get(stats))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .route("/v1/dead-letters", get(dead_letters::list))
        .route("/v1/dead-letters/replay", post(dead_letters::replay))
        .route("/v1/dead-letters/{id}", get(dead_letters::get))
        .route("/v1/executions/cancel", post(dead_letters::cancel))
        .route("/v1/operations", get(dead_letters::operations))
        .route("/v1/operations/{id}", get(dead_letters::operation))
        .route(
            "/v1/operations/{id}/cancel",
            post(dead_letters::cancel_operation),
        )
        .route(
            "/v1/workflows",
            post(workflows::define).get(workflows::list),
        )
        .route("/v1/workflows/{name}/versions", get(workflows::versions))
        .route(
            "/v1/workflows/{name}/versions/{version}",
            get(workflows::version),
        )
        .route(
            "/v1/workflows/{name}/executions",
            post(workflow_executions::start),
        )
        .route(
            "/v1/schedules",
            post(schedules::create).get(schedules::list),
        )
        .route(
            "/v1/schedules/{id}",
            get(schedules::get)
                .put(schedules::update)
                .delete(schedules::delete),
        )
        .route("/v1/pools", post(pools::create).get(pools::list))
        .route("/v1/pools/{name}/tokens", post(pools::issue))
        .route("/v1/pools/{name}/tokens/{id}", delete(pools::revoke))
        .route("/v1/servers", post(servers::create).get(servers::list))
        .route(
            "/v1/servers/{name}",
            get(servers::get).put(servers::put).delete(servers::delete),
        )
        .route("/v1/servers/{name}/test", post(servers::test))
        .route("/v1/schedules/{id}/pause", post(schedules::pause))
        .route("/v1/schedules/{id}/resume", post(schedules::resume))
        .route("/v1/schedules/{id}/run-now", post(schedules::run_now))
        .route("/v1/schedules/{id}/backfill", post(schedules::backfill))
        .route("/v1/schedules/{id}/runs", get(schedules::runs))
        .route("/v1/schedules/{id}/events", get(schedules::events))
        .route("/v1/workflow-executions", get(workflow_executions::list))
        .route(
            "/v1/workflow-executions/{id}",
            get(workflow_executions::get),
        )
        .route(
            "/v1/workflow-executions/{id}/stream",
            get(workflow_executions::stream),
        )
        .route(
            "/v1/workflow-executions/{id}/cancel",
            post(workflow_executions::cancel),
        )
        .route(
            "/v1/workflow-executions/{id}/retry",
            post(workflow_executions::retry),
        )
        .route(
            "/v1/workflow-executions/{id}/signal",
            post(workflow_executions::signal),
        )
        .route("/v1/secrets", get(secrets::list))
        .route("/v1/secrets/rotate", post(secrets::rotate))
        .route(
            "/v1/secrets/{name}",
            axum::routing::put(secrets::set).delete(secrets::remove),
        )
        .route("/v1/tokens", post(auth::create).get(auth::list))
        .route("/v1/tokens/{id}", delete(auth::revoke))
        .route(
            "/v1/session",
            get(auth::session).post(auth::login).delete(auth::logout),
        )
        .merge(dashboard::router())
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "no_route",
                "no such route; the API lives under /v1 (see docs/api.md)",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            audit,
            crate::audit::layer,
        ))
        .with_state(state)
}

async fn healthz(State(state): State<ApiState>) -> Response {
    match state.js.client().connection_state() {
        async_nats::connection::State::Connected => {
            axum::Json(json!({"status": "ok"})).into_response()
        }
        other => Problem::unavailable(format!("the NATS connection is {other:?}")).into_response(),
    }
}

/// `GET /metrics`: the Prometheus text format (`docs/metrics.md`).
async fn metrics(State(state): State<ApiState>) -> Response {
    // Breakers the bucket cannot list now are left out of this scrape.
    let breakers = breakers::records(&state)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|record| {
            let key = record.get("key")?.as_str()?.to_owned();
            let state = record.get("state")?.as_str()?.to_owned();
            Some((key, state))
        })
        .collect();
    let p = &state.projection;
    let text = state.metrics.scrape(crate::metrics::Readings {
        queues: p
            .queues()
            .into_iter()
            .map(|(queue, tally)| crate::metrics::QueueReading {
                queue: queue.to_string(),
                queued: tally.queued,
                running: tally.running,
                retry_scheduled: tally.retry_scheduled,
            })
            .collect(),
        counts: p.counts(),
        lag: p.lag(),
        applied_seq: p.applied_seq(),
        sse_clients: state.feeds.get(),
        breakers,
    });
    (
        [(
            axum::http::header::CONTENT_TYPE,
            runlog_metrics::CONTENT_TYPE,
        )],
        text,
    )
        .into_response()
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Default, serde::Deserialize)]
struct AuditQuery {
    actor: Option<String>,
    route: Option<String>,
    method: Option<String>,
    target: Option<String>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
    limit: Option<usize>,
}

/// `GET /v1/audit`: the newest state-changing commands, newest first.
async fn audit_trail(
    State(state): State<ApiState>,
    query: Result<axum::extract::Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match query {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => {
            return Problem::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text())
                .into_response();
        }
    };
    let filter = crate::audit::AuditFilter {
        actor: q.actor,
        route: q.route,
        method: q.method,
        target: q.target,
        since: q.since,
        until: q.until,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    match crate::audit::read(&state.js, &state.subjects, &filter, limit).await {
        Ok(records) => axum::Json(json!({ "records": records })).into_response(),
        Err(e) => Problem::unavailable(e).into_response(),
    }
}

async fn readyz(State(state): State<ApiState>) -> Response {
    if state.projection.is_caught_up() {
        axum::Json(json!({
            "status": "ready",
            "applied_seq": state.projection.applied_seq(),
        }))
        .into_response()
    } else {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!(
                "the projection is replaying the log (at sequence {}); ready once it caught up",
                state.projection.applied_seq()
            ),
        )
        .into_response()
    }
}

async fn queues(State(state): State<ApiState>) -> Response {
    let served = state.workers.served();
    let queues: Vec<_> = state
        .projection
        .queues()
        .into_iter()
        .map(|(name, tally)| {
            let workers = served
                .as_ref()
                .map(|s| s.get(name.as_str()).copied().unwrap_or(0));
            let mut queue = json!({
                "queue": name,
                "queued": tally.queued,
                "depth": tally.queued.values().sum::<u64>(),
                "running": tally.running,
                "retry_scheduled": tally.retry_scheduled,
                "workers": workers,
            });
            if workers == Some(0) {
                queue["warning"] = json!(format!("no live worker serves queue \"{name}\""));
            }
            queue
        })
        .collect();
    axum::Json(json!({ "queues": queues })).into_response()
}

async fn stats(State(state): State<ApiState>) -> Response {
    let p = &state.projection;
    axum::Json(json!({
        "executions": p.len(),
        "by_status": p.counts(),
        "rates": p.rates(chrono::Utc::now()),
        "applied_seq": p.applied_seq(),
        "restored_from_seq": p.restored_seq(),
        "skipped_events": p.skipped(),
        "reactor": reactor_counters(&state.reactor),
    }))
    .into_response()
}

/// What the reactor did; `bad` counts the messages it could not read
/// (junk on an event, timer or advisory subject), which it skips.
fn reactor_counters(stats: &crate::reactor::ReactorStats) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    json!({
        "handled": stats.handled.load(Relaxed),
        "dispatched": stats.dispatched.load(Relaxed),
        "timers": stats.timers.load(Relaxed),
        "bad": stats.bad.load(Relaxed),
        "retried": stats.retried.load(Relaxed),
    })
}

/// Live workers, from the registry bucket (absent until a worker started).
async fn workers(State(state): State<ApiState>) -> Response {
    match registry(&state).await {
        Ok(workers) => axum::Json(json!({ "workers": workers })).into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// Every entry of the worker registry, as the workers wrote them.
pub(crate) async fn registry(state: &ApiState) -> Result<Vec<serde_json::Value>, Problem> {
    let Ok(store) = state
        .js
        .get_key_value(state.subjects.workers_bucket())
        .await
    else {
        return Ok(Vec::new());
    };
    let mut workers = Vec::new();
    let keys = match store.keys().await {
        Ok(keys) => keys.collect::<Vec<_>>().await,
        Err(e) => return Err(Problem::unavailable(e)),
    };
    for key in keys.into_iter().flatten() {
        if let Ok(Some(value)) = store.get(&key).await
            && let Ok(entry) = serde_json::from_slice::<serde_json::Value>(&value)
        {
            workers.push(entry);
        }
    }
    Ok(workers)
}
