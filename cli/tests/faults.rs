//! The fault-injection suite: real `runlog engine` and `runlog worker`
//! processes on real nats-servers, killed with SIGKILL while they work.
//! Every load test ends with 0 executions lost and 0 completed twice,
//! counted from the execution log itself (`RUNLOG_EXEC`), not from the
//! engine's read model.
//!
//! The default run is short (a few hundred tasks per test);
//! `RUNLOG_FAULTS_LONG=1` runs 5,000 per test:
//!
//! ```sh
//! RUNLOG_FAULTS_LONG=1 cargo test -p runlog --test faults -- --nocapture --test-threads=1
//! ```
//!
//! docs/faults.md describes each test and the figures of a long run.

#[path = "faults/harness.rs"]
mod harness;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use async_nats::HeaderMap;
use chrono::Utc;
use harness::{EngineProcess, Ledger, Load, WorkerProcesses, secs};
use runlog_events::codec::{self, Format};
use runlog_events::event::{Started, Succeeded};
use runlog_events::{Envelope, Event, ExecutionId, Subjects};
use runlog_testkit::{Cluster, NatsServer, eventually};
use serde_json::{Value, json};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_in_a_loop_lose_no_task_and_complete_none_twice() -> Result<()> {
    let _serial = harness::serial().await;
    let load = Load::pick(300, 3);
    let dir = tempfile::tempdir()?;
    let server = NatsServer::start()?;
    let urls = vec![server.url()];
    let _engine = EngineProcess::start(&urls, 1, dir.path())?;
    let mut workers = WorkerProcesses::start(load.workers, load.concurrency, &urls, 1, dir.path())?;
    let client = async_nats::connect(server.url()).await?;

    let began = Utc::now();
    let feeder = tokio::spawn(harness::feed(client.clone(), "kw", load));
    // The fault schedule: one worker killed (and replaced) every 1.5 s
    // while the feeder runs and until the backlog is done.
    let mut ledger = Ledger::default();
    let ids = ids("kw", load);
    let every = Duration::from_millis(1500);
    let stop_killing = Instant::now() + load.feeding() + Duration::from_secs(30);
    let mut kills = 0;
    let mut last_kill = began;
    while Instant::now() < stop_killing {
        tokio::time::sleep(every).await;
        ledger.catch_up(&client).await?;
        if feeder.is_finished() && ledger.ended(&ids) == ids.len() {
            break;
        }
        workers.restart(kills % load.workers)?;
        last_kill = Utc::now();
        kills += 1;
    }
    feeder.await??;
    let verdict = ledger.settle(&client, &ids, load.settle).await?;
    let done = Utc::now();
    ensure!(
        workers.exited().is_empty(),
        "workers exited on their own:{}",
        workers.exit_report()
    );
    let last_end = ledger
        .executions
        .values()
        .filter_map(|t| t.ended)
        .max()
        .unwrap_or(done);
    verdict.report(
        "workers killed",
        &ledger,
        &format!(
            "{kills} kill -9 of a worker every {every:?} ({} workers x {} slots, {} worker processes \
             in all, tasks sleep {:?}); \
             run {}; last end {} after the last kill; longest stall between two completions {:.2?}",
            load.workers,
            load.concurrency,
            workers.started(),
            load.sleep,
            secs(last_end - began),
            secs(last_end - last_kill),
            ledger.longest_stall(began, last_end),
        ),
    )?;
    ensure!(
        kills >= 3,
        "only {kills} kills: the run was too short to test anything"
    );
    ensure!(
        verdict.attempts_lost > 0,
        "no attempt was taken over from a killed worker: the kills hit nothing"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_killed_twice_mid_run_loses_no_task_and_completes_none_twice() -> Result<()> {
    let _serial = harness::serial().await;
    let load = Load::pick(300, 2);
    let dir = tempfile::tempdir()?;
    let server = NatsServer::start()?;
    let urls = vec![server.url()];
    let mut engine = EngineProcess::start(&urls, 1, dir.path())?;
    let workers = WorkerProcesses::start(load.workers, load.concurrency, &urls, 1, dir.path())?;
    let client = async_nats::connect(server.url()).await?;

    let began = Utc::now();
    let feeder = tokio::spawn(harness::feed(client.clone(), "ke", load));
    let ids = ids("ke", load);
    let mut ledger = Ledger::default();
    let mut figures = Vec::new();
    for third in [1, 2] {
        let at = ids.len() * third / 3;
        ledger
            .until(
                &client,
                &format!("{at} submissions recorded"),
                load.feeding() + Duration::from_secs(60),
                |ledger| (ledger.executions.len() >= at).then_some(()),
            )
            .await?;
        let killed = Utc::now();
        engine.kill();
        // The outage: the engine stays down for a second.
        tokio::time::sleep(Duration::from_secs(1)).await;
        engine.restart()?;
        let listening = Utc::now();
        // A task submitted after the restart completes: the engine is back.
        let resumed = ledger
            .until(
                &client,
                "a task submitted after the kill completes",
                Duration::from_secs(60),
                |ledger| ledger.first_end_submitted_after(killed),
            )
            .await?;
        figures.push(format!(
            "kill {third}: API back {} after the kill, a task submitted after the kill ended {} after it",
            secs(listening - killed),
            secs(resumed - killed),
        ));
    }
    feeder.await??;
    let verdict = ledger.settle(&client, &ids, load.settle).await?;
    let mut workers = workers;
    ensure!(
        workers.exited().is_empty(),
        "a worker exited on its own:{}",
        workers.exit_report()
    );
    ensure!(engine.is_running(), "the engine exited on its own");
    let last_end = ledger.executions.values().filter_map(|t| t.ended).max();
    verdict
        .report(
            "engine killed",
            &ledger,
            &format!(
                "2 kill -9 of the engine, 1 s down each; {}; run {}",
                figures.join("; "),
                secs(last_end.unwrap_or_else(Utc::now) - began),
            ),
        )
        .with_context(|| harness::tail(engine.log(), 20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nats_server_is_rejoined_by_every_component_on_its_own() -> Result<()> {
    let _serial = harness::serial().await;
    let load = Load::pick(300, 2);
    let dir = tempfile::tempdir()?;
    let mut server = NatsServer::start()?;
    let urls = vec![server.url()];
    let mut engine = EngineProcess::start(&urls, 1, dir.path())?;
    let mut workers = WorkerProcesses::start(load.workers, load.concurrency, &urls, 1, dir.path())?;
    // The test's own connection reconnects like every other client.
    let client = async_nats::connect(server.url()).await?;

    let began = Utc::now();
    let feeder = tokio::spawn(harness::feed(client.clone(), "rn", load));
    let ids = ids("rn", load);
    let mut ledger = Ledger::default();
    let third = ids.len() / 3;
    ledger
        .until(
            &client,
            "a third of the submissions recorded",
            load.feeding() + Duration::from_secs(60),
            |ledger| (ledger.executions.len() >= third).then_some(()),
        )
        .await?;
    let killed = Utc::now();
    // kill -9 and start again on the same port with the same file store.
    tokio::task::block_in_place(|| server.restart())?;
    let up = Utc::now();
    let resumed = ledger
        .until(
            &client,
            "a task submitted after the kill completes",
            Duration::from_secs(90),
            |ledger| ledger.first_end_submitted_after(killed),
        )
        .await
        .with_context(|| harness::tail(engine.log(), 30))?;
    feeder.await??;
    let verdict = ledger.settle(&client, &ids, load.settle).await?;
    ensure!(
        engine.is_running(),
        "the engine exited instead of reconnecting"
    );
    ensure!(
        workers.exited().is_empty(),
        "a worker exited instead of reconnecting:{}",
        workers.exit_report()
    );
    let health = reqwest::get(format!("{}/healthz", engine.base)).await?;
    ensure!(
        health.status().is_success(),
        "engine /healthz after the restart: {}",
        health.status()
    );
    let last_end = ledger.executions.values().filter_map(|t| t.ended).max();
    verdict.report(
        "nats restarted",
        &ledger,
        &format!(
            "kill -9 + restart of the only nats-server (file store): down {}, a task submitted \
             after the kill ended {} after it ({}); run {}",
            secs(up - killed),
            secs(resumed - killed),
            ledger.first_after(killed),
            secs(last_end.unwrap_or_else(Utc::now) - began),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_of_a_three_node_cluster_loses_nothing() -> Result<()> {
    let _serial = harness::serial().await;
    let load = Load::pick(300, 2);
    let dir = tempfile::tempdir()?;
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(3))?;
    let urls = cluster.urls();
    let engine = EngineProcess::start(&urls, 3, dir.path())?;
    let mut workers = WorkerProcesses::start(load.workers, load.concurrency, &urls, 3, dir.path())?;
    let addrs = urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()?;
    let client = async_nats::connect(addrs.as_slice()).await?;
    // Short API timeouts: the node we ask may be the one that was killed.
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(client.clone());
    let subjects = Subjects::default();
    let stream_info = |js: async_nats::jetstream::Context| async move {
        let mut stream = js
            .get_stream(Subjects::default().exec_stream())
            .await
            .ok()?;
        let info = stream.info().await.ok()?;
        let cluster = info.cluster.clone()?;
        Some((cluster.leader?, info.config.num_replicas))
    };
    let (_, replicas) = eventually(Duration::from_secs(30), "the execution stream", || async {
        Ok(stream_info(js.clone()).await)
    })
    .await?;
    ensure!(
        replicas == 3,
        "{} has {replicas} replicas",
        subjects.exec_stream()
    );

    let began = Utc::now();
    let feeder = tokio::spawn(harness::feed(client.clone(), "kl", load));
    let ids = ids("kl", load);
    let mut ledger = Ledger::default();
    let third = ids.len() / 3;
    ledger
        .until(
            &client,
            "a third of the submissions recorded",
            load.feeding() + Duration::from_secs(60),
            |ledger| (ledger.executions.len() >= third).then_some(()),
        )
        .await?;
    let (leader, _) = stream_info(js.clone()).await.context("the stream leader")?;
    let node = cluster
        .node_index(&leader)
        .with_context(|| format!("leader {leader} is not a node"))?;
    let killed = Utc::now();
    cluster.kill_node(node);
    let (elected, _) = eventually(Duration::from_secs(60), "a new stream leader", || async {
        Ok(stream_info(js.clone()).await.filter(|(l, _)| *l != leader))
    })
    .await?;
    let elected_at = Utc::now();
    let resumed = ledger
        .until(
            &client,
            "a task submitted after the kill completes",
            Duration::from_secs(90),
            |ledger| ledger.first_end_submitted_after(killed),
        )
        .await
        .with_context(|| {
            format!(
                "ledger: {} executions, {} ended\nengine:\n{}\nworker 0:\n{}",
                ledger.executions.len(),
                ledger.ended(&ids),
                harness::tail(engine.log(), 15),
                harness::tail(&dir.path().join("worker-0.log"), 15)
            )
        })?;
    tokio::task::block_in_place(|| cluster.restart_node(node))?;
    let rejoined = Utc::now();
    feeder.await??;
    let verdict = ledger.settle(&client, &ids, load.settle).await?;
    let last_end = ledger.executions.values().filter_map(|t| t.ended).max();
    let reported = verdict.report(
        "cluster leader killed",
        &ledger,
        &format!(
            "kill -9 of {leader} (leader of {}, R3): {elected} elected {} after the kill, a task \
             submitted after the kill ended {} after it ({}), {leader} back and healthy {} \
             after the kill; run {}",
            subjects.exec_stream(),
            secs(elected_at - killed),
            secs(resumed - killed),
            ledger.first_after(killed),
            secs(rejoined - killed),
            secs(last_end.unwrap_or_else(Utc::now) - began),
        ),
    );
    ensure!(
        workers.exited().is_empty(),
        "a worker exited on its own during the leader's kill:{}",
        workers.exit_report()
    );
    reported.with_context(|| harness::tail(engine.log(), 20))
}

/// The engine's counters, from `GET /v1/stats`.
async fn stats(http: &reqwest::Client, base: &str) -> Result<Value> {
    Ok(http
        .get(format!("{base}/v1/stats"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

async fn execution(http: &reqwest::Client, base: &str, id: &str) -> Result<Value> {
    Ok(http
        .get(format!("{base}/v1/executions/{id}"))
        .send()
        .await?
        .json()
        .await?)
}

/// Random bytes that are neither JSON nor MessagePack of an event.
fn garbage(len: usize) -> Vec<u8> {
    (0..len).map(|_| rand_byte()).collect()
}

fn rand_byte() -> u8 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0x2545_f491_4f6c_dd1d);
    // xorshift: deterministic, good enough for junk.
    let mut x = STATE.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    (x >> 24) as u8
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_every_subject_is_counted_and_everything_keeps_running() -> Result<()> {
    // JetStream refuses headers of 64 KiB and more (error 10097).
    const HUGE_HEADER: usize = 60 << 10;
    let _serial = harness::serial().await;
    let dir = tempfile::tempdir()?;
    // A large max_payload, so an oversized body reaches runlog's own limits.
    let server = NatsServer::builder().max_payload(8 << 20).start()?;
    let urls = vec![server.url()];
    let mut engine = EngineProcess::start(&urls, 1, dir.path())?;
    let mut workers = WorkerProcesses::start(1, 4, &urls, 1, dir.path())?;
    let client = async_nats::connect(server.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    let http = reqwest::Client::new();
    let base = engine.base.clone();
    let s = Subjects::default();
    let json_headers = || {
        let mut h = HeaderMap::new();
        h.insert(codec::header::CONTENT_TYPE, codec::JSON);
        h
    };
    let dlq_messages = || async {
        let mut dlq = js.get_stream(s.dlq_stream()).await.ok()?;
        Some(dlq.info().await.ok()?.state.messages)
    };
    // The worker creates the dispatch consumers: wait for them.
    eventually(
        Duration::from_secs(20),
        "the dispatch consumers",
        || async {
            let stream = js.get_stream(s.exec_stream()).await?;
            Ok(stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
                    &s.dispatch_consumer(&"default".parse()?, runlog_events::Priority::Normal),
                )
                .await
                .ok())
        },
    )
    .await?;
    let before = stats(&http, &base).await?;
    let dlq_before = dlq_messages().await.context("the DLQ stream")?;

    // A victim for out-of-order events: queued on a queue no worker serves.
    let victim: Value = http
        .post(format!("{base}/v1/executions"))
        .json(&json!({"kind": "shell", "queue": "parked", "input": {"shell": "true"}}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let victim = ExecutionId::new(victim["id"].as_str().unwrap_or_default())?;
    eventually(Duration::from_secs(20), "the victim is queued", || async {
        let view = execution(&http, &base, victim.as_str()).await?;
        Ok((view["status"] == "queued").then_some(()))
    })
    .await?;

    let id = |name: &str| ExecutionId::new(name).expect("a valid id");
    let publish = |subject: String, headers: HeaderMap, body: Vec<u8>| {
        let js = js.clone();
        async move {
            js.publish_with_headers(subject.clone(), headers, body.into())
                .await
                .with_context(|| format!("publish to {subject}"))?
                .await
                .with_context(|| format!("stored on {subject}"))?;
            anyhow::Ok(())
        }
    };
    let envelope = |exec: &ExecutionId, attempt: u32, event: Event| {
        let envelope = Envelope::new(exec.clone(), attempt, Utc::now(), "/test/faults", event);
        codec::encode(&envelope, Format::Json).expect("encodes")
    };

    // On the execution log (`runlog.ev.*`), which the reactor and the
    // projection consume. Reactor: 2 bad (it reads only the types it reacts
    // to: the two `submitted`, not `started`, `queued` or the unknown
    // `exploded`); projection: 5 undecodable (2 more below, on work
    // subjects).
    publish(
        s.event(&id("bad-bytes"), runlog_events::EventType::Submitted),
        HeaderMap::new(),
        garbage(300),
    )
    .await?;
    publish(
        s.event(&id("bad-schema"), runlog_events::EventType::Submitted),
        json_headers(),
        br#"{"specversion":"1.0","hello":"world"}"#.to_vec(),
    )
    .await?;
    publish(
        "runlog.ev.bad-type.exploded".into(),
        json_headers(),
        br#"{"type":"exploded"}"#.to_vec(),
    )
    .await?;
    // Over the codec's 1 MiB but within the stream's limit (the codec's
    // plus 64 KiB for headers); a larger one is refused at the door.
    publish(
        s.event(&id("bad-size"), runlog_events::EventType::Started),
        json_headers(),
        vec![b' '; codec::DEFAULT_MAX_PAYLOAD + (16 << 10)],
    )
    .await?;
    let too_large = publish(
        s.event(&id("too-large"), runlog_events::EventType::Started),
        json_headers(),
        vec![b' '; 2 << 20],
    )
    .await;
    ensure!(
        too_large.is_err(),
        "a 2 MiB event was stored: the stream has no message size limit"
    );
    let mut huge = json_headers();
    huge.insert("X-Junk", "j".repeat(HUGE_HEADER).as_str());
    publish(
        s.event(&id("bad-headers"), runlog_events::EventType::Queued),
        huge,
        garbage(100),
    )
    .await?;
    // Valid events that the state machine refuses. Projection: 3 refused.
    let (h, b) = envelope(
        &id("never-submitted"),
        1,
        Event::Started(Started {
            worker: "ghost".into(),
            deadline: None,
        }),
    );
    publish(
        s.event(&id("never-submitted"), runlog_events::EventType::Started),
        h,
        b.to_vec(),
    )
    .await?;
    let (h, b) = envelope(
        &victim,
        1,
        Event::Succeeded(Succeeded {
            output: json!("forged"),
            resources: None,
        }),
    );
    publish(
        s.event(&victim, runlog_events::EventType::Succeeded),
        h,
        b.to_vec(),
    )
    .await?;
    let (h, b) = envelope(
        &victim,
        7,
        Event::Started(Started {
            worker: "ghost".into(),
            deadline: None,
        }),
    );
    publish(
        s.event(&victim, runlog_events::EventType::Started),
        h,
        b.to_vec(),
    )
    .await?;

    // Timers and dead-letter advisories (reactor: 2 bad).
    publish(
        s.timer(&id("bad-timer"), "retry"),
        HeaderMap::new(),
        garbage(50),
    )
    .await?;
    publish(
        s.timer(&id("unknown-timer"), "attempt"),
        json_headers(),
        br#"{"timer":"attempt","attempt":1}"#.to_vec(),
    )
    .await?;
    publish(
        s.schedule(&id("bad-schedule"), "retry"),
        HeaderMap::new(),
        garbage(50),
    )
    .await?;
    publish(
        format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.x",
            s.exec_stream()
        ),
        HeaderMap::new(),
        garbage(80),
    )
    .await?;
    publish(
        format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.x",
            s.exec_stream()
        ),
        HeaderMap::new(),
        br#"{"stream_seq": 999999999}"#.to_vec(),
    )
    .await?;

    // Work items (`queued` events, read by the worker and the projection):
    // junk, a wrong schema and a `queued` of an unknown execution are
    // terminated by the worker, which the server records as MSG_TERMINATED
    // advisories in the DLQ stream, and skipped by the projection.
    let queue: runlog_events::QueueName = "default".parse()?;
    let normal = runlog_events::Priority::Normal;
    publish(
        s.queued(&id("bad-work"), &queue, normal),
        HeaderMap::new(),
        garbage(120),
    )
    .await?;
    publish(
        s.queued(&id("bad-work-schema"), &queue, normal),
        json_headers(),
        br#"{"execution":42}"#.to_vec(),
    )
    .await?;
    let ghost = id("ghost-work");
    let (ghost_headers, ghost_body) = envelope(
        &ghost,
        1,
        Event::Queued(runlog_events::event::Queued {
            queue: queue.clone(),
            priority: normal,
            kind: "shell".into(),
            worker_labels: Default::default(),
            capacity: None,
            spec: None,
        }),
    );
    publish(
        s.queued(&ghost, &queue, normal),
        ghost_headers,
        ghost_body.to_vec(),
    )
    .await?;

    // Telemetry, live feeds and the cancel signal (core NATS or the logs
    // stream): read only on demand, they must not break the readers.
    let target = id("after-the-junk");
    publish(
        s.event(&target, runlog_events::EventType::Log),
        HeaderMap::new(),
        garbage(64),
    )
    .await?;
    publish(
        s.event(&target, runlog_events::EventType::Progress),
        HeaderMap::new(),
        garbage(64),
    )
    .await?;
    publish(
        s.event(&target, runlog_events::EventType::Heartbeat),
        HeaderMap::new(),
        garbage(64),
    )
    .await?;
    client
        .publish(
            format!("runlog.live.ev.{target}.queued.default.normal"),
            garbage(64).into(),
        )
        .await?;
    client
        .publish(s.cancel(&id("nobody-runs-this")), garbage(64).into())
        .await?;

    // The NATS intake door answers every bad request with an error.
    let mut refused = Vec::new();
    for (what, headers, body) in [
        ("random bytes", HeaderMap::new(), garbage(200)),
        (
            "wrong schema",
            json_headers(),
            br#"{"kind": 7, "input": []}"#.to_vec(),
        ),
        ("oversized", json_headers(), vec![b' '; 2 << 20]),
        (
            "huge headers",
            {
                let mut h = HeaderMap::new();
                h.insert("X-Junk", "j".repeat(64 << 10).as_str());
                h
            },
            garbage(100),
        ),
        (
            "msgpack junk",
            {
                let mut h = HeaderMap::new();
                h.insert(codec::header::CONTENT_TYPE, codec::MSGPACK);
                h
            },
            garbage(100),
        ),
    ] {
        let reply = client
            .request_with_headers("runlog.submit.default", headers, body.into())
            .await?;
        let reply: Value = serde_json::from_slice(&reply.payload)?;
        ensure!(
            reply["error"]["code"].is_string(),
            "{what}: accepted? {reply}"
        );
        refused.push(format!("{what} → {}", reply["error"]["code"]));
    }

    // A normal task submitted afterwards completes (its id was hit by junk
    // telemetry, a junk live event and junk log lines first).
    let reply: Value = http
        .post(format!("{base}/v1/executions"))
        .json(&json!({"id": target, "kind": "shell", "input": {"shell": "echo fine"}}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(reply["id"] == json!(target), "{reply}");
    let view = eventually(
        Duration::from_secs(30),
        "the normal task succeeds",
        || async {
            let view = execution(&http, &base, target.as_str()).await?;
            Ok((view["status"] == "succeeded").then_some(view))
        },
    )
    .await
    .with_context(|| harness::tail(engine.log(), 20))?;
    let logs: Value = http
        .get(format!("{base}/v1/executions/{target}/logs"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;

    // Every bad item is counted somewhere a user can see it.
    let rejected = |name: &'static str| {
        let (http, base) = (&http, &base);
        async move {
            eventually(
                Duration::from_secs(20),
                &format!("{name} is rejected"),
                || async {
                    let view = execution(http, base, name).await?;
                    Ok((view["status"] == "rejected").then_some(view))
                },
            )
            .await
        }
    };
    let bad_bytes = rejected("bad-bytes").await?;
    let bad_schema = rejected("bad-schema").await?;
    let after = eventually(Duration::from_secs(20), "the counters move", || async {
        let after = stats(&http, &base).await?;
        let count = |stats: &Value, at: &str| stats.pointer(at)?.as_u64();
        let moved = |at: &str| Some(count(&after, at)? - count(&before, at)?);
        let skipped = moved("/skipped_events").context("no skipped_events")?;
        let bad = moved("/reactor/bad").context("no reactor.bad")?;
        Ok((skipped >= 11 && bad >= 4).then_some(after))
    })
    .await;
    let after = match after {
        Ok(after) => after,
        Err(e) => {
            let now = stats(&http, &base).await?;
            anyhow::bail!("{e}: stats before {before}, now {now}");
        }
    };
    let dlq_after = eventually(
        Duration::from_secs(20),
        "three MSG_TERMINATED advisories and two forged ones",
        || async { Ok(dlq_messages().await.filter(|n| *n >= dlq_before + 5)) },
    )
    .await?;
    let events: Value = http
        .get(format!("{base}/v1/executions/{victim}/events"))
        .send()
        .await?
        .json()
        .await?;
    let victim_view = execution(&http, &base, victim.as_str()).await?;
    ensure!(
        victim_view["status"] == "queued",
        "forged events moved the victim: {victim_view}"
    );
    ensure!(
        events["skipped"].as_array().map(Vec::len) == Some(2),
        "the victim's two forged events are listed as skipped: {events}"
    );
    ensure!(engine.is_running(), "the engine exited");
    ensure!(
        workers.exited().is_empty(),
        "the worker exited:{}",
        workers.exit_report()
    );
    // End the victim cleanly.
    http.post(format!("{base}/v1/executions/{victim}/cancel"))
        .send()
        .await?
        .error_for_status()?;

    let skipped = after["skipped_events"].as_u64().unwrap_or(0)
        - before["skipped_events"].as_u64().unwrap_or(0);
    let bad = after["reactor"]["bad"].as_u64().unwrap_or(0)
        - before["reactor"]["bad"].as_u64().unwrap_or(0);
    ensure!(
        (skipped, bad, dlq_after - dlq_before) == (11, 4, 5),
        "every bad item counted once: skipped_events +{skipped} (want 11), reactor bad +{bad} \
         (want 4), RUNLOG_DLQ +{} (want 5)",
        dlq_after - dlq_before
    );
    println!(
        "[bad input] projection skipped_events +{skipped} (7 undecodable + 4 refused sent), \
         reactor bad +{bad} (2 `submitted` + 1 timer + 1 advisory sent), RUNLOG_DLQ +{} \
         (3 MSG_TERMINATED of the junk, wrong-schema and unknown-execution work items + the 2 forged advisories), rejected: bad-bytes ({}), bad-schema ({}); victim's forged \
         events listed as skipped: {}; intake refused: {}; the normal task then succeeded \
         ({} log lines readable); engine and worker still running",
        dlq_after - dlq_before,
        bad_bytes["reason"],
        bad_schema["reason"],
        events["skipped"],
        refused.join(", "),
        logs["lines"].as_array().map_or(0, Vec::len),
    );
    ensure!(
        !view["output"].is_null(),
        "the normal task has no output: {view}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_task_shows_no_progress_and_times_out_at_its_deadline() -> Result<()> {
    let _serial = harness::serial().await;
    let dir = tempfile::tempdir()?;
    let server = NatsServer::start()?;
    let urls = vec![server.url()];
    let engine = EngineProcess::start(&urls, 1, dir.path())?;
    let _workers = WorkerProcesses::start(1, 4, &urls, 1, dir.path())?;
    let http = reqwest::Client::new();
    let base = engine.base.clone();
    let client = async_nats::connect(server.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    let s = Subjects::default();

    // Two tasks that hang with their worker alive: one has an attempt
    // deadline (the worker enforces it, the engine backs it), the other
    // only an execution deadline (the engine's timer ends it).
    let attempt_deadline = Duration::from_secs(4);
    let execution_deadline = Duration::from_secs(6);
    let specs = [
        json!({"id": "stuck-attempt", "kind": "shell", "input": {"shell": "exec sleep 600"},
               "attempt_timeout_ms": attempt_deadline.as_millis() as u64,
               "retry": {"max_attempts": 1}}),
        json!({"id": "stuck-execution", "kind": "shell", "input": {"shell": "exec sleep 600"},
               "timeout_ms": execution_deadline.as_millis() as u64}),
    ];
    for spec in &specs {
        http.post(format!("{base}/v1/executions"))
            .json(spec)
            .send()
            .await?
            .error_for_status()?;
    }
    // While it hangs: running, no progress ever, heartbeats fresh.
    for id in ["stuck-attempt", "stuck-execution"] {
        let view = eventually(Duration::from_secs(20), &format!("{id} runs"), || async {
            let view = execution(&http, &base, id).await?;
            Ok((view["status"] == "running").then_some(view))
        })
        .await?;
        let exec = ExecutionId::new(id)?;
        let heartbeat = eventually(
            Duration::from_secs(10),
            &format!("{id} heartbeats"),
            || async {
                Ok(runlog_events::direct::last(
                    &js,
                    &s.logs_stream(),
                    &s.event(&exec, runlog_events::EventType::Heartbeat),
                )
                .await?)
            },
        )
        .await?;
        let envelope = codec::decode(
            &heartbeat.headers,
            &heartbeat.payload,
            &codec::Limits::default(),
        )?;
        ensure!(view["progress"].is_null(), "{id} reports progress: {view}");
        // The engine runs with RUNLOG_STUCK_AFTER=2s: silent for 2 s while
        // its worker still beats, the attempt is shown as stuck before its
        // deadline ends it.
        let stuck = eventually(
            Duration::from_secs(4),
            &format!("{id} shown stuck"),
            || async {
                let view = execution(&http, &base, id).await?;
                Ok((view["stuck"] == true).then_some(view))
            },
        )
        .await?;
        println!(
            "[stuck] {id}: status {}, progress {}, attempt deadline {}, last heartbeat {} ms ago \
             (at {}); GET /v1/executions/{{id}} shows stuck: {}",
            stuck["status"],
            stuck["progress"],
            stuck["attempts"][0]["deadline"],
            (Utc::now() - envelope.time).num_milliseconds(),
            stuck["last_heartbeat_at"],
            stuck["stuck"],
        );
        ensure!(
            stuck["status"] == "running",
            "{id} is stuck while running: {stuck}"
        );
    }
    ledger_deadlines(&client, &attempt_deadline, &execution_deadline).await
}

/// Both stuck tasks end at their deadlines, once each, with the right event.
async fn ledger_deadlines(
    client: &async_nats::Client,
    attempt_deadline: &Duration,
    execution_deadline: &Duration,
) -> Result<()> {
    let ids = [
        ExecutionId::new("stuck-attempt")?,
        ExecutionId::new("stuck-execution")?,
    ];
    let mut ledger = Ledger::default();
    let verdict = ledger.settle(client, &ids, Duration::from_secs(40)).await?;
    verdict.report("stuck", &ledger, "two hung shell tasks, worker alive")?;
    let history = |id: &ExecutionId| {
        let told = &ledger.executions[id];
        (told.state.started_at, told.ended, told.state.status)
    };
    let (started, ended, status) = history(&ids[0]);
    let took = (ended.context("ended")? - started.context("started")?).to_std()?;
    println!(
        "[stuck] stuck-attempt ended {status:?}: timed out {took:.2?} after its start (deadline {attempt_deadline:?})"
    );
    ensure!(
        took >= *attempt_deadline && took < *attempt_deadline + Duration::from_secs(5),
        "stuck-attempt ended {took:?} after its start, its deadline is {attempt_deadline:?}"
    );
    ensure!(
        status == runlog_events::Status::DeadLettered,
        "one attempt allowed: a timed-out attempt ends dead-lettered, not {status:?}"
    );
    let told = &ledger.executions[&ids[1]];
    let took = (told.ended.context("ended")? - told.submitted.context("submitted")?).to_std()?;
    println!(
        "[stuck] stuck-execution ended {:?} {took:.2?} after its submission (deadline {execution_deadline:?})",
        told.state.status
    );
    ensure!(
        told.state.status == runlog_events::Status::TimedOut,
        "stuck-execution ended {:?}",
        told.state.status
    );
    ensure!(
        took >= *execution_deadline && took < *execution_deadline + Duration::from_secs(5),
        "stuck-execution ended {took:?} after its submission, its deadline is {execution_deadline:?}"
    );
    Ok(())
}

/// The ids [`harness::feed`] gives a run.
fn ids(run: &str, load: Load) -> Vec<ExecutionId> {
    (0..load.tasks)
        .map(|n| ExecutionId::new(format!("{run}-{n}")).expect("a valid id"))
        .collect()
}
