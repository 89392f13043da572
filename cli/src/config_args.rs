//! The flags `runlog engine` and `runlog worker` share: the config file,
//! `--print-config`, and how to reach NATS (the `[nats]` table).
//!
//! Flags carry no defaults and read no variables: `runlog-config` layers
//! built-in defaults < file < `RUNLOG_*` environment < the flags given.

use std::path::PathBuf;

use runlog_config::{Layers, NatsConfig, Setting, Tree, Values};
use serde::Serialize;

/// `--config`, `--print-config` and the `[nats]` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SharedArgs {
    /// A TOML config file: the tables [nats], [engine] and [worker], one
    /// file for both commands (docs/operations.md lists every key).
    #[arg(long, env = "RUNLOG_CONFIG")]
    config: Option<PathBuf>,
    /// Print the merged configuration as TOML (secrets redacted) and exit
    /// without connecting.
    #[arg(long)]
    pub print_config: bool,
    /// NATS server URL; repeat (or separate with commas) for a cluster
    /// [default: nats://127.0.0.1:4222; env: RUNLOG_NATS_URL].
    #[arg(long = "nats-url", value_delimiter = ',')]
    nats_urls: Vec<String>,
    /// NATS credentials file [env: RUNLOG_NATS_CREDS].
    #[arg(long)]
    nats_creds: Option<PathBuf>,
    /// NATS user, with --nats-password [env: RUNLOG_NATS_USER].
    #[arg(long)]
    nats_user: Option<String>,
    /// NATS password [env: RUNLOG_NATS_PASSWORD].
    #[arg(long)]
    nats_password: Option<String>,
    /// NATS token [env: RUNLOG_NATS_TOKEN].
    #[arg(long)]
    nats_token: Option<String>,
    /// Require TLS [env: RUNLOG_NATS_TLS].
    #[arg(long)]
    nats_tls: bool,
    /// CA certificate to trust, PEM [env: RUNLOG_NATS_TLS_CA].
    #[arg(long)]
    nats_tls_ca: Option<PathBuf>,
    /// Client certificate, PEM [env: RUNLOG_NATS_TLS_CERT].
    #[arg(long)]
    nats_tls_cert: Option<PathBuf>,
    /// Client key, PEM [env: RUNLOG_NATS_TLS_KEY].
    #[arg(long)]
    nats_tls_key: Option<PathBuf>,
    /// Subject and stream prefix of the installation [default: runlog;
    /// env: RUNLOG_PREFIX].
    #[arg(long)]
    prefix: Option<String>,
    /// Stream replicas, if this process creates the streams: 3 on a
    /// cluster [default: 1; env: RUNLOG_REPLICAS].
    #[arg(long)]
    replicas: Option<usize>,
}

impl SharedArgs {
    /// Merges the layers of a command: `defaults` and `flags` hold its
    /// table, these arguments add the `[nats]` ones.
    pub fn tree(
        &self,
        settings: &[Setting],
        defaults: Values,
        flags: Values,
    ) -> anyhow::Result<Tree> {
        let flags = flags
            .set_some(
                "nats.urls",
                Some(self.nats_urls.clone()).filter(|urls| !urls.is_empty()),
            )
            .set_some("nats.credentials", self.nats_creds.clone())
            .set_some("nats.user", self.nats_user.clone())
            .set_some("nats.password", self.nats_password.clone())
            .set_some("nats.token", self.nats_token.clone())
            .set_some("nats.tls", self.nats_tls.then_some(true))
            .set_some("nats.tls-ca", self.nats_tls_ca.clone())
            .set_some("nats.tls-cert", self.nats_tls_cert.clone())
            .set_some("nats.tls-key", self.nats_tls_key.clone())
            .set_some("nats.prefix", self.prefix.clone())
            .set_some("nats.replicas", self.replicas);
        let tree = Layers {
            settings,
            defaults: defaults.set("nats", NatsConfig::default()),
            file: self.config.as_deref(),
            env: std::env::vars().collect(),
            flags,
        }
        .merge()?;
        Ok(tree)
    }
}

/// Prints `[nats]` and the command's table; secrets show as `<redacted>`.
pub fn print_config<T: Serialize>(nats: &NatsConfig, name: &str, table: &T) -> anyhow::Result<()> {
    let nats = runlog_config::to_toml("nats", nats)?;
    let table = runlog_config::to_toml(name, table)?;
    print!("{nats}\n{table}");
    Ok(())
}

/// A duration flag: humantime text (`250ms`, `5s`, `1m30s`).
pub fn duration(text: &str) -> Result<humantime::Duration, String> {
    text.parse::<humantime::Duration>()
        .map_err(|e| format!("{text:?} is not a duration ({e}): write 250ms, 5s, 1m30s or 1h"))
}

/// A flag's duration as the tree writes it.
pub fn as_text(d: Option<humantime::Duration>) -> Option<String> {
    d.map(|d| d.to_string())
}
