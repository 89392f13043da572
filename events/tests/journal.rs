//! The core against a real nats-server: streams from the shared layout,
//! optimistic appends, the Msg-Id rule, de-duplication and replay.

use anyhow::Result;
use async_nats::jetstream;
use chrono::Utc;
use runlog_events::decider::{self, Command, ExecutionState, Status, decide};
use runlog_events::journal::{AppendError, Journal};
use runlog_events::stream::Layout;
use runlog_events::{Envelope, ExecutionId, Subjects, TaskSpec};
use runlog_testkit::NatsServer;

async fn setup(server: &NatsServer) -> Result<(Journal, jetstream::Context)> {
    let client = async_nats::connect(server.url()).await?;
    let js = jetstream::new(client);
    let layout = Layout::default();
    layout.ensure(&js).await?;
    Ok((Journal::new(js.clone(), Subjects::default(), "/test"), js))
}

/// Decides `command` against `state` and wraps the single resulting event.
fn one(command: Command, state: &ExecutionState, exec: &ExecutionId) -> Envelope {
    let mut facts = decide(&command, state, Utc::now()).expect("command accepted");
    assert_eq!(facts.len(), 1, "{command:?} should record one event");
    let fact = facts.remove(0);
    Envelope::new(exec.clone(), fact.attempt, Utc::now(), "/test", fact.event)
}

async fn stream_messages(js: &jetstream::Context) -> Result<u64> {
    Ok(js
        .get_stream("RUNLOG_EXEC")
        .await?
        .info()
        .await?
        .state
        .messages)
}

#[tokio::test]
async fn an_execution_is_appended_with_occ_and_replayed_to_the_same_state() -> Result<()> {
    let server = NatsServer::start()?;
    let (journal, js) = setup(&server).await?;
    let exec = ExecutionId::generate();

    // Submit → queue → claim → succeed, each append expecting the last seq.
    let mut state = ExecutionState::default();
    let mut last = 0;
    for command in [
        Command::Submit {
            spec: TaskSpec::new("shell"),
        },
        Command::Enqueue,
        Command::Claim {
            worker: "w1".into(),
            redelivered: false,
        },
        Command::Succeed {
            attempt: 1,
            output: serde_json::json!({"snapshot": "a1b2c3"}),
        },
    ] {
        let env = one(command, &state, &exec);
        let appended = journal.append(last, &env).await?;
        assert!(!appended.duplicate);
        assert!(appended.seq > last);
        last = appended.seq;
        state = decider::evolve(state, &env);
    }
    assert_eq!(state.status, Status::Succeeded);

    // Replaying runlog.ev.<exec>.> through evolve rebuilds the same state.
    let history = journal.load(&exec).await?;
    assert_eq!(history.events.len(), 4);
    assert_eq!(history.last_seq, last);
    assert!(history.skipped.is_empty(), "{:?}", history.skipped);
    assert_eq!(history.state, state);
    let types: Vec<&str> = history
        .events
        .iter()
        .map(|r| r.envelope.event_type().as_str())
        .collect();
    assert_eq!(types, ["submitted", "queued", "started", "succeeded"]);
    assert_eq!(stream_messages(&js).await?, 4);
    Ok(())
}

#[tokio::test]
async fn an_execution_is_created_exactly_once() -> Result<()> {
    let server = NatsServer::start()?;
    let (journal, _js) = setup(&server).await?;
    let exec = ExecutionId::generate();
    let first = one(
        Command::Submit {
            spec: TaskSpec::new("shell"),
        },
        &ExecutionState::default(),
        &exec,
    );
    journal.append(0, &first).await?;
    // A different submission of the same id, also expecting "create".
    let mut spec = TaskSpec::new("http");
    spec.idempotency_key = Some("other".into());
    let mut second = one(Command::Submit { spec }, &ExecutionState::default(), &exec);
    second.source = "/other-writer".into();
    // It fails the "create" expectation, and it carries the same Msg-Id
    // (<exec>:submitted:0), so the Msg-Id rule reports the stored submission:
    // a second submit of one execution id is idempotent, never a second
    // execution.
    let appended = journal.append(0, &second).await?;
    assert!(appended.duplicate);
    let history = journal.load(&exec).await?;
    assert_eq!(history.events.len(), 1);
    assert_eq!(history.events[0].envelope, first);
    Ok(())
}

#[tokio::test]
async fn a_stale_expectation_is_a_conflict_unless_the_newest_event_is_ours() -> Result<()> {
    let server = NatsServer::start()?;
    let (journal, js) = setup(&server).await?;
    let exec = ExecutionId::generate();
    let mut state = ExecutionState::default();
    let mut last = 0;
    for command in [
        Command::Submit {
            spec: TaskSpec::new("shell"),
        },
        Command::Enqueue,
    ] {
        let env = one(command, &state, &exec);
        last = journal.append(last, &env).await?.seq;
        state = decider::evolve(state, &env);
    }
    let queued_at = last;

    // Two workers claim the same attempt against the same sequence.
    let claim = |w: &str| {
        one(
            Command::Claim {
                worker: w.to_owned(),
                redelivered: false,
            },
            &state,
            &exec,
        )
    };
    let (a, b) = (claim("w1"), claim("w2"));
    let won = journal.append(queued_at, &a).await?;
    assert!(!won.duplicate);
    match journal.append(queued_at, &b).await {
        Err(AppendError::Conflict {
            expected, actual, ..
        }) => {
            assert_eq!(expected, queued_at);
            assert_eq!(actual, Some(won.seq));
        }
        other => panic!("the second claim must conflict, got {other:?}"),
    }

    // The winner's retry of its own publish (say its ack was lost) carries
    // the old expectation: the server answers 10071 on a single replica,
    // and the Msg-Id rule recognises the newest event as ours.
    let retried = journal.append(queued_at, &a).await?;
    assert_eq!(retried.seq, won.seq);
    assert!(retried.duplicate);

    // Nothing extra was stored.
    assert_eq!(stream_messages(&js).await?, 3);
    let history = journal.load(&exec).await?;
    assert_eq!(history.state.worker.as_deref(), Some("w1"));
    assert_eq!(history.state.status, Status::Running);
    Ok(())
}

#[tokio::test]
async fn a_duplicate_msg_id_is_dropped_by_the_server() -> Result<()> {
    let server = NatsServer::start()?;
    let (journal, js) = setup(&server).await?;
    let exec = ExecutionId::generate();
    let submitted = one(
        Command::Submit {
            spec: TaskSpec::new("shell"),
        },
        &ExecutionState::default(),
        &exec,
    );
    let first = journal.append(0, &submitted).await?;
    // The same event again, now expecting the current last sequence: the
    // expectation holds, so only the Msg-Id de-duplication can stop it.
    let again = journal.append(first.seq, &submitted).await?;
    assert!(again.duplicate);
    assert_eq!(again.seq, first.seq);
    assert_eq!(stream_messages(&js).await?, 1);
    Ok(())
}

#[tokio::test]
async fn transition_refolds_after_losing_a_race_and_respects_terminal_states() -> Result<()> {
    let server = NatsServer::start()?;
    let (journal, _js) = setup(&server).await?;
    let exec = ExecutionId::generate();
    let now = Utc::now();
    let spec = TaskSpec::new("shell");
    journal
        .transition(&exec, &Command::Submit { spec: spec.clone() }, now)
        .await?;
    let err = journal
        .transition(&exec, &Command::Submit { spec }, now)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    journal.transition(&exec, &Command::Enqueue, now).await?;
    let cancel = Command::RequestCancel {
        reason: "operator".into(),
        operation: None,
    };
    let history = journal.transition(&exec, &cancel, now).await?;
    assert_eq!(history.state.status, Status::Cancelled);
    // A claim of the cancelled execution is refused by the rules: the worker
    // skips and acks its work item.
    let claim = Command::Claim {
        worker: "w1".into(),
        redelivered: false,
    };
    let err = journal.transition(&exec, &claim, now).await.unwrap_err();
    assert!(err.to_string().contains("already ended"), "{err}");
    Ok(())
}

#[tokio::test]
async fn the_layout_is_idempotent_and_refuses_a_foreign_stream() -> Result<()> {
    let server = NatsServer::start()?;
    let client = async_nats::connect(server.url()).await?;
    let js = jetstream::new(client);
    let layout = Layout::default();
    layout.ensure(&js).await?;
    layout.ensure(&js).await?;

    // Another installation squatting on our stream name with other subjects.
    let other = Layout {
        subjects: Subjects::new("acme")?,
        ..Layout::default()
    };
    let mut squatter = other.exec_stream();
    squatter.name = "ACME_EXEC".into();
    squatter.subjects = vec!["elsewhere.>".into()];
    js.create_stream(squatter).await?;
    let err = other.ensure(&js).await.unwrap_err().to_string();
    assert!(
        err.contains("ACME_EXEC") && err.contains("incompatible"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn live_events_are_set_by_who_asks_and_kept_by_who_does_not() -> Result<()> {
    let server = NatsServer::start()?;
    let js = jetstream::new(async_nats::connect(server.url()).await?);
    let republishes = |js: jetstream::Context| async move {
        let mut stream = js.get_stream(Subjects::default().exec_stream()).await?;
        anyhow::Ok(stream.info().await?.config.republish.is_some())
    };
    let with = |live: Option<bool>| Layout {
        live_events: live,
        ..Layout::default()
    };
    // Created by a component that does not say (a worker): without.
    with(None).ensure(&js).await?;
    assert!(!republishes(js.clone()).await?);
    // The engine turns it on; a worker starting later leaves it on.
    with(Some(true)).ensure(&js).await?;
    with(None).ensure(&js).await?;
    assert!(republishes(js.clone()).await?);
    // The engine turns it off again.
    with(Some(false)).ensure(&js).await?;
    assert!(!republishes(js.clone()).await?);
    Ok(())
}
