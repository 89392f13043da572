//! The engine's configuration: the `[engine]` table of runlog.toml.
//!
//! The shared `[nats]` table ([`NatsConfig`]) and the layering (built-in
//! defaults < file < `RUNLOG_*` environment < flags) are `runlog-config`'s;
//! `runlog engine` merges them into an [`EngineConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use runlog_config::{ConfigError, NatsConfig};
pub use runlog_events::resources::Prices;
use serde::{Deserialize, Serialize};

/// The engine's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct EngineConfig {
    /// NATS: the shared `[nats]` table, read beside `[engine]`.
    #[serde(skip)]
    pub nats: NatsConfig,
    /// Where the HTTP API listens.
    pub listen: SocketAddr,
    /// Run the reactor in this engine (every replica may).
    pub reactor: bool,
    /// Time between projection snapshots (zero: never), so a restart
    /// replays only the tail of the log.
    #[serde(with = "runlog_config::duration")]
    pub snapshot_interval: Duration,
    /// How long a running attempt may go without progress or a log line,
    /// while its worker still sends heartbeats, before the API shows it as
    /// `stuck`.
    #[serde(with = "runlog_config::duration")]
    pub stuck_after: Duration,
    /// Task labels `/metrics` shows as `label_<name>` beside queue and
    /// kind (each keeps its first 100 values; see docs/metrics.md).
    pub metrics_task_labels: Vec<String>,
    /// The OTLP/HTTP receiver traces go to (`http://collector:4318`);
    /// none are exported without one (docs/traces.md).
    pub otlp_endpoint: Option<String>,
    /// What resources cost (`[engine.prices]`: `cpu-second`, `gb-hour`,
    /// `gb-output`); without, the API reports resources and no cost.
    pub prices: Prices,
    /// Require an API token on every request but `/healthz`, `/readyz`,
    /// `/metrics` and the dashboard's files (docs/security.md).
    pub auth: bool,
    /// Listen on an address other hosts reach without auth; without it an
    /// engine refuses to.
    pub insecure_no_auth: bool,
    /// With auth on and no admin token in the bucket, the engine makes one
    /// and writes it to this file (mode 0600) at start.
    pub bootstrap_token_file: Option<PathBuf>,
    /// The key ring that seals task environments and named secrets (a
    /// file only its owner may read; docs/security.md). Without it, tasks
    /// with `env` values and `/v1/secrets` are refused.
    pub secret_key_file: Option<PathBuf>,
}

impl EngineConfig {
    /// An engine on the NATS server at `url`, its API on a port of
    /// 127.0.0.1 the system picks ([`Engine::addr`](crate::Engine::addr)
    /// says which): what embedding programs and tests start.
    pub fn local(url: &str) -> Self {
        let mut config = EngineConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..EngineConfig::default()
        };
        config.nats.urls = vec![url.to_owned()];
        config
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            nats: NatsConfig::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            reactor: true,
            snapshot_interval: Duration::from_secs(60),
            stuck_after: Duration::from_secs(300),
            metrics_task_labels: Vec::new(),
            otlp_endpoint: None,
            prices: Prices::default(),
            auth: false,
            insecure_no_auth: false,
            bootstrap_token_file: None,
            secret_key_file: None,
        }
    }
}
