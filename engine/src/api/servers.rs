//! `/v1/servers`: the server inventory (create, list, read, replace,
//! delete), each server with its history of runs, and the connection test.
//!
//! `POST /v1/servers/{name}/test` is an `ssh` task like any other: the
//! engine holds no keys, so it submits a probe (`{"server": name,
//! "probe": true}`, one attempt) on the queue asked for and waits for its
//! end; a worker that has the key's secret connects on a fresh connection,
//! checks the host key and authentication, and runs `uname -a`. The answer
//! carries the probe's timings, host key and `uname`, or its classified
//! error; the execution stays in the log like every other.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use runlog_events::server::{LABEL, Server};
use runlog_events::spec::RetryPolicy;
use runlog_events::{Event, QueueName, TaskSpec};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiState, Problem};
use crate::intake::Submission;
use crate::projection::{Filter, summary};
use crate::servers::ServersError;

/// Runs listed with a server.
const RECENT_RUNS: usize = 10;
/// How long a connection test may take when the request does not say.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn problem(e: ServersError) -> Problem {
    match e {
        ServersError::Invalid(errors) => {
            let field = errors.first().map(|e| e.field.clone());
            let problem = Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                ServersError::Invalid(errors).to_string(),
            );
            match field {
                Some(field) => problem.field(field),
                None => problem,
            }
        }
        e @ ServersError::Exists(_) => {
            Problem::new(StatusCode::CONFLICT, "conflict", e.to_string())
        }
        ServersError::Unknown(name) => Problem::not_found(format!("server {name:?}")),
        e @ ServersError::Store(_) => Problem::unavailable(e),
    }
}

fn no_inventory() -> Response {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "this engine has no server inventory",
    )
    .into_response()
}

pub(super) fn read(body: Value) -> Result<Server, Problem> {
    serde_json::from_value(body).map_err(|e| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("not a server: {e}"),
        )
    })
}

/// A server as the API shows it: its definition and its history.
fn view(state: &ApiState, server: &Server, recent: usize) -> Value {
    let filter = Filter {
        labels: [(LABEL.to_owned(), server.name.clone())].into(),
        ..Filter::default()
    };
    let page = state.projection.list(&filter, None, recent.max(1));
    let runs: Vec<Value> = page
        .items
        .iter()
        .take(recent)
        .map(|(id, entry)| summary(id, &entry.state, entry.last_seq))
        .collect();
    let last = page
        .items
        .first()
        .map(|(id, e)| summary(id, &e.state, e.last_seq));
    let mut view = serde_json::to_value(server).expect("a server always serialises");
    view["history"] = json!({
        "last_run": last,
        "last_outcome": last.as_ref().map(|l| l["status"].clone()),
        "runs": runs,
    });
    view
}

/// `POST /v1/servers`: 201 with the server, 409 when the name is taken.
pub(super) async fn create(State(state): State<ApiState>, Json(body): Json<Value>) -> Response {
    let Some(servers) = state.intake.servers() else {
        return no_inventory();
    };
    let server = match read(body) {
        Ok(server) => server,
        Err(problem) => return problem.into_response(),
    };
    match servers.create(server).await {
        Ok(server) => (StatusCode::CREATED, Json(view(&state, &server, 0))).into_response(),
        Err(e) => problem(e).into_response(),
    }
}

/// `GET /v1/servers`: every server with its last run.
pub(super) async fn list(State(state): State<ApiState>) -> Response {
    let Some(servers) = state.intake.servers() else {
        return no_inventory();
    };
    match servers.list().await {
        Ok(list) => {
            let servers: Vec<Value> = list.iter().map(|s| view(&state, s, 0)).collect();
            Json(json!({"servers": servers})).into_response()
        }
        Err(e) => problem(e).into_response(),
    }
}

/// `GET /v1/servers/{name}`: the server and its newest runs.
pub(super) async fn get(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    let Some(servers) = state.intake.servers() else {
        return no_inventory();
    };
    match servers.get(&name).await {
        Ok(Some(server)) => Json(view(&state, &server, RECENT_RUNS)).into_response(),
        Ok(None) => problem(ServersError::Unknown(name)).into_response(),
        Err(e) => problem(e).into_response(),
    }
}

/// `PUT /v1/servers/{name}`: creates (201) or replaces (200); the body's
/// `name`, when given, must be the path's.
pub(super) async fn put(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Json(mut body): Json<Value>,
) -> Response {
    let Some(servers) = state.intake.servers() else {
        return no_inventory();
    };
    if let Some(object) = body.as_object_mut() {
        match object.get("name") {
            None => {
                object.insert("name".into(), name.clone().into());
            }
            Some(given) if given != &Value::String(name.clone()) => {
                return Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    format!("the body names server {given}, the path {name:?}"),
                )
                .field("name")
                .into_response();
            }
            Some(_) => {}
        }
    }
    let server = match read(body) {
        Ok(server) => server,
        Err(problem) => return problem.into_response(),
    };
    match servers.put(server.clone()).await {
        Ok(created) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(view(&state, &server, 0))).into_response()
        }
        Err(e) => problem(e).into_response(),
    }
}

/// `DELETE /v1/servers/{name}`: 200 with `{"deleted": name}`, or 404. The
/// executions that ran on it stay.
pub(super) async fn delete(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    let Some(servers) = state.intake.servers() else {
        return no_inventory();
    };
    match servers.delete(&name).await {
        Ok(true) => Json(json!({"deleted": name})).into_response(),
        Ok(false) => problem(ServersError::Unknown(name)).into_response(),
        Err(e) => problem(e).into_response(),
    }
}

/// The body of a connection test; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TestBody {
    /// The queue whose workers hold the server's key (`default`).
    #[serde(default)]
    queue: Option<QueueName>,
    /// How long to wait, in milliseconds (30,000).
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// `POST /v1/servers/{name}/test`: 200 with `ok` and what the probe found
/// (`ok: false` with its error when it failed), 504 when no worker ended
/// it in time.
pub(super) async fn test(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Option<Json<TestBody>>,
) -> Response {
    let Some(servers) = state.intake.servers() else {
        return no_inventory();
    };
    match servers.get(&name).await {
        Ok(Some(_)) => {}
        Ok(None) => return problem(ServersError::Unknown(name)).into_response(),
        Err(e) => return problem(e).into_response(),
    }
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let timeout = body
        .timeout_ms
        .map_or(TEST_TIMEOUT, Duration::from_millis)
        .min(Duration::from_secs(300));
    let mut spec = TaskSpec::new("ssh");
    spec.queue = body.queue.unwrap_or_default();
    spec.input = json!({"server": name, "probe": true});
    spec.retry = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    };
    spec.attempt_timeout_ms = Some(timeout.as_millis() as u64);
    spec.labels.insert("runlog".into(), "server-test".into());
    // Subscribed before the submission, so its end cannot be missed.
    let mut events = state.live.events();
    let began = std::time::Instant::now();
    let accepted = match state.intake.submit(Submission::new(spec), Utc::now()).await {
        Ok(accepted) => accepted,
        Err(e) => return Problem::from(e).into_response(),
    };
    let id = accepted.execution;
    let ended = tokio::time::timeout(timeout, async {
        loop {
            match events.recv().await {
                Ok(stored) if stored.envelope.execution == id => match &stored.envelope.event {
                    Event::Succeeded(succeeded) => return Ok(succeeded.output.clone()),
                    Event::Failed(failed) => return Err(json!(failed.error)),
                    _ if stored.status().is_some_and(|s| s.is_terminal()) => {
                        return Err(json!({"message": stored.status().map(|s| s.to_string())}));
                    }
                    _ => {}
                },
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if let Some(entry) = state.projection.get(&id)
                        && entry.state.status.is_terminal()
                    {
                        return Err(json!({"message": format!(
                            "ended {}; GET /v1/executions/{id} has the details",
                            entry.state.status
                        )}));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return Err(json!({"message": "the engine is stopping"}));
                }
            }
        }
    })
    .await;
    let elapsed_ms = began.elapsed().as_millis() as u64;
    match ended {
        Ok(Ok(output)) => Json(json!({
            "server": name,
            "ok": true,
            "execution": id,
            "elapsed_ms": elapsed_ms,
            "latency_ms": output["latency_ms"],
            "connect_ms": output["connect_ms"],
            "host_key": output["host_key"],
            "uname": output["uname"],
        }))
        .into_response(),
        Ok(Err(error)) => Json(json!({
            "server": name,
            "ok": false,
            "execution": id,
            "elapsed_ms": elapsed_ms,
            "error": error,
        }))
        .into_response(),
        Err(_) => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "no worker of queue {:?} ended the test within {} ms; is a worker with the \
                 server's key running? (GET /v1/executions/{id})",
                state
                    .projection
                    .get(&id)
                    .and_then(|e| e.state.spec.map(|s| s.queue.to_string()))
                    .unwrap_or_default(),
                timeout.as_millis()
            ),
        )
        .into_response(),
    }
}

/// A submission whose `ssh` input selects servers by label, started once
/// per matching server: `None` when it selects none (an ordinary
/// submission), else the answer `{"fan_out": [{"server", "id", "status",
/// "existing"}, …]}` in server order. A given `id` becomes `<id>-<server>`
/// and an idempotency key `<key>/<server>`, so a repeated fan-out finds its
/// executions again. Both intake doors (HTTP and NATS) answer this way.
pub(crate) async fn fan_out(
    intake: &crate::intake::Intake,
    workers: &crate::workers::LiveWorkers,
    submission: &Submission,
) -> Option<Result<Value, Problem>> {
    let servers = intake.servers()?;
    let specs = match servers.fan_out(&submission.spec).await {
        Ok(None) => return None,
        Ok(Some(specs)) => specs,
        Err(e) => return Some(Err(problem(e))),
    };
    let mut names = Vec::with_capacity(specs.len());
    let mut submissions = Vec::with_capacity(specs.len());
    for (server, mut spec) in specs {
        let execution = match &submission.execution {
            Some(id) => match runlog_events::ExecutionId::new(format!("{id}-{server}")) {
                Ok(id) => Some(id),
                Err(e) => {
                    return Some(Err(Problem::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_body",
                        format!("id {id:?} with server {server:?} is not a valid id: {e}"),
                    )
                    .field("id")));
                }
            },
            None => None,
        };
        if let Some(key) = &mut spec.idempotency_key {
            key.push('/');
            key.push_str(&server);
        }
        submissions.push(Submission {
            spec,
            execution,
            correlation_id: submission.correlation_id.clone(),
            traceparent: submission.traceparent.clone(),
        });
        names.push(server);
    }
    let warnings: Vec<Option<String>> = submissions
        .iter()
        .map(|s| workers.warning(&s.spec))
        .collect();
    let results = intake.submit_many(submissions, Utc::now()).await;
    let answers: Vec<Value> = results
        .into_iter()
        .zip(warnings)
        .zip(names)
        .map(|((result, warning), server)| {
            let mut answer = super::executions::answer(result.map_err(Problem::from), warning);
            answer["server"] = json!(server);
            answer
        })
        .collect();
    Some(Ok(json!({"fan_out": answers})))
}
