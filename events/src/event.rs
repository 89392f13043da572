//! The facts of an execution's life. Each variant is one event type; its
//! payload is the event's body on the wire.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::id::QueueName;
use crate::resources::Resources;
use crate::spec::{ErrorClass, Priority, TaskError, TaskSpec};

/// An event of an execution. The attempt, the time and the ids live in the
/// [`Envelope`](crate::Envelope); the variant holds the type-specific body.
// `Submitted` carries the whole task spec and dwarfs the other variants;
// events are built once per message and moved a few times, so boxing it would
// cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum Event {
    /// A caller asked for a task to run.
    Submitted(Submitted),
    /// An attempt was handed to the workers of a queue.
    Queued(Queued),
    /// A worker claimed an attempt.
    Started(Started),
    /// A running attempt reported progress.
    Progress(Progress),
    /// Lines a running attempt wrote.
    Log(LogBatch),
    /// The worker of a running attempt is alive.
    Heartbeat(Heartbeat),
    /// The attempt finished well; the execution is done.
    Succeeded(Succeeded),
    /// The attempt failed; a retry or a dead letter follows.
    Failed(Failed),
    /// Another attempt will be queued at `at`.
    RetryScheduled(RetryScheduled),
    /// Someone asked a running attempt to stop.
    CancelRequested(CancelRequested),
    /// The execution was cancelled.
    Cancelled(Cancelled),
    /// A deadline passed: of one attempt, or of the whole execution.
    TimedOut(TimedOut),
    /// The worker of an attempt disappeared; the work continues as the next attempt.
    AttemptLost(AttemptLost),
    /// The execution failed for good and waits in the dead-letter set.
    DeadLettered(DeadLettered),
    /// The submission was invalid and never ran.
    Rejected(Rejected),
}

/// Body of [`Event::Submitted`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Submitted {
    /// What to run and how.
    pub spec: TaskSpec,
}

/// Body of [`Event::Queued`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Queued {
    /// The queue the attempt waits on.
    pub queue: QueueName,
    /// Its dispatch priority.
    pub priority: Priority,
    /// The task kind, copied from the spec so a work item can be routed and
    /// limited without reading the history.
    #[serde(default)]
    pub kind: String,
    /// Labels a worker must carry to take the attempt, copied from the spec.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub worker_labels: BTreeMap<String, String>,
    /// The capacity class, copied from the spec when it names one: worker
    /// capacity rules match it instead of the kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// The task, when this `queued` is the execution's first event: the
    /// engine's doors validate a submission and record it queued in one
    /// event (`submitted` is then never written) unless its start is
    /// delayed. Absent on every later `queued`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Box<TaskSpec>>,
}

/// Body of [`Event::Started`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Started {
    /// The worker that claimed the attempt.
    pub worker: String,
    /// When the attempt must end (its start plus the spec's
    /// `attempt_timeout_ms`): the worker stops it then, and the engine
    /// records `timed_out` if the worker cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
}

/// Body of [`Event::Progress`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Progress {
    /// Completion in percent, 0 to 100, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: Option<f32>,
    /// The task's own status line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Named counters (`files_done`, `bytes_done`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counters: BTreeMap<String, u64>,
}

/// Which output a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl LogStream {
    /// Its name on the wire and in the API (`stdout`).
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogLine {
    /// Where the line came from.
    pub stream: LogStream,
    /// The line, without its newline.
    pub line: String,
}

/// Body of [`Event::Log`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogBatch {
    /// Number of the first line of this batch within the attempt (0-based).
    pub first_line: u64,
    /// The lines, in order.
    pub lines: Vec<LogLine>,
    /// Lines dropped before this batch because the task wrote faster than
    /// the log limit allows.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped: u64,
}

/// Body of [`Event::Heartbeat`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Heartbeat {
    /// The worker running the attempt.
    pub worker: String,
}

/// Body of [`Event::Succeeded`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Succeeded {
    /// The task's result.
    #[serde(default)]
    pub output: serde_json::Value,
    /// What the attempt used, when its worker measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// Body of [`Event::Failed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Failed {
    /// What went wrong.
    pub error: TaskError,
    /// What the attempt used, when its worker measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// Body of [`Event::RetryScheduled`]. Its envelope carries the number of the
/// attempt that will run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RetryScheduled {
    /// When the next attempt is queued.
    pub at: DateTime<Utc>,
    /// The class of the failure that caused the retry.
    pub class: ErrorClass,
}

/// Body of [`Event::CancelRequested`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CancelRequested {
    /// Why, in the requester's words.
    #[serde(default)]
    pub reason: String,
    /// The bulk operation that asked for it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

/// Body of [`Event::Cancelled`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Cancelled {
    /// Why, in the requester's words.
    #[serde(default)]
    pub reason: String,
    /// The bulk operation that asked for it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// What the attempt used, when its worker measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// What a deadline applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutScope {
    /// One attempt ran too long; it may be retried.
    Attempt,
    /// The whole execution ran out of time; it ends here.
    Execution,
}

/// Body of [`Event::TimedOut`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TimedOut {
    /// Which deadline passed.
    pub scope: TimeoutScope,
    /// What the attempt used, when its worker measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// Body of [`Event::AttemptLost`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AttemptLost {
    /// The worker that held the attempt.
    pub worker: String,
}

/// Why an execution was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// Every allowed attempt failed.
    AttemptsExhausted,
    /// The error was of a class that is never retried.
    Permanent,
    /// The server gave up redelivering the work item (workers kept dying).
    MaxDeliveries,
}

/// One failed attempt, kept in the dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AttemptError {
    /// The attempt number.
    pub attempt: u32,
    /// When it failed.
    pub at: DateTime<Utc>,
    /// How it failed.
    pub error: TaskError,
}

/// Body of [`Event::DeadLettered`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DeadLettered {
    /// Why the execution will not be retried.
    pub reason: DeadLetterReason,
    /// Every failed attempt, oldest first.
    pub errors: Vec<AttemptError>,
}

/// Body of [`Event::Rejected`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Rejected {
    /// The offending field, when one is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The type of an event, as a subject token and as the suffix of the
/// CloudEvents `ce-type` (`runlog.execution.<type>`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// `submitted`: see [`Event::Submitted`].
    Submitted,
    /// `queued`: see [`Event::Queued`].
    Queued,
    /// `started`: see [`Event::Started`].
    Started,
    /// `progress` (telemetry): see [`Event::Progress`].
    Progress,
    /// `log` (telemetry): see [`Event::Log`].
    Log,
    /// `heartbeat` (telemetry): see [`Event::Heartbeat`].
    Heartbeat,
    /// `succeeded`: see [`Event::Succeeded`].
    Succeeded,
    /// `failed`: see [`Event::Failed`].
    Failed,
    /// `retry_scheduled`: see [`Event::RetryScheduled`].
    RetryScheduled,
    /// `cancel_requested`: see [`Event::CancelRequested`].
    CancelRequested,
    /// `cancelled`: see [`Event::Cancelled`].
    Cancelled,
    /// `timed_out`: see [`Event::TimedOut`].
    TimedOut,
    /// `attempt_lost`: see [`Event::AttemptLost`].
    AttemptLost,
    /// `dead_lettered`: see [`Event::DeadLettered`].
    DeadLettered,
    /// `rejected`: see [`Event::Rejected`].
    Rejected,
}

/// The CloudEvents `type` prefix of every runlog event.
pub const CE_TYPE_PREFIX: &str = "runlog.execution.";

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 15] = [
        EventType::Submitted,
        EventType::Queued,
        EventType::Started,
        EventType::Progress,
        EventType::Log,
        EventType::Heartbeat,
        EventType::Succeeded,
        EventType::Failed,
        EventType::RetryScheduled,
        EventType::CancelRequested,
        EventType::Cancelled,
        EventType::TimedOut,
        EventType::AttemptLost,
        EventType::DeadLettered,
        EventType::Rejected,
    ];

    /// The subject token (`retry_scheduled`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Submitted => "submitted",
            EventType::Queued => "queued",
            EventType::Started => "started",
            EventType::Progress => "progress",
            EventType::Log => "log",
            EventType::Heartbeat => "heartbeat",
            EventType::Succeeded => "succeeded",
            EventType::Failed => "failed",
            EventType::RetryScheduled => "retry_scheduled",
            EventType::CancelRequested => "cancel_requested",
            EventType::Cancelled => "cancelled",
            EventType::TimedOut => "timed_out",
            EventType::AttemptLost => "attempt_lost",
            EventType::DeadLettered => "dead_lettered",
            EventType::Rejected => "rejected",
        }
    }

    /// The CloudEvents type (`runlog.execution.retry_scheduled`).
    pub fn ce_type(self) -> String {
        format!("{CE_TYPE_PREFIX}{}", self.as_str())
    }

    /// Parses a CloudEvents type.
    pub fn from_ce_type(s: &str) -> Option<Self> {
        s.strip_prefix(CE_TYPE_PREFIX)?.parse().ok()
    }

    /// Whether events of this type change the execution's state and go
    /// through the optimistic-concurrency check on `ev.<exec>.>`. The others
    /// (progress, log, heartbeat) are telemetry on their own subjects.
    pub fn is_lifecycle(self) -> bool {
        !matches!(
            self,
            EventType::Progress | EventType::Log | EventType::Heartbeat
        )
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or(())
    }
}

/// Why a broker-held timer exists (see [`crate::timer`]): the token of its
/// subjects, `<p>.sched.<exec>.<timer>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timer {
    /// Queue the next attempt after its backoff.
    Retry,
    /// Queue the first attempt at the spec's `not_before`.
    Start,
    /// End the running attempt at its deadline.
    Attempt,
    /// End the execution at its deadline.
    Deadline,
}

impl Timer {
    /// Every timer.
    pub const ALL: [Timer; 4] = [Timer::Retry, Timer::Start, Timer::Attempt, Timer::Deadline];

    /// The subject token (`retry`).
    pub fn as_str(self) -> &'static str {
        match self {
            Timer::Retry => "retry",
            Timer::Start => "start",
            Timer::Attempt => "attempt",
            Timer::Deadline => "deadline",
        }
    }
}

impl FromStr for Timer {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Timer::ALL.into_iter().find(|t| t.as_str() == s).ok_or(())
    }
}

impl Event {
    /// This event's type.
    pub fn event_type(&self) -> EventType {
        match self {
            Event::Submitted(_) => EventType::Submitted,
            Event::Queued(_) => EventType::Queued,
            Event::Started(_) => EventType::Started,
            Event::Progress(_) => EventType::Progress,
            Event::Log(_) => EventType::Log,
            Event::Heartbeat(_) => EventType::Heartbeat,
            Event::Succeeded(_) => EventType::Succeeded,
            Event::Failed(_) => EventType::Failed,
            Event::RetryScheduled(_) => EventType::RetryScheduled,
            Event::CancelRequested(_) => EventType::CancelRequested,
            Event::Cancelled(_) => EventType::Cancelled,
            Event::TimedOut(_) => EventType::TimedOut,
            Event::AttemptLost(_) => EventType::AttemptLost,
            Event::DeadLettered(_) => EventType::DeadLettered,
            Event::Rejected(_) => EventType::Rejected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_through_its_name() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
            assert_eq!(EventType::from_ce_type(&t.ce_type()), Some(t));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
        assert_eq!(EventType::from_ce_type("runlog.execution.nope"), None);
        assert_eq!(EventType::from_ce_type("other.submitted"), None);
    }
}
