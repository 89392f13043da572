//! The live workers, as their registry bucket (`<p>-workers`) says: which
//! queues each serves, which kinds it runs and which labels it carries, so
//! that intake can warn about a task no live worker would take.
//!
//! The view follows the bucket with a watch. A worker rewrites its entry
//! every heartbeat and deletes it when it stops; one that died leaves an
//! entry the bucket expires without telling its watchers, so an entry
//! counts as live for three heartbeats after the server stored it (the
//! bucket's own `max_age`, [`STALE_BEATS`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use runlog_events::{QueueName, Subjects, TaskSpec};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Heartbeats an entry stays live without being rewritten.
pub const STALE_BEATS: u32 = 3;
/// The heartbeat assumed for an entry that does not state its own.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// How often the view looks for the bucket before the first worker made it.
const BUCKET_POLL: Duration = Duration::from_secs(2);

/// What the view keeps of one registry entry.
#[derive(Debug, Clone, Deserialize)]
struct Entry {
    #[serde(default)]
    queues: Vec<String>,
    /// Absent from entries of workers older than the field: such a worker
    /// is taken to run every kind.
    #[serde(default)]
    kinds: Option<Vec<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    heartbeat_ms: u64,
    /// When the server stored it (filled in from the bucket entry).
    #[serde(skip, default = "Utc::now")]
    written: DateTime<Utc>,
}

impl Entry {
    fn live(&self, now: DateTime<Utc>) -> bool {
        let beat = match self.heartbeat_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(ms),
        };
        let horizon = chrono::TimeDelta::from_std(beat * STALE_BEATS).unwrap_or_default();
        now - self.written <= horizon
    }

    fn runs(&self, kind: &str) -> bool {
        self.kinds
            .as_ref()
            .is_none_or(|kinds| kinds.iter().any(|k| k == kind))
    }

    fn carries(&self, required: &BTreeMap<String, String>) -> bool {
        required
            .iter()
            .all(|(k, v)| self.labels.get(k).is_some_and(|have| have == v))
    }
}

#[derive(Debug, Default)]
struct View {
    /// The first read of the bucket is complete: until then, no warnings.
    loaded: bool,
    entries: HashMap<String, Entry>,
}

/// The live workers; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LiveWorkers {
    view: Arc<RwLock<View>>,
}

impl LiveWorkers {
    /// Why no live worker would take `spec` now, if none would: its queue
    /// has no worker, no worker of its queue runs its kind, or none of
    /// those carries the labels it requires. `None` while the view is not
    /// loaded yet.
    pub fn warning(&self, spec: &TaskSpec) -> Option<String> {
        self.warning_at(&spec.queue, &spec.kind, &spec.worker_labels, Utc::now())
    }

    fn warning_at(
        &self,
        queue: &QueueName,
        kind: &str,
        labels: &BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> Option<String> {
        let view = self.view.read().expect("the worker view is never poisoned");
        if !view.loaded {
            return None;
        }
        // Checked without collecting: this runs on every submission.
        let serving = || {
            view.entries
                .values()
                .filter(|e| e.live(now) && e.queues.iter().any(|q| q == queue.as_str()))
        };
        if serving().next().is_none() {
            return Some(format!("no live worker serves queue \"{queue}\""));
        }
        let running = || serving().filter(|e| e.runs(kind));
        if running().next().is_none() {
            return Some(format!(
                "no live worker runs kind \"{kind}\" on queue \"{queue}\""
            ));
        }
        if !running().any(|e| e.carries(labels)) {
            let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return Some(format!(
                "no live worker of queue \"{queue}\" that runs kind \"{kind}\" carries the labels {}",
                wanted.join(",")
            ));
        }
        None
    }

    /// Whether a live worker runs `kind` (and lists its kinds).
    pub fn runs(&self, kind: &str) -> bool {
        let view = self.view.read().expect("the worker view is never poisoned");
        let now = Utc::now();
        view.entries.values().any(|e| {
            e.live(now)
                && e.kinds
                    .as_ref()
                    .is_some_and(|k| k.iter().any(|k| k == kind))
        })
    }

    /// The number of live workers serving each queue; `None` while the view
    /// is not loaded yet.
    pub fn served(&self) -> Option<BTreeMap<String, usize>> {
        let view = self.view.read().expect("the worker view is never poisoned");
        if !view.loaded {
            return None;
        }
        let now = Utc::now();
        let mut served = BTreeMap::new();
        for entry in view.entries.values().filter(|e| e.live(now)) {
            for queue in &entry.queues {
                *served.entry(queue.clone()).or_default() += 1;
            }
        }
        Some(served)
    }

    /// Follows the registry bucket until `stop`; waits for the bucket while
    /// no worker has created it.
    pub async fn follow(
        &self,
        js: &jetstream::Context,
        subjects: &Subjects,
        stop: CancellationToken,
    ) -> Result<(), WorkersError> {
        let bucket = subjects.workers_bucket();
        let store = loop {
            match js.get_key_value(&bucket).await {
                Ok(store) => break store,
                Err(e) if e.kind() == jetstream::context::KeyValueErrorKind::GetBucket => {
                    // No worker has started yet: every queue is unserved.
                    self.replace(HashMap::new());
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(BUCKET_POLL) => {}
                    }
                }
                Err(e) => return Err(WorkersError::Open(e)),
            }
        };
        let mut watch = store
            .watch_with_history(">")
            .await
            .map_err(WorkersError::Watch)?;
        let stored = store.status().await.map_err(WorkersError::Status)?.values();
        let mut initial = HashMap::new();
        let mut loading = stored > 0;
        if !loading {
            self.replace(HashMap::new());
        }
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                next = watch.next() => next,
            };
            let entry = match next {
                Some(Ok(entry)) => entry,
                Some(Err(e)) => return Err(WorkersError::Entry(e)),
                None => return Err(WorkersError::Ended),
            };
            let parsed = match entry.operation {
                kv::Operation::Put => parse(&entry),
                kv::Operation::Delete | kv::Operation::Purge => None,
            };
            if loading {
                if let Some(parsed) = parsed {
                    initial.insert(entry.key.clone(), parsed);
                }
                if entry.delta == 0 {
                    self.replace(std::mem::take(&mut initial));
                    loading = false;
                }
                continue;
            }
            let mut view = self
                .view
                .write()
                .expect("the worker view is never poisoned");
            match parsed {
                Some(parsed) => view.entries.insert(entry.key, parsed),
                None => view.entries.remove(&entry.key),
            };
        }
    }

    fn replace(&self, entries: HashMap<String, Entry>) {
        let mut view = self
            .view
            .write()
            .expect("the worker view is never poisoned");
        view.entries = entries;
        view.loaded = true;
    }
}

fn parse(entry: &kv::Entry) -> Option<Entry> {
    let mut parsed: Entry = match serde_json::from_slice(&entry.value) {
        Ok(parsed) => parsed,
        Err(e) => {
            tracing::debug!(worker = %entry.key, error = %e, "skipping an unreadable worker entry");
            return None;
        }
    };
    let nanos = entry.created.unix_timestamp_nanos();
    parsed.written = DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap_or(i64::MAX));
    Some(parsed)
}

/// Why the view stopped following the bucket.
#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    /// The bucket could not be opened.
    #[error("cannot open the worker registry ({0})")]
    Open(#[source] jetstream::context::KeyValueError),
    /// The watch could not be started.
    #[error("cannot watch the worker registry ({0})")]
    Watch(#[source] kv::WatchError),
    /// The bucket's status could not be read.
    #[error("cannot read the worker registry's status ({0})")]
    Status(#[source] kv::StatusError),
    /// The watch failed.
    #[error("the worker registry watch failed ({0})")]
    Entry(#[source] kv::WatcherError),
    /// The watch ended.
    #[error("the worker registry watch ended")]
    Ended,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(queues: &[&str], kinds: Option<&[&str]>, labels: &[(&str, &str)]) -> Entry {
        Entry {
            queues: queues.iter().map(|q| (*q).to_owned()).collect(),
            kinds: kinds.map(|k| k.iter().map(|k| (*k).to_owned()).collect()),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            heartbeat_ms: 1_000,
            written: Utc::now(),
        }
    }

    fn warning(
        workers: &LiveWorkers,
        queue: &str,
        kind: &str,
        labels: &[(&str, &str)],
    ) -> Option<String> {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        workers.warning_at(&QueueName::new(queue).unwrap(), kind, &labels, Utc::now())
    }

    #[test]
    fn a_task_no_live_worker_would_take_gets_a_warning_that_says_why() {
        let workers = LiveWorkers::default();
        assert_eq!(warning(&workers, "tf", "plan", &[]), None, "not loaded yet");
        let mut entries = HashMap::new();
        entries.insert(
            "a".to_owned(),
            entry(&["tf"], Some(&["apply"]), &[("pool", "x")]),
        );
        let mut gone = entry(&["backup"], None, &[]);
        gone.written = Utc::now() - chrono::TimeDelta::seconds(10);
        entries.insert("b".to_owned(), gone);
        workers.replace(entries);
        assert_eq!(
            warning(&workers, "tf", "plan", &[]).as_deref(),
            Some("no live worker runs kind \"plan\" on queue \"tf\"")
        );
        assert_eq!(warning(&workers, "tf", "apply", &[]), None);
        assert_eq!(
            warning(&workers, "backup", "restic", &[]).as_deref(),
            Some("no live worker serves queue \"backup\""),
            "its only worker stopped beating"
        );
        assert!(
            warning(&workers, "tf", "apply", &[("pool", "y")])
                .is_some_and(|w| w.contains("pool=y"))
        );
        assert_eq!(warning(&workers, "tf", "apply", &[("pool", "x")]), None);
    }
}
