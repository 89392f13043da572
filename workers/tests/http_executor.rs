//! The `http` executor against a real local HTTP server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use runlog_events::{ErrorClass, ExecutionId};
use runlog_worker::executor::HttpExecutor;
use runlog_worker::handler::{Context, ContextBuilder, Handler, HandlerResult};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long any awaited condition may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(15);

const TOKEN: &str = "t0ken-of-the-test";

/// A local server; `hung` is notified when a request reaches `/hang`,
/// which never answers.
struct Server {
    addr: SocketAddr,
    hung: Arc<Notify>,
}

impl Server {
    async fn start() -> Server {
        let hung = Arc::new(Notify::new());
        let notify = hung.clone();
        let app = Router::new()
            .route(
                "/json",
                get(|| async {
                    (
                        [("set-cookie", "session=abc"), ("x-request-id", "r-1")],
                        Json(json!({"ok": true, "items": [1, 2]})),
                    )
                }),
            )
            .route(
                "/limited",
                get(|| async {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "7")],
                        "slow down",
                    )
                }),
            )
            .route(
                "/unavailable",
                get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "try later") }),
            )
            .route(
                "/private",
                post(|headers: HeaderMap, Json(body): Json<Value>| async move {
                    let bearer = format!("Bearer {TOKEN}");
                    if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&bearer) {
                        (StatusCode::CREATED, Json(json!({"received": body})))
                    } else {
                        (
                            StatusCode::UNAUTHORIZED,
                            Json(json!({"error": "bad credentials", "got": headers
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())})),
                        )
                    }
                }),
            )
            .route("/big", get(|| async { "x".repeat(1000) }))
            .route(
                "/headers",
                get(|headers: HeaderMap| async move {
                    let names: Vec<String> = headers.keys().map(|k| k.to_string()).collect();
                    Json(json!({"names": names}))
                }),
            )
            .route(
                "/redirect",
                get(|Query(to): Query<BTreeMap<String, String>>| async move {
                    (StatusCode::FOUND, [("location", to["to"].clone())])
                }),
            )
            .route(
                "/hang",
                get(move || async move {
                    notify.notify_one();
                    std::future::pending::<&'static str>().await
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server { addr, hung }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn builder(input: Value) -> ContextBuilder {
    Context::builder(ExecutionId::new("http-test").unwrap(), 1, "http", input)
}

async fn run_ctx(ctx: Context) -> HandlerResult {
    tokio::time::timeout(PATIENCE, HttpExecutor::new().run(ctx))
        .await
        .expect("the http task ended in time")
}

async fn run(input: Value) -> HandlerResult {
    run_ctx(builder(input).build().0).await
}

#[tokio::test]
async fn a_json_answer_becomes_the_output() {
    let server = Server::start().await;
    let output = run(json!({"url": server.url("/json")})).await.unwrap();
    assert_eq!(output["status"], 200);
    assert_eq!(output["body"], json!({"ok": true, "items": [1, 2]}));
    assert_eq!(output["body_truncated_bytes"], 0);
    assert_eq!(output["headers"]["x-request-id"], "r-1");
    assert!(output["headers"].get("set-cookie").is_none(), "{output}");
}

#[tokio::test]
async fn secrets_reach_the_request_but_not_the_output() {
    let server = Server::start().await;
    let env = BTreeMap::from([
        ("API_TOKEN".to_owned(), TOKEN.to_owned()),
        ("REGION".to_owned(), "eu-west".to_owned()),
    ]);
    let (ctx, _) = builder(json!({
        "method": "post",
        "url": server.url("/private"),
        "headers": {"authorization": "Bearer ${API_TOKEN}"},
        "body": {"region": "${REGION}"},
        "expect_status": [201],
    }))
    .env(env)
    .build();
    let output = run_ctx(ctx).await.unwrap();
    assert_eq!(output["status"], 201);
    assert_eq!(output["body"], json!({"received": {"region": "eu-west"}}));
    assert!(!output.to_string().contains(TOKEN));
}

#[tokio::test]
async fn refused_credentials_are_permanent_and_not_echoed() {
    let server = Server::start().await;
    let error = run(json!({
        "method": "POST",
        "url": server.url("/private"),
        "headers": {"authorization": "Bearer wrong-token-value"},
        "body": {},
    }))
    .await
    .unwrap_err();
    assert_eq!(error.class, ErrorClass::Permission);
    assert!(!error.retryable);
    assert!(error.message.contains("401"), "{}", error.message);
    assert!(
        !error.message.contains("wrong-token-value"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn a_429_is_rate_limited_with_retry_after() {
    let server = Server::start().await;
    let error = run(json!({"url": server.url("/limited")}))
        .await
        .unwrap_err();
    assert_eq!(error.class, ErrorClass::RateLimited);
    assert!(error.retryable);
    assert_eq!(error.retry_after_ms, Some(7_000));
}

#[tokio::test]
async fn a_503_is_retryable() {
    let server = Server::start().await;
    let error = run(json!({"url": server.url("/unavailable")}))
        .await
        .unwrap_err();
    assert!(error.retryable);
    assert_eq!(error.class, ErrorClass::Unknown);
    assert!(error.message.contains("503"), "{}", error.message);
    assert!(error.message.contains("try later"), "{}", error.message);
}

#[tokio::test]
async fn a_404_is_a_permanent_not_found() {
    let server = Server::start().await;
    let error = run(json!({"url": server.url("/nowhere")}))
        .await
        .unwrap_err();
    assert_eq!(error.class, ErrorClass::NotFound);
    assert!(!error.retryable);
}

#[tokio::test]
async fn an_unexpected_success_status_is_permanent() {
    let server = Server::start().await;
    let error = run(json!({"url": server.url("/json"), "expect_status": [204]}))
        .await
        .unwrap_err();
    assert_eq!(error.class, ErrorClass::InvalidInput);
    assert!(!error.retryable);
    assert!(error.message.contains("expect_status"), "{}", error.message);
}

#[tokio::test]
async fn a_refused_connection_is_a_network_error() {
    // A port that was just free: nothing listens on it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let error = run(json!({"url": format!("http://{addr}/")}))
        .await
        .unwrap_err();
    assert_eq!(error.class, ErrorClass::Network);
    assert!(error.retryable);
}

#[tokio::test]
async fn a_slow_server_times_out() {
    let server = Server::start().await;
    let error = run(json!({"url": server.url("/hang"), "timeout_ms": 200}))
        .await
        .unwrap_err();
    assert_eq!(error.class, ErrorClass::Timeout);
    assert!(error.retryable);
    assert!(error.message.contains("200 ms"), "{}", error.message);
}

#[tokio::test]
async fn cancellation_abandons_the_request() {
    let server = Server::start().await;
    let cancel = CancellationToken::new();
    let (ctx, _) = builder(json!({"url": server.url("/hang")}))
        .cancel(cancel.clone())
        .build();
    let task = tokio::spawn(run_ctx(ctx));
    tokio::time::timeout(PATIENCE, server.hung.notified())
        .await
        .expect("the request reached the server");
    cancel.cancel();
    let error = task.await.unwrap().unwrap_err();
    assert_eq!(error.class, ErrorClass::Cancelled);
    assert!(!error.retryable);
}

#[tokio::test]
async fn a_large_body_is_truncated_and_counted() {
    let server = Server::start().await;
    let output = run(json!({"url": server.url("/big"), "max_body_bytes": 10}))
        .await
        .unwrap();
    assert_eq!(output["body"], "xxxxxxxxxx");
    assert_eq!(output["body_truncated_bytes"], 990);
}

#[tokio::test]
async fn redirects_keep_headers_within_the_origin() {
    let server = Server::start().await;
    let output = run(json!({
        "url": server.url("/redirect?to=/headers"),
        "headers": {"x-api-key": "key-of-the-test"},
    }))
    .await
    .unwrap();
    assert_eq!(output["status"], 200);
    let names = output["body"]["names"].as_array().unwrap();
    assert!(names.contains(&json!("x-api-key")), "{output}");
}

#[tokio::test]
async fn redirects_to_another_origin_drop_the_request_headers() {
    let first = Server::start().await;
    let other = Server::start().await;
    let output = run(json!({
        "url": first.url(&format!("/redirect?to={}", other.url("/headers"))),
        "headers": {"x-api-key": "key-of-the-test", "authorization": "Bearer x"},
    }))
    .await
    .unwrap();
    assert_eq!(output["status"], 200);
    let names = output["body"]["names"].as_array().unwrap();
    assert!(!names.contains(&json!("x-api-key")), "{output}");
    assert!(!names.contains(&json!("authorization")), "{output}");
}

#[tokio::test]
async fn an_expected_redirect_is_not_followed() {
    let server = Server::start().await;
    let output = run(json!({
        "url": server.url("/redirect?to=/json"),
        "expect_status": [302],
    }))
    .await
    .unwrap();
    assert_eq!(output["status"], 302);
    assert_eq!(output["headers"]["location"], "/json");
}
