//! The projection against a real nats-server: a replay from nothing equals
//! a fresh fold of every execution, and stays live.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, ensure};
use async_nats::jetstream;
use chrono::Utc;
use runlog_engine::Projection;
use runlog_events::decider::Command;
use runlog_events::journal::Journal;
use runlog_events::stream::Layout;
use runlog_events::{ExecutionId, Status, Subjects, TaskSpec};
use runlog_testkit::{NatsServer, eventually};
use tokio_util::sync::CancellationToken;

async fn caught_up(projection: &Projection, js: &jetstream::Context) -> Result<()> {
    let last = js
        .get_stream("RUNLOG_EXEC")
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    eventually(
        Duration::from_secs(10),
        "the projection caught up",
        || async {
            let applied = projection.applied_seq();
            ensure!(applied >= last, "projection stuck at {applied} of {last}");
            Ok(Some(()))
        },
    )
    .await
}

#[tokio::test]
async fn a_replayed_projection_equals_a_fresh_fold_of_every_execution() -> Result<()> {
    let server = NatsServer::start()?;
    let js = jetstream::new(async_nats::connect(server.url()).await?);
    Layout::default().ensure(&js).await?;
    let journal = Journal::new(js.clone(), Subjects::default(), "/test");

    // Executions left in different states.
    let mut ids: Vec<ExecutionId> = Vec::new();
    for i in 0..30 {
        let exec = ExecutionId::generate();
        let submit = Command::Submit {
            spec: TaskSpec::new("shell"),
        };
        journal.transition(&exec, &submit, Utc::now()).await?;
        journal
            .transition(&exec, &Command::Enqueue, Utc::now())
            .await?;
        let claim = Command::Claim {
            worker: "w1".into(),
            redelivered: false,
        };
        match i % 3 {
            0 => {}
            1 => {
                journal.transition(&exec, &claim, Utc::now()).await?;
            }
            _ => {
                journal.transition(&exec, &claim, Utc::now()).await?;
                let done = Command::Succeed {
                    attempt: 1,
                    output: serde_json::json!(i),
                };
                journal.transition(&exec, &done, Utc::now()).await?;
            }
        }
        ids.push(exec);
    }

    let projection = Arc::new(Projection::new());
    let shutdown = CancellationToken::new();
    let follower = {
        let (projection, js, shutdown) = (projection.clone(), js.clone(), shutdown.clone());
        tokio::spawn(async move { projection.follow(&js, &Subjects::default(), shutdown).await })
    };
    caught_up(&projection, &js).await?;
    assert_eq!(projection.len(), ids.len());
    for exec in &ids {
        let fresh = journal.load(exec).await?;
        let entry = projection.get(exec).expect("every execution is projected");
        // A finished execution keeps what listings show; the rest is in the log.
        let mut expected = fresh.state.clone();
        if expected.status.is_terminal() {
            runlog_engine::projection::slim(&mut expected);
            assert!(entry.state.output.is_none() && fresh.state.output.is_some());
        }
        assert_eq!(entry.state, expected);
        assert_eq!(entry.last_seq, fresh.last_seq);
    }

    // It stays live: a new event shows up without a restart.
    let cancel = Command::RequestCancel {
        reason: "operator".into(),
        operation: None,
    };
    journal.transition(&ids[0], &cancel, Utc::now()).await?;
    caught_up(&projection, &js).await?;
    assert_eq!(
        projection.get(&ids[0]).unwrap().state.status,
        Status::Cancelled
    );
    assert_eq!(projection.skipped(), 0);

    shutdown.cancel();
    follower.await??;
    Ok(())
}
