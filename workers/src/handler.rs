//! The contract between the worker runtime and the code that runs a task.
//!
//! A [`Handler`] runs one attempt of one task kind. It gets the task's input
//! and a [`Context`] with the attempt's identity, its environment, its
//! deadline, a cancellation token, and sinks for progress and log lines. It
//! returns the output, or a [`TaskError`] whose class (and retry-after)
//! decides whether the engine retries.
//!
//! Built-in kinds (`shell`, `http`, `echo`) are handlers too; a program registers
//! its own by kind in a [`Registry`].
//!
//! # Examples
//! ```
//! use runlog_worker::handler::{Context, Handler, Registry};
//! use runlog_events::TaskError;
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     async fn run(&self, ctx: Context) -> Result<serde_json::Value, TaskError> {
//!         ctx.progress(Some(100.0), Some("echoed".into()));
//!         Ok(ctx.input().clone())
//!     }
//! }
//!
//! let mut registry = Registry::new();
//! registry.register("echo", Echo);
//! assert!(registry.get("echo").is_some());
//! ```

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use runlog_events::event::{LogLine, LogStream, Progress};
use runlog_events::{ExecutionId, TaskError, TraceParent};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::identity::RunAs;
use crate::meters::Meters;

/// What a handler returns: the output, or a classified error.
pub type HandlerResult = Result<serde_json::Value, TaskError>;

/// Code that runs one attempt of a task kind.
///
/// Implement it with `async fn run(&self, ctx: Context) -> HandlerResult`.
/// The runtime cancels `ctx`'s token when the execution is cancelled or
/// its attempt deadline passes; a handler should stop soon after (the
/// runtime stops waiting for it after a grace period).
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt.
    fn run(&self, ctx: Context) -> impl Future<Output = HandlerResult> + Send;
}

/// A boxed, type-erased handler future.
pub type BoxedRun = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;

/// A [`Handler`] behind a pointer, as the registry holds it.
pub trait DynHandler: Send + Sync + 'static {
    /// Runs one attempt.
    fn run_boxed(self: Arc<Self>, ctx: Context) -> BoxedRun;
}

impl<H: Handler> DynHandler for H {
    fn run_boxed(self: Arc<Self>, ctx: Context) -> BoxedRun {
        Box::pin(async move { self.run(ctx).await })
    }
}

/// Handlers by task kind.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn DynHandler>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kinds: Vec<_> = self.handlers.keys().collect();
        kinds.sort();
        f.debug_struct("Registry").field("kinds", &kinds).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs tasks of `kind` with `handler`, replacing any earlier one.
    pub fn register(&mut self, kind: impl Into<String>, handler: impl Handler) -> &mut Self {
        self.handlers.insert(kind.into(), Arc::new(handler));
        self
    }

    /// The handler of `kind`.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn DynHandler>> {
        self.handlers.get(kind).cloned()
    }

    /// The registered kinds, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<_> = self.handlers.keys().cloned().collect();
        kinds.sort();
        kinds
    }
}

/// How many log lines a context buffers before it drops (and counts) lines.
pub const LOG_BUFFER: usize = 4096;

/// Everything a handler knows about the attempt it runs.
#[derive(Debug, Clone)]
pub struct Context {
    execution: ExecutionId,
    attempt: u32,
    kind: String,
    input: serde_json::Value,
    env: BTreeMap<String, String>,
    deadline: Option<Instant>,
    cancel: CancellationToken,
    traceparent: Option<TraceParent>,
    run_as: Option<Arc<RunAs>>,
    progress: watch::Sender<Option<Progress>>,
    logs: mpsc::Sender<LogLine>,
    dropped: Arc<AtomicU64>,
    meters: Arc<Meters>,
}

/// The runtime's end of a [`Context`]: the latest progress and the log
/// lines, to publish.
#[derive(Debug)]
pub struct Telemetry {
    /// The latest progress; coalesced (a slow reader sees only the newest).
    pub progress: watch::Receiver<Option<Progress>>,
    /// Log lines in order.
    pub logs: mpsc::Receiver<LogLine>,
    /// Lines dropped because the buffer was full.
    pub dropped: Arc<AtomicU64>,
    /// What the handler measured of the attempt.
    pub meters: Arc<Meters>,
}

/// Builds a [`Context`] (the runtime does this; tests and examples too).
#[derive(Debug)]
pub struct ContextBuilder {
    execution: ExecutionId,
    attempt: u32,
    kind: String,
    input: serde_json::Value,
    env: BTreeMap<String, String>,
    deadline: Option<Instant>,
    cancel: CancellationToken,
    traceparent: Option<TraceParent>,
    run_as: Option<Arc<RunAs>>,
}

impl ContextBuilder {
    /// The user the attempt's child processes run as (none: the worker's).
    pub fn run_as(mut self, run_as: Option<Arc<RunAs>>) -> Self {
        self.run_as = run_as;
        self
    }

    /// The trace context of the handler's span, passed on to what it calls.
    pub fn traceparent(mut self, traceparent: Option<TraceParent>) -> Self {
        self.traceparent = traceparent;
        self
    }

    /// The environment (secret values included: never log it).
    pub fn env(mut self, env: BTreeMap<String, String>) -> Self {
        self.env = env;
        self
    }

    /// The attempt's deadline.
    pub fn deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// The token cancelled to stop the attempt.
    pub fn cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// The context, and the runtime's end of its telemetry.
    pub fn build(self) -> (Context, Telemetry) {
        let (progress, progress_rx) = watch::channel(None);
        let (logs, logs_rx) = mpsc::channel(LOG_BUFFER);
        let dropped = Arc::new(AtomicU64::new(0));
        let meters = Arc::new(Meters::default());
        let ctx = Context {
            execution: self.execution,
            attempt: self.attempt,
            kind: self.kind,
            input: self.input,
            env: self.env,
            deadline: self.deadline,
            cancel: self.cancel,
            traceparent: self.traceparent,
            run_as: self.run_as,
            progress,
            logs,
            dropped: dropped.clone(),
            meters: meters.clone(),
        };
        let telemetry = Telemetry {
            progress: progress_rx,
            logs: logs_rx,
            dropped,
            meters,
        };
        (ctx, telemetry)
    }
}

impl Context {
    /// Starts a context for attempt `attempt` of `execution`, a task of
    /// `kind` with `input`.
    pub fn builder(
        execution: ExecutionId,
        attempt: u32,
        kind: impl Into<String>,
        input: serde_json::Value,
    ) -> ContextBuilder {
        ContextBuilder {
            execution,
            attempt,
            kind: kind.into(),
            input,
            env: BTreeMap::new(),
            deadline: None,
            cancel: CancellationToken::new(),
            traceparent: None,
            run_as: None,
        }
    }

    /// The user child processes of the attempt run as (none: the
    /// worker's own).
    pub fn run_as(&self) -> Option<&RunAs> {
        self.run_as.as_deref()
    }

    /// The execution.
    pub fn execution(&self) -> &ExecutionId {
        &self.execution
    }

    /// The attempt number (1-based).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The task kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The task's input.
    pub fn input(&self) -> &serde_json::Value {
        &self.input
    }

    /// The task's environment, secrets resolved. Never log or return it.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// When the attempt must end, if it has a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The W3C trace context of this run's span, when the attempt is
    /// traced: an `http` task sends it as its request's `traceparent`
    /// header, a process gets it as `TRACEPARENT`, so what they call joins
    /// the execution's trace.
    pub fn traceparent(&self) -> Option<&TraceParent> {
        self.traceparent.as_ref()
    }

    /// The token the runtime cancels to stop the attempt.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether the attempt was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the attempt is asked to stop.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Reports progress. Cheap and coalesced: call it as often as you like.
    pub fn progress(&self, percent: Option<f32>, message: Option<String>) {
        self.report(Progress {
            percent,
            message,
            counters: BTreeMap::new(),
        });
    }

    /// Reports a full progress record (with counters).
    pub fn report(&self, progress: Progress) {
        self.progress.send_replace(Some(progress));
    }

    /// Counts what a process the handler ran used: its CPU time in user
    /// mode and in the kernel, and its peak resident memory. Recorded with
    /// the attempt's result (`resources` on its terminal event).
    pub fn used_process(&self, user: Duration, system: Duration, peak_rss_bytes: u64) {
        self.meters.process(user, system, peak_rss_bytes);
    }

    /// Counts bytes the handler sent and received over the network.
    pub fn used_network(&self, sent: u64, received: u64) {
        self.meters.network(sent, received);
    }

    /// Writes a log line. When the runtime falls behind, lines are dropped
    /// and counted, never buffered without limit.
    pub fn log(&self, stream: LogStream, line: impl Into<String>) {
        let line = LogLine {
            stream,
            line: line.into(),
        };
        self.meters.logged(line.line.len());
        if self.logs.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fails;

    impl Handler for Fails {
        async fn run(&self, ctx: Context) -> HandlerResult {
            ctx.log(LogStream::Stderr, "going down");
            Err(TaskError::new(
                runlog_events::ErrorClass::InvalidInput,
                "no input",
            ))
        }
    }

    #[tokio::test]
    async fn a_registered_handler_runs_and_its_telemetry_arrives() {
        let mut registry = Registry::new();
        registry.register("fails", Fails);
        let (ctx, mut telemetry) = Context::builder(
            ExecutionId::new("e1").unwrap(),
            1,
            "fails",
            serde_json::Value::Null,
        )
        .build();
        let handler = registry.get("fails").unwrap();
        let err = handler.run_boxed(ctx).await.unwrap_err();
        assert_eq!(err.class, runlog_events::ErrorClass::InvalidInput);
        let line = telemetry.logs.recv().await.unwrap();
        assert_eq!(line.line, "going down");
        assert_eq!(registry.kinds(), vec!["fails".to_owned()]);
    }

    #[test]
    fn a_full_log_buffer_drops_and_counts() {
        let (ctx, telemetry) = Context::builder(
            ExecutionId::new("e1").unwrap(),
            1,
            "x",
            serde_json::Value::Null,
        )
        .build();
        for i in 0..LOG_BUFFER + 10 {
            ctx.log(LogStream::Stdout, i.to_string());
        }
        assert_eq!(telemetry.dropped.load(Ordering::Relaxed), 10);
    }
}
