//! The `[nats]` table: how engine and workers reach NATS, and the subject
//! prefix and stream layout of the installation they share.

use std::path::PathBuf;
use std::time::Duration;

use runlog_events::Subjects;
use runlog_events::stream::Layout;
use serde::{Deserialize, Serialize};

use crate::{ConfigError, Secret};

/// How to reach NATS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs (`nats://127.0.0.1:4222`); several for a cluster.
    pub urls: Vec<String>,
    /// A credentials file (JWT + NKey seed).
    pub credentials: Option<PathBuf>,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password (with `user`); never printed.
    pub password: Option<Secret>,
    /// A token; never printed.
    pub token: Option<Secret>,
    /// Require TLS.
    pub tls: bool,
    /// CA certificate(s) to trust (PEM).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), with `tls-key`.
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Subject and stream prefix.
    pub prefix: String,
    /// Stream replicas: 1 on a single server, 3 on a cluster.
    pub replicas: usize,
    /// Republish every stored lifecycle event on `<p>.live.ev.>` for
    /// clients outside the engine (see `Layout::live_events`).
    pub live_events: bool,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            urls: vec!["nats://127.0.0.1:4222".to_owned()],
            credentials: None,
            user: None,
            password: None,
            token: None,
            tls: false,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            prefix: runlog_events::subject::DEFAULT_PREFIX.to_owned(),
            replicas: 1,
            live_events: false,
        }
    }
}

impl NatsConfig {
    /// The subject names of the prefix.
    pub fn subjects(&self) -> Result<Subjects, ConfigError> {
        Subjects::new(&self.prefix).map_err(|e| ConfigError::Invalid {
            setting: "nats.prefix",
            reason: e.to_string(),
        })
    }

    /// The stream layout.
    pub fn layout(&self) -> Result<Layout, ConfigError> {
        Ok(Layout {
            subjects: self.subjects()?,
            replicas: self.replicas.max(1),
            live_events: Some(self.live_events),
            ..Layout::default()
        })
    }

    /// Connects, naming the connection `name` (visible in the server's
    /// connection list). Waits for the first connection at most 10 s.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, ConfigError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(10))
            .retry_on_initial_connect()
            .max_reconnects(None);
        if let Some(path) = &self.credentials {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| ConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.expose().to_owned());
        }
        if let Some(token) = &self.token {
            options = options.token(token.expose().to_owned());
        }
        if self.tls {
            options = options.require_tls(true);
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let urls = self.urls.join(",");
        let addrs: Vec<async_nats::ServerAddr> = self
            .urls
            .iter()
            .map(|u| {
                u.parse().map_err(|e: std::io::Error| ConfigError::Invalid {
                    setting: "nats.urls",
                    reason: format!("{u}: {e}"),
                })
            })
            .collect::<Result<_, _>>()?;
        let client = options
            .connect(addrs.as_slice())
            .await
            .map_err(|e| ConfigError::Connect {
                urls: urls.clone(),
                reason: e.to_string(),
            })?;
        // retry_on_initial_connect returns at once: wait for the handshake.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while client.connection_state() != async_nats::connection::State::Connected {
            if tokio::time::Instant::now() >= deadline {
                return Err(ConfigError::Connect {
                    urls,
                    reason: "no connection within 10 s".to_owned(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(client)
    }
}
