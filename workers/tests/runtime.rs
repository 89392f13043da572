//! The worker runtime against a real nats-server: priority draining,
//! capacity rules, labels, cancellation, deadlines, shutdown, crashes,
//! the resource guard, the registry and telemetry.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use chrono::Utc;
use common::{Harness, Probe, labels, seq_of, spec, timeline};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runlog_events::decider::Command;
use runlog_events::event::TimeoutScope;
use runlog_events::{ErrorClass, Event, Priority, Status};
use runlog_testkit::eventually;
use runlog_worker::runtime::{ResourceProbe, Usage, WorkerEntry};
use tokio::time::Instant;

const WITHIN: Duration = Duration::from_secs(15);

#[tokio::test]
async fn one_slot_drains_high_first_and_every_kth_pick_ages_to_a_lower_level() -> Result<()> {
    let h = Harness::start().await?;
    // The backlog is in place before the worker starts.
    let mut by_exec = HashMap::new();
    for (priority, count) in [
        (Priority::Low, 3),
        (Priority::Normal, 3),
        (Priority::High, 6),
    ] {
        for _ in 0..count {
            let mut spec = spec("echo", serde_json::json!({}));
            spec.priority = priority;
            by_exec.insert(h.submit(spec).await?, priority);
        }
    }
    let probe = Probe::new(&["echo"]);
    let mut config = h.config("w1");
    config.concurrency = 1.try_into()?;
    config.aging_every = 3;
    let worker = h.worker(config, &probe).await?;

    let mut starts = Vec::new();
    for exec in by_exec.keys() {
        let history = h.wait_status(exec, Status::Succeeded, WITHIN).await?;
        starts.push((seq_of(&history, "started").unwrap(), by_exec[exec]));
    }
    worker.stop().await?;
    starts.sort();
    let order: Vec<&str> = starts.iter().map(|(_, p)| p.as_str()).collect();
    // Picks 3 and 6 start at normal, pick 9 at low; once high is empty the
    // rule falls through to the lower levels.
    assert_eq!(
        order,
        [
            "high", "high", "normal", "high", "high", "normal", "high", "high", "low", "normal",
            "low", "low"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn capacity_limits_and_exclusive_kinds_hold_over_a_random_mix() -> Result<()> {
    let h = Harness::start().await?;
    let kinds = ["plan", "build", "apply", "echo"];
    let probe = Probe::new(&kinds);
    let mut config = h.config("w1");
    config.concurrency = 8.try_into()?;
    config.capacity = vec![
        "plan=3".parse()?,
        "build=2".parse()?,
        "apply=exclusive".parse()?,
    ];
    let limits: HashMap<&str, usize> =
        [("plan", 3), ("build", 2), ("apply", 1), ("echo", 8)].into();
    let began = Instant::now();
    let worker = h.worker(config, &probe).await?;

    let mut rng = StdRng::seed_from_u64(7);
    let total = 500;
    let mut execs = Vec::new();
    for _ in 0..total {
        let kind = match rng.random_range(0..100) {
            0..8 => "apply",
            8..35 => "plan",
            35..60 => "build",
            _ => "echo",
        };
        let mut spec = spec(
            kind,
            serde_json::json!({"sleep_ms": rng.random_range(1..12)}),
        );
        spec.priority = Priority::ALL[rng.random_range(0..3)];
        execs.push(h.submit(spec).await?);
    }
    eventually(Duration::from_secs(40), "every task to run", || async {
        Ok((probe.spans().len() >= total).then_some(()))
    })
    .await?;
    let mut histories = Vec::new();
    for exec in &execs {
        histories.push(h.wait_status(exec, Status::Succeeded, WITHIN).await?);
    }
    let elapsed = began.elapsed();
    worker.stop().await?;
    println!(
        "{total} tasks in {elapsed:.2?}: {:.0} tasks/s",
        total as f64 / elapsed.as_secs_f64()
    );

    // From the handlers' own clocks.
    let spans = probe.spans();
    ensure!(spans.len() == total, "{} spans", spans.len());
    let first = spans.iter().map(|s| s.start).min().unwrap();
    let last = spans.iter().map(|s| s.end).max().unwrap();
    println!(
        "handlers ran from the first start to the last end in {:.2?}",
        last - first
    );
    let intervals: Vec<(&str, Instant, Instant)> = spans
        .iter()
        .map(|s| (s.kind.as_str(), s.start, s.end))
        .collect();
    check_overlaps(&intervals, &limits, 8, "handler clocks")?;

    // From the log: [started, succeeded] in stream sequences, a total order.
    let mut logged = Vec::new();
    for history in &histories {
        ensure!(history.state.attempt == 1, "an attempt was lost or retried");
        let kind = history.state.spec.as_ref().unwrap().kind.as_str();
        logged.push((
            kind,
            seq_of(history, "started").unwrap(),
            seq_of(history, "succeeded").unwrap(),
        ));
    }
    check_overlaps(&logged, &limits, 8, "log sequences")?;
    Ok(())
}

/// No exclusive interval overlaps another, and no kind (and no worker)
/// ever runs more than its limit at once.
fn check_overlaps<T: Ord + Copy + std::fmt::Debug>(
    intervals: &[(&str, T, T)],
    limits: &HashMap<&str, usize>,
    concurrency: usize,
    source: &str,
) -> Result<()> {
    for (i, (kind, start, end)) in intervals.iter().enumerate() {
        if *kind != "apply" {
            continue;
        }
        for (j, (other, s, e)) in intervals.iter().enumerate() {
            ensure!(
                i == j || !(*start < *e && *s < *end),
                "{source}: exclusive {kind} {start:?}..{end:?} overlaps {other} {s:?}..{e:?}"
            );
        }
    }
    // Sweep: ends sort before starts at the same instant.
    let mut edges: Vec<(T, i32, &str)> = intervals
        .iter()
        .flat_map(|(k, s, e)| [(*s, 1, *k), (*e, -1, *k)])
        .collect();
    edges.sort_by_key(|e| (e.0, e.1));
    let mut running: HashMap<&str, i32> = HashMap::new();
    let mut total = 0;
    let mut peak: HashMap<&str, i32> = HashMap::new();
    for (_, step, kind) in edges {
        let n = running.entry(kind).or_default();
        *n += step;
        total += step;
        let p = peak.entry(kind).or_default();
        *p = (*p).max(*n);
        ensure!(
            *n as usize <= limits[kind],
            "{source}: {n} of {kind} at once (limit {})",
            limits[kind]
        );
        ensure!(total as usize <= concurrency, "{source}: {total} at once");
    }
    println!("{source}: peak per kind {peak:?}");
    Ok(())
}

#[tokio::test]
async fn a_task_requiring_a_label_runs_only_on_a_matching_worker() -> Result<()> {
    let h = Harness::start().await?;
    let probe = Probe::new(&["echo"]);
    let mut eu = h.config("eu-1");
    eu.labels = labels(&[("pool", "eu")]);
    let mut backup = h.config("backup-1");
    backup.labels = labels(&[("pool", "backup"), ("zone", "a")]);
    let workers = [h.worker(eu, &probe).await?, h.worker(backup, &probe).await?];

    let mut wanted = BTreeMap::new();
    for i in 0..8 {
        let mut spec = spec("echo", serde_json::json!({"sleep_ms": 5}));
        if i % 2 == 0 {
            spec.worker_labels = labels(&[("pool", "backup")]);
        }
        wanted.insert(h.submit(spec).await?, i % 2 == 0);
    }
    let mut ran_on = BTreeMap::new();
    for (exec, needs_backup) in &wanted {
        let history = h.wait_status(exec, Status::Succeeded, WITHIN).await?;
        let worker = timeline(&history)
            .into_iter()
            .find_map(|(_, _, w)| w)
            .unwrap();
        if *needs_backup {
            assert_eq!(worker, "backup-1", "{exec} ran on {worker}");
        }
        *ran_on.entry(worker).or_insert(0) += 1;
    }
    println!("tasks per worker: {ran_on:?}");
    for worker in workers {
        worker.stop().await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_cancel_signal_stops_the_running_handler_and_the_execution_ends_cancelled() -> Result<()>
{
    let h = Harness::start().await?;
    let probe = Probe::new(&["hang"]);
    let worker = h.worker(h.config("w1"), &probe).await?;
    let exec = h
        .submit(spec("hang", serde_json::json!({"hang": true})))
        .await?;
    h.wait_status(&exec, Status::Running, WITHIN).await?;

    let cancel = Command::RequestCancel {
        reason: "operator".into(),
        operation: None,
    };
    h.journal.transition(&exec, &cancel, Utc::now()).await?;
    let client = h.js.client();
    client.publish(h.subjects.cancel(&exec), "".into()).await?;
    let history = h.wait_status(&exec, Status::Cancelled, WITHIN).await?;
    assert_eq!(history.state.reason.as_deref(), Some("operator"));
    let spans = probe.spans();
    assert!(spans.len() == 1 && spans[0].cancelled, "{spans:?}");
    worker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_attempt_past_its_deadline_is_recorded_timed_out() -> Result<()> {
    let h = Harness::start().await?;
    let probe = Probe::new(&["hang"]);
    let worker = h.worker(h.config("w1"), &probe).await?;
    let mut spec = spec("hang", serde_json::json!({"hang": true}));
    spec.attempt_timeout_ms = Some(300);
    let exec = h.submit(spec).await?;
    let history = h.wait_status(&exec, Status::Failed, WITHIN).await?;
    let timed_out = history.events.iter().any(
        |r| matches!(&r.envelope.event, Event::TimedOut(t) if t.scope == TimeoutScope::Attempt),
    );
    assert!(timed_out, "{:?}", timeline(&history));
    assert_eq!(history.state.errors[0].error.class, ErrorClass::Timeout);
    let span = &probe.spans()[0];
    assert!(span.cancelled);
    assert!(span.end - span.start >= Duration::from_millis(290));
    worker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn shutdown_hands_a_long_task_back_and_another_worker_finishes_it() -> Result<()> {
    let h = Harness::start().await?;
    let probe = Probe::new(&["long"]);
    let mut first = h.config("first");
    first.drain_timeout = Duration::from_millis(300);
    let first = h.worker(first, &probe).await?;
    let exec = h
        .submit(spec("long", serde_json::json!({"hang_until_attempt": 2})))
        .await?;
    h.wait_status(&exec, Status::Running, WITHIN).await?;
    let second = h.worker(h.config("second"), &probe).await?;

    let stopping = Instant::now();
    first.stop().await?;
    let stopped = stopping.elapsed();
    let history = h.wait_status(&exec, Status::Succeeded, WITHIN).await?;
    let handed_over = stopping.elapsed();
    second.stop().await?;
    println!(
        "first worker stopped in {stopped:.2?}; the task succeeded {handed_over:.2?} after the shutdown began"
    );
    let events: Vec<_> = timeline(&history).into_iter().skip(2).collect();
    assert_eq!(
        events,
        [
            ("started".into(), 1, Some("first".into())),
            ("attempt_lost".into(), 1, None),
            ("started".into(), 2, Some("second".into())),
            ("succeeded".into(), 2, None),
        ]
    );
    // Handed back with an immediate NAK: no ack_wait in between.
    assert!(handed_over < Duration::from_secs(5), "{handed_over:?}");
    Ok(())
}

#[tokio::test]
async fn a_killed_worker_s_task_is_finished_by_another_after_ack_wait() -> Result<()> {
    let h = Harness::start().await?;
    let probe = Probe::new(&["long"]);
    let ack_wait = Duration::from_millis(1500);
    let mut first = h.config("doomed");
    first.ack_wait = ack_wait;
    let first = h.worker(first, &probe).await?;
    let exec = h
        .submit(spec("long", serde_json::json!({"hang_until_attempt": 2})))
        .await?;
    h.wait_status(&exec, Status::Running, WITHIN).await?;
    // Held past ack_wait with in-progress acks: not redelivered while it lives.
    tokio::time::sleep(ack_wait * 2).await;
    let history = h.journal.load(&exec).await?;
    assert_eq!(history.state.attempt, 1, "{:?}", timeline(&history));

    first.kill().await;
    let killed = Instant::now();
    let mut second = h.config("survivor");
    second.ack_wait = ack_wait;
    let second = h.worker(second, &probe).await?;
    let history = h.wait_status(&exec, Status::Succeeded, WITHIN).await?;
    println!("finished {:.2?} after the kill", killed.elapsed());
    second.stop().await?;
    let events: Vec<_> = timeline(&history).into_iter().skip(2).collect();
    assert_eq!(
        events,
        [
            ("started".into(), 1, Some("doomed".into())),
            ("attempt_lost".into(), 1, None),
            ("started".into(), 2, Some("survivor".into())),
            ("succeeded".into(), 2, None),
        ]
    );
    Ok(())
}

/// A probe whose load the test sets.
struct Switch(Arc<AtomicBool>);

impl ResourceProbe for Switch {
    fn sample(&mut self) -> Usage {
        let overloaded = self.0.load(Ordering::SeqCst);
        Usage {
            memory_percent: if overloaded { 99.0 } else { 10.0 },
            load_one: 0.1,
        }
    }
}

async fn entry(h: &Harness, id: &str) -> Result<Option<WorkerEntry>> {
    let Ok(store) = h.js.get_key_value(h.subjects.workers_bucket()).await else {
        return Ok(None);
    };
    Ok(match store.get(id).await? {
        Some(bytes) => Some(serde_json::from_slice(&bytes)?),
        None => None,
    })
}

#[tokio::test]
async fn the_resource_guard_pauses_and_resumes_fetching() -> Result<()> {
    let h = Harness::start().await?;
    let probe = Probe::new(&["echo"]);
    let overloaded = Arc::new(AtomicBool::new(true));
    let mut config = h.config("w1");
    config.guard.max_memory_percent = 90.0;
    let worker = runlog_worker::runtime::Worker::connect(config, probe.registry())
        .await?
        .with_probe(Switch(overloaded.clone()));
    let worker = h.spawn(worker);
    eventually(WITHIN, "a paused registry entry", || async {
        Ok(entry(&h, "w1")
            .await?
            .filter(|e| e.paused_for_resources)
            .map(|_| ()))
    })
    .await?;

    let exec = h.submit(spec("echo", serde_json::json!({}))).await?;
    // An observation window, not a synchronisation: nothing may start.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(h.journal.load(&exec).await?.state.status, Status::Queued);

    overloaded.store(false, Ordering::SeqCst);
    h.wait_status(&exec, Status::Succeeded, WITHIN).await?;
    let e = entry(&h, "w1").await?.expect("registered");
    assert!(!e.paused_for_resources);
    worker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_registry_entry_shows_the_worker_and_disappears_on_shutdown() -> Result<()> {
    let h = Harness::start().await?;
    let probe = Probe::new(&["hang", "plan"]);
    let mut config = h.config("reg-1");
    config.concurrency = 3.try_into()?;
    config.labels = labels(&[("pool", "eu")]);
    config.capacity = vec!["plan=2".parse()?, "hang=1,exclusive".parse()?];
    config.drain_timeout = Duration::from_millis(100);
    let worker = h.worker(config, &probe).await?;
    let exec = h
        .submit(spec("hang", serde_json::json!({"hang": true})))
        .await?;
    let e = eventually(WITHIN, "the running attempt in the entry", || async {
        Ok(entry(&h, "reg-1")
            .await?
            .filter(|e| e.running.iter().any(|r| r.execution == exec)))
    })
    .await?;
    assert_eq!(e.id, "reg-1");
    assert_eq!(e.queues, ["default"]);
    assert_eq!(e.labels, labels(&[("pool", "eu")]));
    assert_eq!(e.concurrency, 3);
    let rules: Vec<String> = e.capacity.iter().map(|r| r.to_string()).collect();
    assert_eq!(rules, ["plan=2", "hang=1,exclusive"]);
    assert_eq!(
        (e.running[0].attempt, e.running[0].kind.as_str()),
        (1, "hang")
    );
    assert!(!e.paused_for_resources);
    assert!(e.last_seen >= e.started_at);
    assert_eq!(e.version, env!("CARGO_PKG_VERSION"));
    let bucket =
        h.js.get_stream(format!("KV_{}", h.subjects.workers_bucket()))
            .await?
            .info()
            .await?
            .config
            .max_age;
    assert_eq!(bucket, Duration::from_millis(600));

    worker.stop().await?;
    assert!(entry(&h, "reg-1").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn logs_arrive_in_consecutive_batches_with_coalesced_progress_and_heartbeats() -> Result<()> {
    let h = Harness::start().await?;
    let probe = Probe::new(&["chatty"]);
    let worker = h.worker(h.config("w1"), &probe).await?;
    let exec = h
        .submit(spec(
            "chatty",
            serde_json::json!({"lines": 250, "progress": 1000, "sleep_ms": 700}),
        ))
        .await?;
    h.wait_status(&exec, Status::Succeeded, WITHIN).await?;
    worker.stop().await?;

    let logs = h.telemetry(format!("runlog.log.{exec}")).await?;
    let mut next = 0;
    for envelope in &logs {
        let Event::Log(batch) = &envelope.event else {
            panic!("not a log batch")
        };
        assert_eq!(batch.first_line, next);
        assert!(batch.lines.len() <= 100);
        assert_eq!(batch.lines[0].line, format!("line {next}"));
        next += batch.lines.len() as u64;
    }
    assert_eq!(next, 250);
    let progress = h.telemetry(format!("runlog.progress.{exec}")).await?;
    assert!(
        (1..=5).contains(&progress.len()),
        "{} progress events",
        progress.len()
    );
    let Event::Progress(last) = &progress.last().unwrap().event else {
        panic!("not progress")
    };
    assert_eq!(last.percent, Some(100.0));
    let beats = h.telemetry(format!("runlog.heartbeat.{exec}")).await?;
    assert!(beats.len() >= 2, "{} heartbeats", beats.len());
    Ok(())
}

#[tokio::test]
async fn a_missing_secret_or_an_unknown_kind_fails_the_attempt_for_good() -> Result<()> {
    let h = Harness::start().await?;
    let probe = Probe::new(&["echo"]);
    let secrets: BTreeMap<String, String> = [("present".to_owned(), "s3cr3t".to_owned())].into();
    let worker = runlog_worker::runtime::Worker::connect(h.config("w1"), probe.registry())
        .await?
        .with_secrets(secrets);
    let worker = h.spawn(worker);

    let mut needs = spec("echo", serde_json::json!({}));
    needs.secrets.insert("TOKEN".into(), "api-token".into());
    needs.secrets.insert("OTHER".into(), "present".into());
    let missing = h.submit(needs).await?;
    let unknown = h.submit(spec("nope", serde_json::json!({}))).await?;
    for (exec, class, names) in [
        (&missing, ErrorClass::Permission, "api-token"),
        (&unknown, ErrorClass::InvalidInput, "nope"),
    ] {
        let history = h.wait_status(exec, Status::Failed, WITHIN).await?;
        let error = &history.state.errors[0].error;
        assert_eq!(error.class, class);
        assert!(!error.retryable);
        assert!(error.message.contains(names), "{}", error.message);
        assert!(!error.message.contains("s3cr3t"));
    }
    assert!(probe.spans().is_empty());
    worker.stop().await?;
    Ok(())
}
