//! `echo`: returns its input as its output. For smoke tests, load tests and
//! a first look at the engine: the work is the log, not the task.

use crate::handler::{Context, Handler, HandlerResult};

/// The `echo` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoExecutor;

impl Handler for EchoExecutor {
    async fn run(&self, ctx: Context) -> HandlerResult {
        Ok(ctx.input().clone())
    }
}
