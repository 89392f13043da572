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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use futures::StreamExt;
use runlog_events::codec::{self, Limits};
use runlog_events::decider::{self, ExecutionState, Status};
use runlog_events::{Envelope, ExecutionId, Priority, QueueName, Subjects};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

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

/// Completions remembered for throughput and latency figures.
const RECENT: usize = 4096;

/// Executions per state, queue depths and recent completions.
#[derive(Debug, Default)]
struct Tally {
    by_status: HashMap<Status, u64>,
    queues: BTreeMap<QueueName, QueueTally>,
    /// (finished at, submitted → finished in ms) of recent terminal executions.
    recent: VecDeque<(DateTime<Utc>, i64)>,
}

/// What a queue holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueTally {
    /// Attempts waiting for a worker, per priority.
    pub queued: BTreeMap<Priority, u64>,
    /// Attempts running.
    pub running: u64,
    /// Executions waiting for a retry's backoff.
    pub retry_scheduled: u64,
}

/// Throughput and latency of recent completions.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Rates {
    /// Executions that ended in the last minute.
    pub completed_last_minute: u64,
    /// Per second, over the last minute.
    pub per_second: f64,
    /// Submission → end, in milliseconds, over the recent completions.
    pub latency_ms_p50: Option<i64>,
    /// 95th percentile.
    pub latency_ms_p95: Option<i64>,
    /// 99th percentile.
    pub latency_ms_p99: Option<i64>,
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
}

/// Why following the log stopped.
#[derive(Debug, thiserror::Error)]
#[error("cannot follow the execution log: {0}")]
pub struct FollowError(String);

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

    /// Folds one stored event. Events at or below the execution's last
    /// folded sequence are ignored, so replays are idempotent.
    pub fn apply(&self, seq: u64, envelope: &Envelope) {
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
            folded = decider::apply(&mut entry.state, envelope).is_ok();
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
                slim(&mut entry.state);
            }
        }
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
    }

    fn count(&self, before: &Key, after: &Key, state: &ExecutionState) {
        let mut tally = self.tally.lock().expect("the tally is never poisoned");
        if let Some(status) = before.status {
            if let Some(n) = tally.by_status.get_mut(&status) {
                *n = n.saturating_sub(1);
            }
            if let Some(queue) = &before.queue {
                let q = tally.queues.entry(queue.clone()).or_default();
                q.adjust(status, before.priority, false);
            }
        }
        if let Some(status) = after.status {
            *tally.by_status.entry(status).or_default() += 1;
            if let Some(queue) = &after.queue {
                let q = tally.queues.entry(queue.clone()).or_default();
                q.adjust(status, after.priority, true);
            }
            if status.is_terminal()
                && let (Some(start), Some(end)) = (state.submitted_at, state.finished_at)
            {
                if tally.recent.len() == RECENT {
                    tally.recent.pop_front();
                }
                tally
                    .recent
                    .push_back((end, (end - start).num_milliseconds()));
            }
        }
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

    /// Executions per state.
    pub fn counts(&self) -> BTreeMap<Status, u64> {
        let tally = self.tally.lock().expect("the tally is never poisoned");
        tally
            .by_status
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| (*s, *n))
            .collect()
    }

    /// What every queue holds now.
    pub fn queues(&self) -> BTreeMap<QueueName, QueueTally> {
        let tally = self.tally.lock().expect("the tally is never poisoned");
        tally.queues.clone()
    }

    /// Throughput and latency of recent completions, as of `now`.
    pub fn rates(&self, now: DateTime<Utc>) -> Rates {
        // Copied out, so the fold waits for a copy, not for a sort.
        let recent: Vec<(DateTime<Utc>, i64)> = {
            let tally = self.tally.lock().expect("the tally is never poisoned");
            tally.recent.iter().copied().collect()
        };
        let minute_ago = now - chrono::TimeDelta::minutes(1);
        let completed = recent.iter().filter(|(t, _)| *t >= minute_ago).count() as u64;
        let mut latencies: Vec<i64> = recent.into_iter().map(|(_, ms)| ms).collect();
        latencies.sort_unstable();
        let pct = |p: f64| {
            (!latencies.is_empty()).then(|| {
                let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
                latencies[i]
            })
        };
        Rates {
            completed_last_minute: completed,
            per_second: completed as f64 / 60.0,
            latency_ms_p50: pct(0.50),
            latency_ms_p95: pct(0.95),
            latency_ms_p99: pct(0.99),
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

    /// Whether the projection has folded every event stored when it
    /// started following (the API's readiness).
    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Relaxed)
    }

    /// Waits until [`is_caught_up`](Self::is_caught_up); false if `stop`
    /// came first. (Checked every 50 ms: the flag is a plain atomic.)
    pub async fn wait_caught_up(&self, stop: &CancellationToken) -> bool {
        while !self.is_caught_up() {
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            }
        }
        true
    }

    /// Replays the log after [`applied_seq`](Self::applied_seq) and keeps
    /// folding new events until `shutdown` is cancelled.
    ///
    /// Two phases: the catch-up reads what the log held at the start through
    /// a plain pull consumer with large batches (no acks: it only reads), then
    /// an ordered consumer follows from there, which survives reconnects and
    /// server restarts by itself.
    pub async fn follow(
        &self,
        js: &jetstream::Context,
        subjects: &Subjects,
        shutdown: CancellationToken,
    ) -> Result<(), FollowError> {
        let err = |e: &dyn std::fmt::Display| FollowError(e.to_string());
        let mut stream = js
            .get_stream(subjects.exec_stream())
            .await
            .map_err(|e| err(&e))?;
        let last = stream
            .info()
            .await
            .map_err(|e| err(&e))?
            .state
            .last_sequence;
        if self.applied_seq() < last && !self.catch_up(&stream, subjects, last, &shutdown).await? {
            return Ok(());
        }
        // Everything stored when following began is folded: that is ready.
        self.caught_up.store(true, Ordering::Relaxed);
        let mut consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subjects.all_events(),
                deliver_policy: after(self.applied_seq()),
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?;
        if consumer.info().await.map_err(|e| err(&e))?.num_pending == 0 {
            self.caught_up.store(true, Ordering::Relaxed);
        }
        let messages = consumer.messages().await.map_err(|e| err(&e))?;
        let mut decoded = pipeline(messages);
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = decoded.next() => match next {
                    Some(Ok(batch)) => batch?,
                    Some(Err(e)) => return Err(err(&e)),
                    None => return Err(FollowError("the consumer ended".into())),
                },
            };
            let live = self.live.get().filter(|live| live.receiver_count() > 0);
            for event in batch {
                let pending = event.pending;
                let folded = self.fold(event);
                if let (Some(live), Some((seq, envelope))) = (live, folded) {
                    let _no_receivers =
                        live.send(Arc::new(crate::live::Stored::new(seq, envelope)));
                }
                if pending == 0 {
                    self.caught_up.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// Folds the log up to `last` (or as far as it goes, if events past
    /// `last` never match the filter). Returns false when `shutdown` came
    /// first.
    async fn catch_up(
        &self,
        stream: &jetstream::stream::Stream,
        subjects: &Subjects,
        last: u64,
        shutdown: &CancellationToken,
    ) -> Result<bool, FollowError> {
        let err = |e: &dyn std::fmt::Display| FollowError(e.to_string());
        let mut consumer = stream
            .create_consumer(pull::Config {
                filter_subject: subjects.all_events(),
                deliver_policy: after(self.applied_seq()),
                ack_policy: AckPolicy::None,
                memory_storage: true,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?;
        let name = consumer.cached_info().name.clone();
        let result = async {
            if consumer.info().await.map_err(|e| err(&e))?.num_pending == 0 {
                return Ok(true);
            }
            let messages = consumer
                .stream()
                .max_messages_per_batch(CATCH_UP_BATCH)
                .messages()
                .await
                .map_err(|e| err(&e))?;
            let mut decoded = pipeline(messages);
            loop {
                let batch = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(false),
                    next = decoded.next() => match next {
                        Some(Ok(batch)) => batch?,
                        Some(Err(e)) => return Err(err(&e)),
                        None => return Err(FollowError("the catch-up consumer ended".into())),
                    },
                };
                let mut done = false;
                for event in batch {
                    done |= event.seq >= last || event.pending == 0;
                    self.fold(event);
                }
                if done {
                    return Ok(true);
                }
            }
        }
        .await;
        // Best effort: the server removes it after its inactive threshold anyway.
        let _ = stream.delete_consumer(&name).await;
        result
    }

    /// Folds a decoded event and hands it back; an undecodable one is
    /// counted and skipped.
    fn fold(&self, event: Decoded) -> Option<(u64, Envelope)> {
        match event.envelope {
            Ok(envelope) => {
                self.apply(event.seq, &envelope);
                Some((event.seq, envelope))
            }
            Err(e) => {
                tracing::debug!(seq = event.seq, error = %e, "skipping an undecodable event");
                self.skipped.fetch_add(1, Ordering::Relaxed);
                self.applied.fetch_max(event.seq, Ordering::Relaxed);
                None
            }
        }
    }
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

/// Delivery from the sequence after `seq`.
fn after(seq: u64) -> DeliverPolicy {
    if seq == 0 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        }
    }
}

/// Messages decoded together.
const BATCH: usize = 512;
/// Batches decoded at once.
const DECODERS: usize = 2;
/// Messages per pull request while catching up: fewer round trips than the
/// ordered consumer's 500.
const CATCH_UP_BATCH: usize = 4096;

/// Three stages overlap: the client library receives, up to [`DECODERS`]
/// batches decode at once on the runtime's threads, and the caller folds
/// them in log order. Whatever is ready forms a batch, so a replay moves in
/// large batches and a live event is folded at once.
fn pipeline<E: std::fmt::Display + Send + 'static>(
    messages: impl futures::Stream<Item = Result<jetstream::Message, E>> + Send + 'static,
) -> impl futures::Stream<Item = Result<Result<Vec<Decoded>, FollowError>, tokio::task::JoinError>>
{
    messages
        .ready_chunks(BATCH)
        .map(|batch| tokio::spawn(async move { decode_batch(batch) }))
        .buffered(DECODERS)
}

/// A stored event, decoded (or not) and ready to fold.
struct Decoded {
    seq: u64,
    /// Messages the consumer still had to deliver after this one.
    pending: u64,
    envelope: Result<Envelope, codec::DecodeError>,
}

fn decode_batch<E: std::fmt::Display>(
    batch: Vec<Result<jetstream::Message, E>>,
) -> Result<Vec<Decoded>, FollowError> {
    let limits = Limits::default();
    let empty = async_nats::HeaderMap::new();
    batch
        .into_iter()
        .map(|message| {
            let message = message.map_err(|e| FollowError(e.to_string()))?;
            let info = message.info().map_err(|e| FollowError(e.to_string()))?;
            let headers = message.headers.as_ref().unwrap_or(&empty);
            Ok(Decoded {
                seq: info.stream_sequence,
                pending: info.pending,
                envelope: codec::decode(headers, &message.payload, &limits),
            })
        })
        .collect()
}

/// What the tally counts an execution under.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    status: Option<Status>,
    queue: Option<QueueName>,
    priority: Priority,
}

impl Key {
    fn none() -> Key {
        Key {
            status: None,
            queue: None,
            priority: Priority::default(),
        }
    }

    fn of(state: &ExecutionState) -> Key {
        Key {
            status: (state.status != Status::New).then_some(state.status),
            queue: state.spec.as_ref().map(|s| s.queue.clone()),
            priority: state.spec.as_ref().map(|s| s.priority).unwrap_or_default(),
        }
    }
}

impl QueueTally {
    fn adjust(&mut self, status: Status, priority: Priority, add: bool) {
        let slot = match status {
            Status::Queued => self.queued.entry(priority).or_default(),
            Status::Running => &mut self.running,
            Status::RetryScheduled => &mut self.retry_scheduled,
            _ => return,
        };
        *slot = if add {
            slot.saturating_add(1)
        } else {
            slot.saturating_sub(1)
        };
    }
}

// Dead letters: a compact index beside the executions, so the dead-letter
// routes and bulk replays never scan every execution. Per dead letter it
// keeps what the execution's entry does not hold in a searchable form (the
// sequence and time of the dead letter, its reason and its last error class);
// per retried execution the executions that retry it.

use runlog_events::ErrorClass;
use runlog_events::event::{DeadLetterReason, Event};

/// The label a bulk operation puts on every execution it starts.
pub const OPERATION_LABEL: &str = "runlog.operation";

/// One dead-lettered execution, as the index keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetter {
    /// The stream sequence of its `dead_lettered` event: its place in
    /// listings, and the cursor of a page.
    pub seq: u64,
    /// When it was dead-lettered.
    pub at: DateTime<Utc>,
    /// Why.
    pub reason: DeadLetterReason,
    /// The class of its last error (none when no attempt failed: workers
    /// kept dying).
    pub class: Option<ErrorClass>,
}

/// A later execution that retries an earlier one (`spec.retry_of`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replay {
    /// The new execution.
    pub id: ExecutionId,
    /// The bulk operation that started it (its `runlog.operation` label).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

/// Filters of [`Projection::dead_letters`].
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only this queue.
    pub queue: Option<QueueName>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only dead letters whose last error is of this class.
    pub class: Option<ErrorClass>,
    /// Only dead letters of this reason.
    pub reason: Option<DeadLetterReason>,
    /// Only executions carrying every one of these labels.
    pub labels: BTreeMap<String, String>,
    /// Dead-lettered at or after.
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    pub until: Option<DateTime<Utc>>,
    /// Only dead letters that were (`true`) or were not (`false`) retried.
    pub replayed: Option<bool>,
    /// Only dead letters recorded at or below this stream sequence.
    pub upto_seq: Option<u64>,
}

/// A dead letter with what listings show of its execution.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterView {
    /// The execution.
    pub id: ExecutionId,
    /// Its index entry.
    pub letter: DeadLetter,
    /// Its queue.
    pub queue: Option<QueueName>,
    /// Its kind.
    pub kind: Option<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The attempt it ended at.
    pub attempts: u32,
    /// Every failed attempt, oldest first.
    pub errors: Vec<runlog_events::event::AttemptError>,
    /// The executions that retry it.
    pub replays: Vec<Replay>,
}

/// A page of [`Projection::dead_letters`].
#[derive(Debug, Clone)]
pub struct DeadLetterPage {
    /// Newest dead letter first.
    pub items: Vec<DeadLetterView>,
    /// Pass as `before` for the next page; `None` on the last page.
    pub next: Option<u64>,
}

#[derive(Debug, Default)]
struct DeadLetterIndex {
    by_id: HashMap<ExecutionId, DeadLetter>,
    order: BTreeMap<u64, ExecutionId>,
    replays: HashMap<ExecutionId, Vec<Replay>>,
}

impl DeadLetterIndex {
    fn insert(&mut self, id: ExecutionId, letter: DeadLetter) {
        if let Some(old) = self.by_id.insert(id.clone(), letter) {
            self.order.remove(&old.seq);
        }
        self.order.insert(letter.seq, id);
    }

    fn link(&mut self, original: ExecutionId, replay: Replay) {
        let replays = self.replays.entry(original).or_default();
        if !replays.contains(&replay) {
            replays.push(replay);
        }
    }
}

impl DeadLetterFilter {
    fn matches(&self, letter: &DeadLetter, state: &ExecutionState, replayed: bool) -> bool {
        let spec = state.spec.as_ref();
        self.upto_seq.is_none_or(|s| letter.seq <= s)
            && self.class.is_none_or(|c| letter.class == Some(c))
            && self.reason.is_none_or(|r| letter.reason == r)
            && self.since.is_none_or(|t| letter.at >= t)
            && self.until.is_none_or(|t| letter.at < t)
            && self.replayed.is_none_or(|r| r == replayed)
            && self
                .queue
                .as_ref()
                .is_none_or(|q| spec.is_some_and(|s| s.queue == *q))
            && self
                .kind
                .as_ref()
                .is_none_or(|k| spec.is_some_and(|s| s.kind == *k))
            && self
                .labels
                .iter()
                .all(|(k, v)| spec.is_some_and(|s| s.labels.get(k) == Some(v)))
    }
}

impl Projection {
    /// Records a folded `dead_lettered` event, or the retry link of the
    /// event that created an execution (`submitted`, or a first `queued`).
    fn index_dead_letter(&self, seq: u64, envelope: &Envelope) {
        let index = || {
            self.dead_letters
                .write()
                .expect("the dead-letter index is never poisoned")
        };
        match &envelope.event {
            Event::DeadLettered(d) => index().insert(
                envelope.execution.clone(),
                DeadLetter {
                    seq,
                    at: envelope.time,
                    reason: d.reason,
                    class: d.errors.last().map(|e| e.error.class),
                },
            ),
            event => {
                let spec = match event {
                    Event::Submitted(s) => Some(&s.spec),
                    Event::Queued(q) => q.spec.as_deref(),
                    _ => None,
                };
                if let Some(spec) = spec
                    && let Some(original) = &spec.retry_of
                {
                    index().link(original.clone(), replay_of(&envelope.execution, spec));
                }
            }
        }
    }

    /// The dead-letter index of a restored execution. A snapshot keeps the
    /// folded state only: the dead letter's sequence is the execution's last
    /// one (nothing follows a terminal event) and its reason is the state's.
    fn restore_dead_letter(&self, execution: &ExecutionId, entry: &Entry) {
        let state = &entry.state;
        let mut index = self
            .dead_letters
            .write()
            .expect("the dead-letter index is never poisoned");
        if let Some(original) = state.spec.as_ref().and_then(|s| s.retry_of.clone()) {
            let spec = state.spec.as_ref().expect("checked above");
            index.link(original, replay_of(execution, spec));
        }
        if state.status == Status::DeadLettered {
            index.insert(
                execution.clone(),
                DeadLetter {
                    seq: entry.last_seq,
                    at: state.finished_at.unwrap_or_default(),
                    reason: state
                        .dead_letter_reason
                        .unwrap_or(DeadLetterReason::AttemptsExhausted),
                    class: state.errors.last().map(|e| e.error.class),
                },
            );
        }
    }

    /// Dead letters held.
    pub fn dead_letter_count(&self) -> usize {
        self.dead_letters
            .read()
            .expect("the dead-letter index is never poisoned")
            .by_id
            .len()
    }

    /// Dead letters matching `filter`, newest first, `limit` at most,
    /// starting below the `before` cursor of a previous page.
    pub fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        before: Option<u64>,
        limit: usize,
    ) -> DeadLetterPage {
        let index = self
            .dead_letters
            .read()
            .expect("the dead-letter index is never poisoned");
        let mut items = Vec::with_capacity(limit.min(1024));
        let mut next = None;
        for (seq, id) in index.order.range(..before.unwrap_or(u64::MAX)).rev() {
            let (Some(letter), Some(entry)) = (index.by_id.get(id), self.executions.get(id)) else {
                continue;
            };
            let replays = index.replays.get(id).map(Vec::as_slice).unwrap_or_default();
            if !filter.matches(letter, &entry.state, !replays.is_empty()) {
                continue;
            }
            if items.len() == limit {
                next = items.last().map(|v: &DeadLetterView| v.letter.seq);
                break;
            }
            let spec = entry.state.spec.as_ref();
            debug_assert_eq!(*seq, letter.seq);
            items.push(DeadLetterView {
                id: id.clone(),
                letter: *letter,
                queue: spec.map(|s| s.queue.clone()),
                kind: spec.map(|s| s.kind.clone()),
                labels: spec.map(|s| s.labels.clone()).unwrap_or_default(),
                attempts: entry.state.attempt,
                errors: entry.state.errors.clone(),
                replays: replays.to_vec(),
            });
        }
        DeadLetterPage { items, next }
    }

    /// One dead letter.
    pub fn dead_letter(&self, execution: &ExecutionId) -> Option<DeadLetterView> {
        let letter = *self
            .dead_letters
            .read()
            .expect("the dead-letter index is never poisoned")
            .by_id
            .get(execution)?;
        let filter = DeadLetterFilter {
            upto_seq: Some(letter.seq),
            ..DeadLetterFilter::default()
        };
        self.dead_letters(&filter, Some(letter.seq + 1), 1)
            .items
            .pop()
            .filter(|v| v.id == *execution)
    }

    /// The ids of every dead letter matching `filter`, oldest first.
    pub fn dead_letter_ids(&self, filter: &DeadLetterFilter) -> Vec<ExecutionId> {
        let index = self
            .dead_letters
            .read()
            .expect("the dead-letter index is never poisoned");
        index
            .order
            .values()
            .filter(|id| {
                let (Some(letter), Some(entry)) = (index.by_id.get(*id), self.executions.get(*id))
                else {
                    return false;
                };
                let replayed = index.replays.get(*id).is_some_and(|r| !r.is_empty());
                filter.matches(letter, &entry.state, replayed)
            })
            .cloned()
            .collect()
    }

    /// The executions that retry `original`, in log order.
    pub fn replays_of(&self, original: &ExecutionId) -> Vec<Replay> {
        self.dead_letters
            .read()
            .expect("the dead-letter index is never poisoned")
            .replays
            .get(original)
            .cloned()
            .unwrap_or_default()
    }

    /// The ids of every execution matching `filter` whose first event is at
    /// or below `upto_seq`, oldest first.
    pub fn ids(&self, filter: &Filter, upto_seq: u64) -> Vec<ExecutionId> {
        let order = self
            .order
            .read()
            .expect("the order index is never poisoned");
        order
            .range(..=upto_seq)
            .filter(|(_, id)| {
                self.executions
                    .get(*id)
                    .is_some_and(|e| filter.matches(&e.state))
            })
            .map(|(_, id)| id.clone())
            .collect()
    }
}

fn replay_of(execution: &ExecutionId, spec: &runlog_events::TaskSpec) -> Replay {
    Replay {
        id: execution.clone(),
        operation: spec.labels.get(OPERATION_LABEL).cloned(),
    }
}

#[cfg(test)]
mod dead_letter_tests {
    use super::*;
    use runlog_events::TaskSpec;
    use runlog_events::decider::Command;
    use runlog_events::event::{DeadLettered, Submitted};
    use runlog_events::spec::TaskError;

    fn event(id: &ExecutionId, attempt: u32, event: Event) -> Envelope {
        Envelope::new(id.clone(), attempt, Utc::now(), "/test", event)
    }

    #[test]
    fn dead_letters_and_their_replays_are_indexed_and_survive_a_snapshot() {
        let projection = Projection::new();
        let original = ExecutionId::new("orig").unwrap();
        let mut spec = TaskSpec::new("shell");
        spec.labels.insert("team".into(), "infra".into());
        // The real life of a dead letter, through the core's rules.
        let mut state = ExecutionState::default();
        let mut seq = 0;
        for command in [
            Command::Submit { spec: spec.clone() },
            Command::Enqueue,
            Command::Claim {
                worker: "w".into(),
                redelivered: false,
            },
            Command::Fail {
                attempt: 1,
                error: TaskError::new(ErrorClass::Permission, "denied"),
            },
            Command::ResolveFailure { jitter: 0.0 },
        ] {
            for fact in decider::decide(&command, &state, Utc::now()).unwrap() {
                let envelope = event(&original, fact.attempt, fact.event);
                seq += 1;
                projection.apply(seq, &envelope);
                state = decider::evolve(state, &envelope);
            }
        }
        assert_eq!(state.status, Status::DeadLettered);
        let replay = ExecutionId::new("again").unwrap();
        let mut again = spec.clone();
        again.retry_of = Some(original.clone());
        again.labels.insert(OPERATION_LABEL.into(), "op1".into());
        projection.apply(
            seq + 1,
            &event(&replay, 0, Event::Submitted(Submitted { spec: again })),
        );

        let check = |p: &Projection| {
            let view = p.dead_letter(&original).expect("indexed");
            assert_eq!(view.letter.reason, DeadLetterReason::Permanent);
            assert_eq!(view.letter.class, Some(ErrorClass::Permission));
            assert_eq!(
                view.replays,
                vec![Replay {
                    id: replay.clone(),
                    operation: Some("op1".into())
                }]
            );
            let filter = DeadLetterFilter {
                replayed: Some(false),
                ..Default::default()
            };
            assert!(p.dead_letter_ids(&filter).is_empty());
            let filter = DeadLetterFilter {
                class: Some(ErrorClass::Network),
                ..Default::default()
            };
            assert!(p.dead_letters(&filter, None, 10).items.is_empty());
        };
        check(&projection);
        let restored = Projection::new();
        for (id, entry) in projection.entries() {
            restored.restore(id, entry);
        }
        check(&restored);
    }

    #[test]
    fn every_reason_is_kept_in_the_state() {
        for reason in [
            DeadLetterReason::AttemptsExhausted,
            DeadLetterReason::Permanent,
            DeadLetterReason::MaxDeliveries,
        ] {
            let id = ExecutionId::new("x").unwrap();
            let mut state = decider::evolve(
                ExecutionState::default(),
                &event(
                    &id,
                    0,
                    Event::Submitted(Submitted {
                        spec: TaskSpec::new("k"),
                    }),
                ),
            );
            state = decider::evolve(
                state,
                &event(
                    &id,
                    0,
                    Event::DeadLettered(DeadLettered {
                        reason,
                        errors: vec![],
                    }),
                ),
            );
            assert_eq!(state.status, Status::DeadLettered);
            assert_eq!(state.dead_letter_reason, Some(reason));
        }
    }
}
