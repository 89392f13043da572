//! The JetStream streams and consumers, defined once for every component.
//!
//! - **exec** (`RUNLOG_EXEC`): lifecycle events and timers (a broker
//!   schedule must target a subject of its own stream; timers fire on
//!   `<p>.sched.<exec>.<timer>.due`, which the engine consumes). Limits
//!   retention: the log is the truth and is never consumed away. With
//!   [`Layout::live_events`], stored events are republished on
//!   `<p>.live.ev.>` for outside clients' live feeds. The workers'
//!   consumers read it too: a `queued` event on
//!   `<p>.ev.<exec>.queued.<queue>.<priority>` is the work item, one durable
//!   consumer per queue and priority (see [`crate::work`]).
//!   Workflow executions keep their own events on `<p>.wf.<exec>`
//!   in the same stream (see [`crate::workflow::log`]).
//! - **logs** (`RUNLOG_LOGS`): log lines, progress and heartbeats, capped per
//!   subject and by age, out of the optimistic-concurrency filter; also the
//!   circuit-breaker transitions (`<p>.breaker.<key>`).
//! - **dlq** (`RUNLOG_DLQ`): the server's max-deliveries and terminated
//!   advisories of the execution stream's consumers, so crash-protection
//!   dead letters are durable.
//!
//! [`Layout::ensure`] creates or updates them idempotently and refuses to
//! touch a stream whose existing configuration cannot be changed into ours.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};

use crate::codec::DEFAULT_MAX_PAYLOAD;
use crate::id::QueueName;
use crate::spec::Priority;
use crate::subject::Subjects;

/// How long JetStream remembers `Nats-Msg-Id`s. Longer than any retry of a
/// publish, including across a cluster election.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// How long a work item may be held without an in-progress ack before the
/// server assumes its worker died and redelivers it.
pub const WORK_ACK_WAIT: Duration = Duration::from_secs(30);
/// Deliveries of one work item before the server dead-letters it.
pub const WORK_MAX_DELIVER: i64 = 5;
/// Work items in flight across all workers of one consumer.
pub const WORK_MAX_ACK_PENDING: i64 = 10_000;
/// How long telemetry (logs, progress) is kept.
pub const TELEMETRY_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Telemetry messages kept per execution and kind.
pub const TELEMETRY_MAX_PER_SUBJECT: i64 = 100_000;
/// How long dead-letter advisories are kept.
pub const DLQ_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long the audit trail keeps its records.
pub const AUDIT_MAX_AGE: Duration = Duration::from_secs(400 * 24 * 3600);
/// How long a sealed task environment outlives its submission at most.
pub const ENV_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long an idempotency key keeps answering with its execution.
pub const IDEMPOTENCY_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long a circuit breaker's shared state outlives its last change.
pub const BREAKER_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long the delete marker of an expired lease stays in the leases bucket.
pub const LEASE_MARKER_TTL: Duration = Duration::from_secs(60);

/// The stream and consumer layout of one installation.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Subject and stream names.
    pub subjects: Subjects,
    /// Replicas of every stream: 1 for a single server, 3 on a cluster.
    pub replicas: usize,
    /// Storage of every stream.
    pub storage: StorageType,
    /// Whether the execution stream republishes every stored event on
    /// `<p>.live.ev.>` (core NATS, for clients outside the engine; the
    /// engine's own feeds come from its projection). It costs the server
    /// about a tenth of its work per task, so it is off unless asked for.
    /// `None` leaves an existing stream's setting as it is (what workers
    /// do: the engine owns it) and creates a stream without.
    pub live_events: Option<bool>,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            subjects: Subjects::default(),
            replicas: 1,
            storage: StorageType::File,
            live_events: None,
        }
    }
}

/// Why the streams could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A stream exists with settings that cannot be updated into ours.
    #[error(
        "stream {stream} exists with an incompatible configuration ({reason}); \
         another installation may use the prefix {prefix:?}: choose another prefix, \
         or delete the stream if its data is not needed"
    )]
    Incompatible {
        /// The stream.
        stream: String,
        /// The prefix in use.
        prefix: String,
        /// The setting that differs.
        reason: String,
    },
    /// The JetStream API failed.
    #[error("cannot set up stream {stream}: {source}; is JetStream enabled on the server?")]
    Api {
        /// The stream.
        stream: String,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Layout {
    /// The execution stream.
    pub fn exec_stream(&self) -> stream::Config {
        let s = &self.subjects;
        stream::Config {
            name: s.exec_stream(),
            description: Some(
                "runlog execution log (its queued events are the work items) and timers".to_owned(),
            ),
            subjects: vec![
                s.all_events(),
                s.all_schedules(),
                s.all_workflow_events(),
                s.all_schedule_subjects(),
            ],
            retention: RetentionPolicy::Limits,
            storage: self.storage,
            num_replicas: self.replicas,
            duplicate_window: DUPLICATE_WINDOW,
            max_message_size: message_size_limit(),
            allow_direct: true,
            allow_rollup: true,
            allow_message_ttl: true,
            allow_atomic_publish: true,
            allow_message_schedules: true,
            republish: (self.live_events == Some(true)).then(|| stream::Republish {
                source: s.all_events(),
                destination: s.live_events(),
                headers_only: false,
            }),
            ..Default::default()
        }
    }

    /// The telemetry stream.
    pub fn logs_stream(&self) -> stream::Config {
        let s = &self.subjects;
        stream::Config {
            name: s.logs_stream(),
            description: Some("runlog log lines, progress and heartbeats".to_owned()),
            subjects: [s.all_telemetry().as_slice(), &[self.all_breaker_events()]].concat(),
            retention: RetentionPolicy::Limits,
            storage: self.storage,
            num_replicas: self.replicas,
            max_age: TELEMETRY_MAX_AGE,
            max_messages_per_subject: TELEMETRY_MAX_PER_SUBJECT,
            discard: DiscardPolicy::Old,
            max_message_size: message_size_limit(),
            allow_direct: true,
            allow_message_ttl: true,
            republish: Some(stream::Republish {
                source: format!("{}.log.>", s.prefix()),
                destination: format!("{}.live.log.>", s.prefix()),
                headers_only: false,
            }),
            ..Default::default()
        }
    }

    /// The dead-letter advisory stream.
    pub fn dlq_stream(&self) -> stream::Config {
        let s = &self.subjects;
        let exec = s.exec_stream();
        stream::Config {
            name: s.dlq_stream(),
            description: Some("runlog dead-letter advisories of work items".to_owned()),
            subjects: vec![
                format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{exec}.*"),
                format!("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{exec}.*"),
            ],
            retention: RetentionPolicy::Limits,
            storage: self.storage,
            num_replicas: self.replicas,
            max_age: DLQ_MAX_AGE,
            ..Default::default()
        }
    }

    /// The audit trail: batches of records of every state-changing
    /// command, kept [`AUDIT_MAX_AGE`].
    pub fn audit_stream(&self) -> stream::Config {
        let s = &self.subjects;
        stream::Config {
            name: s.audit_stream(),
            description: Some("runlog audit trail: who changed what, from where".to_owned()),
            subjects: vec![s.audit()],
            retention: RetentionPolicy::Limits,
            storage: self.storage,
            num_replicas: self.replicas,
            max_age: AUDIT_MAX_AGE,
            max_message_size: message_size_limit(),
            allow_direct: true,
            ..Default::default()
        }
    }

    /// Every stream, in creation order.
    pub fn streams(&self) -> [stream::Config; 4] {
        [
            self.exec_stream(),
            self.logs_stream(),
            self.dlq_stream(),
            self.audit_stream(),
        ]
    }

    /// The durable pull consumer that all workers of `queue` share at
    /// `priority`.
    pub fn dispatch_consumer(&self, queue: &QueueName, priority: Priority) -> pull::Config {
        let s = &self.subjects;
        let name = s.dispatch_consumer(queue, priority);
        pull::Config {
            durable_name: Some(name.clone()),
            name: Some(name),
            description: Some(format!(
                "runlog work items of queue {queue}, priority {priority}"
            )),
            filter_subject: s.dispatch_filter(queue, priority),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: WORK_ACK_WAIT,
            max_deliver: WORK_MAX_DELIVER,
            max_ack_pending: WORK_MAX_ACK_PENDING,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// Creates every stream, or updates it to this layout. Idempotent.
    pub async fn ensure(&self, js: &Context) -> Result<(), LayoutError> {
        for config in self.streams() {
            self.ensure_stream(js, config).await?;
        }
        Ok(())
    }

    /// The key-value bucket of sealed task environments, created if missing.
    pub async fn env_bucket(&self, js: &Context) -> Result<jetstream::kv::Store, LayoutError> {
        self.bucket(js, self.subjects.env_bucket(), ENV_MAX_AGE)
            .await
    }

    /// The key-value bucket of idempotency keys, created if missing.
    pub async fn idempotency_bucket(
        &self,
        js: &Context,
    ) -> Result<jetstream::kv::Store, LayoutError> {
        self.bucket(js, self.subjects.idempotency_bucket(), IDEMPOTENCY_MAX_AGE)
            .await
    }

    /// The name of the key-value bucket of shared limit state: concurrency
    /// leases and rate windows (`<p>-leases`).
    pub fn leases_bucket_name(&self) -> String {
        format!("{}-leases", self.subjects.prefix())
    }

    /// The name of the key-value bucket of the cluster's limits table
    /// (`<p>-limits`).
    pub fn limits_bucket_name(&self) -> String {
        format!("{}-limits", self.subjects.prefix())
    }

    /// The key-value bucket of concurrency leases and rate windows, created
    /// if missing. Entries carry a per-key TTL (`Nats-TTL`), so a lease of a
    /// worker that died expires on its own.
    pub async fn leases_bucket(&self, js: &Context) -> Result<jetstream::kv::Store, LayoutError> {
        self.bucket_with(
            js,
            jetstream::kv::Config {
                bucket: self.leases_bucket_name(),
                description: "runlog concurrency leases and rate windows".to_owned(),
                limit_markers: Some(LEASE_MARKER_TTL),
                ..Default::default()
            },
        )
        .await
    }

    /// The key-value bucket of the limits table (`rate.<key>` → `5/s`,
    /// `concurrency.<key>` → `1`), created if missing.
    pub async fn limits_bucket(&self, js: &Context) -> Result<jetstream::kv::Store, LayoutError> {
        self.bucket(js, self.limits_bucket_name(), Duration::ZERO)
            .await
    }

    /// The name of the key-value bucket of circuit breakers (`<p>-breakers`,
    /// key: the breaker key).
    pub fn breakers_bucket_name(&self) -> String {
        format!("{}-breakers", self.subjects.prefix())
    }

    /// The key-value bucket of circuit breakers, created if missing.
    pub async fn breakers_bucket(&self, js: &Context) -> Result<jetstream::kv::Store, LayoutError> {
        self.bucket(js, self.breakers_bucket_name(), BREAKER_MAX_AGE)
            .await
    }

    /// Where the transitions of the circuit breaker `key` are announced
    /// (`<p>.breaker.<key>`, kept in the logs stream).
    pub fn breaker_events(&self, key: &str) -> String {
        format!("{}.breaker.{key}", self.subjects.prefix())
    }

    /// Every circuit-breaker transition.
    pub fn all_breaker_events(&self) -> String {
        format!("{}.breaker.>", self.subjects.prefix())
    }

    /// The key-value bucket of bulk operations (`<p>-operations`: the
    /// audited record of each replay or cancel by filter), created if
    /// missing.
    pub async fn operations_bucket(
        &self,
        js: &Context,
    ) -> Result<jetstream::kv::Store, LayoutError> {
        let bucket = format!("{}-operations", self.subjects.prefix());
        self.bucket(js, bucket, Duration::ZERO).await
    }

    /// The key-value bucket of replayed dead letters (`<p>-replays`: one
    /// create-only key per original), created if missing.
    pub async fn replays_bucket(&self, js: &Context) -> Result<jetstream::kv::Store, LayoutError> {
        let bucket = format!("{}-replays", self.subjects.prefix());
        self.bucket(js, bucket, Duration::ZERO).await
    }

    /// The key-value bucket of workflow definitions (`<p>-workflows`: one
    /// create-only key `<name>.v<version>` per version), created if missing.
    pub async fn workflows_bucket(
        &self,
        js: &Context,
    ) -> Result<jetstream::kv::Store, LayoutError> {
        let bucket = format!("{}-workflows", self.subjects.prefix());
        self.bucket(js, bucket, Duration::ZERO).await
    }

    /// The key-value bucket of agent pools and their token hashes
    /// (`<p>-pools`: one key per pool), created if missing.
    pub async fn pools_bucket(&self, js: &Context) -> Result<jetstream::kv::Store, LayoutError> {
        let bucket = format!("{}-pools", self.subjects.prefix());
        self.bucket(js, bucket, Duration::ZERO).await
    }

    /// The key-value bucket of API tokens (`<p>-tokens`: one key per
    /// token id, holding its name, scopes and the hash of its secret),
    /// created if missing.
    pub async fn tokens_bucket(&self, js: &Context) -> Result<jetstream::kv::Store, LayoutError> {
        let bucket = format!("{}-tokens", self.subjects.prefix());
        self.bucket(js, bucket, Duration::ZERO).await
    }

    /// The key-value bucket of named secrets (`<p>-secrets`: one sealed
    /// value per name), created if missing.
    pub async fn secrets_bucket(&self, js: &Context) -> Result<jetstream::kv::Store, LayoutError> {
        self.bucket(js, self.subjects.secrets_bucket(), Duration::ZERO)
            .await
    }

    /// The key-value bucket of the server inventory (`<p>-servers`: one key
    /// per server name), created if missing.
    pub async fn servers_bucket(&self, js: &Context) -> Result<jetstream::kv::Store, LayoutError> {
        let bucket = format!("{}-servers", self.subjects.prefix());
        self.bucket(js, bucket, Duration::ZERO).await
    }

    async fn bucket(
        &self,
        js: &Context,
        bucket: String,
        max_age: Duration,
    ) -> Result<jetstream::kv::Store, LayoutError> {
        let config = jetstream::kv::Config {
            bucket,
            max_age,
            ..Default::default()
        };
        self.bucket_with(js, config).await
    }

    /// Opens `config.bucket`, or creates it with this layout's storage and
    /// replicas and one value per key.
    async fn bucket_with(
        &self,
        js: &Context,
        config: jetstream::kv::Config,
    ) -> Result<jetstream::kv::Store, LayoutError> {
        let bucket = config.bucket.clone();
        if let Ok(store) = js.get_key_value(&bucket).await {
            return Ok(store);
        }
        let created = js
            .create_key_value(jetstream::kv::Config {
                history: 1,
                storage: self.storage,
                num_replicas: self.replicas,
                ..config
            })
            .await;
        match created {
            Ok(store) => Ok(store),
            // Another component may have created it meanwhile.
            Err(e) => js
                .get_key_value(&bucket)
                .await
                .map_err(|_| LayoutError::Api {
                    stream: format!("KV_{bucket}"),
                    source: e.into(),
                }),
        }
    }

    /// Creates the dispatch consumer of `queue` at `priority` if missing,
    /// and returns it.
    pub async fn ensure_dispatch_consumer(
        &self,
        js: &Context,
        queue: &QueueName,
        priority: Priority,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>, LayoutError> {
        let stream_name = self.subjects.exec_stream();
        let api = |e: Box<dyn std::error::Error + Send + Sync>| LayoutError::Api {
            stream: stream_name.clone(),
            source: e,
        };
        let stream = js
            .get_stream(&stream_name)
            .await
            .map_err(|e| api(e.into()))?;
        let config = self.dispatch_consumer(queue, priority);
        let name = config.durable_name.clone().unwrap_or_default();
        stream
            .get_or_create_consumer(&name, config)
            .await
            .map_err(|e| api(e.into()))
    }

    async fn ensure_stream(
        &self,
        js: &Context,
        mut wanted: stream::Config,
    ) -> Result<(), LayoutError> {
        let name = wanted.name.clone();
        let api = |e: Box<dyn std::error::Error + Send + Sync>| LayoutError::Api {
            stream: name.clone(),
            source: e,
        };
        match js.get_stream(&name).await {
            Ok(mut existing) => {
                let info = existing.info().await.map_err(|e| api(e.into()))?;
                if let Some(reason) = incompatibility(&info.config, &wanted, self.subjects.prefix())
                {
                    return Err(LayoutError::Incompatible {
                        stream: name,
                        prefix: self.subjects.prefix().to_owned(),
                        reason,
                    });
                }
                if self.live_events.is_none() && name == self.subjects.exec_stream() {
                    wanted.republish = info.config.republish.clone();
                }
                if needs_update(&info.config, &wanted) {
                    js.update_stream(wanted).await.map_err(|e| api(e.into()))?;
                }
                Ok(())
            }
            Err(e) if stream_not_found(&e) => {
                js.create_stream(wanted).await.map_err(|e| api(e.into()))?;
                Ok(())
            }
            Err(e) => Err(api(e.into())),
        }
    }
}

fn stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(err)
            if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// Settings JetStream cannot change on an existing stream, or that would
/// change what the stream means.
fn incompatibility(have: &stream::Config, want: &stream::Config, prefix: &str) -> Option<String> {
    if have.storage != want.storage {
        return Some(format!(
            "storage is {:?}, runlog needs {:?}",
            have.storage, want.storage
        ));
    }
    if have.retention != want.retention {
        return Some(format!(
            "retention is {:?}, runlog needs {:?}",
            have.retention, want.retention
        ));
    }
    // Subjects may change between runlog versions (an update), but never
    // take over a stream that holds someone else's subjects.
    let ours = |subject: &String| {
        subject.starts_with(&format!("{prefix}."))
            || subject.starts_with("$JS.EVENT.ADVISORY.CONSUMER.")
    };
    if have.subjects != want.subjects && !have.subjects.iter().all(ours) {
        return Some(format!(
            "subjects are {:?}, runlog needs {:?}",
            have.subjects, want.subjects
        ));
    }
    None
}

fn needs_update(have: &stream::Config, want: &stream::Config) -> bool {
    have.subjects != want.subjects
        || have.num_replicas != want.num_replicas
        || have.duplicate_window != want.duplicate_window
        || have.max_age != want.max_age
        || have.max_messages_per_subject != want.max_messages_per_subject
        || have.max_message_size != want.max_message_size
        || have.allow_direct != want.allow_direct
        || have.allow_message_ttl != want.allow_message_ttl
        || have.allow_atomic_publish != want.allow_atomic_publish
        || have.allow_message_schedules != want.allow_message_schedules
        || have.republish != want.republish
}

/// A stored message holds a body of up to the codec limit plus headers.
fn message_size_limit() -> i32 {
    (DEFAULT_MAX_PAYLOAD + 64 * 1024) as i32
}
