//! Bulk operations: replay dead letters, or cancel executions, chosen by a
//! filter, in the background, at a bounded rate, audited.
//!
//! An operation is a JSON record in the `<p>-operations` key-value bucket
//! (key: its id), written when it is asked for and updated as it runs:
//! who asked, its name and filter, its state (`running`, `finished`,
//! `cancelled`) and its counts (`matched`, `done`, `skipped`, `failed`).
//! The record is the audit trail and the progress report; every change goes
//! through a compare-and-set on its revision, so a cancel from any engine
//! replica and the runner's own updates never overwrite each other.
//!
//! **A dead letter is replayed at most once.** Before it starts the new
//! execution, a replay claims the original's key in the `<p>-replays`
//! bucket with a create-only put whose value names the new execution's id
//! and the operation. A second operation, a re-run of the same filter, or a
//! second engine replica finds the key and skips the dead letter. A claim
//! whose execution was never recorded (the engine died between the two
//! steps) is completed under the recorded id, and an execution is created
//! at most once per id, so the outcome is the same as if nothing had
//! happened. A dead letter that was retried by hand (`POST
//! /v1/executions/{id}/retry`) is skipped as well.
//!
//! **Restarts.** The matches are taken at the start, up to the log position
//! the record keeps (`upto_seq`): executions dead-lettered later (a replay
//! that failed again, say) are not part of the operation. An engine that
//! stops cleanly leaves its operations `running` without an owner; one that
//! dies leaves them with an owner whose updates stopped. Any engine resumes
//! such an operation once its projection has caught up (at once for the
//! first, after [`STALE_AFTER`] for the second): it matches again up to the
//! same position, counts the dead letters the operation already replayed as
//! done, and replays the rest. `resumed` in the record counts the
//! take-overs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use runlog_events::decider::{Command, Status};
use runlog_events::event::DeadLetterReason;
use runlog_events::journal::{Journal, TransitionError};
use runlog_events::stream::{Layout, LayoutError};
use runlog_events::{ErrorClass, ExecutionId, QueueName};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::projection::{DeadLetterFilter, Filter, OPERATION_LABEL, Projection};
use crate::retry::{Retries, RetryRequest};

/// Replays or cancels per second when the request does not say.
pub const DEFAULT_RATE: u32 = 100;
/// The highest rate a request may ask for.
pub const MAX_RATE: u32 = 10_000;
/// Items of one operation in flight at once, per item per second asked for
/// (a replay takes a few milliseconds: reads, a claim, an append), within
/// bounds.
const CONCURRENCY_PER_RATE: u32 = 20;
const MAX_CONCURRENCY: usize = 128;
/// How often a running operation writes its progress (and learns of a
/// cancel made on another replica).
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// An operation whose owner has not written for this long is resumed by
/// another engine.
pub const STALE_AFTER: Duration = Duration::from_secs(15);
/// How often an engine looks for operations to resume, once its projection
/// caught up.
const SCAN_EVERY: Duration = Duration::from_secs(5);
/// Failures kept in the record (the counts keep counting).
const MAX_ERRORS: usize = 20;

/// What an operation does to each match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// Start a new execution for each dead letter, linked by `retry_of`.
    Replay,
    /// Cancel each matching execution that has not ended.
    Cancel,
}

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    /// Working through its matches (or waiting for an engine to resume it).
    Running,
    /// Every match was handled.
    Finished,
    /// Stopped on request; matches not reached yet were left alone.
    Cancelled,
}

/// Which executions an operation applies to. Dead-letter fields (`class`,
/// `reason`, and `since`/`until` on when it was dead-lettered) apply to
/// replays; `status` (and `since`/`until` on submission) to cancels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OperationFilter {
    /// Only this queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueName>,
    /// Only this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Only dead letters whose last error is of this class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<ErrorClass>,
    /// Only dead letters of this reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<DeadLetterReason>,
    /// Only executions in one of these states.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<Status>,
    /// Only executions carrying every one of these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// At or after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

impl OperationFilter {
    /// The dead-letter filter of a replay.
    pub fn dead_letters(&self, upto_seq: Option<u64>) -> DeadLetterFilter {
        DeadLetterFilter {
            queue: self.queue.clone(),
            kind: self.kind.clone(),
            class: self.class,
            reason: self.reason,
            labels: self.labels.clone(),
            since: self.since,
            until: self.until,
            replayed: None,
            upto_seq,
        }
    }

    /// The execution filter of a cancel: every state that has not ended,
    /// unless `status` narrows it.
    pub fn executions(&self) -> Filter {
        Filter {
            status: if self.status.is_empty() {
                CANCELLABLE.to_vec()
            } else {
                self.status.clone()
            },
            queue: self.queue.clone(),
            kind: self.kind.clone(),
            labels: self.labels.clone(),
            since: self.since,
            until: self.until,
        }
    }
}

/// The states a bulk cancel applies to.
pub const CANCELLABLE: [Status; 5] = [
    Status::Pending,
    Status::Queued,
    Status::Running,
    Status::Failed,
    Status::RetryScheduled,
];

/// One match that could not be handled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemError {
    /// The execution.
    pub id: ExecutionId,
    /// What went wrong.
    pub detail: String,
}

/// A bulk operation: the audit record and its progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// Its id (a bucket key, and the `runlog.operation` label of what it
    /// starts).
    pub id: String,
    /// Replay or cancel.
    pub kind: OperationKind,
    /// The name its requester gave it.
    pub name: String,
    /// Who asked for it.
    pub requested_by: String,
    /// Which executions it applies to.
    pub filter: OperationFilter,
    /// At most this many items per second.
    pub rate_per_sec: u32,
    /// The reason recorded on each cancel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where it is.
    pub state: OperationState,
    /// When it was asked for.
    pub created_at: DateTime<Utc>,
    /// When it ended (finished or cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// When its runner last wrote.
    pub updated_at: DateTime<Utc>,
    /// The engine running it; none while it waits to be resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Who cancelled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
    /// Matches are taken up to this stream sequence.
    pub upto_seq: u64,
    /// Executions that matched.
    pub matched: u64,
    /// Replayed or cancelled by this operation.
    pub done: u64,
    /// Left alone: already replayed (by an earlier operation or by hand),
    /// or already ended.
    pub skipped: u64,
    /// Could not be handled (see `errors`); a re-run tries them again.
    pub failed: u64,
    /// How often another engine took it over after a restart.
    pub resumed: u32,
    /// The first failures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ItemError>,
}

impl Operation {
    /// A new running operation owned by nobody yet.
    pub fn new(
        kind: OperationKind,
        name: String,
        requested_by: String,
        filter: OperationFilter,
        rate_per_sec: u32,
        upto_seq: u64,
        now: DateTime<Utc>,
    ) -> Operation {
        Operation {
            id: ExecutionId::generate().to_string(),
            kind,
            name,
            requested_by,
            filter,
            rate_per_sec,
            reason: None,
            state: OperationState::Running,
            created_at: now,
            finished_at: None,
            updated_at: now,
            owner: None,
            cancelled_by: None,
            upto_seq,
            matched: 0,
            done: 0,
            skipped: 0,
            failed: 0,
            resumed: 0,
            errors: Vec::new(),
        }
    }

    fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self)
            .expect("an operation always serialises")
            .into()
    }
}

/// What the `<p>-replays` bucket holds per replayed dead letter.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claim {
    replay: ExecutionId,
    operation: String,
    at: DateTime<Utc>,
}

/// Why an operation could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum OperationsError {
    /// The record could not be written.
    #[error("cannot record operation {id} ({source}); is the NATS server reachable?")]
    Record {
        /// The operation.
        id: String,
        /// The bucket's error.
        source: kv::CreateError,
    },
    /// The record could not be read.
    #[error("cannot read operation {id} ({source}); is the NATS server reachable?")]
    Read {
        /// The operation.
        id: String,
        /// The bucket's error.
        source: kv::EntryError,
    },
    /// The record could not be updated.
    #[error("cannot update operation {id} ({source}); is the NATS server reachable?")]
    Update {
        /// The operation.
        id: String,
        /// The bucket's error.
        source: kv::UpdateError,
    },
    /// The records could not be listed.
    #[error("cannot list operations ({0}); is the NATS server reachable?")]
    List(#[source] kv::HistoryError),
}

/// The executions bulk operations act on: the read model that picks them,
/// the log that cancels them, the retries that replay them.
#[derive(Debug, Clone)]
pub struct Executions {
    /// Matches and the state of each.
    pub projection: Arc<Projection>,
    /// Cancels and the histories of replays.
    pub journal: Journal,
    /// Replays.
    pub retries: Retries,
}

/// The outcome of [`Operations::cancel`].
#[derive(Debug)]
pub enum CancelOutcome {
    /// No such operation.
    NotFound,
    /// It had ended already.
    Ended(Operation),
    /// It is cancelled now.
    Cancelled(Operation),
}

enum Outcome {
    Done,
    Skipped,
    Failed(String),
    /// The operation stopped before this item's turn came.
    Abandoned,
}

/// What every item of one run shares.
struct Item {
    op: Operation,
    pacer: Pacer,
    stop: CancellationToken,
}

impl Item {
    /// Waits for this item's turn at the operation's rate; false if the
    /// operation stopped first.
    async fn turn(&self) -> bool {
        let slot = self.pacer.slot();
        tokio::select! {
            _ = tokio::time::sleep_until(slot) => !self.stop.is_cancelled(),
            _ = self.stop.cancelled() => false,
        }
    }
}

/// Hands out start times a period apart: items that need work (not those
/// found done or skipped in the read model) run at most at the rate.
struct Pacer {
    period: Duration,
    next: Mutex<tokio::time::Instant>,
}

impl Pacer {
    fn new(per_sec: u32) -> Pacer {
        Pacer {
            period: Duration::from_secs_f64(1.0 / f64::from(per_sec.max(1))),
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    fn slot(&self) -> tokio::time::Instant {
        let mut next = self.next.lock().expect("the pacer is never poisoned");
        let slot = (*next).max(tokio::time::Instant::now());
        *next = slot + self.period;
        slot
    }
}

/// A job for the supervisor: an operation this engine owns at `revision`.
#[derive(Debug)]
struct Job {
    operation: Operation,
    revision: u64,
}

/// Bulk operations of one engine: their records, the replay claims, and
/// the operations this engine runs.
#[derive(Debug, Clone)]
pub struct Operations {
    records: kv::Store,
    replays: kv::Store,
    owner: String,
    jobs: mpsc::Sender<Job>,
    inbox: Arc<Mutex<Option<mpsc::Receiver<Job>>>>,
    running: Arc<Mutex<HashMap<String, CancellationToken>>>,
}

impl Operations {
    /// Opens (creating if missing) the `<p>-operations` and `<p>-replays`
    /// buckets; `owner` names this engine in the records it runs.
    pub async fn open(
        js: &jetstream::Context,
        layout: &Layout,
        owner: String,
    ) -> Result<Operations, LayoutError> {
        let records = layout.operations_bucket(js).await?;
        let replays = layout.replays_bucket(js).await?;
        let (jobs, inbox) = mpsc::channel(64);
        Ok(Operations {
            records,
            replays,
            owner,
            jobs,
            inbox: Arc::new(Mutex::new(Some(inbox))),
            running: Arc::default(),
        })
    }

    /// Records `operation` and starts it on this engine.
    pub async fn start(&self, mut operation: Operation) -> Result<Operation, OperationsError> {
        operation.owner = Some(self.owner.clone());
        let revision = self
            .records
            .create(&operation.id, operation.encode())
            .await
            .map_err(|source| OperationsError::Record {
                id: operation.id.clone(),
                source,
            })?;
        let job = Job {
            operation: operation.clone(),
            revision,
        };
        // A closed supervisor means the engine is stopping: the record stays
        // running and another engine resumes it once this one's is stale.
        let _ = self.jobs.send(job).await;
        Ok(operation)
    }

    /// One operation.
    pub async fn get(&self, id: &str) -> Result<Option<Operation>, OperationsError> {
        Ok(self.entry(id).await?.map(|(op, _)| op))
    }

    async fn entry(&self, id: &str) -> Result<Option<(Operation, u64)>, OperationsError> {
        if !valid_key(id) {
            return Ok(None);
        }
        let entry = self
            .records
            .entry(id)
            .await
            .map_err(|source| OperationsError::Read {
                id: id.to_owned(),
                source,
            })?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| {
                let op = serde_json::from_slice::<Operation>(&e.value).ok()?;
                Some((op, e.revision))
            }))
    }

    /// Every operation, newest first.
    pub async fn list(&self) -> Result<Vec<Operation>, OperationsError> {
        let keys: Vec<String> = match self.records.keys().await {
            Ok(keys) => keys.filter_map(|k| async move { k.ok() }).collect().await,
            Err(e) => return Err(OperationsError::List(e)),
        };
        let mut operations = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(op) = self.get(&key).await? {
                operations.push(op);
            }
        }
        operations.sort_by_key(|op| std::cmp::Reverse(op.created_at));
        Ok(operations)
    }

    /// Cancels a running operation: its record says so at once, and its
    /// runner (on this engine or another) stops starting new items.
    pub async fn cancel(&self, id: &str, by: &str) -> Result<CancelOutcome, OperationsError> {
        loop {
            let Some((mut op, revision)) = self.entry(id).await? else {
                return Ok(CancelOutcome::NotFound);
            };
            if op.state != OperationState::Running {
                return Ok(CancelOutcome::Ended(op));
            }
            let now = Utc::now();
            op.state = OperationState::Cancelled;
            op.cancelled_by = Some(by.to_owned());
            op.finished_at = Some(now);
            op.updated_at = now;
            match self.records.update(id, op.encode(), revision).await {
                Ok(_) => {
                    if let Some(token) = self.lock_running().get(id) {
                        token.cancel();
                    }
                    return Ok(CancelOutcome::Cancelled(op));
                }
                // The runner wrote in between: read again.
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(source) => {
                    return Err(OperationsError::Update {
                        id: id.to_owned(),
                        source,
                    });
                }
            }
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.running
            .lock()
            .expect("the running operations are never poisoned")
    }

    /// Runs the operations started on this engine, and resumes orphaned
    /// ones, until `shutdown`; then waits for its runners to record where
    /// they stopped.
    pub async fn supervise(self, executions: Executions, shutdown: CancellationToken) {
        let Some(mut inbox) = self
            .inbox
            .lock()
            .expect("the inbox is never poisoned")
            .take()
        else {
            tracing::error!("bulk operations are supervised twice");
            return;
        };
        let mut runners = JoinSet::new();
        // Look for orphans soon after the projection caught up, then now
        // and then.
        let mut pause = Duration::from_millis(100);
        let scan = tokio::time::sleep(pause);
        tokio::pin!(scan);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                job = inbox.recv() => match job {
                    Some(job) => self.spawn(&mut runners, &executions, job, &shutdown),
                    None => break,
                },
                _ = &mut scan => {
                    if executions.projection.is_caught_up() {
                        if let Err(e) = self.resume_orphans(&mut runners, &executions, &shutdown).await {
                            tracing::warn!(error = %e, "cannot look for bulk operations to resume");
                        }
                        pause = SCAN_EVERY;
                    }
                    scan.as_mut().reset(tokio::time::Instant::now() + pause);
                }
                Some(_) = runners.join_next(), if !runners.is_empty() => {}
            }
        }
        while runners.join_next().await.is_some() {}
    }

    fn spawn(
        &self,
        runners: &mut JoinSet<()>,
        executions: &Executions,
        job: Job,
        shutdown: &CancellationToken,
    ) {
        let stop = shutdown.child_token();
        self.lock_running()
            .insert(job.operation.id.clone(), stop.clone());
        let (this, executions, shutdown) = (self.clone(), executions.clone(), shutdown.clone());
        runners.spawn(async move {
            let id = job.operation.id.clone();
            this.run(&executions, job, stop, &shutdown).await;
            this.lock_running().remove(&id);
        });
    }

    /// Takes over running operations that nobody runs (their engine
    /// stopped) or whose owner stopped writing (it died).
    async fn resume_orphans(
        &self,
        runners: &mut JoinSet<()>,
        executions: &Executions,
        shutdown: &CancellationToken,
    ) -> Result<(), OperationsError> {
        let keys: Vec<String> = match self.records.keys().await {
            Ok(keys) => keys.filter_map(|k| async move { k.ok() }).collect().await,
            Err(e) => return Err(OperationsError::List(e)),
        };
        let stale = chrono::TimeDelta::from_std(STALE_AFTER).unwrap_or_default();
        for key in keys {
            if self.lock_running().contains_key(&key) {
                continue;
            }
            let Some((mut op, revision)) = self.entry(&key).await? else {
                continue;
            };
            let now = Utc::now();
            let orphaned = op.state == OperationState::Running
                && (op.owner.is_none() || now - op.updated_at > stale);
            if !orphaned {
                continue;
            }
            op.owner = Some(self.owner.clone());
            op.resumed += 1;
            op.updated_at = now;
            // Compare-and-set: of several engines, one takes it over.
            if let Ok(revision) = self.records.update(&key, op.encode(), revision).await {
                tracing::info!(operation = %key, name = %op.name, "resuming a bulk operation");
                let job = Job {
                    operation: op,
                    revision,
                };
                self.spawn(runners, executions, job, shutdown);
            }
        }
        Ok(())
    }

    /// Works through an operation's matches at its rate, writing progress
    /// as it goes, until done, cancelled, or `shutdown`.
    async fn run(
        &self,
        executions: &Executions,
        job: Job,
        stop: CancellationToken,
        shutdown: &CancellationToken,
    ) {
        let Job {
            operation: mut op,
            mut revision,
        } = job;
        let ids = match op.kind {
            OperationKind::Replay => executions
                .projection
                .dead_letter_ids(&op.filter.dead_letters(Some(op.upto_seq))),
            OperationKind::Cancel => executions
                .projection
                .ids(&op.filter.executions(), op.upto_seq),
        };
        // Counted afresh on every (re)start: what an earlier run did shows
        // up as done (its replays carry this operation's label).
        op.matched = ids.len() as u64;
        (op.done, op.skipped, op.failed) = (0, 0, 0);
        op.errors.clear();
        let rate = op.rate_per_sec.clamp(1, MAX_RATE);
        let concurrency = ((rate / CONCURRENCY_PER_RATE) as usize).clamp(4, MAX_CONCURRENCY);
        let ctx = &Item {
            op: op.clone(),
            pacer: Pacer::new(rate),
            stop: stop.clone(),
        };
        let work = futures::stream::iter(ids)
            .take_until(stop.clone().cancelled_owned())
            .map(|id| async move {
                let outcome = match ctx.op.kind {
                    OperationKind::Replay => self.replay_one(executions, ctx, &id).await,
                    OperationKind::Cancel => cancel_one(executions, ctx, &id).await,
                };
                (id, outcome)
            })
            .buffer_unordered(concurrency);
        tokio::pin!(work);
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.tick().await;
        let mut lost = false;
        loop {
            tokio::select! {
                next = work.next() => match next {
                    Some((id, outcome)) => count(&mut op, id, outcome),
                    None => break,
                },
                _ = flush.tick() => match self.write(&mut op, &mut revision).await {
                    Written::Saved => {}
                    Written::Cancelled => stop.cancel(),
                    Written::Lost => {
                        lost = true;
                        stop.cancel();
                    }
                },
            }
        }
        if lost {
            tracing::warn!(operation = %op.id, "another engine took the bulk operation over");
            return;
        }
        let now = Utc::now();
        if shutdown.is_cancelled() && op.state == OperationState::Running {
            // Interrupted: left for the next engine to resume at once.
            op.owner = None;
        } else if op.state == OperationState::Running && !stop.is_cancelled() {
            op.state = OperationState::Finished;
            op.finished_at = Some(now);
        }
        if op.state == OperationState::Cancelled {
            op.finished_at = Some(now);
        }
        for _ in 0..16 {
            match self.write(&mut op, &mut revision).await {
                Written::Saved | Written::Lost => break,
                // Cancelled meanwhile: `write` adopted that; write again.
                Written::Cancelled => op.finished_at = Some(now),
            }
        }
        tracing::info!(
            operation = %op.id, state = ?op.state, matched = op.matched, done = op.done,
            skipped = op.skipped, failed = op.failed, "bulk operation stopped"
        );
    }

    /// Writes the record with a compare-and-set. A record cancelled in the
    /// meantime is adopted as cancelled; one owned by another engine is lost.
    async fn write(&self, op: &mut Operation, revision: &mut u64) -> Written {
        op.updated_at = Utc::now();
        match self.records.update(&op.id, op.encode(), *revision).await {
            Ok(next) => {
                *revision = next;
                Written::Saved
            }
            Err(e) => {
                let current = match self.entry(&op.id).await {
                    Ok(current) => current,
                    Err(_) => {
                        tracing::debug!(error = %e, operation = %op.id, "cannot write progress");
                        return Written::Saved; // try again at the next flush
                    }
                };
                match current {
                    Some((theirs, next)) if theirs.owner == op.owner => {
                        *revision = next;
                        if theirs.state == OperationState::Cancelled {
                            op.state = OperationState::Cancelled;
                            op.cancelled_by = theirs.cancelled_by;
                            Written::Cancelled
                        } else {
                            Written::Saved
                        }
                    }
                    _ => Written::Lost,
                }
            }
        }
    }

    /// Replays one dead letter, at most once across operations and engines.
    async fn replay_one(
        &self,
        executions: &Executions,
        item: &Item,
        original: &ExecutionId,
    ) -> Outcome {
        let op = &item.op;
        let replays = executions.projection.replays_of(original);
        if replays
            .iter()
            .any(|r| r.operation.as_deref() == Some(&op.id))
        {
            return Outcome::Done; // by an earlier run of this operation
        }
        if !replays.is_empty() {
            return Outcome::Skipped;
        }
        if !item.turn().await {
            return Outcome::Abandoned;
        }
        let claim = Claim {
            replay: ExecutionId::generate(),
            operation: op.id.clone(),
            at: Utc::now(),
        };
        let body = serde_json::to_vec(&claim).expect("a claim always serialises");
        let claim = match self.replays.create(original.as_str(), body.into()).await {
            Ok(_) => claim,
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                match self.claim_of(original).await {
                    Ok(Some(theirs)) => theirs,
                    Ok(None) => return Outcome::Failed("the replay claim vanished".to_owned()),
                    Err(detail) => return Outcome::Failed(detail),
                }
            }
            Err(e) => return Outcome::Failed(format!("cannot claim the replay ({e})")),
        };
        let ours = claim.operation == op.id;
        if !ours {
            // Claimed by another operation: complete its replay if its
            // engine died before recording it, else leave it.
            match executions.journal.load(&claim.replay).await {
                Ok(history) if history.state.status != Status::New => return Outcome::Skipped,
                Ok(_) => {}
                Err(e) => return Outcome::Failed(e.to_string()),
            }
        }
        let request = RetryRequest {
            id: Some(claim.replay.clone()),
            labels: BTreeMap::from([(OPERATION_LABEL.to_owned(), claim.operation.clone())]),
        };
        match executions.retries.retry(original, request).await {
            Ok(_) if ours => Outcome::Done,
            Ok(_) => Outcome::Skipped,
            Err(e) => {
                // Give the dead letter back, so a re-run can try it again.
                if ours && let Err(e) = self.replays.delete(original.as_str()).await {
                    tracing::warn!(error = %e, %original, "cannot release a replay claim");
                }
                Outcome::Failed(e.to_string())
            }
        }
    }

    async fn claim_of(&self, original: &ExecutionId) -> Result<Option<Claim>, String> {
        let value = self
            .replays
            .get(original.as_str())
            .await
            .map_err(|e| format!("cannot read the replay claim ({e})"))?;
        Ok(value.and_then(|v| serde_json::from_slice(&v).ok()))
    }
}

enum Written {
    Saved,
    Cancelled,
    Lost,
}

fn count(op: &mut Operation, id: ExecutionId, outcome: Outcome) {
    match outcome {
        Outcome::Done => op.done += 1,
        Outcome::Skipped => op.skipped += 1,
        Outcome::Failed(detail) => {
            op.failed += 1;
            if op.errors.len() < MAX_ERRORS {
                op.errors.push(ItemError { id, detail });
            }
        }
        Outcome::Abandoned => {}
    }
}

/// Cancels one execution through the same path as the cancel route. The
/// cancel records the operation, which is how a resumed run knows its own
/// work.
async fn cancel_one(executions: &Executions, item: &Item, execution: &ExecutionId) -> Outcome {
    let op = &item.op;
    if let Some(entry) = executions.projection.get(execution)
        && (entry.state.status.is_terminal() || entry.state.cancel_requested)
    {
        let ours = entry.state.cancelled_by_operation.as_deref() == Some(op.id.as_str());
        return if ours {
            Outcome::Done
        } else {
            Outcome::Skipped
        };
    }
    if !item.turn().await {
        return Outcome::Abandoned;
    }
    let reason = format!(
        "{} (bulk operation {} \"{}\")",
        op.reason.as_deref().unwrap_or("cancelled in bulk"),
        op.id,
        op.name
    );
    match executions
        .journal
        .transition(
            execution,
            &Command::RequestCancel {
                reason,
                operation: Some(op.id.clone()),
            },
            Utc::now(),
        )
        .await
    {
        Ok(_) => Outcome::Done,
        // It ended, or a cancel is under way already.
        Err(TransitionError::Rejected(_)) => Outcome::Skipped,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Whether `s` can be a bucket key (operation ids are execution-id tokens).
fn valid_key(s: &str) -> bool {
    runlog_events::id::validate_token(s).is_ok()
}
