//! The shapes of the engine's answers that the CLI reads (see `docs/api.md`).
//! Fields the CLI does not show are left out; `--output json` prints the
//! answer as the engine sent it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use runlog_events::event::Progress;
use runlog_events::resources::{Cost, ResourceTotals, Resources};
use runlog_events::{Priority, Status, TaskError, TaskSpec};
use serde::Deserialize;

/// The answer of `POST /v1/executions` and of the retry route.
#[derive(Debug, Clone, Deserialize)]
pub struct Accepted {
    /// The execution id.
    pub id: String,
    /// Its status now.
    pub status: Status,
    /// Whether the id or idempotency key was seen before.
    #[serde(default)]
    pub existing: bool,
    /// Why no live worker would take it, when none would.
    #[serde(default)]
    pub warning: Option<String>,
}

/// `GET /v1/executions/{id}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Execution {
    /// The id.
    pub id: String,
    /// Where it is in its life.
    pub status: Status,
    /// The current (or last) attempt.
    pub attempt: u32,
    /// The worker of the current attempt.
    pub worker: Option<String>,
    /// A cancel was asked for and the worker not done yet.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Why no live worker would take it, while it waits for one.
    #[serde(default)]
    pub warning: Option<String>,
    /// The running attempt's latest progress.
    pub progress: Option<Progress>,
    /// The output, once succeeded.
    pub output: Option<serde_json::Value>,
    /// The last attempt's error.
    pub error: Option<TaskError>,
    /// Why it ended (cancel reason, dead-letter reason, rejection).
    pub reason: Option<String>,
    /// When the next attempt is due.
    pub retry_at: Option<DateTime<Utc>>,
    /// Submitted.
    pub submitted_at: Option<DateTime<Utc>>,
    /// The current attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// What was asked for (environment values never shown).
    pub spec: Option<TaskSpec>,
    /// One entry per attempt.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// What its measured attempts used, summed.
    #[serde(default)]
    pub resources: Option<ResourceTotals>,
    /// What that cost, when the engine has a price table.
    #[serde(default)]
    pub cost: Option<Cost>,
}

/// One attempt of an execution.
#[derive(Debug, Clone, Deserialize)]
pub struct Attempt {
    /// Its number, from 1.
    pub attempt: u32,
    /// The worker that ran it.
    pub worker: Option<String>,
    /// Claimed.
    pub started_at: Option<DateTime<Utc>>,
    /// Ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// `succeeded`, `failed`, `timed_out`, `lost`, `cancelled`.
    pub outcome: Option<String>,
    /// Its error.
    pub error: Option<TaskError>,
    /// What it used, as its worker measured it.
    #[serde(default)]
    pub resources: Option<Resources>,
}

/// `GET /v1/executions`.
#[derive(Debug, Clone, Deserialize)]
pub struct Page {
    /// Newest first.
    pub executions: Vec<Summary>,
    /// Pass as `cursor` for the next page.
    pub next_cursor: Option<u64>,
}

/// One execution in a list.
#[derive(Debug, Clone, Deserialize)]
pub struct Summary {
    /// The id.
    pub id: String,
    /// Its status.
    pub status: Status,
    /// The current attempt.
    pub attempt: u32,
    /// Its queue.
    pub queue: Option<String>,
    /// Its kind.
    pub kind: Option<String>,
    /// Its labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Submitted.
    pub submitted_at: Option<DateTime<Utc>>,
    /// The current attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// The stream sequence of its newest event.
    #[serde(default)]
    pub last_seq: u64,
}

/// A `log` event of `/v1/executions/{id}/logs/stream`.
#[derive(Debug, Clone, Deserialize)]
pub struct Logs {
    /// The lines, in order.
    pub lines: Vec<LogLine>,
}

/// One line a task wrote.
#[derive(Debug, Clone, Deserialize)]
pub struct LogLine {
    /// The attempt that wrote it.
    pub attempt: u32,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The text.
    pub line: String,
    /// When it was stored.
    pub time: Option<DateTime<Utc>>,
}

/// `GET /v1/workers`.
#[derive(Debug, Clone, Deserialize)]
pub struct Workers {
    /// Live workers.
    pub workers: Vec<Worker>,
}

/// One live worker.
#[derive(Debug, Clone, Deserialize)]
pub struct Worker {
    /// Its id.
    pub id: String,
    /// Its host.
    #[serde(default)]
    pub host: String,
    /// Its queues.
    #[serde(default)]
    pub queues: Vec<String>,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its slots.
    #[serde(default)]
    pub concurrency: usize,
    /// What it runs now.
    #[serde(default)]
    pub running: Vec<serde_json::Value>,
    /// Stopped fetching because its host is overloaded.
    #[serde(default)]
    pub paused_for_resources: bool,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it last wrote its entry.
    pub last_seen: Option<DateTime<Utc>>,
}

/// `GET /v1/queues`.
#[derive(Debug, Clone, Deserialize)]
pub struct Queues {
    /// One entry per queue that has seen work.
    pub queues: Vec<Queue>,
}

/// One queue.
#[derive(Debug, Clone, Deserialize)]
pub struct Queue {
    /// Its name.
    pub queue: String,
    /// Attempts waiting, per priority.
    #[serde(default)]
    pub queued: BTreeMap<Priority, u64>,
    /// Attempts waiting in all.
    #[serde(default)]
    pub depth: u64,
    /// Attempts running.
    #[serde(default)]
    pub running: u64,
    /// Executions waiting for a retry's backoff.
    #[serde(default)]
    pub retry_scheduled: u64,
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, Deserialize)]
pub struct Stats {
    /// Executions known.
    #[serde(default)]
    pub executions: u64,
    /// Executions per state.
    #[serde(default)]
    pub by_status: BTreeMap<Status, u64>,
    /// Recent throughput.
    #[serde(default)]
    pub rates: Rates,
}

/// Recent completions.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Rates {
    /// Ended in the last minute.
    #[serde(default)]
    pub completed_last_minute: u64,
    /// Submission to end, median, in milliseconds.
    pub latency_ms_p50: Option<i64>,
    /// 95th percentile.
    pub latency_ms_p95: Option<i64>,
}

/// A progress report of `/v1/stream`.
#[derive(Debug, Clone, Deserialize)]
pub struct ProgressReport {
    /// The execution.
    pub execution: String,
    /// Its attempt.
    pub attempt: u32,
    /// Completion, 0 to 100.
    pub percent: Option<f32>,
    /// The task's status line.
    pub message: Option<String>,
}
