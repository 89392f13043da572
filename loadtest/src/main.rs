//! `runlog-loadtest`: benchmarks that print figures, never timed tests.
//!
//! Every run starts its own nats-server (file store, temporary directory) and
//! measures, on that same server:
//! - `floor`: the raw JetStream cycle with no runlog logic: publish+ack a
//!   task, consume+ack it, publish+ack a result;
//! - `lifecycle`: the same cycle through runlog's core: the engine's intake
//!   (`submitted`, `queued`), a worker's claim (`started`) and its result
//!   (`succeeded`), each an optimistic append;
//! - `replay` (with `--replay-events`): the engine's projection rebuilt from
//!   a log of that many events, in events per second.
//!
//! With `--scenario`, the end-to-end scenarios run on a whole installation
//! of real processes each (a fresh nats-server, `runlog engine`, `--workers`
//! `runlog worker`s with `--worker-concurrency` slots; see [`rig`]):
//! - `throughput`: enqueue `--n` tasks, then start the workers;
//! - `mixed`: the producer and the workers at once;
//! - `latency`: idle workers, `--rate` submissions per second over HTTP,
//!   submit → `succeeded` read from the SSE feed;
//! - `fanout`: `--clients` SSE clients on `GET /v1/stream` during `mixed`.
//!
//! Each scenario prints a JSON line; a markdown table with the ratio of every
//! figure to the floor follows.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use chrono::Utc;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use runlog_events::journal::Journal;
use runlog_events::stream::Layout;
use runlog_events::{Command, ExecutionId, Subjects, TaskSpec};
use runlog_localnats::NatsServer;
use runlog_worker::{Attempt, Claim};
use tokio::sync::Semaphore;

mod log_floor;
mod log_search;
mod memory;
mod replay;
mod rig;
mod scenarios;

use scenarios::Shape;

/// Benchmark scenarios against a nats-server started for the run.
#[derive(Debug, Parser)]
#[command(name = "runlog-loadtest", version)]
struct Args {
    /// Tasks per scenario.
    #[arg(long, default_value_t = 2_000)]
    n: usize,
    /// Tasks in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Repetitions of each scenario; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Events in the log that the `replay` scenario rebuilds the projection
    /// from (0 skips it).
    #[arg(long, default_value_t = 0)]
    replay_events: usize,
    /// Also measure the engine's intake over HTTP and over NATS
    /// request/reply (`--n` submissions, `--concurrency` in flight).
    #[arg(long)]
    intake: bool,
    /// Also run `--n` `echo` tasks end to end through the engine and one
    /// `runlog worker` process with `--concurrency` slots (the `runlog`
    /// binary next to this one), and report the worker's memory.
    #[arg(long)]
    worker: bool,
    /// Also fold this many finished executions into a projection, without
    /// NATS, and report the resident memory per execution (0 skips it).
    #[arg(long, default_value_t = 0)]
    memory_executions: usize,
    /// End-to-end scenarios to run (repeat or separate with commas).
    #[arg(long, value_delimiter = ',', value_parser = ["throughput", "throughput-bulk", "mixed", "latency", "fanout", "workflow", "schedule", "log-search"])]
    scenario: Vec<String>,
    /// Worker processes of the end-to-end scenarios.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Slots of each worker process.
    #[arg(long, default_value_t = 32)]
    worker_concurrency: usize,
    /// Submissions in flight in the end-to-end scenarios.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Submissions per second of `latency`.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seconds `latency` submits for.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// SSE clients of `fanout`.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Tasks of `fanout` (default: `--n`).
    #[arg(long)]
    fanout_n: Option<usize>,
    /// Runs of the `workflow` scenario's fan-out node at once (its items
    /// are `--n`).
    #[arg(long, default_value_t = 50)]
    workflow_concurrency: usize,
    /// Schedules of the `schedule` scenario, each ticking every second for
    /// `--seconds`.
    #[arg(long, default_value_t = 100)]
    schedules: usize,
    /// Log lines `log-search` plants (in 2,000 batches of 20 executions)
    /// before it searches them for one planted line `--runs` times.
    #[arg(long, default_value_t = 100_000)]
    log_lines: u64,
    /// Export traces from the engine and the workers of the end-to-end
    /// scenarios to an OTLP/HTTP receiver in this process (it decodes and
    /// counts the spans; its CPU counts as the load generator's).
    #[arg(long)]
    traces: bool,
}

#[derive(Debug, Clone)]
struct Figure {
    scenario: &'static str,
    tasks: usize,
    seconds: f64,
}

impl Figure {
    fn rate(&self) -> f64 {
        self.tasks as f64 / self.seconds
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.n == 0 || args.concurrency == 0 || args.runs == 0 {
        bail!("--n, --concurrency and --runs must be positive");
    }
    let mut table = Vec::new();
    if args.memory_executions > 0 {
        // First, in a heap nothing else has grown yet.
        let m = memory::run(args.memory_executions)?;
        println!(
            "{}",
            serde_json::json!({
                "scenario": "memory",
                "executions": m.executions,
                "resident_bytes_per_execution": m.bytes_per_execution.round(),
                "fold_seconds": (m.seconds * 100.0).round() / 100.0,
            })
        );
        table.push(format!(
            "| memory, {} finished executions | resident bytes per execution | {:.0} | |",
            m.executions, m.bytes_per_execution
        ));
    }
    let server = NatsServer::start().context("cannot start nats-server")?;
    let mut floor = Vec::new();
    let mut lifecycle = Vec::new();
    let mut log_floors = Vec::new();
    for run in 0..args.runs {
        let before = log_floor::sample(&server).await;
        floor.push(floor_cycle(&server, &args, run).await?);
        if run == 0 {
            let cpu = log_floor::sample(&server).await - before;
            eprintln!("floor: per task: {}", cpu.per_task_json(args.n));
        }
        lifecycle.push(lifecycle_cycle(&server, &args).await?);
        let slots = args.workers * args.worker_concurrency;
        log_floors.push(log_floor::run(&server, run, args.n, args.window, slots).await?);
    }
    let floor = median(floor);
    let lifecycle = median(lifecycle);
    log_floors.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let log_floor = log_floors[log_floors.len() / 2].clone();
    println!(
        "{}",
        serde_json::json!({
            "scenario": "log-floor",
            "tasks": log_floor.tasks,
            "runs": args.runs,
            "window": args.window,
            "slots": args.workers * args.worker_concurrency,
            "median_seconds": log_floor.seconds,
            "tasks_per_second": (log_floor.tasks as f64 / log_floor.seconds).round(),
            "ratio_to_floor": ((log_floor.tasks as f64 / log_floor.seconds) / floor.rate() * 1000.0).round() / 1000.0,
            "cpu_us_per_task": log_floor.cpu.per_task_json(log_floor.tasks),
        })
    );
    let log_floor = Figure {
        scenario: "log-floor",
        tasks: log_floor.tasks,
        seconds: log_floor.seconds,
    };
    let receiver = match args.traces {
        true => {
            let receiver = runlog_testkit::OtlpReceiver::start_counting().await?;
            rig::export_traces_to(receiver.endpoint());
            Some(receiver)
        }
        false => None,
    };
    for scenario in &args.scenario {
        table.extend(end_to_end(&args, scenario, &floor, &log_floor).await?);
    }
    if let Some(receiver) = &receiver {
        println!(
            "{}",
            serde_json::json!({
                "scenario": "traces",
                "spans_received": receiver.span_count(),
                "export_requests": receiver.requests(),
            })
        );
    }
    if args.replay_events > 0 {
        let figures = replay::run(args.replay_events, args.runs).await?;
        let rate = figures.full.rate();
        for f in [&figures.delivery, &figures.fold] {
            println!(
                "{}",
                serde_json::json!({
                    "scenario": f.scenario,
                    "events": f.tasks,
                    "runs": args.runs,
                    "median_seconds": f.seconds,
                    "events_per_second": f.rate().round(),
                })
            );
        }
        let per_execution = figures.bytes_per_execution;
        println!(
            "{}",
            serde_json::json!({
                "scenario": "replay",
                "events": figures.full.tasks,
                "runs": args.runs,
                "median_seconds": figures.full.seconds,
                "events_per_second": rate.round(),
                "executions_per_second": (rate / memory::EVENTS as f64).round(),
                "ratio_to_delivery": (rate / figures.delivery.rate() * 1000.0).round() / 1000.0,
                "cpu_us_per_event_client": (figures.cpu.client_us * 100.0).round() / 100.0,
                "cpu_us_per_event_server": (figures.cpu.server_us * 100.0).round() / 100.0,
                "delivery_cpu_us_per_event_client": (figures.delivery_cpu.client_us * 100.0).round() / 100.0,
                "delivery_cpu_us_per_event_server": (figures.delivery_cpu.server_us * 100.0).round() / 100.0,
                "resident_bytes_per_execution": per_execution.round(),
                "resident_mib_per_100k_executions": (per_execution * 100_000.0 / 1_048_576.0).round(),
            })
        );
    }
    if args.worker {
        let mut figures = Vec::new();
        let mut memory = Vec::new();
        for _ in 0..args.runs {
            let (figure, rest, peak) = worker_throughput(&args).await?;
            figures.push(figure);
            memory.push((rest, peak));
        }
        let f = median(figures);
        let (rest, peak) = memory[memory.len() / 2];
        println!(
            "{}",
            serde_json::json!({
                "scenario": f.scenario,
                "tasks": f.tasks,
                "worker_concurrency": args.concurrency,
                "runs": args.runs,
                "median_seconds": f.seconds,
                "tasks_per_second": f.rate().round(),
                "worker_rss_mib_at_rest": rest,
                "worker_rss_mib_peak": peak,
            })
        );
    }
    if args.intake {
        let mut http = Vec::new();
        let mut nats = Vec::new();
        for _ in 0..args.runs {
            let (h, n) = intake(&args).await?;
            http.push(h);
            nats.push(n);
        }
        for f in [median(http), median(nats)] {
            println!(
                "{}",
                serde_json::json!({
                    "scenario": f.scenario,
                    "submissions": f.tasks,
                    "concurrency": args.concurrency,
                    "runs": args.runs,
                    "median_seconds": f.seconds,
                    "submissions_per_second": f.rate().round(),
                })
            );
        }
    }
    for f in [&floor, &lifecycle] {
        println!(
            "{}",
            serde_json::json!({
                "scenario": f.scenario,
                "tasks": f.tasks,
                "concurrency": args.concurrency,
                "runs": args.runs,
                "median_seconds": f.seconds,
                "tasks_per_second": f.rate().round(),
                "ratio_to_floor": (f.rate() / floor.rate() * 1000.0).round() / 1000.0,
            })
        );
    }
    println!();
    println!(
        "| scenario | tasks | concurrency | tasks/s (median of {}) | ratio to floor |",
        args.runs
    );
    println!("|---|---|---|---|---|");
    for f in [&floor, &lifecycle, &log_floor] {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} |",
            f.scenario,
            f.tasks,
            args.concurrency,
            f.rate(),
            f.rate() / floor.rate()
        );
    }
    if !table.is_empty() {
        println!();
        println!(
            "| scenario (median of {}) | figure | value | ratio to floor |",
            args.runs
        );
        println!("|---|---|---|---|");
        for row in table {
            println!("{row}");
        }
    }
    Ok(())
}

/// Runs one end-to-end scenario `--runs` times, prints its JSON line and
/// returns its rows of the markdown table.
async fn end_to_end(
    args: &Args,
    scenario: &str,
    floor: &Figure,
    log_floor: &Figure,
) -> anyhow::Result<Vec<String>> {
    let shape = Shape {
        tasks: args.n,
        workers: args.workers,
        concurrency: args.worker_concurrency,
        window: args.window,
    };
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    let ratio = |rate: f64| round(rate / floor.rate());
    let log_ratio = |rate: f64| round(rate / log_floor.rate());
    let mut rows = Vec::new();
    let base = serde_json::json!({
        "scenario": scenario,
        "runs": args.runs,
        "workers": args.workers,
        "worker_concurrency": args.worker_concurrency,
        "floor_tasks_per_second": floor.rate().round(),
        "log_floor_tasks_per_second": log_floor.rate().round(),
    });
    let mut line = base;
    match scenario {
        "throughput" | "throughput-bulk" | "mixed" => {
            let mut runs = Vec::new();
            for _ in 0..args.runs {
                let run = match scenario {
                    "mixed" => scenarios::mixed(shape).await?,
                    "throughput-bulk" => scenarios::throughput_bulk(shape).await?,
                    _ => scenarios::throughput(shape).await?,
                };
                eprintln!(
                    "{scenario}: {} tasks, end to end {:.2} s",
                    run.tasks, run.end_to_end_seconds
                );
                runs.push(run);
            }
            runs.sort_by(|a, b| a.end_to_end_seconds.total_cmp(&b.end_to_end_seconds));
            let run = &runs[runs.len() / 2];
            let rate = run.tasks as f64 / run.end_to_end_seconds;
            let enqueue = run.tasks as f64 / run.enqueue_seconds;
            line["tasks"] = serde_json::json!(run.tasks);
            line["enqueue_per_second"] = serde_json::json!(enqueue.round());
            line["end_to_end_tasks_per_second"] = serde_json::json!(rate.round());
            line["ratio_to_floor"] = serde_json::json!(ratio(rate));
            line["ratio_to_log_floor"] = serde_json::json!(log_ratio(rate));
            line["cpu_us_per_task"] = run.cpu.per_task_json(run.tasks);
            line["engine_rss_mib_at_end"] =
                serde_json::json!((run.engine_rss_mib * 10.0).round() / 10.0);
            rows.push(format!(
                "| {scenario} | end to end, tasks/s | {rate:.0} | {:.3} (log-floor {:.3}) |",
                ratio(rate),
                log_ratio(rate)
            ));
            rows.push(format!(
                "| {scenario} | enqueue, tasks/s | {enqueue:.0} | {:.3} |",
                ratio(enqueue)
            ));
            if let Some(drain) = run.drain_seconds {
                let drain = run.tasks as f64 / drain;
                line["drain_tasks_per_second"] = serde_json::json!(drain.round());
                rows.push(format!(
                    "| {scenario} | workers started → last result, tasks/s | {drain:.0} | {:.3} |",
                    ratio(drain)
                ));
            }
        }
        "latency" => {
            let mut runs = Vec::new();
            for _ in 0..args.runs {
                let run = scenarios::latency(shape, args.rate, args.seconds).await?;
                eprintln!(
                    "latency: p50 {:.2} ms, p99 {:.2} ms",
                    run.latency.p50, run.latency.p99
                );
                runs.push(run);
            }
            runs.sort_by(|a, b| a.latency.p99.total_cmp(&b.latency.p99));
            let run = runs[runs.len() / 2];
            line["rate"] = serde_json::json!(run.rate);
            line["latency"] = run.latency.json();
            let l = run.latency;
            rows.push(format!(
                "| latency at {}/s | p50 / p95 / p99 / max, ms | {:.2} / {:.2} / {:.2} / {:.2} | |",
                run.rate, l.p50, l.p95, l.p99, l.max
            ));
        }
        "fanout" => {
            let shape = Shape {
                tasks: args.fanout_n.unwrap_or(args.n),
                ..shape
            };
            let mut runs = Vec::new();
            for _ in 0..args.runs {
                let run = scenarios::fanout(shape, args.clients).await?;
                eprintln!("fanout: lag p99 {:.1} ms", run.lag.p99);
                runs.push(run);
            }
            runs.sort_by(|a, b| a.lag.p99.total_cmp(&b.lag.p99));
            let run = &runs[runs.len() / 2];
            let rate = run.run.tasks as f64 / run.run.end_to_end_seconds;
            line["tasks"] = serde_json::json!(run.run.tasks);
            line["clients"] = serde_json::json!(run.clients);
            line["events_delivered"] = serde_json::json!(run.delivered);
            line["lag"] = run.lag.json();
            line["end_to_end_tasks_per_second"] = serde_json::json!(rate.round());
            line["cpu_us_per_task"] = run.run.cpu.per_task_json(run.run.tasks);
            let l = run.lag;
            rows.push(format!(
                "| fanout, {} clients | lag p50 / p95 / p99 / max, ms | {:.1} / {:.1} / {:.1} / {:.1} | |",
                run.clients, l.p50, l.p95, l.p99, l.max
            ));
            rows.push(format!(
                "| fanout, {} clients | end to end, tasks/s | {rate:.0} | {:.3} |",
                run.clients,
                ratio(rate)
            ));
        }
        "workflow" => {
            let mut runs = Vec::new();
            for _ in 0..args.runs {
                let run = scenarios::workflow(shape, args.workflow_concurrency).await?;
                eprintln!(
                    "workflow: for_each over {} items, {} at once: {:.2} s",
                    run.tasks, args.workflow_concurrency, run.end_to_end_seconds
                );
                runs.push(run);
            }
            runs.sort_by(|a, b| a.end_to_end_seconds.total_cmp(&b.end_to_end_seconds));
            let run = &runs[runs.len() / 2];
            let rate = run.tasks as f64 / run.end_to_end_seconds;
            line["nodes"] = serde_json::json!(run.tasks);
            line["node_concurrency"] = serde_json::json!(args.workflow_concurrency);
            line["wall_seconds"] = serde_json::json!(round(run.end_to_end_seconds));
            line["node_runs_per_second"] = serde_json::json!(rate.round());
            line["cpu_us_per_node"] = run.cpu.per_task_json(run.tasks);
            rows.push(format!(
                "| workflow, for_each {} × {} at once | wall time, s | {:.2} | |",
                run.tasks, args.workflow_concurrency, run.end_to_end_seconds
            ));
            rows.push(format!(
                "| workflow | node runs/s | {rate:.0} | {:.3} |",
                ratio(rate)
            ));
        }
        "schedule" => {
            let mut runs = Vec::new();
            for _ in 0..args.runs {
                let run = scenarios::schedules(shape, args.schedules, args.seconds).await?;
                eprintln!(
                    "schedule: {} ticks; decided p50 {:.1} ms p99 {:.1} ms; started p50 {:.1} ms p99 {:.1} ms",
                    run.ticks, run.decided.p50, run.decided.p99, run.started.p50, run.started.p99
                );
                runs.push(run);
            }
            runs.sort_by(|a, b| a.decided.p99.total_cmp(&b.decided.p99));
            let run = &runs[runs.len() / 2];
            line["schedules"] = serde_json::json!(args.schedules);
            line["ticks"] = serde_json::json!(run.ticks);
            line["tick_decided_ms"] = run.decided.json();
            line["tick_started_ms"] = run.started.json();
            line["cpu_us_per_tick"] = run.cpu.per_task_json(run.ticks);
            let (d, s) = (&run.decided, &run.started);
            rows.push(format!(
                "| schedule, {} every 1 s | tick → recorded p50 / p99, ms | {:.1} / {:.1} | |",
                args.schedules, d.p50, d.p99
            ));
            rows.push(format!(
                "| schedule | tick → started p50 / p99, ms | {:.1} / {:.1} | |",
                s.p50, s.p99
            ));
        }
        "log-search" => {
            let mut runs = log_search::log_search(args.log_lines, args.runs.max(1)).await?;
            for run in &runs {
                eprintln!(
                    "log-search: {} lines scanned, engine {:.0} ms, request {:.1} ms",
                    run.scanned_lines, run.took_ms, run.wall_ms
                );
            }
            runs.sort_by(|a, b| a.wall_ms.total_cmp(&b.wall_ms));
            let run = runs[runs.len() / 2];
            line["scanned_lines"] = serde_json::json!(run.scanned_lines);
            line["engine_ms"] = serde_json::json!(run.took_ms);
            line["request_ms"] = serde_json::json!(round(run.wall_ms));
            rows.push(format!(
                "| log-search, one line among {} | request → answer, ms | {:.1} | |",
                run.scanned_lines, run.wall_ms
            ));
        }
        other => bail!("unknown scenario {other}"),
    }
    println!("{line}");
    Ok(rows)
}

fn median(mut figures: Vec<Figure>) -> Figure {
    figures.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    figures[figures.len() / 2].clone()
}

/// Raw JetStream: publish+ack N tasks, then consume+ack each and publish+ack
/// its result, with `concurrency` results in flight.
async fn floor_cycle(server: &NatsServer, args: &Args, run: usize) -> anyhow::Result<Figure> {
    let publisher = jetstream::new(async_nats::connect(server.url()).await?);
    let consumer_js = jetstream::new(async_nats::connect(server.url()).await?);
    let name = format!("FLOOR{run}");
    let stream = publisher
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("floor{run}.>")],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("w".into()),
            filter_subject: format!("floor{run}.task.>"),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let body = Bytes::from(vec![b'x'; 100]);
    let started = Instant::now();
    // Publish with a bounded window of un-awaited acks.
    let mut acks = futures::stream::iter((0..args.n).map(|i| {
        let publisher = publisher.clone();
        let body = body.clone();
        async move {
            publisher
                .publish(format!("floor{run}.task.{i}"), body)
                .await?
                .await
        }
    }))
    .buffer_unordered(1_000);
    let mut published = 0;
    while let Some(ack) = acks.next().await {
        ack?;
        published += 1;
    }
    debug_assert_eq!(published, args.n);
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let mut messages = consumer.messages().await?.take(args.n);
    let mut results = tokio::task::JoinSet::new();
    while let Some(message) = messages.try_next().await.map_err(|e| anyhow::anyhow!(e))? {
        let permit = slots.clone().acquire_owned().await?;
        let js = consumer_js.clone();
        let subject = message.subject.replace(".task.", ".result.");
        results.spawn(async move {
            message.ack().await.map_err(|e| anyhow::anyhow!(e))?;
            js.publish(subject, Bytes::from_static(b"ok"))
                .await?
                .await?;
            drop(permit);
            anyhow::Ok(())
        });
    }
    while let Some(done) = results.join_next().await {
        done??;
    }
    let seconds = started.elapsed().as_secs_f64();
    publisher.delete_stream(&name).await?;
    Ok(Figure {
        scenario: "floor",
        tasks: args.n,
        seconds,
    })
}

/// runlog's core: intake (submitted + queued), then claim (started) and
/// result (succeeded), `concurrency` executions at a time.
async fn lifecycle_cycle(server: &NatsServer, args: &Args) -> anyhow::Result<Figure> {
    let engine_js = jetstream::new(async_nats::connect(server.url()).await?);
    let worker_js = jetstream::new(async_nats::connect(server.url()).await?);
    Layout::default().ensure(&engine_js).await?;
    let engine = Journal::new(engine_js, Subjects::default(), "/loadtest/engine");
    let worker = Journal::new(worker_js, Subjects::default(), "/loadtest/worker");
    let mut spec = TaskSpec::new("noop");
    spec.input = serde_json::json!({ "payload": "x".repeat(80) });
    let started = Instant::now();
    futures::stream::iter(0..args.n)
        .map(|_| {
            let (engine, worker, spec) = (&engine, &worker, spec.clone());
            async move {
                // Submit and queue as the engine's intake and reactor do,
                // without their hops: the core's cost alone.
                let exec = ExecutionId::generate();
                let history = engine
                    .transition(&exec, &Command::Submit { spec }, Utc::now())
                    .await?;
                engine
                    .advance(&exec, history, &Command::Enqueue, Utc::now())
                    .await?;
                match Attempt::claim(worker, &exec, "w1", false, Utc::now()).await? {
                    Claim::Started(attempt) => {
                        attempt.succeed(serde_json::Value::Null, Utc::now()).await?;
                    }
                    Claim::Skip { code, .. } => bail!("could not claim {exec}: {code}"),
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<()>()
        .await?;
    Ok(Figure {
        scenario: "lifecycle",
        tasks: args.n,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Resident memory of this process, in bytes (Linux).
pub(crate) fn resident_bytes() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |pages| pages * 4096.0)
}

/// The engine's intake, started in this process on a fresh server: `n`
/// submissions over HTTP, then `n` over NATS request/reply, `concurrency`
/// in flight. The reactor runs too (it queues and dispatches each one), as
/// in production.
async fn intake(args: &Args) -> anyhow::Result<(Figure, Figure)> {
    let server = NatsServer::start().context("cannot start nats-server")?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut config = runlog_engine::EngineConfig::local(&server.url());
    config.snapshot_interval = std::time::Duration::ZERO;
    let engine = runlog_engine::Engine::start(config, shutdown.clone()).await?;
    let url = format!("http://{}/v1/executions", engine.addr());
    let body = serde_json::json!({"kind": "noop", "input": {"payload": "x".repeat(80)}});
    let http = reqwest::Client::new();
    let started = Instant::now();
    futures::stream::iter(0..args.n)
        .map(|_| {
            let (http, url, body) = (&http, &url, &body);
            async move {
                let response = http.post(url).json(body).send().await?;
                anyhow::ensure!(
                    response.status().as_u16() == 201,
                    "HTTP {}",
                    response.status()
                );
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<()>()
        .await?;
    let by_http = Figure {
        scenario: "intake_http",
        tasks: args.n,
        seconds: started.elapsed().as_secs_f64(),
    };
    let client = async_nats::connect(server.url()).await?;
    let payload = Bytes::from(body.to_string());
    let started = Instant::now();
    futures::stream::iter(0..args.n)
        .map(|_| {
            let (client, payload) = (&client, payload.clone());
            async move {
                let reply = client.request("runlog.submit.default", payload).await?;
                anyhow::ensure!(!reply.payload.starts_with(b"{\"error\""), "refused");
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<()>()
        .await?;
    let by_nats = Figure {
        scenario: "intake_nats",
        tasks: args.n,
        seconds: started.elapsed().as_secs_f64(),
    };
    // How far behind the reactor (queue + dispatch) ran.
    let projection = engine.projection().clone();
    let queued = || {
        projection
            .counts()
            .get(&runlog_events::Status::Queued)
            .copied()
            .unwrap_or(0) as usize
    };
    while queued() < 2 * args.n {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    eprintln!(
        "intake: every submission queued and dispatched {:.2} s after the last NATS reply",
        started.elapsed().as_secs_f64() - by_nats.seconds
    );
    shutdown.cancel();
    engine.wait().await;
    Ok((by_http, by_nats))
}

/// VmRSS and VmHWM of process `pid`, in MiB.
fn process_memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| (kib / 1024.0 * 10.0).round() / 10.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `n` echo tasks, submitted over NATS with `concurrency` in flight, run by
/// one `runlog worker` process with `concurrency` slots; first submission →
/// last `succeeded` in the engine's projection. Returns the worker's
/// resident memory at rest and its peak.
async fn worker_throughput(args: &Args) -> anyhow::Result<(Figure, f64, f64)> {
    let server = NatsServer::start().context("cannot start nats-server")?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut config = runlog_engine::EngineConfig::local(&server.url());
    config.snapshot_interval = std::time::Duration::ZERO;
    let engine = runlog_engine::Engine::start(config, shutdown.clone()).await?;
    let mut worker = rig::spawn(
        std::process::Command::new(rig::runlog_binary()?)
            .args([
                "worker",
                "--allow-root",
                "--nats-url",
                &server.url(),
                "--id",
                "bench",
            ])
            .args(["--concurrency", &args.concurrency.to_string()]),
    )?;
    let client = async_nats::connect(server.url()).await?;
    let js = jetstream::new(client.clone());
    // At rest: registered and polling.
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(kv) = js.get_key_value("runlog-workers").await
            && let Ok(Some(_)) = kv.get("bench").await
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the worker did not register");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (rest, _) = process_memory_mib(worker.id());
    let payload = Bytes::from(
        serde_json::json!({"kind": "echo", "input": {"payload": "x".repeat(80)}}).to_string(),
    );
    let started = Instant::now();
    futures::stream::iter(0..args.n)
        .map(|_| {
            let (client, payload) = (&client, payload.clone());
            async move {
                client.request("runlog.submit.default", payload).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<()>()
        .await?;
    let projection = engine.projection().clone();
    let done = |p: &runlog_engine::Projection| {
        p.counts()
            .get(&runlog_events::Status::Succeeded)
            .copied()
            .unwrap_or(0) as usize
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    while done(&projection) < args.n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {} finished",
            done(&projection),
            args.n
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (_, peak) = process_memory_mib(worker.id());
    let _ = worker.kill();
    let _ = worker.wait();
    shutdown.cancel();
    engine.wait().await;
    Ok((
        Figure {
            scenario: "worker_echo",
            tasks: args.n,
            seconds,
        },
        rest,
        peak,
    ))
}
