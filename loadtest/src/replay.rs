//! `replay`: the engine's projection rebuilt from a log of N events, beside
//! two floors measured on the same log in the same run:
//! - `delivery`: an ordered consumer reading every event without decoding
//!   it (what the server and the client library cost);
//! - `fold`: the events decoded and folded from memory, without NATS (what
//!   runlog's code costs).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use runlog_engine::Projection;
use runlog_events::codec::{self, Format, Limits};
use runlog_events::stream::Layout;
use runlog_events::{Envelope, ExecutionId, Subjects, TaskSpec};
use runlog_localnats::NatsServer;

use crate::{Figure, median, resident_bytes};

/// CPU time (user + system) of a process so far, in seconds (Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which may hold spaces: utime and stime
    // are the 12th and 13th of them.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let mut fields = rest.split_whitespace().skip(11);
    let tick = |f: Option<&str>| f.and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let (user, system) = (tick(fields.next()), tick(fields.next()));
    // USER_HZ is 100 on Linux.
    (user + system) / 100.0
}

/// CPU spent by this process and by the server during one phase, in
/// microseconds per event.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    /// This process: the client library, decoding and folding.
    pub client_us: f64,
    /// nats-server.
    pub server_us: f64,
}

struct CpuClock {
    server: u32,
    client: f64,
    server_start: f64,
}

impl CpuClock {
    fn start(server: u32) -> Self {
        CpuClock {
            server,
            client: cpu_seconds(std::process::id()),
            server_start: cpu_seconds(server),
        }
    }

    fn per_event(&self, events: usize) -> Cpu {
        let n = events.max(1) as f64;
        Cpu {
            client_us: (cpu_seconds(std::process::id()) - self.client) * 1e6 / n,
            server_us: (cpu_seconds(self.server) - self.server_start) * 1e6 / n,
        }
    }
}

/// The figures of one `replay` scenario (medians over the runs).
pub struct Replay {
    /// The projection rebuilt through `Projection::follow`.
    pub full: Figure,
    /// Delivery alone.
    pub delivery: Figure,
    /// Decode and fold alone.
    pub fold: Figure,
    /// Resident memory the projection grew by, per execution.
    pub bytes_per_execution: f64,
    /// CPU per event of the rebuild and of delivery alone (of the median
    /// run of each).
    pub cpu: Cpu,
    /// CPU per event of delivery alone.
    pub delivery_cpu: Cpu,
}

/// Seeds a fresh server with `events` lifecycle events (three per execution, as an engine door records them,
/// published with pipelined acks), then measures `runs` times each.
pub async fn run(events: usize, runs: usize) -> anyhow::Result<Replay> {
    let server = NatsServer::start().context("cannot start nats-server")?;
    let js = jetstream::new(async_nats::connect(server.url()).await?);
    Layout::default().ensure(&js).await?;
    let subjects = Subjects::default();
    let executions = seed(&js, &subjects, events).await?;
    let last = js
        .get_stream(subjects.exec_stream())
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    let pid = server.pid().context("nats-server has no pid")?;
    let (mut full, mut delivery, mut fold) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu, mut delivery_cpu) = (Vec::new(), Vec::new());
    let mut bytes_per_execution = 0.0;
    for run in 0..runs {
        let resident_before = resident_bytes();
        let clock = CpuClock::start(pid);
        let (figure, projection) =
            follow(&js, &subjects, last, executions * crate::memory::EVENTS).await?;
        cpu.push((figure.seconds, clock.per_event(figure.tasks)));
        if run == 0 {
            // The first run grows the heap from nothing: its growth is what
            // the projection holds.
            bytes_per_execution = (resident_bytes() - resident_before) / executions as f64;
        }
        if projection.len() != executions || projection.skipped() != 0 {
            bail!(
                "replay folded {} executions ({} skipped events), expected {executions}",
                projection.len(),
                projection.skipped()
            );
        }
        drop(projection);
        full.push(figure);
        let clock = CpuClock::start(pid);
        let (figure, messages) = read_all(&js, &subjects, last).await?;
        delivery_cpu.push((figure.seconds, clock.per_event(figure.tasks)));
        delivery.push(figure);
        fold.push(fold_from_memory(&messages, executions)?);
    }
    let median_cpu = |mut v: Vec<(f64, Cpu)>| {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v[v.len() / 2].1
    };
    Ok(Replay {
        cpu: median_cpu(cpu),
        delivery_cpu: median_cpu(delivery_cpu),
        full: median(full),
        delivery: median(delivery),
        fold: median(fold),
        bytes_per_execution,
    })
}

async fn seed(
    js: &jetstream::Context,
    subjects: &Subjects,
    events: usize,
) -> anyhow::Result<usize> {
    let mut spec = TaskSpec::new("noop");
    spec.input = serde_json::json!({ "payload": "x".repeat(80) });
    let executions = events.div_ceil(crate::memory::EVENTS);
    let now = Utc::now();
    let seeding = Instant::now();
    // Sends go out in order on one connection (an execution's events must be
    // stored in order); only the acks are awaited out of line, 2,000 at most.
    let mut acks = futures::stream::FuturesUnordered::new();
    for _ in 0..executions {
        let exec = ExecutionId::generate();
        let events = crate::memory::finished(&spec, serde_json::Value::Null);
        for (attempt, event) in events {
            let envelope = Envelope::new(exec.clone(), attempt, now, "/loadtest", event);
            let (headers, body) = codec::encode(&envelope, Format::MessagePack)?;
            let ack = js
                .publish_with_headers(subjects.of(&envelope), headers, body)
                .await?;
            acks.push(std::future::IntoFuture::into_future(ack));
            if acks.len() >= 2_000 {
                acks.next().await.expect("an ack is pending")?;
            }
        }
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    eprintln!(
        "replay: seeded {} events in {:.1} s",
        executions * crate::memory::EVENTS,
        seeding.elapsed().as_secs_f64()
    );
    Ok(executions)
}

/// The engine's own path: `Projection::follow` until it applied `last`.
async fn follow(
    js: &jetstream::Context,
    subjects: &Subjects,
    last: u64,
    events: usize,
) -> anyhow::Result<(Figure, Arc<Projection>)> {
    let projection = Arc::new(Projection::new());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let follower = {
        let (projection, js, subjects, shutdown) = (
            projection.clone(),
            js.clone(),
            subjects.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move { projection.follow(&js, &subjects, shutdown).await })
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(2));
    while projection.applied_seq() < last {
        if follower.is_finished() {
            bail!("the projection stopped: {:?}", follower.await?);
        }
        tick.tick().await;
    }
    let seconds = started.elapsed().as_secs_f64();
    shutdown.cancel();
    follower.await??;
    let figure = Figure {
        scenario: "replay",
        tasks: events,
        seconds,
    };
    Ok((figure, projection))
}

/// Delivery alone: an ordered consumer reads every event, keeping headers
/// and body for [`fold_from_memory`].
async fn read_all(
    js: &jetstream::Context,
    subjects: &Subjects,
    last: u64,
) -> anyhow::Result<(Figure, Vec<(u64, async_nats::HeaderMap, Bytes)>)> {
    let started = Instant::now();
    let stream = js.get_stream_no_info(subjects.exec_stream()).await?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subjects.all_events(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut kept = Vec::with_capacity(last as usize);
    while let Some(message) = messages.next().await {
        let message = message?;
        let seq = message
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        let headers = message.headers.clone().unwrap_or_default();
        kept.push((seq, headers, message.payload.clone()));
        if seq >= last {
            break;
        }
    }
    let figure = Figure {
        scenario: "replay_delivery",
        tasks: kept.len(),
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((figure, kept))
}

/// Decode and fold alone, from memory, into a fresh projection.
fn fold_from_memory(
    messages: &[(u64, async_nats::HeaderMap, Bytes)],
    executions: usize,
) -> anyhow::Result<Figure> {
    let projection = Projection::new();
    let limits = Limits::default();
    let started = Instant::now();
    for (seq, headers, body) in messages {
        let envelope = codec::decode(headers, body, &limits)?;
        projection.apply(*seq, &envelope);
    }
    let seconds = started.elapsed().as_secs_f64();
    if projection.len() != executions {
        bail!(
            "folded {} executions, expected {executions}",
            projection.len()
        );
    }
    Ok(Figure {
        scenario: "replay_fold",
        tasks: messages.len(),
        seconds,
    })
}
