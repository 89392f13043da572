//! `runlog engine`: the engine as a process.
//!
//! Settings are layered, later wins: defaults < `--config` file (TOML) <
//! `RUNLOG_*` environment < flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use runlog_engine::{Engine, EngineConfig};
use tokio_util::sync::CancellationToken;

use crate::nats_args::NatsArgs;

/// Options of `runlog engine`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A TOML config file (kebab-case keys, see docs/operations.md).
    #[arg(long, env = "RUNLOG_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    nats: NatsArgs,
    /// Subject and stream prefix.
    #[arg(long, env = "RUNLOG_PREFIX")]
    prefix: Option<String>,
    /// Stream replicas (3 on a cluster).
    #[arg(long, env = "RUNLOG_REPLICAS")]
    replicas: Option<usize>,
    /// Where the HTTP API listens.
    #[arg(long, env = "RUNLOG_LISTEN")]
    listen: Option<SocketAddr>,
    /// Serve the API and projections only; leave reactions to other replicas.
    #[arg(long, env = "RUNLOG_NO_REACTOR")]
    no_reactor: bool,
    /// Republish every stored event on `<p>.live.ev.>` (core NATS) for
    /// clients that follow executions without the HTTP API.
    #[arg(long, env = "RUNLOG_LIVE_EVENTS")]
    live_events: bool,
    /// Seconds without progress or log lines (worker alive) after which a
    /// running attempt is shown as stuck (default 300).
    #[arg(long, env = "RUNLOG_STUCK_AFTER")]
    stuck_after: Option<u64>,
}

impl Args {
    /// The layered configuration.
    pub fn config(self) -> anyhow::Result<EngineConfig> {
        let mut config = match &self.config {
            Some(path) => EngineConfig::from_file(path)?,
            None => EngineConfig::default(),
        };
        self.nats.apply(&mut config.nats);
        let nats = &mut config.nats;
        if let Some(prefix) = self.prefix {
            nats.prefix = prefix;
        }
        if let Some(replicas) = self.replicas {
            nats.replicas = replicas;
        }
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if self.no_reactor {
            config.reactor = false;
        }
        if self.live_events {
            config.nats.live_events = true;
        }
        if let Some(secs) = self.stuck_after {
            config.stuck_after_secs = secs;
        }
        Ok(config)
    }
}

/// Runs the engine until SIGINT or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config()?;
    let shutdown = CancellationToken::new();
    let engine = Engine::start(config, shutdown.clone()).await?;
    println!("runlog engine listening on http://{}", engine.addr());
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
