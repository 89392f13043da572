//! A client in another language: the Python example submits by appending a
//! `submitted` event and follows the execution to its end; it reaches the
//! same state as the equivalent submission through the HTTP door.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use runlog_engine::{Engine, EngineConfig};
use runlog_events::journal::Journal;
use runlog_events::{ExecutionId, Subjects};
use runlog_testkit::NatsServer;
use runlog_worker::runtime::{Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_submits_directly_and_follows_to_the_end() -> Result<()> {
    let python_path = std::env::var_os("RUNLOG_PYTHONPATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/python"));
    if !python_path.join("nats").is_dir() {
        bail!(
            "nats-py is not installed in {}: run ./scripts/setup.sh",
            python_path.display()
        );
    }
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
            id: "py-test-worker".into(),
            ..WorkerConfig::default()
        },
        runlog_worker::executor::builtin(),
    );
    let worker = tokio::spawn(worker.run(shutdown.clone()));

    let id = ExecutionId::generate();
    let child = tokio::process::Command::new("python3")
        .arg(repo().join("examples/python/submit_and_follow.py"))
        .args([
            "--url",
            &server.url(),
            "--id",
            id.as_str(),
            "--argv",
            "echo",
            "hello",
        ])
        .env("PYTHONPATH", &python_path)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .context("the Python client did not finish within 60 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let http_state = loop {
        let h = journal.load(&by_http).await?;
        if h.state.status.is_terminal() {
            break h.state;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "HTTP twin never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let py_state = journal.load(&id).await?.state;
    assert_eq!(py_state.status, http_state.status);
    assert_eq!(py_state.attempt, http_state.attempt);
    assert_eq!(py_state.spec, http_state.spec);
    assert_eq!(py_state.output, http_state.output);

    shutdown.cancel();
    let _ = worker.await;
    engine.wait().await;
    Ok(())
}
