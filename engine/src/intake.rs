//! Intake: from a submission to a queued execution.
//!
//! Every door (HTTP, NATS request/reply, a direct append) ends here, so the
//! rules are checked once, by [`decide`](runlog_events::decide).

use chrono::{DateTime, Utc};
use runlog_events::decider::{self, Command, ExecutionState, Rejection};
use runlog_events::journal::{AppendError, Journal, LoadError};
use runlog_events::{Envelope, ExecutionId, TaskSpec, TraceParent};

/// A request to run a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// What to run.
    pub spec: TaskSpec,
    /// The execution id to use; a UUIDv7 is generated when absent.
    pub execution: Option<ExecutionId>,
    /// Correlation id recorded on every event of the submission.
    pub correlation_id: Option<String>,
    /// Trace context of the caller.
    pub traceparent: Option<TraceParent>,
}

impl Submission {
    /// A submission of `spec` with a generated id.
    pub fn new(spec: TaskSpec) -> Self {
        Submission {
            spec,
            execution: None,
            correlation_id: None,
            traceparent: None,
        }
    }
}

/// A submission that was recorded (or found recorded before).
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// The execution.
    pub execution: ExecutionId,
    /// Its state after intake.
    pub state: ExecutionState,
    /// The sequence of its newest event.
    pub last_seq: u64,
    /// The execution existed already: this submission was a duplicate.
    pub existing: bool,
}

/// Why a submission was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The rules refuse it (an invalid field, say).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The log could not be written.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// The log could not be read.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Records submissions in the execution log.
#[derive(Debug, Clone)]
pub struct Intake {
    journal: Journal,
}

impl Intake {
    /// Intake on `journal`.
    pub fn new(journal: Journal) -> Self {
        Intake { journal }
    }

    /// Records `submission` as `submitted` then `queued` for attempt 1.
    ///
    /// A second submission with the same execution id returns the existing
    /// execution (`existing: true`) and records nothing.
    pub async fn submit(
        &self,
        submission: Submission,
        now: DateTime<Utc>,
    ) -> Result<Accepted, IntakeError> {
        let execution = submission
            .execution
            .clone()
            .unwrap_or_else(ExecutionId::generate);
        let mut state = ExecutionState::default();
        let mut last_seq = 0;
        let spec = submission.spec.clone();
        for command in [Command::Submit { spec }, Command::Enqueue] {
            for fact in decider::decide(&command, &state, now)? {
                let mut envelope = Envelope::new(
                    execution.clone(),
                    fact.attempt,
                    now,
                    self.journal.source(),
                    fact.event,
                );
                envelope.correlation_id = submission.correlation_id.clone();
                envelope.traceparent = submission.traceparent.clone();
                let appended = self.journal.append(last_seq, &envelope).await?;
                if appended.duplicate && matches!(command, Command::Submit { .. }) {
                    let history = self.journal.load(&execution).await?;
                    return Ok(Accepted {
                        execution,
                        state: history.state,
                        last_seq: history.last_seq,
                        existing: true,
                    });
                }
                last_seq = appended.seq;
                state = decider::evolve(state, &envelope);
            }
        }
        tracing::debug!(%execution, "submitted and queued");
        Ok(Accepted {
            execution,
            state,
            last_seq,
            existing: false,
        })
    }
}
