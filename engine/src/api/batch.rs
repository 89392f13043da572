//! Bulk intake: `POST /v1/executions/batch`, and what the NATS batch door
//! (`<p>.submit-batch.<queue>`, [`crate::submit`]) shares with it.
//!
//! A batch is `{"executions": [<spec>, ...]}`, each element exactly what
//! `POST /v1/executions` takes. Each element is read on its own, so one
//! that is not a task fails alone; the answer is one result per element,
//! in order: `{"id", "status", "existing"}` or
//! `{"error": {"code", "detail", "field"}}`.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use runlog_events::QueueName;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::executions::answer;
use super::problem::{field_named, invalid_body};
use super::{ApiState, MAX_BODY, Problem, SubmitBody};
use crate::intake::{Accepted, Intake};
use crate::workers::LiveWorkers;

/// The most specs one batch may hold.
pub const MAX_BATCH: usize = 1000;

/// The largest batch body accepted: room for [`MAX_BATCH`] specs of a few
/// KiB each. Every spec still meets the single-spec limit, [`MAX_BODY`].
pub const MAX_BATCH_BODY: usize = 16 * 1024 * 1024;

/// A JSON batch; each spec is kept as its text until it is read alone.
#[derive(Debug, Deserialize)]
pub(super) struct JsonBatch {
    executions: Vec<Box<RawValue>>,
}

/// A MessagePack batch; each spec is kept as a value until it is read alone.
#[derive(Debug, Deserialize)]
struct MsgpackBatch {
    executions: Vec<Value>,
}

/// `POST /v1/executions/batch`: 200 with one result per spec once the
/// batch was read.
pub(super) async fn submit(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<crate::tokens::Caller>,
    body: Result<Json<JsonBatch>, JsonRejection>,
) -> Response {
    let Json(batch) = match body {
        Ok(body) => body,
        Err(e) => return invalid_body(e).into_response(),
    };
    if let Err(problem) = within_limit(batch.executions.len()) {
        return problem.into_response();
    }
    let specs = batch
        .executions
        .iter()
        .map(|raw| {
            json_spec(raw.get()).and_then(|body| {
                super::auth::may_submit_to(&caller, body.spec.queue.as_str()).map(|()| body)
            })
        })
        .collect();
    Json(submit_all(&state.intake, &state.workers, specs, None).await).into_response()
}

/// Reads a batch body, JSON or (with `msgpack`) MessagePack, into one spec
/// (or the reason it is not one) per element.
pub(crate) fn read(
    payload: &[u8],
    msgpack: bool,
) -> Result<Vec<Result<SubmitBody, Problem>>, Problem> {
    let batch_error = |e: String| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", e);
    let specs = if msgpack {
        let batch: MsgpackBatch = rmp_serde::from_slice(payload).map_err(|e| {
            let problem = batch_error(e.to_string());
            problem.field("executions")
        })?;
        within_limit(batch.executions.len())?;
        batch.executions.into_iter().map(msgpack_spec).collect()
    } else {
        let batch: JsonBatch =
            serde_json::from_slice(payload).map_err(|e| bad_spec(e.to_string()))?;
        within_limit(batch.executions.len())?;
        batch
            .executions
            .iter()
            .map(|raw| json_spec(raw.get()))
            .collect()
    };
    Ok(specs)
}

/// Submits every spec that was read (under `queue`, when the door names
/// one) and answers `{"results": [...]}`, in the batch's order.
pub(crate) async fn submit_all(
    intake: &Intake,
    workers: &LiveWorkers,
    specs: Vec<Result<SubmitBody, Problem>>,
    queue: Option<QueueName>,
) -> Value {
    let mut results: Vec<Option<Result<Accepted, Problem>>> = Vec::with_capacity(specs.len());
    let mut submissions = Vec::with_capacity(specs.len());
    let mut positions = Vec::with_capacity(specs.len());
    let mut warnings = Vec::with_capacity(specs.len());
    for spec in specs {
        let submission = spec.and_then(|mut body| {
            if let Some(queue) = &queue {
                body.spec.queue = queue.clone();
            }
            body.into_submission()
        });
        match submission {
            Ok(submission) => {
                warnings.push(workers.warning(&submission.spec));
                positions.push(results.len());
                submissions.push(submission);
                results.push(None);
            }
            Err(problem) => {
                warnings.push(None);
                results.push(Some(Err(problem)));
            }
        }
    }
    let accepted = intake.submit_many(submissions, Utc::now()).await;
    for (position, result) in positions.into_iter().zip(accepted) {
        results[position] = Some(result.map_err(Problem::from));
    }
    let results: Vec<Value> = results
        .into_iter()
        .zip(warnings)
        .map(|(r, warning)| answer(r.expect("every spec has a result"), warning))
        .collect();
    json!({ "results": results })
}

fn within_limit(specs: usize) -> Result<(), Problem> {
    if specs <= MAX_BATCH {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_body",
        format!(
            "a batch holds at most {MAX_BATCH} executions and this one holds {specs}: \
             send the rest in further batches"
        ),
    )
    .field("executions"))
}

fn json_spec(raw: &str) -> Result<SubmitBody, Problem> {
    if raw.len() > MAX_BODY {
        return Err(spec_too_large(raw.len()));
    }
    // The batch parsed, so its elements are JSON.
    SubmitBody::read(serde_json::from_str(raw).map_err(|e| bad_spec(e.to_string()))?)
}

fn msgpack_spec(value: Value) -> Result<SubmitBody, Problem> {
    // The single door measures the MessagePack it was sent; so does this.
    let mut size = Counter(0);
    if rmp_serde::encode::write_named(&mut size, &value).is_ok() && size.0 > MAX_BODY {
        return Err(spec_too_large(size.0));
    }
    SubmitBody::read(value)
}

/// A spec that is not a task: serde's sentence, with the field it names.
fn bad_spec(detail: String) -> Problem {
    let problem = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", &detail);
    match field_named(&detail) {
        Some(field) => problem.field(field),
        None => problem,
    }
}

fn spec_too_large(size: usize) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_body",
        format!(
            "this spec is {size} bytes, over the limit of one submission ({MAX_BODY}): \
             keep large inputs out of the spec (an URL or a path the task reads)"
        ),
    )
}

/// Counts the bytes written to it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_spec_is_read_on_its_own() {
        let body =
            br#"{"executions": [{"kind": "echo"}, {"input": 1}, {"kind": "echo", "priority": 7}]}"#;
        let specs = read(body, false).unwrap();
        assert_eq!(specs.len(), 3);
        assert!(specs[0].is_ok());
        let missing = specs[1].as_ref().unwrap_err();
        assert_eq!(missing.code, "invalid_body");
        assert_eq!(missing.field.as_deref(), Some("kind"));
        assert!(specs[2].is_err());
    }

    #[test]
    fn messagepack_batches_read_like_json_ones() {
        let body = rmp_serde::to_vec_named(&json!({
            "executions": [{"kind": "echo", "id": "a"}, {"queue": "q"}]
        }))
        .unwrap();
        let specs = read(&body, true).unwrap();
        assert_eq!(specs[0].as_ref().unwrap().id.as_deref(), Some("a"));
        assert_eq!(
            specs[1].as_ref().unwrap_err().field.as_deref(),
            Some("kind")
        );
    }

    #[test]
    fn a_batch_over_the_limit_is_refused_whole() {
        let body = json!({"executions": vec![json!({"kind": "echo"}); MAX_BATCH + 1]});
        let problem = read(body.to_string().as_bytes(), false).unwrap_err();
        assert_eq!(problem.status, 413);
        assert_eq!(problem.field.as_deref(), Some("executions"));
        assert!(
            problem.detail.contains("at most 1000"),
            "{}",
            problem.detail
        );
    }

    #[test]
    fn a_spec_over_the_single_limit_fails_alone() {
        let big = "x".repeat(MAX_BODY);
        let body = json!({"executions": [{"kind": "echo", "input": big}, {"kind": "echo"}]});
        let specs = read(body.to_string().as_bytes(), false).unwrap();
        assert_eq!(specs[0].as_ref().unwrap_err().status, 413);
        assert!(specs[1].is_ok());
    }
}
