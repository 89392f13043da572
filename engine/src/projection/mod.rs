//! Projections: the execution log folded into an in-memory read model.
//!
//! The read model is thrown away and rebuilt at will: [`Projection::follow`]
//! replays `<p>.ev.>` from the stream's start (or from the sequence the
//! projection already holds) through the core's `evolve`, then stays live.
//! Every execution keeps the sequence of the newest event folded into it, so
//! a replayed event is never folded twice.
//!
//! A finished execution keeps only what listings and filters show (see
//! [`slim`]): the projection holds a million of them in about a GiB.
//!
//! Beside the executions it keeps what the API shows at a glance, updated
//! on every fold instead of counted per request: executions per state,
//! queue depth per queue and priority, running per queue, and recent
//! completions (throughput and end-to-end latency).
//!
//! Modules: [`follow`](Projection::follow) reads the log into the fold,
//! `tally` keeps the counts, `dead_letters` the dead-letter index.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use runlog_events::decider::{self, ExecutionState, Status};
use runlog_events::{Envelope, ExecutionId, QueueName};

mod dead_letters;
mod follow;
mod tally;

use dead_letters::DeadLetterIndex;
pub use dead_letters::{
    DeadLetter, DeadLetterFilter, DeadLetterPage, DeadLetterView, OPERATION_LABEL, Replay,
};
pub use follow::FollowError;
use tally::{Key, Tally};
pub use tally::{QueueTally, Rates};

/// One execution in the read model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    /// Its folded state.
    pub state: ExecutionState,
    /// The stream sequence of its first event (its place in listings).
    pub first_seq: u64,
    /// The stream sequence of the newest event folded in.
    pub last_seq: u64,
}

/// Filters of [`Projection::list`].
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only these states (any of them); empty means all.
    pub status: Vec<Status>,
    /// Only this queue.
    pub queue: Option<QueueName>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only executions carrying every one of these labels.
    pub labels: BTreeMap<String, String>,
    /// Submitted at or after.
    pub since: Option<DateTime<Utc>>,
    /// Submitted before.
    pub until: Option<DateTime<Utc>>,
}

impl Filter {
    /// Whether `state` passes.
    pub fn matches(&self, state: &ExecutionState) -> bool {
        if !self.status.is_empty() && !self.status.contains(&state.status) {
            return false;
        }
        let Some(spec) = &state.spec else {
            return self.queue.is_none()
                && self.kind.is_none()
                && self.labels.is_empty()
                && self.since.is_none()
                && self.until.is_none();
        };
        self.queue.as_ref().is_none_or(|q| *q == spec.queue)
            && self.kind.as_ref().is_none_or(|k| *k == spec.kind)
            && self
                .labels
                .iter()
                .all(|(k, v)| spec.labels.get(k) == Some(v))
            && self
                .since
                .is_none_or(|t| state.submitted_at.is_some_and(|s| s >= t))
            && self
                .until
                .is_none_or(|t| state.submitted_at.is_some_and(|s| s < t))
    }
}

/// A page of [`Projection::list`].
#[derive(Debug, Clone)]
pub struct Page {
    /// Executions, newest first.
    pub items: Vec<(ExecutionId, Entry)>,
    /// Pass as `before` for the next page; `None` on the last page.
    pub next: Option<u64>,
}

/// The in-memory read model of every execution.
#[derive(Debug, Default)]
pub struct Projection {
    executions: DashMap<ExecutionId, Entry>,
    order: RwLock<BTreeMap<u64, ExecutionId>>,
    tally: Mutex<Tally>,
    applied: AtomicU64,
    skipped: AtomicU64,
    caught_up: AtomicBool,
    restored: AtomicU64,
    dead_letters: RwLock<DeadLetterIndex>,
    /// Where events followed live are passed on (the SSE feeds).
    live: std::sync::OnceLock<tokio::sync::broadcast::Sender<Arc<crate::live::Stored>>>,
    /// Where the ends of workflow node runs are passed on (the runner).
    run_ends: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<RunEnd>>,
    /// What counts the events folded live (`/metrics`).
    metrics: std::sync::OnceLock<Arc<crate::metrics::EngineMetrics>>,
    /// Events the consumer still had to deliver after the latest one.
    lag: AtomicU64,
}

/// A node run's task execution ended: what the workflow runner needs to
/// know, read from the folded state before the read model drops its output.
#[derive(Debug, Clone)]
pub struct RunEnd {
    /// The workflow execution the task is a run of.
    pub workflow: ExecutionId,
    /// The task execution.
    pub execution: ExecutionId,
    /// How it ended.
    pub outcome: runlog_events::workflow::run::RunOutcome,
}

impl Projection {
    /// An empty projection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Passes every event folded while following (not during the
    /// catch-up) on to `live`, once folded: the engine's live feed reads the
    /// log through the projection instead of a second subscription.
    pub fn publish_to(&self, live: tokio::sync::broadcast::Sender<Arc<crate::live::Stored>>) {
        let _already = self.live.set(live);
    }

    /// Passes the end of every task execution linked to a workflow
    /// (`spec.workflow_execution`) on to `ends`, as it is folded (during the
    /// catch-up too: a runner that starts after its runs ended learns of
    /// them so).
    pub fn send_run_ends_to(&self, ends: tokio::sync::mpsc::UnboundedSender<RunEnd>) {
        let _already = self.run_ends.set(ends);
    }

    /// Counts every event folded once caught up (not during the catch-up:
    /// a restart does not count the past again) into `metrics`.
    pub fn count_into(&self, metrics: Arc<crate::metrics::EngineMetrics>) {
        let _already = self.metrics.set(metrics);
    }

    /// Events stored in the log that are not folded yet, as the consumer
    /// reported with its latest delivery.
    pub fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }

    /// Folds one stored event. Events at or below the execution's last
    /// folded sequence are ignored, so replays are idempotent.
    pub fn apply(&self, seq: u64, envelope: &Envelope) {
        self.apply_and_summarise(seq, envelope, false);
    }

    /// [`apply`](Self::apply), and with `summarise` the execution's
    /// [`summary`] after the event (what the live feeds carry).
    pub(crate) fn apply_and_summarise(
        &self,
        seq: u64,
        envelope: &Envelope,
        summarise: bool,
    ) -> Option<serde_json::Value> {
        // Most events find their execution: no key to clone then.
        let mut entry = match self.executions.get_mut(&envelope.execution) {
            Some(entry) => entry,
            None => self
                .executions
                .entry(envelope.execution.clone())
                .or_default(),
        };
        let mut first = false;
        let mut folded = false;
        if seq > entry.last_seq {
            let before = Key::of(&entry.state);
            let metrics = self.metrics.get().filter(|_| self.is_caught_up());
            let observed = metrics.map(|_| crate::metrics::Before::of(&entry.state));
            folded = decider::apply(&mut entry.state, envelope).is_ok();
            if let (Some(metrics), Some(before), true) = (metrics, observed, folded) {
                metrics.observe(envelope, before, &entry.state);
            }
            if !folded {
                self.skipped.fetch_add(1, Ordering::Relaxed);
            }
            if entry.first_seq == 0 {
                entry.first_seq = seq;
                first = true;
            }
            entry.last_seq = seq;
            let after = Key::of(&entry.state);
            if before != after {
                self.count(&before, &after, &entry.state);
            }
            if folded && entry.state.status.is_terminal() {
                self.run_ended(&envelope.execution, &entry.state);
                slim(&mut entry.state);
            }
        }
        let state = summarise.then(|| summary(&envelope.execution, &entry.state, entry.last_seq));
        drop(entry);
        // Outside the entry's lock: `list` takes these two the other way round.
        if first {
            self.order
                .write()
                .expect("the order index is never poisoned")
                .insert(seq, envelope.execution.clone());
        }
        if folded {
            self.index_dead_letter(seq, envelope);
        }
        self.applied.fetch_max(seq, Ordering::Relaxed);
        state
    }

    fn run_ended(&self, execution: &ExecutionId, state: &ExecutionState) {
        let (Some(ends), Some(workflow)) = (
            self.run_ends.get(),
            state
                .spec
                .as_ref()
                .and_then(|s| s.workflow_execution.as_ref()),
        ) else {
            return;
        };
        if let Some(outcome) = runlog_events::workflow::run::outcome_of(state) {
            let _runner_gone = ends.send(RunEnd {
                workflow: workflow.clone(),
                execution: execution.clone(),
                outcome,
            });
        }
    }

    /// The summary of `execution` if `seq` is the newest event folded into
    /// it: what a feed replaying the log can say of that event exactly.
    pub fn summary_at(&self, execution: &ExecutionId, seq: u64) -> Option<serde_json::Value> {
        let entry = self.executions.get(execution)?;
        (entry.last_seq == seq).then(|| summary(execution, &entry.state, seq))
    }

    /// Every execution held (a copy, for snapshots).
    pub fn entries(&self) -> Vec<(ExecutionId, Entry)> {
        self.executions
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    /// Puts back an execution from a snapshot.
    pub fn restore(&self, execution: ExecutionId, entry: Entry) {
        let after = Key::of(&entry.state);
        self.count(&Key::none(), &after, &entry.state);
        self.order
            .write()
            .expect("the order index is never poisoned")
            .insert(entry.first_seq, execution.clone());
        self.restore_dead_letter(&execution, &entry);
        self.executions.insert(execution, entry);
    }

    /// Marks a snapshot reflecting the log up to `seq` as restored: following
    /// resumes after it.
    pub fn restored(&self, seq: u64) {
        self.applied.fetch_max(seq, Ordering::Relaxed);
        self.restored.store(seq, Ordering::Relaxed);
    }

    /// The sequence of the snapshot this projection started from (0: it
    /// replayed the whole log).
    pub fn restored_seq(&self) -> u64 {
        self.restored.load(Ordering::Relaxed)
    }

    /// The state of one execution.
    pub fn get(&self, execution: &ExecutionId) -> Option<Entry> {
        self.executions.get(execution).map(|e| e.clone())
    }

    /// The queue and kind of one execution.
    pub fn queue_and_kind(&self, execution: &ExecutionId) -> Option<(QueueName, String)> {
        let entry = self.executions.get(execution)?;
        let spec = entry.state.spec.as_ref()?;
        Some((spec.queue.clone(), spec.kind.clone()))
    }

    /// Executions matching `filter`, newest first, `limit` at most, starting
    /// below the `before` cursor of a previous page.
    pub fn list(&self, filter: &Filter, before: Option<u64>, limit: usize) -> Page {
        let order = self
            .order
            .read()
            .expect("the order index is never poisoned");
        let mut items = Vec::with_capacity(limit.min(1024));
        let mut next = None;
        let range = order.range(..before.unwrap_or(u64::MAX));
        for (_, id) in range.rev() {
            let Some(entry) = self.executions.get(id) else {
                continue;
            };
            if !filter.matches(&entry.state) {
                continue;
            }
            if items.len() == limit {
                next = items
                    .last()
                    .map(|(_, e): &(ExecutionId, Entry)| e.first_seq);
                break;
            }
            items.push((id.clone(), entry.clone()));
        }
        Page { items, next }
    }

    /// Calls `f` with the state of every execution `filter` matches, in
    /// no particular order (a scan of the read model, for sums).
    pub fn for_each(&self, filter: &Filter, mut f: impl FnMut(&ExecutionState)) {
        for entry in self.executions.iter() {
            if filter.matches(&entry.state) {
                f(&entry.state);
            }
        }
    }

    /// Executions held.
    pub fn len(&self) -> usize {
        self.executions.len()
    }

    /// Whether no execution is held.
    pub fn is_empty(&self) -> bool {
        self.executions.is_empty()
    }

    /// The highest stream sequence folded so far.
    pub fn applied_seq(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Events that did not decode or that the state machine refused.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

/// An execution as listings and live feeds show it: the same object in
/// `GET /v1/executions` and in the `state` of every feed event.
pub fn summary(id: &ExecutionId, s: &ExecutionState, last_seq: u64) -> serde_json::Value {
    let spec = s.spec.as_ref();
    serde_json::json!({
        "id": id,
        "status": s.status,
        "attempt": s.attempt,
        "queue": spec.map(|s| &s.queue),
        "kind": spec.map(|s| &s.kind),
        "priority": spec.map(|s| s.priority),
        "labels": spec.map(|s| &s.labels),
        "worker": s.worker,
        "cancel_requested": s.cancel_requested,
        "submitted_at": s.submitted_at,
        "started_at": s.started_at,
        "finished_at": s.finished_at,
        "reason": s.reason,
        "trace_id": s.traceparent.as_ref().map(|t| t.trace_id()),
        "last_seq": last_seq,
    })
}

/// What a finished execution keeps in the read model: what listings,
/// filters, counts and dead letters show. Its input, output and progress
/// stay in the log, where `GET /v1/executions/{id}` reads them; only a dead
/// letter keeps its errors (`GET /v1/dead-letters` lists them).
pub fn slim(state: &mut ExecutionState) {
    state.output = None;
    state.progress = None;
    if state.status != Status::DeadLettered {
        state.errors = Vec::new();
    }
    if let Some(spec) = &mut state.spec {
        spec.input = serde_json::Value::Null;
        spec.sealed_env = Vec::new();
        spec.secrets = BTreeMap::new();
        spec.worker_labels = BTreeMap::new();
        spec.idempotency_key = None;
        spec.rate_key = None;
        spec.concurrency_key = None;
        spec.breaker = None;
    }
}
