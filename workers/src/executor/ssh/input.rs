//! The input of an `ssh` task, as users write it (`docs/executors.md`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use runlog_events::{ErrorClass, TaskError};
use serde::Deserialize;

use crate::executor::shell::{Extract, ProgressPattern};

/// The input of an `ssh` task: where to connect, how to trust the host,
/// and the command, with the same output rules as `shell`.
///
/// Exactly one of `argv` and `shell` must be given. The private key is
/// never in the input: `key` names one of the task's environment values
/// (a secret or a sealed `env` value), which the worker resolves.
///
/// # Examples
/// ```
/// use runlog_worker::executor::SshInput;
///
/// let input: SshInput = serde_json::from_value(serde_json::json!({
///     "host": "web-1.internal",
///     "user": "deploy",
///     "key": "DEPLOY_KEY",
///     "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ",
///     "argv": ["systemctl", "restart", "app"],
/// }))
/// .unwrap();
/// assert_eq!(input.port, 22);
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshInput {
    /// The inventory server this input was resolved from (intake writes
    /// it, with `host`, `port`, `user`, `key` and `host_key`).
    pub server: Option<String>,
    /// The host name or address.
    #[serde(default)]
    pub host: String,
    /// The port (22).
    #[serde(default = "default_port")]
    pub port: u16,
    /// The user to log in as.
    #[serde(default)]
    pub user: String,
    /// The name of the task's environment value holding the private key,
    /// in OpenSSH or PEM format: ed25519, ECDSA (P-256, P-384, P-521) or
    /// RSA.
    #[serde(default)]
    pub key: String,
    /// The name of the task's environment value holding the key's
    /// passphrase, for an encrypted key.
    pub passphrase: Option<String>,
    /// The host keys to accept, pinned: public key lines
    /// (`ssh-ed25519 AAAA…`) or fingerprints (`SHA256:…`). One string or a
    /// list.
    #[serde(default, deserialize_with = "runlog_events::server::one_or_many")]
    pub host_key: Vec<String>,
    /// A `known_hosts` file on the worker. The default when neither
    /// `host_key` nor `known_hosts` is given: the worker user's
    /// `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
    /// Accept the key of a host the `known_hosts` file does not know yet,
    /// and record it there (a changed key is still refused). Off unless
    /// asked.
    #[serde(default)]
    pub trust_on_first_use: bool,
    /// Instead of a command: check the connection on a connection of its
    /// own (reachability, host key, authentication) and report how long it
    /// took and the host's `uname -a`.
    #[serde(default)]
    pub probe: bool,
    /// The program and its arguments, each quoted for the remote shell.
    pub argv: Option<Vec<String>>,
    /// A script run with the remote `sh -c`.
    pub shell: Option<String>,
    /// Environment variables set for the command. They are part of the
    /// command sent to the host: put no secret values here.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The remote working directory; the user's home when absent.
    pub cwd: Option<String>,
    /// Written to the command's standard input, which is then closed.
    pub stdin: Option<String>,
    /// Bytes of each stream kept in the output, as for `shell`.
    pub capture_bytes: Option<usize>,
    /// How to read progress from output lines, as for `shell`.
    pub progress: Option<ProgressPattern>,
    /// Output fields read from output lines, as for `shell`.
    #[serde(default)]
    pub extract: BTreeMap<String, Extract>,
    /// Exit codes that mean retrying will not help.
    #[serde(default)]
    pub permanent_exit_codes: Vec<i32>,
    /// When not empty, the only non-zero exit codes that are retried.
    #[serde(default)]
    pub retryable_exit_codes: Vec<i32>,
    /// Milliseconds between the remote `SIGTERM` and `SIGKILL` when the
    /// attempt is stopped (5,000).
    pub kill_grace_ms: Option<u64>,
    /// Milliseconds allowed for connecting, the key exchange and
    /// authentication together (10,000).
    pub connect_timeout_ms: Option<u64>,
    /// Milliseconds the command may run before it is stopped as a
    /// timeout. The attempt's own deadline applies too.
    pub command_timeout_ms: Option<u64>,
}

fn default_port() -> u16 {
    22
}

/// An input error, pointing at the docs.
pub(super) fn invalid(message: impl Into<String>) -> TaskError {
    TaskError::new(
        ErrorClass::InvalidInput,
        format!("ssh input: {} (see docs/executors.md)", message.into()),
    )
}
