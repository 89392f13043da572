//! `ssh` tasks end to end: an engine, a worker with the built-in kinds and
//! a real sshd from the test kit. A server that is down is retried until it
//! is back; a refused key ends the task after one attempt; the private key,
//! handed over as the task's sealed environment, is in no stored message.

use std::time::Duration;

use anyhow::{Result, ensure};
use runlog_engine::{Engine, EngineConfig};
use runlog_events::{ExecutionId, Subjects};
use runlog_testkit::{KeyType, NatsServer, SecretKey, Sshd, eventually};
use runlog_worker::runtime::{Worker, WorkerConfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(30);

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn submit(&self, spec: Value) -> Result<ExecutionId> {
        let reply: Value = self
            .http
            .post(format!("{}/v1/executions", self.base))
            .json(&spec)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(ExecutionId::new(reply["id"].as_str().unwrap_or_default())?)
    }

    async fn view(&self, id: &ExecutionId) -> Result<Value> {
        Ok(self
            .http
            .get(format!("{}/v1/executions/{id}", self.base))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Waits until `id` satisfies `done` and returns its view.
    async fn until(&self, id: &ExecutionId, what: &str, done: fn(&Value) -> bool) -> Result<Value> {
        eventually(PATIENCE, what, || async {
            let view = self.view(id).await?;
            Ok(done(&view).then_some(view))
        })
        .await
    }
}

fn task(sshd: &Sshd, key: KeyType, argv: &[&str]) -> Value {
    json!({
        "kind": "ssh",
        "input": {
            "host": "127.0.0.1",
            "port": sshd.port(),
            "user": sshd.user(),
            "key": "SSH_KEY",
            "host_key": sshd.host_key(),
            "argv": argv,
        },
        "env": {"SSH_KEY": sshd.private_key(key)},
        "retry": {"max_attempts": 20, "backoff_base_ms": 100, "backoff_max_ms": 300},
        "attempt_timeout_ms": 20_000,
    })
}

fn ended(view: &Value) -> bool {
    !matches!(
        view["status"].as_str(),
        Some("pending" | "queued" | "running" | "failed" | "retry_scheduled")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_tasks_retry_a_host_that_is_down_and_keep_their_key_out_of_the_log() -> Result<()> {
    let mut sshd = Sshd::start()?;
    let server = NatsServer::start()?;
    let shutdown = CancellationToken::new();
    let key = SecretKey::new()?;
    let mut config = EngineConfig::local(&server.url());
    config.secret_key_file = key.file();
    let engine = Engine::start(config, shutdown.clone()).await?;
    let client = async_nats::connect(server.url()).await?;
    let worker = Worker::new(
        client.clone(),
        WorkerConfig {
            nats_url: server.url(),
            id: "ssh-worker".into(),
            secret_key_file: key.file(),
            ..WorkerConfig::default()
        },
        runlog_worker::executor::builtin(),
    );
    let worker = tokio::spawn(worker.run(shutdown.clone()));
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://{}", engine.addr()),
    };

    let first = api
        .submit(task(&sshd, KeyType::Rsa, &["uname", "-s"]))
        .await?;
    let view = api.until(&first, "the first task ends", ended).await?;
    ensure!(view["status"] == "succeeded", "{view}");
    ensure!(view["output"]["stdout"] == "Linux\n", "{view}");

    // The host goes away: attempts fail as `network` and are retried.
    sshd.stop();
    let down = api
        .submit(task(&sshd, KeyType::Ecdsa, &["echo", "back"]))
        .await?;
    api.until(&down, "two attempts failed while sshd is down", |view| {
        view["attempt"].as_u64().unwrap_or(0) >= 2
    })
    .await?;
    let view = api.view(&down).await?;
    ensure!(!ended(&view), "retried, not ended: {view}");
    sshd.start_again()?;
    let view = api
        .until(&down, "the task ends once sshd is back", ended)
        .await?;
    ensure!(view["status"] == "succeeded", "{view}");
    ensure!(view["output"]["stdout"] == "back\n", "{view}");

    // A key the host does not accept: permanent, one attempt, no retry.
    let stranger = Sshd::start()?;
    let mut refused = task(&sshd, KeyType::Ed25519, &["true"]);
    refused["env"]["SSH_KEY"] = json!(stranger.private_key(KeyType::Ed25519));
    let refused = api.submit(refused).await?;
    let view = api.until(&refused, "the refused task ends", ended).await?;
    ensure!(view["attempt"] == 1, "not retried: {view}");
    let error = view["error"].to_string();
    ensure!(
        error.contains("permission") && error.contains("authentication failed"),
        "{view}"
    );

    // No private key, whole or in part, in any stored event or log line.
    let js = async_nats::jetstream::new(client.clone());
    let subjects = Subjects::default();
    let secret_lines: Vec<String> = [&sshd, &stranger]
        .iter()
        .flat_map(|s| KeyType::ALL.map(|k| s.private_key(k)))
        .flat_map(|key| {
            key.lines()
                .filter(|l| l.len() > 40)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    ensure!(!secret_lines.is_empty());
    for name in [subjects.exec_stream(), subjects.logs_stream()] {
        let mut stream = js.get_stream(&name).await?;
        let last = stream.info().await?.state.last_sequence;
        for seq in 1..=last {
            let Ok(message) = stream.get_raw_message(seq).await else {
                continue;
            };
            let text = String::from_utf8_lossy(&message.payload);
            for line in &secret_lines {
                ensure!(
                    !text.contains(line.as_str()),
                    "a key line is stored in {name} #{seq}"
                );
            }
        }
    }

    shutdown.cancel();
    let _ = worker.await;
    engine.wait().await;
    Ok(())
}

/// Sends `method path` with an optional JSON body: the status and the body.
async fn call(
    api: &Api,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let mut request = api.http.request(method, format!("{}{path}", api.base));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// Runs the `runlog` binary against the engine: its exit code and stdout.
async fn cli(api: &Api, args: &[&str]) -> (i32, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_runlog"))
        .args(args)
        .args(["--engine-url", &api.base])
        .output()
        .await
        .expect("the CLI runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

fn server(name: &str, sshd: &Sshd, key_secret: &str, role: &str) -> Value {
    json!({
        "name": name,
        "address": "127.0.0.1",
        "port": sshd.port(),
        "user": sshd.user(),
        "key_secret": key_secret,
        "host_key": [sshd.host_key()],
        "labels": {"role": role},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_are_named_tested_selected_by_label_and_keep_a_history() -> Result<()> {
    use reqwest::Method;
    let (one, two) = (Sshd::start()?, Sshd::start()?);
    let server_nats = NatsServer::start()?;
    let shutdown = CancellationToken::new();
    let engine = Engine::start(EngineConfig::local(&server_nats.url()), shutdown.clone()).await?;
    let client = async_nats::connect(server_nats.url()).await?;
    let secrets = std::collections::BTreeMap::from([
        ("web-1-key".to_owned(), one.private_key(KeyType::Ed25519)),
        ("web-2-key".to_owned(), two.private_key(KeyType::Ecdsa)),
    ]);
    let worker = Worker::new(
        client.clone(),
        WorkerConfig {
            nats_url: server_nats.url(),
            id: "ssh-worker".into(),
            ..WorkerConfig::default()
        },
        runlog_worker::executor::builtin(),
    )
    .with_secrets(secrets);
    let worker = tokio::spawn(worker.run(shutdown.clone()));
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://{}", engine.addr()),
    };

    // Create, refuse a taken name and a bad definition, replace.
    let (status, _) = call(
        &api,
        Method::POST,
        "/v1/servers",
        Some(server("web-1", &one, "web-1-key", "web")),
    )
    .await?;
    ensure!(status == 201, "create: {status}");
    let (status, body) = call(
        &api,
        Method::POST,
        "/v1/servers",
        Some(server("web-1", &one, "web-1-key", "web")),
    )
    .await?;
    ensure!(status == 409, "taken: {status} {body}");
    let (status, body) = call(
        &api,
        Method::POST,
        "/v1/servers",
        Some(server("web 1", &one, "k", "web")),
    )
    .await?;
    ensure!(
        status == 422 && body["field"] == "name",
        "invalid: {status} {body}"
    );
    let (status, _) = call(
        &api,
        Method::PUT,
        "/v1/servers/web-2",
        Some(server("web-2", &two, "web-2-key", "web")),
    )
    .await?;
    ensure!(status == 201, "put new: {status}");
    let (status, _) = call(
        &api,
        Method::PUT,
        "/v1/servers/web-2",
        Some(server("web-2", &two, "web-2-key", "web")),
    )
    .await?;
    ensure!(status == 200, "put again: {status}");
    let (status, _) = call(
        &api,
        Method::PUT,
        "/v1/servers/db-1",
        Some(server("db-1", &two, "no-such-secret", "db")),
    )
    .await?;
    ensure!(status == 201, "put db-1: {status}");
    let (_, list) = call(&api, Method::GET, "/v1/servers", None).await?;
    let names: Vec<&str> = list["servers"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    ensure!(names == ["db-1", "web-1", "web-2"], "{list}");

    // The connection test: reachability, host key, authentication, uname.
    let (status, tested) = call(&api, Method::POST, "/v1/servers/web-1/test", None).await?;
    ensure!(
        status == 200 && tested["ok"] == true,
        "test: {status} {tested}"
    );
    ensure!(
        tested["uname"]
            .as_str()
            .is_some_and(|u| u.starts_with("Linux")),
        "{tested}"
    );
    ensure!(
        tested["host_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("ssh-ed25519 SHA256:")),
        "{tested}"
    );
    ensure!(
        tested["connect_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{tested}"
    );
    // A server whose key this worker does not hold fails the test, saying so.
    let (status, tested) = call(&api, Method::POST, "/v1/servers/db-1/test", None).await?;
    ensure!(status == 200 && tested["ok"] == false, "{status} {tested}");
    ensure!(tested["error"]["class"] == "permission", "{tested}");

    // A task names a server; the log records where it went.
    let named = api
        .submit(json!({"kind": "ssh", "input": {"server": "web-1", "argv": ["echo", "hi"]}}))
        .await?;
    let view = api.until(&named, "the named task ends", ended).await?;
    ensure!(
        view["status"] == "succeeded" && view["output"]["stdout"] == "hi\n",
        "{view}"
    );
    ensure!(
        view["spec"]["input"]["port"] == one.port(),
        "resolved: {view}"
    );
    ensure!(view["spec"]["labels"]["server"] == "web-1", "{view}");
    let (status, body) = call(
        &api,
        Method::POST,
        "/v1/executions",
        Some(json!({"kind": "ssh", "input": {"server": "web-9", "argv": ["true"]}})),
    )
    .await?;
    ensure!(
        status == 422 && body["field"] == "input.server",
        "{status} {body}"
    );

    // A selector fans out, one execution per matching server.
    let (status, fanned) = call(
        &api,
        Method::POST,
        "/v1/executions",
        Some(json!({
            "kind": "ssh", "id": "uptime-1",
            "input": {"servers": {"role": "web"}, "shell": "echo $SSH_CONNECTION | cut -d' ' -f4"},
        })),
    )
    .await?;
    ensure!(status == 201, "{status} {fanned}");
    let runs = fanned["fan_out"].as_array().cloned().unwrap_or_default();
    let servers: Vec<&str> = runs.iter().filter_map(|r| r["server"].as_str()).collect();
    ensure!(servers == ["web-1", "web-2"], "{fanned}");
    for (run, sshd) in runs.iter().zip([&one, &two]) {
        let id = ExecutionId::new(run["id"].as_str().unwrap_or_default())?;
        ensure!(id.as_str() == format!("uptime-1-{}", run["server"].as_str().unwrap_or_default()));
        let view = api.until(&id, "a fanned-out run ends", ended).await?;
        ensure!(view["status"] == "succeeded", "{view}");
        ensure!(
            view["output"]["stdout"] == format!("{}\n", sshd.port()),
            "ran on its own server: {view}"
        );
    }
    let (_, none) = call(
        &api,
        Method::POST,
        "/v1/executions",
        Some(json!({"kind": "ssh", "input": {"servers": {"role": "cache"}, "argv": ["true"]}})),
    )
    .await?;
    ensure!(none["field"] == "input.servers", "{none}");

    // Each server's history: its runs, the newest first.
    let (_, web1) = call(&api, Method::GET, "/v1/servers/web-1", None).await?;
    let history = &web1["history"];
    ensure!(
        history["runs"].as_array().map_or(0, Vec::len) == 3,
        "probe, hi, fan-out: {web1}"
    );
    ensure!(history["last_outcome"] == "succeeded", "{web1}");
    ensure!(history["last_run"]["id"] == "uptime-1-web-1", "{web1}");

    // The same through the CLI.
    let port = two.port().to_string();
    let host_key = two.host_key();
    let (code, out) = cli(
        &api,
        &[
            "server",
            "add",
            "web-3",
            "--address",
            "127.0.0.1",
            "--port",
            &port,
            "--user",
            two.user(),
            "--key-secret",
            "web-2-key",
            "--host-key",
            &host_key,
            "-l",
            "role=spare",
        ],
    )
    .await;
    ensure!(
        code == 0 && out.contains("added server web-3"),
        "{code} {out}"
    );
    let (code, out) = cli(&api, &["server", "ls"]).await;
    ensure!(
        code == 0 && out.contains("web-3") && out.contains("role=spare"),
        "{out}"
    );
    let (code, out) = cli(&api, &["server", "test", "web-3"]).await;
    ensure!(
        code == 0 && out.contains("web-3: ok") && out.contains("Linux"),
        "{code} {out}"
    );
    let (code, out) = cli(&api, &["server", "test", "db-1"]).await;
    ensure!(
        code == 1 && out.contains("failed (permission)"),
        "{code} {out}"
    );
    let (code, out) = cli(&api, &["server", "show", "web-1"]).await;
    ensure!(
        code == 0 && out.contains("uptime-1-web-1") && out.contains("succeeded"),
        "{out}"
    );
    let (code, out) = cli(&api, &["server", "rm", "web-3"]).await;
    ensure!(
        code == 0 && out.contains("removed server web-3"),
        "{code} {out}"
    );
    let (code, _) = cli(&api, &["server", "show", "web-3"]).await;
    ensure!(code == 5, "an unknown server exits 5, got {code}");

    let (status, deleted) = call(&api, Method::DELETE, "/v1/servers/db-1", None).await?;
    ensure!(
        status == 200 && deleted["deleted"] == "db-1",
        "{status} {deleted}"
    );
    let (status, _) = call(&api, Method::GET, "/v1/servers/db-1", None).await?;
    ensure!(status == 404);

    shutdown.cancel();
    let _ = worker.await;
    engine.wait().await;
    Ok(())
}
