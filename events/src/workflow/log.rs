//! Appending to and replaying the log of workflow executions.
//!
//! A workflow execution's events are JSON bodies ([`WorkflowEnvelope`]) on
//! one subject, `<p>.wf.<exec>`, in the execution stream beside the task
//! events. Every append states the newest sequence its writer has seen on
//! that subject (`Nats-Expected-Last-Subject-Sequence`), as task appends
//! do: two engine replicas deciding on the same execution cannot
//! both append, and the loser folds again ([`WorkflowLog::load`]) and
//! decides again. Every decision is derived from the folded state, so
//! deciding again after a lost acknowledgement records nothing twice.

use async_nats::jetstream::Context;
use async_nats::jetstream::context::PublishError;

use super::run::{self, WorkflowEnvelope, WorkflowState};
use crate::direct::DirectGetError;
use crate::id::ExecutionId;
use crate::occ::AppendFailure;
use crate::subject::Subjects;

/// The largest workflow event (a `started` carries the whole definition).
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// A workflow execution as replayed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkflowHistory {
    /// The folded state.
    pub state: WorkflowState,
    /// The sequence of its newest event (0 when it has none).
    pub last_seq: u64,
    /// Events that did not decode or did not apply, with the reason.
    pub skipped: Vec<(u64, String)>,
}

impl WorkflowHistory {
    /// Folds one stored body at `seq`; an unreadable or impossible event is
    /// skipped and listed.
    pub fn fold(&mut self, seq: u64, body: &[u8]) -> Option<WorkflowEnvelope> {
        if seq <= self.last_seq {
            return None;
        }
        self.last_seq = seq;
        let envelope = match serde_json::from_slice::<WorkflowEnvelope>(body) {
            Ok(envelope) => envelope,
            Err(e) => {
                self.skipped
                    .push((seq, format!("not a workflow event: {e}")));
                return None;
            }
        };
        match run::apply(&mut self.state, &envelope) {
            Ok(()) => Some(envelope),
            Err(e) => {
                self.skipped.push((seq, e.to_string()));
                None
            }
        }
    }
}

/// Why a workflow append failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowAppendError {
    /// Someone appended first: load again and decide again.
    #[error("workflow execution {execution} changed since sequence {expected}")]
    Conflict {
        /// The execution.
        execution: ExecutionId,
        /// The sequence we expected.
        expected: u64,
    },
    /// The event is larger than [`MAX_EVENT_BYTES`].
    #[error(
        "a {event} event of workflow execution {execution} is {bytes} bytes, over the limit of {MAX_EVENT_BYTES}"
    )]
    TooLarge {
        /// The execution.
        execution: ExecutionId,
        /// The event's type.
        event: &'static str,
        /// Its size.
        bytes: usize,
    },
    /// NATS did not accept the publish.
    #[error(
        "cannot append to the workflow log on {subject} ({source}); is the NATS server reachable?"
    )]
    Publish {
        /// The subject.
        subject: String,
        /// The client's error, with its kind.
        #[source]
        source: PublishError,
    },
}

/// Why a workflow history could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the history of workflow execution {execution}: {source}")]
pub struct WorkflowLoadError {
    /// The execution.
    pub execution: ExecutionId,
    /// The read that failed.
    #[source]
    pub source: DirectGetError,
}

/// Reads and writes workflow executions' events.
#[derive(Debug, Clone)]
pub struct WorkflowLog {
    js: Context,
    subjects: Subjects,
    source: String,
}

impl WorkflowLog {
    /// A log on `js` under `subjects`, recording `source` as the writer.
    pub fn new(js: Context, subjects: Subjects, source: impl Into<String>) -> Self {
        WorkflowLog {
            js,
            subjects,
            source: source.into(),
        }
    }

    /// The writer's name, recorded on every event.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Appends `envelope`, expecting `expected` to be the newest sequence of
    /// its execution (0: it must not exist yet). Returns its sequence.
    pub async fn append(
        &self,
        expected: u64,
        envelope: &WorkflowEnvelope,
    ) -> Result<u64, WorkflowAppendError> {
        let execution = &envelope.workflow_execution;
        let body = serde_json::to_vec(envelope).expect("a workflow event always serialises");
        if body.len() > MAX_EVENT_BYTES {
            return Err(WorkflowAppendError::TooLarge {
                execution: execution.clone(),
                event: envelope.event.type_name(),
                bytes: body.len(),
            });
        }
        let subject = self.subjects.workflow_events(execution);
        crate::occ::append_json(&self.js, &subject, expected, body)
            .await
            .map_err(|e| match e {
                AppendFailure::Conflict => WorkflowAppendError::Conflict {
                    execution: execution.clone(),
                    expected,
                },
                AppendFailure::Publish(source) => WorkflowAppendError::Publish { subject, source },
            })
    }

    /// Replays every event of `execution` and folds it; an empty history
    /// when it never started.
    pub async fn load(
        &self,
        execution: &ExecutionId,
    ) -> Result<WorkflowHistory, WorkflowLoadError> {
        let failed = |source| WorkflowLoadError {
            execution: execution.clone(),
            source,
        };
        let stream = self.subjects.exec_stream();
        let client = self.js.client();
        let subject = self.subjects.workflow_events(execution);
        let mut history = WorkflowHistory::default();
        crate::direct::all(&client, &stream, &subject, |stored| {
            history.fold(stored.seq, &stored.payload);
        })
        .await
        .map_err(failed)?;
        Ok(history)
    }
}
