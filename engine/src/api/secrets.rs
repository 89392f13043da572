//! `/v1/secrets`: named secrets, sealed in the `<p>-secrets` bucket
//! (docs/security.md). Values go in and never come back out: the list
//! shows names, when each was set, and the id of the key that sealed it.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/secrets` | every secret's name, `updated_at` and `key` |
//! | `PUT /v1/secrets/{name}` | sets it (`{"value": "…"}`) |
//! | `DELETE /v1/secrets/{name}` | removes it |
//! | `POST /v1/secrets/rotate` | seals every secret and task environment again under the current key |

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use runlog_events::secrets::{SecretError, Secrets};
use serde_json::json;
use zeroize::Zeroizing;

use super::{ApiState, Problem};

/// Body of `PUT /v1/secrets/{name}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SecretBody {
    value: String,
}

fn store(state: &ApiState) -> Result<&Secrets, Problem> {
    state.secrets.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::CONFLICT,
            "no_secret_key",
            "this engine has no secret key: start it with --secret-key-file \
             (`runlog secret keygen` makes one)",
        )
    })
}

fn problem(e: SecretError) -> Problem {
    match e {
        SecretError::BadName(_) | SecretError::TooLarge | SecretError::NotText => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            e.to_string(),
        ),
        SecretError::Open { .. } => {
            Problem::new(StatusCode::CONFLICT, "unreadable_secret", e.to_string())
        }
        SecretError::Store { .. } => Problem::unavailable(e),
    }
}

/// `GET /v1/secrets`.
pub(super) async fn list(State(state): State<ApiState>) -> Response {
    let secrets = match store(&state) {
        Ok(secrets) => secrets,
        Err(p) => return p.into_response(),
    };
    match secrets.list().await {
        Ok(list) => Json(json!({"secrets": list, "key": secrets.ring().ids()[0]})).into_response(),
        Err(e) => problem(e).into_response(),
    }
}

/// `PUT /v1/secrets/{name}`.
pub(super) async fn set(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Json<SecretBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let secrets = match store(&state) {
        Ok(secrets) => secrets,
        Err(p) => return p.into_response(),
    };
    // A refused body's message could quote the value: say only why.
    let Json(body) = match body {
        Ok(body) => body,
        Err(_) => {
            return Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                r#"the body must be {"value": "<the secret>"}"#,
            )
            .into_response();
        }
    };
    let value = Zeroizing::new(body.value);
    match secrets.set(&name, value.as_bytes()).await {
        Ok(()) => Json(json!({"name": name, "key": secrets.ring().ids()[0]})).into_response(),
        Err(e) => problem(e).into_response(),
    }
}

/// `DELETE /v1/secrets/{name}`.
pub(super) async fn remove(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    let secrets = match store(&state) {
        Ok(secrets) => secrets,
        Err(p) => return p.into_response(),
    };
    match secrets.remove(&name).await {
        Ok(true) => Json(json!({"name": name, "removed": true})).into_response(),
        Ok(false) => Problem::not_found(format!("secret {name:?}")).into_response(),
        Err(e) => problem(e).into_response(),
    }
}

/// `POST /v1/secrets/rotate`.
pub(super) async fn rotate(State(state): State<ApiState>) -> Response {
    let secrets = match store(&state) {
        Ok(secrets) => secrets,
        Err(p) => return p.into_response(),
    };
    match secrets.rotate().await {
        Ok(rotation) => Json(rotation).into_response(),
        Err(e) => problem(e).into_response(),
    }
}
