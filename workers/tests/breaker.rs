//! Circuit breakers against a real nats-server, real workers and a local
//! HTTP server that counts the calls it gets: a breaker one worker opens
//! stops every worker from calling the target, delayed items run once a
//! probe succeeds, and a long outage dead-letters nothing.

mod common;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use async_nats::jetstream::consumer;
use axum::Router;
use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::routing::get;
use chrono::{DateTime, Utc};
use common::{Harness, spec};
use futures::StreamExt;
use runlog_events::journal::History;
use runlog_events::stream::Layout;
use runlog_events::{ExecutionId, QueueName, TaskSpec};
use runlog_testkit::eventually;
use runlog_worker::Registry;
use runlog_worker::executor::HttpExecutor;
use runlog_worker::runtime::breaker::{Record, State, Transition};
use runlog_worker::runtime::{BreakerConfig, Worker, WorkerConfig};
use tokio::time::Instant;

const WITHIN: Duration = Duration::from_secs(20);

/// The calls a target got: (path, when).
type Calls = Vec<(String, DateTime<Utc>)>;

/// A local HTTP server: `/<path>` answers 200 while `healthy`, else 503,
/// and remembers when each call arrived.
#[derive(Clone, Default)]
struct Target {
    healthy: Arc<AtomicBool>,
    calls: Arc<Mutex<Calls>>,
}

impl Target {
    async fn start() -> Result<(Target, SocketAddr)> {
        let target = Target::default();
        let app = Router::new()
            .route(
                "/{path}",
                get(
                    |AxumState(t): AxumState<Target>, Path(path): Path<String>| async move {
                        t.calls.lock().unwrap().push((path, Utc::now()));
                        if t.healthy.load(Ordering::SeqCst) {
                            (StatusCode::OK, "ok")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "down")
                        }
                    },
                ),
            )
            .with_state(target.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((target, addr))
    }

    fn calls_to(&self, path: &str) -> Vec<DateTime<Utc>> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, at)| *at)
            .collect()
    }
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register("http", HttpExecutor::new());
    registry
}

fn breakers(min_calls: u32, open_for: Duration) -> BreakerConfig {
    BreakerConfig {
        enabled: true,
        failure_percent: 50,
        min_calls: NonZeroU32::new(min_calls).unwrap(),
        window: Duration::from_secs(60),
        open_for,
        probes: NonZeroU32::MIN,
    }
}

fn config(h: &Harness, id: &str, queue: &str, breaker: BreakerConfig) -> Result<WorkerConfig> {
    let mut config = h.config(id);
    config.queues = vec![queue.parse::<QueueName>()?];
    config.concurrency = 4.try_into()?;
    config.breakers = breaker;
    Ok(config)
}

/// One attempt of GET `url` on `queue`, not retried.
fn get_task(queue: &str, url: String) -> Result<TaskSpec> {
    let mut spec = spec(
        "http",
        serde_json::json!({ "url": url, "timeout_ms": 5000 }),
    );
    spec.queue = queue.parse()?;
    spec.retry.max_attempts = 1;
    Ok(spec)
}

/// `succeeded` or `failed` once the attempt's result is recorded.
fn ended(history: &History) -> Option<&'static str> {
    history
        .events
        .iter()
        .rev()
        .find_map(|r| match r.envelope.event_type().as_str() {
            "succeeded" => Some("succeeded"),
            "failed" => Some("failed"),
            _ => None,
        })
}

async fn wait_ended(h: &Harness, exec: &ExecutionId) -> Result<&'static str> {
    let history = h
        .wait_for(exec, WITHIN, &format!("{exec} to end"), |h| {
            ended(h).is_some()
        })
        .await?;
    Ok(ended(&history).expect("ended"))
}

/// The shared record of `key`.
async fn record(h: &Harness, key: &str) -> Result<Option<Record>> {
    // The first worker creates the bucket.
    let Ok(store) =
        h.js.get_key_value(Layout::default().breakers_bucket_name())
            .await
    else {
        return Ok(None);
    };
    Ok(match store.get(key).await? {
        Some(body) => Some(serde_json::from_slice(&body)?),
        None => None,
    })
}

async fn wait_record(
    h: &Harness,
    key: &str,
    what: &str,
    done: impl Fn(&Record) -> bool,
) -> Result<Record> {
    eventually(WITHIN, what, || async {
        Ok(record(h, key).await?.filter(|r| done(r)))
    })
    .await
}

/// Every announced transition, in order.
async fn transitions(h: &Harness) -> Result<Vec<Transition>> {
    let stream = h.js.get_stream(h.subjects.logs_stream()).await?;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: Layout::default().all_breaker_events(),
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let pending = consumer.cached_info().num_pending as usize;
    let mut out = Vec::new();
    if pending > 0 {
        let mut batch = consumer.fetch().max_messages(pending).messages().await?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!(e))?;
            out.push(serde_json::from_slice(&message.payload)?);
        }
    }
    Ok(out)
}

/// Dead-letter advisories captured so far.
async fn dead_letters(h: &Harness) -> Result<u64> {
    let mut dlq = h.js.get_stream(h.subjects.dlq_stream()).await?;
    Ok(dlq.info().await?.state.messages)
}

#[tokio::test]
async fn an_open_breaker_seen_by_one_worker_stops_another_within_a_heartbeat() -> Result<()> {
    let h = Harness::start().await?;
    let (target, addr) = Target::start().await?;
    let key = format!("host=127.0.0.1={}", addr.port());
    let open_for = Duration::from_secs(2);
    // A serves queue `qa` and B queue `qb`: they share the target, not the work.
    let a = Worker::connect(config(&h, "wa", "qa", breakers(3, open_for))?, registry()).await?;
    let b_config = config(&h, "wb", "qb", breakers(3, open_for))?;
    let heartbeat = b_config.heartbeat;
    let b = Worker::connect(b_config, registry()).await?;
    let b_view = b.breakers();
    let (a, b) = (h.spawn(a), h.spawn(b));

    // A's calls fail until its breaker opens.
    let mut failing = Vec::new();
    for _ in 0..3 {
        failing.push(
            h.submit(get_task("qa", format!("http://{addr}/a"))?)
                .await?,
        );
    }
    let open = wait_record(&h, &key, "the breaker to open", |r| r.state == State::Open).await?;
    let seen = Instant::now();
    ensure!(
        open.worker == "wa" && (open.failures, open.calls) == (3, 3),
        "{open:?}"
    );
    for exec in &failing {
        ensure!(wait_ended(&h, exec).await? == "failed");
    }

    // B learns it within one heartbeat of the transition being visible.
    eventually(heartbeat, "worker B to see the open breaker", || async {
        Ok((b_view.state(&key) == Some(State::Open)).then_some(()))
    })
    .await?;
    ensure!(
        seen.elapsed() <= heartbeat,
        "B saw it after {:?}",
        seen.elapsed()
    );

    // B's work for the same target is delayed, not run and not failed.
    target.healthy.store(true, Ordering::SeqCst);
    let mut delayed = Vec::new();
    for _ in 0..4 {
        delayed.push(
            h.submit(get_task("qb", format!("http://{addr}/b"))?)
                .await?,
        );
    }
    for exec in &delayed {
        ensure!(
            wait_ended(&h, exec).await? == "succeeded",
            "{exec} did not succeed"
        );
    }
    let retry_at = open.retry_at.context("an open record has retry_at")?;
    let calls = target.calls_to("b");
    ensure!(calls.len() == 4, "{} calls to /b", calls.len());
    ensure!(
        calls.iter().all(|at| *at >= retry_at),
        "B called the target while its breaker was open: {calls:?} before {retry_at}"
    );
    ensure!(target.calls_to("a").len() == 3);

    // Closed again by B's probe, and every step announced.
    let closed = wait_record(&h, &key, "the breaker to close", |r| {
        r.state == State::Closed
    })
    .await?;
    ensure!(closed.worker == "wb" && closed.opened == 1, "{closed:?}");
    let steps: Vec<(State, State, String)> = transitions(&h)
        .await?
        .into_iter()
        .map(|t| (t.from, t.to, t.worker))
        .collect();
    ensure!(
        steps
            == [
                (State::Closed, State::Open, "wa".to_owned()),
                (State::Open, State::HalfOpen, "wb".to_owned()),
                (State::HalfOpen, State::Closed, "wb".to_owned()),
            ],
        "{steps:?}"
    );
    ensure!(dead_letters(&h).await? == 0, "an item was dead-lettered");
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test]
async fn delayed_items_outlive_max_deliver_and_run_once_a_probe_succeeds() -> Result<()> {
    let h = Harness::start().await?;
    let (target, addr) = Target::start().await?;
    let key = format!("host=127.0.0.1={}", addr.port());
    let worker = Worker::connect(
        config(&h, "w1", "default", breakers(2, Duration::from_millis(400)))?,
        registry(),
    )
    .await?;
    let worker = h.spawn(worker);
    let url = format!("http://{addr}/c");

    let mut execs = Vec::new();
    for _ in 0..2 {
        execs.push(h.submit(get_task("default", url.clone())?).await?);
    }
    wait_record(&h, &key, "the breaker to open", |r| r.state == State::Open).await?;
    for _ in 0..12 {
        execs.push(h.submit(get_task("default", url.clone())?).await?);
    }
    // Probes keep failing: the delayed items are handed back over and over,
    // far more often than the consumer's max_deliver (5) allows one item.
    wait_record(&h, &key, "six failed probes", |r| r.opened >= 7).await?;
    target.healthy.store(true, Ordering::SeqCst);
    let closed = wait_record(&h, &key, "the breaker to close", |r| {
        r.state == State::Closed
    })
    .await?;

    let mut outcomes = Vec::new();
    for exec in &execs {
        outcomes.push(wait_ended(&h, exec).await?);
    }
    let failed = outcomes.iter().filter(|o| **o == "failed").count() as u64;
    let succeeded = outcomes.len() as u64 - failed;
    // Failed: the two that opened it, then one probe per reopening.
    ensure!(
        failed == 2 + (closed.opened - 1),
        "{failed} failed, opened {} times",
        closed.opened
    );
    ensure!(succeeded >= 1, "nothing ran after the breaker closed");
    ensure!(
        target.calls_to("c").len() == execs.len(),
        "every item called the target once"
    );
    ensure!(
        dead_letters(&h).await? == 0,
        "a delayed item was dead-lettered"
    );
    // Six failed probes hand an item back more often than max_deliver
    // allows: without the hold on its last delivery it would have been
    // dead-lettered (checked above).
    worker.stop().await?;
    Ok(())
}
