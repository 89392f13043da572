//! Intake against a real nats-server.

use anyhow::Result;
use async_nats::jetstream;
use chrono::Utc;
use runlog_engine::{Intake, IntakeError, Submission};
use runlog_events::journal::Journal;
use runlog_events::stream::Layout;
use runlog_events::{ExecutionId, Status, Subjects, TaskSpec};
use runlog_testkit::NatsServer;

async fn intake(server: &NatsServer) -> Result<(Intake, Journal)> {
    let js = jetstream::new(async_nats::connect(server.url()).await?);
    let layout = Layout::default();
    layout.ensure(&js).await?;
    let env = layout.env_bucket(&js).await?;
    let keys = layout.idempotency_bucket(&js).await?;
    let journal = Journal::new(js, Subjects::default(), "/test/engine");
    Ok((Intake::new(journal.clone(), env, keys), journal))
}

#[tokio::test]
async fn a_submission_is_recorded_once_as_submitted() -> Result<()> {
    let server = NatsServer::start()?;
    let (intake, journal) = intake(&server).await?;
    let mut submission = Submission::new(TaskSpec::new("shell"));
    submission.correlation_id = Some("deploy-7".into());
    let accepted = intake.submit(submission, Utc::now()).await?;
    assert!(!accepted.existing);
    assert_eq!(accepted.state.status, Status::Pending);

    let history = journal.load(&accepted.execution).await?;
    assert_eq!(history.state, accepted.state);
    assert_eq!(history.last_seq, accepted.last_seq);
    for recorded in &history.events {
        assert_eq!(
            recorded.envelope.correlation_id.as_deref(),
            Some("deploy-7")
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_second_submission_of_the_same_id_returns_the_existing_execution() -> Result<()> {
    let server = NatsServer::start()?;
    let (intake, journal) = intake(&server).await?;
    let id = ExecutionId::new("nightly-backup-2026-11-23")?;
    let mut first = Submission::new(TaskSpec::new("shell"));
    first.execution = Some(id.clone());
    let a = intake.submit(first.clone(), Utc::now()).await?;
    let b = intake.submit(first, Utc::now()).await?;
    assert!(!a.existing);
    assert!(b.existing);
    assert_eq!(b.execution, id);
    assert_eq!(b.state, a.state);
    assert_eq!(
        journal.load(&id).await?.events.len(),
        1,
        "nothing recorded twice"
    );
    Ok(())
}

#[tokio::test]
async fn an_invalid_spec_is_refused_with_its_field_and_nothing_is_recorded() -> Result<()> {
    let server = NatsServer::start()?;
    let (intake, journal) = intake(&server).await?;
    let mut spec = TaskSpec::new("shell");
    spec.retry.backoff_multiplier = 0.5;
    let mut submission = Submission::new(spec);
    let id = ExecutionId::generate();
    submission.execution = Some(id.clone());
    match intake.submit(submission, Utc::now()).await {
        Err(IntakeError::Rejected(rejection)) => {
            assert_eq!(rejection.code(), "invalid_task");
            assert!(rejection.to_string().contains("retry.backoff_multiplier"));
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(journal.load(&id).await?.events.is_empty());
    Ok(())
}

#[tokio::test]
async fn environment_values_are_sealed_and_only_their_names_recorded() -> Result<()> {
    let server = NatsServer::start()?;
    let (intake, journal) = intake(&server).await?;
    let mut spec = TaskSpec::new("shell");
    spec.env.insert("RESTIC_PASSWORD".into(), "hunter2".into());
    let accepted = intake.submit(Submission::new(spec), Utc::now()).await?;
    let history = journal.load(&accepted.execution).await?;
    let recorded = history.state.spec.unwrap();
    assert!(recorded.env.is_empty());
    assert_eq!(recorded.sealed_env, vec!["RESTIC_PASSWORD".to_owned()]);
    let js = journal.jetstream();
    let stream = js.get_stream("RUNLOG_EXEC").await?;
    let raw = stream.get_raw_message(history.last_seq).await?;
    assert!(!String::from_utf8_lossy(&raw.payload).contains("hunter2"));
    let sealed = js
        .get_key_value("runlog-env")
        .await?
        .get(accepted.execution.as_str())
        .await?
        .unwrap();
    assert_eq!(
        sealed,
        serde_json::to_vec(&serde_json::json!({"RESTIC_PASSWORD": "hunter2"}))?
    );
    Ok(())
}

#[tokio::test]
async fn an_idempotency_key_maps_every_duplicate_to_the_first_execution() -> Result<()> {
    let server = NatsServer::start()?;
    let (intake, journal) = intake(&server).await?;
    let mut spec = TaskSpec::new("shell");
    spec.idempotency_key = Some("invoice 2026-11/42".into());
    let first = intake
        .submit(Submission::new(spec.clone()), Utc::now())
        .await?;
    // Concurrent duplicates, each with a fresh id of its own.
    let dups = futures::future::join_all(
        (0..8).map(|_| intake.submit(Submission::new(spec.clone()), Utc::now())),
    )
    .await;
    for dup in dups {
        let dup = dup?;
        assert_eq!(dup.execution, first.execution);
        assert!(dup.existing);
    }
    assert_eq!(journal.load(&first.execution).await?.events.len(), 1);
    Ok(())
}
