//! A worker's own figures for `/metrics` (served by `runlog worker
//! --metrics-addr`): the attempts it ran, how long they took, how long its
//! appends to the log took, and its slots.
//!
//! What the whole cluster did (submissions, queue depths, dead letters) is
//! the engine's `/metrics`, folded from the log; a worker reports only what
//! it alone knows. Label values are bounded as the engine's are
//! ([`Bounded`]). `docs/metrics.md` lists every name.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use runlog_metrics::prometheus_client::metrics::counter::Counter;
use runlog_metrics::prometheus_client::metrics::family::Family;
use runlog_metrics::prometheus_client::metrics::gauge::Gauge;
use runlog_metrics::prometheus_client::metrics::histogram::Histogram;
use runlog_metrics::prometheus_client::registry::Registry;
use runlog_metrics::{Bounded, LabelKey, Labels, Seconds};

use super::liveness::Running;

/// An append to the log that the worker waits for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Append {
    /// The `started` event of a claim.
    Claim,
    /// The event that records how an attempt ended.
    Result,
}

/// How an attempt this worker ran ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RunOutcome {
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl RunOutcome {
    /// Its label value (`timed_out`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Failed => "failed",
            RunOutcome::Cancelled => "cancelled",
            RunOutcome::TimedOut => "timed_out",
        }
    }
}

/// A worker's metrics; clones share them.
#[derive(Debug, Clone, Default)]
pub struct WorkerMetrics(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    registry: Registry,
    queues: Bounded,
    kinds: Bounded,
    runs: Family<Labels, Counter>,
    run_duration: Family<Labels, Histogram, Seconds>,
    appends: Family<Labels, Histogram, Seconds>,
    slots: Family<Labels, Gauge>,
    spans: runlog_metrics::SpanCounts,
    /// The attempts running and the worker's concurrency, once it runs.
    running: OnceLock<(Arc<Running>, usize)>,
    /// The trace exporter, once traces are exported.
    traces: OnceLock<runlog_telemetry::Traces>,
}

impl Default for Inner {
    fn default() -> Self {
        let inner = Inner {
            registry: Registry::default(),
            queues: Bounded::default(),
            kinds: Bounded::default(),
            runs: Family::default(),
            run_duration: Family::new_with_constructor(Seconds),
            appends: Family::new_with_constructor(Seconds),
            slots: Family::default(),
            spans: runlog_metrics::SpanCounts::new(),
            running: OnceLock::new(),
            traces: OnceLock::new(),
        };
        let mut registry = Registry::default();
        registry.register(
            "runlog_worker_runs",
            "Attempts this worker ran and recorded, by queue, kind and outcome",
            inner.runs.clone(),
        );
        registry.register(
            "runlog_worker_run_duration_seconds",
            "From this worker's claim of an attempt to the end of its handler, by queue, kind and outcome",
            inner.run_duration.clone(),
        );
        registry.register(
            "runlog_worker_publish_duration_seconds",
            "Appends to the log this worker waited for (the server's ack included), by operation: claim, result",
            inner.appends.clone(),
        );
        registry.register(
            "runlog_worker_trace_spans",
            "Spans this worker handed to its trace exporter, by outcome (exported, dropped: queue full, failed: export request failed)",
            inner.spans.family(),
        );
        registry.register(
            "runlog_worker_slots",
            "This worker's slots, busy or free",
            inner.slots.clone(),
        );
        Inner { registry, ..inner }
    }
}

impl WorkerMetrics {
    /// The slots are read from `running` out of `concurrency` from now on.
    pub(crate) fn attach(&self, running: Arc<Running>, concurrency: usize) {
        let _already = self.0.running.set((running, concurrency));
    }

    /// Shows the spans `traces` exported, dropped and failed.
    pub(crate) fn count_spans_of(&self, traces: runlog_telemetry::Traces) {
        let _already = self.0.traces.set(traces);
    }

    /// An attempt of `queue` and `kind` ran for `took` and was recorded
    /// with `outcome`.
    pub(crate) fn ran(&self, queue: &str, kind: &str, outcome: RunOutcome, took: Duration) {
        let outcome = outcome.as_str();
        let labels = vec![
            (LabelKey::Fixed("queue"), self.0.queues.admit(queue)),
            (LabelKey::Fixed("kind"), self.0.kinds.admit(kind)),
            (LabelKey::Fixed("outcome"), outcome.to_owned()),
        ];
        self.0.runs.get_or_create(&labels).inc();
        self.0
            .run_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// An append of `op` took `took`.
    pub(crate) fn appended(&self, op: Append, took: Duration) {
        let op = match op {
            Append::Claim => "claim",
            Append::Result => "result",
        };
        self.0
            .appends
            .get_or_create(&vec![(LabelKey::Fixed("op"), op.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// Every metric in the Prometheus text format.
    pub fn encode(&self) -> String {
        if let Some(t) = self.0.traces.get() {
            self.0.spans.set([t.exported(), t.dropped(), t.failed()]);
        }
        if let Some((running, concurrency)) = self.0.running.get() {
            let busy = running.len();
            for (state, n) in [("busy", busy), ("free", concurrency.saturating_sub(busy))] {
                self.0
                    .slots
                    .get_or_create(&vec![(LabelKey::Fixed("state"), state.to_owned())])
                    .set(n as i64);
            }
        }
        runlog_metrics::encode(&self.0.registry)
    }
}
