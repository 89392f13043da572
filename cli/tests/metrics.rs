//! `/metrics` of the engine and of a `runlog worker --metrics-addr`
//! process, scraped while 500 tasks run (some fail and retry, some are
//! dead-lettered at once) and once they ended, checked against the log:
//! every counter equals the events of its kind in the execution stream,
//! every histogram counts one observation per attempt it measures.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use async_nats::jetstream;
use futures::StreamExt;
use runlog_engine::{Engine, EngineConfig};
use runlog_events::codec::{self, Limits};
use runlog_events::{Envelope, Event, Subjects};
use runlog_testkit::{NatsServer, eventually};
use serde_json::json;
use tokio_util::sync::CancellationToken;
// The worker process, killed on drop.
use runlog_testkit::KilledOnDrop as Worker;

const PATIENCE: Duration = Duration::from_secs(120);
const SUCCEEDING: usize = 350;
const RETRIED: usize = 100;
const PERMANENT: usize = 50;

/// One sample of a scrape: its labels and value.
type Samples = Vec<(BTreeMap<String, String>, f64)>;

/// A scrape, by metric name.
#[derive(Debug, Default)]
struct Scrape(BTreeMap<String, Samples>);

impl Scrape {
    /// Parses the Prometheus text format (the subset `/metrics` writes).
    fn parse(text: &str) -> Result<Scrape> {
        let mut scrape = Scrape::default();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').context("a sample has a value")?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut map = BTreeMap::new();
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').context("a label is key=value")?;
                map.insert(k.to_owned(), v.trim_matches('"').to_owned());
            }
            let value: f64 = value
                .parse()
                .with_context(|| format!("sample value of {line}"))?;
            scrape
                .0
                .entry(name.to_owned())
                .or_default()
                .push((map, value));
        }
        Ok(scrape)
    }

    /// The sum of `name`'s samples whose labels include every one of `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.0.get(name).map_or(0.0, |samples| {
            samples
                .iter()
                .filter(|(labels, _)| {
                    with.iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
                })
                .map(|(_, v)| v)
                .sum()
        })
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

async fn scrape(http: &reqwest::Client, url: &str) -> Result<Scrape> {
    let response = http.get(url).send().await?.error_for_status()?;
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    Scrape::parse(&response.text().await?)
}

/// Every event of the execution stream, in log order.
async fn log(server: &NatsServer) -> Result<Vec<Envelope>> {
    let client = async_nats::connect(server.url()).await?;
    let js = jetstream::new(client);
    let subjects = Subjects::default();
    let stream = js.get_stream(subjects.exec_stream()).await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subjects.all_events(),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut events = Vec::new();
    let empty = async_nats::HeaderMap::new();
    while let Some(message) = messages.next().await {
        let message = message?;
        let headers = message.headers.as_ref().unwrap_or(&empty);
        events.push(codec::decode(
            headers,
            &message.payload,
            &Limits::default(),
        )?);
        if message.info().map_err(anyhow::Error::msg)?.pending == 0 {
            break;
        }
    }
    Ok(events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_and_worker_metrics_match_the_log_of_500_tasks_with_failures() -> Result<()> {
    let server = NatsServer::start()?;
    let shutdown = CancellationToken::new();
    let mut config = EngineConfig::local(&server.url());
    config.metrics_task_labels = vec!["team".to_owned()];
    let engine = Engine::start(config, shutdown.clone()).await?;
    let base = format!("http://{}", engine.addr());

    let mut child = Command::new(env!("CARGO_BIN_EXE_runlog"))
        .args([
            "worker",
            "--allow-root",
            "--nats-url",
            &server.url(),
            "--id",
            "w1",
        ])
        .args(["--concurrency", "16", "--metrics-addr", "127.0.0.1:0"])
        .args(["--breaker-min-calls", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("the worker's stdout")?;
    let _worker = Worker(child);
    // The worker says where its metrics listen before it takes work; its
    // output is read to the end, so it never writes into a closed pipe.
    let (said, where_) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut said = Some(said);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("metrics on ")
                && let Some(said) = said.take()
            {
                let _ = said.send(url.to_owned());
            }
        }
    });
    let worker_metrics = match tokio::time::timeout(PATIENCE, where_).await {
        Ok(Ok(url)) => url,
        _ => bail!("the worker did not say where its metrics listen"),
    };

    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..SUCCEEDING {
        let team = if i % 2 == 0 { "a" } else { "b" };
        tasks.push(json!({"kind": "echo", "input": {"i": i}, "labels": {"team": team}}));
    }
    for _ in 0..RETRIED {
        tasks.push(json!({
            "kind": "shell",
            "input": {"shell": "exit 1"},
            "retry": {"max_attempts": 2, "backoff_base_ms": 10, "backoff_max_ms": 10},
            "labels": {"team": "c"},
        }));
    }
    for _ in 0..PERMANENT {
        tasks.push(json!({
            "kind": "shell",
            "input": {"shell": "exit 3", "permanent_exit_codes": [3]},
            "labels": {"team": "c"},
        }));
    }
    let url = format!("{base}/v1/executions");
    let submitted: Vec<Result<()>> = futures::stream::iter(tasks)
        .map(|task| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.post(url)
                    .json(&task)
                    .send()
                    .await?
                    .error_for_status()?;
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for result in submitted {
        result?;
    }

    // During the run: the series exist and only ever grow.
    let during = scrape(&http, &format!("{base}/metrics")).await?;
    for name in [
        "runlog_executions_submitted_total",
        "runlog_queue_depth",
        "runlog_projection_lag_events",
        "runlog_sse_clients",
    ] {
        ensure!(during.has(name), "the engine shows {name} during the run");
    }
    let total = (SUCCEEDING + RETRIED + PERMANENT) as f64;
    eventually(PATIENCE, "every task ended", || {
        let (http, url) = (http.clone(), format!("{base}/metrics"));
        async move {
            let s = scrape(&http, &url).await?;
            Ok((s.sum("runlog_executions_ended_total", &[]) == total).then_some(()))
        }
    })
    .await?;
    let engine_metrics = scrape(&http, &format!("{base}/metrics")).await?;
    let worker_metrics = scrape(&http, &worker_metrics).await?;
    let before = during.sum("runlog_executions_ended_total", &[]);
    ensure!(
        before <= engine_metrics.sum("runlog_executions_ended_total", &[]),
        "counters only grow"
    );

    // The log, counted.
    let events = log(&server).await?;
    let count =
        |pick: &dyn Fn(&Event) -> bool| events.iter().filter(|e| pick(&e.event)).count() as f64;
    let started = count(&|e| matches!(e, Event::Started(_)));
    let succeeded = count(&|e| matches!(e, Event::Succeeded(_)));
    let failed = count(&|e| matches!(e, Event::Failed(_)));
    let retries = count(&|e| matches!(e, Event::RetryScheduled(_)));
    let dead = count(&|e| matches!(e, Event::DeadLettered(_)));
    let executions = events
        .iter()
        .map(|e| &e.execution)
        .collect::<std::collections::HashSet<_>>()
        .len() as f64;
    ensure!(
        executions == total && succeeded == SUCCEEDING as f64,
        "{executions} {succeeded}"
    );
    ensure!(
        retries == RETRIED as f64,
        "every exit 1 was retried once: {retries}"
    );
    ensure!(dead == (RETRIED + PERMANENT) as f64, "{dead}");
    ensure!(
        started == succeeded + failed,
        "{started} {succeeded} {failed}"
    );

    let m = &engine_metrics;
    let checks: Vec<(&str, f64, f64)> = vec![
        (
            "submitted",
            m.sum("runlog_executions_submitted_total", &[]),
            executions,
        ),
        (
            "submitted echo of team a",
            m.sum(
                "runlog_executions_submitted_total",
                &[("kind", "echo"), ("label_team", "a")],
            ),
            (SUCCEEDING / 2) as f64,
        ),
        (
            "attempts",
            m.sum("runlog_attempts_started_total", &[]),
            started,
        ),
        (
            "succeeded",
            m.sum("runlog_executions_ended_total", &[("status", "succeeded")]),
            succeeded,
        ),
        (
            "dead-lettered",
            m.sum(
                "runlog_executions_ended_total",
                &[("status", "dead_lettered")],
            ),
            dead,
        ),
        (
            "retries of failed shells",
            m.sum(
                "runlog_retries_total",
                &[("error_class", "unknown"), ("kind", "shell")],
            ),
            retries,
        ),
        (
            "dead letters, attempts exhausted",
            m.sum(
                "runlog_dead_letters_total",
                &[("reason", "attempts_exhausted"), ("error_class", "unknown")],
            ),
            RETRIED as f64,
        ),
        (
            "dead letters, permanent",
            m.sum(
                "runlog_dead_letters_total",
                &[("reason", "permanent"), ("error_class", "permanent")],
            ),
            PERMANENT as f64,
        ),
        (
            "claim latency observations",
            m.sum(
                "runlog_claim_latency_seconds_count",
                &[("queue", "default")],
            ),
            started,
        ),
        (
            "run duration observations",
            m.sum("runlog_run_duration_seconds_count", &[]),
            succeeded + failed,
        ),
        (
            "failed runs",
            m.sum(
                "runlog_run_duration_seconds_count",
                &[("outcome", "failed")],
            ),
            failed,
        ),
        (
            "queue depth at the end",
            m.sum("runlog_queue_depth", &[]),
            0.0,
        ),
        ("running at the end", m.sum("runlog_running", &[]), 0.0),
        (
            "dead letters in the read model",
            m.sum("runlog_executions", &[("status", "dead_lettered")]),
            dead,
        ),
        (
            "lag at the end",
            m.sum("runlog_projection_lag_events", &[]),
            0.0,
        ),
    ];
    let w = &worker_metrics;
    let worker_checks: Vec<(&str, f64, f64)> = vec![
        (
            "worker succeeded runs",
            w.sum("runlog_worker_runs_total", &[("outcome", "succeeded")]),
            succeeded,
        ),
        (
            "worker failed runs",
            w.sum(
                "runlog_worker_runs_total",
                &[("outcome", "failed"), ("kind", "shell")],
            ),
            failed,
        ),
        (
            "worker run durations",
            w.sum("runlog_worker_run_duration_seconds_count", &[]),
            started,
        ),
        (
            "worker result appends",
            w.sum(
                "runlog_worker_publish_duration_seconds_count",
                &[("op", "result")],
            ),
            started,
        ),
        (
            "worker claims",
            w.sum(
                "runlog_worker_publish_duration_seconds_count",
                &[("op", "claim")],
            ),
            started,
        ),
        ("worker slots", w.sum("runlog_worker_slots", &[]), 16.0),
        (
            "worker busy slots at the end",
            w.sum("runlog_worker_slots", &[("state", "busy")]),
            0.0,
        ),
    ];
    let wrong: Vec<String> = checks
        .iter()
        .chain(&worker_checks)
        .filter(|(_, got, want)| got != want)
        .map(|(what, got, want)| format!("{what}: /metrics says {got}, the log {want}"))
        .collect();
    ensure!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The duration histograms' buckets are cumulative up to +Inf = count.
    let inf = m.sum("runlog_run_duration_seconds_bucket", &[("le", "+Inf")]);
    ensure!(inf == succeeded + failed, "+Inf bucket {inf}");

    // A target that keeps failing opens its breaker, and the engine shows it.
    for _ in 0..10 {
        let task = json!({
            "kind": "shell",
            "input": {"shell": "exit 1"},
            "retry": {"max_attempts": 1},
            "breaker": "flaky",
        });
        http.post(&url)
            .json(&task)
            .send()
            .await?
            .error_for_status()?;
    }
    let opened = eventually(PATIENCE, "the breaker of flaky opens", || {
        let (http, url) = (http.clone(), format!("{base}/metrics"));
        async move {
            let s = scrape(&http, &url).await?;
            let open = s.sum(
                "runlog_breaker_state",
                &[("key", "flaky"), ("state", "open")],
            );
            Ok((open == 1.0).then_some(s))
        }
    })
    .await?;
    ensure!(
        opened.sum("runlog_breaker_state", &[("key", "flaky")]) == 1.0,
        "one state per breaker is 1"
    );

    // Every name the docs list is served, and the Grafana dashboard uses
    // only those.
    let documented = names_in(include_str!("../../docs/metrics.md"), "| `");
    let served: std::collections::BTreeSet<String> = opened
        .0
        .keys()
        .chain(worker_metrics.0.keys())
        .map(|name| base_name(name))
        .collect();
    ensure!(
        documented == served,
        "documented {documented:?}\nserved {served:?}"
    );
    let dashboard = include_str!("../../deploy/grafana/runlog.json");
    let used = names_in(dashboard, "");
    let unknown: Vec<_> = used.difference(&documented).collect();
    ensure!(
        unknown.is_empty() && !used.is_empty(),
        "the dashboard uses {unknown:?}"
    );
    shutdown.cancel();
    engine.wait().await;
    Ok(())
}

/// The metric names (`runlog_…`) in `text` that follow `before`, without
/// a histogram's `_bucket`, `_sum` and `_count` suffixes.
fn names_in(text: &str, before: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    let needle = format!("{before}runlog_");
    while let Some(at) = rest.find(&needle) {
        let start = at + before.len();
        let name: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        names.insert(base_name(&name));
        rest = &rest[start + name.len()..];
    }
    names
}

fn base_name(name: &str) -> String {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
        .to_owned()
}
