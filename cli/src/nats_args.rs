//! The NATS connection flags every long-running command shares.

use std::path::PathBuf;

use runlog_engine::NatsConfig;

/// How to reach NATS (flags and `RUNLOG_NATS_*`).
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL; repeat (or separate with commas) for a cluster
    /// [default: nats://127.0.0.1:4222].
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
}

impl NatsArgs {
    /// Lays the settings given over `nats` (what is not given stays).
    pub fn apply(self, nats: &mut NatsConfig) {
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
    }
}

fn set<T>(slot: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *slot = value;
    }
}
