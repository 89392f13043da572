//! `ssh` tasks end to end: an engine, a worker with the built-in kinds and
//! a real sshd from the test kit. A server that is down is retried until it
//! is back; a refused key ends the task after one attempt; the private key,
//! handed over as the task's sealed environment, is in no stored message.

use std::time::Duration;

use anyhow::{Result, ensure};
use runlog_engine::{Engine, EngineConfig};
use runlog_events::{ExecutionId, Subjects};
use runlog_testkit::{KeyType, NatsServer, Sshd, eventually};
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
    let mut config = EngineConfig::default();
    config.nats.urls = vec![server.url()];
    config.listen = "127.0.0.1:0".parse()?;
    let engine = Engine::start(config, shutdown.clone()).await?;
    let client = async_nats::connect(server.url()).await?;
    let worker = Worker::new(
        client.clone(),
        WorkerConfig {
            nats_url: server.url(),
            id: "ssh-worker".into(),
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
