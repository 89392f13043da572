//! `/v1/workflows`: define a workflow version, list workflows and their
//! versions, read one version.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use runlog_events::workflow::Definition;
use serde_json::json;

use super::{ApiState, Problem};
use crate::workflows::WorkflowsError;

/// `POST /v1/workflows`: a definition in JSON, or in YAML with
/// `Content-Type: application/yaml`. 201 when stored, 200 when this version
/// was stored before with the same content, 422 with every problem, 409
/// when the version is taken by other content.
pub(super) async fn define(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let yaml = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("yaml"));
    let definition = match read(&body, yaml) {
        Ok(definition) => definition,
        Err(problem) => return problem.into_response(),
    };
    let workers = state.workers.clone();
    match state
        .workflows
        .define(definition, |kind| workers.runs(kind))
        .await
    {
        Ok(defined) => {
            let status = if defined.existing {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            let d = &defined.definition;
            (
                status,
                Json(json!({
                    "name": d.name,
                    "version": d.version,
                    "nodes": d.nodes.len(),
                    "existing": defined.existing,
                })),
            )
                .into_response()
        }
        Err(e) => problem(e).into_response(),
    }
}

/// The body of `POST /v1/workflows`: a definition in JSON, or in YAML when
/// `yaml`; not yet checked (that needs the kinds live workers run).
pub(super) fn read(body: &[u8], yaml: bool) -> Result<Definition, Problem> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the body is not UTF-8",
        ));
    };
    let read = if yaml {
        Definition::from_yaml(text)
    } else {
        Definition::from_json(text)
    };
    read.map_err(invalid)
}

/// `GET /v1/workflows`: every workflow with its versions.
pub(super) async fn list(State(state): State<ApiState>) -> Response {
    match state.workflows.names().await {
        Ok(names) => {
            let workflows: Vec<_> = names
                .into_iter()
                .map(|(name, versions)| {
                    json!({"name": name, "latest": versions.last(), "versions": versions})
                })
                .collect();
            Json(json!({ "workflows": workflows })).into_response()
        }
        Err(e) => problem(e).into_response(),
    }
}

/// `GET /v1/workflows/{name}/versions`: every version, oldest first.
pub(super) async fn versions(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    match state.workflows.versions(&name).await {
        Ok(versions) if versions.is_empty() => {
            Problem::not_found(format!("workflow {name:?}")).into_response()
        }
        Ok(versions) => Json(json!({ "name": name, "versions": versions })).into_response(),
        Err(e) => problem(e).into_response(),
    }
}

/// `GET /v1/workflows/{name}/versions/{version}`: one version.
pub(super) async fn version(
    State(state): State<ApiState>,
    Path((name, version)): Path<(String, u32)>,
) -> Response {
    match state.workflows.get(&name, version).await {
        Ok(Some(definition)) => Json(definition).into_response(),
        Ok(None) => {
            Problem::not_found(format!("version {version} of workflow {name:?}")).into_response()
        }
        Err(e) => problem(e).into_response(),
    }
}

pub(super) fn invalid(errors: Vec<runlog_events::spec::FieldError>) -> Problem {
    Problem::invalid("invalid_workflow", "the definition", errors)
}

fn problem(e: WorkflowsError) -> Problem {
    match e {
        WorkflowsError::Invalid(errors) => invalid(errors),
        WorkflowsError::Conflict { .. } => {
            Problem::new(StatusCode::CONFLICT, "version_taken", e.to_string()).field("version")
        }
        WorkflowsError::Store(_) => Problem::unavailable(e),
    }
}
