//! `GET /v1/breakers`: the workers' circuit breakers, read from the
//! `<p>-breakers` bucket (see `docs/workers.md`, "Circuit breakers").
//!
//! The records are the workers' own JSON (`key`, `state`, `since`,
//! `retry_at`, `failures`, `calls`, `worker`, `opened`, ...), passed
//! through as they are; the answer adds how many breakers are in each
//! state.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use runlog_events::stream::Layout;
use serde_json::{Value, json};

use super::{ApiState, Problem};

/// Every breaker, by key, with counts by state (empty until a worker
/// created the bucket).
pub(crate) async fn list(State(state): State<ApiState>) -> Response {
    let breakers = match records(&state).await {
        Ok(breakers) => breakers,
        Err(problem) => return problem.into_response(),
    };
    let mut states: BTreeMap<String, u64> = BTreeMap::new();
    for record in &breakers {
        if let Some(s) = record.get("state").and_then(Value::as_str) {
            *states.entry(s.to_owned()).or_default() += 1;
        }
    }
    axum::Json(json!({ "breakers": breakers, "states": states })).into_response()
}

/// Every breaker record of the bucket (none until a worker created it).
pub(crate) async fn records(state: &ApiState) -> Result<Vec<Value>, Problem> {
    let layout = Layout {
        subjects: state.subjects.clone(),
        ..Layout::default()
    };
    let Ok(store) = state.js.get_key_value(layout.breakers_bucket_name()).await else {
        return Ok(Vec::new());
    };
    let keys = match store.keys().await {
        Ok(keys) => keys.collect::<Vec<_>>().await,
        Err(e) => return Err(Problem::unavailable(e)),
    };
    let mut breakers = Vec::new();
    for key in keys.into_iter().flatten() {
        if let Ok(Some(value)) = store.get(&key).await
            && let Ok(record) = serde_json::from_slice::<Value>(&value)
        {
            breakers.push(record);
        }
    }
    Ok(breakers)
}
