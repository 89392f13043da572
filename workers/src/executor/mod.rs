//! Built-in executors: `shell`, `http` and `echo`, each a
//! [`Handler`](crate::Handler).
//!
//! [`shell`] runs a program (or, when asked, a `sh -c` script) in its own
//! process group, streams its output line by line to the attempt's log,
//! parses progress and result fields from that output, and stops the whole
//! group on cancellation or deadline. [`http`] makes one HTTP request and
//! classifies the answer so retries do the right thing. [`echo`] returns
//! its input. [`builtin`] puts all three in a [`Registry`](crate::Registry)
//! under their kind names. What they share (why an attempt stops, masking
//! secret values in messages) is here.
//!
//! The input formats are described for users in `docs/executors.md`.

pub mod echo;
pub mod http;
pub mod shell;

pub use echo::EchoExecutor;
pub use http::{HttpExecutor, HttpInput};
pub use shell::{Extract, JsonProgress, ProgressPattern, ShellExecutor, ShellInput};

use runlog_events::{ErrorClass, TaskError};
use tokio::time::Instant;

use crate::handler::Context;

/// A registry holding the built-in kinds: `shell` ([`ShellExecutor`]), `http`
/// ([`HttpExecutor`]) and `echo` ([`EchoExecutor`]), with their default
/// settings.
///
/// # Examples
/// ```
/// let registry = runlog_worker::executor::builtin();
/// assert_eq!(registry.kinds(), vec!["echo".to_owned(), "http".to_owned(), "shell".to_owned()]);
/// ```
pub fn builtin() -> crate::Registry {
    let mut registry = crate::Registry::new();
    registry
        .register("shell", ShellExecutor::new())
        .register("http", HttpExecutor::new())
        .register("echo", EchoExecutor);
    registry
}

/// Why an executor stopped before its work ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// The runtime cancelled the attempt.
    Cancelled,
    /// The attempt's deadline passed.
    Timeout,
}

impl StopReason {
    /// The error class the attempt ends with.
    pub(crate) fn class(self) -> ErrorClass {
        match self {
            StopReason::Cancelled => ErrorClass::Cancelled,
            StopReason::Timeout => ErrorClass::Timeout,
        }
    }

    /// The reason now, for a context whose token is already cancelled: the
    /// runtime cancels the token on deadline too, so a passed deadline
    /// makes it a timeout.
    fn of_cancelled(ctx: &Context) -> Self {
        match ctx.deadline() {
            Some(deadline) if Instant::now() >= deadline => StopReason::Timeout,
            _ => StopReason::Cancelled,
        }
    }

    /// The reason now, if the attempt must stop.
    pub(crate) fn now(ctx: &Context) -> Option<Self> {
        if ctx.is_cancelled() {
            return Some(Self::of_cancelled(ctx));
        }
        match ctx.deadline() {
            Some(deadline) if Instant::now() >= deadline => Some(StopReason::Timeout),
            _ => None,
        }
    }

    /// A task error of this reason's class.
    pub(crate) fn error(self, message: impl Into<String>) -> TaskError {
        TaskError::new(self.class(), message)
    }
}

/// Resolves when the attempt must stop: its token is cancelled or its
/// deadline passes. Never resolves for an attempt with neither.
pub(crate) async fn stop_requested(ctx: &Context) -> StopReason {
    let deadline = async {
        match ctx.deadline() {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = ctx.cancelled() => StopReason::of_cancelled(ctx),
        _ = deadline => StopReason::Timeout,
    }
}

/// Values shorter than this are not masked: masking `1` or `yes` in a
/// message hides more than it protects.
const MIN_MASKED_LEN: usize = 4;

/// `message` with every occurrence of the `secrets` replaced by `***`.
pub(crate) fn mask<'a>(message: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let mut secrets: Vec<&str> = secrets
        .into_iter()
        .filter(|s| s.len() >= MIN_MASKED_LEN)
        .collect();
    // Longest first, so a secret containing another is masked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut message = message.to_owned();
    for secret in secrets {
        if message.contains(secret) {
            message = message.replace(secret, "***");
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_hides_long_values_and_keeps_short_ones() {
        let masked = mask(
            "token s3cr3t-abc and s3cr3t, id 42",
            ["s3cr3t", "s3cr3t-abc", "42"],
        );
        assert_eq!(masked, "token *** and ***, id 42");
    }

    #[test]
    fn builtin_registers_shell_and_http() {
        let registry = builtin();
        assert!(registry.get("shell").is_some());
        assert!(registry.get("http").is_some());
    }
}
