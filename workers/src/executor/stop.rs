//! Why and when an executor stops before its work ended: the attempt's
//! token was cancelled, or its deadline passed.

use runlog_events::{ErrorClass, TaskError};
use tokio::time::Instant;

use crate::handler::Context;

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
