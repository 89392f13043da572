//! Circuit breakers shared by every worker: the key-value shell around
//! the rules.
//!
//! - **Shared state.** The bucket `<p>-breakers` holds one [`Record`] per
//!   key. Every worker watches it and keeps a local [`BreakerView`], so a
//!   breaker one worker opens is honoured by all of them as soon as the
//!   watch delivers it. Transitions are compare-and-set writes against the
//!   revision the worker saw: of two workers deciding at once, one wins and
//!   the other re-reads the record and decides again.
//! - **Counting** is per worker ([`Window`]): each judges its target from
//!   the outcomes of its own attempts.
//! - **Gate.** While every breaker in the view is closed, an item runs
//!   without any extra read. Otherwise the worker reads the task's spec
//!   (one direct get) to find its key: an item whose breaker is open is
//!   handed back with a NAK delayed until the breaker may probe; in
//!   half-open, up to `probes` items run as probes.
//! - **Deliveries.** Every NAK is a delivery of the item, and the consumer
//!   dead-letters an item after `max_deliver` of them. So an item whose
//!   next delivery would leave no delivery for its run (delivered + 1 ≥
//!   `max_deliver`) is not NAKed: the worker holds it (in-progress acks, no
//!   slot, like an item a rate limit holds) until the breaker may probe,
//!   and asks again then. The item is a `queued` event of the log, so it is
//!   never copied. A long outage never dead-letters delayed work.
//! - **Announcements.** Every transition is published (JSON
//!   [`Transition`]) on `<p>.breaker.<key>`, kept in the logs stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::{self, Message};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use runlog_events::journal::Journal;
use runlog_events::spec::limit_key_error;
use runlog_events::stream::{Layout, LayoutError};
use runlog_events::{TaskSpec, WorkItem};
use tokio_util::sync::CancellationToken;

use super::rules::{self, Admission, BreakerConfig, Record, State, Verdict, Window};
use crate::attempt::Outcome;

/// Keys counted at once before the windows with nothing in them are dropped.
const MAX_WINDOWS: usize = 4096;

/// How long the watch waits before it is re-established after an error.
const REWATCH: Duration = Duration::from_secs(1);

/// The breaker key of a task: its `breaker`, else for an `http` task its
/// target host (`host=<host>`, or `host=<host>=<port>` with a port that is
/// not the scheme's default). Other tasks have none.
///
/// # Examples
/// ```
/// use runlog_events::TaskSpec;
/// use runlog_worker::runtime::breaker_key;
///
/// let mut spec = TaskSpec::new("http");
/// spec.input = serde_json::json!({"url": "https://api.example.com/v1/x"});
/// assert_eq!(breaker_key(&spec).as_deref(), Some("host=api.example.com"));
/// spec.input = serde_json::json!({"url": "http://127.0.0.1:8080/"});
/// assert_eq!(breaker_key(&spec).as_deref(), Some("host=127.0.0.1=8080"));
/// spec.breaker = Some("provider=openai".into());
/// assert_eq!(breaker_key(&spec).as_deref(), Some("provider=openai"));
/// ```
pub fn breaker_key(spec: &TaskSpec) -> Option<String> {
    if let Some(key) = &spec.breaker {
        return Some(key.clone());
    }
    if spec.kind != "http" {
        return None;
    }
    let url = reqwest::Url::parse(spec.input.get("url")?.as_str()?).ok()?;
    let host = url.host_str()?;
    // A `${HOST}` reference is resolved only when the task runs.
    if host.contains(['$', '{', '}', '%']) {
        return None;
    }
    let host: String = host
        .trim_end_matches('.')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let key = match url.port() {
        Some(port) => format!("host={host}={port}"),
        None => format!("host={host}"),
    };
    limit_key_error(&key).is_none().then_some(key)
}

/// A worker's view of the shared breakers, kept current by its watch.
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct BreakerView {
    inner: Arc<Mutex<ViewState>>,
}

#[derive(Debug, Default)]
struct ViewState {
    /// key → (record, revision)
    records: HashMap<String, (Record, u64)>,
    /// Records not closed.
    unclosed: usize,
}

impl BreakerView {
    fn lock(&self) -> std::sync::MutexGuard<'_, ViewState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state of `key`'s breaker as this worker sees it (`None`: never
    /// tripped, or forgotten).
    pub fn state(&self, key: &str) -> Option<State> {
        self.lock().records.get(key).map(|(r, _)| r.state)
    }

    /// Every breaker this worker knows, by key.
    pub fn records(&self) -> Vec<Record> {
        let mut all: Vec<Record> = self
            .lock()
            .records
            .values()
            .map(|(r, _)| r.clone())
            .collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    fn any_unclosed(&self) -> bool {
        self.lock().unclosed > 0
    }

    fn get(&self, key: &str) -> Option<(Record, u64)> {
        self.lock().records.get(key).cloned()
    }

    /// Takes `record` at `revision` unless the view holds a newer one.
    fn apply(&self, key: &str, record: Option<Record>, revision: u64) {
        let mut view = self.lock();
        if view
            .records
            .get(key)
            .is_some_and(|(_, held)| *held >= revision)
        {
            return;
        }
        let old = match record {
            Some(record) => {
                if !record.is_closed() {
                    view.unclosed += 1;
                }
                view.records.insert(key.to_owned(), (record, revision))
            }
            None => view.records.remove(key),
        };
        if old.is_some_and(|(r, _)| !r.is_closed()) {
            view.unclosed -= 1;
        }
    }
}

/// What the gate let through: the key, once known, and whether the item
/// runs as a probe.
#[derive(Debug, Default)]
pub(crate) struct Permit {
    /// `None` with `resolved` false: the gate did not read the spec.
    key: Option<String>,
    resolved: bool,
    probe: bool,
}

/// A transition write that did not happen.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// The record changed since it was read.
    #[error("the breaker record changed since it was read")]
    Conflict,
    /// The record could not be encoded.
    #[error("cannot encode the breaker record ({0})")]
    Encode(#[source] serde_json::Error),
    /// The update was refused for another reason than a newer revision.
    #[error("cannot update the breaker record ({0})")]
    Update(#[source] kv::UpdateError),
    /// The create was refused for another reason than an existing key.
    #[error("cannot create the breaker record ({0})")]
    Create(#[source] kv::CreateError),
}

/// The breakers of one worker (disabled: does nothing).
#[derive(Clone, Default)]
pub(crate) struct Breakers(Option<Arc<Inner>>);

struct Inner {
    config: BreakerConfig,
    worker: String,
    layout: Layout,
    js: jetstream::Context,
    store: kv::Store,
    view: BreakerView,
    windows: Mutex<HashMap<String, Window>>,
    /// The dispatch consumers' `max_deliver`, `None` when unlimited.
    max_deliver: Option<u64>,
}

impl Breakers {
    /// Opens (creating if missing) the bucket and loads `view` from it.
    pub async fn open(
        js: &jetstream::Context,
        layout: &Layout,
        config: BreakerConfig,
        worker: &str,
        view: BreakerView,
        max_deliver: Option<u64>,
    ) -> Result<Self, LayoutError> {
        if !config.enabled {
            return Ok(Breakers(None));
        }
        let store = match layout.breakers_bucket(js).await {
            Ok(store) => store,
            // Another worker may have created it meanwhile.
            Err(e) => js
                .get_key_value(layout.breakers_bucket_name())
                .await
                .map_err(|_| e)?,
        };
        let inner = Inner {
            config,
            worker: worker.to_owned(),
            layout: layout.clone(),
            js: js.clone(),
            store,
            view,
            windows: Mutex::default(),
            max_deliver,
        };
        if let Ok(keys) = inner.store.keys().await {
            let keys: Vec<String> = keys.filter_map(|k| async { k.ok() }).collect().await;
            for key in keys {
                inner.refresh(&key).await;
            }
        }
        Ok(Breakers(Some(Arc::new(inner))))
    }

    /// Keeps the view current until `stop`.
    pub async fn watch(self, stop: CancellationToken) {
        let Some(inner) = self.0 else {
            return;
        };
        loop {
            match inner.store.watch_with_history(">").await {
                Ok(mut entries) => loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        entry = entries.next() => match entry {
                            Some(Ok(entry)) => inner.take(&entry),
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "the breaker watch failed; watching again");
                                break;
                            }
                            None => break,
                        },
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot watch the breakers bucket; retrying"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(REWATCH) => {}
            }
        }
    }

    /// Decides whether `item` runs now: with a permit, or not yet, its
    /// breaker being open (handed back, or to be held until an instant).
    pub async fn gate(&self, journal: &Journal, message: &Message, item: &WorkItem) -> Gate {
        let Some(inner) = &self.0 else {
            return Gate::Run(Permit::default());
        };
        if !inner.view.any_unclosed() {
            return Gate::Run(Permit::default());
        }
        let spec = match &item.spec {
            Some(spec) => Some(spec.clone()),
            None => crate::attempt::submitted_spec(journal, &item.execution).await,
        };
        let key = spec.and_then(|spec| breaker_key(&spec));
        let Some(key) = key else {
            return Gate::Run(Permit {
                resolved: true,
                ..Permit::default()
            });
        };
        for round in 0.. {
            let held = inner.view.get(&key);
            let now = Utc::now();
            if round == 3 {
                // Other workers keep winning the record: let them probe.
                let until =
                    now + chrono::Duration::from_std(inner.config.probe_wait()).unwrap_or_default();
                return inner.delay(message, item, until, now);
            }
            match rules::admit(
                &inner.config,
                held.as_ref().map(|(r, _)| r),
                now,
                &inner.worker,
            ) {
                Admission::Run => break,
                Admission::Delay(until) => {
                    return inner.delay(message, item, until, now);
                }
                Admission::Probe(next) => {
                    let from = held.as_ref().map_or(State::Closed, |(r, _)| r.state);
                    match inner
                        .write(&key, held.map(|(_, rev)| rev), &next, from)
                        .await
                    {
                        Ok(()) => {
                            tracing::debug!(%key, execution = %item.execution, "running a probe");
                            return Gate::Run(Permit {
                                key: Some(key),
                                resolved: true,
                                probe: true,
                            });
                        }
                        Err(WriteError::Conflict) => inner.refresh(&key).await,
                        Err(e) => {
                            // The bucket is unreachable: do not hold work on it.
                            tracing::warn!(%key, error = %e, "cannot write a breaker; running the item");
                            break;
                        }
                    }
                }
            }
        }
        Gate::Run(Permit {
            key: Some(key),
            resolved: true,
            probe: false,
        })
    }

    /// Feeds the outcome of an attempt of `spec` that ran under `permit`
    /// to its breaker, and writes the transition it causes.
    pub async fn settle(&self, permit: Permit, spec: &TaskSpec, outcome: &Outcome) {
        let Some(inner) = &self.0 else {
            return;
        };
        let key = if permit.resolved {
            permit.key
        } else {
            breaker_key(spec)
        };
        let Some(key) = key else {
            return;
        };
        let verdict = match outcome {
            Outcome::Succeeded { .. } => Verdict::Success,
            Outcome::Failed { error } => rules::verdict_of(error.class),
            Outcome::TimedOut => Verdict::Failure,
            Outcome::Cancelled => Verdict::Ignored,
        };
        inner.settle(&key, verdict, permit.probe).await;
    }
}

impl Inner {
    /// Applies a watched entry to the view.
    fn take(&self, entry: &kv::Entry) {
        match entry.operation {
            Operation::Put => match serde_json::from_slice::<Record>(&entry.value) {
                Ok(record) => self.view.apply(&entry.key, Some(record), entry.revision),
                Err(e) => tracing::warn!(key = %entry.key, error = %e, "unreadable breaker record"),
            },
            Operation::Delete | Operation::Purge => {
                self.view.apply(&entry.key, None, entry.revision)
            }
        }
    }

    /// Reads `key` from the bucket into the view.
    async fn refresh(&self, key: &str) {
        match self.store.entry(key).await {
            Ok(Some(entry)) => self.take(&entry),
            Ok(None) => {}
            Err(e) => tracing::debug!(%key, error = %e, "cannot read a breaker"),
        }
    }

    async fn settle(&self, key: &str, verdict: Verdict, probe: bool) {
        let now = Utc::now();
        let held = self.view.get(key);
        let closed = held.as_ref().is_none_or(|(r, _)| r.is_closed());
        // Outcomes count only while closed; a probe's goes to its half-open record.
        let tripped = if closed {
            let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
            if windows.len() >= MAX_WINDOWS {
                windows.retain(|_, w| w.totals(now) != (0, 0));
            }
            let window = windows
                .entry(key.to_owned())
                .or_insert_with(|| Window::new(self.config.window));
            window.record(now, verdict);
            let tripped = window.tripped(&self.config, now);
            if tripped.is_some() {
                window.clear();
            }
            tripped
        } else {
            None
        };
        if !probe && tripped.is_none() {
            return;
        }
        for _ in 0..3 {
            let held = self.view.get(key);
            let record = held.as_ref().map(|(r, _)| r);
            let from = record.map_or(State::Closed, |r| r.state);
            let next = match (from, tripped) {
                (State::HalfOpen, _) if probe => record
                    .and_then(|r| rules::settle_probe(&self.config, r, verdict, now, &self.worker)),
                (State::Closed, Some((calls, failures))) => Some(rules::trip(
                    &self.config,
                    record,
                    key,
                    calls,
                    failures,
                    now,
                    &self.worker,
                )),
                // Someone else moved it on: this outcome is moot.
                _ => None,
            };
            let Some(next) = next else {
                return;
            };
            match self.write(key, held.map(|(_, rev)| rev), &next, from).await {
                Ok(()) => {
                    if next.state == State::Closed {
                        self.clear_window(key);
                    }
                    return;
                }
                Err(WriteError::Conflict) => self.refresh(key).await,
                Err(e) => {
                    tracing::warn!(%key, error = %e, "cannot write a breaker transition");
                    return;
                }
            }
        }
    }

    fn clear_window(&self, key: &str) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(window) = windows.get_mut(key) {
            window.clear();
        }
    }

    /// Writes `record` expecting `revision` (`None`: the key is new), takes
    /// it into the view, and announces a change of state.
    async fn write(
        &self,
        key: &str,
        revision: Option<u64>,
        record: &Record,
        from: State,
    ) -> Result<(), WriteError> {
        let body = serde_json::to_vec(record).map_err(WriteError::Encode)?;
        let written = match revision {
            Some(revision) => self
                .store
                .update(key, body.into(), revision)
                .await
                .map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => WriteError::Conflict,
                    _ => WriteError::Update(e),
                }),
            None => self
                .store
                .create(key, body.into())
                .await
                .map_err(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => WriteError::Conflict,
                    _ => WriteError::Create(e),
                }),
        }?;
        self.view.apply(key, Some(record.clone()), written);
        if from != record.state {
            self.announce(record.transition(from)).await;
        }
        Ok(())
    }

    async fn announce(&self, transition: rules::Transition) {
        tracing::info!(
            key = %transition.key,
            from = %transition.from,
            to = %transition.to,
            failures = transition.failures,
            calls = transition.calls,
            "circuit breaker changed state"
        );
        let subject = self.layout.breaker_events(&transition.key);
        let body = match serde_json::to_vec(&transition) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a breaker transition");
                return;
            }
        };
        let published = async { self.js.publish(subject, body.into()).await?.await };
        if let Err(e) = published.await {
            tracing::warn!(key = %transition.key, error = %e, "cannot announce a breaker transition");
        }
    }

    /// Hands `message` back until `until` (plus a little jitter, so the
    /// delayed items do not all return at once) — or, when a NAK would
    /// leave the item no delivery to run with, has the worker hold it.
    fn delay(
        &self,
        message: &Message,
        item: &WorkItem,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Gate {
        let wait = (until - now).to_std().unwrap_or_default();
        let spread = (self.config.open_for / 10).min(Duration::from_secs(1));
        let wait = wait + spread.mul_f64(rand::random::<f64>());
        let wait = wait.max(Duration::from_millis(10));
        let delivered = message
            .info()
            .map(|i| u64::try_from(i.delivered).unwrap_or(1))
            .unwrap_or(1);
        if self.max_deliver.is_some_and(|max| delivered + 1 >= max) {
            tracing::debug!(execution = %item.execution, delivered, ?wait, "breaker open; holding the item");
            return Gate::Hold(tokio::time::Instant::now() + wait);
        }
        tracing::debug!(execution = %item.execution, ?wait, "breaker open; handing the item back");
        Gate::Delay(wait)
    }
}

/// What the gate decided about an item.
#[derive(Debug)]
pub(crate) enum Gate {
    /// Run it under this permit.
    Run(Permit),
    /// Its breaker is open: hand it back with a NAK delayed this long.
    Delay(Duration),
    /// Its breaker is open and a NAK would spend its last delivery: hold it
    /// in the worker and ask again at this instant.
    Hold(tokio::time::Instant),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, state: State) -> Record {
        Record {
            key: key.to_owned(),
            state,
            since: Utc::now(),
            retry_at: None,
            probes: 0,
            successes: 0,
            failures: 0,
            calls: 0,
            worker: "w".into(),
            opened: 0,
        }
    }

    #[test]
    fn the_view_counts_unclosed_breakers_and_never_goes_back() {
        let view = BreakerView::default();
        assert!(!view.any_unclosed());
        view.apply("a", Some(record("a", State::Open)), 5);
        assert!(view.any_unclosed());
        // An older revision (a late watch entry) is ignored.
        view.apply("a", Some(record("a", State::Closed)), 4);
        assert_eq!(view.state("a"), Some(State::Open));
        view.apply("a", Some(record("a", State::HalfOpen)), 6);
        assert!(view.any_unclosed());
        view.apply("a", Some(record("a", State::Closed)), 7);
        assert!(!view.any_unclosed());
        view.apply("b", Some(record("b", State::Open)), 8);
        view.apply("b", None, 9);
        assert!(!view.any_unclosed());
        assert_eq!(view.state("b"), None);
        assert_eq!(view.records().len(), 1);
    }

    #[test]
    fn keys_come_from_the_task_or_the_http_host() {
        let mut spec = TaskSpec::new("shell");
        assert_eq!(breaker_key(&spec), None);
        spec.breaker = Some("provider=x".into());
        assert_eq!(breaker_key(&spec).as_deref(), Some("provider=x"));
        let mut spec = TaskSpec::new("http");
        for (url, key) in [
            ("https://Example.COM./a", Some("host=example.com")),
            ("http://[::1]:81/", Some("host=___1_=81")),
            ("${URL}", None),
            ("http://${HOST}/x", None),
        ] {
            spec.input = serde_json::json!({ "url": url });
            assert_eq!(breaker_key(&spec).as_deref(), key, "{url}");
        }
    }
}
