//! The engine's configuration: one typed tree, kebab-case in files.
//!
//! Layered, later wins: built-in defaults (right for `runlog dev`) < a TOML
//! file < `RUNLOG_*` environment < command-line flags. The command line
//! (`runlog engine`) does the layering; this module holds the tree, the
//! file format and the NATS connection it describes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use runlog_events::Subjects;
use runlog_events::stream::Layout;
use serde::Deserialize;

/// How to reach NATS.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs (`nats://127.0.0.1:4222`); several for a cluster.
    pub urls: Vec<String>,
    /// A credentials file (JWT + NKey seed).
    pub credentials: Option<PathBuf>,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password (with `user`).
    pub password: Option<String>,
    /// A token.
    pub token: Option<String>,
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

/// Why NATS could not be reached or the configuration is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting is invalid.
    #[error("invalid setting {setting}: {reason}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// Why.
        reason: String,
    },
    /// The file could not be read or parsed.
    #[error("cannot read the config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// NATS did not accept the connection.
    #[error(
        "cannot reach NATS at {urls} ({reason}): is nats-server running? `runlog dev` starts one"
    )]
    Connect {
        /// The URLs tried.
        urls: String,
        /// The client's error.
        reason: String,
    },
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
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
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

/// The engine's settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct EngineConfig {
    /// NATS.
    pub nats: NatsConfig,
    /// Where the HTTP API listens.
    pub listen: SocketAddr,
    /// Run the reactor in this engine (every replica may).
    pub reactor: bool,
    /// Seconds between projection snapshots (0: never), so a restart
    /// replays only the tail of the log.
    pub snapshot_interval_secs: u64,
    /// Seconds a running attempt may go without progress or a log line,
    /// while its worker still sends heartbeats, before the API shows it as
    /// `stuck`.
    pub stuck_after_secs: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            nats: NatsConfig::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            reactor: true,
            snapshot_interval_secs: 60,
            stuck_after_secs: 300,
        }
    }
}

impl EngineConfig {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_overrides_defaults_and_names_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("runlog-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("engine.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\n[nats]\nurls = [\"nats://a:4222\", \"nats://b:4222\"]\nreplicas = 3\n",
        )
        .unwrap();
        let config = EngineConfig::from_file(&path).unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.nats.replicas, 3);
        assert_eq!(config.nats.prefix, "runlog");
        std::fs::write(&path, "[nats]\nurl = \"x\"\n").unwrap();
        let err = EngineConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("url"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
