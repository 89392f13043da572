//! Secrets at rest, end to end: `runlog engine` and `runlog worker`
//! processes with one key file, a secret planted through the API, and
//! shell, http, ssh and workflow tasks that use it (some echo it). Then
//! every stream and bucket of the server, every API answer and the
//! processes' logs are searched for the values: they are found nowhere in
//! the clear.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use runlog_testkit::{KeyType, KilledOnDrop, NatsServer, SecretKey, Sshd, eventually};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(60);

/// `runlog engine` with its first stdout line read (the API's address) and
/// the rest kept.
fn engine(
    nats: &str,
    key: &Path,
    logs: &Path,
) -> Result<(KilledOnDrop, String, Arc<Mutex<String>>)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runlog"))
        .args(["engine", "--nats-url", nats, "--listen", "127.0.0.1:0"])
        .arg("--secret-key-file")
        .arg(key)
        .env("RUNLOG_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(logs.join("engine.err"))?)
        .spawn()?;
    let stdout = child.stdout.take().context("engine stdout")?;
    let child = KilledOnDrop(child);
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let base = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http://"))
        .with_context(|| format!("unexpected first line {line:?}"))?
        .to_owned();
    let rest = Arc::new(Mutex::new(line));
    let kept = rest.clone();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = reader.read_to_string(&mut text);
        kept.lock().unwrap().push_str(&text);
    });
    Ok((child, base, rest))
}

fn worker(nats: &str, key: &Path, logs: &Path) -> Result<KilledOnDrop> {
    Ok(KilledOnDrop(
        Command::new(env!("CARGO_BIN_EXE_runlog"))
            .args(["worker", "--allow-root", "--nats-url", nats, "--id", "w1"])
            .arg("--secret-key-file")
            .arg(key)
            .env("RUNLOG_LOG", "debug")
            .stdout(std::fs::File::create(logs.join("worker.out"))?)
            .stderr(std::fs::File::create(logs.join("worker.err"))?)
            .spawn()?,
    ))
}

/// An HTTP endpoint that answers with the Authorization header it got.
async fn echo_server() -> Result<String> {
    let app = axum::Router::new().route(
        "/echo",
        axum::routing::get(|headers: axum::http::HeaderMap| async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            axum::Json(json!({"authorization": auth}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}/echo"))
}

struct Api {
    http: reqwest::Client,
    base: String,
    /// Every answer's body, to search afterwards.
    seen: Mutex<String>,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        self.seen.lock().unwrap().push_str(&text);
        ensure!(status.is_success(), "{path}: {status} {text}");
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn submit(&self, spec: Value) -> Result<String> {
        let body = self
            .call(reqwest::Method::POST, "/v1/executions", Some(spec))
            .await?;
        Ok(body["id"].as_str().context("an id")?.to_owned())
    }

    async fn ended(&self, id: &str) -> Result<Value> {
        eventually(PATIENCE, &format!("{id} ends"), || async {
            let view = self.get(&format!("/v1/executions/{id}")).await?;
            let status = view["status"].as_str().unwrap_or_default();
            Ok([
                "succeeded",
                "failed",
                "dead_lettered",
                "cancelled",
                "timed_out",
            ]
            .contains(&status)
            .then_some(view))
        })
        .await
    }
}

/// Every message of every stream on the server (the KV buckets and object
/// stores are streams too), payloads and headers, as text; and the names.
async fn everything_stored(js: &async_nats::jetstream::Context) -> Result<(String, Vec<String>)> {
    use futures::TryStreamExt;
    let names: Vec<String> = js.stream_names().try_collect().await?;
    let mut all = String::new();
    for name in &names {
        let mut stream = js.get_stream(name).await?;
        let last = stream.info().await?.state.last_sequence;
        for seq in 1..=last {
            if let Ok(message) = stream.get_raw_message(seq).await {
                all.push_str(&String::from_utf8_lossy(&message.payload));
                all.push_str(&format!("{:?}", message.headers));
            }
        }
    }
    Ok((all, names))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_secrets_are_found_only_sealed_at_rest() -> Result<()> {
    let suffix = runlog_events::ExecutionId::generate();
    let token = format!("planted-token-{suffix}");
    let password = format!("planted-password-{suffix}");
    let sshd = Sshd::start()?;
    let ssh_key = sshd.private_key(KeyType::Ed25519);
    // A line of the key's body: what a leak of the key would contain.
    let ssh_key_line = ssh_key
        .lines()
        .find(|l| l.len() > 40 && !l.starts_with("-----"))
        .context("a key body line")?
        .to_owned();

    let server = NatsServer::start()?;
    let key = SecretKey::new()?;
    let logs = tempfile::tempdir()?;
    let (engine_process, base, engine_out) = engine(&server.url(), key.path(), logs.path())?;
    let worker_process = worker(&server.url(), key.path(), logs.path())?;
    let api = Api {
        http: reqwest::Client::new(),
        base,
        seen: Mutex::new(String::new()),
    };
    let put = reqwest::Method::PUT;
    api.call(
        put.clone(),
        "/v1/secrets/api-token",
        Some(json!({"value": token})),
    )
    .await?;
    api.call(put, "/v1/secrets/ssh-key", Some(json!({"value": ssh_key})))
        .await?;
    let url = echo_server().await?;

    let mut ids = Vec::new();
    // shell: a stored secret, echoed to stdout and stderr.
    let shell = api
        .submit(json!({
            "kind": "shell",
            "input": {"argv": ["sh", "-c", "echo \"out $TOKEN\"; echo \"err $TOKEN\" >&2; test ${#TOKEN} -gt 20"]},
            "secrets": {"TOKEN": "api-token"},
        }))
        .await?;
    ids.push(shell.clone());
    // shell: a sealed environment value, echoed and failed with it.
    let sealed = api
        .submit(json!({
            "kind": "shell",
            "input": {"argv": ["sh", "-c", "echo \"pw $PW\"; echo \"bad password $PW\" >&2; exit 3"]},
            "env": {"PW": password},
            "retry": {"max_attempts": 1},
        }))
        .await?;
    ids.push(sealed.clone());
    // http: the secret in a header, echoed back by the server.
    let http = api
        .submit(json!({
            "kind": "http",
            "input": {"method": "GET", "url": url, "headers": {"Authorization": "Bearer ${TOKEN}"}},
            "secrets": {"TOKEN": "api-token"},
        }))
        .await?;
    ids.push(http.clone());
    // ssh: the private key from the store.
    let ssh = api
        .submit(json!({
            "kind": "ssh",
            "input": {
                "host": "127.0.0.1", "port": sshd.port(), "user": sshd.user(),
                "key": "SSH_KEY", "host_key": sshd.host_key(),
                "argv": ["echo", "connected"],
            },
            "secrets": {"SSH_KEY": "ssh-key"},
            "attempt_timeout_ms": 20_000,
        }))
        .await?;
    ids.push(ssh.clone());
    // A workflow whose node uses the secret.
    api.call(
        reqwest::Method::POST,
        "/v1/workflows",
        Some(json!({
            "name": "uses-secret",
            "version": 1,
            "nodes": {
                "say": {
                    "kind": "shell",
                    "input": {"argv": ["sh", "-c", "echo \"node $TOKEN\""]},
                    "secrets": {"TOKEN": "api-token"},
                }
            }
        })),
    )
    .await?;
    let started = api
        .call(
            reqwest::Method::POST,
            "/v1/workflows/uses-secret/executions",
            Some(json!({"input": {}})),
        )
        .await?;
    let workflow = started["id"].as_str().context("a workflow id")?.to_owned();

    for id in [&shell, &http, &ssh] {
        let view = api.ended(id).await?;
        ensure!(view["status"] == "succeeded", "{view}");
    }
    let view = api.ended(&sealed).await?;
    ensure!(
        view["status"] == "dead_lettered" || view["status"] == "failed",
        "{view}"
    );
    let shell_view = api.get(&format!("/v1/executions/{shell}")).await?;
    ensure!(
        shell_view["output"]["stdout"] == "out ***\n",
        "{shell_view}"
    );
    let http_view = api.get(&format!("/v1/executions/{http}")).await?;
    ensure!(
        http_view["output"]["body"]["authorization"] == "Bearer ***",
        "{http_view}"
    );
    let ssh_view = api.get(&format!("/v1/executions/{ssh}")).await?;
    ensure!(ssh_view["output"]["stdout"] == "connected\n", "{ssh_view}");
    let run = eventually(PATIENCE, "the workflow succeeds", || async {
        let view = api
            .get(&format!("/v1/workflow-executions/{workflow}"))
            .await?;
        Ok((view["status"] == "succeeded").then_some(view))
    })
    .await?;
    ensure!(run.to_string().contains("node ***"), "{run}");

    // Every API answer a user might read.
    for id in &ids {
        api.get(&format!("/v1/executions/{id}/events")).await?;
        api.get(&format!("/v1/executions/{id}/logs")).await?;
    }
    let logs_view = api.get(&format!("/v1/executions/{sealed}/logs")).await?;
    ensure!(
        logs_view.to_string().contains("bad password ***"),
        "{logs_view}"
    );
    for path in [
        "/v1/executions",
        "/v1/secrets",
        "/v1/audit",
        "/v1/dead-letters",
    ] {
        api.get(path).await?;
    }

    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await?);
    let (stored, streams) = everything_stored(&js).await?;
    for name in [
        "RUNLOG_EXEC",
        "RUNLOG_LOGS",
        "KV_runlog-env",
        "KV_runlog-secrets",
    ] {
        ensure!(
            streams.iter().any(|s| s == name),
            "no stream {name} in {streams:?}"
        );
    }
    // The secrets are there, sealed.
    let bucket = js.get_key_value("runlog-secrets").await?;
    let sealed_token = bucket.get("api-token").await?.context("api-token stored")?;
    ensure!(sealed_token.starts_with(b"RLS1"), "not sealed");
    let ring = runlog_events::sealing::Keyring::load(key.path())?;
    let opened = runlog_events::secrets::read(&bucket, &ring, "api-token").await?;
    ensure!(opened.as_deref().map(String::as_str) == Some(token.as_str()));

    drop(worker_process);
    drop(engine_process);
    let mut process_logs = engine_out.lock().unwrap().clone();
    for file in ["engine.err", "worker.out", "worker.err"] {
        process_logs.push_str(&std::fs::read_to_string(logs.path().join(file))?);
    }
    ensure!(
        process_logs.contains("attempt recorded"),
        "debug logs were written"
    );
    let answers = api.seen.lock().unwrap().clone();
    for (place, text) in [
        ("a stream or bucket", &stored),
        ("an API answer", &answers),
        ("a process log", &process_logs),
    ] {
        for (what, value) in [
            ("the token", token.as_str()),
            ("the password", password.as_str()),
            ("the ssh key", ssh_key_line.as_str()),
        ] {
            ensure!(!text.contains(value), "{what} is in {place} in the clear");
        }
    }
    Ok(())
}
