//! `GET /metrics`: what the engine knows, in the Prometheus text format.
//!
//! Counters and histograms are folded from the log: the projection hands
//! every event it folds live (once it caught up, so a restart does not
//! count the past again) to [`EngineMetrics::observe`], with the state
//! before and after it. Gauges are read when scraped: queue depths and
//! running attempts from the projection's tally, its lag from the
//! consumer, the breakers from their bucket, the open SSE feeds from the
//! live feeds.
//!
//! Every engine replica folds the whole log, so each reports the whole
//! cluster's executions: aggregate replicas with `max`, not `sum`
//! (`docs/metrics.md`).
//!
//! Label values are bounded ([`Bounded`]): queue, kind and each
//! allow-listed task label keep their first 100 values, later ones are
//! `_other`. No execution id is ever a label.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use runlog_events::decider::{ExecutionState, Status};
use runlog_events::event::TimeoutScope;
use runlog_events::{Envelope, Event};
use runlog_metrics::prometheus_client::metrics::counter::Counter;
use runlog_metrics::prometheus_client::metrics::family::Family;
use runlog_metrics::prometheus_client::metrics::gauge::Gauge;
use runlog_metrics::prometheus_client::metrics::histogram::Histogram;
use runlog_metrics::prometheus_client::registry::Registry;
use runlog_metrics::{Bounded, LabelKey, Labels, Seconds};

/// What the state of an execution was before an event was folded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Before {
    pub status: Status,
    pub queued_at: Option<chrono::DateTime<chrono::Utc>>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Before {
    pub(crate) fn of(state: &ExecutionState) -> Before {
        Before {
            status: state.status,
            queued_at: state.queued_at,
            started_at: state.started_at,
        }
    }
}

/// The engine's metrics and the registry they are encoded from.
#[derive(Debug)]
pub struct EngineMetrics {
    registry: Registry,
    /// Task labels shown as `label_<name>`, allow-listed by the operator.
    task_labels: Vec<(String, LabelKey, Bounded)>,
    queues: Bounded,
    kinds: Bounded,
    submitted: Family<Labels, Counter>,
    attempts: Family<Labels, Counter>,
    ended: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    dead_letters: Family<Labels, Counter>,
    claim_latency: Family<Labels, Histogram, Seconds>,
    run_duration: Family<Labels, Histogram, Seconds>,
    queue_depth: Family<Labels, Gauge>,
    running: Family<Labels, Gauge>,
    retry_waiting: Family<Labels, Gauge>,
    executions: Family<Labels, Gauge>,
    lag: Gauge,
    applied: Gauge,
    sse_clients: Gauge,
    breakers: Family<Labels, Gauge>,
    spans: runlog_metrics::SpanCounts,
    /// The trace exporter, once traces are exported.
    traces: std::sync::OnceLock<runlog_telemetry::Traces>,
}

impl EngineMetrics {
    /// Metrics whose series carry the task labels `task_labels` (beside
    /// queue and kind) where a task has them.
    pub fn new(task_labels: &[String]) -> Self {
        let mut registry = Registry::default();
        let metrics = EngineMetrics {
            task_labels: task_labels
                .iter()
                .map(|name| (name.clone(), LabelKey::task(name), Bounded::default()))
                .collect(),
            queues: Bounded::default(),
            kinds: Bounded::default(),
            submitted: Family::default(),
            attempts: Family::default(),
            ended: Family::default(),
            retries: Family::default(),
            dead_letters: Family::default(),
            claim_latency: Family::new_with_constructor(Seconds),
            run_duration: Family::new_with_constructor(Seconds),
            queue_depth: Family::default(),
            running: Family::default(),
            retry_waiting: Family::default(),
            executions: Family::default(),
            lag: Gauge::default(),
            applied: Gauge::default(),
            sse_clients: Gauge::default(),
            breakers: Family::default(),
            spans: runlog_metrics::SpanCounts::new(),
            traces: std::sync::OnceLock::new(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "runlog_executions_submitted",
            "Executions recorded (submitted or queued at once), by queue and kind",
            metrics.submitted.clone(),
        );
        r.register(
            "runlog_attempts_started",
            "Attempts a worker claimed, by queue and kind",
            metrics.attempts.clone(),
        );
        r.register(
            "runlog_executions_ended",
            "Executions that reached a terminal status, by queue, kind and status",
            metrics.ended.clone(),
        );
        r.register(
            "runlog_retries",
            "Retries scheduled, by queue, kind and the error class of the failure",
            metrics.retries.clone(),
        );
        r.register(
            "runlog_dead_letters",
            "Executions dead-lettered, by queue, kind, reason and the error class of the last failure",
            metrics.dead_letters.clone(),
        );
        r.register(
            "runlog_claim_latency_seconds",
            "From an attempt's queued (or lost) event to its started event, by queue",
            metrics.claim_latency.clone(),
        );
        r.register(
            "runlog_run_duration_seconds",
            "From an attempt's started event to its end, by queue, kind and outcome",
            metrics.run_duration.clone(),
        );
        r.register(
            "runlog_queue_depth",
            "Attempts waiting for a worker, by queue and priority",
            metrics.queue_depth.clone(),
        );
        r.register(
            "runlog_running",
            "Attempts running, by queue",
            metrics.running.clone(),
        );
        r.register(
            "runlog_retry_waiting",
            "Executions waiting for a retry's backoff, by queue",
            metrics.retry_waiting.clone(),
        );
        r.register(
            "runlog_executions",
            "Executions in the read model, by status",
            metrics.executions.clone(),
        );
        r.register(
            "runlog_projection_lag_events",
            "Events stored in the log that the projection has not folded yet",
            metrics.lag.clone(),
        );
        r.register(
            "runlog_projection_applied_sequence",
            "The stream sequence of the newest event the projection folded",
            metrics.applied.clone(),
        );
        r.register(
            "runlog_sse_clients",
            "Server-Sent-Event feeds open",
            metrics.sse_clients.clone(),
        );
        r.register(
            "runlog_breaker_state",
            "Circuit breakers: 1 for the state each key is in (closed, open, half_open)",
            metrics.breakers.clone(),
        );
        r.register(
            "runlog_trace_spans",
            "Spans this engine handed to its trace exporter, by outcome (exported, dropped: queue full, failed: export request failed)",
            metrics.spans.family(),
        );
        EngineMetrics {
            registry,
            ..metrics
        }
    }

    /// Counts what `envelope` did to an execution, given its state
    /// `before` and `after` the fold.
    pub(crate) fn observe(&self, envelope: &Envelope, before: Before, after: &ExecutionState) {
        let labels = || self.task(after);
        if before.status == Status::New && after.status != Status::New {
            self.submitted.get_or_create(&labels()).inc();
        }
        match &envelope.event {
            Event::Started(_) => {
                self.attempts.get_or_create(&labels()).inc();
                if let Some(queued) = before.queued_at {
                    let queue = vec![(LabelKey::Fixed("queue"), self.queue_of(after))];
                    self.claim_latency
                        .get_or_create(&queue)
                        .observe(seconds(envelope.time - queued));
                }
            }
            Event::RetryScheduled(retry) => {
                let mut l = labels();
                l.push((LabelKey::Fixed("error_class"), snake(&retry.class)));
                self.retries.get_or_create(&l).inc();
            }
            Event::DeadLettered(dead) => {
                let mut l = labels();
                l.push((LabelKey::Fixed("reason"), snake(&dead.reason)));
                let class = dead.errors.last().map(|e| snake(&e.error.class));
                l.push((
                    LabelKey::Fixed("error_class"),
                    class.unwrap_or_else(|| "none".to_owned()),
                ));
                self.dead_letters.get_or_create(&l).inc();
            }
            _ => {}
        }
        if before.status == Status::Running
            && after.status != Status::Running
            && let (Some(started), Some(outcome)) = (before.started_at, attempt_outcome(envelope))
        {
            let mut l = labels();
            l.push((LabelKey::Fixed("outcome"), outcome.to_owned()));
            self.run_duration
                .get_or_create(&l)
                .observe(seconds(envelope.time - started));
        }
        if after.status.is_terminal() && !before.status.is_terminal() {
            let mut l = labels();
            l.push((LabelKey::Fixed("status"), after.status.to_string()));
            self.ended.get_or_create(&l).inc();
        }
    }

    fn queue_of(&self, state: &ExecutionState) -> String {
        match &state.spec {
            Some(spec) => self.queues.admit(spec.queue.as_str()),
            None => "none".to_owned(),
        }
    }

    /// Queue, kind and the allow-listed task labels of an execution.
    fn task(&self, state: &ExecutionState) -> Labels {
        let mut labels = Vec::with_capacity(4 + self.task_labels.len());
        let spec = state.spec.as_deref();
        labels.push((LabelKey::Fixed("queue"), self.queue_of(state)));
        labels.push((
            LabelKey::Fixed("kind"),
            spec.map_or_else(|| "none".to_owned(), |s| self.kinds.admit(&s.kind)),
        ));
        for (name, key, values) in &self.task_labels {
            let value = spec.and_then(|s| s.labels.get(name));
            labels.push((
                key.clone(),
                value.map_or_else(String::new, |v| values.admit(v)),
            ));
        }
        labels
    }

    /// Shows the spans `traces` exported, dropped and failed.
    pub(crate) fn count_spans_of(&self, traces: runlog_telemetry::Traces) {
        let _already = self.traces.set(traces);
    }

    /// Sets the gauges to `now`, then encodes every metric.
    pub(crate) fn scrape(&self, now: Readings) -> String {
        if let Some(t) = self.traces.get() {
            self.spans.set([t.exported(), t.dropped(), t.failed()]);
        }
        for tally in now.queues {
            let queue = self.queues.admit(&tally.queue);
            for priority in runlog_events::Priority::ALL {
                let depth = tally.queued.get(&priority).copied().unwrap_or(0);
                self.queue_depth
                    .get_or_create(&vec![
                        (LabelKey::Fixed("queue"), queue.clone()),
                        (LabelKey::Fixed("priority"), priority.to_string()),
                    ])
                    .set(depth as i64);
            }
            let by_queue = vec![(LabelKey::Fixed("queue"), queue)];
            self.running
                .get_or_create(&by_queue)
                .set(tally.running as i64);
            self.retry_waiting
                .get_or_create(&by_queue)
                .set(tally.retry_scheduled as i64);
        }
        let counts = now.counts;
        for status in Status::ALL.into_iter().filter(|s| *s != Status::New) {
            let n = counts.get(&status).copied().unwrap_or(0);
            self.executions
                .get_or_create(&vec![(LabelKey::Fixed("status"), status.to_string())])
                .set(n as i64);
        }
        self.lag.set(now.lag as i64);
        self.applied.set(now.applied_seq as i64);
        self.sse_clients.set(now.sse_clients);
        self.breakers.clear();
        for (key, state) in now.breakers {
            for s in ["closed", "open", "half_open"] {
                self.breakers
                    .get_or_create(&vec![
                        (LabelKey::Fixed("key"), key.clone()),
                        (LabelKey::Fixed("state"), s.to_owned()),
                    ])
                    .set(i64::from(state == s));
            }
        }
        runlog_metrics::encode(&self.registry)
    }
}

/// What the gauges show, read when scraped.
#[derive(Debug, Default)]
pub(crate) struct Readings {
    /// Per queue: attempts waiting per priority, running, waiting for a
    /// retry.
    pub queues: Vec<QueueReading>,
    /// Executions per status.
    pub counts: std::collections::BTreeMap<Status, u64>,
    /// Events not folded yet.
    pub lag: u64,
    /// The newest sequence folded.
    pub applied_seq: u64,
    /// Feeds open.
    pub sse_clients: i64,
    /// (key, state) of every breaker.
    pub breakers: Vec<(String, String)>,
}

/// What one queue holds.
#[derive(Debug, Default)]
pub(crate) struct QueueReading {
    pub queue: String,
    pub queued: std::collections::BTreeMap<runlog_events::Priority, u64>,
    pub running: u64,
    pub retry_scheduled: u64,
}

/// How a running attempt ended, by the event that ended it.
fn attempt_outcome(envelope: &Envelope) -> Option<&'static str> {
    Some(match &envelope.event {
        Event::Succeeded(_) => "succeeded",
        Event::Failed(_) => "failed",
        Event::TimedOut(t) if t.scope == TimeoutScope::Attempt => "timed_out",
        Event::TimedOut(_) => "execution_timed_out",
        Event::Cancelled(_) => "cancelled",
        Event::AttemptLost(_) => "lost",
        _ => return None,
    })
}

fn seconds(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(0).max(0) as f64 / 1e6
}

/// A unit enum's serde name (`attempts_exhausted`).
fn snake(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".to_owned(),
    }
}

/// Counts the Server-Sent-Event feeds open: a guard per feed.
#[derive(Debug, Clone, Default)]
pub struct FeedCount(Arc<AtomicI64>);

/// One open feed; dropping it closes it in the count.
#[derive(Debug)]
pub struct FeedGuard(Arc<AtomicI64>);

impl FeedCount {
    /// A feed opens.
    pub fn open(&self) -> FeedGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        FeedGuard(self.0.clone())
    }

    /// Feeds open now.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Drop for FeedGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
