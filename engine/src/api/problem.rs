//! RFC 9457 problem details: every API error has a stable `code`, a
//! sentence that says what to do, and the offending field where there is one.

use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use runlog_events::Rejection;
use runlog_events::codec::EncodeError;
use runlog_events::journal::AppendError;
use serde::Serialize;

use crate::intake::IntakeError;
use crate::retry::RetryError;

/// An API error as `application/problem+json`.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// A URN naming the problem kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What happened here, and what to do.
    pub detail: String,
    /// The stable, machine-readable code (`not_found`).
    pub code: &'static str,
    /// The offending field (`retry.max_attempts`), for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every problem, each with its field, where a body has several (a
    /// workflow definition).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Box<Vec<runlog_events::spec::FieldError>>>,
}

impl Problem {
    /// A problem with `status`, `code` and `detail`.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("urn:runlog:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: detail.into(),
            code,
            field: None,
            errors: None,
        }
    }

    /// The problem as the NATS doors and batch results carry it:
    /// `{"error": {"code", "detail", "field"}}`.
    pub fn as_answer(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "detail": self.detail, "field": self.field}})
    }

    /// Names the offending field.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 422 listing every problem of a body (`what`: "the definition"),
    /// naming the first one's field.
    pub fn invalid(
        code: &'static str,
        what: &str,
        errors: Vec<runlog_events::spec::FieldError>,
    ) -> Self {
        let detail = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let mut problem = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            format!("{what} is refused: {detail}"),
        );
        if let Some(first) = errors.first().filter(|e| !e.field.is_empty()) {
            problem = problem.field(first.field.clone());
        }
        problem.errors = Some(Box::new(errors));
        problem
    }

    /// 404 for an execution that does not exist.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} does not exist; list executions with GET /v1/executions"),
        )
    }

    /// 503 when NATS cannot be reached.
    pub fn unavailable(e: impl std::fmt::Display) -> Self {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{e}; try again in a moment"),
        )
    }
}

impl From<Rejection> for Problem {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::Invalid(field) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_task",
                format!("{}: {}", field.field, field.reason),
            )
            .field(field.field),
            Rejection::NotFound => Problem::not_found("the execution"),
            other => Problem::new(StatusCode::CONFLICT, other.code(), other.to_string()),
        }
    }
}

impl From<IntakeError> for Problem {
    fn from(e: IntakeError) -> Self {
        match e {
            IntakeError::Rejected(r) => r.into(),
            IntakeError::Append(AppendError::Encode(e @ EncodeError::TooLarge { .. })) => {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    e.to_string(),
                )
            }
            other => Problem::unavailable(other),
        }
    }
}

impl From<RetryError> for Problem {
    fn from(e: RetryError) -> Self {
        match e {
            RetryError::NotFound(what) => Problem::not_found(what),
            RetryError::NotRetryable { .. }
            | RetryError::Unreadable { .. }
            | RetryError::Intake(IntakeError::EnvExpired(_) | IntakeError::EnvUnreadable { .. }) => {
                Problem::new(StatusCode::CONFLICT, "not_retryable", e.to_string())
            }
            RetryError::Intake(e) => e.into(),
            RetryError::Load(_) | RetryError::Read(_) => Problem::unavailable(e),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(&self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

/// 400 when it is not JSON at all, 422 when it is JSON that breaks the
/// route's shape (a missing or mistyped field), 413 and 415 for its size
/// and content type.
pub(in crate::api) fn invalid_body(e: JsonRejection) -> Problem {
    let status = match e {
        JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
        JsonRejection::JsonSyntaxError(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    let detail = e.body_text();
    let problem = Problem::new(status, "invalid_body", detail.clone());
    match field_named(&detail) {
        Some(field) if status == StatusCode::UNPROCESSABLE_ENTITY => problem.field(field),
        _ => problem,
    }
}

/// The field a serde error names, where it can be picked out: "missing
/// field `kind`", "unknown variant ... at `priority`".
pub(in crate::api) fn field_named(detail: &str) -> Option<&str> {
    detail
        .split('`')
        .nth(1)
        .filter(|field| !field.contains(' '))
}
