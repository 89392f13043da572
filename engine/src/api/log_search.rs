//! `GET /v1/logs/search`: lines of every execution's log that contain a
//! substring (`q`) or match a regular expression (`regex`), newest first,
//! by a bounded scan of the logs stream (see [`crate::log_search`]).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use runlog_events::QueueName;
use serde::Deserialize;

use super::{ApiState, Problem};
use crate::log_search::{self, DEFAULT_SCAN_LIMIT, MAX_SCAN_LIMIT, Pattern, Search};

/// Matches returned unless `limit` says otherwise, and at most.
const LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// Query of the search.
#[derive(Debug, Default, Deserialize)]
pub(super) struct SearchQuery {
    /// A substring every matching line contains.
    q: Option<String>,
    /// A regular expression every matching line matches (instead of `q`).
    regex: Option<String>,
    queue: Option<String>,
    kind: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    limit: Option<usize>,
    scan_limit: Option<u64>,
}

fn bad(field: &'static str, detail: impl Into<String>) -> Response {
    Problem::new(StatusCode::BAD_REQUEST, "invalid_query", detail)
        .field(field)
        .into_response()
}

pub(super) async fn search(
    State(state): State<ApiState>,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            return Problem::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text())
                .into_response();
        }
    };
    let pattern = match (q.q, q.regex) {
        (Some(text), None) if !text.is_empty() => Pattern::Substring(text),
        (None, Some(expression)) if !expression.is_empty() => match Pattern::regex(&expression) {
            Ok(pattern) => pattern,
            Err(e) => return bad("regex", format!("the regular expression is refused: {e}")),
        },
        (Some(_), Some(_)) => {
            return bad("regex", "give either q (a substring) or regex, not both");
        }
        _ => {
            return bad(
                "q",
                "give q (a substring to find) or regex (an expression to match)",
            );
        }
    };
    let queue = match q.queue.map(QueueName::new).transpose() {
        Ok(queue) => queue,
        Err(e) => return bad("queue", format!("queue: {e}")),
    };
    let search = Search {
        pattern,
        queue,
        kind: q.kind,
        since: q.since,
        until: q.until,
        limit: q.limit.unwrap_or(LIMIT).clamp(1, MAX_LIMIT),
        scan_limit: q
            .scan_limit
            .unwrap_or(DEFAULT_SCAN_LIMIT)
            .clamp(1, MAX_SCAN_LIMIT),
    };
    match log_search::search(&state.js, &state.subjects, &state.projection, &search).await {
        Ok(results) => axum::Json(results).into_response(),
        Err(e) => Problem::unavailable(e).into_response(),
    }
}
