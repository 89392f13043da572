//! The `[worker]` table of runlog.toml, and how it becomes the runtime's
//! [`WorkerConfig`].

use std::collections::{BTreeMap, BTreeSet};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use runlog_config::{Form, NatsConfig, Setting, setting};
use runlog_events::QueueName;
use runlog_worker::executor::{HostPattern, HostPolicy};
use runlog_worker::identity::RunAs;
use runlog_worker::policy::{ExecutorPolicy, QueueRule, QueueRulePatch};
use runlog_worker::runtime::{
    BreakerConfig, CapacityRule, ConcurrencyRule, GuardConfig, LimitsConfig, PoolMembership,
    RateRule, WorkerConfig,
};
use serde::{Deserialize, Serialize};

/// The worker's settings: key, variable, flag.
pub const WORKER: [Setting; 35] = [
    setting("worker.id", "RUNLOG_WORKER_ID", "--id", Form::Text),
    setting("worker.pool", "RUNLOG_POOL", "--pool", Form::Text),
    setting(
        "worker.pool-token-file",
        "RUNLOG_POOL_TOKEN_FILE",
        "--token-file",
        Form::Text,
    ),
    setting("worker.queues", "RUNLOG_QUEUES", "--queue", Form::List(',')),
    setting(
        "worker.concurrency",
        "RUNLOG_CONCURRENCY",
        "--concurrency",
        Form::Text,
    ),
    setting(
        "worker.labels",
        "RUNLOG_LABELS",
        "--label",
        Form::Pairs(','),
    ),
    setting(
        "worker.capacity",
        "RUNLOG_CAPACITY",
        "--capacity",
        Form::List(';'),
    ),
    setting(
        "worker.heartbeat",
        "RUNLOG_HEARTBEAT",
        "--heartbeat",
        Form::Text,
    ),
    setting(
        "worker.ack-wait",
        "RUNLOG_ACK_WAIT",
        "--ack-wait",
        Form::Text,
    ),
    setting(
        "worker.drain-timeout",
        "RUNLOG_DRAIN_TIMEOUT",
        "--drain-timeout",
        Form::Text,
    ),
    setting(
        "worker.cancel-grace",
        "RUNLOG_CANCEL_GRACE",
        "--cancel-grace",
        Form::Text,
    ),
    setting(
        "worker.poll-expires",
        "RUNLOG_POLL_EXPIRES",
        "--poll-expires",
        Form::Text,
    ),
    setting(
        "worker.aging-every",
        "RUNLOG_AGING_EVERY",
        "--aging-every",
        Form::Text,
    ),
    setting(
        "worker.nak-delay",
        "RUNLOG_NAK_DELAY",
        "--nak-delay",
        Form::Text,
    ),
    setting(
        "worker.guard.max-memory-percent",
        "RUNLOG_MAX_MEMORY_PERCENT",
        "--max-memory-percent",
        Form::Text,
    ),
    setting(
        "worker.guard.max-load",
        "RUNLOG_MAX_LOAD",
        "--max-load",
        Form::Text,
    ),
    setting(
        "worker.breakers.enabled",
        "RUNLOG_BREAKERS",
        "--breakers",
        Form::Text,
    ),
    setting(
        "worker.breakers.failure-percent",
        "RUNLOG_BREAKER_FAILURE_PERCENT",
        "--breaker-failure-percent",
        Form::Text,
    ),
    setting(
        "worker.breakers.min-calls",
        "RUNLOG_BREAKER_MIN_CALLS",
        "--breaker-min-calls",
        Form::Text,
    ),
    setting(
        "worker.breakers.window",
        "RUNLOG_BREAKER_WINDOW",
        "--breaker-window",
        Form::Text,
    ),
    setting(
        "worker.breakers.open",
        "RUNLOG_BREAKER_OPEN",
        "--breaker-open",
        Form::Text,
    ),
    setting(
        "worker.breakers.probes",
        "RUNLOG_BREAKER_PROBES",
        "--breaker-probes",
        Form::Text,
    ),
    setting(
        "worker.limits.rate",
        "RUNLOG_RATE_LIMITS",
        "--rate-limit",
        Form::List(';'),
    ),
    setting(
        "worker.limits.concurrency",
        "RUNLOG_CONCURRENCY_LIMITS",
        "--concurrency-limit",
        Form::List(';'),
    ),
    setting(
        "worker.limits.lease-ttl",
        "RUNLOG_LEASE_TTL",
        "--lease-ttl",
        Form::Text,
    ),
    setting(
        "worker.metrics-addr",
        "RUNLOG_METRICS_ADDR",
        "--metrics-addr",
        Form::Text,
    ),
    setting(
        "worker.otlp-endpoint",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "--otlp-endpoint",
        Form::Text,
    ),
    setting("worker.run-as", "RUNLOG_RUN_AS", "--run-as", Form::Text),
    setting(
        "worker.secret-key-file",
        "RUNLOG_SECRET_KEY_FILE",
        "--secret-key-file",
        Form::Text,
    ),
    setting(
        "worker.allow-root",
        "RUNLOG_ALLOW_ROOT",
        "--allow-root",
        Form::Text,
    ),
    setting(
        "worker.executors.disabled",
        "RUNLOG_DISABLED_KINDS",
        "--disable-kind",
        Form::List(','),
    ),
    setting(
        "worker.executors.programs",
        "RUNLOG_ALLOWED_PROGRAMS",
        "--allow-program",
        Form::List(','),
    ),
    setting(
        "worker.http.allow-hosts",
        "RUNLOG_HTTP_ALLOW_HOSTS",
        "--allow-host",
        Form::List(','),
    ),
    setting(
        "worker.http.deny-hosts",
        "RUNLOG_HTTP_DENY_HOSTS",
        "--deny-host",
        Form::List(','),
    ),
    setting(
        "worker.http.allow-link-local",
        "RUNLOG_HTTP_ALLOW_LINK_LOCAL",
        "--allow-link-local",
        Form::Text,
    ),
];

/// The `[worker]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct WorkerTable {
    /// The worker id; none: `<host>-<random>`, new at every start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The agent pool to join (the worker then serves only the pool's
    /// queue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The file holding the pool token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_token_file: Option<std::path::PathBuf>,
    /// The queues to take work from.
    pub queues: Vec<QueueName>,
    /// Attempts run at once.
    pub concurrency: NonZeroUsize,
    /// Capacity rules (`plan=3`, `apply=1,exclusive`).
    #[serde(with = "as_text")]
    pub capacity: Vec<CapacityRule>,
    /// Registry refresh and heartbeat interval of running attempts.
    #[serde(with = "runlog_config::duration")]
    pub heartbeat: Duration,
    /// `ack_wait` of the dispatch consumers this worker creates.
    #[serde(with = "runlog_config::duration")]
    pub ack_wait: Duration,
    /// How long running attempts may finish after SIGTERM.
    #[serde(with = "runlog_config::duration")]
    pub drain_timeout: Duration,
    /// How long a cancelled handler may take to stop.
    #[serde(with = "runlog_config::duration")]
    pub cancel_grace: Duration,
    /// How long an idle long poll waits at the server.
    #[serde(with = "runlog_config::duration")]
    pub poll_expires: Duration,
    /// Every k-th pick starts one priority level lower (≥ 2).
    pub aging_every: u32,
    /// Base delay before an item this worker cannot take is redelivered.
    #[serde(with = "runlog_config::duration")]
    pub nak_delay: Duration,
    /// Labels tasks may require (`pool = "eu"`).
    pub labels: BTreeMap<String, String>,
    /// When fetching pauses for the host's sake.
    pub guard: GuardTable,
    /// Circuit breakers.
    pub breakers: BreakersTable,
    /// Rate and concurrency limits.
    pub limits: LimitsTable,
    /// Where `/metrics` listens; none: no metrics endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The OTLP/HTTP receiver spans go to; none: no traces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// The user `shell` and `script` programs run as (a root worker
    /// only); none: the worker's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// Let `shell` and `script` programs run as root.
    pub allow_root: bool,
    /// The engine's key ring, to open sealed task environments and stored
    /// secrets with; none: attempts that need them fail `permission`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key_file: Option<std::path::PathBuf>,
    /// Kinds and programs refused, on every queue and per queue.
    pub executors: ExecutorsTable,
    /// Where `http` tasks may go.
    pub http: HttpTable,
}

/// `[worker.executors]`: what tasks may start, on every queue; a table
/// under `queues` replaces a field for one queue.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ExecutorsTable {
    /// Kinds this worker refuses (`["ssh", "script"]`).
    pub disabled: BTreeSet<String>,
    /// When set, the only programs `shell`, `script` and `ssh` tasks may
    /// start (`["restic", "/usr/bin/tofu"]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub programs: Option<BTreeSet<String>>,
    /// Rules of single queues (`[worker.executors.queues.backups]`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub queues: BTreeMap<QueueName, QueueExecutorsTable>,
}

/// `[worker.executors.queues.NAME]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct QueueExecutorsTable {
    /// Kinds refused on the queue (replaces the worker-wide list).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<BTreeSet<String>>,
    /// The only programs tasks of the queue may start (replaces the
    /// worker-wide list).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub programs: Option<BTreeSet<String>>,
}

/// `[worker.http]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct HttpTable {
    /// When not empty, the only hosts `http` tasks may reach (names,
    /// `*.example.com`, addresses, networks).
    #[serde(with = "as_text")]
    pub allow_hosts: Vec<HostPattern>,
    /// Hosts `http` tasks may never reach.
    #[serde(with = "as_text")]
    pub deny_hosts: Vec<HostPattern>,
    /// Let `http` tasks reach link-local and cloud metadata addresses.
    pub allow_link_local: bool,
}

/// `[worker.guard]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct GuardTable {
    /// Stop fetching while host memory use is above this percentage.
    pub max_memory_percent: f64,
    /// Stop fetching while the 1-minute load average is above this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_load: Option<f64>,
}

/// `[worker.breakers]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct BreakersTable {
    /// Consult and feed breakers at all.
    pub enabled: bool,
    /// The failed share (1-100 %) that opens a breaker.
    pub failure_percent: u8,
    /// Attempts that must have ended in the window before it may open.
    pub min_calls: NonZeroU32,
    /// How far back outcomes count.
    #[serde(with = "runlog_config::duration")]
    pub window: Duration,
    /// How long an open breaker delays attempts before it probes.
    #[serde(with = "runlog_config::duration")]
    pub open: Duration,
    /// Probes of a half-open breaker that must succeed to close it.
    pub probes: NonZeroU32,
}

/// `[worker.limits]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct LimitsTable {
    /// Rate rules (`provider=openai:5/s`).
    #[serde(with = "as_text")]
    pub rate: Vec<RateRule>,
    /// Concurrency rules (`workspace=prod:1`).
    #[serde(with = "as_text")]
    pub concurrency: Vec<ConcurrencyRule>,
    /// How long a concurrency lease outlives its worker's last renewal.
    #[serde(with = "runlog_config::duration")]
    pub lease_ttl: Duration,
}

impl Default for WorkerTable {
    fn default() -> Self {
        let runtime = WorkerConfig::default();
        WorkerTable {
            id: None,
            pool: None,
            pool_token_file: None,
            metrics_addr: None,
            otlp_endpoint: None,
            run_as: None,
            allow_root: false,
            secret_key_file: None,
            executors: ExecutorsTable::default(),
            http: HttpTable::default(),
            queues: runtime.queues,
            concurrency: runtime.concurrency,
            capacity: runtime.capacity,
            heartbeat: runtime.heartbeat,
            ack_wait: runtime.ack_wait,
            drain_timeout: runtime.drain_timeout,
            cancel_grace: runtime.cancel_grace,
            poll_expires: runtime.poll_expires,
            aging_every: runtime.aging_every,
            nak_delay: runtime.nak_delay,
            labels: runtime.labels,
            guard: GuardTable::default(),
            breakers: BreakersTable::default(),
            limits: LimitsTable::default(),
        }
    }
}

impl Default for GuardTable {
    fn default() -> Self {
        let guard = GuardConfig::default();
        GuardTable {
            max_memory_percent: guard.max_memory_percent,
            max_load: guard.max_load,
        }
    }
}

impl Default for BreakersTable {
    fn default() -> Self {
        let b = BreakerConfig::default();
        BreakersTable {
            enabled: b.enabled,
            failure_percent: b.failure_percent,
            min_calls: b.min_calls,
            window: b.window,
            open: b.open_for,
            probes: b.probes,
        }
    }
}

impl Default for LimitsTable {
    fn default() -> Self {
        let limits = LimitsConfig::default();
        LimitsTable {
            rate: limits.rates,
            concurrency: limits.concurrency,
            lease_ttl: limits.lease_ttl,
        }
    }
}

impl WorkerTable {
    /// The runtime's configuration, connected by `nats`.
    pub fn into_config(self, nats: &NatsConfig) -> WorkerConfig {
        let defaults = WorkerConfig::default();
        WorkerConfig {
            nats_url: nats.urls.join(","),
            prefix: nats.prefix.clone(),
            replicas: nats.replicas,
            id: self.id.unwrap_or(defaults.id),
            queues: self.queues,
            concurrency: self.concurrency,
            labels: self.labels,
            capacity: self.capacity,
            heartbeat: self.heartbeat,
            ack_wait: self.ack_wait,
            drain_timeout: self.drain_timeout,
            cancel_grace: self.cancel_grace,
            poll_expires: self.poll_expires,
            aging_every: self.aging_every,
            nak_delay: self.nak_delay,
            guard: GuardConfig {
                max_memory_percent: self.guard.max_memory_percent,
                max_load: self.guard.max_load,
                ..defaults.guard
            },
            telemetry: defaults.telemetry,
            breakers: BreakerConfig {
                enabled: self.breakers.enabled,
                failure_percent: self.breakers.failure_percent,
                min_calls: self.breakers.min_calls,
                window: self.breakers.window,
                open_for: self.breakers.open,
                probes: self.breakers.probes,
            },
            limits: LimitsConfig {
                rates: self.limits.rate,
                concurrency: self.limits.concurrency,
                lease_ttl: self.limits.lease_ttl,
                ..defaults.limits
            },
            pool: None,
            otlp_endpoint: self.otlp_endpoint,
            executors: ExecutorPolicy {
                default: QueueRule {
                    disabled: self.executors.disabled,
                    programs: self.executors.programs,
                },
                queues: self
                    .executors
                    .queues
                    .into_iter()
                    .map(|(queue, rule)| {
                        let patch = QueueRulePatch {
                            disabled: rule.disabled,
                            programs: rule.programs,
                        };
                        (queue, patch)
                    })
                    .collect(),
                allow_root: self.allow_root,
            },
            run_as: None,
            secret_key_file: self.secret_key_file,
        }
    }

    /// The user of `run-as`, looked up.
    pub fn run_as(&self) -> anyhow::Result<Option<RunAs>> {
        Ok(self.run_as.as_deref().map(RunAs::lookup).transpose()?)
    }

    /// Where `http` tasks may go.
    pub fn hosts(&self) -> HostPolicy {
        HostPolicy {
            allow: self.http.allow_hosts.clone(),
            deny: self.http.deny_hosts.clone(),
            allow_link_local: self.http.allow_link_local,
        }
    }

    /// The pool to join, with the token read from its file.
    pub fn pool_membership(&self) -> anyhow::Result<Option<PoolMembership>> {
        use anyhow::Context;
        let Some(name) = &self.pool else {
            if self.pool_token_file.is_some() {
                anyhow::bail!("--token-file is the token of a pool: give --pool too");
            }
            return Ok(None);
        };
        let file = self.pool_token_file.as_ref().with_context(|| {
            format!(
                "pool {name:?} needs its token: --token-file FILE (`runlog pool create {name}` \
                 prints one)"
            )
        })?;
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the pool token file {}", file.display()))?;
        Ok(Some(PoolMembership {
            name: name.clone(),
            token: token.trim().to_owned(),
        }))
    }
}

/// Rules as the text their flags take (`plan=3`, `provider=openai:5/s`).
mod as_text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(rules: &[T], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(rules.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Vec<T>, D::Error>
    where
        T: FromStr<Err: Display>,
        D: Deserializer<'de>,
    {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| text.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}
