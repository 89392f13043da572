//! `runlog engine`: the engine as a process.
//!
//! It reads the `[nats]` and `[engine]` tables of the configuration tree,
//! layered, later wins: built-in defaults < `--config` file (TOML) <
//! `RUNLOG_*` environment < flags.

use std::net::SocketAddr;

use anyhow::Context;
use runlog_config::{Form, NATS, NatsConfig, Setting, Values, setting};
use runlog_engine::{Engine, EngineConfig};
use tokio_util::sync::CancellationToken;

use crate::config_args::{SharedArgs, as_text, duration, print_config};

/// The engine's own settings: key, variable, flag.
pub const ENGINE: [Setting; 11] = [
    setting(
        "nats.live-events",
        "RUNLOG_LIVE_EVENTS",
        "--live-events",
        Form::Text,
    ),
    setting("engine.listen", "RUNLOG_LISTEN", "--listen", Form::Text),
    setting(
        "engine.reactor",
        "RUNLOG_NO_REACTOR",
        "--no-reactor",
        Form::Not,
    ),
    setting(
        "engine.snapshot-interval",
        "RUNLOG_SNAPSHOT_INTERVAL",
        "--snapshot-interval",
        Form::Text,
    ),
    setting(
        "engine.stuck-after",
        "RUNLOG_STUCK_AFTER",
        "--stuck-after",
        Form::Text,
    ),
    setting(
        "engine.metrics-task-labels",
        "RUNLOG_METRICS_TASK_LABELS",
        "--metrics-task-label",
        Form::List(','),
    ),
    setting(
        "engine.otlp-endpoint",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "--otlp-endpoint",
        Form::Text,
    ),
    setting("engine.auth", "RUNLOG_AUTH", "--auth", Form::Text),
    setting(
        "engine.insecure-no-auth",
        "RUNLOG_INSECURE_NO_AUTH",
        "--insecure-no-auth",
        Form::Text,
    ),
    setting(
        "engine.bootstrap-token-file",
        "RUNLOG_BOOTSTRAP_TOKEN_FILE",
        "--bootstrap-token-file",
        Form::Text,
    ),
    setting(
        "engine.secret-key-file",
        "RUNLOG_SECRET_KEY_FILE",
        "--secret-key-file",
        Form::Text,
    ),
];

/// Options of `runlog engine`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    shared: SharedArgs,
    /// Where the HTTP API listens [default: 127.0.0.1:8080; env:
    /// RUNLOG_LISTEN].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serve the API and projections only; leave reactions to other
    /// replicas [env: RUNLOG_NO_REACTOR].
    #[arg(long)]
    no_reactor: bool,
    /// Republish every stored event on `<p>.live.ev.>` (core NATS) for
    /// clients that follow executions without the HTTP API [env:
    /// RUNLOG_LIVE_EVENTS].
    #[arg(long)]
    live_events: bool,
    /// Time between projection snapshots, `0s` for none [default: 1m; env:
    /// RUNLOG_SNAPSHOT_INTERVAL].
    #[arg(long, value_parser = duration)]
    snapshot_interval: Option<humantime::Duration>,
    /// Time without progress or log lines (worker alive) after which a
    /// running attempt is shown as stuck [default: 5m; env:
    /// RUNLOG_STUCK_AFTER].
    #[arg(long, value_parser = duration)]
    stuck_after: Option<humantime::Duration>,
    /// A task label `/metrics` shows as `label_<name>` beside queue and
    /// kind; repeat for several [env: RUNLOG_METRICS_TASK_LABELS,
    /// comma-separated].
    #[arg(long = "metrics-task-label", value_delimiter = ',')]
    metrics_task_labels: Vec<String>,
    /// Export traces to this OTLP/HTTP receiver (`http://collector:4318`)
    /// [default: none; env: OTEL_EXPORTER_OTLP_ENDPOINT].
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Require an API token on every request but health, metrics and the
    /// dashboard's files (docs/security.md) [env: RUNLOG_AUTH].
    #[arg(long)]
    auth: bool,
    /// Serve the API to other hosts without auth; without it, an engine
    /// refuses a non-loopback --listen with auth off [env:
    /// RUNLOG_INSECURE_NO_AUTH].
    #[arg(long)]
    insecure_no_auth: bool,
    /// With auth on and no admin token yet, write a new admin token to
    /// this file (mode 0600) [env: RUNLOG_BOOTSTRAP_TOKEN_FILE].
    #[arg(long, value_name = "FILE")]
    bootstrap_token_file: Option<std::path::PathBuf>,
    /// The key ring that seals task environments and secrets at rest (mode
    /// 0600; `runlog secret keygen` makes one) [env: RUNLOG_SECRET_KEY_FILE].
    #[arg(long, value_name = "FILE")]
    secret_key_file: Option<std::path::PathBuf>,
}

impl Args {
    /// The layered configuration.
    pub fn config(&self) -> anyhow::Result<EngineConfig> {
        let settings: Vec<Setting> = NATS.iter().chain(&ENGINE).copied().collect();
        let defaults = Values::new().set("engine", EngineConfig::default());
        let flags = Values::new()
            .set_some("nats.live-events", self.live_events.then_some(true))
            .set_some("engine.listen", self.listen)
            .set_some("engine.reactor", self.no_reactor.then_some(false))
            .set_some("engine.snapshot-interval", as_text(self.snapshot_interval))
            .set_some("engine.stuck-after", as_text(self.stuck_after))
            .set_some(
                "engine.metrics-task-labels",
                Some(self.metrics_task_labels.clone()).filter(|l| !l.is_empty()),
            )
            .set_some("engine.otlp-endpoint", self.otlp_endpoint.clone())
            .set_some("engine.auth", self.auth.then_some(true))
            .set_some(
                "engine.insecure-no-auth",
                self.insecure_no_auth.then_some(true),
            )
            .set_some(
                "engine.bootstrap-token-file",
                self.bootstrap_token_file.clone(),
            )
            .set_some("engine.secret-key-file", self.secret_key_file.clone());
        let tree = self.shared.tree(&settings, defaults, flags)?;
        Ok(EngineConfig {
            nats: tree.table::<NatsConfig>("nats")?,
            ..tree.table("engine")?
        })
    }
}

/// Runs the engine until SIGINT or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config()?;
    if args.shared.print_config {
        return print_config(&config.nats, "engine", &config);
    }
    let shutdown = CancellationToken::new();
    let auth = config.auth;
    let engine = Engine::start(config, shutdown.clone()).await?;
    println!("runlog engine listening on http://{}", engine.addr());
    if !auth {
        eprintln!(
            "auth is off: the API answers everyone who reaches {} (--auth turns it on)",
            engine.addr()
        );
    }
    wait_for_signal()
        .await
        .context("cannot wait for a signal")?;
    eprintln!("stopping");
    shutdown.cancel();
    engine.wait().await;
    Ok(())
}

/// SIGINT (Ctrl-C) or SIGTERM.
pub async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
