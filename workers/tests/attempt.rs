//! Claims and results against a real nats-server.

use anyhow::Result;
use async_nats::jetstream;
use chrono::Utc;
use runlog_events::decider::Command;
use runlog_events::journal::Journal;
use runlog_events::stream::Layout;
use runlog_events::{ErrorClass, ExecutionId, Status, Subjects, TaskError, TaskSpec};
use runlog_testkit::NatsServer;
use runlog_worker::attempt::Outcome;
use runlog_worker::{Attempt, Claim};

async fn queued(server: &NatsServer) -> Result<(Journal, ExecutionId)> {
    let js = jetstream::new(async_nats::connect(server.url()).await?);
    Layout::default().ensure(&js).await?;
    let journal = Journal::new(js, Subjects::default(), "/test/worker");
    let exec = ExecutionId::generate();
    let spec = TaskSpec::new("shell");
    journal
        .transition(&exec, &Command::Submit { spec }, Utc::now())
        .await?;
    journal
        .transition(&exec, &Command::Enqueue, Utc::now())
        .await?;
    Ok((journal, exec))
}

fn started(claim: Claim) -> Box<Attempt> {
    match claim {
        Claim::Started(attempt) => attempt,
        Claim::Skip { code, status } => panic!("expected a claim, got skip {code} ({status})"),
    }
}

#[tokio::test]
async fn of_two_workers_racing_for_an_attempt_exactly_one_runs_it() -> Result<()> {
    let server = NatsServer::start()?;
    let (journal, exec) = queued(&server).await?;
    let now = Utc::now();
    let (a, b) = tokio::join!(
        Attempt::claim(&journal, &exec, "w1", false, now),
        Attempt::claim(&journal, &exec, "w2", false, now),
    );
    let (a, b) = (a?, b?);
    let (winner, loser) = match (&a, &b) {
        (Claim::Started(_), Claim::Skip { .. }) => (a, b),
        (Claim::Skip { .. }, Claim::Started(_)) => (b, a),
        _ => panic!("exactly one claim must win: {a:?} / {b:?}"),
    };
    let Claim::Skip { code, status } = loser else {
        unreachable!()
    };
    assert_eq!((code, status), ("already_claimed", Status::Running));
    let attempt = started(winner);
    assert_eq!(attempt.number(), 1);
    let history = journal.load(&exec).await?;
    let starts = history
        .events
        .iter()
        .filter(|r| r.envelope.event_type().as_str() == "started")
        .count();
    assert_eq!(starts, 1);
    Ok(())
}

#[tokio::test]
async fn a_redelivered_item_records_the_lost_attempt_and_the_old_result_is_refused() -> Result<()> {
    let server = NatsServer::start()?;
    let (journal, exec) = queued(&server).await?;
    let first = started(Attempt::claim(&journal, &exec, "w1", false, Utc::now()).await?);
    // w1 stops acknowledging; the server redelivers the work item to w2.
    let second = started(Attempt::claim(&journal, &exec, "w2", true, Utc::now()).await?);
    assert_eq!(second.number(), 2);

    // w1 comes back from a long pause and reports a result: refused.
    let late = first.succeed(serde_json::json!("late"), Utc::now()).await;
    let err = late.expect_err("a lost attempt cannot finish the execution");
    assert!(err.to_string().contains("not the current attempt"), "{err}");

    let history = second
        .fail(
            TaskError::new(ErrorClass::Network, "connection reset"),
            Utc::now(),
        )
        .await?;
    assert_eq!(history.state.status, Status::Failed);
    assert_eq!(history.state.failures, 1);
    let types: Vec<&str> = journal
        .load(&exec)
        .await?
        .events
        .iter()
        .map(|r| r.envelope.event_type().as_str())
        .collect();
    assert_eq!(
        types,
        [
            "submitted",
            "queued",
            "started",
            "attempt_lost",
            "started",
            "failed"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_cancelled_execution_is_skipped() -> Result<()> {
    let server = NatsServer::start()?;
    let (journal, exec) = queued(&server).await?;
    let cancel = Command::RequestCancel {
        reason: "operator".into(),
        operation: None,
    };
    journal.transition(&exec, &cancel, Utc::now()).await?;
    match Attempt::claim(&journal, &exec, "w1", false, Utc::now()).await? {
        Claim::Skip { code, status } => {
            assert_eq!((code, status), ("already_ended", Status::Cancelled));
        }
        Claim::Started(_) => panic!("a cancelled execution must not run"),
    }
    Ok(())
}

#[tokio::test]
async fn a_cancel_recorded_after_the_claim_refuses_the_result() -> Result<()> {
    let server = NatsServer::start()?;
    let (journal, exec) = queued(&server).await?;
    let attempt = started(Attempt::claim(&journal, &exec, "w1", false, Utc::now()).await?);
    let cancel = Command::RequestCancel {
        reason: "operator".into(),
        operation: None,
    };
    journal.transition(&exec, &cancel, Utc::now()).await?;
    // The worker's result was decided on a stale view: the append conflicts,
    // the journal re-folds, and the rules refuse a result after a cancel.
    let err = attempt
        .succeed(serde_json::Value::Null, Utc::now())
        .await
        .expect_err("no result after a recorded cancel");
    assert!(err.to_string().contains("cancel was requested"), "{err}");
    assert_eq!(journal.load(&exec).await?.state.status, Status::Running);
    Ok(())
}

#[tokio::test]
async fn a_result_finished_after_a_missed_cancel_ends_the_execution_cancelled() -> Result<()> {
    let server = NatsServer::start()?;
    let (journal, exec) = queued(&server).await?;
    let attempt = started(Attempt::claim(&journal, &exec, "w1", false, Utc::now()).await?);
    let cancel = Command::RequestCancel {
        reason: "operator".into(),
        operation: None,
    };
    journal.transition(&exec, &cancel, Utc::now()).await?;
    // Decided on the claim's view, the success conflicts with the cancel
    // request; decided again on the history, it confirms the cancel.
    let outcome = Outcome::Succeeded {
        output: serde_json::Value::Null,
    };
    // What the attempt used is recorded on whatever event ends it.
    let used = runlog_events::resources::Resources {
        wall_ms: 1200,
        cpu_user_ms: Some(900),
        ..Default::default()
    };
    let history = attempt.finish(outcome, Some(used), Utc::now()).await?;
    assert_eq!(history.state.status, Status::Cancelled);
    assert_eq!(history.state.reason.as_deref(), Some("operator"));
    let totals = history.state.resources.expect("the attempt's resources");
    assert_eq!(
        (totals.attempts, totals.wall_ms, totals.cpu_ms()),
        (1, 1200, Some(900))
    );
    Ok(())
}

#[tokio::test]
async fn a_cancel_signal_without_a_cancel_request_fails_the_attempt() -> Result<()> {
    let server = NatsServer::start()?;
    let (journal, exec) = queued(&server).await?;
    let attempt = started(Attempt::claim(&journal, &exec, "w1", false, Utc::now()).await?);
    let history = attempt.finish(Outcome::Cancelled, None, Utc::now()).await?;
    assert_eq!(history.state.status, Status::Failed);
    assert_eq!(history.state.errors[0].error.class, ErrorClass::Cancelled);
    Ok(())
}

#[tokio::test]
async fn a_result_too_large_for_an_event_fails_the_attempt_for_good() -> Result<()> {
    let server = NatsServer::start()?;
    let (journal, exec) = queued(&server).await?;
    let attempt = started(Attempt::claim(&journal, &exec, "w1", false, Utc::now()).await?);
    let output = serde_json::Value::String("x".repeat(1024 * 1024 + 1));
    let history = attempt
        .finish(Outcome::Succeeded { output }, None, Utc::now())
        .await?;
    assert_eq!(history.state.status, Status::Failed);
    let error = &history.state.errors[0].error;
    assert_eq!(error.class, ErrorClass::Permanent);
    assert!(!error.retryable);
    assert!(
        error.message.contains("limit of 1048576"),
        "{}",
        error.message
    );
    Ok(())
}
