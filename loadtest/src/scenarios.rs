//! The end-to-end scenarios: `throughput`, `throughput-bulk`, `mixed`,
//! `latency` and `fanout`, each on its own [`Rig`].
//!
//! Tasks are `echo` tasks with about 100 bytes of JSON input: the worker
//! returns the input, so every figure is runlog's own cost. Completion is
//! read from the engine's projection (see [`Terminals`]), as `log-floor`
//! reads it from its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Mutex;

use crate::rig::{Cpu, Rig};

/// The task every scenario runs.
pub fn task_body() -> serde_json::Value {
    serde_json::json!({"kind": "echo", "input": {"payload": "x".repeat(80)}})
}

/// How long a scenario may wait for its last execution.
const FINISH: Duration = Duration::from_secs(900);

/// Counts ended executions as the engine's projection folds them.
///
/// It polls the engine's `/v1/stats` every [`Terminals::POLL`] instead of
/// following the log itself: a consumer of its own would cost the server a
/// delivery per task, a message `log-floor` does not pay (its projection,
/// like the engine's, is what sees the end).
pub struct Terminals {
    http: reqwest::Client,
    stats: String,
    /// The counts when it started: (succeeded, ended otherwise).
    base: (u64, u64),
}

impl Terminals {
    /// How often the engine's counts are read; the error it adds to a
    /// run's end is below this.
    pub const POLL: Duration = Duration::from_millis(5);

    /// Starts counting executions that end from now on, on the engine at
    /// `http_base`.
    pub async fn follow(http_base: &str) -> anyhow::Result<Self> {
        let mut terminals = Terminals {
            http: reqwest::Client::new(),
            stats: format!("{http_base}/v1/stats"),
            base: (0, 0),
        };
        terminals.base = terminals.counts().await?;
        Ok(terminals)
    }

    /// (succeeded, ended otherwise) as the projection holds them.
    async fn counts(&self) -> anyhow::Result<(u64, u64)> {
        let stats: serde_json::Value = self
            .http
            .get(&self.stats)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let by = &stats["by_status"];
        let n = |status: &str| by[status].as_u64().unwrap_or(0);
        let other = ["dead_lettered", "rejected", "cancelled", "timed_out"]
            .iter()
            .map(|s| n(s))
            .sum();
        Ok((n("succeeded"), other))
    }

    /// Waits until `n` executions ended; returns when the engine was first
    /// seen holding the last one.
    pub async fn wait(&self, n: usize) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + FINISH;
        loop {
            let (ok, other) = self.counts().await?;
            let (ok, other) = (ok - self.base.0.min(ok), other - self.base.1.min(other));
            if other > 0 {
                bail!("{other} executions did not succeed");
            }
            if ok >= n as u64 {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!("only {ok} of {n} executions ended within {FINISH:?}");
            }
            tokio::time::sleep(Self::POLL).await;
        }
    }
}

/// Submits `n` tasks over NATS request/reply with `window` in flight;
/// returns when the first was sent. With `ids`, task `i` gets the
/// execution id `<ids>-<i>`.
pub async fn submit_all(
    nats_url: &str,
    n: usize,
    window: usize,
    ids: Option<&str>,
) -> anyhow::Result<Instant> {
    let client = async_nats::connect(nats_url).await?;
    let plain = Bytes::from(task_body().to_string());
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let payload = match ids {
                None => plain.clone(),
                Some(prefix) => {
                    let mut body = task_body();
                    body["id"] = serde_json::json!(format!("{prefix}-{i}"));
                    Bytes::from(body.to_string())
                }
            };
            let client = &client;
            async move {
                let reply = client.request("runlog.submit.default", payload).await?;
                anyhow::ensure!(
                    !reply.payload.starts_with(b"{\"error\""),
                    "submission refused: {}",
                    String::from_utf8_lossy(&reply.payload)
                );
                anyhow::Ok(())
            }
        })
        .buffer_unordered(window)
        .try_collect::<()>()
        .await?;
    Ok(started)
}

/// Specs per request of [`submit_bulk`]: the engine's batch limit.
pub const BULK: usize = 1000;
/// Batch requests [`submit_bulk`] keeps in flight.
pub const BULK_IN_FLIGHT: usize = 4;

/// Submits `n` tasks through the NATS batch door (`runlog.submit-batch.default`),
/// [`BULK`] a request with [`BULK_IN_FLIGHT`] requests in flight; returns
/// when the first was sent.
pub async fn submit_bulk(nats_url: &str, n: usize) -> anyhow::Result<Instant> {
    let client = async_nats::connect(nats_url).await?;
    let task = task_body().to_string();
    let started = Instant::now();
    futures::stream::iter((0..n).step_by(BULK))
        .map(|from| {
            let count = BULK.min(n - from);
            let specs = vec![task.as_str(); count].join(",");
            let payload = Bytes::from(format!(r#"{{"executions":[{specs}]}}"#));
            let client = &client;
            async move {
                let reply = client
                    .request("runlog.submit-batch.default", payload)
                    .await?;
                let answer: serde_json::Value = serde_json::from_slice(&reply.payload)?;
                let results = answer["results"]
                    .as_array()
                    .with_context(|| format!("batch refused: {answer}"))?;
                anyhow::ensure!(
                    results.len() == count,
                    "{} results for {count} specs",
                    results.len()
                );
                if let Some(refused) = results.iter().find(|r| r.get("error").is_some()) {
                    bail!("submission refused: {refused}");
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(BULK_IN_FLIGHT)
        .try_collect::<()>()
        .await?;
    Ok(started)
}

/// Waits until the execution log holds `n` events: every submission
/// queued, and so dispatched (a `queued` event is its own work item; on a
/// fresh rig nothing else is stored before the workers start).
async fn wait_dispatched(nats_url: &str, n: usize) -> anyhow::Result<Instant> {
    let js = jetstream::new(async_nats::connect(nats_url).await?);
    let deadline = Instant::now() + FINISH;
    loop {
        let mut stream = js.get_stream("RUNLOG_EXEC").await?;
        if stream.info().await?.state.messages as usize >= n {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("the engine did not dispatch {n} items within {FINISH:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The figures of a `throughput` or `mixed` run.
#[derive(Debug, Clone)]
pub struct Run {
    pub tasks: usize,
    /// First submission → last reply.
    pub enqueue_seconds: f64,
    /// First submission → last terminal event.
    pub end_to_end_seconds: f64,
    /// Workers started → last terminal event (`throughput` only).
    pub drain_seconds: Option<f64>,
    pub cpu: Cpu,
    /// The engine's resident memory at the end, in MiB.
    pub engine_rss_mib: f64,
}

/// Settings of the end-to-end scenarios.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub tasks: usize,
    pub workers: usize,
    pub concurrency: usize,
    /// Submissions in flight.
    pub window: usize,
}

/// `throughput`: enqueue every task, then start the workers.
pub async fn throughput(shape: Shape) -> anyhow::Result<Run> {
    enqueue_then_drain("throughput", shape, Producer::OneByOne).await
}

/// `throughput-bulk`: like `throughput`, but the producer submits through
/// the NATS batch door, [`BULK`] specs a request.
pub async fn throughput_bulk(shape: Shape) -> anyhow::Result<Run> {
    enqueue_then_drain("throughput-bulk", shape, Producer::Bulk).await
}

/// How a scenario's producer submits.
#[derive(Debug, Clone, Copy)]
enum Producer {
    /// One request per task, `Shape::window` in flight ([`submit_all`]).
    OneByOne,
    /// Batches of [`BULK`], [`BULK_IN_FLIGHT`] in flight ([`submit_bulk`]).
    Bulk,
}

/// Enqueues every task the way `producer` does, waits until each was
/// dispatched, then starts the workers and waits for the last to end.
async fn enqueue_then_drain(
    scenario: &str,
    shape: Shape,
    producer: Producer,
) -> anyhow::Result<Run> {
    let mut rig = Rig::start().await?;
    let terminals = Terminals::follow(rig.http()).await?;
    let cpu_before = rig.cpu().await;
    let first = Instant::now();
    match producer {
        Producer::OneByOne => {
            submit_all(&rig.nats_url(), shape.tasks, shape.window, None).await?;
        }
        Producer::Bulk => {
            submit_bulk(&rig.nats_url(), shape.tasks).await?;
        }
    }
    let enqueued = first.elapsed();
    wait_dispatched(&rig.nats_url(), shape.tasks).await?;
    let enqueue_cpu = rig.cpu().await - cpu_before;
    eprintln!(
        "{scenario}: enqueue and dispatch, per task: {}",
        enqueue_cpu.per_task_json(shape.tasks)
    );
    let workers_at = Instant::now();
    rig.start_workers(shape.workers, shape.concurrency).await?;
    let last = terminals.wait(shape.tasks).await?;
    eprintln!(
        "{scenario}: workers, per task: {}",
        (rig.cpu().await - cpu_before - enqueue_cpu).per_task_json(shape.tasks)
    );
    Ok(Run {
        tasks: shape.tasks,
        enqueue_seconds: enqueued.as_secs_f64(),
        end_to_end_seconds: (last - first).as_secs_f64(),
        drain_seconds: Some((last - workers_at).as_secs_f64()),
        cpu: rig.cpu().await - cpu_before,
        engine_rss_mib: rig.engine_rss_mib(),
    })
}

/// `mixed`: the producer submits while the workers run.
pub async fn mixed(shape: Shape) -> anyhow::Result<Run> {
    let mut rig = Rig::start().await?;
    rig.start_workers(shape.workers, shape.concurrency).await?;
    let terminals = Terminals::follow(rig.http()).await?;
    produce(&rig, &terminals, shape, None).await
}

/// Submits the shape's tasks while the workers run and waits for the last
/// to end: the figures of `mixed` (and of the load under `fanout`).
async fn produce(
    rig: &Rig,
    terminals: &Terminals,
    shape: Shape,
    ids: Option<&str>,
) -> anyhow::Result<Run> {
    let cpu_before = rig.cpu().await;
    let first = Instant::now();
    submit_all(&rig.nats_url(), shape.tasks, shape.window, ids).await?;
    let enqueued = first.elapsed();
    let last = terminals.wait(shape.tasks).await?;
    Ok(Run {
        tasks: shape.tasks,
        enqueue_seconds: enqueued.as_secs_f64(),
        end_to_end_seconds: (last - first).as_secs_f64(),
        drain_seconds: None,
        cpu: rig.cpu().await - cpu_before,
        engine_rss_mib: rig.engine_rss_mib(),
    })
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut millis: Vec<f64>) -> Option<Self> {
        if millis.is_empty() {
            return None;
        }
        millis.sort_by(f64::total_cmp);
        let at = |q: f64| millis[((millis.len() - 1) as f64 * q).round() as usize];
        Some(Percentiles {
            count: millis.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
        })
    }

    pub fn json(&self) -> serde_json::Value {
        let r = |v: f64| (v * 1000.0).round() / 1000.0;
        serde_json::json!({
            "count": self.count,
            "p50_ms": r(self.p50),
            "p95_ms": r(self.p95),
            "p99_ms": r(self.p99),
            "max_ms": r(self.max),
        })
    }
}

/// One SSE event as the feeds send it: its type and its data line.
struct SseEvent {
    event: String,
    data: String,
}

/// Reads `GET {url}` as an SSE feed, calling `each` per event, until the
/// response ends or `each` returns false.
async fn follow_sse(
    client: &reqwest::Client,
    url: &str,
    mut each: impl FnMut(SseEvent) -> bool,
) -> anyhow::Result<()> {
    let response = client
        .get(url)
        .header("accept", "text/event-stream")
        .send()
        .await?;
    anyhow::ensure!(response.status().is_success(), "HTTP {}", response.status());
    let mut response = response;
    let mut buffer = Vec::new();
    let (mut event, mut data) = (String::new(), String::new());
    while let Some(chunk) = response.chunk().await? {
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line = std::str::from_utf8(&line[..line.len() - 1]).unwrap_or_default();
            if line.is_empty() {
                if !data.is_empty() || !event.is_empty() {
                    let done = SseEvent {
                        event: std::mem::take(&mut event),
                        data: std::mem::take(&mut data),
                    };
                    if !each(done) {
                        return Ok(());
                    }
                }
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
    }
    Ok(())
}

/// A string member of a JSON object, read without parsing the whole of it:
/// `key` is `"name":"` (runlog never escapes inside ids and times).
fn member<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let start = json.find(key)? + key.len();
    let len = json[start..].find('"')?;
    Some(&json[start..start + len])
}

/// The figures of a `latency` run.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub rate: f64,
    pub latency: Percentiles,
}

/// `latency`: idle workers; `rate` submissions per second over HTTP for
/// `seconds`; each task's time from sending its submission to the moment
/// the global SSE feed (`GET /v1/stream`) delivers its `succeeded`.
pub async fn latency(shape: Shape, rate: f64, seconds: f64) -> anyhow::Result<Latency> {
    let mut rig = Rig::start().await?;
    rig.start_workers(shape.workers, shape.concurrency).await?;
    let total = (rate * seconds).round() as usize;
    let http = reqwest::Client::new();
    let ended: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let feed = tokio::spawn({
        let (http, ended) = (http.clone(), ended.clone());
        let url = format!("{}/v1/stream?progress=false", rig.http());
        async move {
            follow_sse(&http, &url, |e| {
                if e.event == "succeeded"
                    && let Some(id) = member(&e.data, r#""execution":""#)
                {
                    let now = Instant::now();
                    let mut ended = ended.lock().unwrap_or_else(|e| e.into_inner());
                    ended.insert(id.to_owned(), now);
                }
                true
            })
            .await
        }
    });
    // Warm the connections and the workers before measuring.
    let url = format!("{}/v1/executions", rig.http());
    for _ in 0..20 {
        let r = http.post(&url).json(&task_body()).send().await?;
        anyhow::ensure!(r.status().as_u16() == 201, "HTTP {}", r.status());
    }
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut submissions = tokio::task::JoinSet::new();
    for i in 0..total {
        tick.tick().await;
        let (http, url, sent) = (http.clone(), url.clone(), sent.clone());
        let id = format!("lat-{i}-{}", std::process::id());
        submissions.spawn(async move {
            let mut body = task_body();
            body["id"] = serde_json::json!(id);
            let at = Instant::now();
            sent.lock().await.insert(id, at);
            let r = http.post(&url).json(&body).send().await?;
            anyhow::ensure!(r.status().as_u16() == 201, "HTTP {}", r.status());
            anyhow::Ok(())
        });
    }
    while let Some(done) = submissions.join_next().await {
        done??;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let sent = sent.lock().await.clone();
    loop {
        let seen = {
            let ended = ended.lock().unwrap_or_else(|e| e.into_inner());
            sent.keys().filter(|id| ended.contains_key(*id)).count()
        };
        if seen == total {
            break;
        }
        if feed.is_finished() {
            bail!("the SSE feed ended after {seen} of {total} executions");
        }
        if Instant::now() > deadline {
            bail!("only {seen} of {total} executions were seen ending");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    feed.abort();
    let ended = ended.lock().unwrap_or_else(|e| e.into_inner());
    let millis = sent
        .iter()
        .map(|(id, at)| (ended[id] - *at).as_secs_f64() * 1000.0)
        .collect();
    Ok(Latency {
        rate,
        latency: Percentiles::of(millis).context("no executions")?,
    })
}

/// The figures of a `fanout` run.
#[derive(Debug, Clone)]
pub struct Fanout {
    pub clients: usize,
    pub run: Run,
    /// Event recorded (its `time`) → a client read it, over every event and
    /// every client.
    pub lag: Percentiles,
    /// Events read by all clients together.
    pub delivered: usize,
}

/// `fanout`: `clients` SSE clients follow `GET /v1/stream` while `mixed`
/// runs; the lag of every event of the run at every client. Each client
/// reads until it has seen every execution of the run succeed.
pub async fn fanout(shape: Shape, clients: usize) -> anyhow::Result<Fanout> {
    let mut rig = Rig::start().await?;
    rig.start_workers(shape.workers, shape.concurrency).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let url = format!("{}/v1/stream?progress=false", rig.http());
    let prefix = format!("fan{}", std::process::id());
    let connected = Arc::new(AtomicUsize::new(0));
    let mut feeds = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (http, url, connected) = (http.clone(), url.clone(), connected.clone());
        let (prefix, tasks) = (prefix.clone(), shape.tasks);
        feeds.spawn(async move {
            let mut lags = Vec::new();
            let (mut first, mut ended) = (true, 0);
            follow_sse(&http, &url, |e| {
                if first {
                    first = false;
                    connected.fetch_add(1, Ordering::Relaxed);
                }
                let ours =
                    member(&e.data, r#""execution":""#).is_some_and(|x| x.starts_with(&prefix));
                if !ours {
                    return true;
                }
                if let Some(time) = member(&e.data, r#""time":""#)
                    && let Ok(time) = chrono::DateTime::parse_from_rfc3339(time)
                {
                    let lag = chrono::Utc::now().signed_duration_since(time);
                    lags.push(lag.num_microseconds().unwrap_or(0) as f64 / 1000.0);
                }
                if e.event == "succeeded" {
                    ended += 1;
                }
                ended < tasks
            })
            .await?;
            anyhow::ensure!(
                ended == tasks,
                "a feed ended after {ended} of {tasks} executions"
            );
            anyhow::Ok(lags)
        });
    }
    // A feed counts as connected at its first event: warm-up tasks until
    // every client has one.
    let deadline = Instant::now() + READY_FEEDS;
    while connected.load(Ordering::Relaxed) < clients {
        submit_all(&rig.nats_url(), 1, 1, None).await?;
        if Instant::now() > deadline {
            bail!(
                "only {} of {clients} SSE clients connected",
                connected.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let terminals = Terminals::follow(rig.http()).await?;
    let run = produce(&rig, &terminals, shape, Some(&prefix)).await?;
    let mut lags = Vec::new();
    let deadline = Instant::now() + FINISH;
    while let Some(feed) = tokio::time::timeout_at(deadline.into(), feeds.join_next())
        .await
        .context("the SSE clients did not see every execution end")?
    {
        lags.extend(feed??);
    }
    let delivered = lags.len();
    Ok(Fanout {
        clients,
        run,
        lag: Percentiles::of(lags).context("no events delivered")?,
        delivered,
    })
}

/// How long the fanout clients may take to connect.
const READY_FEEDS: Duration = Duration::from_secs(30);

/// `workflow`: one workflow execution whose single node fans out over
/// `shape.tasks` items with `concurrency` runs at once, each an `echo` task;
/// from its start to `succeeded`, read from the engine's API.
pub async fn workflow(shape: Shape, concurrency: usize) -> anyhow::Result<Run> {
    let mut rig = Rig::start().await?;
    rig.start_workers(shape.workers, shape.concurrency).await?;
    let http = reqwest::Client::new();
    let definition = serde_json::json!({
        "name": "fan",
        "version": 1,
        "nodes": {"each": {
            "kind": "echo",
            "for_each": format!("[range({})]", shape.tasks),
            "concurrency": concurrency,
            "input": {"item": "${{ .item }}", "payload": task_body()["input"]},
        }},
    });
    let defined = http
        .post(format!("{}/v1/workflows", rig.http()))
        .json(&definition)
        .send()
        .await?;
    if !defined.status().is_success() {
        bail!("cannot define the workflow: {}", defined.text().await?);
    }
    let cpu_before = rig.cpu().await;
    let first = Instant::now();
    let started: serde_json::Value = http
        .post(format!("{}/v1/workflows/fan/executions", rig.http()))
        .json(&serde_json::json!({}))
        .send()
        .await?
        .json()
        .await?;
    let id = started["id"]
        .as_str()
        .context("an execution id")?
        .to_owned();
    let enqueued = first.elapsed();
    // The summary list, not the whole execution: polling must not be the
    // engine's main cost.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let list: serde_json::Value = http
            .get(format!(
                "{}/v1/workflow-executions?workflow=fan",
                rig.http()
            ))
            .send()
            .await?
            .json()
            .await?;
        let status = list["items"][0]["status"].as_str().unwrap_or("").to_owned();
        if status == "succeeded" && list["items"][0]["id"] == id.as_str() {
            break;
        }
        if !matches!(status.as_str(), "running" | "new" | "") {
            bail!("the workflow ended {status}: {list}");
        }
        if Instant::now() > deadline {
            bail!("the workflow did not end within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let end = first.elapsed();
    Ok(Run {
        tasks: shape.tasks,
        enqueue_seconds: enqueued.as_secs_f64(),
        end_to_end_seconds: end.as_secs_f64(),
        drain_seconds: None,
        cpu: rig.cpu().await - cpu_before,
        engine_rss_mib: rig.engine_rss_mib(),
    })
}

/// What the `schedule` scenario measured.
#[derive(Debug)]
pub struct Schedules {
    /// Ticks that came due in the measured window.
    pub ticks: usize,
    /// CPU and messages over the window: ticks and their runs.
    pub cpu: Cpu,
    /// Tick → its run recorded (`triggered`), ms.
    pub decided: Percentiles,
    /// Tick → its run started on a worker, ms.
    pub started: Percentiles,
}

/// `schedule`: `schedules` schedules ticking every second, each tick an
/// `echo` task, for `seconds`; how late each tick is decided and started,
/// and what a tick costs (its task included).
pub async fn schedules(shape: Shape, schedules: usize, seconds: f64) -> anyhow::Result<Schedules> {
    let mut rig = Rig::start().await?;
    rig.start_workers(shape.workers, shape.concurrency).await?;
    let http = reqwest::Client::new();
    for n in 0..schedules {
        let created = http
            .post(format!("{}/v1/schedules", rig.http()))
            .json(&serde_json::json!({
                "id": format!("s{n}"),
                "every": "1s",
                "overlap": "allow_all",
                "task": task_body(),
            }))
            .send()
            .await?;
        if !created.status().is_success() {
            bail!("cannot create a schedule: {}", created.text().await?);
        }
    }
    // Warm up for two ticks, then measure whole seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let from = chrono::Utc::now();
    let cpu_before = rig.cpu().await;
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let cpu = rig.cpu().await - cpu_before;
    let to = chrono::Utc::now();
    for n in 0..schedules {
        http.post(format!("{}/v1/schedules/s{n}/pause", rig.http()))
            .send()
            .await?;
    }
    let time = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    let ms = |a: chrono::DateTime<chrono::Utc>, b: chrono::DateTime<chrono::Utc>| {
        (b - a).num_microseconds().unwrap_or(0) as f64 / 1000.0
    };
    let (mut ticks, mut decided, mut started) = (0, Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0..schedules {
        let runs = loop {
            let reply: serde_json::Value = http
                .get(format!("{}/v1/schedules/s{n}/runs?limit=1000", rig.http()))
                .send()
                .await?
                .json()
                .await?;
            let runs = reply["runs"].as_array().cloned().unwrap_or_default();
            let pending = runs.iter().any(|r| r["started_at"].is_null());
            if !pending || Instant::now() > deadline {
                break runs;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for run in runs {
            let Some(tick) = time(&run["scheduled_for"]).filter(|t| *t > from && *t <= to) else {
                continue;
            };
            ticks += 1;
            if let Some(at) = time(&run["recorded_at"]) {
                decided.push(ms(tick, at));
            }
            if let Some(at) = time(&run["started_at"]) {
                started.push(ms(tick, at));
            }
        }
    }
    Ok(Schedules {
        ticks,
        cpu,
        decided: Percentiles::of(decided).context("no tick was decided")?,
        started: Percentiles::of(started).context("no tick's run started")?,
    })
}
