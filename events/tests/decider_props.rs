//! Property tests of the pure core: `decide` and `evolve` under any sequence
//! of commands and any sequence of (possibly impossible) events.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use proptest::prelude::*;
use runlog_events::decider::{
    self, Command, ExecutionState, Outcome, Rejection, Status, check, decide, evolve,
};
use runlog_events::event::{
    AttemptLost, CancelRequested, Cancelled, DeadLetterReason, DeadLettered, Failed, Heartbeat,
    LogBatch, LogLine, LogStream, Progress, Queued, Rejected, RetryScheduled, Started, Submitted,
    Succeeded, TimedOut, TimeoutScope,
};
use runlog_events::{
    Envelope, ErrorClass, Event, ExecutionId, Priority, QueueName, TaskError, TaskSpec,
};

const CASES: u32 = 10_000;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
}

fn exec() -> ExecutionId {
    ExecutionId::new("e1").unwrap()
}

fn arb_class() -> impl Strategy<Value = ErrorClass> {
    prop_oneof![
        Just(ErrorClass::Network),
        Just(ErrorClass::Timeout),
        Just(ErrorClass::RateLimited),
        Just(ErrorClass::Resource),
        Just(ErrorClass::Permission),
        Just(ErrorClass::InvalidInput),
        Just(ErrorClass::NotFound),
        Just(ErrorClass::Permanent),
        Just(ErrorClass::Crashed),
        Just(ErrorClass::Cancelled),
        Just(ErrorClass::Unknown),
    ]
}

fn arb_error() -> impl Strategy<Value = TaskError> {
    (
        arb_class(),
        any::<bool>(),
        proptest::option::of(0u64..10_000),
    )
        .prop_map(|(class, retryable, retry_after_ms)| TaskError {
            class,
            message: format!("{class:?} failure"),
            retryable,
            retry_after_ms,
        })
}

fn arb_spec() -> impl Strategy<Value = TaskSpec> {
    (
        1u32..5,
        prop_oneof![
            Just(Priority::High),
            Just(Priority::Normal),
            Just(Priority::Low)
        ],
        any::<bool>(),
    )
        .prop_map(|(max_attempts, priority, valid)| {
            let mut spec = TaskSpec::new(if valid { "shell" } else { " " });
            spec.retry.max_attempts = max_attempts;
            spec.priority = priority;
            spec
        })
}

/// An attempt number as a command names it: usually the current one, so
/// that sequences make progress, sometimes any.
#[derive(Debug, Clone, Copy)]
enum Pick {
    Current,
    Fixed(u32),
}

fn arb_pick() -> impl Strategy<Value = Pick> {
    prop_oneof![4 => Just(Pick::Current), 1 => (0u32..6).prop_map(Pick::Fixed)]
}

#[allow(clippy::large_enum_variant)] // test input, built once per case
#[derive(Debug, Clone)]
enum Cmd {
    Submit(TaskSpec),
    Admit(TaskSpec),
    Reject,
    Enqueue,
    Claim(u8, bool),
    Progress(Pick),
    Log(Pick),
    Heartbeat(Pick),
    Succeed(Pick),
    Fail(Pick, TaskError),
    TimeOutAttempt(Pick),
    TimeOutExecution,
    Resolve(f64),
    GiveUp(Pick),
    Cancel,
    Finish(Pick, Outcome),
}

fn arb_cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        2 => arb_spec().prop_map(Cmd::Submit),
        2 => arb_spec().prop_map(Cmd::Admit),
        1 => Just(Cmd::Reject),
        3 => Just(Cmd::Enqueue),
        3 => (0u8..3, any::<bool>()).prop_map(|(w, r)| Cmd::Claim(w, r)),
        1 => arb_pick().prop_map(Cmd::Progress),
        1 => arb_pick().prop_map(Cmd::Log),
        1 => arb_pick().prop_map(Cmd::Heartbeat),
        2 => arb_pick().prop_map(Cmd::Succeed),
        3 => (arb_pick(), arb_error()).prop_map(|(p, e)| Cmd::Fail(p, e)),
        1 => arb_pick().prop_map(Cmd::TimeOutAttempt),
        1 => Just(Cmd::TimeOutExecution),
        3 => (0.0f64..=1.0).prop_map(Cmd::Resolve),
        1 => arb_pick().prop_map(Cmd::GiveUp),
        1 => Just(Cmd::Cancel),
        3 => (arb_pick(), arb_outcome()).prop_map(|(p, o)| Cmd::Finish(p, o)),
    ]
}

fn arb_outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Succeeded {
            output: serde_json::json!({"ok": true})
        }),
        arb_error().prop_map(|error| Outcome::Failed { error }),
        Just(Outcome::Cancelled),
        Just(Outcome::TimedOut),
    ]
}

fn command(cmd: &Cmd, state: &ExecutionState) -> Command {
    let at = |p: Pick| match p {
        Pick::Current => state.attempt,
        Pick::Fixed(n) => n,
    };
    match cmd.clone() {
        Cmd::Submit(spec) => Command::Submit { spec },
        Cmd::Admit(spec) => Command::Admit { spec },
        Cmd::Reject => Command::Reject {
            field: Some("kind".into()),
            reason: "must not be empty".into(),
        },
        Cmd::Enqueue => Command::Enqueue,
        Cmd::Claim(w, redelivered) => Command::Claim {
            worker: format!("w{w}"),
            redelivered,
        },
        Cmd::Progress(p) => Command::ReportProgress {
            attempt: at(p),
            progress: Progress {
                percent: Some(50.0),
                message: Some("halfway".into()),
                counters: BTreeMap::new(),
            },
        },
        Cmd::Log(p) => Command::AppendLog {
            attempt: at(p),
            batch: LogBatch {
                first_line: 0,
                lines: vec![LogLine {
                    stream: LogStream::Stdout,
                    line: "hello".into(),
                }],
                dropped: 0,
            },
        },
        Cmd::Heartbeat(p) => Command::Heartbeat {
            attempt: at(p),
            worker: "w0".into(),
        },
        Cmd::Succeed(p) => Command::Succeed {
            attempt: at(p),
            output: serde_json::json!({"ok": true}),
        },
        Cmd::Fail(p, error) => Command::Fail {
            attempt: at(p),
            error,
        },
        Cmd::TimeOutAttempt(p) => Command::TimeOutAttempt { attempt: at(p) },
        Cmd::TimeOutExecution => Command::TimeOutExecution,
        Cmd::Resolve(jitter) => Command::ResolveFailure { jitter },
        Cmd::GiveUp(p) => Command::GiveUp { attempt: at(p) },
        Cmd::Cancel => Command::RequestCancel {
            reason: "operator".into(),
            operation: None,
        },
        Cmd::Finish(p, outcome) => Command::Finish {
            attempt: at(p),
            outcome,
            resources: None,
        },
    }
}

/// Runs commands through decide and evolve, checking the invariants at each
/// step; returns the final state and every envelope recorded.
fn run(cmds: &[Cmd]) -> Result<(ExecutionState, Vec<Envelope>), TestCaseError> {
    let mut state = ExecutionState::default();
    let mut log = Vec::new();
    for (i, cmd) in cmds.iter().enumerate() {
        let now = t0() + TimeDelta::seconds(i as i64);
        let command = command(cmd, &state);
        let Ok(facts) = decide(&command, &state, now) else {
            continue;
        };
        prop_assert!(
            !state.status.is_terminal() || facts.is_empty(),
            "decide emitted {facts:?} for a terminal execution"
        );
        for fact in facts {
            let env = Envelope::new(exec(), fact.attempt, now, "/props", fact.event);
            if let Err(e) = check(&state, &env) {
                return Err(TestCaseError::fail(format!(
                    "decide({command:?}) emitted {:?} that evolve rejects: {e}\nstate: {state:?}",
                    env.event
                )));
            }
            let before = state.attempt;
            state = evolve(state, &env);
            prop_assert!(state.attempt >= before, "attempt went back");
            log.push(env);
        }
    }
    Ok((state, log))
}

fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        arb_spec().prop_map(|spec| Event::Submitted(Submitted { spec })),
        Just(Event::Queued(Queued {
            queue: QueueName::default(),
            priority: Priority::Normal,
            kind: "shell".into(),
            worker_labels: Default::default(),
            capacity: None,
            spec: None,
        })),
        arb_spec().prop_map(|spec| Event::Queued(Queued {
            queue: spec.queue.clone(),
            priority: spec.priority,
            kind: spec.kind.clone(),
            worker_labels: Default::default(),
            capacity: None,
            spec: Some(Box::new(spec)),
        })),
        (0u8..3).prop_map(|w| Event::Started(Started {
            worker: format!("w{w}"),
            deadline: None,
        })),
        Just(Event::Progress(Progress {
            percent: Some(f32::NAN),
            message: None,
            counters: BTreeMap::new()
        })),
        Just(Event::Heartbeat(Heartbeat {
            worker: "w0".into()
        })),
        Just(Event::Succeeded(Succeeded {
            output: serde_json::Value::Null,
            resources: None,
        })),
        arb_error().prop_map(|error| Event::Failed(Failed {
            error,
            resources: None
        })),
        (0i64..100, arb_class()).prop_map(|(s, class)| Event::RetryScheduled(RetryScheduled {
            at: t0() + TimeDelta::seconds(s),
            class
        })),
        Just(Event::CancelRequested(CancelRequested {
            reason: String::new(),
            operation: Some("op".into()),
        })),
        Just(Event::Cancelled(Cancelled {
            reason: String::new(),
            operation: None,
            resources: None,
        })),
        prop_oneof![Just(TimeoutScope::Attempt), Just(TimeoutScope::Execution)].prop_map(|scope| {
            Event::TimedOut(TimedOut {
                scope,
                resources: None,
            })
        }),
        Just(Event::AttemptLost(AttemptLost {
            worker: "w1".into()
        })),
        Just(Event::DeadLettered(DeadLettered {
            reason: DeadLetterReason::AttemptsExhausted,
            errors: vec![]
        })),
        Just(Event::Rejected(Rejected {
            field: None,
            reason: "bad".into()
        })),
    ]
}

fn arb_envelope() -> impl Strategy<Value = Envelope> {
    (
        arb_event(),
        0u32..6,
        prop_oneof![9 => Just("e1"), 1 => Just("e2")],
        0i64..1000,
    )
        .prop_map(|(event, attempt, id, s)| {
            Envelope::new(
                ExecutionId::new(id).unwrap(),
                attempt,
                t0() + TimeDelta::seconds(s),
                "/props",
                event,
            )
        })
}

/// How a worker recorded an outcome before [`Command::Finish`]: the command
/// for what it saw, then, on each refusal, the next rule (a result refused
/// for a cancel request becomes the cancel confirmation; a confirmation
/// without a request becomes a failure of class `cancelled`).
fn by_fallbacks(
    state: &ExecutionState,
    attempt: u32,
    outcome: &Outcome,
    now: DateTime<Utc>,
) -> Result<Vec<decider::Fact>, Rejection> {
    #[allow(clippy::large_enum_variant)] // one per case
    enum Step {
        Record(Command),
        ConfirmCancel,
    }
    // The command it replaced: the attempt runs, and a cancel was requested.
    let confirm_cancel = || {
        let alive = Command::Heartbeat {
            attempt,
            worker: "w0".into(),
        };
        decide(&alive, state, now)?;
        if !state.cancel_requested {
            return Err(Rejection::WrongStatus {
                command: "confirm the cancel of",
                status: state.status,
            });
        }
        let reason = state.reason.clone().unwrap_or_default();
        Ok(vec![decider::Fact {
            attempt: state.attempt,
            event: Event::Cancelled(Cancelled {
                reason,
                operation: state.cancelled_by_operation.clone(),
                resources: None,
            }),
        }])
    };
    let mut step = match outcome.clone() {
        Outcome::Succeeded { output } => Step::Record(Command::Succeed { attempt, output }),
        Outcome::Failed { error } => Step::Record(Command::Fail { attempt, error }),
        Outcome::Cancelled => Step::ConfirmCancel,
        Outcome::TimedOut => Step::Record(Command::TimeOutAttempt { attempt }),
    };
    loop {
        let result = match &step {
            Step::Record(command) => decide(command, state, now),
            Step::ConfirmCancel => confirm_cancel(),
        };
        step = match (result, &step) {
            (Ok(facts), _) => return Ok(facts),
            (Err(Rejection::CancelRequested), _) => Step::ConfirmCancel,
            (
                Err(Rejection::WrongStatus {
                    status: Status::Running,
                    ..
                }),
                Step::ConfirmCancel,
            ) => Step::Record(Command::Fail {
                attempt,
                error: TaskError::new(
                    ErrorClass::Cancelled,
                    "stopped by a cancel signal that has no recorded cancel request",
                ),
            }),
            (Err(e), _) => return Err(e),
        };
    }
}

/// A rejection without the command's name, which differs between commands.
fn unnamed(rejection: Rejection) -> Rejection {
    match rejection {
        Rejection::WrongStatus { status, .. } => Rejection::WrongStatus {
            command: "",
            status,
        },
        other => other,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// decide never emits an event that evolve rejects, never acts on a
    /// terminal execution, and attempts never go back (checked in `run`).
    #[test]
    fn decide_only_emits_events_that_evolve_accepts(cmds in prop::collection::vec(arb_cmd(), 0..40)) {
        run(&cmds)?;
    }

    /// Folding any sequence of events, possible or not, never panics, and
    /// the attempt never decreases.
    #[test]
    fn folding_any_events_never_panics(events in prop::collection::vec(arb_envelope(), 0..60)) {
        let mut state = ExecutionState::default();
        for env in &events {
            let before = state.attempt;
            state = evolve(state, env);
            prop_assert!(state.attempt >= before);
        }
    }

    /// Once terminal, no event changes the state.
    #[test]
    fn terminal_states_are_absorbing(
        cmds in prop::collection::vec(arb_cmd(), 0..40),
        tail in prop::collection::vec(arb_envelope(), 1..20),
    ) {
        let (state, _) = run(&cmds)?;
        if state.status.is_terminal() {
            let after = tail.iter().fold(state.clone(), evolve);
            prop_assert_eq!(after, state);
        }
    }

    /// Folding the same events twice gives the same state, and folding the
    /// recorded log of a run rebuilds the state the run ended with.
    #[test]
    fn evolve_is_deterministic(
        cmds in prop::collection::vec(arb_cmd(), 0..40),
        noise in prop::collection::vec(arb_envelope(), 0..20),
    ) {
        let (state, log) = run(&cmds)?;
        prop_assert_eq!(decider::fold(&log), state);
        let mixed: Vec<Envelope> = log.iter().chain(noise.iter()).cloned().collect();
        prop_assert_eq!(decider::fold(&mixed), decider::fold(&mixed));
    }

    /// `Finish` records what the chain of commands it replaced recorded,
    /// or refuses what that chain refused; when it records, it is one
    /// event that ends the running attempt.
    #[test]
    fn finish_resolves_like_the_fallbacks_it_replaces(
        cmds in prop::collection::vec(arb_cmd(), 0..40),
        pick in arb_pick(),
        outcome in arb_outcome(),
    ) {
        let (state, _) = run(&cmds)?;
        let attempt = match pick {
            Pick::Current => state.attempt,
            Pick::Fixed(n) => n,
        };
        let finish = Command::Finish { attempt, outcome: outcome.clone(), resources: None };
        let now = t0();
        let decided = decide(&finish, &state, now);
        let expected = by_fallbacks(&state, attempt, &outcome, now);
        prop_assert_eq!(decided.clone().map_err(unnamed), expected.map_err(unnamed));
        if let Ok(facts) = decided {
            prop_assert_eq!(facts.len(), 1);
            let env = Envelope::new(exec(), facts[0].attempt, now, "/props", facts[0].event.clone());
            let after = evolve(state.clone(), &env);
            prop_assert_ne!(after.status, Status::Running, "the attempt still runs: {:?}", env.event);
            if state.cancel_requested && outcome != Outcome::TimedOut {
                prop_assert_eq!(after.status, Status::Cancelled);
            }
        }
    }

    /// Each attempt ends once (succeeded, failed, timed out or lost), and
    /// each execution reaches one terminal event.
    #[test]
    fn every_attempt_and_execution_ends_at_most_once(
        cmds in prop::collection::vec(arb_cmd(), 0..60),
    ) {
        let (_, log) = run(&cmds)?;
        let mut ended = BTreeMap::new();
        for env in &log {
            let ends_attempt = match &env.event {
                Event::Succeeded(_) | Event::Failed(_) | Event::AttemptLost(_) => true,
                Event::TimedOut(t) => t.scope == TimeoutScope::Attempt,
                _ => false,
            };
            if ends_attempt {
                *ended.entry(env.attempt).or_insert(0u32) += 1;
            }
        }
        prop_assert!(ended.values().all(|&n| n == 1), "attempt endings: {ended:?}");
        let terminal = log
            .iter()
            .filter(|env| decider::status_after(&env.event).is_terminal())
            .count();
        prop_assert!(terminal <= 1, "{terminal} terminal events");
    }
}

#[test]
fn a_failing_task_is_retried_then_dead_lettered_with_its_history() {
    let mut spec = TaskSpec::new("shell");
    spec.retry.max_attempts = 2;
    let worker = |n: u8| Cmd::Claim(n, false);
    let fail = Cmd::Fail(Pick::Current, TaskError::new(ErrorClass::Network, "reset"));
    let cmds = vec![
        Cmd::Submit(spec),
        Cmd::Enqueue,
        worker(1),
        fail.clone(),
        Cmd::Resolve(0.5),
        Cmd::Enqueue,
        worker(2),
        fail,
        Cmd::Resolve(0.5),
    ];
    let (state, log) = run(&cmds).unwrap();
    assert_eq!(state.status, decider::Status::DeadLettered);
    assert_eq!(state.attempt, 2);
    let Event::DeadLettered(dl) = &log.last().unwrap().event else {
        panic!("expected a dead letter, got {:?}", log.last());
    };
    assert_eq!(dl.reason, DeadLetterReason::AttemptsExhausted);
    assert_eq!(
        dl.errors.iter().map(|e| e.attempt).collect::<Vec<_>>(),
        [1, 2]
    );
    let Event::RetryScheduled(r) = &log[4].event else {
        panic!("expected a retry, got {:?}", log[4]);
    };
    // First retry: full jitter 0.5 of the 1 s base window.
    assert_eq!(
        r.at,
        t0() + TimeDelta::seconds(4) + TimeDelta::milliseconds(500)
    );
}

#[test]
fn a_second_claim_records_the_lost_attempt_and_starts_the_next() {
    let (state, log) = run(&[
        Cmd::Submit(TaskSpec::new("shell")),
        Cmd::Enqueue,
        Cmd::Claim(1, false),
        Cmd::Claim(2, true),
    ])
    .unwrap();
    assert_eq!(state.status, decider::Status::Running);
    assert_eq!(state.attempt, 2);
    assert_eq!(state.worker.as_deref(), Some("w2"));
    assert_eq!(state.failures, 0, "a lost attempt is not a failure");
    let types: Vec<_> = log.iter().map(|e| e.event_type().as_str()).collect();
    assert_eq!(
        types,
        ["submitted", "queued", "started", "attempt_lost", "started"]
    );
}

#[test]
fn a_first_delivery_never_takes_over_a_running_attempt() {
    let (state, _) = run(&[
        Cmd::Submit(TaskSpec::new("shell")),
        Cmd::Enqueue,
        Cmd::Claim(1, false),
    ])
    .unwrap();
    let claim = Command::Claim {
        worker: "w2".into(),
        redelivered: false,
    };
    assert_eq!(
        decide(&claim, &state, t0()).unwrap_err(),
        runlog_events::Rejection::AlreadyClaimed {
            worker: "w1".into()
        }
    );
}

#[test]
fn a_result_cannot_land_after_a_cancel_request() {
    let (state, _) = run(&[
        Cmd::Submit(TaskSpec::new("shell")),
        Cmd::Enqueue,
        Cmd::Claim(1, false),
        Cmd::Cancel,
    ])
    .unwrap();
    let succeed = Command::Succeed {
        attempt: 1,
        output: serde_json::Value::Null,
    };
    assert_eq!(
        decide(&succeed, &state, t0()).unwrap_err(),
        runlog_events::Rejection::CancelRequested
    );
    let finish = |outcome| Command::Finish {
        attempt: 1,
        outcome,
        resources: None,
    };
    for outcome in [
        Outcome::Succeeded {
            output: serde_json::Value::Null,
        },
        Outcome::Failed {
            error: TaskError::new(ErrorClass::Network, "reset"),
        },
        Outcome::Cancelled,
    ] {
        let facts = decide(&finish(outcome.clone()), &state, t0()).unwrap();
        assert!(
            matches!(&facts[..], [fact] if matches!(fact.event, Event::Cancelled(_))),
            "{outcome:?} ended as {facts:?}"
        );
    }
    let facts = decide(&finish(Outcome::TimedOut), &state, t0()).unwrap();
    assert!(matches!(
        &facts[..],
        [fact] if fact.event == Event::TimedOut(TimedOut { scope: TimeoutScope::Attempt, resources: None })
    ));
}

#[test]
fn an_attempt_that_times_out_after_a_cancel_request_is_not_retried() {
    let (state, log) = run(&[
        Cmd::Submit(TaskSpec::new("shell")),
        Cmd::Enqueue,
        Cmd::Claim(1, false),
        Cmd::Cancel,
        Cmd::Finish(Pick::Current, Outcome::TimedOut),
        Cmd::Resolve(0.5),
    ])
    .unwrap();
    assert_eq!(state.status, Status::Cancelled, "{log:?}");
    assert!(
        !log.iter()
            .any(|e| matches!(e.event, Event::RetryScheduled(_))),
        "{log:?}"
    );
}

#[test]
fn a_cancel_signal_without_a_cancel_request_fails_the_attempt_as_cancelled() {
    let (state, _) = run(&[
        Cmd::Submit(TaskSpec::new("shell")),
        Cmd::Enqueue,
        Cmd::Claim(1, false),
        Cmd::Finish(Pick::Current, Outcome::Cancelled),
    ])
    .unwrap();
    assert_eq!(state.status, Status::Failed);
    assert_eq!(state.errors[0].error.class, ErrorClass::Cancelled);
}

#[test]
fn a_lost_attempt_cannot_finish() {
    let (state, _) = run(&[
        Cmd::Submit(TaskSpec::new("shell")),
        Cmd::Enqueue,
        Cmd::Claim(1, false),
        Cmd::Claim(2, true),
    ])
    .unwrap();
    let late = Command::Finish {
        attempt: 1,
        outcome: Outcome::Succeeded {
            output: serde_json::Value::Null,
        },
        resources: None,
    };
    assert_eq!(
        decide(&late, &state, t0()).unwrap_err(),
        Rejection::StaleAttempt {
            current: 2,
            given: 1
        }
    );
}

#[test]
fn a_queued_execution_is_cancelled_at_once() {
    let (state, log) = run(&[
        Cmd::Submit(TaskSpec::new("shell")),
        Cmd::Enqueue,
        Cmd::Cancel,
    ])
    .unwrap();
    assert_eq!(state.status, decider::Status::Cancelled);
    assert_eq!(log.last().unwrap().event_type().as_str(), "cancelled");
}

#[test]
fn a_permanent_error_is_dead_lettered_without_retry() {
    let (state, log) = run(&[
        Cmd::Submit(TaskSpec::new("shell")),
        Cmd::Enqueue,
        Cmd::Claim(1, false),
        Cmd::Fail(
            Pick::Current,
            TaskError::new(ErrorClass::InvalidInput, "bad"),
        ),
        Cmd::Resolve(0.0),
    ])
    .unwrap();
    assert_eq!(state.status, decider::Status::DeadLettered);
    let Event::DeadLettered(dl) = &log.last().unwrap().event else {
        panic!()
    };
    assert_eq!(dl.reason, DeadLetterReason::Permanent);
}

#[test]
fn an_invalid_submission_is_refused_with_the_field() {
    let mut spec = TaskSpec::new("shell");
    spec.retry.max_attempts = 0;
    let err = decide(&Command::Submit { spec }, &ExecutionState::default(), t0()).unwrap_err();
    assert_eq!(err.code(), "invalid_task");
    assert!(err.to_string().contains("retry.max_attempts"));
}

#[test]
fn what_each_attempt_used_lands_on_its_ending_event_and_sums_per_execution() {
    use runlog_events::resources::Resources;
    let mut spec = TaskSpec::new("shell");
    spec.retry.max_attempts = 2;
    let (mut state, _) = run(&[Cmd::Submit(spec), Cmd::Enqueue, Cmd::Claim(1, false)]).unwrap();
    let used = |cpu: u64, rss: u64| Resources {
        wall_ms: 1000,
        cpu_user_ms: Some(cpu),
        cpu_system_ms: Some(10),
        peak_rss_bytes: Some(rss),
        output_bytes: 40,
        log_bytes: 100,
        ..Resources::default()
    };
    let apply = |state: &mut ExecutionState, command: Command| {
        let facts = decide(&command, state, t0()).unwrap();
        let mut ended = None;
        for fact in facts {
            let env = Envelope::new(exec(), fact.attempt, t0(), "/test", fact.event);
            ended.get_or_insert(env.event.clone());
            *state = decider::evolve(std::mem::take(state), &env);
        }
        ended
    };
    let failed = apply(
        &mut state,
        Command::Finish {
            attempt: 1,
            outcome: Outcome::Failed {
                error: TaskError::new(ErrorClass::Network, "reset"),
            },
            resources: Some(used(500, 100)),
        },
    );
    assert!(
        matches!(&failed, Some(Event::Failed(f)) if f.resources == Some(used(500, 100))),
        "{failed:?}"
    );
    apply(&mut state, Command::ResolveFailure { jitter: 0.5 });
    apply(&mut state, Command::Enqueue);
    apply(
        &mut state,
        Command::Claim {
            worker: "w2".into(),
            redelivered: false,
        },
    );
    // A timeout the worker saw carries what the attempt used too.
    let timed_out = apply(
        &mut state,
        Command::Finish {
            attempt: 2,
            outcome: Outcome::TimedOut,
            resources: Some(used(300, 400)),
        },
    );
    assert!(
        matches!(&timed_out, Some(Event::TimedOut(t)) if t.resources.is_some()),
        "{timed_out:?}"
    );
    let totals = state.resources.as_deref().expect("totals");
    assert_eq!(totals.attempts, 2);
    assert_eq!(totals.wall_ms, 2000);
    assert_eq!(totals.cpu_ms(), Some(820));
    assert_eq!(totals.peak_rss_bytes, Some(400));
    assert_eq!(totals.output_bytes + totals.log_bytes, 280);
}
