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
use runlog_events::event::{Queued, Started, Submitted, Succeeded};
use runlog_events::stream::Layout;
use runlog_events::{Envelope, Event, ExecutionId, QueueName, Subjects, TaskSpec};
use runlog_testkit::NatsServer;

use crate::{Figure, median, resident_bytes};

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
}

/// Seeds a fresh server with `events` lifecycle events (four per execution,
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
    let (mut full, mut delivery, mut fold) = (Vec::new(), Vec::new(), Vec::new());
    let mut bytes_per_execution = 0.0;
    for run in 0..runs {
        let resident_before = resident_bytes();
        let (figure, projection) = follow(&js, &subjects, last, executions * 4).await?;
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
        let (figure, messages) = read_all(&js, &subjects, last).await?;
        delivery.push(figure);
        for (parts, batch) in [(1, 500), (1, 5000), (2, 500), (2, 5000), (4, 2000)] {
            let f = read_ranges(&js, &subjects, last, parts, batch).await?;
            eprintln!("ranges x{parts} batch {batch}: {:.0} events/s", f.rate());
        }
        fold.push(fold_from_memory(&messages, executions)?);
    }
    Ok(Replay {
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
    let executions = events.div_ceil(4);
    let now = Utc::now();
    let seeding = Instant::now();
    // Sends go out in order on one connection (an execution's events must be
    // stored in order); only the acks are awaited out of line, 2,000 at most.
    let mut acks = futures::stream::FuturesUnordered::new();
    for _ in 0..executions {
        let exec = ExecutionId::generate();
        let events = [
            (0, Event::Submitted(Submitted { spec: spec.clone() })),
            (
                1,
                Event::Queued(Queued {
                    queue: QueueName::default(),
                    priority: spec.priority,
                    kind: spec.kind.clone(),
                    worker_labels: Default::default(),
                }),
            ),
            (
                1,
                Event::Started(Started {
                    worker: "w1".into(),
                    deadline: None,
                }),
            ),
            (
                1,
                Event::Succeeded(Succeeded {
                    output: serde_json::Value::Null,
                }),
            ),
        ];
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
        executions * 4,
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
        let seq = message.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
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

/// Delivery through `parts` ephemeral pull consumers (no acks) over
/// sequence ranges read at once, `batch` messages per pull request.
async fn read_ranges(
    js: &jetstream::Context,
    subjects: &Subjects,
    last: u64,
    parts: u64,
    batch: usize,
) -> anyhow::Result<Figure> {
    use async_nats::jetstream::consumer::AckPolicy;
    let started = Instant::now();
    let step = last.div_ceil(parts);
    let stream = js.get_stream_no_info(subjects.exec_stream()).await?;
    let reads = (0..parts).map(|i| {
        let stream = stream.clone();
        let filter = subjects.all_events();
        async move {
            let (from, to) = (1 + i * step, ((i + 1) * step).min(last));
            let consumer = stream
                .create_consumer(pull::Config {
                    filter_subject: filter,
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: from,
                    },
                    ack_policy: AckPolicy::None,
                    inactive_threshold: std::time::Duration::from_secs(10),
                    memory_storage: true,
                    ..Default::default()
                })
                .await?;
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(batch)
                .messages()
                .await?;
            let mut count = 0usize;
            while let Some(message) = messages.next().await {
                let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
                let seq = message.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
                if seq > to {
                    break;
                }
                count += 1;
                if seq == to {
                    break;
                }
            }
            anyhow::Ok(count)
        }
    });
    let counts = futures::future::try_join_all(reads).await?;
    Ok(Figure {
        scenario: "replay_delivery_ranges",
        tasks: counts.iter().sum(),
        seconds: started.elapsed().as_secs_f64(),
    })
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
        bail!("folded {} executions, expected {executions}", projection.len());
    }
    Ok(Figure {
        scenario: "replay_fold",
        tasks: messages.len(),
        seconds,
    })
}
