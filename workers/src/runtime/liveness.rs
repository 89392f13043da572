//! Liveness: the worker registry and the keep-alives of held work items.
//!
//! - **Registry**: the KV bucket `<p>-workers` holds one [`WorkerEntry`]
//!   per live worker (key: the worker id), rewritten every heartbeat and
//!   whenever the resource guard pauses or resumes fetching. The bucket's
//!   `max_age` is three heartbeats, so the entry of a worker that died
//!   disappears on its own; a worker that stops cleanly deletes it.
//! - **Work items**: every item a worker holds (running, or waiting for a
//!   slot) gets an in-progress ack (`+WPI`) at a quarter of the consumer's
//!   `ack_wait`, so the server never redelivers work whose worker lives,
//!   however long it runs. The attempt's own task acks a running item; the
//!   dispatcher acks the waiting ones.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use chrono::{DateTime, Utc};
use runlog_events::ExecutionId;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::capacity::CapacityRule;

/// One live worker, as its registry entry says (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerEntry {
    /// The worker id.
    pub id: String,
    /// The agent pool it joined, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// What runs now of each capacity class it has a rule for
    /// (`plan 2/3, apply 0/1`), rewritten every heartbeat.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load: Vec<ClassLoad>,
    /// The host it runs on.
    pub host: String,
    /// The runlog version.
    pub version: String,
    /// The queues it takes work from.
    pub queues: Vec<String>,
    /// The task kinds it runs (its handlers), sorted.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// How often it rewrites this entry, in milliseconds: an entry not
    /// rewritten for three of these belongs to a worker that is gone.
    #[serde(default)]
    pub heartbeat_ms: u64,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its slots.
    pub concurrency: usize,
    /// Its capacity rules.
    pub capacity: Vec<CapacityRule>,
    /// The attempts it runs now.
    pub running: Vec<RunningAttempt>,
    /// It stopped fetching because its host is overloaded.
    pub paused_for_resources: bool,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it last wrote this entry.
    pub last_seen: DateTime<Utc>,
}

/// An attempt a worker runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningAttempt {
    /// The execution.
    pub execution: ExecutionId,
    /// The attempt number.
    pub attempt: u32,
    /// The task kind.
    pub kind: String,
    /// The capacity class the task names, if any (the capacity rules match
    /// it instead of the kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// When the worker claimed it.
    pub started_at: DateTime<Utc>,
}

/// The load of one capacity class on a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassLoad {
    /// The class (a task's `capacity`, else its kind).
    pub class: String,
    /// Attempts of the class running now.
    pub running: usize,
    /// At most this many at once.
    pub limit: usize,
    /// An attempt of the class runs alone.
    #[serde(default)]
    pub exclusive: bool,
}

/// The load by class of `running`, one entry per rule.
pub fn load(rules: &[CapacityRule], running: &[RunningAttempt]) -> Vec<ClassLoad> {
    rules
        .iter()
        .map(|rule| ClassLoad {
            class: rule.kind.clone(),
            running: running
                .iter()
                .filter(|a| a.capacity.as_deref().unwrap_or(&a.kind) == rule.kind)
                .count(),
            limit: rule.limit.get(),
            exclusive: rule.exclusive,
        })
        .collect()
}

/// The attempts running on this worker, shared by the attempt tasks (which
/// add and remove themselves) and the registry writer.
#[derive(Debug, Default)]
pub(crate) struct Running {
    attempts: Mutex<HashMap<ExecutionId, RunningAttempt>>,
}

impl Running {
    /// Records `attempt` until the returned guard is dropped (also when
    /// the attempt's task is aborted).
    pub fn enter(self: &Arc<Self>, attempt: RunningAttempt) -> RunningGuard {
        let execution = attempt.execution.clone();
        self.lock().insert(execution.clone(), attempt);
        RunningGuard {
            running: self.clone(),
            execution,
        }
    }

    /// How many attempts run.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// The running attempts, oldest first.
    pub fn snapshot(&self) -> Vec<RunningAttempt> {
        let mut all: Vec<RunningAttempt> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| (a.started_at, &a.execution).cmp(&(b.started_at, &b.execution)));
        all
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ExecutionId, RunningAttempt>> {
        // A panic while holding the lock leaves a map that is still valid.
        self.attempts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes an attempt from [`Running`] when dropped.
#[derive(Debug)]
pub(crate) struct RunningGuard {
    running: Arc<Running>,
    execution: ExecutionId,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.running.lock().remove(&self.execution);
    }
}

/// Why the registry bucket could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the worker registry bucket {bucket}: {source}; is JetStream enabled?")]
pub struct RegistryError {
    /// The bucket.
    pub bucket: String,
    /// Why it could not be created (after it could not be opened).
    #[source]
    pub source: jetstream::context::CreateKeyValueError,
}

/// Opens the registry bucket, creating it with `max_age` = 3 heartbeats if
/// it is missing. An existing bucket keeps its settings.
pub(crate) async fn open_registry(
    js: &jetstream::Context,
    bucket: &str,
    heartbeat: Duration,
    replicas: usize,
) -> Result<kv::Store, RegistryError> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: bucket.to_owned(),
            description: "runlog live workers (key: worker id)".to_owned(),
            history: 1,
            max_age: heartbeat * 3,
            num_replicas: replicas,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another worker may have created it meanwhile.
        Err(source) => js.get_key_value(bucket).await.map_err(|_| RegistryError {
            bucket: bucket.to_owned(),
            source,
        }),
    }
}

/// Writes `entry` (with the live fields filled in) every `heartbeat` and
/// whenever `paused` changes, until `stop`; then deletes it.
pub(crate) async fn keep_registered(
    store: kv::Store,
    mut entry: WorkerEntry,
    running: Arc<Running>,
    mut paused: watch::Receiver<bool>,
    heartbeat: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut paused_open = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
            changed = paused.changed(), if paused_open => paused_open = changed.is_ok(),
        }
        entry.running = running.snapshot();
        entry.load = load(&entry.capacity, &entry.running);
        entry.paused_for_resources = *paused.borrow_and_update();
        entry.last_seen = Utc::now();
        let body = match serde_json::to_vec(&entry) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the registry entry");
                continue;
            }
        };
        if let Err(e) = store.put(&entry.id, body.into()).await {
            tracing::warn!(worker = %entry.id, error = %e, "cannot refresh the registry entry");
        }
    }
    if let Err(e) = store.delete(&entry.id).await {
        tracing::warn!(worker = %entry.id, error = %e, "cannot delete the registry entry");
    }
}
