//! The configuration tree of runlog's long-running commands, one TOML file
//! for both (`runlog.toml`):
//!
//! - [`nats`]: the shared `[nats]` table ([`NatsConfig`]): how to reach
//!   NATS, with which prefix and stream layout.
//! - [`tree`]: the layering every command uses, later wins: built-in
//!   defaults < the file < `RUNLOG_*` environment < command-line flags
//!   ([`Layers`] into a [`Tree`]); each [`Setting`] names its key, variable
//!   and flag.
//! - [`secret`]: passwords and tokens, which no printed configuration
//!   shows.
//!
//! The engine's `[engine]` table and the worker's `[worker]` table are
//! defined by their commands. Durations are humantime text everywhere
//! (`"5s"`, `"1m30s"`): [`duration`] is the serde adapter for them.
#![warn(missing_docs)]

pub mod nats;
pub mod secret;
pub mod tree;

use std::path::PathBuf;

pub use humantime_serde as duration;
pub use nats::NatsConfig;
pub use secret::{REDACTED, Secret};
pub use tree::{Form, Layers, NATS, Setting, TABLES, Tree, Values, setting, to_toml};

/// Why the configuration is wrong or NATS could not be reached.
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
    /// A value of one layer has the wrong form; the reason names the key,
    /// variable or flag and where it came from.
    #[error("invalid configuration: {reason} (docs/operations.md lists every setting)")]
    Layered {
        /// The merge's error.
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
