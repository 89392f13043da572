//! A client in another language: the Python example submits by appending a
//! `submitted` event and follows the execution to its end; it reaches the
//! same state as the equivalent submission through the HTTP door. Its
//! `submit_many` sends a batch to the NATS batch door and gets one result
//! per spec.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use runlog_engine::{Engine, EngineConfig};
use runlog_events::journal::Journal;
use runlog_events::{ExecutionId, Subjects};
use runlog_testkit::{NatsServer, eventually};
use runlog_worker::runtime::{Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where nats-py is (`RUNLOG_PYTHONPATH`, else `.tools/python`).
fn python_path() -> Result<PathBuf> {
    let python_path = std::env::var_os("RUNLOG_PYTHONPATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/python"));
    if !python_path.join("nats").is_dir() {
        bail!(
            "nats-py is not installed in {}: run ./scripts/setup.sh",
            python_path.display()
        );
    }
    Ok(python_path)
}

/// An engine and a worker on `server`, stopped by `shutdown`.
async fn start(
    server: &NatsServer,
    shutdown: &CancellationToken,
) -> Result<(Engine, tokio::task::JoinHandle<()>, async_nats::Client)> {
    let mut config = EngineConfig::local(&server.url());
    // The example follows the stream's RePublish of stored events.
    config.nats.live_events = true;
    let engine = Engine::start(config, shutdown.clone()).await?;
    let client = async_nats::connect(server.url()).await?;
    let worker = Worker::new(
        client.clone(),
        WorkerConfig {
            nats_url: server.url(),
            id: "py-test-worker".into(),
            ..WorkerConfig::default()
        },
        runlog_worker::executor::builtin(),
    );
    let stop = shutdown.clone();
    let worker = tokio::spawn(async move {
        let _ = worker.run(stop).await;
    });
    Ok((engine, worker, client))
}

/// Runs the Python example with `args`; its exit status and stdout.
async fn python(args: &[&str]) -> Result<(std::process::Output, String)> {
    let child = tokio::process::Command::new("python3")
        .arg(repo().join("examples/python/submit_and_follow.py"))
        .args(args)
        .env("PYTHONPATH", python_path()?)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .context("the Python client did not finish within 60 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok((out, stdout))
}

/// Waits until `id` ended; its final state.
async fn ended(journal: &Journal, id: &ExecutionId) -> Result<runlog_events::ExecutionState> {
    eventually(Duration::from_secs(30), &format!("{id} to end"), || async {
        let h = journal.load(id).await?;
        anyhow::ensure!(h.state.status.is_terminal(), "it is {}", h.state.status);
        Ok(Some(h.state))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_submits_directly_and_follows_to_the_end() -> Result<()> {
    python_path()?;
    let server = NatsServer::start()?;
    let shutdown = CancellationToken::new();
    let (engine, worker, client) = start(&server, &shutdown).await?;

    let id = ExecutionId::generate();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (out, stdout) = python(&[
        "--url",
        &server.url(),
        "--id",
        id.as_str(),
        "--traceparent",
        traceparent,
        "--argv",
        "echo",
        "hello",
    ])
    .await?;
    assert!(
        out.status.success(),
        "python client failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("execution {id} ended succeeded")),
        "{stdout}"
    );
    for ty in ["submitted", "queued", "started", "succeeded"] {
        assert!(
            stdout.contains(&format!(" {ty} ")),
            "missing {ty} in {stdout}"
        );
    }

    // The same task through the HTTP door ends in the same state.
    let http = reqwest::Client::new();
    let reply: serde_json::Value = http
        .post(format!("http://{}/v1/executions", engine.addr()))
        .json(&serde_json::json!({"kind": "shell", "input": {"argv": ["echo", "hello"]}}))
        .send()
        .await?
        .json()
        .await?;
    let by_http = ExecutionId::new(reply["id"].as_str().unwrap_or_default())?;
    let journal = Journal::new(
        async_nats::jetstream::new(client),
        Subjects::default(),
        "/test",
    );
    let http_state = ended(&journal, &by_http).await?;
    let py_history = journal.load(&id).await?;
    // The trace context it sent is on every event the engine and the worker
    // recorded after it, and Python derives the execution's span id as
    // runlog does (docs/traces.md).
    let context: runlog_events::TraceParent = traceparent.parse()?;
    for recorded in &py_history.events {
        assert_eq!(
            recorded.envelope.traceparent.as_ref(),
            Some(&context),
            "{:?}",
            recorded.envelope
        );
    }
    assert!(
        stdout.contains(&format!(
            "execution span {}",
            context.execution_span_id(&id)
        )),
        "{stdout}"
    );
    let py_state = py_history.state;
    assert_eq!(py_state.status, http_state.status);
    assert_eq!(py_state.attempt, http_state.attempt);
    assert_eq!(py_state.spec, http_state.spec);
    assert_eq!(py_state.output, http_state.output);

    shutdown.cancel();
    let _ = worker.await;
    engine.wait().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_submits_a_batch_and_each_spec_gets_its_own_result() -> Result<()> {
    python_path()?;
    let server = NatsServer::start()?;
    let shutdown = CancellationToken::new();
    let (engine, worker, client) = start(&server, &shutdown).await?;
    let dir = tempfile::tempdir()?;
    let tasks = dir.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        [
            r#"{"kind": "shell", "input": {"argv": ["echo", "one"]}}"#,
            r#"{"kind": "echo", "retry": {"backoff_multiplier": 0.5}}"#,
            r#"{"kind": "echo", "input": {"n": 3}, "id": "py-batch-3"}"#,
        ]
        .join("\n"),
    )?;
    let path = tasks.to_str().context("a UTF-8 path")?;
    let (out, stdout) = python(&["--url", &server.url(), "--batch", path]).await?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "one spec was refused\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(results.len(), 3, "{stdout}");
    assert_eq!(results[1]["error"]["code"], "invalid_task", "{stdout}");
    assert_eq!(results[1]["error"]["field"], "retry.backoff_multiplier");
    assert_eq!(results[2]["id"], "py-batch-3", "{stdout}");
    let journal = Journal::new(
        async_nats::jetstream::new(client),
        Subjects::default(),
        "/test",
    );
    for result in [&results[0], &results[2]] {
        assert_eq!(result["existing"], false, "{result}");
        let id = ExecutionId::new(result["id"].as_str().unwrap_or_default())?;
        let state = ended(&journal, &id).await?;
        assert_eq!(state.status, runlog_events::Status::Succeeded, "{id}");
    }

    shutdown.cancel();
    let _ = worker.await;
    engine.wait().await;
    Ok(())
}
