//! Intake against a real nats-server.

use anyhow::Result;
use async_nats::jetstream;
use chrono::Utc;
use runlog_engine::{Intake, IntakeError, Submission};
use std::sync::Arc;

use runlog_events::journal::Journal;
use runlog_events::sealing::Keyring;
use runlog_events::secrets::open_env;
use runlog_events::stream::Layout;
use runlog_events::{ExecutionId, Status, Subjects, TaskSpec};
use runlog_testkit::NatsServer;

/// The key ring the intakes of these tests seal with.
fn ring() -> Arc<Keyring> {
    static RING: std::sync::OnceLock<Arc<Keyring>> = std::sync::OnceLock::new();
    RING.get_or_init(|| Arc::new(Keyring::parse(&Keyring::generate_line()).unwrap()))
        .clone()
}

async fn intake(server: &NatsServer) -> Result<(Intake, Journal)> {
    let (intake, journal) = intake_without_key(server).await?;
    Ok((intake.with_keyring(ring()), journal))
}

async fn intake_without_key(server: &NatsServer) -> Result<(Intake, Journal)> {
    let js = jetstream::new(async_nats::connect(server.url()).await?);
    let layout = Layout::default();
    layout.ensure(&js).await?;
    let env = layout.env_bucket(&js).await?;
    let keys = layout.idempotency_bucket(&js).await?;
    let journal = Journal::new(js, Subjects::default(), "/test/engine");
    Ok((Intake::new(journal.clone(), env, keys), journal))
}

#[tokio::test]
async fn a_submission_is_recorded_once_queued_with_its_spec_and_its_work_item() -> Result<()> {
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
    // One event: `queued` with the spec, no `submitted`.
    assert_eq!(history.events.len(), 1);
    let runlog_events::Event::Queued(queued) = &history.events[0].envelope.event else {
        panic!("the first event is {:?}", history.events[0].envelope.event);
    };
    assert_eq!(queued.spec.as_ref().map(|s| s.kind.as_str()), Some("shell"));
    // That event is its work item, with the spec.
    let subjects = journal.subjects();
    let subject = subjects.queued(&accepted.execution, &queued.queue, queued.priority);
    let stored =
        runlog_events::direct::last(journal.jetstream(), &subjects.exec_stream(), &subject)
            .await?
            .expect("the queued event on its work subject");
    let item = runlog_events::WorkItem::from_delivery(
        subjects,
        &subject,
        Some(&stored.headers),
        &stored.payload,
        stored.seq,
        &runlog_events::codec::Limits::default(),
    )?;
    assert_eq!((item.attempt, item.queued_seq), (1, accepted.last_seq));
    assert_eq!(item.spec.map(|s| s.kind), Some("shell".to_owned()));
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
    // Sealed at rest, for this execution only.
    assert!(!String::from_utf8_lossy(&sealed).contains("hunter2"));
    let opened = open_env(&ring(), &accepted.execution, &sealed)?;
    assert_eq!(opened["RESTIC_PASSWORD"], "hunter2");
    let retry = ExecutionId::generate();
    assert!(open_env(&ring(), &retry, &sealed).is_err());
    // A retry's copy is sealed again for the retry.
    intake.copy_sealed_env(&accepted.execution, &retry).await?;
    let env = js.get_key_value("runlog-env").await?;
    let copy = env.get(retry.as_str()).await?.unwrap();
    assert_eq!(open_env(&ring(), &retry, &copy)?, opened);
    assert_ne!(copy, sealed);
    Ok(())
}

#[tokio::test]
async fn an_intake_without_a_key_refuses_environment_values_and_records_nothing() -> Result<()> {
    let server = NatsServer::start()?;
    let (intake, journal) = intake_without_key(&server).await?;
    let mut spec = TaskSpec::new("shell");
    spec.env.insert("TOKEN".into(), "s3cr3t-value".into());
    let mut submission = Submission::new(spec);
    let id = ExecutionId::generate();
    submission.execution = Some(id.clone());
    match intake.submit(submission, Utc::now()).await {
        Err(IntakeError::Rejected(rejection)) => {
            assert_eq!(rejection.code(), "invalid_task");
            let text = rejection.to_string();
            assert!(text.contains("--secret-key-file"), "{text}");
            assert!(!text.contains("s3cr3t"), "{text}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(journal.load(&id).await?.events.is_empty());
    // Without env values it submits as before.
    intake
        .submit(Submission::new(TaskSpec::new("shell")), Utc::now())
        .await?;
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

#[tokio::test]
async fn a_batch_answers_in_order_and_keeps_every_rule_of_a_single_submission() -> Result<()> {
    let server = NatsServer::start()?;
    let (intake, journal) = intake(&server).await?;
    let mut sealed = TaskSpec::new("shell");
    sealed.env.insert("TOKEN".into(), "s3cret".into());
    let mut invalid = TaskSpec::new("shell");
    invalid.retry.backoff_multiplier = 0.5;
    let mut keyed = TaskSpec::new("shell");
    keyed.idempotency_key = Some("batch key".into());
    let named = ExecutionId::new("batch-named")?;
    let mut by_name = Submission::new(TaskSpec::new("shell"));
    by_name.execution = Some(named.clone());
    let batch = vec![
        Submission::new(TaskSpec::new("shell")),
        Submission::new(sealed),
        Submission::new(invalid),
        Submission::new(keyed.clone()),
        by_name.clone(),
        Submission::new(keyed),
        by_name,
    ];
    let results = intake.submit_many(batch, Utc::now()).await;
    assert_eq!(results.len(), 7);
    let ok = |n: usize| match &results[n] {
        Ok(accepted) => accepted.clone(),
        Err(e) => panic!("submission {n} refused: {e}"),
    };
    assert!(!ok(0).existing && !ok(1).existing && !ok(3).existing && !ok(4).existing);
    match &results[2] {
        Err(IntakeError::Rejected(r)) => assert!(r.to_string().contains("backoff_multiplier")),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(ok(5).execution, ok(3).execution);
    assert!(
        ok(5).existing,
        "the second with the key gets the first's execution"
    );
    assert_eq!(ok(6).execution, named);
    assert!(ok(6).existing);

    let recorded = journal.load(&ok(1).execution).await?.state.spec.unwrap();
    assert!(recorded.env.is_empty());
    assert_eq!(recorded.sealed_env, vec!["TOKEN".to_owned()]);
    assert_eq!(journal.load(&named).await?.events.len(), 1);
    assert_eq!(journal.load(&ok(3).execution).await?.events.len(), 1);
    Ok(())
}

#[tokio::test]
async fn batches_at_once_with_the_same_key_share_one_execution() -> Result<()> {
    let server = NatsServer::start()?;
    let (intake, journal) = intake(&server).await?;
    let mut spec = TaskSpec::new("shell");
    spec.idempotency_key = Some("shared".into());
    let batch = || {
        (0..50)
            .map(|n| {
                let mut spec = if n % 10 == 0 {
                    spec.clone()
                } else {
                    TaskSpec::new("shell")
                };
                spec.labels.insert("n".into(), n.to_string());
                Submission::new(spec)
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = tokio::join!(
        intake.submit_many(batch(), Utc::now()),
        intake.submit_many(batch(), Utc::now())
    );
    let mut owners = std::collections::HashSet::new();
    let mut created = 0;
    for (n, result) in a.into_iter().chain(b).enumerate() {
        let accepted = result?;
        if n % 50 % 10 == 0 {
            owners.insert(accepted.execution.clone());
            created += usize::from(!accepted.existing);
        } else {
            assert!(!accepted.existing);
        }
    }
    assert_eq!(owners.len(), 1, "one execution for the key");
    assert_eq!(created, 1, "created once, found nine times");
    let owner = owners.into_iter().next().unwrap();
    assert_eq!(journal.load(&owner).await?.events.len(), 1);
    Ok(())
}
