//! The rules of an execution, as two pure functions.
//!
//! - [`evolve`] folds one recorded event into the state. It is total: an
//!   event that is impossible in the current state is ignored (and
//!   [`check`] says why), so a corrupt or hostile log can never crash a fold.
//! - [`decide`] turns a command into the events that record it, or a
//!   [`Rejection`]. It is the only place where the rules are checked.
//!
//! Neither reads a clock, draws a random number or does I/O: time and jitter
//! are arguments, which is what lets the property tests drive them freely.
//!
//! ```text
//! New ─Submitted→ Pending ─Queued→ Queued ─Started→ Running ─Succeeded→ Succeeded
//!                                     ▲  ▲                  ├─Failed / TimedOut(attempt)→ Failed
//!                                     │  └──AttemptLost─────┤    ├─RetryScheduled→ RetryScheduled ─Queued→ Queued
//!                                     │                     │    └─DeadLettered→ DeadLettered
//!                                     │                     └─CancelRequested→ Running ─Cancelled→ Cancelled
//! any live state ─Cancelled→ Cancelled, ─TimedOut(execution)→ TimedOut, New/Pending ─Rejected→ Rejected
//! ```
//!
//! # Examples
//! ```
//! use runlog_events::decider::{decide, evolve, Command, ExecutionState, Status};
//! use runlog_events::{Envelope, ExecutionId, TaskSpec};
//!
//! let id = ExecutionId::generate();
//! let now = chrono::Utc::now();
//! let mut state = ExecutionState::default();
//! for command in [
//!     Command::Submit { spec: TaskSpec::new("shell") },
//!     Command::Enqueue,
//!     Command::Claim { worker: "w1".into(), redelivered: false },
//!     Command::Succeed { attempt: 1, output: serde_json::json!({"ok": true}) },
//! ] {
//!     for fact in decide(&command, &state, now).unwrap() {
//!         let envelope = Envelope::new(id.clone(), fact.attempt, now, "/doc", fact.event);
//!         state = evolve(state, &envelope);
//!     }
//! }
//! assert_eq!(state.status, Status::Succeeded);
//! ```

use chrono::{DateTime, TimeDelta, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, TraceParent};
use crate::event::{
    AttemptError, AttemptLost, CancelRequested, Cancelled, DeadLetterReason, DeadLettered, Event,
    EventType, Failed, Heartbeat, LogBatch, Progress, Queued, Rejected, RetryScheduled, Started,
    Submitted, Succeeded, TimedOut, TimeoutScope,
};
use crate::id::{ExecutionId, validate_token};
use crate::resources::{ResourceTotals, Resources};
use crate::spec::{ErrorClass, FieldError, RetryPolicy, TaskError, TaskSpec};

/// Where an execution is in its life.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Nothing recorded yet.
    #[default]
    New,
    /// Submitted, not dispatched yet.
    Pending,
    /// An attempt waits for a worker.
    Queued,
    /// A worker runs an attempt.
    Running,
    /// The last attempt failed; a retry or a dead letter follows.
    Failed,
    /// The next attempt waits for its backoff.
    RetryScheduled,
    /// Done, with an output. Terminal.
    Succeeded,
    /// Stopped on request. Terminal.
    Cancelled,
    /// The execution's deadline passed. Terminal.
    TimedOut,
    /// Failed for good; kept for inspection and replay. Terminal.
    DeadLettered,
    /// The submission was invalid. Terminal.
    Rejected,
}

impl Status {
    /// Every status, in the order of an execution's life.
    pub const ALL: [Status; 11] = [
        Status::New,
        Status::Pending,
        Status::Queued,
        Status::Running,
        Status::Failed,
        Status::RetryScheduled,
        Status::Succeeded,
        Status::Cancelled,
        Status::TimedOut,
        Status::DeadLettered,
        Status::Rejected,
    ];

    /// Whether no event can change this state any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Succeeded
                | Status::Cancelled
                | Status::TimedOut
                | Status::DeadLettered
                | Status::Rejected
        )
    }

    /// The state's name as used in the API (`retry_scheduled`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Pending => "pending",
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Failed => "failed",
            Status::RetryScheduled => "retry_scheduled",
            Status::Succeeded => "succeeded",
            Status::Cancelled => "cancelled",
            Status::TimedOut => "timed_out",
            Status::DeadLettered => "dead_lettered",
            Status::Rejected => "rejected",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of one execution, folded from its events.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct ExecutionState {
    /// The execution, once any event was recorded.
    pub id: Option<ExecutionId>,
    /// Where it is.
    pub status: Status,
    /// The attempt that runs, waits or ran last (1-based; 0 before the first).
    pub attempt: u32,
    /// What was submitted (boxed: a read model holds many states, most of
    /// them without a spec's worth of room to spare).
    pub spec: Option<Box<TaskSpec>>,
    /// The worker of the current attempt, while it runs.
    pub worker: Option<String>,
    /// A cancel was requested while the attempt runs.
    pub cancel_requested: bool,
    /// Failed attempts so far (lost attempts do not count).
    pub failures: u32,
    /// Every failed attempt, oldest first.
    pub errors: Vec<AttemptError>,
    /// When the next attempt is due, while a retry is scheduled.
    pub retry_at: Option<DateTime<Utc>>,
    /// The latest progress of the running attempt.
    pub progress: Option<Box<Progress>>,
    /// The output, once succeeded.
    pub output: Option<Box<serde_json::Value>>,
    /// The reason of a rejection, a cancel or a dead letter, in words.
    pub reason: Option<String>,
    /// Why it was dead-lettered, once it was.
    #[serde(default)]
    pub dead_letter_reason: Option<DeadLetterReason>,
    /// The bulk operation that cancelled it (or asked to), if one did.
    #[serde(default)]
    pub cancelled_by_operation: Option<String>,
    /// When it was submitted.
    pub submitted_at: Option<DateTime<Utc>>,
    /// When the current attempt was queued (or queued again after its
    /// worker was lost): its wait for a worker counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<DateTime<Utc>>,
    /// When the current attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the current attempt must end, if it has a deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_deadline: Option<DateTime<Utc>>,
    /// When the execution reached a terminal state.
    pub finished_at: Option<DateTime<Utc>>,
    /// The trace the execution belongs to: the parent of its span, as its
    /// first event carried it. Every later event carries it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<TraceParent>,
    /// What its measured attempts used, summed (absent until a worker
    /// recorded an attempt's resources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<ResourceTotals>>,
}

/// Why [`check`] refuses an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTransition {
    /// The event belongs to another execution.
    #[error("event of execution {got} folded into execution {expected}")]
    WrongExecution {
        /// This state's execution.
        expected: ExecutionId,
        /// The event's execution.
        got: ExecutionId,
    },
    /// The event cannot happen in this state.
    #[error("{event} cannot follow status {status}")]
    WrongStatus {
        /// The event type.
        event: EventType,
        /// The current status.
        status: Status,
    },
    /// The event names another attempt than the state's.
    #[error("{event} for attempt {got}, but the execution is at attempt {expected}")]
    WrongAttempt {
        /// The event type.
        event: EventType,
        /// The attempt the state expects.
        expected: u32,
        /// The event's attempt.
        got: u32,
    },
}

/// The status an event leaves its execution in when it applies, read from
/// the event alone: what a feed filter or a live table needs while it sees
/// one event at a time. [`evolve`] is the truth; it also refuses events.
pub fn status_after(event: &Event) -> Status {
    match event {
        Event::Submitted(_) => Status::Pending,
        Event::Queued(_) | Event::AttemptLost(_) => Status::Queued,
        Event::Started(_)
        | Event::Progress(_)
        | Event::Log(_)
        | Event::Heartbeat(_)
        | Event::CancelRequested(_) => Status::Running,
        Event::Succeeded(_) => Status::Succeeded,
        Event::Failed(_) => Status::Failed,
        Event::TimedOut(t) if t.scope == crate::event::TimeoutScope::Attempt => Status::Failed,
        Event::TimedOut(_) => Status::TimedOut,
        Event::RetryScheduled(_) => Status::RetryScheduled,
        Event::Cancelled(_) => Status::Cancelled,
        Event::DeadLettered(_) => Status::DeadLettered,
        Event::Rejected(_) => Status::Rejected,
    }
}

/// Folds one event into the state. Impossible events leave the state
/// unchanged; use [`check`] to learn why.
pub fn evolve(mut state: ExecutionState, envelope: &Envelope) -> ExecutionState {
    let _ignored = apply(&mut state, envelope);
    state
}

/// Folds one event into `state` in place, checking it once; an impossible
/// event leaves the state unchanged and says why. Folds that count skipped
/// events (replays, projections) use this instead of `check` + `evolve`.
pub fn apply(state: &mut ExecutionState, envelope: &Envelope) -> Result<(), InvalidTransition> {
    check(state, envelope)?;
    *state = transition(std::mem::take(state), envelope);
    Ok(())
}

/// Folds a sequence of events from the empty state.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> ExecutionState {
    events.into_iter().fold(ExecutionState::default(), evolve)
}

/// Says whether `evolve` would apply `env` to `state`, and if not, why.
pub fn check(state: &ExecutionState, env: &Envelope) -> Result<(), InvalidTransition> {
    use Status as S;
    let ty = env.event_type();
    if let Some(id) = &state.id
        && *id != env.execution
    {
        return Err(InvalidTransition::WrongExecution {
            expected: id.clone(),
            got: env.execution.clone(),
        });
    }
    let status_ok = match &env.event {
        Event::Submitted(_) => state.status == S::New,
        Event::Rejected(_) => matches!(state.status, S::New | S::Pending),
        // The first event of an execution an engine door admitted. Checked
        // like a submission, since any publisher could append one.
        Event::Queued(Queued {
            spec: Some(spec), ..
        }) => state.status == S::New && spec.validate_recorded().is_ok(),
        Event::Queued(_) => matches!(state.status, S::Pending | S::RetryScheduled),
        Event::Started(_) => state.status == S::Queued,
        Event::Progress(_) | Event::Log(_) | Event::Heartbeat(_) => state.status == S::Running,
        // After a cancel request the attempt may only end cancelled.
        Event::Succeeded(_) | Event::Failed(_) | Event::AttemptLost(_) => {
            state.status == S::Running && !state.cancel_requested
        }
        Event::CancelRequested(_) => state.status == S::Running && !state.cancel_requested,
        Event::TimedOut(t) => match t.scope {
            TimeoutScope::Attempt => state.status == S::Running,
            TimeoutScope::Execution => state.status != S::New && !state.status.is_terminal(),
        },
        Event::RetryScheduled(_) => state.status == S::Failed,
        // A running attempt is cancelled only after a request reached it.
        Event::Cancelled(_) if state.status == S::Running => state.cancel_requested,
        Event::DeadLettered(_) | Event::Cancelled(_) => {
            state.status != S::New && !state.status.is_terminal()
        }
    };
    if !status_ok {
        return Err(InvalidTransition::WrongStatus {
            event: ty,
            status: state.status,
        });
    }
    let expected = match &env.event {
        Event::Submitted(_) | Event::Rejected(_) => 0,
        Event::Queued(_) if matches!(state.status, S::New | S::Pending) => 1,
        Event::RetryScheduled(_) => state.attempt.saturating_add(1),
        _ => state.attempt,
    };
    if env.attempt != expected {
        return Err(InvalidTransition::WrongAttempt {
            event: ty,
            expected,
            got: env.attempt,
        });
    }
    Ok(())
}

fn transition(mut s: ExecutionState, env: &Envelope) -> ExecutionState {
    s.id.get_or_insert_with(|| env.execution.clone());
    if s.traceparent.is_none() {
        s.traceparent.clone_from(&env.traceparent);
    }
    match &env.event {
        Event::Submitted(Submitted { spec }) => {
            s.status = Status::Pending;
            s.spec = Some(Box::new(spec.clone()));
            s.submitted_at = Some(env.time);
        }
        Event::Rejected(r) => {
            s.status = Status::Rejected;
            s.reason = Some(match &r.field {
                Some(field) => format!("{field}: {}", r.reason),
                None => r.reason.clone(),
            });
        }
        Event::Queued(q) => {
            if let Some(spec) = &q.spec {
                s.spec = Some(spec.clone());
                s.submitted_at = Some(env.time);
            }
            s.status = Status::Queued;
            s.attempt = env.attempt;
            s.retry_at = None;
            s.queued_at = Some(env.time);
        }
        Event::Started(Started { worker, deadline }) => {
            s.status = Status::Running;
            s.worker = Some(worker.clone());
            s.started_at = Some(env.time);
            s.attempt_deadline = *deadline;
            s.progress = None;
        }
        Event::Progress(p) => {
            // A percentage outside 0..=100 (or NaN) from a foreign client is
            // dropped, not stored: it would poison comparisons and bars.
            let mut p = p.clone();
            p.percent = p.percent.filter(|v| (0.0..=100.0).contains(v));
            s.progress = Some(Box::new(p));
        }
        Event::Log(_) | Event::Heartbeat(_) => {}
        Event::Succeeded(Succeeded { output, resources }) => {
            count(&mut s, resources.as_ref());
            s.status = Status::Succeeded;
            s.output = Some(Box::new(output.clone()));
        }
        Event::Failed(Failed { error, resources }) => {
            count(&mut s, resources.as_ref());
            record_failure(&mut s, env, error.clone());
        }
        Event::TimedOut(TimedOut {
            scope: TimeoutScope::Attempt,
            resources,
        }) => {
            count(&mut s, resources.as_ref());
            let error = TaskError::new(ErrorClass::Timeout, "the attempt ran past its deadline");
            record_failure(&mut s, env, error);
        }
        Event::TimedOut(TimedOut {
            scope: TimeoutScope::Execution,
            ..
        }) => {
            s.status = Status::TimedOut;
            s.reason = Some("the execution ran past its deadline".to_owned());
        }
        Event::AttemptLost(_) => {
            s.status = Status::Queued;
            s.attempt = s.attempt.saturating_add(1);
            s.worker = None;
            s.queued_at = Some(env.time);
        }
        Event::RetryScheduled(RetryScheduled { at, .. }) => {
            s.status = Status::RetryScheduled;
            s.attempt = env.attempt;
            s.retry_at = Some(*at);
        }
        Event::CancelRequested(CancelRequested { reason, operation }) => {
            s.cancel_requested = true;
            s.reason = Some(reason.clone());
            s.cancelled_by_operation.clone_from(operation);
        }
        Event::Cancelled(Cancelled {
            reason,
            operation,
            resources,
        }) => {
            count(&mut s, resources.as_ref());
            s.status = Status::Cancelled;
            s.reason = Some(reason.clone());
            if operation.is_some() {
                s.cancelled_by_operation.clone_from(operation);
            }
        }
        Event::DeadLettered(DeadLettered { reason, .. }) => {
            s.status = Status::DeadLettered;
            s.dead_letter_reason = Some(*reason);
            s.reason = Some(
                match reason {
                    DeadLetterReason::AttemptsExhausted => "every allowed attempt failed",
                    DeadLetterReason::Permanent => "the error is not retryable",
                    DeadLetterReason::MaxDeliveries => "workers kept dying on this task",
                }
                .to_owned(),
            );
        }
    }
    if s.status.is_terminal() {
        s.finished_at.get_or_insert(env.time);
        s.worker = None;
        s.retry_at = None;
    }
    s
}

/// Adds an attempt's measured resources to the execution's totals.
fn count(s: &mut ExecutionState, resources: Option<&Resources>) {
    if let Some(r) = resources {
        s.resources.get_or_insert_default().add(r);
    }
}

fn record_failure(s: &mut ExecutionState, env: &Envelope, error: TaskError) {
    s.status = Status::Failed;
    s.failures = s.failures.saturating_add(1);
    s.worker = None;
    s.errors.push(AttemptError {
        attempt: env.attempt,
        at: env.time,
        error,
    });
}

/// What a caller wants to happen to an execution.
///
/// On the wire (JSON or MessagePack) a command is an object whose `command`
/// field names the variant: `{"command": "request_cancel", "reason": "..."}`.
#[allow(clippy::large_enum_variant)] // `Submit` holds the spec; commands are short-lived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Record a new execution.
    Submit {
        /// What to run.
        spec: TaskSpec,
    },
    /// Record a new execution that an engine door has validated: queued for
    /// its first attempt in one event (`queued` with the spec), or
    /// `submitted` when its `not_before` is still ahead.
    Admit {
        /// What to run.
        spec: TaskSpec,
    },
    /// End an invalid submission.
    Reject {
        /// The offending field, if any.
        field: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// Hand the next attempt to the workers.
    Enqueue,
    /// A worker takes the queued attempt. If the execution is still running
    /// and the work item was redelivered, its previous worker is gone: that
    /// attempt is recorded as lost and the next one starts.
    Claim {
        /// The claiming worker.
        worker: String,
        /// The server delivered the work item before (its holder stopped
        /// acknowledging it).
        #[serde(default)]
        redelivered: bool,
    },
    /// A running attempt reports progress.
    ReportProgress {
        /// The attempt.
        attempt: u32,
        /// Its progress.
        progress: Progress,
    },
    /// A running attempt wrote lines.
    AppendLog {
        /// The attempt.
        attempt: u32,
        /// The lines.
        batch: LogBatch,
    },
    /// The worker of a running attempt is alive.
    Heartbeat {
        /// The attempt.
        attempt: u32,
        /// The worker.
        worker: String,
    },
    /// A running attempt finished well.
    Succeed {
        /// The attempt.
        attempt: u32,
        /// Its output.
        output: serde_json::Value,
    },
    /// A running attempt failed.
    Fail {
        /// The attempt.
        attempt: u32,
        /// How.
        error: TaskError,
    },
    /// A running attempt passed its deadline.
    TimeOutAttempt {
        /// The attempt.
        attempt: u32,
    },
    /// The execution passed its overall deadline.
    TimeOutExecution,
    /// After a failed attempt: schedule a retry, or dead-letter.
    ResolveFailure {
        /// Where in the full-jitter window the backoff falls, in `[0, 1]`.
        jitter: f64,
    },
    /// The server gave up redelivering the work item of `attempt`. Applies
    /// only while that attempt waits or runs; a later or ended one is not
    /// the item's concern.
    GiveUp {
        /// The attempt the work item was for.
        attempt: u32,
    },
    /// Stop the execution: at once if it is not running, else ask its worker.
    RequestCancel {
        /// Why.
        reason: String,
        /// The bulk operation asking, if one is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        operation: Option<String>,
    },
    /// The worker of a running attempt reports how it ended, and `decide`
    /// records what the log makes of it: after a recorded cancel request a
    /// result or an error ends the attempt `cancelled`; a cancel signal
    /// without a recorded request ends it `failed` with class `cancelled`;
    /// a timeout is a timeout either way.
    Finish {
        /// The attempt.
        attempt: u32,
        /// How it ended, as the worker saw it.
        outcome: Outcome,
        /// What the attempt used, as the worker measured it: recorded on
        /// the event that ends it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resources: Option<Resources>,
    },
}

/// How a running attempt ended, as its worker saw it (the log may know
/// better: see [`Command::Finish`]).
///
/// On the wire it is an object whose `ended` field names the variant:
/// `{"ended": "succeeded", "output": …}`, `{"ended": "cancelled"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "ended", rename_all = "snake_case")]
pub enum Outcome {
    /// The handler returned an output.
    Succeeded {
        /// The output.
        output: serde_json::Value,
    },
    /// The handler returned an error.
    Failed {
        /// The error.
        error: TaskError,
    },
    /// The worker stopped the attempt after a cancel signal.
    Cancelled,
    /// The attempt ran past its deadline and was stopped.
    TimedOut,
}

/// Why a command was refused. Each has a stable [`code`](Rejection::code).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// The submitted spec breaks a rule.
    #[error("invalid task: {0}")]
    Invalid(FieldError),
    /// An execution with this id exists already.
    #[error("the execution already exists")]
    AlreadyExists,
    /// No execution with this id exists.
    #[error("no such execution")]
    NotFound,
    /// The execution has ended.
    #[error("the execution has already ended ({0})")]
    Terminal(Status),
    /// The command does not apply in this state.
    #[error("cannot {command} an execution that is {status}")]
    WrongStatus {
        /// The command.
        command: &'static str,
        /// The current status.
        status: Status,
    },
    /// The command names an attempt that is not the current one.
    #[error("attempt {given} is not the current attempt ({current})")]
    StaleAttempt {
        /// The current attempt.
        current: u32,
        /// The attempt named by the command.
        given: u32,
    },
    /// A cancel was requested: the attempt may only end cancelled.
    #[error("a cancel was requested; the attempt must stop")]
    CancelRequested,
    /// Another worker runs the attempt.
    #[error("worker {worker} already runs this attempt")]
    AlreadyClaimed {
        /// The worker that holds it.
        worker: String,
    },
}

/// Whether an execution in `status` may be retried as a new execution
/// linked to it (`POST /v1/executions/{id}/retry`, a bulk replay): only
/// once it ended without success. `failed` is not an end: a retry or a dead
/// letter still follows it, and a second chain would run beside that one.
pub fn may_retry(status: Status) -> Result<(), Rejection> {
    match status {
        Status::DeadLettered | Status::TimedOut | Status::Cancelled => Ok(()),
        status => Err(Rejection::WrongStatus {
            command: "retry",
            status,
        }),
    }
}

impl Rejection {
    /// A stable, machine-readable code (`stale_attempt`).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Invalid(_) => "invalid_task",
            Rejection::AlreadyExists => "already_exists",
            Rejection::NotFound => "not_found",
            Rejection::Terminal(_) => "already_ended",
            Rejection::WrongStatus { .. } => "wrong_status",
            Rejection::StaleAttempt { .. } => "stale_attempt",
            Rejection::CancelRequested => "cancel_requested",
            Rejection::AlreadyClaimed { .. } => "already_claimed",
        }
    }
}

/// An event `decide` wants recorded, and the attempt it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact {
    /// The attempt for the envelope.
    pub attempt: u32,
    /// The event.
    pub event: Event,
}

fn fact(attempt: u32, event: Event) -> Fact {
    Fact { attempt, event }
}

/// Decides what `command` means for an execution in `state` at `now`.
///
/// Returns the events to record, in order (an empty list means "already
/// done": commands are idempotent where that is natural), or why the
/// command is refused.
pub fn decide(
    command: &Command,
    state: &ExecutionState,
    now: DateTime<Utc>,
) -> Result<Vec<Fact>, Rejection> {
    use Status as S;
    let status = state.status;
    let name = command_name(command);
    if status == S::New
        && !matches!(
            command,
            Command::Submit { .. } | Command::Admit { .. } | Command::Reject { .. }
        )
    {
        return Err(Rejection::NotFound);
    }
    if status.is_terminal() {
        return match command {
            Command::Submit { .. } | Command::Admit { .. } => Err(Rejection::AlreadyExists),
            _ => Err(Rejection::Terminal(status)),
        };
    }
    let wrong = || Rejection::WrongStatus {
        command: name,
        status,
    };
    let running = |attempt: u32| -> Result<(), Rejection> {
        if status != S::Running {
            Err(wrong())
        } else if attempt != state.attempt {
            Err(Rejection::StaleAttempt {
                current: state.attempt,
                given: attempt,
            })
        } else {
            Ok(())
        }
    };
    let a = state.attempt;
    Ok(match command {
        Command::Submit { spec } => {
            if status != S::New {
                return Err(Rejection::AlreadyExists);
            }
            spec.validate_recorded().map_err(Rejection::Invalid)?;
            vec![fact(0, Event::Submitted(Submitted { spec: spec.clone() }))]
        }
        Command::Admit { spec } => {
            if status != S::New {
                return Err(Rejection::AlreadyExists);
            }
            spec.validate_recorded().map_err(Rejection::Invalid)?;
            if spec.not_before.is_some_and(|at| at > now) {
                vec![fact(0, Event::Submitted(Submitted { spec: spec.clone() }))]
            } else {
                let mut queued = queued_of(spec);
                queued.spec = Some(Box::new(spec.clone()));
                vec![fact(1, Event::Queued(queued))]
            }
        }
        Command::Reject { field, reason } => {
            if !matches!(status, S::New | S::Pending) {
                return Err(wrong());
            }
            vec![fact(
                0,
                Event::Rejected(Rejected {
                    field: field.clone(),
                    reason: reason.clone(),
                }),
            )]
        }
        Command::Enqueue => {
            let spec = state.spec.as_ref().ok_or_else(wrong)?;
            let attempt = match status {
                S::Pending => 1,
                S::RetryScheduled => a,
                S::Queued | S::Running => return Ok(vec![]),
                _ => return Err(wrong()),
            };
            vec![fact(attempt, Event::Queued(queued_of(spec)))]
        }
        Command::Claim {
            worker,
            redelivered,
        } => match status {
            _ if validate_token(worker).is_err() => {
                return Err(Rejection::Invalid(FieldError {
                    field: "worker".to_owned(),
                    reason: "must be 1 to 64 letters, digits, '-' or '_'".to_owned(),
                }));
            }
            S::Queued => vec![fact(
                a,
                Event::Started(Started {
                    worker: worker.clone(),
                    deadline: attempt_deadline(state, now),
                }),
            )],
            // A first delivery that finds the attempt running lost a race
            // with another claim: it must not take the attempt over.
            S::Running if !redelivered => {
                return Err(Rejection::AlreadyClaimed {
                    worker: state.worker.clone().unwrap_or_default(),
                });
            }
            // The holder died after a cancel request: nothing is left to stop.
            S::Running if state.cancel_requested => vec![fact(
                a,
                Event::Cancelled(Cancelled {
                    reason: state.reason.clone().unwrap_or_default(),
                    operation: state.cancelled_by_operation.clone(),
                    resources: None,
                }),
            )],
            S::Running => {
                let lost = state.worker.clone().unwrap_or_default();
                vec![
                    fact(a, Event::AttemptLost(AttemptLost { worker: lost })),
                    fact(
                        a.saturating_add(1),
                        Event::Started(Started {
                            worker: worker.clone(),
                            deadline: attempt_deadline(state, now),
                        }),
                    ),
                ]
            }
            _ => return Err(wrong()),
        },
        Command::ReportProgress { attempt, progress } => {
            running(*attempt)?;
            vec![fact(a, Event::Progress(progress.clone()))]
        }
        Command::AppendLog { attempt, batch } => {
            running(*attempt)?;
            vec![fact(a, Event::Log(batch.clone()))]
        }
        Command::Heartbeat { attempt, worker } => {
            running(*attempt)?;
            vec![fact(
                a,
                Event::Heartbeat(Heartbeat {
                    worker: worker.clone(),
                }),
            )]
        }
        Command::Succeed { attempt, output } => {
            running(*attempt)?;
            if state.cancel_requested {
                return Err(Rejection::CancelRequested);
            }
            vec![fact(
                a,
                Event::Succeeded(Succeeded {
                    output: output.clone(),
                    resources: None,
                }),
            )]
        }
        Command::Fail { attempt, error } => {
            running(*attempt)?;
            if state.cancel_requested {
                return Err(Rejection::CancelRequested);
            }
            vec![fact(
                a,
                Event::Failed(Failed {
                    error: error.clone(),
                    resources: None,
                }),
            )]
        }
        Command::TimeOutAttempt { attempt } => {
            running(*attempt)?;
            vec![fact(
                a,
                Event::TimedOut(TimedOut {
                    scope: TimeoutScope::Attempt,
                    resources: None,
                }),
            )]
        }
        Command::TimeOutExecution => vec![fact(
            a,
            Event::TimedOut(TimedOut {
                scope: TimeoutScope::Execution,
                resources: None,
            }),
        )],
        Command::ResolveFailure { jitter } => {
            if status != S::Failed {
                return Err(wrong());
            }
            // A cancel was asked for while the attempt ran, and the attempt
            // ended without confirming it (its deadline stopped it first):
            // the execution ends cancelled, not retried.
            if state.cancel_requested {
                return Ok(vec![fact(
                    a,
                    Event::Cancelled(Cancelled {
                        reason: state.reason.clone().unwrap_or_default(),
                        operation: state.cancelled_by_operation.clone(),
                        resources: None,
                    }),
                )]);
            }
            let default_policy = RetryPolicy::default();
            let policy = state.spec.as_ref().map_or(&default_policy, |s| &s.retry);
            let Some(last) = state.errors.last() else {
                return Err(wrong());
            };
            if policy.allows_retry(&last.error, state.failures) {
                let delay = policy.backoff_ms(state.failures, *jitter, last.error.retry_after_ms);
                let at =
                    now + TimeDelta::milliseconds(i64::try_from(delay).unwrap_or(i64::MAX / 2));
                vec![fact(
                    a.saturating_add(1),
                    Event::RetryScheduled(RetryScheduled {
                        at,
                        class: last.error.class,
                    }),
                )]
            } else {
                let reason = if policy.is_permanent(&last.error) {
                    DeadLetterReason::Permanent
                } else {
                    DeadLetterReason::AttemptsExhausted
                };
                vec![fact(
                    a,
                    Event::DeadLettered(DeadLettered {
                        reason,
                        errors: state.errors.clone(),
                    }),
                )]
            }
        }
        Command::GiveUp { attempt } => {
            if !matches!(status, S::Queued | S::Running) {
                return Err(wrong());
            }
            if *attempt != a {
                return Err(Rejection::StaleAttempt {
                    current: a,
                    given: *attempt,
                });
            }
            vec![fact(
                a,
                Event::DeadLettered(DeadLettered {
                    reason: DeadLetterReason::MaxDeliveries,
                    errors: state.errors.clone(),
                }),
            )]
        }
        Command::RequestCancel { reason, operation } => match status {
            S::Running if state.cancel_requested => vec![],
            S::Running => vec![fact(
                a,
                Event::CancelRequested(CancelRequested {
                    reason: reason.clone(),
                    operation: operation.clone(),
                }),
            )],
            _ => vec![fact(
                a,
                Event::Cancelled(Cancelled {
                    reason: reason.clone(),
                    operation: operation.clone(),
                    resources: None,
                }),
            )],
        },
        Command::Finish {
            attempt,
            outcome,
            resources,
        } => {
            running(*attempt)?;
            vec![fact(a, ending(state, outcome, *resources))]
        }
    })
}

/// The event that records how the running attempt of `state` ended.
fn ending(state: &ExecutionState, outcome: &Outcome, resources: Option<Resources>) -> Event {
    match outcome {
        // The deadline stopped it, whatever else was asked meanwhile.
        Outcome::TimedOut => Event::TimedOut(TimedOut {
            scope: TimeoutScope::Attempt,
            resources,
        }),
        // A result never lands after a recorded cancel: the signal was
        // missed, or raced the result; the attempt ends cancelled.
        _ if state.cancel_requested => Event::Cancelled(Cancelled {
            reason: state.reason.clone().unwrap_or_default(),
            operation: state.cancelled_by_operation.clone(),
            resources,
        }),
        Outcome::Succeeded { output } => Event::Succeeded(Succeeded {
            output: output.clone(),
            resources,
        }),
        Outcome::Failed { error } => Event::Failed(Failed {
            error: error.clone(),
            resources,
        }),
        // A cancel signal without a recorded request (a foreign publish on
        // the cancel subject) stopped the task all the same.
        Outcome::Cancelled => Event::Failed(Failed {
            error: TaskError::new(
                ErrorClass::Cancelled,
                "stopped by a cancel signal that has no recorded cancel request",
            ),
            resources,
        }),
    }
}

/// The `queued` of an attempt of `spec`, without the spec.
fn queued_of(spec: &TaskSpec) -> Queued {
    Queued {
        queue: spec.queue.clone(),
        priority: spec.priority,
        kind: spec.kind.clone(),
        worker_labels: spec.worker_labels.clone(),
        capacity: spec.capacity.clone(),
        spec: None,
    }
}

fn attempt_deadline(state: &ExecutionState, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let ms = state.spec.as_ref()?.attempt_timeout_ms?;
    now.checked_add_signed(TimeDelta::milliseconds(i64::try_from(ms).ok()?))
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Submit { .. } => "submit",
        Command::Admit { .. } => "admit",
        Command::Reject { .. } => "reject",
        Command::Enqueue => "enqueue",
        Command::Claim { .. } => "claim",
        Command::ReportProgress { .. } => "report progress of",
        Command::AppendLog { .. } => "append a log to",
        Command::Heartbeat { .. } => "heartbeat",
        Command::Succeed { .. } => "succeed",
        Command::Fail { .. } => "fail",
        Command::TimeOutAttempt { .. } => "time out an attempt of",
        Command::TimeOutExecution => "time out",
        Command::ResolveFailure { .. } => "resolve the failure of",
        Command::GiveUp { .. } => "give up",
        Command::RequestCancel { .. } => "cancel",
        Command::Finish { .. } => "finish",
    }
}
