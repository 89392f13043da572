//! Rate limits and concurrency keys shared by two workers, against a real
//! nats-server: one apply per workspace, a rate that holds across workers,
//! a dead worker's lease that expires, and fairness between keys.

mod common;

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use chrono::{DateTime, Utc};
use common::{Harness, Probe, spec};
use runlog_events::journal::History;
use runlog_events::stream::Layout;
use runlog_events::{Event, ExecutionId, Status, TaskSpec};
use runlog_testkit::eventually;
use runlog_worker::runtime::WorkerConfig;
use tokio::time::Instant;

const WITHIN: Duration = Duration::from_secs(20);

/// A worker config for these tests: short limit poll.
fn config(h: &Harness, id: &str) -> WorkerConfig {
    let mut config = h.config(id);
    config.concurrency = 4.try_into().unwrap();
    config.limits.poll = Duration::from_millis(100);
    config
}

fn keyed(rate: Option<&str>, concurrency: Option<&str>, input: serde_json::Value) -> TaskSpec {
    let mut spec = spec("echo", input);
    spec.rate_key = rate.map(str::to_owned);
    spec.concurrency_key = concurrency.map(str::to_owned);
    spec
}

/// The time of the first event of `ty`.
fn time_of(history: &History, ty: &str) -> Option<DateTime<Utc>> {
    history
        .events
        .iter()
        .find(|r| r.envelope.event_type().as_str() == ty)
        .map(|r| r.envelope.time)
}

/// Waits until every execution succeeded; returns their histories.
async fn all_succeeded(h: &Harness, execs: &[ExecutionId]) -> Result<Vec<History>> {
    let mut histories = Vec::new();
    for exec in execs {
        let history = h.wait_status(exec, Status::Succeeded, WITHIN).await?;
        ensure!(
            history.state.attempt == 1,
            "{exec} took {} attempts",
            history.state.attempt
        );
        histories.push(history);
    }
    Ok(histories)
}

#[tokio::test]
async fn one_apply_per_workspace_runs_at_a_time_across_two_workers() -> Result<()> {
    let h = Harness::start().await?;
    // The limit comes from the shared table, not from the workers' flags.
    let table = Layout::default().limits_bucket(&h.js).await?;
    table.put("concurrency.workspace=prod", "1".into()).await?;
    let probe = Probe::new(&["echo"]);
    let workers = [
        h.worker(config(&h, "w1"), &probe).await?,
        h.worker(config(&h, "w2"), &probe).await?,
    ];
    let mut prod = Vec::new();
    let mut other = Vec::new();
    for i in 0..12 {
        let input = serde_json::json!({"sleep_ms": 60});
        prod.push(
            h.submit(keyed(None, Some("workspace=prod"), input.clone()))
                .await?,
        );
        if i % 3 == 0 {
            other.push(h.submit(keyed(None, Some("workspace=dev"), input)).await?);
        }
    }
    let histories = all_succeeded(&h, &prod).await?;
    all_succeeded(&h, &other).await?;
    for worker in workers {
        worker.stop().await?;
    }

    let mut intervals: Vec<(DateTime<Utc>, DateTime<Utc>, String)> = histories
        .iter()
        .map(|history| {
            let started = time_of(history, "started").context("started")?;
            let ended = time_of(history, "succeeded").context("succeeded")?;
            let worker = history
                .events
                .iter()
                .find_map(|r| match &r.envelope.event {
                    Event::Started(s) => Some(s.worker.clone()),
                    _ => None,
                })
                .context("the started worker")?;
            Ok((started, ended, worker))
        })
        .collect::<Result<_>>()?;
    intervals.sort();
    for pair in intervals.windows(2) {
        ensure!(
            pair[0].1 <= pair[1].0,
            "two prod attempts overlap: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
    let on: std::collections::BTreeSet<&str> = intervals.iter().map(|i| i.2.as_str()).collect();
    println!("prod attempts ran one at a time, on {on:?}");
    Ok(())
}

#[tokio::test]
async fn a_rate_key_never_starts_more_than_its_rate_in_one_second_across_two_workers() -> Result<()>
{
    let h = Harness::start().await?;
    let probe = Probe::new(&["echo"]);
    let mut workers = Vec::new();
    for id in ["w1", "w2"] {
        let mut config = config(&h, id);
        config.limits.rates = vec!["provider=openai:5/s".parse()?];
        workers.push(h.worker(config, &probe).await?);
    }
    let mut execs = Vec::new();
    for _ in 0..20 {
        execs.push(
            h.submit(keyed(Some("provider=openai"), None, serde_json::json!({})))
                .await?,
        );
    }
    let histories = all_succeeded(&h, &execs).await?;
    for worker in workers {
        worker.stop().await?;
    }

    let mut starts: Vec<DateTime<Utc>> = histories
        .iter()
        .map(|history| time_of(history, "started").context("started"))
        .collect::<Result<_>>()?;
    starts.sort();
    // The documented window: no interval [t, t + 1 s) holds more than 5.
    for (i, start) in starts.iter().enumerate() {
        let within = starts[i..]
            .iter()
            .take_while(|s| **s - *start < chrono::Duration::seconds(1))
            .count();
        ensure!(
            within <= 5,
            "{within} starts within 1 s of {start}; every start: {:?}",
            starts
                .iter()
                .map(|s| (*s - starts[0]).num_microseconds().unwrap_or(0))
                .collect::<Vec<_>>()
        );
    }
    let span = (starts[19] - starts[0]).num_milliseconds();
    // 20 starts at 5/s need three full periods, and the limit is used up.
    ensure!(span >= 3000, "20 starts took only {span} ms");
    ensure!(
        span < 5500,
        "20 starts took {span} ms: the rate is not used up"
    );
    println!("20 starts in {span} ms");
    Ok(())
}

#[tokio::test]
async fn a_killed_workers_lease_frees_its_slot_within_its_ttl() -> Result<()> {
    let h = Harness::start().await?;
    let ttl = Duration::from_secs(2);
    let probe = Probe::new(&["echo"]);
    let limited = |id| {
        let mut config = config(&h, id);
        config.limits.concurrency = vec!["deploy=eu:1".parse().unwrap()];
        config.limits.lease_ttl = ttl;
        config
    };
    let doomed = h.worker(limited("doomed"), &probe).await?;
    let first = h
        .submit(keyed(
            None,
            Some("deploy=eu"),
            serde_json::json!({"hang": true}),
        ))
        .await?;
    h.wait_status(&first, Status::Running, WITHIN).await?;
    // The lease is renewed while the attempt runs.
    let leases = Layout::default().leases_bucket(&h.js).await?;
    let revision = || async {
        let entry = leases.entry("concurrency.deploy=eu.0").await?;
        Ok::<_, anyhow::Error>(entry.map(|e| e.revision))
    };
    let taken = eventually(WITHIN, "the lease", || async { revision().await }).await?;
    eventually(WITHIN, "a renewal of the lease", || async {
        Ok(revision().await?.filter(|r| *r != taken))
    })
    .await?;

    doomed.kill().await;
    let killed = Instant::now();
    let survivor = h.worker(limited("survivor"), &probe).await?;
    let second = h
        .submit(keyed(None, Some("deploy=eu"), serde_json::json!({})))
        .await?;
    h.wait_status(&second, Status::Succeeded, WITHIN).await?;
    let waited = killed.elapsed();
    survivor.stop().await?;
    // The lease was renewed at most a third of the TTL before the kill.
    ensure!(
        waited >= ttl / 2,
        "the second deploy started {waited:?} after the kill: the lease was not held"
    );
    ensure!(
        waited <= ttl + Duration::from_millis(1500),
        "the slot stayed taken {waited:?} after the kill (TTL {ttl:?})"
    );
    println!("the dead worker's slot freed {waited:?} after the kill (TTL {ttl:?})");
    Ok(())
}

#[tokio::test]
async fn a_noisy_key_at_its_limit_does_not_hold_up_other_keys() -> Result<()> {
    let h = Harness::start().await?;
    let probe = Probe::new(&["echo"]);
    let mut noisy = Vec::new();
    let mut quiet = Vec::new();
    // The backlog of A is in front of B, at the same priority.
    for _ in 0..200 {
        let input = serde_json::json!({"sleep_ms": 10});
        noisy.push(h.submit(keyed(None, Some("customer=a"), input)).await?);
    }
    for _ in 0..20 {
        let input = serde_json::json!({"sleep_ms": 10});
        quiet.push(h.submit(keyed(None, Some("customer=b"), input)).await?);
    }
    let mut workers = Vec::new();
    for id in ["w1", "w2"] {
        let mut config = config(&h, id);
        config.limits.concurrency = vec!["customer=a:1".parse()?, "*:4".parse()?];
        workers.push(h.worker(config, &probe).await?);
    }
    let began = Instant::now();
    all_succeeded(&h, &quiet).await?;
    let quiet_done = began.elapsed();
    let noisy_done_then = probe
        .spans()
        .iter()
        .filter(|s| noisy.contains(&s.execution))
        .count();
    // Every A item still runs, once, without spending its deliveries.
    eventually(
        Duration::from_secs(40),
        "the A backlog to drain",
        || async { Ok((probe.spans().len() >= 220).then_some(())) },
    )
    .await?;
    let noisy_done = began.elapsed();
    all_succeeded(&h, &noisy).await?;
    for worker in workers {
        worker.stop().await?;
    }
    println!(
        "B's 20 tasks done after {quiet_done:?} ({noisy_done_then} of A's 200 by then); \
         A's backlog drained after {noisy_done:?}"
    );
    ensure!(
        noisy_done_then <= 50,
        "{noisy_done_then} A tasks ran before the last B"
    );
    ensure!(
        quiet_done * 3 < noisy_done,
        "B was not served long before A drained"
    );
    Ok(())
}
