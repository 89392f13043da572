//! What the projection counts on every fold: executions per state, queue
//! depths per queue and priority, running per queue, recent completions.

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use runlog_events::decider::{ExecutionState, Status};
use runlog_events::{Priority, QueueName};
use serde::Serialize;

use super::Projection;

/// Completions remembered for throughput and latency figures.
const RECENT: usize = 4096;

/// Executions per state, queue depths and recent completions.
#[derive(Debug, Default)]
pub(super) struct Tally {
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

impl Projection {
    pub(super) fn count(&self, before: &Key, after: &Key, state: &ExecutionState) {
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
}

/// What the tally counts an execution under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Key {
    status: Option<Status>,
    queue: Option<QueueName>,
    priority: Priority,
}

impl Key {
    pub(super) fn none() -> Key {
        Key {
            status: None,
            queue: None,
            priority: Priority::default(),
        }
    }

    pub(super) fn of(state: &ExecutionState) -> Key {
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
