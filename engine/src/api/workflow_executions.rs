//! Workflow executions: start one, read it (every node with its runs,
//! timings and outputs), follow it live, cancel, retry from the failed
//! nodes, signal a waiting node.

use std::convert::Infallible;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use runlog_events::ExecutionId;
use runlog_events::workflow::run::{WorkflowCommand, WorkflowRejection};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::{ApiState, Problem};
use crate::workflow_runner::{self, RunnerError};

/// Body of `POST /v1/workflows/{name}/executions`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StartBody {
    /// The input (`.inputs` of its expressions).
    #[serde(default)]
    input: Value,
    /// A version; the newest when absent.
    #[serde(default)]
    version: Option<u32>,
}

/// `POST /v1/workflows/{name}/executions`: 201 with the execution.
pub(super) async fn start(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    axum::Extension(caller): axum::Extension<crate::tokens::Caller>,
    headers: axum::http::HeaderMap,
    body: Option<Json<StartBody>>,
) -> Response {
    if let Err(problem) = super::auth::not_queue_limited(&caller, "start a workflow") {
        return problem.into_response();
    }
    let Json(body) = body.unwrap_or_default();
    // The workflow's span hangs under the caller's, when it sent one.
    let traceparent = super::executions::traceparent(&headers);
    match state
        .runner
        .start(&name, body.version, body.input, traceparent)
        .await
    {
        Ok((id, history)) => (
            StatusCode::CREATED,
            Json(workflow_runner::view(&id, &history)),
        )
            .into_response(),
        Err(e) => problem(e).into_response(),
    }
}

/// Query of `GET /v1/workflow-executions`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    workflow: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/workflow-executions`: newest first.
pub(super) async fn list(State(state): State<ApiState>, Query(q): Query<ListQuery>) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let items = state.runner.list(q.workflow.as_deref(), limit);
    Json(json!({ "items": items })).into_response()
}

/// `GET /v1/workflow-executions/{id}`.
pub(super) async fn get(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let Ok(id) = ExecutionId::new(&id) else {
        return not_found(&id).into_response();
    };
    match state.runner.get(&id).await {
        Ok(Some(history)) => Json(workflow_runner::view(&id, &history)).into_response(),
        Ok(None) => not_found(id.as_str()).into_response(),
        Err(e) => problem(e).into_response(),
    }
}

/// Body of the cancel route.
#[derive(Debug, Default, Deserialize)]
pub(super) struct CancelBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/workflow-executions/{id}/cancel`: 202; every running node's
/// task is asked to stop, and the execution ends `cancelled` once they did.
pub(super) async fn cancel(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Option<Json<CancelBody>>,
) -> Response {
    let reason = body
        .and_then(|Json(b)| b.reason)
        .unwrap_or_else(|| "cancelled through the API".to_owned());
    act(&state, &id, WorkflowCommand::Cancel { reason }).await
}

/// `POST /v1/workflow-executions/{id}/retry`: 202; the failed nodes and what
/// depends on them run again, the nodes that succeeded keep their outputs.
pub(super) async fn retry(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    act(&state, &id, WorkflowCommand::Retry).await
}

/// Body of the signal route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SignalBody {
    node: String,
    #[serde(default)]
    payload: Value,
}

/// `POST /v1/workflow-executions/{id}/signal`: ends a waiting `wait` node
/// with `payload` as its output.
pub(super) async fn signal(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Json(body): Json<SignalBody>,
) -> Response {
    let command = WorkflowCommand::Signal {
        node: body.node,
        payload: body.payload,
    };
    act(&state, &id, command).await
}

async fn act(state: &ApiState, id: &str, command: WorkflowCommand) -> Response {
    let Ok(id) = ExecutionId::new(id) else {
        return not_found(id).into_response();
    };
    match state.runner.command(&id, &command).await {
        Ok(history) => (
            StatusCode::ACCEPTED,
            Json(workflow_runner::view(&id, &history)),
        )
            .into_response(),
        Err(e) => problem(e).into_response(),
    }
}

/// `GET /v1/workflow-executions/{id}/stream`: Server-Sent Events, one
/// `workflow` event with the whole execution (as `GET` shows it) now and
/// after every change; the feed ends after the execution ended.
pub(super) async fn stream(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let Ok(id) = ExecutionId::new(&id) else {
        return not_found(&id).into_response();
    };
    // Subscribe first: no change between the first view and the feed is
    // missed.
    let mut changes = state.runner.changes();
    match state.runner.get(&id).await {
        Ok(Some(_)) => {}
        Ok(None) => return not_found(id.as_str()).into_response(),
        Err(e) => return problem(e).into_response(),
    }
    let runner = state.runner.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(16);
    tokio::spawn(async move {
        let mut last = 0;
        loop {
            if let Ok(Some(history)) = runner.get(&id).await
                && history.last_seq > last
            {
                last = history.last_seq;
                let view = workflow_runner::view(&id, &history);
                let event = SseEvent::default()
                    .event("workflow")
                    .id(last.to_string())
                    .json_data(&view)
                    .unwrap_or_default();
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
                let ended = history.state.status.is_terminal()
                    && history.state.running_runs().next().is_none();
                if ended {
                    return;
                }
            }
            // Until this execution changes (or the feed lagged: look again).
            loop {
                match changes.recv().await {
                    Ok(changed) if changed != id => continue,
                    Ok(_) | Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                }
            }
        }
    });
    super::sse::sse(&state, rx)
}

fn not_found(id: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "workflow execution {id:?} does not exist; list them with GET /v1/workflow-executions"
        ),
    )
}

fn problem(e: RunnerError) -> Problem {
    match e {
        RunnerError::Rejected(WorkflowRejection::NotFound) => not_found("the workflow execution"),
        RunnerError::Rejected(r) => Problem::new(StatusCode::CONFLICT, r.code(), r.to_string()),
        RunnerError::UnknownWorkflow { .. } => Problem::new(
            StatusCode::NOT_FOUND,
            "unknown_workflow",
            format!("{e}; define it with POST /v1/workflows"),
        ),
        RunnerError::InvalidInput(_) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            e.to_string(),
        )
        .field("input"),
        RunnerError::Append(runlog_events::workflow::log::WorkflowAppendError::TooLarge {
            ..
        }) => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            e.to_string(),
        ),
        RunnerError::Definitions(_) | RunnerError::Load(_) | RunnerError::Append(_) => {
            Problem::unavailable(e)
        }
    }
}
