//! The `sql` executor against a real PostgreSQL started by the test kit.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use runlog_events::{ErrorClass, ExecutionId};
use runlog_testkit::Postgres;
use runlog_worker::executor::SqlExecutor;
use runlog_worker::handler::{Context, Handler, HandlerResult};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn env(url: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("DB".to_owned(), url.to_owned())])
}

async fn run(input: Value, env: BTreeMap<String, String>) -> HandlerResult {
    let (ctx, _telemetry) =
        Context::builder(ExecutionId::new("sql-test").unwrap(), 1, "sql", input)
            .env(env)
            .build();
    tokio::time::timeout(Duration::from_secs(30), SqlExecutor.run(ctx))
        .await
        .expect("the statement ended in time")
}

#[tokio::test]
async fn statements_bind_their_parameters_and_rows_come_back_as_json() {
    let pg = Postgres::start().expect("postgres starts");
    let db = env(&pg.url());
    let create = json!({"connection": "DB", "query":
        "create table items (id int4 primary key, name text, ok bool, meta jsonb, at timestamptz, score float8)"});
    assert_eq!(run(create, db.clone()).await.unwrap()["row_count"], 0);
    for (id, name, ok) in [
        (1, "book", true),
        (2, "pen", false),
        (3, "ink'; drop table items; --", true),
    ] {
        let insert = json!({
            "connection": "DB",
            "query": "insert into items values ($1, $2, $3, $4, $5, $6)",
            "params": [id, name, ok, {"tags": [id]}, "2026-12-01T10:00:00Z", null],
        });
        assert_eq!(run(insert, db.clone()).await.unwrap()["row_count"], 1);
    }
    let select = json!({
        "connection": "DB",
        "query": "select id, name, ok, meta, at, score from items where ok = $1 order by id",
        "params": [true],
    });
    let output = run(select, db.clone()).await.unwrap();
    assert_eq!(output["row_count"], 2);
    assert_eq!(
        output["columns"],
        json!(["id", "name", "ok", "meta", "at", "score"])
    );
    assert_eq!(
        output["rows"][0],
        json!({"id": 1, "name": "book", "ok": true, "meta": {"tags": [1]},
               "at": "2026-12-01T10:00:00Z", "score": null})
    );
    // The quote was a value, not SQL: the table is still there.
    assert_eq!(output["rows"][1]["name"], "ink'; drop table items; --");
    let count = json!({"connection": "DB", "query": "select count(*)::int8 as n from items"});
    assert_eq!(run(count, db).await.unwrap()["rows"][0]["n"], 3);
}

#[tokio::test]
async fn failures_are_typed_and_never_show_the_connection_string() {
    let pg = Postgres::start().expect("postgres starts");
    let db = env(&pg.url());
    let cases = [
        (
            json!({"connection": "NOPE", "query": "select 1"}),
            ErrorClass::InvalidInput,
            false,
        ),
        (
            json!({"connection": "DB", "query": "selec 1"}),
            ErrorClass::InvalidInput,
            false,
        ),
        (
            json!({"connection": "DB", "query": "select $1::int4 as n", "params": ["x"]}),
            ErrorClass::InvalidInput,
            false,
        ),
        (
            json!({"connection": "DB", "query": "select $1::int4 as n"}),
            ErrorClass::InvalidInput,
            false,
        ),
        (
            json!({"connection": "DB", "query": "select 1::numeric as n"}),
            ErrorClass::InvalidInput,
            false,
        ),
        (
            json!({"connection": "DB", "query": "select 1", "tls": true}),
            ErrorClass::InvalidInput,
            false,
        ),
    ];
    for (input, class, retryable) in cases {
        let error = run(input.clone(), db.clone()).await.unwrap_err();
        assert_eq!(
            (error.class, error.retryable),
            (class, retryable),
            "{input}: {}",
            error.message
        );
    }
    let error = run(json!({"connection": "DB", "query": "selec 1"}), db)
        .await
        .unwrap_err();
    assert!(
        error.message.contains("SQLSTATE 42601"),
        "{}",
        error.message
    );

    // Nothing listens there: a network error worth a retry, without the
    // password of the connection string.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres:hunter2@127.0.0.1:{closed}/postgres");
    let error = run(json!({"connection": "DB", "query": "select 1"}), env(&url))
        .await
        .unwrap_err();
    assert_eq!(
        (error.class, error.retryable),
        (ErrorClass::Network, true),
        "{}",
        error.message
    );
    assert!(!error.message.contains("hunter2"), "{}", error.message);
}

#[tokio::test]
async fn a_cancel_abandons_a_long_statement() {
    let pg = Postgres::start().expect("postgres starts");
    let cancel = CancellationToken::new();
    let (ctx, _telemetry) = Context::builder(
        ExecutionId::new("sql-cancel").unwrap(),
        1,
        "sql",
        json!({"connection": "DB", "query": "select pg_sleep(30)::text as slept"}),
    )
    .env(env(&pg.url()))
    .cancel(cancel.clone())
    .build();
    let started = Instant::now();
    let task = tokio::spawn(async move { SqlExecutor.run(ctx).await });
    // Cancel once the statement runs on the server.
    runlog_testkit::eventually(Duration::from_secs(10), "the sleep runs", || async {
        Ok(pg.log().contains("pg_sleep").then_some(()))
    })
    .await
    .unwrap();
    cancel.cancel();
    let error = task.await.unwrap().unwrap_err();
    assert_eq!(error.class, ErrorClass::Cancelled, "{}", error.message);
    assert!(started.elapsed() < Duration::from_secs(10));
}
