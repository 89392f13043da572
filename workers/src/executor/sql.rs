//! `sql`: one statement against PostgreSQL, its parameters bound (never
//! spliced into the text), its rows as JSON.
//!
//! The connection string is not in the input: `connection` names one of
//! the task's environment values (a secret or a sealed `env` value), so the
//! log holds the name and the worker resolves the value. Each parameter is
//! converted to the type PostgreSQL infers for its placeholder; each column
//! of the result to its JSON form. A type without one is refused with the
//! cast to write (`$1::text`, `amount::text`).
//!
//! ```json
//! {"connection": "REPORTS_DB",
//!  "query": "select id, name from items where created > $1 and kind = $2",
//!  "params": ["2026-12-01T00:00:00Z", "book"]}
//! ```
//! returns `{"columns": ["id", "name"], "rows": [{"id": 1, "name": "…"}], "row_count": 1}`;
//! a statement without a result (`insert`, `update`) returns
//! `{"rows": [], "row_count": <rows affected>}`.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use runlog_events::{ErrorClass, TaskError};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Row};

use crate::executor::mask::mask;
use crate::executor::stop::{StopReason, stop_requested};
use crate::handler::{Context, Handler, HandlerResult};

/// Rows returned unless the input says otherwise.
pub const DEFAULT_MAX_ROWS: usize = 10_000;

/// The input of a `sql` task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlInput {
    /// The name of the task's environment value that holds the connection
    /// string (`postgres://user:password@host:5432/db`).
    pub connection: String,
    /// One statement, with `$1`, `$2`, … for its parameters.
    pub query: String,
    /// The parameters, in order.
    #[serde(default)]
    pub params: Vec<Value>,
    /// More rows than this fail the task ([`DEFAULT_MAX_ROWS`]).
    #[serde(default)]
    pub max_rows: Option<usize>,
}

/// Runs `sql` tasks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SqlExecutor;

impl Handler for SqlExecutor {
    async fn run(&self, ctx: Context) -> HandlerResult {
        let input: SqlInput =
            serde_json::from_value(ctx.input().clone()).map_err(|e| invalid(e.to_string()))?;
        let url = ctx.env().get(&input.connection).ok_or_else(|| {
            invalid(format!(
                "`connection` names {:?}, which the task does not have: give the task the \
                 connection string as a secret or sealed env value of that name",
                input.connection
            ))
        })?;
        let secrets: Vec<&str> = ctx.env().values().map(String::as_str).collect();
        let work = async {
            let (client, connection) = tokio_postgres::connect(url, NoTls)
                .await
                .map_err(|e| database_error(&e, "cannot connect to PostgreSQL", &secrets))?;
            let driver = tokio::spawn(async move {
                let _ended = connection.await;
            });
            let result = query(&client, &input, &secrets).await;
            drop(client);
            let _ = driver.await;
            result
        };
        tokio::select! {
            result = work => result,
            reason = stop_requested(&ctx) => {
                // Dropping the query's future closes its connection: the
                // server ends the backend and its statement.
                Err(reason.error(format!("{}: the statement was abandoned", word(reason))))
            }
        }
    }
}

fn word(reason: StopReason) -> &'static str {
    match reason {
        StopReason::Cancelled => "cancelled",
        StopReason::Timeout => "ran past the attempt deadline",
    }
}

async fn query(client: &Client, input: &SqlInput, secrets: &[&str]) -> HandlerResult {
    let statement = client
        .prepare(&input.query)
        .await
        .map_err(|e| database_error(&e, "the statement was refused", secrets))?;
    let types = statement.params();
    if types.len() != input.params.len() {
        return Err(invalid(format!(
            "the statement has {} parameters, the input {}",
            types.len(),
            input.params.len()
        )));
    }
    let params: Vec<Box<dyn ToSql + Sync + Send>> = input
        .params
        .iter()
        .zip(types)
        .enumerate()
        .map(|(i, (value, ty))| {
            bind(value, ty).map_err(|e| invalid(format!("`params[{i}]` (${}): {e}", i + 1)))
        })
        .collect::<Result<_, _>>()?;
    let refs: Vec<&(dyn ToSql + Sync)> =
        params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
    if statement.columns().is_empty() {
        let affected = client
            .execute(&statement, &refs)
            .await
            .map_err(|e| database_error(&e, "the statement failed", secrets))?;
        return Ok(json!({"rows": [], "row_count": affected}));
    }
    let rows = client
        .query(&statement, &refs)
        .await
        .map_err(|e| database_error(&e, "the statement failed", secrets))?;
    let max = input.max_rows.unwrap_or(DEFAULT_MAX_ROWS);
    if rows.len() > max {
        return Err(TaskError::new(
            ErrorClass::Permanent,
            format!(
                "the statement returned {} rows, more than `max_rows` ({max}): add a limit",
                rows.len()
            ),
        ));
    }
    let columns: Vec<&str> = statement.columns().iter().map(|c| c.name()).collect();
    let rows = rows
        .iter()
        .map(row_json)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TaskError::new(ErrorClass::InvalidInput, e))?;
    Ok(json!({"columns": columns, "rows": rows, "row_count": rows.len()}))
}

/// `value` as the type PostgreSQL expects for its placeholder.
fn bind(value: &Value, ty: &Type) -> Result<Box<dyn ToSql + Sync + Send>, String> {
    fn none<T: ToSql + Sync + Send + 'static>() -> Box<dyn ToSql + Sync + Send> {
        Box::new(None::<T>)
    }
    let wrong = || format!("{value} is not a {ty}");
    let text = |value: &Value| match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let int = |min: i64, max: i64| {
        value
            .as_i64()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(wrong)
    };
    let null = value.is_null();
    Ok(match *ty {
        Type::BOOL if null => none::<bool>(),
        Type::BOOL => Box::new(value.as_bool().ok_or_else(wrong)?),
        Type::INT2 if null => none::<i16>(),
        Type::INT2 => Box::new(int(i16::MIN.into(), i16::MAX.into())? as i16),
        Type::INT4 if null => none::<i32>(),
        Type::INT4 => Box::new(int(i32::MIN.into(), i32::MAX.into())? as i32),
        Type::INT8 if null => none::<i64>(),
        Type::INT8 => Box::new(int(i64::MIN, i64::MAX)?),
        Type::FLOAT4 if null => none::<f32>(),
        Type::FLOAT4 => Box::new(value.as_f64().ok_or_else(wrong)? as f32),
        Type::FLOAT8 if null => none::<f64>(),
        Type::FLOAT8 => Box::new(value.as_f64().ok_or_else(wrong)?),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN if null => {
            none::<String>()
        }
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            Box::new(text(value))
        }
        Type::JSON | Type::JSONB => Box::new(value.clone()),
        Type::TIMESTAMPTZ if null => none::<DateTime<Utc>>(),
        Type::TIMESTAMPTZ => Box::new(
            value
                .as_str()
                .and_then(|s| s.parse::<DateTime<Utc>>().ok())
                .ok_or_else(|| format!("{value} is not an RFC 3339 time"))?,
        ),
        Type::TIMESTAMP if null => none::<NaiveDateTime>(),
        Type::TIMESTAMP => Box::new(
            value
                .as_str()
                .and_then(|s| s.parse::<NaiveDateTime>().ok())
                .ok_or_else(|| format!("{value} is not a time (2026-12-01T10:00:00)"))?,
        ),
        Type::DATE if null => none::<NaiveDate>(),
        Type::DATE => Box::new(
            value
                .as_str()
                .and_then(|s| s.parse::<NaiveDate>().ok())
                .ok_or_else(|| format!("{value} is not a date (2026-12-01)"))?,
        ),
        _ => {
            return Err(format!(
                "the placeholder is of type {ty}, which a JSON value is not bound to here; \
                 cast it in the statement (`$n::text`)"
            ));
        }
    })
}

/// One row as a JSON object, column by column.
fn row_json(row: &Row) -> Result<Value, String> {
    let mut object = Map::new();
    for (i, column) in row.columns().iter().enumerate() {
        let get = |e: tokio_postgres::Error| format!("column {}: {e}", column.name());
        let value = match *column.type_() {
            Type::BOOL => json!(row.try_get::<_, Option<bool>>(i).map_err(get)?),
            Type::INT2 => json!(row.try_get::<_, Option<i16>>(i).map_err(get)?),
            Type::INT4 => json!(row.try_get::<_, Option<i32>>(i).map_err(get)?),
            Type::INT8 => json!(row.try_get::<_, Option<i64>>(i).map_err(get)?),
            Type::OID => json!(row.try_get::<_, Option<u32>>(i).map_err(get)?),
            Type::FLOAT4 => json!(row.try_get::<_, Option<f32>>(i).map_err(get)?),
            Type::FLOAT8 => json!(row.try_get::<_, Option<f64>>(i).map_err(get)?),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                json!(row.try_get::<_, Option<String>>(i).map_err(get)?)
            }
            Type::JSON | Type::JSONB => row
                .try_get::<_, Option<Value>>(i)
                .map_err(get)?
                .unwrap_or(Value::Null),
            Type::TIMESTAMPTZ => json!(row.try_get::<_, Option<DateTime<Utc>>>(i).map_err(get)?),
            Type::TIMESTAMP => json!(
                row.try_get::<_, Option<NaiveDateTime>>(i)
                    .map_err(get)?
                    .map(|t| t.to_string())
            ),
            Type::DATE => json!(
                row.try_get::<_, Option<NaiveDate>>(i)
                    .map_err(get)?
                    .map(|d| d.to_string())
            ),
            ref other => {
                return Err(format!(
                    "column {} is of type {other}, which has no JSON form here; cast it in \
                     the statement (`{}::text`)",
                    column.name(),
                    column.name()
                ));
            }
        };
        object.insert(column.name().to_owned(), value);
    }
    Ok(Value::Object(object))
}

fn invalid(reason: impl std::fmt::Display) -> TaskError {
    TaskError::new(
        ErrorClass::InvalidInput,
        format!("sql input: {reason} (see docs/executors.md)"),
    )
}

/// A PostgreSQL error as a task error of the right class: connection
/// trouble and lost races are worth a retry, a bad statement or a broken
/// constraint is not. Secret values never reach the message.
fn database_error(e: &tokio_postgres::Error, what: &str, secrets: &[&str]) -> TaskError {
    let Some(db) = e.as_db_error() else {
        // No answer from the server: the connection.
        let message = format!("{what}: {e}");
        return TaskError::new(ErrorClass::Network, mask(&message, secrets.iter().copied()));
    };
    let code = db.code().code();
    let (class, retryable) = match &code[..2] {
        "08" => (ErrorClass::Network, true),
        "28" => (ErrorClass::Permission, false),
        "42" if code == "42501" => (ErrorClass::Permission, false),
        "53" => (ErrorClass::Resource, true),
        "57" => (ErrorClass::Cancelled, true),
        "40" => (ErrorClass::Unknown, true),
        "22" | "23" | "42" => (ErrorClass::InvalidInput, false),
        _ => (ErrorClass::Unknown, true),
    };
    let message = format!("{what}: {} (SQLSTATE {code})", db.message());
    let mut error = TaskError::new(class, mask(&message, secrets.iter().copied()));
    error.retryable = retryable;
    error
}
