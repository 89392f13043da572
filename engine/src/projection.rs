//! Projections: the execution log folded into an in-memory read model.
//!
//! The read model is thrown away and rebuilt at will: [`Projection::follow`]
//! replays `<p>.ev.>` from the stream's start (or from the sequence the
//! projection already holds) through the core's `evolve`, then stays live.
//! Every execution keeps the sequence of the newest event folded into it, so
//! a replayed event is never folded twice.
//!
//! Beside the executions it keeps what the API shows at a glance, updated
//! on every fold instead of counted per request: executions per state,
//! queue depth per queue and priority, running per queue, and recent
//! completions (throughput and end-to-end latency).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
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

    /// Folds one stored event. Events at or below the execution's last
    /// folded sequence are ignored, so replays are idempotent.
    pub fn apply(&self, seq: u64, envelope: &Envelope) {
        let mut entry = self
            .executions
            .entry(envelope.execution.clone())
            .or_default();
        let mut first = false;
        if seq > entry.last_seq {
            let before = Key::of(&entry.state);
            if decider::apply(&mut entry.state, envelope).is_err() {
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
        }
        drop(entry);
        // Outside the entry's lock: `list` takes these two the other way round.
        if first {
            self.order
                .write()
                .expect("the order index is never poisoned")
                .insert(seq, envelope.execution.clone());
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
        let tally = self.tally.lock().expect("the tally is never poisoned");
        let minute_ago = now - chrono::TimeDelta::minutes(1);
        let completed = tally
            .recent
            .iter()
            .filter(|(t, _)| *t >= minute_ago)
            .count() as u64;
        let mut latencies: Vec<i64> = tally.recent.iter().map(|(_, ms)| *ms).collect();
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

    /// Replays the log after [`applied_seq`](Self::applied_seq) and keeps
    /// folding new events until `shutdown` is cancelled.
    pub async fn follow(
        &self,
        js: &jetstream::Context,
        subjects: &Subjects,
        shutdown: CancellationToken,
    ) -> Result<(), FollowError> {
        let err = |e: &dyn std::fmt::Display| FollowError(e.to_string());
        let stream = js
            .get_stream_no_info(subjects.exec_stream())
            .await
            .map_err(|e| err(&e))?;
        let from = self.applied_seq();
        let deliver_policy = if from == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: from + 1,
            }
        };
        let mut consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subjects.all_events(),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?;
        if consumer.info().await.map_err(|e| err(&e))?.num_pending == 0 {
            self.caught_up.store(true, Ordering::Relaxed);
        }
        let mut messages = consumer.messages().await.map_err(|e| err(&e))?;
        let limits = Limits::default();
        let empty = async_nats::HeaderMap::new();
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = messages.next() => match next {
                    Some(message) => message.map_err(|e| err(&e))?,
                    None => return Err(FollowError("the consumer ended".into())),
                },
            };
            let info = message.info().map_err(|e| err(&e))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let headers = message.headers.as_ref().unwrap_or(&empty);
            match codec::decode(headers, &message.payload, &limits) {
                Ok(envelope) => self.apply(seq, &envelope),
                Err(e) => {
                    tracing::debug!(seq, error = %e, "skipping an undecodable event");
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                    self.applied.fetch_max(seq, Ordering::Relaxed);
                }
            }
            if pending == 0 {
                self.caught_up.store(true, Ordering::Relaxed);
            }
        }
    }
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
