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
    Layout::default().ensure(&js).await?;
    let journal = Journal::new(js, Subjects::default(), "/test/engine");
    Ok((Intake::new(journal.clone()), journal))
}

#[tokio::test]
async fn a_submission_is_recorded_as_submitted_then_queued() -> Result<()> {
    let server = NatsServer::start()?;
    let (intake, journal) = intake(&server).await?;
    let mut submission = Submission::new(TaskSpec::new("shell"));
    submission.correlation_id = Some("deploy-7".into());
    let accepted = intake.submit(submission, Utc::now()).await?;
    assert!(!accepted.existing);
    assert_eq!(accepted.state.status, Status::Queued);
    assert_eq!(accepted.state.attempt, 1);

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
        2,
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
