//! `runlog engine`: the engine as a process.
//!
//! Settings are layered, later wins: defaults < `--config` file (TOML) <
//! `RUNLOG_*` environment < flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use runlog_engine::{Engine, EngineConfig};
use tokio_util::sync::CancellationToken;

/// Options of `runlog engine`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A TOML config file (kebab-case keys, see docs/operations.md).
    #[arg(long, env = "RUNLOG_CONFIG")]
    config: Option<PathBuf>,
    /// NATS server URL; repeat for a cluster.
    #[arg(long = "nats-url", env = "RUNLOG_NATS_URL", value_delimiter = ',')]
    nats_urls: Vec<String>,
    /// NATS credentials file.
    #[arg(long, env = "RUNLOG_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// NATS user (with --nats-password).
    #[arg(long, env = "RUNLOG_NATS_USER")]
    nats_user: Option<String>,
    /// NATS password.
    #[arg(long, env = "RUNLOG_NATS_PASSWORD", hide_env_values = true)]
    nats_password: Option<String>,
    /// NATS token.
    #[arg(long, env = "RUNLOG_NATS_TOKEN", hide_env_values = true)]
    nats_token: Option<String>,
    /// Require TLS.
    #[arg(long, env = "RUNLOG_NATS_TLS")]
    nats_tls: bool,
    /// CA certificate to trust (PEM).
    #[arg(long, env = "RUNLOG_NATS_TLS_CA")]
    nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, env = "RUNLOG_NATS_TLS_CERT")]
    nats_tls_cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, env = "RUNLOG_NATS_TLS_KEY")]
    nats_tls_key: Option<PathBuf>,
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
}

impl Args {
    /// The layered configuration.
    pub fn config(self) -> anyhow::Result<EngineConfig> {
        let mut config = match &self.config {
            Some(path) => EngineConfig::from_file(path)?,
            None => EngineConfig::default(),
        };
        let nats = &mut config.nats;
        if !self.nats_urls.is_empty() {
            nats.urls = self.nats_urls;
        }
        set(&mut nats.credentials, self.nats_creds);
        set(&mut nats.user, self.nats_user);
        set(&mut nats.password, self.nats_password);
        set(&mut nats.token, self.nats_token);
        nats.tls |= self.nats_tls;
        set(&mut nats.tls_ca, self.nats_tls_ca);
        set(&mut nats.tls_cert, self.nats_tls_cert);
        set(&mut nats.tls_key, self.nats_tls_key);
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
        Ok(config)
    }
}

fn set<T>(slot: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *slot = value;
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
