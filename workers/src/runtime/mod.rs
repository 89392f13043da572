//! The worker runtime: priority consumption, capacity rules, limits,
//! circuit breakers, liveness and graceful shutdown.
//!
//! [`Worker::run`] (or [`run`]) connects the pieces:
//!
//! - [`fetch`] pulls work items from the shared durable consumers of the
//!   worker's queues, `high` before `normal` before `low`, with an aging
//!   rule so lower levels never starve;
//! - [`capacity`] counts slots, per-kind limits and exclusive kinds, and
//!   `dispatch` (the worker's one loop) decides for each fetched item:
//!   start, wait in the worker, hold, or hand back;
//! - `execution` runs one item through its steps: the [`limits`] gate,
//!   the [`breaker`] gate, then claim, prepare (the [`environment`], the
//!   handler), run (under a cancel signal and a deadline), record and ack;
//! - [`limits`] applies rate limits and concurrency keys shared by every
//!   worker of the cluster (key-value leases and rate logs);
//! - [`breaker`] holds the circuit breakers: their pure rules, and the
//!   shared key-value state that delays the items of a target whose
//!   breaker is open;
//! - `signals` routes cancel signals to the attempts this worker runs;
//! - [`telemetry`] publishes progress, log batches and heartbeats of
//!   running attempts;
//! - [`liveness`] keeps the worker's entry in the registry bucket and its
//!   held items alive with in-progress acks;
//! - [`guard`] pauses fetching while the host is overloaded.
//!
//! Dependencies point one way: `dispatch` uses `fetch`, `capacity` and
//! `execution`; `execution` uses the gates (`limits`, `breaker`),
//! `signals`, `environment`, `telemetry` and `liveness`; none of those
//! uses `execution` or `dispatch`.
//!
//! Shutdown is one [`CancellationToken`]: fetching stops, running attempts
//! get `drain_timeout` to finish, the rest are stopped and their items
//! handed back for another worker at once. `docs/workers.md` is the user
//! guide.
//!
//! # Examples
//! ```no_run
//! use runlog_worker::Registry;
//! use runlog_worker::runtime::{self, WorkerConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> Result<(), runtime::WorkerError> {
//! let config = WorkerConfig {
//!     queues: vec!["backups".parse().unwrap()],
//!     ..WorkerConfig::default()
//! };
//! let shutdown = CancellationToken::new();
//! runtime::run(config, Registry::new(), shutdown).await
//! # }
//! ```

pub mod breaker;
pub mod capacity;
mod dispatch;
pub mod environment;
mod execution;
pub mod fetch;
pub mod guard;
pub mod limits;
pub mod liveness;
mod metrics;
mod pool;
mod signals;
pub mod telemetry;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use runlog_events::id::validate_token;
use runlog_events::journal::Journal;
use runlog_events::sealing::Keyring;
use runlog_events::stream::{Layout, LayoutError};
use runlog_events::{Priority, QueueName, Subjects};
use tokio::sync::{OnceCell, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use breaker::{BreakerConfig, BreakerView, breaker_key};
pub use capacity::{CapacityRule, CapacityRuleError};
pub use environment::{EnvSecrets, SecretSource};
pub use guard::{GuardConfig, ResourceProbe, SystemProbe, Usage};
pub use limits::{ConcurrencyRule, LimitsConfig, RateRule};
pub use liveness::{RunningAttempt, WorkerEntry};
pub use metrics::WorkerMetrics;
pub use telemetry::TelemetryConfig;

use crate::handler::Registry;
use crate::identity::RunAs;
use crate::policy::ExecutorPolicy;

/// Everything that configures one worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The NATS server(s), comma-separated.
    pub nats_url: String,
    /// The installation's subject prefix.
    pub prefix: String,
    /// Replicas of the streams and the registry bucket if this worker
    /// creates them: 1 on a single server, 3 on a cluster.
    pub replicas: usize,
    /// The worker id: 1–64 of `[A-Za-z0-9_-]`.
    pub id: String,
    /// The queues to take work from.
    pub queues: Vec<QueueName>,
    /// Attempts run at once.
    pub concurrency: NonZeroUsize,
    /// Labels a task may require (`pool=eu`).
    pub labels: BTreeMap<String, String>,
    /// Per-kind limits and exclusive kinds.
    pub capacity: Vec<CapacityRule>,
    /// How often the registry entry and running attempts' heartbeats are
    /// written.
    pub heartbeat: Duration,
    /// `ack_wait` of the dispatch consumers this worker creates. An existing
    /// consumer keeps its own; in-progress acks follow the consumer's value.
    pub ack_wait: Duration,
    /// How long running attempts may finish after shutdown is requested.
    pub drain_timeout: Duration,
    /// How long a handler may take to stop once its token is cancelled.
    pub cancel_grace: Duration,
    /// How long an idle long poll waits at the server.
    pub poll_expires: Duration,
    /// Every `aging_every`-th pick starts one priority level lower (≥ 2).
    pub aging_every: u32,
    /// Base delay of a NAK for an item this worker cannot take.
    pub nak_delay: Duration,
    /// When fetching pauses for the host's sake.
    pub guard: GuardConfig,
    /// How telemetry is paced (its `heartbeat` follows [`Self::heartbeat`]).
    pub telemetry: TelemetryConfig,
    /// Rate limits and concurrency keys (the `<p>-limits` bucket wins key
    /// by key).
    pub limits: LimitsConfig,
    /// When circuit breakers open, and for how long.
    pub breakers: BreakerConfig,
    /// The agent pool this worker joins: it serves only the pool's queue,
    /// and takes no work unless the engine accepts its token.
    pub pool: Option<PoolMembership>,
    /// The OTLP/HTTP receiver this worker's spans go to
    /// (`http://collector:4318`); none are exported without one.
    pub otlp_endpoint: Option<String>,
    /// Kinds and programs refused per queue, and whether programs may run
    /// as root (the default refuses nothing).
    pub executors: ExecutorPolicy,
    /// The user `shell` and `script` programs run as; none: the worker's.
    pub run_as: Option<RunAs>,
    /// The engine's key ring (a file only its owner may read), to open
    /// sealed task environments and stored secrets with; none: attempts
    /// that need them fail `permission`.
    pub secret_key_file: Option<std::path::PathBuf>,
}

/// A worker's pool and the token it joins with.
#[derive(Clone)]
pub struct PoolMembership {
    /// The pool's name, also its queue.
    pub name: String,
    /// The pool token (`<id>.<secret>`), never printed.
    pub token: String,
}

impl std::fmt::Debug for PoolMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolMembership")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            prefix: runlog_events::subject::DEFAULT_PREFIX.to_owned(),
            replicas: 1,
            id: generate_id(),
            queues: vec![QueueName::default()],
            concurrency: NonZeroUsize::new(4).expect("4 is not zero"),
            labels: BTreeMap::new(),
            capacity: Vec::new(),
            heartbeat: Duration::from_secs(5),
            ack_wait: runlog_events::stream::WORK_ACK_WAIT,
            drain_timeout: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(10),
            poll_expires: Duration::from_secs(5),
            aging_every: 8,
            nak_delay: Duration::from_secs(1),
            guard: GuardConfig::default(),
            telemetry: TelemetryConfig::default(),
            limits: LimitsConfig::default(),
            breakers: BreakerConfig::default(),
            pool: None,
            otlp_endpoint: None,
            executors: ExecutorPolicy::default(),
            run_as: None,
            secret_key_file: None,
        }
    }
}

/// Why the connection to NATS could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    /// An address of the URL list does not parse.
    #[error(transparent)]
    Address(std::io::Error),
    /// The client could not connect.
    #[error(transparent)]
    Connect(async_nats::ConnectError),
}

/// Why a worker could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A setting is invalid.
    #[error("invalid worker configuration: {0}")]
    Config(String),
    /// NATS is unreachable.
    #[error(
        "cannot reach NATS at {url} ({source}): is nats-server running? `runlog dev` starts one"
    )]
    Connect {
        /// The URL tried.
        url: String,
        /// What failed.
        #[source]
        source: ConnectFailure,
    },
    /// The streams could not be set up.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The subscription to cancel signals failed.
    #[error("cannot subscribe to cancel signals: {0}")]
    Signals(#[from] async_nats::SubscribeError),
    /// The execution stream could not be opened for the dispatch consumers.
    #[error(
        "cannot open stream {stream} for the dispatch consumers ({source}); is JetStream enabled on the server?"
    )]
    Stream {
        /// The stream.
        stream: String,
        /// The client's error, with its kind.
        #[source]
        source: jetstream::context::GetStreamError,
    },
    /// A dispatch consumer could not be created or read.
    #[error("cannot set up the dispatch consumer {consumer}: {source}")]
    Consumer {
        /// The consumer.
        consumer: String,
        /// The client's error, with its kind.
        #[source]
        source: jetstream::stream::ConsumerError,
    },
    /// The registry bucket could not be opened.
    #[error(transparent)]
    Registry(#[from] liveness::RegistryError),
    /// The limit buckets could not be opened.
    #[error(transparent)]
    Limits(#[from] limits::LimitsError),
    /// The trace exporter could not be set up.
    #[error(transparent)]
    Traces(#[from] runlog_telemetry::TracesError),
    /// The engine refused this worker a place in its pool.
    #[error("pool {pool:?} refused this worker: {reason}")]
    PoolRefused {
        /// The pool.
        pool: String,
        /// Why, as the engine said.
        reason: String,
    },
}

impl WorkerConfig {
    /// Checks the settings that have rules.
    pub fn validate(&self) -> Result<(), WorkerError> {
        let bad = |m: String| Err(WorkerError::Config(m));
        if let Err(e) = validate_token(&self.id) {
            return bad(format!("worker id {:?} {e}", self.id));
        }
        if let Err(e) = Subjects::new(&self.prefix) {
            return bad(format!("prefix {:?} {e}", self.prefix));
        }
        if self.queues.is_empty() {
            return bad("give at least one queue".into());
        }
        if let Some(pool) = &self.pool {
            if validate_token(&pool.name).is_err() {
                return bad(format!("pool {:?} is not a valid name", pool.name));
            }
            if self.queues.len() != 1 || self.queues[0].as_str() != pool.name {
                return bad(format!(
                    "a worker of pool {:?} serves only the queue {0:?}: leave out --queue",
                    pool.name
                ));
            }
            if pool.token.trim().is_empty() {
                return bad(format!("pool {:?}: the token is empty", pool.name));
            }
        }
        if self.aging_every < 2 {
            return bad("aging_every must be at least 2".into());
        }
        for (name, d) in [
            ("heartbeat", self.heartbeat),
            ("ack_wait", self.ack_wait),
            ("poll_expires", self.poll_expires),
            ("guard interval", self.guard.interval),
        ] {
            if d < Duration::from_millis(10) {
                return bad(format!("{name} must be at least 10ms"));
            }
        }
        capacity::Capacity::new(self.concurrency.get(), self.capacity.clone())
            .map_err(|e| WorkerError::Config(e.to_string()))?;
        self.limits.validate().map_err(WorkerError::Config)?;
        if let Some(problem) = self.breakers.problem() {
            return bad(problem);
        }
        Ok(())
    }
}

/// A generated worker id: `<host>-<6 random characters>`, the host name
/// reduced to subject-token characters.
///
/// # Examples
/// ```
/// let id = runlog_worker::runtime::generate_id();
/// assert!(runlog_events::id::validate_token(&id).is_ok());
/// ```
pub fn generate_id() -> String {
    use rand::Rng;
    let host = host_name();
    let mut host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(57)
        .collect();
    if host.is_empty() {
        host.push_str("worker");
    }
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(6)
        .map(|b| char::from(b).to_ascii_lowercase())
        .collect();
    format!("{host}-{suffix}")
}

fn host_name() -> String {
    sysinfo::System::host_name().unwrap_or_default()
}

/// A worker ready to run: connected, with its handlers.
pub struct Worker {
    config: WorkerConfig,
    registry: Registry,
    client: async_nats::Client,
    probe: Box<dyn ResourceProbe>,
    secrets: Arc<dyn SecretSource>,
    breakers: BreakerView,
    metrics: WorkerMetrics,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Connects to `config.nats_url`.
    pub async fn connect(config: WorkerConfig, registry: Registry) -> Result<Self, WorkerError> {
        config.validate()?;
        let fail = |source| WorkerError::Connect {
            url: config.nats_url.clone(),
            source,
        };
        let addrs = config
            .nats_url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(ConnectFailure::Address(e)))?;
        let client = async_nats::ConnectOptions::new()
            .name(format!("runlog-worker-{}", config.id))
            .connect(addrs.as_slice())
            .await
            .map_err(|e| fail(ConnectFailure::Connect(e)))?;
        Ok(Self::new(client, config, registry))
    }

    /// A worker on an existing connection.
    pub fn new(client: async_nats::Client, config: WorkerConfig, registry: Registry) -> Self {
        Worker {
            config,
            registry,
            client,
            probe: Box::new(SystemProbe::new()),
            secrets: Arc::new(EnvSecrets),
            breakers: BreakerView::default(),
            metrics: WorkerMetrics::default(),
        }
    }

    /// This worker's metrics, current while it runs (`/metrics` of
    /// `runlog worker --metrics-addr`).
    pub fn metrics(&self) -> WorkerMetrics {
        self.metrics.clone()
    }

    /// This worker's view of the shared circuit breakers, current while it
    /// runs.
    pub fn breakers(&self) -> BreakerView {
        self.breakers.clone()
    }

    /// Measures the host with `probe` instead of the operating system.
    pub fn with_probe(mut self, probe: impl ResourceProbe) -> Self {
        self.probe = Box::new(probe);
        self
    }

    /// Resolves secrets from `secrets` instead of `RUNLOG_SECRET_*`.
    pub fn with_secrets(mut self, secrets: impl SecretSource) -> Self {
        self.secrets = Arc::new(secrets);
        self
    }

    /// Runs until `shutdown` is cancelled and the drain is over.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let Worker {
            config,
            registry,
            client,
            mut probe,
            secrets,
            breakers: breaker_view,
            metrics,
        } = self;
        config.validate()?;
        let keyring = match &config.secret_key_file {
            Some(path) => Some(Arc::new(
                Keyring::load(path).map_err(|e| WorkerError::Config(e.to_string()))?,
            )),
            None => None,
        };
        let subjects =
            Subjects::new(&config.prefix).map_err(|e| WorkerError::Config(e.to_string()))?;
        if let Some(pool) = &config.pool
            && !pool::join_until_answered(&client, &subjects, pool, &config.id, &shutdown).await?
        {
            return Ok(());
        }
        let js = jetstream::new(client.clone());
        let layout = Layout {
            subjects: subjects.clone(),
            replicas: config.replicas.max(1),
            ..Layout::default()
        };
        // A cluster electing a leader, or a server still starting, answers
        // with time-outs: the worker waits for it instead of exiting. An
        // incompatible stream is a real error and ends the run.
        let mut pause = Duration::from_millis(250);
        let sources = loop {
            let attempt = async {
                layout.ensure(&js).await?;
                let mut sources = Vec::new();
                for queue in &config.queues {
                    for priority in Priority::ALL {
                        let consumer =
                            dispatch_consumer(&js, &layout, &config, queue, priority).await?;
                        sources.push(fetch::Source { priority, consumer });
                    }
                }
                Ok::<_, WorkerError>(sources)
            };
            match attempt.await {
                Ok(sources) => break sources,
                Err(
                    e @ (WorkerError::Stream { .. }
                    | WorkerError::Consumer { .. }
                    | WorkerError::Layout(LayoutError::Api { .. })),
                ) => {
                    tracing::warn!(error = %e, retry_in = ?pause, "JetStream is not answering yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        };

        let mut ack_wait = config.ack_wait;
        let mut max_deliver: Option<u64> = None;
        for source in &sources {
            let info = &source.consumer.cached_info().config;
            ack_wait = ack_wait.min(info.ack_wait);
            if let Ok(max) = u64::try_from(info.max_deliver)
                && max > 0
            {
                max_deliver = Some(max_deliver.map_or(max, |m| m.min(max)));
            }
        }
        // Well under ack_wait/3, so a held item is never redelivered while we live.
        let keep_alive = (ack_wait / 4).max(Duration::from_millis(20));

        let registry_store = liveness::open_registry(
            &js,
            &subjects.workers_bucket(),
            config.heartbeat,
            layout.replicas,
        )
        .await?;

        let breakers = breaker::Breakers::open(
            &js,
            &layout,
            config.breakers,
            &config.id,
            breaker_view,
            max_deliver,
        )
        .await?;
        let (limits, limits_table) =
            limits::Limits::open(&js, &layout, &config.limits, &config.id).await?;
        let (paused_tx, paused_rx) = watch::channel(config.guard.overloaded(probe.sample()));
        let running = Arc::new(liveness::Running::default());
        metrics.attach(running.clone(), config.concurrency.get());
        let traces = match &config.otlp_endpoint {
            Some(endpoint) => Some(runlog_telemetry::Traces::start(
                endpoint,
                "runlog-worker",
                &config.id,
            )?),
            None => None,
        };
        let mut journal = Journal::new(
            js.clone(),
            subjects.clone(),
            format!("/runlog/worker/{}", config.id),
        );
        if let Some(traces) = &traces {
            journal = journal.on_ended(runlog_telemetry::spans::on_ended(traces.clone()));
            metrics.count_spans_of(traces.clone());
        }
        let subjects_for_pool = subjects.clone();
        let kinds = registry.kinds();
        let services_stop = CancellationToken::new();
        let signals = signals::Signals::start(&client, &subjects, services_stop.clone()).await?;
        let shared = Arc::new(execution::Shared {
            signals,
            journal,
            subjects,
            worker: config.id.clone(),
            registry,
            secrets,
            keyring,
            env_bucket: OnceCell::new(),
            secrets_bucket: OnceCell::new(),
            telemetry: TelemetryConfig {
                heartbeat: config.heartbeat,
                ..config.telemetry
            },
            cancel_grace: config.cancel_grace,
            keep_alive,
            nak_delay: config.nak_delay,
            running: running.clone(),
            breakers: breakers.clone(),
            limits: limits.clone(),
            metrics,
            traces,
            children_run_as_root: crate::identity::children_run_as_root(config.run_as.as_ref()),
            policy: config.executors.clone(),
            run_as: config.run_as.clone().map(Arc::new),
        });

        let entry = WorkerEntry {
            id: config.id.clone(),
            pool: config.pool.as_ref().map(|p| p.name.clone()),
            load: Vec::new(),
            host: host_name(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            queues: config.queues.iter().map(|q| q.to_string()).collect(),
            kinds,
            heartbeat_ms: config.heartbeat.as_millis() as u64,
            labels: config.labels.clone(),
            concurrency: config.concurrency.get(),
            capacity: config.capacity.clone(),
            running: Vec::new(),
            paused_for_resources: *paused_rx.borrow(),
            started_at: Utc::now(),
            last_seen: Utc::now(),
        };
        let mut services = JoinSet::new();
        services.spawn(
            limits
                .clone()
                .watch_table(limits_table, services_stop.clone()),
        );
        services.spawn(limits.renew(services_stop.clone()));
        services.spawn(breakers.watch(services_stop.clone()));
        services.spawn(guard::watch(
            probe,
            config.guard,
            paused_tx,
            services_stop.clone(),
        ));
        services.spawn(liveness::keep_registered(
            registry_store,
            entry,
            running,
            paused_rx.clone(),
            config.heartbeat,
            services_stop.clone(),
        ));
        // A refused rejoin stops the dispatcher as a shutdown would, and
        // the run ends with the refusal.
        let stop = shutdown.child_token();
        let refused = Arc::new(std::sync::Mutex::new(None));
        if let Some(pool) = config.pool.clone() {
            services.spawn(pool::keep_joined(
                client.clone(),
                subjects_for_pool.clone(),
                pool,
                config.id.clone(),
                stop.clone(),
                refused.clone(),
                services_stop.clone(),
            ));
        }
        tracing::info!(worker = %config.id, queues = ?config.queues, concurrency = config.concurrency, pool = ?config.pool.as_ref().map(|p| &p.name), "worker started");

        let capacity = capacity::Capacity::new(config.concurrency.get(), config.capacity.clone())
            .map_err(|e| WorkerError::Config(e.to_string()))?;
        let fetcher = fetch::Fetcher::new(sources, config.aging_every, config.poll_expires);
        let traces = shared.traces.clone();
        dispatch::Dispatcher::new(
            fetcher,
            capacity,
            config.labels.clone(),
            shared,
            paused_rx,
            config.drain_timeout,
            client.statistics(),
        )
        .run(stop)
        .await;

        services_stop.cancel();
        while services.join_next().await.is_some() {}
        if let Some(traces) = traces {
            // The spans of the last attempts, unless the receiver is down.
            let _late = tokio::time::timeout(Duration::from_secs(2), traces.flush()).await;
        }
        tracing::info!(worker = %config.id, "worker stopped");
        let refusal = refused.lock().unwrap_or_else(|e| e.into_inner()).take();
        match refusal {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Connects to `config.nats_url` and runs a worker with `registry` until
/// `shutdown`.
pub async fn run(
    config: WorkerConfig,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    Worker::connect(config, registry).await?.run(shutdown).await
}

/// The shared consumer of `queue` at `priority`, created from the layout
/// (with this worker's `ack_wait`) if missing.
async fn dispatch_consumer(
    js: &jetstream::Context,
    layout: &Layout,
    config: &WorkerConfig,
    queue: &QueueName,
    priority: Priority,
) -> Result<jetstream::consumer::PullConsumer, WorkerError> {
    let mut wanted = layout.dispatch_consumer(queue, priority);
    wanted.ack_wait = config.ack_wait;
    let name = layout.subjects.dispatch_consumer(queue, priority);
    let stream_name = layout.subjects.exec_stream();
    let stream = match js.get_stream(&stream_name).await {
        Ok(stream) => stream,
        Err(source) => {
            return Err(WorkerError::Stream {
                stream: stream_name,
                source,
            });
        }
    };
    stream
        .get_or_create_consumer(&name, wanted)
        .await
        .map_err(|source| WorkerError::Consumer {
            consumer: name.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_is_valid_and_bad_ids_are_refused() {
        WorkerConfig::default().validate().unwrap();
        for id in ["", "a.b", "white space", &"x".repeat(65)] {
            let config = WorkerConfig {
                id: id.to_owned(),
                ..WorkerConfig::default()
            };
            assert!(config.validate().is_err(), "{id:?}");
        }
        let config = WorkerConfig {
            capacity: vec!["a=1".parse().unwrap(), "a=2".parse().unwrap()],
            ..WorkerConfig::default()
        };
        assert!(config.validate().is_err());
    }
}
