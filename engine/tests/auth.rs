//! API tokens: without a token the API answers 401, a token without the
//! route's scope 403, a queue-limited token reaches only its queues, a
//! revoked token stops working at once, every refusal is problem+json and
//! in the audit trail, and an engine will not serve other hosts without
//! auth unless told to.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::{Running, start_with};
use runlog_engine::{Engine, EngineConfig, EngineError};
use runlog_testkit::{NatsServer, eventually};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// An engine with auth on, and the admin token it wrote at its start.
async fn start_secured() -> Result<(Running, String, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("admin-token");
    let bootstrap = file.clone();
    let run = start_with(NatsServer::start()?, move |config| {
        config.auth = true;
        config.bootstrap_token_file = Some(bootstrap);
    })
    .await?;
    let admin = std::fs::read_to_string(&file)?.trim().to_owned();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "the bootstrap token file has mode {mode:o}");
    Ok((run, admin, dir))
}

/// `method path` with `token` (none: no header), as (status, body, content type).
async fn call(
    run: &Running,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Value, String)> {
    call_at(&run.http, &run.base, method, path, token, body).await
}

async fn call_at(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(u16, Value, String)> {
    let mut request = http.request(method, format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((
        status,
        response.json().await.unwrap_or(Value::Null),
        content_type,
    ))
}

async fn make_token(run: &Running, admin: &str, body: Value) -> Result<String> {
    let (status, made, _) = call(
        run,
        reqwest::Method::POST,
        "/v1/tokens",
        Some(admin),
        Some(body),
    )
    .await?;
    ensure!(status == 201, "token create: {status} {made}");
    Ok(made["token"].as_str().context("no token")?.to_owned())
}

fn task(queue: &str) -> Value {
    json!({"kind": "shell", "queue": queue, "input": {"shell": "true"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_decide_who_may_read_submit_and_operate() -> Result<()> {
    use reqwest::Method;
    let (run, admin, _dir) = start_secured().await?;

    // No token: 401, as problem+json that says what to do.
    let (status, problem, content_type) =
        call(&run, Method::GET, "/v1/executions", None, None).await?;
    ensure!(status == 401, "no token: {status}");
    ensure!(
        content_type.starts_with("application/problem+json"),
        "{content_type}"
    );
    ensure!(problem["code"] == "unauthorized", "{problem}");
    ensure!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("Bearer"),
        "{problem}"
    );
    let (status, _, _) = call(&run, Method::POST, "/v1/executions", None, Some(task("x"))).await?;
    ensure!(status == 401, "a submission without a token: {status}");
    let (status, _, _) = call(
        &run,
        Method::GET,
        "/v1/executions",
        Some("0a0b0c0d.nope"),
        None,
    )
    .await?;
    ensure!(status == 401, "a made-up token: {status}");
    // Health and metrics need none.
    for path in ["/healthz", "/metrics"] {
        let response = run.http.get(format!("{}{path}", run.base)).send().await?;
        ensure!(response.status() == 200, "{path}: {}", response.status());
    }

    let reader = make_token(&run, &admin, json!({"name": "reader", "scopes": ["read"]})).await?;
    let ci = make_token(
        &run,
        &admin,
        json!({"name": "ci-x", "scopes": ["submit"], "queues": ["x"]}),
    )
    .await?;
    let operator = make_token(
        &run,
        &admin,
        json!({"name": "operator", "scopes": ["operate"]}),
    )
    .await?;
    // A token lists without its secret or hash.
    let (_, listed, _) = call(&run, Method::GET, "/v1/tokens", Some(&admin), None).await?;
    let text = listed.to_string();
    ensure!(
        listed["tokens"].as_array().map(Vec::len) == Some(4),
        "{listed}"
    );
    for secret in [&reader, &ci, &operator, &admin] {
        let (_, secret) = secret.split_once('.').context("id.secret")?;
        ensure!(!text.contains(secret), "a secret is listed");
    }
    ensure!(!text.contains("sha256"), "hashes are listed: {text}");
    // Only admin manages tokens.
    let (status, _, _) = call(&run, Method::GET, "/v1/tokens", Some(&operator), None).await?;
    ensure!(status == 403, "an operator lists tokens: {status}");

    // A token limited to queue x submits to x, not to y, in one or in a batch.
    let (status, accepted, _) = call(
        &run,
        Method::POST,
        "/v1/executions",
        Some(&ci),
        Some(task("x")),
    )
    .await?;
    ensure!(status == 201, "ci to x: {status} {accepted}");
    let in_x = accepted["id"].as_str().context("id")?.to_owned();
    let (status, problem, _) = call(
        &run,
        Method::POST,
        "/v1/executions",
        Some(&ci),
        Some(task("y")),
    )
    .await?;
    ensure!(
        status == 403 && problem["code"] == "forbidden",
        "ci to y: {status} {problem}"
    );
    ensure!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("limited to the queues x"),
        "{problem}"
    );
    let (status, batch, _) = call(
        &run,
        Method::POST,
        "/v1/executions/batch",
        Some(&ci),
        Some(json!({"executions": [task("x"), task("y")]})),
    )
    .await?;
    ensure!(status == 200, "batch: {status} {batch}");
    ensure!(batch["results"][0]["id"].is_string(), "{batch}");
    ensure!(
        batch["results"][1]["error"]["code"] == "forbidden",
        "{batch}"
    );
    // It reads its queue's executions, and lists only when narrowed to it.
    let (status, _, _) = call(
        &run,
        Method::GET,
        &format!("/v1/executions/{in_x}"),
        Some(&ci),
        None,
    )
    .await?;
    ensure!(status == 200, "ci reads its execution: {status}");
    let (status, _, _) = call(&run, Method::GET, "/v1/executions?queue=x", Some(&ci), None).await?;
    ensure!(status == 200, "ci lists x: {status}");
    let (status, _, _) = call(&run, Method::GET, "/v1/executions", Some(&ci), None).await?;
    ensure!(status == 403, "ci lists every queue: {status}");
    let (status, _, _) = call(
        &run,
        Method::POST,
        "/v1/workflows/any/executions",
        Some(&ci),
        Some(json!({})),
    )
    .await?;
    ensure!(status == 403, "ci starts a workflow: {status}");
    // Submit is not operate.
    let cancel = format!("/v1/executions/{in_x}/cancel");
    let (status, _, _) = call(&run, Method::POST, &cancel, Some(&ci), Some(json!({}))).await?;
    ensure!(status == 403, "ci cancels: {status}");

    // A read token reads and cannot cancel.
    let (status, _, _) = call(
        &run,
        Method::GET,
        &format!("/v1/executions/{in_x}"),
        Some(&reader),
        None,
    )
    .await?;
    ensure!(status == 200, "reader reads: {status}");
    let (status, problem, _) =
        call(&run, Method::POST, &cancel, Some(&reader), Some(json!({}))).await?;
    ensure!(status == 403, "reader cancels: {status} {problem}");
    ensure!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("`operate` scope"),
        "{problem}"
    );
    let (status, _, _) = call(
        &run,
        Method::POST,
        "/v1/executions",
        Some(&reader),
        Some(task("x")),
    )
    .await?;
    ensure!(status == 403, "reader submits: {status}");
    // An operator cancels.
    let (status, answer, _) = call(
        &run,
        Method::POST,
        &cancel,
        Some(&operator),
        Some(json!({})),
    )
    .await?;
    ensure!(status == 202, "operator cancels: {status} {answer}");

    // Revoked: refused by the next request.
    let operator_id = operator.split_once('.').context("id")?.0.to_owned();
    let (status, _, _) = call(
        &run,
        Method::DELETE,
        &format!("/v1/tokens/{operator_id}"),
        Some(&admin),
        None,
    )
    .await?;
    ensure!(status == 200, "revoke: {status}");
    let (status, problem, _) =
        call(&run, Method::GET, "/v1/executions", Some(&operator), None).await?;
    ensure!(status == 401, "a revoked token: {status}");
    ensure!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("revoked"),
        "{problem}"
    );

    // Every refusal is in the trail, under the name of the token it came with.
    let records = eventually(
        Duration::from_secs(15),
        "the refusals are in the trail",
        || async {
            let (_, body, _) = call(
                &run,
                Method::GET,
                "/v1/audit?limit=1000",
                Some(&admin),
                None,
            )
            .await?;
            let records = body["records"].as_array().cloned().unwrap_or_default();
            let refused = |actor: &str, status: u16, route: &str| {
                records.iter().any(|r| {
                    r["actor"] == actor
                        && r["status"] == status
                        && r["route"].as_str().is_some_and(|x| x.contains(route))
                })
            };
            Ok((refused("anonymous", 401, "/v1/executions")
                && refused("reader", 403, "/cancel")
                && refused("ci-x", 403, "/v1/executions")
                && refused("operator", 401, "/v1/executions")
                && refused("operator", 202, "/cancel"))
            .then_some(records))
        },
    )
    .await?;
    ensure!(
        records
            .iter()
            .any(|r| r["route"] == "/v1/tokens" && r["actor"] == "bootstrap" && r["status"] == 201),
        "the token's making is recorded under its maker"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_on_one_engine_is_refused_by_another_within_moments() -> Result<()> {
    use reqwest::Method;
    let (run, admin, _dir) = start_secured().await?;
    let mut config = EngineConfig::local(&run.server.url());
    config.auth = true;
    let shutdown = CancellationToken::new();
    let other = Engine::start(config, shutdown.clone()).await?;
    let other_base = format!("http://{}", other.addr());
    let token = make_token(&run, &admin, json!({"name": "reader", "scopes": ["read"]})).await?;
    // The other engine learns a new token from the bucket on first use.
    let (status, _, _) = call_at(
        &run.http,
        &other_base,
        Method::GET,
        "/v1/stats",
        Some(&token),
        None,
    )
    .await?;
    ensure!(status == 200, "a new token on the other engine: {status}");
    let id = token.split_once('.').context("id")?.0.to_owned();
    let (status, _, _) = call(
        &run,
        Method::DELETE,
        &format!("/v1/tokens/{id}"),
        Some(&admin),
        None,
    )
    .await?;
    ensure!(status == 200, "revoke: {status}");
    let revoked = Instant::now();
    eventually(
        Duration::from_secs(2),
        "the other engine refuses the revoked token",
        || async {
            let (status, _, _) = call_at(
                &run.http,
                &other_base,
                Method::GET,
                "/v1/stats",
                Some(&token),
                None,
            )
            .await?;
            Ok((status == 401).then_some(()))
        },
    )
    .await?;
    println!(
        "the other engine refused the revoked token {:?} after the revocation",
        revoked.elapsed()
    );
    shutdown.cancel();
    other.wait().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_s_cookie_works_on_its_own_origin_only() -> Result<()> {
    let (run, admin, _dir) = start_secured().await?;
    let reader = make_token(
        &run,
        &admin,
        json!({"name": "viewer", "scopes": ["operate"]}),
    )
    .await?;
    let login = run
        .http
        .post(format!("{}/v1/session", run.base))
        .json(&json!({"token": reader}))
        .send()
        .await?;
    ensure!(login.status() == 200, "login: {}", login.status());
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .context("no cookie")?
        .to_owned();
    ensure!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    ensure!(
        !cookie.contains("Max-Age") && !cookie.contains("Expires"),
        "a session cookie: {cookie}"
    );
    let pair = cookie.split(';').next().context("pair")?.to_owned();
    let who: Value = run
        .http
        .get(format!("{}/v1/session", run.base))
        .header("cookie", &pair)
        .send()
        .await?
        .json()
        .await?;
    ensure!(who["name"] == "viewer" && who["auth"] == true, "{who}");
    let listed = run
        .http
        .get(format!("{}/v1/executions", run.base))
        .header("cookie", &pair)
        .send()
        .await?;
    ensure!(
        listed.status() == 200,
        "a read with the cookie: {}",
        listed.status()
    );
    let exec = run
        .http
        .post(format!("{}/v1/executions", run.base))
        .bearer_auth(&admin)
        .json(&task("x"))
        .send()
        .await?
        .json::<Value>()
        .await?["id"]
        .as_str()
        .context("id")?
        .to_owned();
    let cancel = format!("{}/v1/executions/{exec}/cancel", run.base);
    let foreign = run
        .http
        .post(&cancel)
        .header("cookie", &pair)
        .header("origin", "http://evil.example")
        .json(&json!({}))
        .send()
        .await?;
    ensure!(
        foreign.status() == 403,
        "a change from another origin: {}",
        foreign.status()
    );
    let own = run
        .http
        .post(&cancel)
        .header("cookie", &pair)
        .header("origin", &run.base)
        .json(&json!({}))
        .send()
        .await?;
    ensure!(
        own.status() == 202,
        "a change from the dashboard: {}",
        own.status()
    );
    // The API sends no CORS headers: other origins' pages cannot read it.
    let preflight = run
        .http
        .get(format!("{}/v1/executions", run.base))
        .header("cookie", &pair)
        .header("origin", "http://evil.example")
        .send()
        .await?;
    ensure!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "CORS is on"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_refuses_to_serve_other_hosts_without_auth_unless_told() -> Result<()> {
    let server = NatsServer::start()?;
    let mut config = EngineConfig::local(&server.url());
    config.listen = "0.0.0.0:0".parse()?;
    let refused = Engine::start(config.clone(), CancellationToken::new()).await;
    match refused {
        Err(e @ EngineError::Unprotected(_)) => {
            let text = e.to_string();
            ensure!(
                text.contains("--insecure-no-auth") && text.contains("--auth"),
                "{text}"
            );
        }
        other => anyhow::bail!("an open engine started: {other:?}"),
    }
    // Auth on with nobody able to log in is refused too.
    let mut locked = EngineConfig::local(&server.url());
    locked.auth = true;
    match Engine::start(locked, CancellationToken::new()).await {
        Err(e @ EngineError::Auth(_)) => {
            ensure!(e.to_string().contains("bootstrap-token-file"), "{e}");
        }
        other => anyhow::bail!("an engine nobody can use started: {other:?}"),
    }
    config.insecure_no_auth = true;
    let shutdown = CancellationToken::new();
    let engine = Engine::start(config, shutdown.clone()).await?;
    ensure!(engine.addr().ip().is_unspecified());
    shutdown.cancel();
    engine.wait().await;
    Ok(())
}
