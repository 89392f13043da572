//! What executions used and cost: `GET /v1/executions/{id}/cost` (one
//! execution, attempt by attempt) and `GET /v1/costs` (summed by queue,
//! kind, a label or day).
//!
//! The figures are what the workers recorded on each attempt's terminal
//! event (`resources`), summed in the read model as the log is folded; a
//! price table (`[engine.prices]`) turns them into a cost.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use runlog_events::ExecutionState;
use runlog_events::resources::ResourceTotals;
use serde::Deserialize;
use serde_json::{Value, json};

use super::executions::{FilterQuery, attempts, history};
use super::{ApiState, Problem};

/// `GET /v1/executions/{id}/cost`: each attempt's resources and cost, and
/// the execution's totals.
pub(super) async fn execution(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let (execution, history) = match history(&state, &id).await {
        Ok(found) => found,
        Err(problem) => return problem.into_response(),
    };
    let attempts: Vec<Value> = attempts(&history)
        .into_iter()
        .map(|a| {
            let mut one = ResourceTotals::default();
            if let Some(r) = &a.resources {
                one.add(r);
            }
            json!({
                "attempt": a.attempt,
                "outcome": a.outcome,
                "resources": a.resources,
                "cost": a.resources.and_then(|_| state.prices.cost(&one)),
            })
        })
        .collect();
    let totals = history
        .state
        .resources
        .as_deref()
        .copied()
        .unwrap_or_default();
    let spec = history.state.spec.as_deref();
    Json(json!({
        "id": execution,
        "status": history.state.status,
        "queue": spec.map(|s| &s.queue),
        "kind": spec.map(|s| &s.kind),
        "attempts": attempts,
        "total": totals,
        "cost": state.prices.cost(&totals),
        "prices": priced(&state),
    }))
    .into_response()
}

/// Query of `GET /v1/costs`: how to group, and the filters of
/// `GET /v1/executions`.
#[derive(Debug, Deserialize)]
pub(super) struct CostsQuery {
    /// `queue` (the default), `kind`, `day` or `label:<name>`.
    group_by: Option<String>,
    #[serde(flatten)]
    filter: FilterQuery,
}

/// What executions are grouped by.
#[derive(Debug, Clone, PartialEq)]
enum GroupBy {
    Queue,
    Kind,
    /// The UTC day the execution was submitted on.
    Day,
    Label(String),
}

impl GroupBy {
    fn parse(text: &str) -> Option<GroupBy> {
        match text {
            "queue" => Some(GroupBy::Queue),
            "kind" => Some(GroupBy::Kind),
            "day" => Some(GroupBy::Day),
            _ => text
                .strip_prefix("label:")
                .filter(|name| !name.is_empty())
                .map(|name| GroupBy::Label(name.to_owned())),
        }
    }

    /// The group of `state`; `None` for an execution without the label.
    fn key(&self, state: &ExecutionState) -> Option<String> {
        let spec = state.spec.as_deref();
        match self {
            GroupBy::Queue => spec.map(|s| s.queue.as_str().to_owned()),
            GroupBy::Kind => spec.map(|s| s.kind.clone()),
            GroupBy::Day => state.submitted_at.map(|t| t.format("%Y-%m-%d").to_string()),
            GroupBy::Label(name) => spec.and_then(|s| s.labels.get(name).cloned()),
        }
    }
}

/// One group's sums.
#[derive(Debug, Default)]
struct Group {
    executions: u64,
    totals: ResourceTotals,
}

/// `GET /v1/costs?group_by=queue&since=…`: resources and cost summed per
/// group over every execution the filters match. Executions with nothing
/// measured yet count in `executions` only.
pub(super) async fn list(
    State(state): State<ApiState>,
    query: Result<Query<CostsQuery>, QueryRejection>,
) -> Response {
    let invalid = |detail: String| Problem::new(StatusCode::BAD_REQUEST, "invalid_query", detail);
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return invalid(e.body_text()).into_response(),
    };
    let group_by = q.group_by.as_deref().unwrap_or("queue");
    let Some(grouping) = GroupBy::parse(group_by) else {
        return invalid(format!(
            "group_by {group_by:?}: use queue, kind, day or label:<name>"
        ))
        .field("group_by")
        .into_response();
    };
    let filter = q.filter.filter();
    let filter = match filter {
        Ok(filter) => filter,
        Err(problem) => return problem.into_response(),
    };
    let mut groups: BTreeMap<Option<String>, Group> = BTreeMap::new();
    let mut all = Group::default();
    state.projection.for_each(&filter, |state| {
        let group = groups.entry(grouping.key(state)).or_default();
        for g in [group, &mut all] {
            g.executions += 1;
            if let Some(r) = &state.resources {
                g.totals.merge(r);
            }
        }
    });
    let view = |key: Option<&String>, g: &Group| {
        json!({
            "key": key,
            "executions": g.executions,
            "resources": g.totals,
            "cost": state.prices.cost(&g.totals),
        })
    };
    let mut rows: Vec<Value> = groups.iter().map(|(k, g)| view(k.as_ref(), g)).collect();
    // Days in order; other groups by what they used, the largest first.
    if grouping != GroupBy::Day {
        rows.sort_by(|a, b| {
            let (a, b) = (weight(a), weight(b));
            b.iter()
                .zip(&a)
                .map(|(b, a)| b.total_cmp(a))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    }
    Json(json!({
        "group_by": group_by,
        "since": filter.since,
        "until": filter.until,
        "groups": rows,
        "total": view(None, &all),
        "prices": priced(&state),
    }))
    .into_response()
}

/// What orders groups, the largest first: cost when priced, then CPU
/// time, then wall time.
fn weight(row: &Value) -> [f64; 3] {
    let r = &row["resources"];
    let cpu = r["cpu_user_ms"].as_f64().unwrap_or(0.0) + r["cpu_system_ms"].as_f64().unwrap_or(0.0);
    [
        row["cost"]["total"].as_f64().unwrap_or(0.0),
        cpu,
        r["wall_ms"].as_f64().unwrap_or(0.0),
    ]
}

/// The price table, when one is set.
fn priced(state: &ApiState) -> Option<runlog_events::resources::Prices> {
    (!state.prices.is_empty()).then_some(state.prices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_by_names_parse() {
        assert_eq!(GroupBy::parse("queue"), Some(GroupBy::Queue));
        assert_eq!(GroupBy::parse("day"), Some(GroupBy::Day));
        assert_eq!(
            GroupBy::parse("label:team"),
            Some(GroupBy::Label("team".into()))
        );
        assert_eq!(GroupBy::parse("label:"), None);
        assert_eq!(GroupBy::parse("worker"), None);
    }
}
