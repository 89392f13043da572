//! `/v1/pools`: agent pools with their agents, capacity and load; creating
//! a pool and issuing and revoking its tokens (`crate::pools`).
//!
//! A token is in an answer once, when it is made; the engine keeps only
//! its hash.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiState, Problem};
use crate::pools::{Issued, Pool, PoolsError};

fn problem(e: PoolsError) -> Problem {
    match e {
        e @ PoolsError::BadName(_) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            e.to_string(),
        )
        .field("name"),
        e @ PoolsError::Exists(_) => Problem::new(StatusCode::CONFLICT, "conflict", e.to_string()),
        PoolsError::Unknown(what) => Problem::not_found(what),
        e @ PoolsError::Store(_) => Problem::unavailable(e),
    }
}

fn issued(issued: Issued) -> Response {
    (
        StatusCode::CREATED,
        Json(json!({
            "pool": issued.pool,
            "id": issued.id,
            "token": issued.token,
            "note": "the token is shown only now: hand it to the pool's agents \
                     (runlog worker --pool NAME --token-file FILE)",
        })),
    )
        .into_response()
}

/// The body of `POST /v1/pools`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    name: String,
    #[serde(default)]
    description: Option<String>,
}

/// `POST /v1/pools`: 201 with the pool's first token.
pub(super) async fn create(
    State(state): State<ApiState>,
    Json(body): Json<CreateBody>,
) -> Response {
    match state.pools.create(&body.name, body.description).await {
        Ok(token) => issued(token),
        Err(e) => problem(e).into_response(),
    }
}

/// `POST /v1/pools/{name}/tokens`: 201 with a new token.
pub(super) async fn issue(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    match state.pools.issue(&name).await {
        Ok(token) => issued(token),
        Err(e) => problem(e).into_response(),
    }
}

/// `DELETE /v1/pools/{name}/tokens/{id}`: the token lets no agent join
/// from its next join on (agents ask again every 30 s).
pub(super) async fn revoke(
    State(state): State<ApiState>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    match state.pools.revoke(&name, &id).await {
        Ok(()) => Json(json!({"pool": name, "revoked": id})).into_response(),
        Err(e) => problem(e).into_response(),
    }
}

/// `GET /v1/pools`: every pool with its tokens (ids and dates, never
/// secrets) and its live agents, each with its capacity by class and what
/// runs there now (`plan 2/3, apply 0/1`).
pub(super) async fn list(State(state): State<ApiState>) -> Response {
    let pools = match state.pools.list().await {
        Ok(pools) => pools,
        Err(e) => return problem(e).into_response(),
    };
    let agents = match super::registry(&state).await {
        Ok(workers) => workers,
        Err(problem) => return problem.into_response(),
    };
    let mut names: Vec<String> = pools.iter().map(|p| p.name.clone()).collect();
    for agent in &agents {
        if let Some(pool) = agent["pool"].as_str()
            && !names.iter().any(|n| n == pool)
        {
            names.push(pool.to_owned());
        }
    }
    names.sort();
    let views: Vec<Value> = names
        .iter()
        .map(|name| view(name, pools.iter().find(|p| &p.name == name), &agents))
        .collect();
    Json(json!({"pools": views})).into_response()
}

fn view(name: &str, pool: Option<&Pool>, agents: &[Value]) -> Value {
    let members: Vec<Value> = agents
        .iter()
        .filter(|a| a["pool"].as_str() == Some(name))
        .map(|a| {
            json!({
                "id": a["id"],
                "host": a["host"],
                "slots": a["concurrency"],
                "running": a["running"].as_array().map_or(0, Vec::len),
                "load": a["load"],
                "summary": summary(&a["load"]),
                "paused_for_resources": a["paused_for_resources"],
                "last_seen": a["last_seen"],
            })
        })
        .collect();
    let tokens: Vec<Value> = pool
        .map(|p| {
            p.tokens
                .iter()
                .map(|(id, t)| json!({"id": id, "created_at": t.created_at, "revoked_at": t.revoked_at}))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "name": name,
        "known": pool.is_some(),
        "description": pool.and_then(|p| p.description.clone()),
        "created_at": pool.map(|p| p.created_at),
        "tokens": tokens,
        "agents": members,
        "slots": members.iter().filter_map(|m| m["slots"].as_u64()).sum::<u64>(),
        "running": members.iter().filter_map(|m| m["running"].as_u64()).sum::<u64>(),
    })
}

/// `plan 2/3, apply 0/1` from an agent's load by class.
fn summary(load: &Value) -> String {
    load.as_array()
        .into_iter()
        .flatten()
        .map(|class| {
            format!(
                "{} {}/{}",
                class["class"].as_str().unwrap_or("?"),
                class["running"],
                class["limit"]
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
