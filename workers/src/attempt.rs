//! One attempt of one execution, as a worker sees it.
//!
//! A claim is an optimistic append of `started`: of two workers racing for
//! the same attempt exactly one wins, and the loser learns who holds it. A
//! redelivered work item whose holder is gone takes over as the next
//! attempt, recording the lost one. Results are appended against the
//! newest sequence the worker has seen, so a result can never land after a
//! cancel that was recorded in between.

use chrono::{DateTime, Utc};
use runlog_events::decider::{Command, Rejection, Status};
use runlog_events::event::Progress;
use runlog_events::journal::{History, Journal, TransitionError};
use runlog_events::{Envelope, ExecutionId, TaskError, TaskSpec};

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
        let command = Command::Claim {
            worker: worker.to_owned(),
            redelivered,
        };
        let history = match journal.transition(execution, &command, now).await {
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
            spec,
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

    /// Reports progress on the telemetry subject (no concurrency check:
    /// progress never changes the execution's state).
    pub async fn progress(
        &self,
        progress: Progress,
        now: DateTime<Utc>,
    ) -> Result<(), AttemptError> {
        let envelope = Envelope::new(
            self.execution.clone(),
            self.number,
            now,
            self.journal.source(),
            runlog_events::Event::Progress(progress),
        );
        self.journal
            .append_telemetry(&envelope)
            .await
            .map_err(|e| AttemptError::Transition(e.into()))?;
        Ok(())
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

    /// Appends the result against the newest sequence seen at the claim.
    async fn record(self, command: Command, now: DateTime<Utc>) -> Result<History, AttemptError> {
        Ok(self
            .journal
            .advance(&self.execution, self.history, &command, now)
            .await?)
    }
}
