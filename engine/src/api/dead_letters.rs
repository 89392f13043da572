//! `/v1/dead-letters` and `/v1/operations`: find dead letters, replay them
//! in bulk, cancel executions in bulk, and follow those operations.
//!
//! Listings are served from the projection's dead-letter index; bulk
//! operations run in the background ([`crate::operations`]) and are
//! audited in the `<p>-operations` bucket.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use runlog_events::decider::Status;
use runlog_events::event::DeadLetterReason;
use runlog_events::{ErrorClass, ExecutionId, QueueName};
use serde_json::{Map, Value, json};

use super::problem::invalid_body;
use super::{ApiState, Problem};
use crate::operations::{
    CANCELLABLE, CancelOutcome, DEFAULT_RATE, MAX_RATE, Operation, OperationFilter, OperationKind,
    OperationsError,
};
use crate::projection::DeadLetterView;

/// The default and largest page.
const PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// Ids a dry run shows.
const SAMPLE: usize = 20;
/// The longest operation name, requester or reason, in bytes.
const MAX_TEXT: usize = 256;

/// Where a malformed input came from: the query of a listing, or a body.
#[derive(Debug, Clone, Copy)]
enum Source {
    Query,
    Body,
}

impl Source {
    fn bad(self, field: impl Into<String>, detail: impl std::fmt::Display) -> Problem {
        let field = field.into();
        let (status, code) = match self {
            Source::Query => (StatusCode::BAD_REQUEST, "invalid_query"),
            Source::Body => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        };
        Problem::new(status, code, format!("{field}: {detail}")).field(field)
    }
}

/// Which filter fields apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applies {
    DeadLetters,
    Executions,
}

/// Parses filter fields (all strings) into a filter; every field must be
/// known. `at` prefixes field names in errors (`filter.`).
fn parse_filter(
    mut fields: BTreeMap<String, String>,
    applies: Applies,
    source: Source,
    at: &str,
) -> Result<OperationFilter, Problem> {
    let bad =
        |field: &str, detail: &dyn std::fmt::Display| source.bad(format!("{at}{field}"), detail);
    let mut filter = OperationFilter::default();
    if let Some(queue) = fields.remove("queue") {
        filter.queue = Some(QueueName::new(queue).map_err(|e| bad("queue", &e))?);
    }
    if let Some(kind) = fields.remove("kind") {
        if kind.is_empty() {
            return Err(bad("kind", &"must not be empty"));
        }
        filter.kind = Some(kind);
    }
    if let Some(labels) = fields.remove("label") {
        for pair in labels.split(',').filter(|s| !s.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(bad(
                    "label",
                    &"must be key=value (comma-separated for several)",
                ));
            };
            filter.labels.insert(k.to_owned(), v.to_owned());
        }
    }
    for (name, slot) in [("since", &mut filter.since), ("until", &mut filter.until)] {
        if let Some(time) = fields.remove(name) {
            let parsed = DateTime::parse_from_rfc3339(&time)
                .map_err(|e| bad(name, &format!("{e}; use RFC 3339 (2026-11-24T06:00:00Z)")))?;
            *slot = Some(parsed.with_timezone(&Utc));
        }
    }
    if let (Some(since), Some(until)) = (filter.since, filter.until)
        && since >= until
    {
        return Err(bad("until", &"must be after since"));
    }
    if applies == Applies::DeadLetters {
        if let Some(class) = fields.remove("class") {
            filter.class = Some(serde_json::from_value::<ErrorClass>(json!(class)).map_err(|_| {
                bad(
                    "class",
                    &format!(
                        "unknown error class {class:?}; use network, timeout, rate_limited, \
                         resource, permission, invalid_input, not_found, permanent, crashed, cancelled \
                         or unknown"
                    ),
                )
            })?);
        }
        if let Some(reason) = fields.remove("reason") {
            filter.reason = Some(
                serde_json::from_value::<DeadLetterReason>(json!(reason)).map_err(|_| {
                    bad(
                        "reason",
                        &format!(
                            "unknown reason {reason:?}; use attempts_exhausted, permanent or max_deliveries"
                        ),
                    )
                })?,
            );
        }
    } else if let Some(states) = fields.remove("status") {
        for s in states.split(',').filter(|s| !s.is_empty()) {
            match serde_json::from_value::<Status>(json!(s)) {
                Ok(status) if CANCELLABLE.contains(&status) => filter.status.push(status),
                _ => {
                    return Err(bad(
                        "status",
                        &format!(
                            "{s:?} cannot be cancelled; use pending, queued, running, failed or retry_scheduled"
                        ),
                    ));
                }
            }
        }
    }
    if let Some(unknown) = fields.keys().next() {
        let known = match applies {
            Applies::DeadLetters => "queue, kind, class, reason, label, since, until",
            Applies::Executions => "queue, kind, status, label, since, until",
        };
        return Err(bad(
            unknown,
            &format!("unknown filter; the filters are {known}"),
        ));
    }
    Ok(filter)
}

/// The `filter` object of a body as strings: arrays are joined with commas,
/// an object of labels becomes `k=v,k=v`.
fn filter_fields(filter: Option<Value>) -> Result<BTreeMap<String, String>, Problem> {
    let mut fields = BTreeMap::new();
    let object = match filter {
        None | Some(Value::Null) => return Ok(fields),
        Some(Value::Object(object)) => object,
        Some(_) => return Err(Source::Body.bad("filter", "must be an object")),
    };
    for (key, value) in object {
        let text = match value {
            Value::Null => continue,
            Value::String(s) => s,
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| Source::Body.bad(format!("filter.{key}"), "must hold strings"))?
                .join(","),
            Value::Object(labels) => labels
                .iter()
                .map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    Source::Body.bad(format!("filter.{key}"), "label values must be strings")
                })?
                .join(","),
            _ => return Err(Source::Body.bad(format!("filter.{key}"), "must be a string")),
        };
        fields.insert(key, text);
    }
    Ok(fields)
}

/// A JSON body taken apart field by field, so every error names its field.
struct Body(Map<String, Value>);

impl Body {
    fn from(body: Result<Json<Value>, JsonRejection>, allow_empty: bool) -> Result<Body, Problem> {
        match body {
            Ok(Json(Value::Object(map))) => Ok(Body(map)),
            Ok(Json(Value::Null)) if allow_empty => Ok(Body(Map::new())),
            Ok(_) => Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "the body must be a JSON object",
            )),
            Err(JsonRejection::MissingJsonContentType(_)) if allow_empty => Ok(Body(Map::new())),
            Err(e) => Err(invalid_body(e)),
        }
    }

    fn text(&mut self, field: &str) -> Result<Option<String>, Problem> {
        match self.0.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() > MAX_TEXT => {
                Err(Source::Body.bad(field, format!("must be at most {MAX_TEXT} bytes")))
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                Err(Source::Body.bad(field, "must not be empty"))
            }
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Source::Body.bad(field, "must be a string")),
        }
    }

    fn flag(&mut self, field: &str) -> Result<bool, Problem> {
        match self.0.remove(field) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(b),
            Some(_) => Err(Source::Body.bad(field, "must be true or false")),
        }
    }

    fn rate(&mut self) -> Result<u32, Problem> {
        match self.0.remove("rate_per_sec") {
            None | Some(Value::Null) => Ok(DEFAULT_RATE),
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|n| (1..=u64::from(MAX_RATE)).contains(n))
                .map(|n| n as u32)
                .ok_or_else(|| {
                    Source::Body.bad(
                        "rate_per_sec",
                        format!("must be a whole number from 1 to {MAX_RATE}"),
                    )
                }),
            Some(_) => Err(Source::Body.bad("rate_per_sec", "must be a number")),
        }
    }

    fn finish(self) -> Result<(), Problem> {
        match self.0.keys().next() {
            Some(unknown) => Err(Source::Body.bad(unknown.as_str(), "unknown field")),
            None => Ok(()),
        }
    }
}

fn item(view: &DeadLetterView) -> Value {
    let last = view.errors.last();
    json!({
        "id": view.id,
        "queue": view.queue,
        "kind": view.kind,
        "labels": view.labels,
        "attempts": view.attempts,
        "reason": view.letter.reason,
        "last_error": last.map(|e| json!({
            "class": e.error.class,
            "message": e.error.message,
            "attempt": e.attempt,
            "at": e.at,
        })),
        "dead_lettered_at": view.letter.at,
        "seq": view.letter.seq,
        "replayed": !view.replays.is_empty(),
        "replays": view.replays,
    })
}

/// `GET /v1/dead-letters`: newest first, with filters and a cursor.
pub(super) async fn list(
    State(state): State<ApiState>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Response {
    let Query(mut fields) = match query {
        Ok(q) => q,
        Err(e) => {
            return Problem::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text())
                .into_response();
        }
    };
    let number = |fields: &mut BTreeMap<String, String>, name: &str| {
        fields
            .remove(name)
            .map(|v| v.parse::<u64>())
            .transpose()
            .map_err(|_| Source::Query.bad(name, "must be a whole number"))
    };
    let parsed = (|| {
        let cursor = number(&mut fields, "cursor")?;
        let limit = number(&mut fields, "limit")?;
        let replayed = match fields.remove("replayed").as_deref() {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(_) => return Err(Source::Query.bad("replayed", "must be true or false")),
        };
        let filter = parse_filter(fields, Applies::DeadLetters, Source::Query, "")?;
        Ok((cursor, limit, replayed, filter))
    })();
    let (cursor, limit, replayed, filter) = match parsed {
        Ok(parsed) => parsed,
        Err(problem) => return problem.into_response(),
    };
    let mut filter = filter.dead_letters(None);
    filter.replayed = replayed;
    let limit = (limit.unwrap_or(PAGE as u64) as usize).clamp(1, MAX_PAGE);
    let page = state.projection.dead_letters(&filter, cursor, limit);
    let items: Vec<_> = page.items.iter().map(item).collect();
    Json(json!({ "dead_letters": items, "next_cursor": page.next })).into_response()
}

/// `GET /v1/dead-letters/{id}`: one dead letter with its whole error
/// history.
pub(super) async fn get(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let view = ExecutionId::new(&id)
        .ok()
        .and_then(|execution| state.projection.dead_letter(&execution));
    let Some(view) = view else {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "execution {id:?} is not a dead letter; list them with GET /v1/dead-letters \
                 (or see the execution with GET /v1/executions/{{id}})"
            ),
        )
        .into_response();
    };
    let mut body = item(&view);
    body["errors"] = json!(view.errors);
    Json(body).into_response()
}

fn not_ready(state: &ApiState) -> Option<Problem> {
    (!state.projection.is_caught_up()).then(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!(
                "the projection is replaying the log (at sequence {}); a bulk operation would \
                 miss matches: try again once /readyz answers 200",
                state.projection.applied_seq()
            ),
        )
    })
}

fn started(result: Result<Operation, OperationsError>) -> Response {
    match result {
        Ok(op) => (
            StatusCode::ACCEPTED,
            [(header::LOCATION, format!("/v1/operations/{}", op.id))],
            Json(op),
        )
            .into_response(),
        Err(e) => Problem::unavailable(e).into_response(),
    }
}

/// `POST /v1/dead-letters/replay`: replay every dead letter matching a
/// filter, once each (or count them, with `dry_run`).
pub(super) async fn replay(
    State(state): State<ApiState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let parsed = (|| {
        let mut body = Body::from(body, false)?;
        let name = body.text("name")?;
        let requested_by = body.text("requested_by")?;
        let dry_run = body.flag("dry_run")?;
        let rate = body.rate()?;
        let fields = filter_fields(body.0.remove("filter"))?;
        body.finish()?;
        let filter = parse_filter(fields, Applies::DeadLetters, Source::Body, "filter.")?;
        if !dry_run && name.is_none() {
            return Err(Source::Body.bad("name", "a replay needs a name (it is audited)"));
        }
        Ok((name, requested_by, dry_run, rate, filter))
    })();
    let (name, requested_by, dry_run, rate, filter) = match parsed {
        Ok(parsed) => parsed,
        Err(problem) => return problem.into_response(),
    };
    if let Some(problem) = not_ready(&state) {
        return problem.into_response();
    }
    let upto = state.projection.applied_seq();
    if dry_run {
        let p = &state.projection;
        let matched = p.dead_letter_ids(&filter.dead_letters(Some(upto)));
        let mut fresh = filter.dead_letters(Some(upto));
        fresh.replayed = Some(false);
        let would_replay = p.dead_letter_ids(&fresh);
        return Json(json!({
            "dry_run": true,
            "filter": filter,
            "matched": matched.len(),
            "already_replayed": matched.len() - would_replay.len(),
            "would_replay": would_replay.len(),
            "sample": would_replay.iter().take(SAMPLE).collect::<Vec<_>>(),
            "upto_seq": upto,
        }))
        .into_response();
    }
    let matched = state
        .projection
        .dead_letter_ids(&filter.dead_letters(Some(upto)))
        .len();
    let mut op = Operation::new(
        OperationKind::Replay,
        name.unwrap_or_default(),
        requested_by.unwrap_or_else(|| "anonymous".to_owned()),
        filter,
        rate,
        upto,
        Utc::now(),
    );
    op.matched = matched as u64;
    started(state.operations.start(op).await)
}

/// `POST /v1/executions/cancel`: cancel every execution matching a filter
/// that has not ended (or count them, with `dry_run`).
pub(super) async fn cancel(
    State(state): State<ApiState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let parsed = (|| {
        let mut body = Body::from(body, false)?;
        let name = body.text("name")?;
        let requested_by = body.text("requested_by")?;
        let reason = body.text("reason")?;
        let dry_run = body.flag("dry_run")?;
        let rate = body.rate()?;
        let fields = filter_fields(body.0.remove("filter"))?;
        body.finish()?;
        if fields.is_empty() {
            return Err(Source::Body.bad(
                "filter",
                "give at least one of queue, kind, status, label, since, until \
                 (to cancel everything, say status: [\"pending\", \"queued\", \"running\", \
                 \"failed\", \"retry_scheduled\"])",
            ));
        }
        let filter = parse_filter(fields, Applies::Executions, Source::Body, "filter.")?;
        Ok((name, requested_by, reason, dry_run, rate, filter))
    })();
    let (name, requested_by, reason, dry_run, rate, filter) = match parsed {
        Ok(parsed) => parsed,
        Err(problem) => return problem.into_response(),
    };
    if let Some(problem) = not_ready(&state) {
        return problem.into_response();
    }
    let upto = state.projection.applied_seq();
    if dry_run {
        let matched = state.projection.ids(&filter.executions(), upto);
        return Json(json!({
            "dry_run": true,
            "filter": filter,
            "matched": matched.len(),
            "sample": matched.iter().take(SAMPLE).collect::<Vec<_>>(),
            "upto_seq": upto,
        }))
        .into_response();
    }
    let mut op = Operation::new(
        OperationKind::Cancel,
        name.unwrap_or_else(|| "bulk cancel".to_owned()),
        requested_by.unwrap_or_else(|| "anonymous".to_owned()),
        filter,
        rate,
        upto,
        Utc::now(),
    );
    op.reason = reason;
    op.matched = state.projection.ids(&op.filter.executions(), upto).len() as u64;
    started(state.operations.start(op).await)
}

fn no_operation(id: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("operation {id:?} does not exist; list them with GET /v1/operations"),
    )
}

/// `GET /v1/operations`: every bulk operation, newest first.
pub(super) async fn operations(State(state): State<ApiState>) -> Response {
    match state.operations.list().await {
        Ok(ops) => Json(json!({ "operations": ops })).into_response(),
        Err(e) => Problem::unavailable(e).into_response(),
    }
}

/// `GET /v1/operations/{id}`: one operation and its progress.
pub(super) async fn operation(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match state.operations.get(&id).await {
        Ok(Some(op)) => Json(op).into_response(),
        Ok(None) => no_operation(&id).into_response(),
        Err(e) => Problem::unavailable(e).into_response(),
    }
}

/// `POST /v1/operations/{id}/cancel`: stop an operation; items under way
/// complete, the rest are left alone.
pub(super) async fn cancel_operation(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let by = (|| {
        let mut body = Body::from(body, true)?;
        let by = body.text("requested_by")?;
        body.finish()?;
        Ok::<_, Problem>(by.unwrap_or_else(|| "anonymous".to_owned()))
    })();
    let by = match by {
        Ok(by) => by,
        Err(problem) => return problem.into_response(),
    };
    match state.operations.cancel(&id, &by).await {
        Ok(CancelOutcome::Cancelled(op)) => (StatusCode::ACCEPTED, Json(op)).into_response(),
        Ok(CancelOutcome::Ended(op)) => Problem::new(
            StatusCode::CONFLICT,
            "operation_ended",
            format!(
                "operation {} is {} already; nothing to cancel",
                op.id,
                json!(op.state).as_str().unwrap_or_default()
            ),
        )
        .into_response(),
        Ok(CancelOutcome::NotFound) => no_operation(&id).into_response(),
        Err(e) => Problem::unavailable(e).into_response(),
    }
}
