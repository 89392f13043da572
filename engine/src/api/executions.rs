//! `/v1/executions`: submit, read, list, cancel, retry.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use runlog_events::decider::{Command, Status};
use runlog_events::event::{Event, LogBatch, Queued, TimeoutScope};
use runlog_events::journal::{History, TransitionError};
use runlog_events::resources::Resources;
use runlog_events::{
    Envelope, ExecutionId, QueueName, TaskError, TaskSpec, codec, direct, submission,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::problem::invalid_body;
use super::{ApiState, Problem};
use crate::intake::{Accepted, Submission};
use crate::projection::Filter;
use crate::retry::RetryRequest;

/// The body of `POST /v1/executions`: a task spec, plus the caller's
/// execution id and correlation id. `env` values are sealed, never stored.
#[derive(Debug)]
pub struct SubmitBody {
    /// The task.
    pub spec: TaskSpec,
    /// The execution id to use (a subject token); generated when absent.
    pub id: Option<String>,
    /// Groups executions that belong together.
    pub correlation_id: Option<String>,
}

/// `start_at` (an instant) or `start_in` (a duration from `now`, `90s`,
/// `2h`): the door's two spellings of the spec's `not_before`, which is what
/// the log keeps. At most one of the three may be given.
fn start(
    start_at: Option<String>,
    start_in: Option<String>,
    value: &Value,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, Problem> {
    let bad = |field: &str, detail: String| {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", detail).field(field)
    };
    let not_before = value.get("not_before").is_some_and(|v| !v.is_null());
    match (start_at, start_in) {
        (Some(_), Some(_)) => Err(bad(
            "start_in",
            "give start_at or start_in, not both".to_owned(),
        )),
        (Some(_), None) | (None, Some(_)) if not_before => Err(bad(
            "not_before",
            "give not_before, start_at or start_in, only one of them".to_owned(),
        )),
        (Some(at), None) => DateTime::parse_from_rfc3339(&at)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| {
                bad(
                    "start_at",
                    format!("start_at: {at:?} is not an RFC 3339 time ({e})"),
                )
            }),
        (None, Some(within)) => {
            let d = humantime::parse_duration(&within).map_err(|e| {
                bad(
                    "start_in",
                    format!("start_in: {within:?} is not a duration like 90s or 2h ({e})"),
                )
            })?;
            let d = chrono::TimeDelta::from_std(d)
                .ok()
                .filter(|d| *d <= chrono::TimeDelta::days(366))
                .ok_or_else(|| {
                    bad(
                        "start_in",
                        format!("start_in: {within} is more than a year away"),
                    )
                })?;
            Ok(Some(now + d))
        }
        (None, None) => Ok(None),
    }
}

impl SubmitBody {
    /// Reads a submission strictly (`runlog_events::submission`): an
    /// unknown field is refused with the nearest known one, and a bad value
    /// is named by its JSON path.
    pub fn read(mut value: Value) -> Result<SubmitBody, Problem> {
        let mut text = |name: &str| -> Result<Option<String>, Problem> {
            match value.as_object_mut().and_then(|o| o.remove(name)) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    format!("{name}: expected a string, found {other}"),
                )
                .field(name)),
            }
        };
        let id = text("id")?;
        let correlation_id = text("correlation_id")?;
        let start_at = text("start_at")?;
        let start_in = text("start_in")?;
        if let Some(not_before) = start(start_at, start_in, &value, Utc::now())?
            && let Some(object) = value.as_object_mut()
        {
            object.insert("not_before".into(), json!(not_before));
        }
        let extra = ["id", "correlation_id", "start_at", "start_in"];
        let spec = submission::read_spec(value, &extra).map_err(|e| {
            let detail = if e.field.is_empty() {
                e.reason
            } else {
                format!("{}: {}", e.field, e.reason)
            };
            let problem = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", detail);
            if e.field.is_empty() {
                problem
            } else {
                problem.field(e.field)
            }
        })?;
        Ok(SubmitBody {
            spec,
            id,
            correlation_id,
        })
    }

    /// The submission this body asks for; a malformed `id` is refused with
    /// its field.
    pub(crate) fn into_submission(self) -> Result<Submission, Problem> {
        let execution = self.id.map(ExecutionId::new).transpose().map_err(|e| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_task",
                format!("id: {e}"),
            )
            .field("id")
        })?;
        Ok(Submission {
            spec: self.spec,
            execution,
            correlation_id: self.correlation_id,
            traceparent: None,
        })
    }
}

pub(super) async fn submit(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<crate::tokens::Caller>,
    headers: axum::http::HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(e) => return invalid_body(e).into_response(),
    };
    let mut submission = match SubmitBody::read(body).and_then(SubmitBody::into_submission) {
        Ok(submission) => submission,
        Err(problem) => return problem.into_response(),
    };
    if let Err(problem) = super::auth::may_submit_to(&caller, submission.spec.queue.as_str()) {
        return problem.into_response();
    }
    submission.traceparent = traceparent(&headers);
    if let Some(fanned) = super::servers::fan_out(&state.intake, &state.workers, &submission).await
    {
        return match fanned {
            Ok(answer) => (StatusCode::CREATED, Json(answer)).into_response(),
            Err(problem) => problem.into_response(),
        };
    }
    let warning = state.workers.warning(&submission.spec);
    match state.intake.submit(submission, Utc::now()).await {
        Ok(accepted) => {
            let status = if accepted.existing {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            // The same answer as a batch's results and the NATS doors'.
            (status, Json(answer(Ok(accepted), warning))).into_response()
        }
        Err(e) => Problem::from(e).into_response(),
    }
}

/// The caller's W3C `traceparent` header. One that does not follow the
/// format is ignored, as the W3C Trace Context asks: the trace starts anew
/// instead of the submission failing.
pub(super) fn traceparent(headers: &axum::http::HeaderMap) -> Option<runlog_events::TraceParent> {
    headers.get("traceparent")?.to_str().ok()?.parse().ok()
}

/// One submission's answer, as both intake doors over NATS and the batch
/// route give it.
/// A `warning` says why no live worker would take the task
/// ([`LiveWorkers::warning`]).
pub(crate) fn answer(result: Result<Accepted, Problem>, warning: Option<String>) -> Value {
    match result {
        Ok(accepted) => {
            let mut answer = json!({
                "id": accepted.execution,
                "status": accepted.state.status,
                "existing": accepted.existing,
            });
            if let Some(warning) = warning {
                answer["warning"] = json!(warning);
            }
            answer
        }
        Err(problem) => problem.as_answer(),
    }
}

/// The problem of a body that could not be read as the JSON a route takes:
/// The filters of `GET /v1/executions` (and `GET /v1/costs`).
#[derive(Debug, Default, Deserialize)]
pub(super) struct FilterQuery {
    /// Comma-separated states.
    pub(super) status: Option<String>,
    pub(super) queue: Option<String>,
    pub(super) kind: Option<String>,
    /// `key=value`, comma-separated for several.
    pub(super) label: Option<String>,
    pub(super) since: Option<DateTime<Utc>>,
    pub(super) until: Option<DateTime<Utc>>,
}

impl FilterQuery {
    /// The projection's filter, or the problem with the query.
    pub(super) fn filter(self) -> Result<Filter, Problem> {
        let invalid = |field: &str, detail: String| {
            Problem::new(StatusCode::BAD_REQUEST, "invalid_query", detail).field(field)
        };
        let mut filter = Filter::default();
        for s in self
            .status
            .iter()
            .flat_map(|s| s.split(','))
            .filter(|s| !s.is_empty())
        {
            let status = serde_json::from_value::<Status>(json!(s)).map_err(|_| {
                invalid(
                    "status",
                    format!("unknown status {s:?}; use pending, queued, running, succeeded, ..."),
                )
            })?;
            filter.status.push(status);
        }
        if let Some(queue) = self.queue {
            let queue =
                QueueName::new(queue).map_err(|e| invalid("queue", format!("queue: {e}")))?;
            filter.queue = Some(queue);
        }
        filter.kind = self.kind;
        for pair in self
            .label
            .iter()
            .flat_map(|l| l.split(','))
            .filter(|s| !s.is_empty())
        {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| invalid("label", "label must be key=value".to_owned()))?;
            filter.labels.insert(k.to_owned(), v.to_owned());
        }
        filter.since = self.since;
        filter.until = self.until;
        Ok(filter)
    }
}

/// Query of `GET /v1/executions`.
#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    /// Comma-separated states.
    status: Option<String>,
    queue: Option<String>,
    kind: Option<String>,
    /// `key=value`, comma-separated for several.
    label: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    cursor: Option<u64>,
    limit: Option<usize>,
}

/// The default and largest page.
const PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

pub(super) async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            return Problem::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text())
                .into_response();
        }
    };
    let filter = FilterQuery {
        status: q.status,
        queue: q.queue,
        kind: q.kind,
        label: q.label,
        since: q.since,
        until: q.until,
    }
    .filter();
    let filter = match filter {
        Ok(filter) => filter,
        Err(problem) => return problem.into_response(),
    };
    let limit = q.limit.unwrap_or(PAGE).clamp(1, MAX_PAGE);
    let page = state.projection.list(&filter, q.cursor, limit);
    let items: Vec<_> = page
        .items
        .iter()
        .map(|(id, entry)| crate::projection::summary(id, &entry.state, entry.last_seq))
        .collect();
    Json(json!({ "executions": items, "next_cursor": page.next })).into_response()
}

/// One attempt, as `GET /v1/executions/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct AttemptView {
    pub(super) attempt: u32,
    worker: Option<String>,
    queued_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    deadline: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    pub(super) outcome: Option<&'static str>,
    error: Option<TaskError>,
    /// What it used, as its worker measured it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) resources: Option<Resources>,
}

pub(super) fn attempts(history: &History) -> Vec<AttemptView> {
    let mut out: BTreeMap<u32, AttemptView> = BTreeMap::new();
    for recorded in &history.events {
        let env = &recorded.envelope;
        if env.attempt == 0 {
            continue;
        }
        let view = out.entry(env.attempt).or_insert_with(|| AttemptView {
            attempt: env.attempt,
            worker: None,
            queued_at: None,
            started_at: None,
            deadline: None,
            ended_at: None,
            outcome: None,
            error: None,
            resources: None,
        });
        let mut end = |outcome: &'static str, resources: &Option<Resources>| {
            if view.outcome.is_none() {
                view.outcome = Some(outcome);
                view.ended_at = Some(env.time);
                view.resources = *resources;
            }
        };
        match &env.event {
            Event::Queued(_) => view.queued_at = Some(env.time),
            Event::Started(s) => {
                view.worker = Some(s.worker.clone());
                view.started_at = Some(env.time);
                view.deadline = s.deadline;
            }
            Event::Succeeded(s) => end("succeeded", &s.resources),
            Event::Failed(f) => {
                end("failed", &f.resources);
                view.error = Some(f.error.clone());
            }
            Event::TimedOut(t) if t.scope == TimeoutScope::Attempt => {
                end("timed_out", &t.resources)
            }
            Event::TimedOut(t) => end("execution_timed_out", &t.resources),
            Event::AttemptLost(_) => end("lost", &None),
            Event::Cancelled(c) => end("cancelled", &c.resources),
            _ => {}
        }
    }
    out.into_values()
        .filter(|a| a.started_at.is_some() || a.queued_at.is_some())
        .collect()
}

/// A spec as the API shows it: environment values are never echoed (a
/// foreign client may have recorded some against the rules).
fn redacted(spec: &TaskSpec) -> TaskSpec {
    let mut spec = spec.clone();
    for value in spec.env.values_mut() {
        *value = "<redacted>".to_owned();
    }
    spec
}

fn redacted_envelope(envelope: &Envelope) -> Envelope {
    let mut envelope = envelope.clone();
    match &mut envelope.event {
        Event::Submitted(submitted) => submitted.spec = redacted(&submitted.spec),
        Event::Queued(Queued {
            spec: Some(spec), ..
        }) => **spec = redacted(spec),
        _ => {}
    }
    envelope
}

/// An event as the API and the SSE feeds show it.
/// The recorded events of one execution, each with the execution's summary
/// after it, folded by the core's `evolve` as the projection folds them.
pub(super) fn folded<'a>(
    execution: &'a ExecutionId,
    events: &'a [runlog_events::journal::Recorded],
) -> impl Iterator<Item = (&'a runlog_events::journal::Recorded, serde_json::Value)> + 'a {
    let mut state = runlog_events::ExecutionState::default();
    events.iter().map(move |r| {
        state = runlog_events::decider::evolve(std::mem::take(&mut state), &r.envelope);
        (r, crate::projection::summary(execution, &state, r.seq))
    })
}

/// An event as the API shows it: the envelope (secrets redacted), its
/// sequence, and, where the engine knows it, `state`: its execution's
/// summary after the event, with the `status` it left it in.
pub(super) fn event_json(
    seq: u64,
    envelope: &Envelope,
    state: Option<&serde_json::Value>,
) -> serde_json::Value {
    let mut value = serde_json::to_value(redacted_envelope(envelope)).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("seq".to_owned(), json!(seq));
        if let Some(state) = state {
            map.insert("status".to_owned(), state["status"].clone());
            map.insert("state".to_owned(), state.clone());
        }
    }
    value
}

pub(super) async fn history(state: &ApiState, id: &str) -> Result<(ExecutionId, History), Problem> {
    let execution =
        ExecutionId::new(id).map_err(|_| Problem::not_found(format!("execution {id:?}")))?;
    let history = state
        .journal
        .load(&execution)
        .await
        .map_err(Problem::unavailable)?;
    if history.state.status == Status::New {
        return Err(Problem::not_found(format!("execution {execution}")));
    }
    Ok((execution, history))
}

pub(super) async fn get(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let (execution, history) = match self::history(&state, &id).await {
        Ok(found) => found,
        Err(problem) => return problem.into_response(),
    };
    let s = &history.state;
    let (progress, activity) = if s.status == Status::Running {
        let (progress, activity) = tokio::join!(
            latest_progress(&state, &execution, s.attempt),
            activity(&state, &execution, s.attempt),
        );
        (progress, Some(activity))
    } else {
        (None, None)
    };
    let liveness = activity.map(|a| a.judge(s.started_at, state.stuck_after, Utc::now()));
    let last_error = s.errors.last().map(|e| &e.error);
    Json(json!({
        "id": execution,
        "status": s.status,
        "attempt": s.attempt,
        "worker": s.worker,
        "cancel_requested": s.cancel_requested,
        "progress": progress.or_else(|| s.progress.as_deref().cloned()),
        "output": s.output,
        "error": last_error,
        "errors": s.errors,
        "reason": s.reason,
        "retry_at": s.retry_at,
        "submitted_at": s.submitted_at,
        "started_at": s.started_at,
        "finished_at": s.finished_at,
        "trace_id": s.traceparent.as_ref().map(|t| t.trace_id()),
        "resources": s.resources,
        "cost": s.resources.as_deref().and_then(|r| state.prices.cost(r)),
        "spec": s.spec.as_deref().map(redacted),
        "attempts": attempts(&history),
        "last_seq": history.last_seq,
        "last_progress_at": liveness.as_ref().and_then(|l| l.last_progress_at),
        "last_log_at": liveness.as_ref().and_then(|l| l.last_log_at),
        "last_heartbeat_at": liveness.as_ref().and_then(|l| l.last_heartbeat_at),
        "stuck": liveness.as_ref().is_some_and(|l| l.stuck),
        "warning": waiting_warning(&state, s),
    }))
    .into_response()
}

/// Why an execution waiting for an attempt may wait forever: no live
/// worker would take it.
fn waiting_warning(state: &ApiState, s: &runlog_events::ExecutionState) -> Option<String> {
    let waiting = matches!(s.status, Status::Queued | Status::RetryScheduled);
    waiting
        .then(|| {
            s.spec
                .as_deref()
                .and_then(|spec| state.workers.warning(spec))
        })
        .flatten()
}

/// When the running attempt last showed a sign of life.
#[derive(Debug, Default)]
struct Activity {
    last_progress_at: Option<DateTime<Utc>>,
    last_log_at: Option<DateTime<Utc>>,
    last_heartbeat_at: Option<DateTime<Utc>>,
}

/// What [`Activity`] says of the attempt.
#[derive(Debug)]
struct Liveness {
    last_progress_at: Option<DateTime<Utc>>,
    last_log_at: Option<DateTime<Utc>>,
    last_heartbeat_at: Option<DateTime<Utc>>,
    stuck: bool,
}

impl Activity {
    /// Stuck: no progress and no log line for `stuck_after` since the start
    /// (or the last of them), while the worker still sent a heartbeat after
    /// that silence began. A worker that died is not "stuck": its attempt is
    /// lost, and the deadline or the redelivery deals with it.
    fn judge(
        self,
        started_at: Option<DateTime<Utc>>,
        stuck_after: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Liveness {
        let last_sign = [started_at, self.last_progress_at, self.last_log_at]
            .into_iter()
            .flatten()
            .max();
        let stuck = match (last_sign, self.last_heartbeat_at) {
            (Some(sign), Some(beat)) => {
                let silent = (now - sign).to_std().unwrap_or_default();
                let beat_age = (now - beat).to_std().unwrap_or_default();
                silent >= stuck_after && beat > sign && beat_age < stuck_after
            }
            _ => false,
        };
        Liveness {
            last_progress_at: self.last_progress_at,
            last_log_at: self.last_log_at,
            last_heartbeat_at: self.last_heartbeat_at,
            stuck,
        }
    }
}

/// The times of the newest progress report, log batch and heartbeat of
/// `attempt` (telemetry stream).
async fn activity(state: &ApiState, execution: &ExecutionId, attempt: u32) -> Activity {
    let prefix = state.subjects.prefix();
    let time_of = |kind: &'static str| {
        let subject = format!("{prefix}.{kind}.{execution}");
        async move {
            let stored = direct::last(&state.js, &state.subjects.logs_stream(), &subject)
                .await
                .ok()??;
            let envelope =
                codec::decode(&stored.headers, &stored.payload, &codec::Limits::default()).ok()?;
            (envelope.attempt == attempt).then_some(envelope.time)
        }
    };
    let (last_progress_at, last_log_at, last_heartbeat_at) =
        tokio::join!(time_of("progress"), time_of("log"), time_of("heartbeat"));
    Activity {
        last_progress_at,
        last_log_at,
        last_heartbeat_at,
    }
}

/// The newest progress report of the running attempt (telemetry stream).
async fn latest_progress(
    state: &ApiState,
    execution: &ExecutionId,
    attempt: u32,
) -> Option<runlog_events::event::Progress> {
    let subject = format!("{}.progress.{execution}", state.subjects.prefix());
    let stored = direct::last(&state.js, &state.subjects.logs_stream(), &subject)
        .await
        .ok()??;
    let envelope =
        codec::decode(&stored.headers, &stored.payload, &codec::Limits::default()).ok()?;
    match envelope.event {
        Event::Progress(p) if envelope.attempt == attempt => Some(p),
        _ => None,
    }
}

pub(super) async fn events(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match self::history(&state, &id).await {
        Ok((execution, history)) => {
            let events: Vec<_> = folded(&execution, &history.events)
                .map(|(r, state)| event_json(r.seq, &r.envelope, Some(&state)))
                .collect();
            let skipped: Vec<_> = history
                .skipped
                .iter()
                .map(|(seq, reason)| json!({"seq": seq, "reason": reason}))
                .collect();
            Json(json!({"id": execution, "events": events, "skipped": skipped})).into_response()
        }
        Err(problem) => problem.into_response(),
    }
}

/// Query of the log routes.
#[derive(Debug, Deserialize)]
pub(super) struct LogQuery {
    /// Only batches stored after this stream sequence.
    pub after: Option<u64>,
    /// At most this many batches.
    pub limit: Option<usize>,
}

/// One log line as the API shows it.
pub(super) fn log_lines(seq: u64, envelope: &Envelope, batch: &LogBatch) -> Vec<serde_json::Value> {
    batch
        .lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            json!({
                "seq": seq,
                "attempt": envelope.attempt,
                "n": batch.first_line + i as u64,
                "stream": line.stream.as_str(),
                "line": line.line,
                "time": envelope.time,
            })
        })
        .collect()
}

/// Reads stored log batches of `execution` after `after`.
pub(super) async fn read_logs(
    state: &ApiState,
    execution: &ExecutionId,
    after: u64,
    limit: usize,
) -> Result<(Vec<serde_json::Value>, u64, u64), Problem> {
    let subject = format!("{}.log.{execution}", state.subjects.prefix());
    let mut lines = Vec::new();
    let mut last = after;
    let mut dropped = 0;
    let limits = codec::Limits::default();
    direct::read(
        &state.js.client(),
        &state.subjects.logs_stream(),
        &subject,
        after + 1,
        limit,
        |stored| {
            last = stored.seq;
            if let Ok(envelope) = codec::decode(&stored.headers, &stored.payload, &limits)
                && let Event::Log(batch) = &envelope.event
            {
                dropped += batch.dropped;
                lines.extend(log_lines(stored.seq, &envelope, batch));
            }
        },
    )
    .await
    .map_err(Problem::unavailable)?;
    Ok((lines, last, dropped))
}

pub(super) async fn logs(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    let Ok(execution) = ExecutionId::new(&id) else {
        return Problem::not_found(format!("execution {id:?}")).into_response();
    };
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    match read_logs(&state, &execution, q.after.unwrap_or(0), limit).await {
        Ok((lines, last, dropped)) => Json(json!({
            "id": execution,
            "lines": lines,
            "next_after": last,
            "dropped_lines": dropped,
        }))
        .into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// Body of the cancel route.
#[derive(Debug, Default, Deserialize)]
pub(super) struct CancelBody {
    #[serde(default)]
    reason: Option<String>,
}

pub(super) async fn cancel(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Option<Json<CancelBody>>,
) -> Response {
    let Ok(execution) = ExecutionId::new(&id) else {
        return Problem::not_found(format!("execution {id:?}")).into_response();
    };
    let reason = body
        .and_then(|Json(b)| b.reason)
        .unwrap_or_else(|| "cancelled through the API".to_owned());
    let command = Command::RequestCancel {
        reason,
        operation: None,
    };
    match state
        .journal
        .transition(&execution, &command, Utc::now())
        .await
    {
        Ok(history) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "id": execution,
                "status": history.state.status,
                "cancel_requested": history.state.cancel_requested,
            })),
        )
            .into_response(),
        Err(TransitionError::Rejected(r)) => Problem::from(r).into_response(),
        Err(e) => Problem::unavailable(e).into_response(),
    }
}

pub(super) async fn retry(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let Ok(execution) = ExecutionId::new(&id) else {
        return Problem::not_found(format!("execution {id:?}")).into_response();
    };
    match state
        .retries
        .retry(&execution, RetryRequest::default())
        .await
    {
        Ok(accepted) => (
            StatusCode::CREATED,
            Json(json!({
                "id": accepted.execution,
                "status": accepted.state.status,
                "retry_of": execution,
            })),
        )
            .into_response(),
        Err(e) => Problem::from(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_at_and_start_in_become_not_before() {
        let read = |body: Value| SubmitBody::read(body).map(|b| b.spec.not_before);
        let at = read(json!({"kind": "echo", "start_at": "2027-01-01T06:00:00+01:00"}));
        assert_eq!(at.unwrap(), "2027-01-01T05:00:00Z".parse().ok());
        let before = Utc::now();
        let within = read(json!({"kind": "echo", "start_in": "90s"}))
            .unwrap()
            .unwrap();
        let expected = before + chrono::TimeDelta::seconds(90);
        assert!(within >= expected && within < expected + chrono::TimeDelta::seconds(5));
        let field = |body: Value| read(body).unwrap_err().field;
        assert_eq!(
            field(json!({"kind": "echo", "start_at": "soon"})).as_deref(),
            Some("start_at")
        );
        assert_eq!(
            field(json!({"kind": "echo", "start_in": "soon"})).as_deref(),
            Some("start_in")
        );
        assert_eq!(
            field(json!({"kind": "echo", "start_in": "1s", "start_at": "2027-01-01T00:00:00Z"}))
                .as_deref(),
            Some("start_in")
        );
        assert_eq!(
            field(json!({"kind": "echo", "start_in": "1s", "not_before": "2027-01-01T00:00:00Z"}))
                .as_deref(),
            Some("not_before")
        );
        assert_eq!(
            field(json!({"kind": "echo", "start_in": "400d"})).as_deref(),
            Some("start_in")
        );
    }

    fn at(secs: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0)
    }

    #[test]
    fn stuck_means_silent_past_the_limit_while_the_worker_beats() {
        let limit = std::time::Duration::from_secs(60);
        let judge = |progress, log, beat, now| {
            Activity {
                last_progress_at: progress,
                last_log_at: log,
                last_heartbeat_at: beat,
            }
            .judge(at(0), limit, at(now).unwrap())
            .stuck
        };
        // Silent for 90 s, heartbeat 5 s ago: stuck.
        assert!(judge(None, None, at(85), 90));
        // Silent for 30 s only.
        assert!(!judge(None, None, at(25), 30));
        // A log line 10 s ago is a sign of life.
        assert!(!judge(None, at(80), at(85), 90));
        // Progress 100 s in, now 170: silent 70 s, worker alive.
        assert!(judge(at(100), None, at(165), 170));
        // No heartbeat since the silence began: the worker may be gone,
        // which is a lost attempt, not a stuck one.
        assert!(!judge(None, None, None, 90));
        assert!(!judge(at(100), None, at(90), 170));
        // The last heartbeat is itself older than the limit.
        assert!(!judge(None, None, at(10), 200));
    }
}
