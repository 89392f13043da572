//! restic as runlog tasks: a repository is initialised, backed up (progress
//! read from restic's JSON status lines, the snapshot id from its summary),
//! checked and pruned, each step a `shell` execution on a real worker, with
//! the repository password handed over as the task's sealed environment.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use runlog_engine::{Engine, EngineConfig};
use runlog_events::{Event, EventType, ExecutionId, Subjects, codec, direct};
use runlog_testkit::{NatsServer, SecretKey, eventually};
use runlog_worker::runtime::{Worker, WorkerConfig};
use serde_json::{Value, json};
use tokio::time::Instant;
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

    async fn get(&self, path: &str) -> Result<String> {
        Ok(self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// Waits for `id` to end and returns `GET /v1/executions/{id}`; fails
    /// unless it succeeded.
    async fn succeeded(&self, id: &ExecutionId, step: &str) -> Result<Value> {
        let view = eventually(PATIENCE, &format!("{step} ends"), || async {
            let view: Value =
                serde_json::from_str(&self.get(&format!("/v1/executions/{id}")).await?)?;
            let status = view["status"].as_str().context("no status")?;
            Ok((!matches!(status, "pending" | "queued" | "running")).then_some(view))
        })
        .await?;
        ensure!(
            view["status"] == "succeeded",
            "{step} ended {}: {}",
            view["status"],
            view["error"]
        );
        Ok(view)
    }
}

/// A `shell` task running `restic` with the password in the sealed
/// environment and restic's cache kept in the test's directory.
fn restic_task(args: &[&str], extra: Value, password: &str, cache: &Path) -> Value {
    let argv: Vec<&str> = std::iter::once("restic")
        .chain(args.iter().copied())
        .collect();
    let mut input = json!({
        "argv": argv,
        "env": {"RESTIC_CACHE_DIR": cache},
    });
    if let (Some(input), Some(extra)) = (input.as_object_mut(), extra.as_object()) {
        input.extend(extra.clone());
    }
    json!({
        "kind": "shell",
        "input": input,
        "env": {"RESTIC_PASSWORD": password},
        "retry": {"max_attempts": 1},
        "attempt_timeout_ms": 60_000,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restic_init_backup_check_and_forget_run_as_tasks() -> Result<()> {
    if Command::new("restic").arg("version").output().is_err() {
        bail!("restic is not on PATH: run ./scripts/setup.sh (it installs Debian's restic)");
    }
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("repo");
    let source = dir.path().join("source");
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(source.join("nested"))?;
    for (name, size) in [
        ("a.txt", 10_000),
        ("b.bin", 200_000),
        ("nested/c.log", 50_000),
    ] {
        let bytes: Vec<u8> = (0..size).map(|i: usize| (i * 7 % 251) as u8).collect();
        std::fs::write(source.join(name), bytes)?;
    }
    // Unique, so finding it anywhere in the log can only mean a leak.
    let password = format!("pw-{}", ExecutionId::generate());
    let (repo_arg, source_arg) = (
        repo.to_str().context("utf-8 path")?,
        source.to_str().context("utf-8 path")?,
    );

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
            id: "restic-worker".into(),
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
    let began = Instant::now();

    let init = api
        .submit(restic_task(
            &["init", "--repo", repo_arg],
            json!({}),
            &password,
            &cache,
        ))
        .await?;
    api.succeeded(&init, "restic init").await?;

    let backup = api
        .submit(restic_task(
            &["backup", "--repo", repo_arg, "--json", source_arg],
            json!({
                "progress": {"json": {
                    "percent_field": "percent_done",
                    "scale": 100,
                    "message_field": "message_type",
                    "counters": {"files_done": "files_done", "bytes_done": "bytes_done",
                                 "total_files": "total_files"},
                }},
                "extract": {"snapshot_id": {"json": "/snapshot_id"}},
            }),
            &password,
            &cache,
        ))
        .await?;
    let view = api.succeeded(&backup, "restic backup").await?;
    let snapshot = view["output"]["snapshot_id"]
        .as_str()
        .with_context(|| format!("no snapshot_id in {}", view["output"]))?
        .to_owned();
    ensure!(
        snapshot.len() >= 8 && snapshot.bytes().all(|b| b.is_ascii_hexdigit()),
        "snapshot_id {snapshot:?} is not an id of hex digits"
    );
    // The last progress report came from a JSON status line.
    let js = async_nats::jetstream::new(client.clone());
    let subjects = Subjects::default();
    let stored = direct::last(
        &js,
        &subjects.logs_stream(),
        &subjects.event(&backup, EventType::Progress),
    )
    .await?
    .context("the backup reported no progress")?;
    let envelope = codec::decode(&stored.headers, &stored.payload, &codec::Limits::default())?;
    let Event::Progress(progress) = envelope.event else {
        bail!("not a progress report: {:?}", envelope.event);
    };
    ensure!(
        progress.message.as_deref() == Some("status") && progress.percent.is_some(),
        "progress not read from a status line: {progress:?}"
    );

    let check = api
        .submit(restic_task(
            &["check", "--repo", repo_arg],
            json!({}),
            &password,
            &cache,
        ))
        .await?;
    api.succeeded(&check, "restic check").await?;

    let forget = api
        .submit(restic_task(
            &["forget", "--repo", repo_arg, "--keep-last", "1", "--prune"],
            json!({}),
            &password,
            &cache,
        ))
        .await?;
    api.succeeded(&forget, "restic forget").await?;
    let elapsed = began.elapsed();

    // The snapshot the task reported is the one the repository keeps.
    let listed = Command::new("restic")
        .args(["snapshots", "--json", "--repo", repo_arg])
        .env("RESTIC_PASSWORD", &password)
        .env("RESTIC_CACHE_DIR", &cache)
        .output()?;
    ensure!(listed.status.success(), "restic snapshots failed");
    let snapshots: Value = serde_json::from_slice(&listed.stdout)?;
    let kept: Vec<&str> = snapshots
        .as_array()
        .context("a list of snapshots")?
        .iter()
        .filter_map(|s| s["short_id"].as_str())
        .collect();
    ensure!(
        kept.len() == 1 && (kept[0].starts_with(&snapshot) || snapshot.starts_with(kept[0])),
        "the repository keeps {kept:?}, the backup reported {snapshot}"
    );

    let steps = [init, backup, check, forget];
    // The password reached restic through the sealed environment only.
    for id in &steps {
        for path in [
            format!("/v1/executions/{id}/events"),
            format!("/v1/executions/{id}"),
            format!("/v1/executions/{id}/logs"),
        ] {
            let body = api.get(&path).await?;
            ensure!(!body.contains(&password), "the password shows in {path}");
        }
    }
    // All four in the projection.
    eventually(PATIENCE, "the projection lists the four", || async {
        let page: Value = serde_json::from_str(&api.get("/v1/executions?limit=100").await?)?;
        let listed = page["executions"].as_array().context("no executions")?;
        Ok(steps
            .iter()
            .all(|id| {
                listed
                    .iter()
                    .any(|e| e["id"] == id.as_str() && e["status"] == "succeeded")
            })
            .then_some(()))
    })
    .await?;
    println!("restic init, backup ({snapshot}), check and forget as four tasks in {elapsed:.2?}");

    shutdown.cancel();
    let _ = worker.await;
    engine.wait().await;
    Ok(())
}
