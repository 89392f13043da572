//! `--log-format json`: a worker process writes one JSON object per line,
//! and the lines about an attempt carry its execution, attempt, queue and
//! the trace id of the caller's `traceparent`, sent with the submission.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use runlog_engine::{Engine, EngineConfig};
use runlog_testkit::{NatsServer, eventually};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
// The worker process, killed on drop.
use runlog_testkit::KilledOnDrop as Worker;

const PATIENCE: Duration = Duration::from_secs(30);
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_about_an_attempt_carry_its_execution_queue_and_trace_id() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = NatsServer::start()?;
    let shutdown = CancellationToken::new();
    let engine = Engine::start(EngineConfig::local(&server.url()), shutdown.clone()).await?;
    let base = format!("http://{}", engine.addr());

    let log = dir.path().join("worker.log");
    let _worker = Worker(
        Command::new(env!("CARGO_BIN_EXE_runlog"))
            .args([
                "--log-format",
                "json",
                "worker",
                "--nats-url",
                &server.url(),
            ])
            .args(["--id", "w1", "--allow-root"])
            .env("RUNLOG_LOG", "runlog_worker=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
    );

    let http = reqwest::Client::new();
    let answer: Value = http
        .post(format!("{base}/v1/executions"))
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .json(&json!({"kind": "shell", "input": {"shell": "echo hi"}}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = answer["id"].as_str().context("an id")?.to_owned();

    let started = eventually(PATIENCE, "the worker logs the attempt's start", || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log)?;
            let mut lines = Vec::new();
            for line in text.lines() {
                let parsed: Value = serde_json::from_str(line)
                    .with_context(|| format!("a log line that is not JSON: {line}"))?;
                lines.push(parsed);
            }
            Ok(lines
                .into_iter()
                .find(|l| l["message"] == "attempt started"))
        }
    })
    .await?;
    let span = &started["span"];
    ensure!(
        span["name"] == "attempt"
            && span["execution"] == id.as_str()
            && span["attempt"] == 1
            && span["queue"] == "default"
            && span["trace_id"] == TRACE_ID
            && started["level"] == "DEBUG"
            && started["timestamp"].is_string(),
        "{started}"
    );

    let done = eventually(PATIENCE, "the execution succeeds", || {
        let (http, url) = (http.clone(), format!("{base}/v1/executions/{id}"));
        async move {
            let state: Value = http.get(url).send().await?.json().await?;
            Ok((state["status"] == "succeeded").then_some(state))
        }
    })
    .await?;
    ensure!(done["status"] == "succeeded", "{done}");
    shutdown.cancel();
    Ok(())
}
