//! The shell around the rules: the `<p>-limits` table bucket, watched,
//! and the `<p>-leases` bucket of concurrency leases and rate logs, with
//! the gate that admits, holds or lets an attempt go free.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, kv};
use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use runlog_events::ExecutionId;
use runlog_events::codec::header;
use runlog_events::journal::{Journal, LoadError};
use runlog_events::stream::{Layout, LayoutError};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::rules::{LimitKeys, LimitsConfig, LimitsTable, Rate, admit_start, slot_order};

/// Why the limit buckets could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    /// This worker's own limits are invalid.
    #[error("invalid limits: {0}")]
    Invalid(String),
    /// A bucket could not be opened or created.
    #[error("cannot open the limit bucket {bucket} ({source})")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// What failed.
        #[source]
        source: LayoutError,
    },
    /// The keys of the shared table could not be listed.
    #[error("cannot list the limit table {bucket} ({source}); is the NATS server reachable?")]
    Keys {
        /// The bucket.
        bucket: String,
        /// The client's error, with its kind.
        #[source]
        source: kv::HistoryError,
    },
    /// The listing of the shared table failed midway.
    #[error("cannot list the limit table {bucket} ({source}); is the NATS server reachable?")]
    Listing {
        /// The bucket.
        bucket: String,
        /// The client's error, with its kind.
        #[source]
        source: kv::WatcherError,
    },
    /// A rule of the shared table could not be read.
    #[error(
        "cannot read {key} from the limit table {bucket} ({source}); is the NATS server reachable?"
    )]
    Entry {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The client's error, with its kind.
        #[source]
        source: kv::EntryError,
    },
}

/// Why a lease or a rate token could not be taken or renewed (the item
/// is held and tried again).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaseError {
    /// A key could not be read.
    #[error("cannot read {key} from the lease bucket {bucket} ({source})")]
    Entry {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The client's error, with its kind.
        #[source]
        source: kv::EntryError,
    },
    /// A key could not be written.
    #[error("cannot write {key} to the lease bucket {bucket} ({source})")]
    Write {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The client's error, with its kind.
        #[source]
        source: PublishError,
    },
    /// A rate log could not be encoded.
    #[error("cannot encode the rate log {key} ({source})")]
    Encode {
        /// The key.
        key: String,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
}

/// What the gate decided for one attempt.
pub(crate) enum Admission {
    /// No limit applies.
    Free,
    /// Start now; release the permit when the result is recorded.
    Go(Permit),
    /// A key is at its limit (or the buckets are unreachable): try again
    /// at the instant given.
    Hold(Instant),
}

/// A started attempt's share of its limits: its concurrency lease, if any.
/// Dropped without [`release`](Self::release) (an aborted attempt), the
/// lease is no longer renewed and expires within its TTL.
pub(crate) struct Permit {
    limits: Arc<Limits>,
    lease: Option<String>,
    /// The start time (the rate log's entry), used as the `started` time.
    pub at: DateTime<Utc>,
}

impl Permit {
    /// Deletes the lease, so the slot frees at once.
    pub async fn release(mut self) {
        if let Some(lease) = self.lease.take() {
            self.limits.release(&lease).await;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.limits.lock_held().remove(&lease);
        }
    }
}

/// The shell: the buckets, this worker's table, and what it holds.
pub(crate) struct Limits {
    js: jetstream::Context,
    leases: kv::Store,
    bucket: String,
    local: LimitsTable,
    shared: RwLock<LimitsTable>,
    owner: String,
    lease_ttl: Duration,
    poll: Duration,
    hold: usize,
    /// Keys (`rate.<k>`, `concurrency.<k>`) known to be at their limit,
    /// and until when: their items are held without asking NATS.
    blocked: Mutex<HashMap<String, Instant>>,
    /// Leases of running attempts: key → (revision, value).
    held: Mutex<HashMap<String, (u64, Vec<u8>)>>,
    hint: AtomicU32,
}

impl Limits {
    /// Opens (or creates) the buckets and loads the shared table.
    pub async fn open(
        js: &jetstream::Context,
        layout: &Layout,
        config: &LimitsConfig,
        owner: &str,
    ) -> Result<(Arc<Self>, kv::Store), LimitsError> {
        let local = config.validate().map_err(LimitsError::Invalid)?;
        let leases = layout
            .leases_bucket(js)
            .await
            .map_err(|source| LimitsError::Bucket {
                bucket: layout.leases_bucket_name(),
                source,
            })?;
        let bucket = layout.limits_bucket_name();
        let table = layout
            .limits_bucket(js)
            .await
            .map_err(|source| LimitsError::Bucket {
                bucket: bucket.clone(),
                source,
            })?;
        let limits = Arc::new(Limits {
            js: js.clone(),
            leases,
            bucket: layout.leases_bucket_name(),
            local,
            shared: RwLock::default(),
            owner: owner.to_owned(),
            lease_ttl: Duration::from_secs(config.lease_ttl.as_secs().max(1)),
            poll: config.poll,
            hold: config.hold,
            blocked: Mutex::default(),
            held: Mutex::default(),
            hint: AtomicU32::new(rand::random()),
        });
        let mut keys = table.keys().await.map_err(|source| LimitsError::Keys {
            bucket: bucket.clone(),
            source,
        })?;
        while let Some(key) = keys.next().await {
            let key = key.map_err(|source| LimitsError::Listing {
                bucket: bucket.clone(),
                source,
            })?;
            let value = match table.get(&key).await {
                Ok(value) => value,
                Err(source) => {
                    return Err(LimitsError::Entry {
                        bucket,
                        key,
                        source,
                    });
                }
            };
            limits.apply(&key, value.as_deref());
        }
        Ok((limits, table))
    }

    fn apply(&self, key: &str, value: Option<&[u8]>) {
        let text = value.map(String::from_utf8_lossy);
        let mut shared = self.shared.write().unwrap_or_else(|e| e.into_inner());
        match shared.apply_entry(key, text.as_deref()) {
            Ok(()) => tracing::debug!(entry = key, value = ?text, "limits table updated"),
            Err(e) => tracing::warn!(error = %e, "ignoring a limits table entry"),
        }
    }

    /// Follows the `<p>-limits` bucket until `stop`.
    pub async fn watch_table(self: Arc<Self>, table: kv::Store, stop: CancellationToken) {
        loop {
            let mut watch = match table.watch_all().await {
                Ok(watch) => watch,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the limits table; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                let entry = tokio::select! {
                    _ = stop.cancelled() => return,
                    entry = watch.next() => entry,
                };
                match entry {
                    Some(Ok(entry)) => {
                        let put = entry.operation == kv::Operation::Put;
                        self.apply(&entry.key, put.then_some(entry.value.as_ref()));
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "the limits table watch failed"),
                    None => break,
                }
            }
        }
    }

    /// Items a worker holds at most while their key is at its limit.
    pub fn hold(&self) -> usize {
        self.hold
    }

    /// Whether any limit is configured. When none is, items skip the gate
    /// (and its read of the task spec).
    pub fn active(&self) -> bool {
        !self.local.is_empty() || !self.lock_shared().is_empty()
    }

    fn lock_shared(&self) -> std::sync::RwLockReadGuard<'_, LimitsTable> {
        self.shared.read().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Vec<u8>)>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_blocked(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.blocked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limit keys of `execution`, read from its `submitted` event
    /// (`None` when there is none: the claim decides what that means).
    pub async fn keys_of(
        &self,
        journal: &Journal,
        execution: &ExecutionId,
    ) -> Result<Option<LimitKeys>, LoadError> {
        let recorded = journal.recorded_spec(execution).await?;
        Ok(recorded.map(|(spec, _)| LimitKeys::of(&spec)))
    }

    /// Takes a concurrency lease, then a rate token, for `keys`; or says
    /// when to try again.
    pub async fn admit(self: &Arc<Self>, keys: &LimitKeys, execution: &ExecutionId) -> Admission {
        let (rate, slots) = {
            let shared = self.lock_shared();
            let rate = keys.rate.as_deref().and_then(|k| {
                let rate = self.local.rate_over(&shared, k)?;
                Some((format!("rate.{k}"), rate))
            });
            let slots = keys.concurrency.as_deref().and_then(|k| {
                let slots = self.local.concurrency_over(&shared, k)?;
                Some((format!("concurrency.{k}"), slots))
            });
            (rate, slots)
        };
        if rate.is_none() && slots.is_none() {
            return Admission::Free;
        }
        {
            let now = Instant::now();
            let mut blocked = self.lock_blocked();
            blocked.retain(|_, until| *until > now);
            let families = [rate.as_ref().map(|r| &r.0), slots.as_ref().map(|s| &s.0)];
            let until = families
                .into_iter()
                .flatten()
                .filter_map(|k| blocked.get(k).copied())
                .max();
            if let Some(until) = until {
                return Admission::Hold(until);
            }
        }
        let retry_soon = Instant::now() + Duration::from_secs(1);
        let lease = match &slots {
            Some((family, n)) => match self.lease(family, n.get(), execution).await {
                Ok(Some(lease)) => Some(lease),
                Ok(None) => return self.block(family, Instant::now() + self.poll),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take a concurrency lease; holding the item");
                    return Admission::Hold(retry_soon);
                }
            },
            None => None,
        };
        let permit = Permit {
            limits: self.clone(),
            lease,
            at: now_ms(),
        };
        let Some((key, rate)) = rate else {
            return Admission::Go(permit);
        };
        match self.rate_token(&key, rate).await {
            Ok(Ok(at)) => {
                let mut permit = permit;
                permit.at = at;
                Admission::Go(permit)
            }
            Ok(Err(until)) => {
                permit.release().await;
                self.block(&key, until)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take a rate token; holding the item");
                permit.release().await;
                Admission::Hold(retry_soon)
            }
        }
    }

    fn block(&self, family: &str, until: Instant) -> Admission {
        self.lock_blocked().insert(family.to_owned(), until);
        Admission::Hold(until)
    }

    /// Creates `<family>.<slot>` for the first free one of `slots`.
    async fn lease(
        &self,
        family: &str,
        slots: u32,
        execution: &ExecutionId,
    ) -> Result<Option<String>, LeaseError> {
        let value = serde_json::json!({
            "worker": self.owner,
            "execution": execution,
            "since": Utc::now(),
        })
        .to_string()
        .into_bytes();
        let hint = self.hint.fetch_add(1, Ordering::Relaxed);
        for slot in slot_order(hint, slots) {
            let key = format!("{family}.{slot}");
            if let Some(revision) = self.create(&key, value.clone()).await? {
                self.lock_held().insert(key.clone(), (revision, value));
                return Ok(Some(key));
            }
        }
        Ok(None)
    }

    /// Create-only with the lease TTL: `None` if the key is held. (The
    /// client's `create_with_ttl` drops the TTL when it re-creates a
    /// deleted key.)
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Option<u64>, LeaseError> {
        if let Some(revision) = self.write(key, value.clone(), 0, self.lease_ttl).await? {
            return Ok(Some(revision));
        }
        // A deleted or expired key leaves a marker: create over it.
        match self
            .leases
            .entry(key)
            .await
            .map_err(self.entry_failed(key))?
        {
            Some(entry) if entry.operation != kv::Operation::Put => {
                self.write(key, value, entry.revision, self.lease_ttl).await
            }
            Some(_) => Ok(None),
            // It expired between the two requests.
            None => self.write(key, value, 0, self.lease_ttl).await,
        }
    }

    /// Writes `key` expecting its last revision to be `expected` (0: no
    /// value), with a per-key TTL. `None` when the expectation failed.
    async fn write(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: u64,
        ttl: Duration,
    ) -> Result<Option<u64>, LeaseError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string().as_str(),
        );
        headers.insert(header::TTL, ttl.as_secs().max(1).to_string().as_str());
        let subject = format!("$KV.{}.{key}", self.bucket);
        let failed = |source| LeaseError::Write {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            source,
        };
        let published = self
            .js
            .publish_with_headers(subject, headers, value.into())
            .await
            .map_err(failed)?
            .await;
        match published {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(failed(e)),
        }
    }

    /// The error of a failed read of `key` (built only on failure).
    fn entry_failed<'a>(&'a self, key: &'a str) -> impl FnOnce(kv::EntryError) -> LeaseError + 'a {
        move |source| LeaseError::Entry {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            source,
        }
    }

    /// Adds a start to the sliding log `key`: the start time, or when to
    /// try again.
    async fn rate_token(
        &self,
        key: &str,
        rate: Rate,
    ) -> Result<Result<DateTime<Utc>, Instant>, LeaseError> {
        // Every entry is older than a period once the log is that old.
        let secs = u64::try_from(rate.per.as_millis().div_ceil(1000)).unwrap_or(u64::MAX);
        let ttl = Duration::from_secs(secs.max(1));
        for _ in 0..16 {
            let entry = self
                .leases
                .entry(key)
                .await
                .map_err(self.entry_failed(key))?;
            let (starts, revision): (Vec<i64>, u64) = match entry {
                Some(entry) if entry.operation == kv::Operation::Put => (
                    serde_json::from_slice(&entry.value).unwrap_or_default(),
                    entry.revision,
                ),
                Some(entry) => (Vec::new(), entry.revision),
                None => (Vec::new(), 0),
            };
            let at = now_ms();
            let now = at.timestamp_millis();
            match admit_start(&starts, now, rate) {
                Err(retry) => {
                    let wait = Duration::from_millis(u64::try_from(retry - now).unwrap_or(1));
                    return Ok(Err(Instant::now() + wait));
                }
                Ok(log) => {
                    let body = serde_json::to_vec(&log).map_err(|source| LeaseError::Encode {
                        key: key.to_owned(),
                        source,
                    })?;
                    if self.write(key, body, revision, ttl).await?.is_some() {
                        return Ok(Ok(at));
                    }
                }
            }
        }
        // Heavy contention: let the others go first.
        Ok(Err(Instant::now() + self.poll))
    }

    /// Deletes a lease this worker holds (if its revision is still ours).
    async fn release(&self, lease: &str) {
        let held = self.lock_held().remove(lease);
        if let Some((family, _)) = lease.rsplit_once('.') {
            self.lock_blocked().remove(family);
        }
        let Some((revision, _)) = held else { return };
        if let Err(e) = self
            .leases
            .delete_expect_revision(lease, Some(revision))
            .await
        {
            tracing::warn!(lease, error = %e, "cannot release a concurrency lease; it expires after its TTL");
        }
    }

    /// Renews the leases of running attempts every third of the TTL, until
    /// `stop`.
    pub async fn renew(self: Arc<Self>, stop: CancellationToken) {
        let every = self.lease_ttl / 3;
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let leases: Vec<(String, (u64, Vec<u8>))> = self
                .lock_held()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (key, (revision, value)) in leases {
                match self.write(&key, value, revision, self.lease_ttl).await {
                    Ok(Some(renewed)) => {
                        if let Some(held) = self.lock_held().get_mut(&key) {
                            held.0 = renewed;
                        }
                    }
                    Ok(None) => {
                        tracing::warn!(lease = %key, "a concurrency lease was lost before its renewal; the limit may be exceeded (raise --lease-ttl)");
                        self.lock_held().remove(&key);
                    }
                    Err(e) => {
                        tracing::warn!(lease = %key, error = %e, "cannot renew a concurrency lease")
                    }
                }
            }
        }
    }
}

/// Now, rounded up to the millisecond: the rate log and the `started`
/// event agree, and a start is never stamped before the lease it took.
fn now_ms() -> DateTime<Utc> {
    let now = Utc::now();
    let ms = now.timestamp_millis() + i64::from(now.timestamp_subsec_nanos() % 1_000_000 != 0);
    Utc.timestamp_millis_opt(ms).single().unwrap_or(now)
}
