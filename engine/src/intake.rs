//! Intake: from a submission to a recorded execution.
//!
//! The HTTP and NATS doors end here; the third door, a `submitted` event
//! appended directly by any publisher, meets the same rules in the reactor.
//! Intake records only `submitted` (one append, expecting sequence 0, so an
//! execution is created exactly once); the reactor validates it again and
//! queues it, for every door alike.
//!
//! Before the append, intake
//! - **seals the environment**: values go to the `<p>-env` key-value bucket
//!   under the execution id, and only their names are recorded
//!   (`sealed_env`), so no event, log line or error ever holds a value;
//! - **claims the idempotency key** with a create-only put in the
//!   `<p>-idempotency` bucket: every submission with the same key gets the
//!   execution of the first, long after JetStream's duplicate window.
//!
//! [`Intake::submit_many`] takes a batch through the same steps, with the
//! submissions' appends in flight together: a batch costs about one round
//! trip, not one per submission.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use runlog_events::decider::{self, Command, ExecutionState, Rejection};
use runlog_events::envelope::random_span_id;
use runlog_events::event::Queued;
use runlog_events::journal::{AppendError, Journal, LoadError};
use runlog_events::sealing::{Keyring, OpenError};
use runlog_events::secrets::{open_env, seal_env};
use runlog_events::server::Target;
use runlog_events::spec::FieldError;
use runlog_events::timer::{Schedule, Timer};
use runlog_events::{Envelope, Event, ExecutionId, TaskSpec, TraceParent};
use runlog_telemetry::{Kind, Span, Traces};
use tokio::sync::Semaphore;

use crate::servers::{Inventory, ServersError};

/// Submissions of batches in flight at once, over every batch an intake
/// serves: each holds a publish ack on the publishing connection, and
/// async-nats stalls a connection with too many (research/jetstream.md §9),
/// which the reactor's publishes share.
pub const BATCH_IN_FLIGHT: usize = 512;

/// A request to run a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// What to run. Its `env` values are sealed, never recorded.
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
    /// The execution existed already: this submission was a duplicate (same
    /// id, or same idempotency key).
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
    /// A key-value bucket (sealed environments, idempotency keys) or the
    /// deadline schedule failed.
    #[error("cannot {action} ({source}); is the NATS server reachable?")]
    Store {
        /// What intake was doing (`seal the task environment`).
        action: &'static str,
        /// The client's error, with its kind.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The original's sealed environment is gone (its bucket entries expire).
    #[error("the sealed environment of {0} has expired; submit the task again with its env")]
    EnvExpired(ExecutionId),
    /// The original's sealed environment does not open with this engine's
    /// key ring.
    #[error("the sealed environment of {execution} cannot be opened: {reason}")]
    EnvUnreadable {
        /// The original.
        execution: ExecutionId,
        /// Why.
        reason: OpenError,
    },
}

/// Why a task with environment values is refused by an engine without a key.
fn no_key() -> FieldError {
    FieldError {
        field: "env".to_owned(),
        reason: "this engine has no secret key to seal environment values with: start it \
                 with --secret-key-file (`runlog secret keygen` makes one), or name stored \
                 secrets in secrets"
            .to_owned(),
    }
}

impl IntakeError {
    fn store(
        action: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> IntakeError {
        IntakeError::Store {
            action,
            source: source.into(),
        }
    }
}

impl IntakeError {
    /// A stable code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            IntakeError::Rejected(r) => r.code(),
            IntakeError::Append(AppendError::Conflict { .. }) => "conflict",
            IntakeError::EnvExpired(_) | IntakeError::EnvUnreadable { .. } => "not_retryable",
            IntakeError::Append(_) | IntakeError::Load(_) | IntakeError::Store { .. } => {
                "unavailable"
            }
        }
    }
}

/// Records submissions in the execution log.
#[derive(Debug, Clone)]
pub struct Intake {
    journal: Journal,
    env: kv::Store,
    /// Seals environments; without it a task with `env` values is refused.
    ring: Option<Arc<Keyring>>,
    idempotency: kv::Store,
    /// Resolves the servers `ssh` tasks name; without it, naming one is
    /// refused.
    servers: Option<Inventory>,
    /// Shared by every clone: bounds the batch submissions in flight.
    batch_window: Arc<Semaphore>,
    /// Where the `submit` spans go, when traces are exported.
    traces: Option<Traces>,
}

impl Intake {
    /// Intake on `journal`, sealing environments in `env` and claiming
    /// idempotency keys in `idempotency`.
    pub fn new(journal: Journal, env: kv::Store, idempotency: kv::Store) -> Self {
        Intake {
            journal,
            env,
            ring: None,
            idempotency,
            servers: None,
            batch_window: Arc::new(Semaphore::new(BATCH_IN_FLIGHT)),
            traces: None,
        }
    }

    /// Seals task environments with `ring`.
    pub fn with_keyring(mut self, ring: Arc<Keyring>) -> Self {
        self.ring = Some(ring);
        self
    }

    /// Where spans go, when traces are exported.
    pub fn traces(&self) -> Option<&Traces> {
        self.traces.as_ref()
    }

    /// Exports a `submit` span per recorded submission to `traces`, and
    /// starts a trace for each that comes without one.
    pub fn with_traces(mut self, traces: Traces) -> Self {
        self.traces = Some(traces);
        self
    }

    /// Resolves the servers tasks name through `servers`.
    pub fn with_servers(mut self, servers: Inventory) -> Self {
        self.servers = Some(servers);
        self
    }

    /// The server inventory, when this intake has one.
    pub fn servers(&self) -> Option<&Inventory> {
        self.servers.as_ref()
    }

    /// The journal it appends through.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Records `submission` queued for its first attempt (one `queued`
    /// event carrying the spec) and publishes its work item; or, when its
    /// `not_before` is still ahead, as `submitted`, which the reactor
    /// queues at that time.
    ///
    /// A submission whose id or idempotency key was seen before returns the
    /// existing execution (`existing: true`) and records nothing.
    pub async fn submit(
        &self,
        submission: Submission,
        now: DateTime<Utc>,
    ) -> Result<Accepted, IntakeError> {
        let Submission {
            mut spec,
            execution,
            correlation_id,
            traceparent,
        } = submission;
        self.resolve_server(&mut spec).await?;
        // Validate before touching any store; names are checked here, values
        // never leave this function except into the env bucket.
        let env = std::mem::take(&mut spec.env);
        if !env.is_empty() {
            spec.sealed_env = env.keys().cloned().collect();
        }
        spec.validate_recorded().map_err(Rejection::Invalid)?;
        let ring = match &self.ring {
            Some(ring) => Some(ring),
            None if env.is_empty() => None,
            None => return Err(Rejection::Invalid(no_key()).into()),
        };
        let mut execution = execution.unwrap_or_else(ExecutionId::generate);
        if let Some(key) = &spec.idempotency_key {
            execution = self.claim_key(key, execution).await?;
        }
        if let Some(ring) = ring.filter(|_| !env.is_empty()) {
            let sealed = seal_env(ring, &execution, &env);
            self.env
                .put(execution.as_str(), sealed.into())
                .await
                .map_err(|e| IntakeError::store("seal the task environment", e))?;
        }
        // With traces exported, this door's `submit` span is the parent of
        // the execution's; without, the caller's span is.
        let submit_span = self.traces.as_ref().map(|_| match &traceparent {
            Some(caller) => caller.with_span(&random_span_id()),
            None => TraceParent::random(),
        });
        let context = submit_span.as_ref().or(traceparent.as_ref());
        let facts = decider::decide(&Command::Admit { spec }, &ExecutionState::default(), now)?;
        let mut state = ExecutionState::default();
        let mut last_seq = 0;
        for fact in facts {
            // The reactor never sees an admitted execution (it reads
            // `submitted`, not `queued`): its deadline is set here, before
            // the execution exists, so none is ever without one. A timer of
            // an execution that then is not recorded fires into nothing.
            if let Event::Queued(Queued {
                spec: Some(spec), ..
            }) = &fact.event
                && let Some(ms) = spec.timeout_ms
            {
                let at = runlog_events::timer::after(now, ms);
                Schedule::new(self.journal.subjects(), &execution, Timer::Deadline, at, 0)
                    .publish(self.journal.jetstream())
                    .await
                    .map_err(|e| IntakeError::store("set the execution's deadline", e))?;
            }
            let mut envelope = Envelope::new(
                execution.clone(),
                fact.attempt,
                now,
                self.journal.source(),
                fact.event,
            );
            envelope.correlation_id = correlation_id.clone();
            envelope.traceparent = context.cloned();
            let appended = match self.journal.append(last_seq, &envelope).await {
                Ok(appended) if !appended.duplicate => appended,
                // Our own retry, another door, or a second submission of
                // the same id or key: the execution exists.
                Ok(_) | Err(AppendError::Conflict { .. }) => {
                    return self.existing(execution).await;
                }
                Err(e) => return Err(e.into()),
            };
            // A `queued` event is its own work item: stored, it is
            // dispatched.
            last_seq = appended.seq;
            state = decider::evolve(state, &envelope);
        }
        tracing::debug!(%execution, "submitted");
        if let (Some(traces), Some(context), Some(spec)) =
            (&self.traces, &submit_span, state.spec.as_deref())
        {
            let span = match &traceparent {
                Some(caller) => {
                    Span::child_of(caller, context.span_id(), "submit").map(Span::remote_parent)
                }
                None => Span::root_of(context, "submit"),
            };
            if let Some(span) = span {
                traces.record(
                    span.kind(Kind::Server)
                        .between(now, Utc::now())
                        .attr("runlog.execution.id", execution.as_str().to_owned())
                        .attr("runlog.kind", spec.kind.clone())
                        .attr("runlog.queue", spec.queue.as_str().to_owned()),
                );
            }
        }
        Ok(Accepted {
            execution,
            state,
            last_seq,
            existing: false,
        })
    }

    /// Rewrites an `ssh` task that names a server into one with its address
    /// (see [`crate::servers`]).
    async fn resolve_server(&self, spec: &mut TaskSpec) -> Result<(), IntakeError> {
        let invalid = |field: &str, reason: String| {
            IntakeError::Rejected(Rejection::Invalid(FieldError {
                field: field.to_owned(),
                reason,
            }))
        };
        let Some(servers) = &self.servers else {
            return match Target::of(spec) {
                Ok(Target::Direct) => Ok(()),
                _ => Err(invalid(
                    "input.server",
                    "this engine has no server inventory".to_owned(),
                )),
            };
        };
        match servers.resolve(spec).await {
            Ok(()) => Ok(()),
            Err(ServersError::Invalid(mut errors)) => {
                let first = errors.remove(0);
                Err(IntakeError::Rejected(Rejection::Invalid(first)))
            }
            Err(e @ ServersError::Unknown(_)) => Err(invalid("input.server", e.to_string())),
            Err(ServersError::Exists(_)) => Ok(()),
            Err(e @ ServersError::Store(_)) => Err(IntakeError::store(
                "read the server inventory",
                e.to_string(),
            )),
        }
    }

    /// Records every submission of a batch as [`submit`](Self::submit)
    /// would, with their appends in flight together (at most
    /// [`BATCH_IN_FLIGHT`] over all batches); one result per submission, in
    /// order. Each succeeds or fails on its own.
    ///
    /// Submissions of the batch that share an id or an idempotency key are
    /// taken in order: the first records the execution, the later ones get
    /// it back with `existing: true`, as if they had been sent one after the
    /// other.
    pub async fn submit_many(
        &self,
        submissions: Vec<Submission>,
        now: DateTime<Utc>,
    ) -> Vec<Result<Accepted, IntakeError>> {
        let mut results: Vec<Option<Result<Accepted, IntakeError>>> =
            std::iter::repeat_with(|| None)
                .take(submissions.len())
                .collect();
        for wave in waves(submissions) {
            let done: Vec<_> = futures::stream::iter(wave)
                .map(|(i, submission)| async move {
                    // Closed never: the semaphore lives as long as `self`.
                    let _permit = self.batch_window.acquire().await;
                    (i, self.submit(submission, now).await)
                })
                .buffer_unordered(BATCH_IN_FLIGHT)
                .collect()
                .await;
            for (i, result) in done {
                results[i] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every submission belongs to one wave"))
            .collect()
    }

    /// The execution that owns idempotency `key`: `candidate` if this
    /// submission is the first with the key.
    async fn claim_key(
        &self,
        key: &str,
        candidate: ExecutionId,
    ) -> Result<ExecutionId, IntakeError> {
        let store_key = key_of(key);
        match self
            .idempotency
            .create(&store_key, candidate.as_str().to_owned().into())
            .await
        {
            Ok(_) => Ok(candidate),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let owner = self
                    .idempotency
                    .get(&store_key)
                    .await
                    .map_err(|e| IntakeError::store("read an idempotency key", e))?
                    .and_then(|v| ExecutionId::new(String::from_utf8_lossy(&v)).ok());
                // The key was claimed but its owner may not have recorded
                // the execution yet (or died first): submitting under the
                // owner's id is still exactly-once (expected sequence 0).
                Ok(owner.unwrap_or(candidate))
            }
            Err(e) => Err(IntakeError::store("claim an idempotency key", e)),
        }
    }

    /// Seals the environment of `from` again for `to` (a retry runs with
    /// its original's environment; the values leave the bucket only into
    /// this engine's memory). A plain environment, written before
    /// environments were sealed, is sealed for the first time.
    pub async fn copy_sealed_env(
        &self,
        from: &ExecutionId,
        to: &ExecutionId,
    ) -> Result<(), IntakeError> {
        let ring = self
            .ring
            .as_ref()
            .ok_or_else(|| IntakeError::Rejected(Rejection::Invalid(no_key())))?;
        let value = self
            .env
            .get(from.as_str())
            .await
            .map_err(|e| IntakeError::store("read the sealed environment", e))?
            .ok_or_else(|| IntakeError::EnvExpired(from.clone()))?;
        let env = match open_env(ring, from, &value) {
            Ok(env) => env,
            Err(OpenError::NotSealed) => {
                serde_json::from_slice(&value).map_err(|_| IntakeError::EnvUnreadable {
                    execution: from.clone(),
                    reason: OpenError::Corrupt,
                })?
            }
            Err(reason) => {
                return Err(IntakeError::EnvUnreadable {
                    execution: from.clone(),
                    reason,
                });
            }
        };
        self.env
            .put(to.as_str(), seal_env(ring, to, &env).into())
            .await
            .map_err(|e| IntakeError::store("seal the task environment", e))?;
        Ok(())
    }

    async fn existing(&self, execution: ExecutionId) -> Result<Accepted, IntakeError> {
        let history = self.journal.load(&execution).await?;
        Ok(Accepted {
            execution,
            state: history.state,
            last_seq: history.last_seq,
            existing: true,
        })
    }
}

/// Splits a batch into waves that can each run concurrently: a submission
/// goes one wave after the latest earlier one that shares its id or its
/// idempotency key, so duplicates within a batch resolve in batch order.
/// A batch without such duplicates is one wave.
fn waves(submissions: Vec<Submission>) -> Vec<Vec<(usize, Submission)>> {
    #[derive(PartialEq, Eq, Hash)]
    enum Identity {
        Id(String),
        Key(String),
    }
    let mut last_wave: HashMap<Identity, usize> = HashMap::new();
    let mut waves: Vec<Vec<(usize, Submission)>> = Vec::new();
    for (i, submission) in submissions.into_iter().enumerate() {
        let identities: Vec<Identity> = submission
            .execution
            .iter()
            .map(|id| Identity::Id(id.as_str().to_owned()))
            .chain(submission.spec.idempotency_key.clone().map(Identity::Key))
            .collect();
        let wave = identities
            .iter()
            .filter_map(|identity| last_wave.get(identity).map(|w| w + 1))
            .max()
            .unwrap_or(0);
        for identity in identities {
            last_wave.insert(identity, wave);
        }
        if waves.len() <= wave {
            waves.resize_with(wave + 1, Vec::new);
        }
        waves[wave].push((i, submission));
    }
    waves
}

/// A bucket key for any caller key: hex of its bytes (keys may hold any
/// character; bucket keys may not).
fn key_of(key: &str) -> String {
    runlog_events::envelope::hex(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_key_becomes_a_bucket_key() {
        assert_eq!(key_of("a b/ü"), "6120622fc3bc");
    }

    fn submission(id: Option<&str>, key: Option<&str>) -> Submission {
        let mut spec = TaskSpec::new("echo");
        spec.idempotency_key = key.map(str::to_owned);
        let mut submission = Submission::new(spec);
        submission.execution = id.map(|id| ExecutionId::new(id).unwrap());
        submission
    }

    fn indices(waves: &[Vec<(usize, Submission)>]) -> Vec<Vec<usize>> {
        waves
            .iter()
            .map(|w| w.iter().map(|(i, _)| *i).collect())
            .collect()
    }

    #[test]
    fn a_batch_without_duplicates_is_one_wave() {
        let batch = vec![
            submission(None, None),
            submission(Some("a"), None),
            submission(None, Some("k")),
            submission(None, None),
        ];
        assert_eq!(indices(&waves(batch)), [vec![0, 1, 2, 3]]);
    }

    #[test]
    fn a_duplicate_waits_for_every_earlier_submission_it_shares_a_name_with() {
        let batch = vec![
            submission(Some("a"), None),      // 0: wave 0
            submission(Some("b"), Some("k")), // 1: wave 0
            submission(Some("a"), Some("k")), // 2: after 0 and 1
            submission(None, Some("k")),      // 3: after 2
            submission(Some("b"), None),      // 4: after 1 (and only 1)
            submission(None, None),           // 5: wave 0
        ];
        assert_eq!(indices(&waves(batch)), [vec![0, 1, 5], vec![2, 4], vec![3]]);
    }
}
