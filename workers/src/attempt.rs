//! One attempt of one execution, as a worker sees it.
//!
//! A claim is an optimistic append of `started`: of two workers racing for
//! the same attempt exactly one wins, and the loser learns who holds it. A
//! redelivered work item whose holder is gone takes over as the next
//! attempt, recording the lost one. Results are appended against the
//! newest sequence the worker has seen, so a result can never land after a
//! cancel that was recorded in between.
//!
//! While it runs, a [`Reporter`] publishes the attempt's telemetry
//! (progress, log batches, heartbeats) on the telemetry subjects, outside
//! the concurrency check. [`Attempt::finish`] records how it ended, as
//! the core resolves it against the log (`Command::Finish`).

use chrono::{DateTime, Utc};
use runlog_events::codec::EncodeError;
use runlog_events::decider::{Command, ExecutionState, Rejection, Status};
use runlog_events::event::{Heartbeat, LogBatch, Progress};
use runlog_events::journal::{AppendError, History, Journal, TransitionError};
use runlog_events::resources::Resources;
use runlog_events::{
    Envelope, ErrorClass, Event, ExecutionId, TaskError, TaskSpec, TraceParent, WorkItem,
};

pub use runlog_events::decider::Outcome;

/// The outcome of a claim.
#[derive(Debug)]
pub enum Claim {
    /// This worker runs the attempt.
    Started(Box<Attempt>),
    /// Nothing to run: the execution ended, or another worker holds it.
    /// The work item should be acknowledged and dropped.
    Skip {
        /// Why, as the core's stable code (`already_ended`, `already_claimed`).
        code: &'static str,
        /// The execution's status.
        status: Status,
    },
}

/// Why an attempt operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// The log refused or could not take the operation.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The claimed execution has no spec (its submission was never recorded).
    #[error("execution {0} has no recorded submission")]
    NoSpec(ExecutionId),
}

/// The spec `execution` was recorded with, if it can be read.
pub(crate) async fn submitted_spec(journal: &Journal, execution: &ExecutionId) -> Option<TaskSpec> {
    let (spec, _) = journal.recorded_spec(execution).await.ok()??;
    Some(spec)
}

/// A claimed, running attempt.
#[derive(Debug)]
pub struct Attempt {
    journal: Journal,
    execution: ExecutionId,
    number: u32,
    worker: String,
    spec: TaskSpec,
    history: History,
}

impl Attempt {
    /// Claims the queued attempt of `execution` for `worker`. Set
    /// `redelivered` when the server delivered the work item before.
    pub async fn claim(
        journal: &Journal,
        execution: &ExecutionId,
        worker: &str,
        redelivered: bool,
        now: DateTime<Utc>,
    ) -> Result<Claim, AttemptError> {
        let history = journal
            .load(execution)
            .await
            .map_err(|e| AttemptError::Transition(e.into()))?;
        Self::claim_from(journal, execution, history, worker, redelivered, now).await
    }

    /// Claims the attempt a work item names, without reading the history on
    /// the happy path: the spec comes from the `submitted` event (one lookup
    /// by literal subject), and `started` is appended expecting the item's
    /// `queued` sequence, so it lands only if nothing happened since. If
    /// something did, the history is read and the claim decided again. A
    /// redelivered item always reads the history (its previous attempt may
    /// have to be recorded as lost).
    pub async fn claim_item(
        journal: &Journal,
        item: &WorkItem,
        worker: &str,
        redelivered: bool,
        now: DateTime<Utc>,
    ) -> Result<Claim, AttemptError> {
        let execution = &item.execution;
        // The spec, and when the execution was submitted: a `queued` that
        // carries the spec is the submission.
        let spec = if redelivered {
            None
        } else if let Some(spec) = &item.spec {
            Some((spec.clone(), item.queued_at))
        } else {
            journal
                .recorded_spec(execution)
                .await
                .ok()
                .flatten()
                .map(|(spec, created)| (spec, Some(created.time)))
        };
        let Some((spec, submitted_at)) = spec else {
            return Self::claim(journal, execution, worker, redelivered, now).await;
        };
        // The state the item describes: its attempt queued at `queued_seq`.
        let history = History {
            state: ExecutionState {
                id: Some(execution.clone()),
                status: Status::Queued,
                attempt: item.attempt,
                spec: Some(Box::new(spec)),
                traceparent: item.traceparent.clone(),
                queued_at: item.queued_at,
                submitted_at,
                ..ExecutionState::default()
            },
            last_seq: item.queued_seq,
            ..History::default()
        };
        Self::claim_from(journal, execution, history, worker, redelivered, now).await
    }

    async fn claim_from(
        journal: &Journal,
        execution: &ExecutionId,
        history: History,
        worker: &str,
        redelivered: bool,
        now: DateTime<Utc>,
    ) -> Result<Claim, AttemptError> {
        let command = Command::Claim {
            worker: worker.to_owned(),
            redelivered,
        };
        let history = match journal.advance(execution, history, &command, now).await {
            Ok(history) => history,
            Err(TransitionError::Rejected(rejection)) => {
                let status = match &rejection {
                    Rejection::Terminal(status) => *status,
                    Rejection::WrongStatus { status, .. } => *status,
                    Rejection::AlreadyClaimed { .. } => Status::Running,
                    _ => return Err(TransitionError::Rejected(rejection).into()),
                };
                return Ok(Claim::Skip {
                    code: rejection.code(),
                    status,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let state = &history.state;
        if state.status != Status::Running || state.worker.as_deref() != Some(worker) {
            // The claim found a cancel to confirm instead of work to do.
            return Ok(Claim::Skip {
                code: "already_ended",
                status: state.status,
            });
        }
        let spec = state
            .spec
            .clone()
            .ok_or_else(|| AttemptError::NoSpec(execution.clone()))?;
        Ok(Claim::Started(Box::new(Attempt {
            journal: journal.clone(),
            execution: execution.clone(),
            number: state.attempt,
            worker: worker.to_owned(),
            spec: *spec,
            history,
        })))
    }

    /// The execution.
    pub fn execution(&self) -> &ExecutionId {
        &self.execution
    }

    /// The attempt number (1-based).
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The worker running it.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// What to run.
    pub fn spec(&self) -> &TaskSpec {
        &self.spec
    }

    /// The history as of the claim (or the newest append of this worker).
    pub fn history(&self) -> &History {
        &self.history
    }

    /// A handle that publishes this attempt's telemetry; it can outlive
    /// the borrow of the attempt (the runtime moves it into a task).
    pub fn reporter(&self) -> Reporter {
        Reporter {
            journal: self.journal.clone(),
            execution: self.execution.clone(),
            number: self.number,
            worker: self.worker.clone(),
            traceparent: self.history.state.traceparent.clone(),
        }
    }

    /// Reports progress on the telemetry subject (no concurrency check:
    /// progress never changes the execution's state).
    pub async fn progress(
        &self,
        progress: Progress,
        now: DateTime<Utc>,
    ) -> Result<(), AttemptError> {
        self.reporter().progress(progress, now).await
    }

    /// Records success with `output`.
    pub async fn succeed(
        self,
        output: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<History, AttemptError> {
        let command = Command::Succeed {
            attempt: self.number,
            output,
        };
        self.record(command, now).await
    }

    /// Records failure with `error`.
    pub async fn fail(self, error: TaskError, now: DateTime<Utc>) -> Result<History, AttemptError> {
        let command = Command::Fail {
            attempt: self.number,
            error,
        };
        self.record(command, now).await
    }

    /// Records `outcome` as the core resolves it against the log
    /// ([`Command::Finish`]): a result after a recorded cancel (the signal
    /// was missed) ends the attempt `cancelled`, and a cancel signal
    /// without a recorded request ends it `failed` with class `cancelled`.
    /// `resources`, what the attempt used, are recorded on the event
    /// that ends it.
    ///
    /// One decide and one append against the newest sequence seen at the
    /// claim; if anything was recorded since, the history is read and the
    /// outcome decided again.
    ///
    /// A refusal means the attempt is no longer this worker's (it was
    /// declared lost, or the execution ended): the caller drops it.
    pub async fn finish(
        self,
        outcome: Outcome,
        resources: Option<Resources>,
        now: DateTime<Utc>,
    ) -> Result<History, AttemptError> {
        let attempt = self.number;
        let command = Command::Finish {
            attempt,
            outcome,
            resources,
        };
        let recorded = self
            .journal
            .advance(&self.execution, self.history, &command, now)
            .await;
        let Err(TransitionError::Append(AppendError::Encode(EncodeError::TooLarge {
            event_type,
            size,
            limit,
        }))) = recorded
        else {
            return Ok(recorded?);
        };
        // The result does not fit in an event (an output or an error of
        // more than 1 MiB): the attempt fails for good, saying why, instead
        // of the item being redelivered to run the task again.
        let error = TaskError::new(
            ErrorClass::Permanent,
            format!(
                "the attempt's result did not fit: its {event_type} event would be {size} bytes, \
                 over the limit of {limit}; return large results by reference (a URL or a path)"
            ),
        );
        let command = Command::Finish {
            attempt,
            outcome: Outcome::Failed { error },
            resources,
        };
        let history = self
            .journal
            .load(&self.execution)
            .await
            .map_err(TransitionError::Load)?;
        Ok(self
            .journal
            .advance(&self.execution, history, &command, now)
            .await?)
    }

    /// Appends the result against the newest sequence seen at the claim.
    async fn record(self, command: Command, now: DateTime<Utc>) -> Result<History, AttemptError> {
        Ok(self
            .journal
            .advance(&self.execution, self.history, &command, now)
            .await?)
    }
}

/// Publishes the telemetry of one attempt: progress, log batches and
/// heartbeats. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Reporter {
    journal: Journal,
    execution: ExecutionId,
    number: u32,
    worker: String,
    /// The execution's trace, carried by its telemetry too.
    traceparent: Option<TraceParent>,
}

impl Reporter {
    /// The execution.
    pub fn execution(&self) -> &ExecutionId {
        &self.execution
    }

    /// The attempt number.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Publishes the attempt's progress.
    pub async fn progress(
        &self,
        progress: Progress,
        now: DateTime<Utc>,
    ) -> Result<(), AttemptError> {
        self.publish(Event::Progress(progress), now).await
    }

    /// Publishes a batch of log lines.
    pub async fn log(&self, batch: LogBatch, now: DateTime<Utc>) -> Result<(), AttemptError> {
        self.publish(Event::Log(batch), now).await
    }

    /// Publishes that this worker still runs the attempt.
    pub async fn heartbeat(&self, now: DateTime<Utc>) -> Result<(), AttemptError> {
        let beat = Heartbeat {
            worker: self.worker.clone(),
        };
        self.publish(Event::Heartbeat(beat), now).await
    }

    async fn publish(&self, event: Event, now: DateTime<Utc>) -> Result<(), AttemptError> {
        let mut envelope = Envelope::new(
            self.execution.clone(),
            self.number,
            now,
            self.journal.source(),
            event,
        );
        envelope.traceparent.clone_from(&self.traceparent);
        self.journal
            .append_telemetry(&envelope)
            .await
            .map_err(|e| AttemptError::Transition(e.into()))?;
        Ok(())
    }
}
