//! What the runtime tests share: a server with the layout, work submitted
//! the way the engine's reactor does it, test handlers that record what
//! they saw, and waiting on conditions with deadlines.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use async_nats::jetstream::{self, consumer};
use chrono::Utc;
use futures::StreamExt;
use runlog_events::codec::{self, Limits};
use runlog_events::decider::Command;
use runlog_events::journal::{History, Journal};
use runlog_events::stream::Layout;
use runlog_events::{
    Envelope, ErrorClass, Event, ExecutionId, QueueName, Status, Subjects, TaskError, TaskSpec,
};
use runlog_testkit::{NatsServer, eventually};
use runlog_worker::handler::{Context, Handler, HandlerResult};
use runlog_worker::runtime::{GuardConfig, Worker, WorkerConfig, WorkerError};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A server with the streams, and a journal that plays the engine.
pub struct Harness {
    pub server: NatsServer,
    pub js: jetstream::Context,
    pub journal: Journal,
    pub subjects: Subjects,
}

impl Harness {
    pub async fn start() -> Result<Self> {
        let server = NatsServer::start()?;
        let js = jetstream::new(async_nats::connect(server.url()).await?);
        Layout::default().ensure(&js).await?;
        let subjects = Subjects::default();
        let journal = Journal::new(js.clone(), subjects.clone(), "/test/engine");
        Ok(Harness {
            server,
            js,
            journal,
            subjects,
        })
    }

    /// Records `submitted` and `queued` as the reactor does; the stored
    /// `queued` is the work item.
    pub async fn submit(&self, spec: TaskSpec) -> Result<ExecutionId> {
        let exec = ExecutionId::generate();
        self.journal
            .transition(&exec, &Command::Submit { spec }, Utc::now())
            .await?;
        let history = self
            .journal
            .transition(&exec, &Command::Enqueue, Utc::now())
            .await?;
        let queued = history.events.last().context("queued event")?;
        ensure!(
            matches!(queued.envelope.event, Event::Queued(_)),
            "the last event is not queued"
        );
        Ok(exec)
    }

    /// A worker configuration with test-sized intervals.
    pub fn config(&self, id: &str) -> WorkerConfig {
        WorkerConfig {
            nats_url: self.server.url(),
            id: id.to_owned(),
            queues: vec![QueueName::default()],
            heartbeat: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(5),
            cancel_grace: Duration::from_secs(1),
            poll_expires: Duration::from_secs(1),
            nak_delay: Duration::from_millis(100),
            guard: GuardConfig {
                max_memory_percent: 101.0,
                max_load: None,
                interval: Duration::from_millis(50),
            },
            ..WorkerConfig::default()
        }
    }

    /// Runs `worker` in a task.
    pub fn spawn(&self, worker: Worker) -> RunningWorker {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(worker.run(shutdown.clone()));
        RunningWorker { shutdown, handle }
    }

    /// Connects and runs a worker with `config` and `probe`'s handlers.
    pub async fn worker(&self, config: WorkerConfig, probe: &Probe) -> Result<RunningWorker> {
        let worker = Worker::connect(config, probe.registry()).await?;
        Ok(self.spawn(worker))
    }

    /// Waits until the history of `exec` satisfies `done`.
    pub async fn wait_for(
        &self,
        exec: &ExecutionId,
        within: Duration,
        what: &str,
        done: impl Fn(&History) -> bool,
    ) -> Result<History> {
        eventually(within, what, || async {
            let history = self.journal.load(exec).await?;
            Ok(done(&history).then_some(history))
        })
        .await
    }

    /// Waits until `exec` reaches `status`.
    pub async fn wait_status(
        &self,
        exec: &ExecutionId,
        status: Status,
        within: Duration,
    ) -> Result<History> {
        self.wait_for(exec, within, &format!("{exec} {status}"), |h| {
            h.state.status == status
        })
        .await
    }

    /// Every telemetry envelope of `exec` on `subject` (log, progress, heartbeat).
    pub async fn telemetry(&self, subject: String) -> Result<Vec<Envelope>> {
        let stream = self.js.get_stream(self.subjects.logs_stream()).await?;
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: subject,
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await?;
        let pending = consumer.cached_info().num_pending as usize;
        let mut out = Vec::new();
        if pending == 0 {
            return Ok(out);
        }
        let mut batch = consumer.fetch().max_messages(pending).messages().await?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!(e))?;
            let headers = message.headers.clone().unwrap_or_default();
            out.push(codec::decode(
                &headers,
                &message.payload,
                &Limits::default(),
            )?);
        }
        Ok(out)
    }
}

/// A worker running in a task.
pub struct RunningWorker {
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<Result<(), WorkerError>>,
}

impl RunningWorker {
    /// Graceful shutdown; returns once the worker stopped.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .context("the worker did not stop")???;
        Ok(())
    }

    /// Drops the worker without a shutdown, as a crash would.
    pub async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

/// What a test handler saw of one attempt.
#[derive(Debug, Clone)]
pub struct Span {
    pub execution: ExecutionId,
    pub attempt: u32,
    pub kind: String,
    pub start: Instant,
    pub end: Instant,
    pub cancelled: bool,
}

/// Test handlers, registered under any kind: behaviour comes from the
/// task's input.
///
/// - `{"sleep_ms": n}` sleeps, then returns the input;
/// - `{"hang": true}` waits for cancellation (→ error `cancelled`);
/// - `{"hang_until_attempt": k}` hangs on attempts before `k`;
/// - `{"lines": n, "progress": m}` writes n log lines and m progress updates.
#[derive(Clone, Default)]
pub struct Probe {
    pub spans: Arc<Mutex<Vec<Span>>>,
    pub kinds: Vec<String>,
}

impl Probe {
    pub fn new(kinds: &[&str]) -> Self {
        Probe {
            spans: Arc::default(),
            kinds: kinds.iter().map(|k| k.to_string()).collect(),
        }
    }

    pub fn registry(&self) -> runlog_worker::Registry {
        let mut registry = runlog_worker::Registry::new();
        for kind in &self.kinds {
            registry.register(kind.clone(), self.clone());
        }
        registry
    }

    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

impl Handler for Probe {
    async fn run(&self, ctx: Context) -> HandlerResult {
        let start = Instant::now();
        let input = ctx.input().clone();
        let hang = input["hang"].as_bool().unwrap_or(false)
            || input["hang_until_attempt"]
                .as_u64()
                .is_some_and(|k| u64::from(ctx.attempt()) < k);
        for i in 0..input["lines"].as_u64().unwrap_or(0) {
            ctx.log(runlog_events::event::LogStream::Stdout, format!("line {i}"));
        }
        let updates = input["progress"].as_u64().unwrap_or(0);
        for i in 1..=updates {
            ctx.progress(Some(i as f32 * 100.0 / updates as f32), None);
        }
        let mut cancelled = false;
        if hang {
            ctx.cancelled().await;
            cancelled = true;
        } else if let Some(ms) = input["sleep_ms"].as_u64() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                _ = ctx.cancelled() => cancelled = true,
            }
        }
        self.spans.lock().unwrap().push(Span {
            execution: ctx.execution().clone(),
            attempt: ctx.attempt(),
            kind: ctx.kind().to_owned(),
            start,
            end: Instant::now(),
            cancelled,
        });
        if cancelled {
            return Err(TaskError::new(ErrorClass::Cancelled, "stopped"));
        }
        Ok(input)
    }
}

/// A spec of `kind` with `input`.
pub fn spec(kind: &str, input: serde_json::Value) -> TaskSpec {
    let mut spec = TaskSpec::new(kind);
    spec.input = input;
    spec
}

/// `(type, attempt, worker of a start)` of each event, in log order.
pub fn timeline(history: &History) -> Vec<(String, u32, Option<String>)> {
    history
        .events
        .iter()
        .map(|r| {
            let worker = match &r.envelope.event {
                Event::Started(s) => Some(s.worker.clone()),
                _ => None,
            };
            (
                r.envelope.event_type().as_str().to_owned(),
                r.envelope.attempt,
                worker,
            )
        })
        .collect()
}

/// The sequence of the first event of `ty` in `history`.
pub fn seq_of(history: &History, ty: &str) -> Option<u64> {
    history
        .events
        .iter()
        .find(|r| r.envelope.event_type().as_str() == ty)
        .map(|r| r.seq)
}

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
