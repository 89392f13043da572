//! `log-floor`: the bare event-sourced cycle on raw JetStream, the floor
//! runlog's end-to-end scenarios are held against.
//!
//! Per task, with a producer, a worker and a projection each on their own
//! connection (the process layout of the runlog scenarios):
//! 1. the producer appends `submitted` on `lf<run>.<id>.submitted`, expecting
//!    last subject sequence 0 on the filter `lf<run>.<id>.>` (creation), with
//!    a `Nats-Msg-Id`;
//! 2. a durable pull consumer filtered on `lf<run>.*.submitted` delivers it
//!    to the worker, which appends `started` expecting the delivered stream
//!    sequence, then `succeeded` expecting `started`'s, then acknowledges;
//! 3. an ordered consumer reads every event, as a projection does, and the
//!    run ends when it has read the last `succeeded`.
//!
//! The producer and the worker run at once (`--window` appends and
//! `--workers × --worker-concurrency` tasks in flight), so the figure is
//! comparable with `throughput` and `mixed`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use runlog_events::codec::header;
use runlog_localnats::NatsServer;
use tokio::sync::Semaphore;

use crate::rig::{Cpu, cpu_seconds};

/// The figures of one `log-floor` run.
#[derive(Debug, Clone)]
pub struct LogFloor {
    pub tasks: usize,
    pub seconds: f64,
    pub cpu: Cpu,
}

/// Runs the cycle `tasks` times on `server` (stream `LOGFLOOR<run>`, deleted
/// afterwards), `window` submissions and `slots` tasks in flight.
pub async fn run(
    server: &NatsServer,
    run: usize,
    tasks: usize,
    window: usize,
    slots: usize,
) -> anyhow::Result<LogFloor> {
    let connect = || async { anyhow::Ok(jetstream::new(async_nats::connect(server.url()).await?)) };
    let (producer, worker, reader) = (connect().await?, connect().await?, connect().await?);
    let name = format!("LOGFLOOR{run}");
    let prefix = format!("lf{run}");
    let stream = producer
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(600),
            allow_direct: true,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("worker".into()),
            filter_subject: format!("{prefix}.*.submitted"),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let succeeded = Arc::new(AtomicUsize::new(0));
    let mut projection = reader
        .get_stream_no_info(&name)
        .await?
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("{prefix}.>"),
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    let before = sample(server).await;
    let started = Instant::now();

    let follow = {
        let succeeded = succeeded.clone();
        tokio::spawn(async move {
            while let Some(message) = projection.next().await {
                let message = message.map_err(|e| anyhow::anyhow!(e))?;
                if message.subject.ends_with(".succeeded")
                    && succeeded.fetch_add(1, Ordering::Relaxed) + 1 == tasks
                {
                    return anyhow::Ok(Instant::now());
                }
            }
            anyhow::bail!("the projection's consumer ended")
        })
    };

    let body = Bytes::from(
        serde_json::json!({"kind": "echo", "input": {"payload": "x".repeat(80)}}).to_string(),
    );
    let produce = {
        let (producer, prefix, body) = (producer.clone(), prefix.clone(), body.clone());
        tokio::spawn(async move {
            futures::stream::iter(0..tasks)
                .map(|i| {
                    let (producer, prefix, body) = (&producer, &prefix, body.clone());
                    async move {
                        let id = format!("e{i}");
                        append(producer, prefix, &id, "submitted", 0, body)
                            .await
                            .map(drop)
                    }
                })
                .buffer_unordered(window)
                .try_collect::<()>()
                .await
        })
    };

    let work = {
        let prefix = prefix.clone();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(slots));
            let mut messages = consumer.messages().await?.take(tasks);
            let mut running = tokio::task::JoinSet::new();
            while let Some(message) = messages.try_next().await.map_err(|e| anyhow::anyhow!(e))? {
                let permit = slots.clone().acquire_owned().await?;
                let (js, prefix) = (worker.clone(), prefix.clone());
                running.spawn(async move {
                    let seq = message
                        .info()
                        .map_err(|e| anyhow::anyhow!(e))?
                        .stream_sequence;
                    let id = message
                        .subject
                        .split('.')
                        .nth(1)
                        .context("a submitted subject names its execution")?
                        .to_owned();
                    let out = Bytes::from_static(b"{\"worker\":\"w1\"}");
                    let started = append(&js, &prefix, &id, "started", seq, out.clone()).await?;
                    append(&js, &prefix, &id, "succeeded", started, out).await?;
                    message.ack().await.map_err(|e| anyhow::anyhow!(e))?;
                    drop(permit);
                    anyhow::Ok(())
                });
                while let Some(done) = running.try_join_next() {
                    done??;
                }
            }
            while let Some(done) = running.join_next().await {
                done??;
            }
            anyhow::Ok(())
        })
    };

    produce.await??;
    work.await??;
    let last = follow.await??;
    let seconds = (last - started).as_secs_f64();
    let cpu = sample(server).await - before;
    producer.delete_stream(&name).await?;
    Ok(LogFloor {
        tasks,
        seconds,
        cpu,
    })
}

/// One checked append of `ty` for execution `id`, expecting `expected` as
/// the newest sequence of `<prefix>.<id>.>`; returns its sequence.
async fn append(
    js: &jetstream::Context,
    prefix: &str,
    id: &str,
    ty: &str,
    expected: u64,
    body: Bytes,
) -> anyhow::Result<u64> {
    let mut headers = HeaderMap::new();
    headers.insert(header::MSG_ID, format!("{id}:{ty}").as_str());
    headers.insert(
        header::EXPECTED_LAST_SUBJECT_SEQUENCE,
        expected.to_string().as_str(),
    );
    headers.insert(
        header::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
        format!("{prefix}.{id}.>").as_str(),
    );
    let ack = js
        .publish_with_headers(format!("{prefix}.{id}.{ty}"), headers, body)
        .await?
        .await?;
    Ok(ack.sequence)
}

/// The server's CPU and message counters, and this process's CPU (the
/// producer, worker and projection all run here).
pub async fn sample(server: &NatsServer) -> Cpu {
    let (msgs_in, msgs_out) = crate::rig::messages(server).await;
    Cpu {
        server: server.pid().map_or(0.0, cpu_seconds),
        load: cpu_seconds(std::process::id()),
        msgs_in,
        msgs_out,
        ..Cpu::default()
    }
}
