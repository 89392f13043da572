//! Projection snapshots: a restarted engine starts from the newest snapshot
//! and replays only the tail, ending equal to a fresh fold.

mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use chrono::Utc;
use common::start_with;
use runlog_events::Status;
use runlog_events::decider::Command;
use runlog_testkit::{NatsServer, eventually};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_starts_from_the_snapshot_and_replays_the_tail() -> Result<()> {
    let server = NatsServer::start()?;
    let mut first = start_with(server, |c| {
        c.snapshot_interval = std::time::Duration::from_secs(1)
    })
    .await?;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(first.submit(json!({"kind": "shell"})).await?);
    }
    for id in &ids {
        first.wait_status(id, Status::Queued, None).await?;
    }
    let js = first.js.clone();
    eventually(Duration::from_secs(15), "a projection snapshot", || async {
        let store = js.get_object_store("runlog-snapshots").await?;
        Ok(Some(store.info("projection").await?))
    })
    .await?;
    first.stop().await;
    let journal = first.journal.clone();
    let common::Running { server, .. } = first;

    // The log moves on while no engine runs.
    for id in &ids[..5] {
        let claim = Command::Claim {
            worker: "w1".into(),
            redelivered: false,
        };
        journal.transition(id, &claim, Utc::now()).await?;
    }

    let mut second = start_with(server, |c| {
        c.snapshot_interval = std::time::Duration::from_secs(1)
    })
    .await?;
    eventually(Duration::from_secs(15), "ready", || async {
        let (status, _) = second.get("/readyz").await?;
        ensure!(status == 200, "/readyz answers {status}");
        Ok(Some(()))
    })
    .await?;
    let (_, stats) = second.get("/v1/stats").await?;
    assert!(
        stats["restored_from_seq"].as_u64().unwrap_or(0) > 0,
        "started from a snapshot: {stats}"
    );
    let (_, page) = second.get("/v1/executions?limit=100").await?;
    let listed = page["executions"].as_array().unwrap();
    assert_eq!(listed.len(), ids.len());
    for view in listed {
        let id = runlog_events::ExecutionId::new(view["id"].as_str().unwrap())?;
        let folded = second.journal.load(&id).await?;
        assert_eq!(view["status"], json!(folded.state.status), "{id}");
        assert_eq!(view["last_seq"], json!(folded.last_seq), "{id}");
    }
    let (_, stats) = second.get("/v1/stats").await?;
    assert_eq!(stats["by_status"]["running"], 5, "{stats}");
    assert_eq!(stats["by_status"]["queued"], 15, "{stats}");
    second.stop().await;
    Ok(())
}
