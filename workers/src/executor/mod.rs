//! Built-in executors: `shell`, `script`, `ssh`, `sql`, `http` and `echo`,
//! each a [`Handler`](crate::Handler).
//!
//! [`shell`] runs a program (or, when asked, a `sh -c` script) in its own
//! process group, streams its output line by line to the attempt's log,
//! parses progress and result fields from that output, and stops the whole
//! group on cancellation or deadline. [`ssh`] does the same on a remote
//! host, over connections kept open across tasks. [`http`] makes one HTTP request and
//! classifies the answer so retries do the right thing. [`echo`] returns
//! its input. [`builtin`] puts all three in a [`Registry`]
//! under their kind names. What they share is below them: `stop` (why and
//! when an attempt stops) and `mask` (secret values out of messages);
//! [`hosts`] is where `http` tasks may go.
//!
//! The input formats are described for users in `docs/executors.md`.

pub mod echo;
pub mod hosts;
pub mod http;
pub(crate) mod mask;
pub mod shell;
pub mod sql;
pub mod ssh;
mod stop;

pub use echo::EchoExecutor;
pub use hosts::{HostPattern, HostPolicy};
pub use http::{HttpExecutor, HttpInput};
pub use shell::{
    Extract, JsonProgress, ProgressPattern, ScriptExecutor, ScriptInput, ShellExecutor, ShellInput,
};
pub use sql::{SqlExecutor, SqlInput};
pub use ssh::{SshExecutor, SshInput};

use crate::handler::Registry;

/// A registry holding the built-in kinds: `shell` ([`ShellExecutor`]),
/// `script` ([`ScriptExecutor`]), `ssh` ([`SshExecutor`]), `sql` ([`SqlExecutor`]), `http`
/// ([`HttpExecutor`]) and `echo` ([`EchoExecutor`]), with their default
/// settings.
///
/// # Examples
/// ```
/// let registry = runlog_worker::executor::builtin();
/// assert_eq!(registry.kinds(), ["echo", "http", "script", "shell", "sql", "ssh"]);
/// ```
pub fn builtin() -> Registry {
    builtin_with(HostPolicy::default())
}

/// The built-in kinds, `http` tasks held to `hosts`.
pub fn builtin_with(hosts: HostPolicy) -> Registry {
    let mut registry = Registry::new();
    registry
        .register("shell", ShellExecutor::new())
        .register("script", ScriptExecutor)
        .register("sql", SqlExecutor)
        .register("ssh", SshExecutor::new())
        .register("http", HttpExecutor::guarded(hosts))
        .register("echo", EchoExecutor);
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_registers_the_kinds_workflows_know_as_worker_kinds() {
        let mut known = runlog_events::workflow::WORKER_KINDS
            .map(str::to_owned)
            .to_vec();
        known.sort();
        assert_eq!(builtin().kinds(), known);
    }
}
