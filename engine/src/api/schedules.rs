//! `/v1/schedules`: create, read, replace, pause, resume and delete
//! schedules; run one now; backfill a past range; read its runs and its own
//! history.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use runlog_events::ScheduleId;
use runlog_events::schedule::log::ScheduleAppendError;
use runlog_events::schedule::{Overlap, ScheduleSpec};
use runlog_events::spec::FieldError;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiState, Problem};
use crate::scheduler::SchedulerError;

/// `POST /v1/schedules`: a schedule spec, with an optional `id`; 201 with
/// the schedule, 409 when the id is taken, 422 naming every bad field.
pub(super) async fn create(State(state): State<ApiState>, body: Bytes) -> Response {
    let (id, spec) = match read_new(&body) {
        Ok(read) => read,
        Err(problem) => return problem.into_response(),
    };
    match state.scheduler.create(id, spec).await {
        Ok((id, history)) => (
            StatusCode::CREATED,
            Json(state.scheduler.view(&id, &history)),
        )
            .into_response(),
        Err(e) => problem(e).into_response(),
    }
}

/// `GET /v1/schedules`: every schedule not deleted.
pub(super) async fn list(State(state): State<ApiState>) -> Response {
    let schedules: Vec<Value> = state
        .scheduler
        .list()
        .iter()
        .map(|(id, history)| state.scheduler.view(id, history))
        .collect();
    Json(json!({ "schedules": schedules })).into_response()
}

/// `GET /v1/schedules/{id}`: the schedule, its next five ticks, its run
/// counts, last run and success rate.
pub(super) async fn get(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match read(&state, &id).await {
        Ok((id, history)) => Json(state.scheduler.view(&id, &history)).into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// `PUT /v1/schedules/{id}`: replaces the spec; ticks count from now on.
pub(super) async fn update(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(id) = ScheduleId::new(&id) else {
        return not_found(&id).into_response();
    };
    let mut value = match json_body(&body) {
        Ok(value) => value,
        Err(problem) => return problem.into_response(),
    };
    if let Some(given) = value.as_object_mut().and_then(|o| o.remove("id"))
        && given != json!(id)
    {
        return invalid(vec![field_error(
            "id",
            format!("the body names {given}, the path {id}; a schedule's id does not change"),
        )])
        .into_response();
    }
    let spec = match ScheduleSpec::read(value) {
        Ok(spec) => spec,
        Err(e) => return invalid(vec![e]).into_response(),
    };
    answer(&state, &id, state.scheduler.update(&id, spec).await)
}

/// `DELETE /v1/schedules/{id}`: the schedule stops for good; its runs stay.
pub(super) async fn delete(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let Ok(id) = ScheduleId::new(&id) else {
        return not_found(&id).into_response();
    };
    answer(&state, &id, state.scheduler.delete(&id).await)
}

/// Body of the pause route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PauseBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/schedules/{id}/pause`.
pub(super) async fn pause(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Option<Json<PauseBody>>,
) -> Response {
    let Ok(id) = ScheduleId::new(&id) else {
        return not_found(&id).into_response();
    };
    let reason = body.and_then(|Json(b)| b.reason);
    answer(&state, &id, state.scheduler.pause(&id, reason).await)
}

/// `POST /v1/schedules/{id}/resume`: ticks during the pause do not run.
pub(super) async fn resume(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let Ok(id) = ScheduleId::new(&id) else {
        return not_found(&id).into_response();
    };
    answer(&state, &id, state.scheduler.resume(&id).await)
}

/// `POST /v1/schedules/{id}/run-now`: 201 with the manual run's execution.
pub(super) async fn run_now(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let Ok(id) = ScheduleId::new(&id) else {
        return not_found(&id).into_response();
    };
    match state.scheduler.run_now(&id).await {
        Ok(execution) => (
            StatusCode::CREATED,
            Json(json!({"schedule": id, "execution": execution, "trigger": "manual"})),
        )
            .into_response(),
        Err(e) => problem(e).into_response(),
    }
}

/// Body of the backfill route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackfillBody {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    #[serde(default)]
    overlap: Option<Overlap>,
}

/// `POST /v1/schedules/{id}/backfill` `{from, to, overlap?}`: runs every
/// tick of the range that never ran, each with its logical time; 200 with
/// the runs started and how many ticks had run before.
pub(super) async fn backfill(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(id) = ScheduleId::new(&id) else {
        return not_found(&id).into_response();
    };
    let body: BackfillBody = match json_body(&body)
        .and_then(|v| serde_path_to_error::deserialize(v).map_err(field_problem))
    {
        Ok(body) => body,
        Err(problem) => return problem.into_response(),
    };
    match state
        .scheduler
        .backfill(&id, body.from, body.to, body.overlap)
        .await
    {
        Ok(done) => Json(json!({
            "schedule": id,
            "started": done.started.iter().map(|(tick, execution)| {
                json!({"scheduled_for": tick, "execution": execution})
            }).collect::<Vec<_>>(),
            "existing": done.existing,
            "skipped": done.skipped,
        }))
        .into_response(),
        Err(e) => problem(e).into_response(),
    }
}

/// Query of the runs route.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RunsQuery {
    limit: Option<usize>,
}

/// `GET /v1/schedules/{id}/runs`: newest first, each with its execution's
/// status and duration.
pub(super) async fn runs(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<RunsQuery>,
) -> Response {
    match read(&state, &id).await {
        Ok((_, history)) => {
            let limit = q
                .limit
                .unwrap_or(100)
                .clamp(1, runlog_events::schedule::RECENT_RUNS);
            Json(json!({
                "runs": state.scheduler.runs(&history, limit),
                "run_count": history.state.run_count,
            }))
            .into_response()
        }
        Err(problem) => problem.into_response(),
    }
}

/// `GET /v1/schedules/{id}/events`: the schedule's own history, every
/// change and every tick's fate, oldest first.
pub(super) async fn events(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let Ok(id) = ScheduleId::new(&id) else {
        return not_found(&id).into_response();
    };
    match state.scheduler.events(&id).await {
        Ok(events) if !events.is_empty() => Json(json!({ "events": events })).into_response(),
        Ok(_) => not_found(id.as_str()).into_response(),
        Err(e) => problem(e).into_response(),
    }
}

async fn read(
    state: &ApiState,
    id: &str,
) -> Result<(ScheduleId, runlog_events::schedule::log::ScheduleHistory), Problem> {
    let Ok(id) = ScheduleId::new(id) else {
        return Err(not_found(id));
    };
    match state.scheduler.get(&id).await {
        Ok(Some(history)) => Ok((id, history)),
        Ok(None) => Err(not_found(id.as_str())),
        Err(e) => Err(problem(e)),
    }
}

fn answer(
    state: &ApiState,
    id: &ScheduleId,
    done: Result<runlog_events::schedule::log::ScheduleHistory, SchedulerError>,
) -> Response {
    match done {
        Ok(history) => Json(state.scheduler.view(id, &history)).into_response(),
        Err(e) => problem(e).into_response(),
    }
}

/// The body of `POST /v1/schedules`: the id it asks for, if any, and the
/// spec.
pub(super) fn read_new(body: &[u8]) -> Result<(Option<ScheduleId>, ScheduleSpec), Problem> {
    let mut value = json_body(body)?;
    let id = match value.as_object_mut().and_then(|o| o.remove("id")) {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => {
            Some(ScheduleId::new(id).map_err(|e| invalid(vec![field_error("id", e.to_string())]))?)
        }
        Some(other) => {
            return Err(invalid(vec![field_error(
                "id",
                format!("an id is text, not {other}"),
            )]));
        }
    };
    let spec = ScheduleSpec::read(value).map_err(|e| invalid(vec![e]))?;
    Ok((id, spec))
}

fn json_body(body: &[u8]) -> Result<Value, Problem> {
    serde_json::from_slice(body).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("the body is not JSON: {e}"),
        )
    })
}

fn field_problem(e: serde_path_to_error::Error<serde_json::Error>) -> Problem {
    let path = e.path().to_string();
    let reason = e.into_inner().to_string();
    let field = match reason.strip_prefix("missing field `") {
        Some(rest) => rest.split('`').next().unwrap_or_default().to_owned(),
        None if path == "." => String::new(),
        None => path,
    };
    invalid(vec![field_error(&field, reason)])
}

fn field_error(field: &str, reason: String) -> FieldError {
    FieldError {
        field: field.to_owned(),
        reason,
    }
}

fn invalid(errors: Vec<FieldError>) -> Problem {
    Problem::invalid("invalid_schedule", "the schedule", errors)
}

fn not_found(id: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("schedule {id:?} does not exist; list them with GET /v1/schedules"),
    )
}

fn problem(e: SchedulerError) -> Problem {
    match e {
        SchedulerError::Invalid(errors) => invalid(errors),
        SchedulerError::NotFound(id) => not_found(&id),
        SchedulerError::Exists(_) => Problem::new(StatusCode::CONFLICT, "exists", e.to_string()),
        SchedulerError::BadRange { field, .. } => invalid(vec![field_error(field, e.to_string())]),
        SchedulerError::Busy(_) => Problem::new(StatusCode::CONFLICT, "busy", e.to_string()),
        SchedulerError::Append(ScheduleAppendError::TooLarge { .. }) => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            e.to_string(),
        ),
        SchedulerError::Load(_) | SchedulerError::Append(_) => Problem::unavailable(e),
    }
}
