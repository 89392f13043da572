//! Retrying an ended execution: a new execution with the spec (and the
//! sealed environment) of the original, linked to it by `retry_of`.
//!
//! The single retry route (`POST /v1/executions/{id}/retry`) and bulk
//! replays of dead letters ([`crate::operations`]) both come here; which
//! executions may be retried is the core's rule (`decider::may_retry`).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use runlog_events::decider::Status;
use runlog_events::direct::DirectGetError;
use runlog_events::event::{Event, Queued};
use runlog_events::journal::{Journal, LoadError};
use runlog_events::{ExecutionId, TaskSpec, codec};

use crate::intake::{Accepted, Intake, IntakeError, Submission};
use crate::projection::Projection;

/// What a retry adds to the original's spec.
#[derive(Debug, Clone, Default)]
pub struct RetryRequest {
    /// The new execution's id; generated when absent. A retry that names an
    /// id is created at most once, however often it is repeated.
    pub id: Option<ExecutionId>,
    /// Labels added to (or replacing those of) the original's.
    pub labels: BTreeMap<String, String>,
}

/// Why an execution was not retried.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// No such execution, or its submission is gone from the log.
    #[error("{0} does not exist")]
    NotFound(String),
    /// The core's rules refuse it in its current status.
    #[error(
        "execution {execution} is {status}; only a dead-lettered, timed-out or cancelled \
         execution can be retried (a failed one still has its retry or dead letter to come)"
    )]
    NotRetryable {
        /// The execution.
        execution: ExecutionId,
        /// Its status.
        status: Status,
    },
    /// Its submission is stored but cannot be decoded.
    #[error("the submission of {execution} cannot be read ({source}); submit the task again")]
    Unreadable {
        /// The execution.
        execution: ExecutionId,
        /// The decoder's error.
        source: codec::DecodeError,
    },
    /// Its history could not be read.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Its submission could not be read.
    #[error(transparent)]
    Read(#[from] DirectGetError),
    /// Intake refused or could not record the new execution (or the
    /// sealed environment could not be copied to it).
    #[error(transparent)]
    Intake(#[from] IntakeError),
}

/// Retries executions: the parts of the engine a retry reads and writes.
#[derive(Debug, Clone)]
pub struct Retries {
    intake: Intake,
    journal: Journal,
    projection: Arc<Projection>,
}

impl Retries {
    /// Retries through `intake`, reading histories through `journal` and
    /// ended executions' states from `projection`.
    pub fn new(intake: Intake, journal: Journal, projection: Arc<Projection>) -> Self {
        Retries {
            intake,
            journal,
            projection,
        }
    }

    /// Starts a new execution with the spec of `original`. Only an ended,
    /// unsuccessful execution can be retried.
    pub async fn retry(
        &self,
        original: &ExecutionId,
        request: RetryRequest,
    ) -> Result<Accepted, RetryError> {
        let status = self.status(original).await?;
        if runlog_events::decider::may_retry(status).is_err() {
            return Err(RetryError::NotRetryable {
                execution: original.clone(),
                status,
            });
        }
        let (mut spec, correlation_id) = self.submission(original).await?;
        spec.retry_of = Some(original.clone());
        spec.idempotency_key = None;
        spec.env.clear();
        spec.labels.extend(request.labels);
        let retry_id = request.id.unwrap_or_else(ExecutionId::generate);
        if !spec.sealed_env.is_empty() {
            self.intake.copy_sealed_env(original, &retry_id).await?;
        }
        let submission = Submission {
            spec,
            execution: Some(retry_id),
            correlation_id,
            traceparent: None,
        };
        Ok(self.intake.submit(submission, Utc::now()).await?)
    }

    /// An ended execution's status in the read model is final; anything
    /// else (a failure not folded yet, say) is read from the log.
    async fn status(&self, execution: &ExecutionId) -> Result<Status, RetryError> {
        if let Some(status) = self.projection.get(execution).map(|e| e.state.status)
            && status.is_terminal()
        {
            return Ok(status);
        }
        match self.journal.load(execution).await?.state.status {
            Status::New => Err(RetryError::NotFound(format!("execution {execution}"))),
            status => Ok(status),
        }
    }

    /// The spec and correlation id an execution was submitted with: one
    /// read of the event that created it (`submitted`, or the first
    /// `queued`), not of its whole history.
    async fn submission(
        &self,
        execution: &ExecutionId,
    ) -> Result<(TaskSpec, Option<String>), RetryError> {
        let missing = || RetryError::NotFound(format!("the submission of {execution}"));
        let stored = self
            .intake
            .journal()
            .creation(execution)
            .await?
            .ok_or_else(missing)?;
        let envelope = codec::decode(&stored.headers, &stored.payload, &codec::Limits::default())
            .map_err(|source| RetryError::Unreadable {
            execution: execution.clone(),
            source,
        })?;
        match envelope.event {
            Event::Submitted(submitted) => Ok((submitted.spec, envelope.correlation_id)),
            Event::Queued(Queued {
                spec: Some(spec), ..
            }) => Ok((*spec, envelope.correlation_id)),
            _ => Err(missing()),
        }
    }
}
