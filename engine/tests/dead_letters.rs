//! Dead letters against a real nats-server and engine: finding them,
//! replaying them in bulk (once each, linked to their originals), bulk
//! cancels, and operations that are cancelled or interrupted by a restart.
//! Tests play the worker's part (claim, fail) through the journal; the
//! engine's reactor queues each execution and dead-letters it.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use chrono::Utc;
use common::{Running, start};
use futures::StreamExt;
use runlog_engine::projection::OPERATION_LABEL;
use runlog_events::decider::Command;
use runlog_events::journal::{History, Journal, TransitionError};
use runlog_events::{ErrorClass, ExecutionId, QueueName, Status, TaskError, TaskSpec};
use runlog_testkit::{NatsServer, eventually};
use serde_json::{Value, json};

/// Records an execution of `spec` that ends dead-lettered: submitted,
/// queued, claimed, failed with `class` (which must not be retried) and
/// resolved into a dead letter. Where the engine's reactor runs, it races
/// us to queue and to resolve: whoever is first records it.
async fn dead_letter(journal: &Journal, spec: TaskSpec, class: ErrorClass) -> Result<ExecutionId> {
    let id = ExecutionId::generate();
    let now = Utc::now();
    let history = journal
        .advance(&id, History::default(), &Command::Submit { spec }, now)
        .await?;
    let history = match journal.advance(&id, history, &Command::Enqueue, now).await {
        Ok(history) => history,
        Err(TransitionError::Rejected(_)) => journal.load(&id).await?, // the reactor queued it
        Err(e) => return Err(e.into()),
    };
    let claim = Command::Claim {
        worker: "test-worker".into(),
        redelivered: false,
    };
    let history = journal.advance(&id, history, &claim, now).await?;
    let fail = Command::Fail {
        attempt: history.state.attempt,
        error: TaskError::new(class, format!("{class:?} went wrong")),
    };
    let history = journal.advance(&id, history, &fail, now).await?;
    let resolve = Command::ResolveFailure { jitter: 0.0 };
    match journal.advance(&id, history, &resolve, now).await {
        Ok(_) | Err(TransitionError::Rejected(_)) => Ok(id), // the reactor resolved it
        Err(e) => Err(e.into()),
    }
}

fn spec(queue: &str, kind: &str, labels: &[(&str, &str)]) -> TaskSpec {
    let mut spec = TaskSpec::new(kind);
    spec.queue = QueueName::new(queue).expect("a valid queue");
    spec.retry.max_attempts = 1;
    spec.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    spec
}

/// Creates `n` dead letters of `spec` concurrently.
async fn dead_letters(
    run: &Running,
    n: usize,
    spec: &TaskSpec,
    class: ErrorClass,
) -> Result<Vec<ExecutionId>> {
    futures::stream::iter(0..n)
        .map(|_| dead_letter(&run.journal, spec.clone(), class))
        .buffer_unordered(128)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

fn projection(run: &Running) -> &runlog_engine::Projection {
    run.engine.as_ref().expect("the engine runs").projection()
}

/// Waits until the projection holds `n` dead letters.
async fn until_dead_letters(run: &Running, n: usize, limit: Duration) -> Result<()> {
    eventually(limit, &format!("{n} dead letters"), || async {
        let count = projection(run).dead_letter_count();
        ensure!(count >= n, "{count} of {n} dead letters");
        Ok(Some(()))
    })
    .await
}

/// Waits until operation `id` is no longer running; returns its record.
async fn until_ended(run: &Running, id: &str, limit: Duration) -> Result<Value> {
    let path = format!("/v1/operations/{id}");
    eventually(limit, &format!("operation {id} to end"), || async {
        let (status, op) = run.get(&path).await?;
        ensure!(status == 200 && op["state"] != "running", "{status}: {op}");
        Ok(Some(op))
    })
    .await
}

/// The executions that retry another, by original: (retry, its operation label).
fn retries(run: &Running) -> BTreeMap<ExecutionId, Vec<(ExecutionId, Option<String>)>> {
    let mut out: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for (id, entry) in projection(run).entries() {
        if let Some(spec) = &entry.state.spec
            && let Some(original) = &spec.retry_of
        {
            let op = spec.labels.get(OPERATION_LABEL).cloned();
            out.entry(original.clone()).or_default().push((id, op));
        }
    }
    out
}

fn ids(page: &Value) -> Vec<String> {
    page["dead_letters"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn dead_letters_are_listed_filtered_and_paged() -> Result<()> {
    let mut run = start().await?;
    let billing = spec("billing", "charge", &[("team", "pay")]);
    let mail = spec("mail", "send", &[("team", "ops")]);
    let permanent = dead_letters(&run, 3, &billing, ErrorClass::Permission).await?;
    until_dead_letters(&run, 3, Duration::from_secs(20)).await?;
    let before_mail = Utc::now();
    let exhausted = dead_letters(&run, 2, &mail, ErrorClass::Network).await?;
    until_dead_letters(&run, 5, Duration::from_secs(20)).await?;

    let count = |q: &'static str| {
        let run = &run;
        async move {
            let (status, page) = run.get(&format!("/v1/dead-letters{q}")).await?;
            anyhow::ensure!(status == 200, "{q}: {status} {page}");
            Ok::<_, anyhow::Error>(ids(&page).len())
        }
    };
    assert_eq!(count("").await?, 5);
    assert_eq!(count("?queue=billing").await?, 3);
    assert_eq!(count("?kind=send").await?, 2);
    assert_eq!(count("?class=network").await?, 2);
    assert_eq!(count("?class=permission&queue=mail").await?, 0);
    assert_eq!(count("?reason=permanent").await?, 3);
    assert_eq!(count("?reason=attempts_exhausted").await?, 2);
    assert_eq!(count("?reason=max_deliveries").await?, 0);
    assert_eq!(count("?label=team=ops").await?, 2);
    assert_eq!(count("?replayed=false").await?, 5);
    let since = format!("?since={}", before_mail.to_rfc3339().replace('+', "%2B"));
    let since_count = {
        let (_, page) = run.get(&format!("/v1/dead-letters{since}")).await?;
        ids(&page).len()
    };
    assert_eq!(since_count, 2, "dead-lettered after {before_mail}");
    let (_, page) = run
        .get(&format!(
            "/v1/dead-letters?until={}",
            before_mail.to_rfc3339().replace('+', "%2B")
        ))
        .await?;
    assert_eq!(ids(&page).len(), 3);

    // One item: everything the listing promises.
    let (_, page) = run.get("/v1/dead-letters?queue=mail&limit=1").await?;
    let first = &page["dead_letters"][0];
    assert!(exhausted.iter().any(|id| id.as_str() == first["id"]));
    assert_eq!(first["queue"], "mail");
    assert_eq!(first["kind"], "send");
    assert_eq!(first["labels"], json!({"team": "ops"}));
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["reason"], "attempts_exhausted");
    assert_eq!(first["last_error"]["class"], "network");
    assert_eq!(first["last_error"]["message"], "Network went wrong");
    assert!(first["dead_lettered_at"].is_string());
    assert_eq!(first["replayed"], false);

    // Pages: newest first, each id once.
    let mut seen = Vec::new();
    let mut cursor: Option<u64> = None;
    loop {
        let path = match cursor {
            Some(c) => format!("/v1/dead-letters?limit=2&cursor={c}"),
            None => "/v1/dead-letters?limit=2".to_owned(),
        };
        let (_, page) = run.get(&path).await?;
        seen.extend(ids(&page));
        match page["next_cursor"].as_u64() {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 5);
    // Newest first: the mail dead letters, then the billing ones.
    assert!(exhausted.iter().any(|e| e.as_str() == seen[0]));
    assert!(permanent.iter().any(|p| p.as_str() == seen[4]));

    // The whole error history.
    let (status, one) = run
        .get(&format!("/v1/dead-letters/{}", permanent[1]))
        .await?;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["reason"], "permanent");
    assert_eq!(one["errors"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["errors"][0]["error"]["class"], "permission");
    assert_eq!(one["errors"][0]["attempt"], 1);

    // A retry by hand shows as the dead letter's replay.
    let (status, retried) = run
        .post(&format!("/v1/executions/{}/retry", permanent[1]), json!({}))
        .await?;
    assert_eq!(status, 201, "{retried}");
    let retry_id = retried["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/v1/dead-letters/{}", permanent[1]);
    let one = eventually(
        Duration::from_secs(10),
        "the dead letter replayed",
        || async {
            let (_, one) = run.get(&path).await?;
            ensure!(one["replayed"] == true, "{one}");
            Ok(Some(one))
        },
    )
    .await?;
    assert_eq!(one["replays"], json!([{"id": retry_id}]));
    assert_eq!(count("?replayed=true").await?, 1);

    // Errors name the field.
    for (query, field) in [
        ("?class=bogus", "class"),
        ("?reason=tired", "reason"),
        ("?label=team", "label"),
        ("?since=yesterday", "since"),
        ("?queue=a.b", "queue"),
        ("?limit=many", "limit"),
        ("?replayed=maybe", "replayed"),
        ("?colour=red", "colour"),
    ] {
        let (status, problem) = run.get(&format!("/v1/dead-letters{query}")).await?;
        assert_eq!(status, 400, "{query}: {problem}");
        assert_eq!(problem["code"], "invalid_query", "{query}");
        assert_eq!(problem["field"], field, "{query}");
    }
    let (status, problem) = run.get("/v1/dead-letters/nope").await?;
    assert_eq!((status, problem["code"].as_str()), (404, Some("not_found")));
    let (status, _) = run.get(&format!("/v1/dead-letters/{retry_id}")).await?;
    assert_eq!(status, 404, "a live execution is not a dead letter");
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_dry_run_counts_and_changes_nothing() -> Result<()> {
    let mut run = start().await?;
    let a = spec("dry", "k", &[("batch", "a")]);
    let b = spec("dry", "k", &[("batch", "b")]);
    dead_letters(&run, 4, &a, ErrorClass::InvalidInput).await?;
    dead_letters(&run, 2, &b, ErrorClass::InvalidInput).await?;
    until_dead_letters(&run, 6, Duration::from_secs(20)).await?;
    let executions = projection(&run).len();

    let (status, reply) = run
        .post(
            "/v1/dead-letters/replay",
            json!({"filter": {"queue": "dry", "label": "batch=a"}, "dry_run": true}),
        )
        .await?;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["dry_run"], true);
    assert_eq!(reply["matched"], 4);
    assert_eq!(reply["would_replay"], 4);
    assert_eq!(reply["already_replayed"], 0);
    assert_eq!(reply["sample"].as_array().map(Vec::len), Some(4));
    // Labels as an object, class of the last error.
    let (_, reply) = run
        .post(
            "/v1/dead-letters/replay",
            json!({"name": "n", "filter": {"labels_are": null, "label": {"batch": "b"}, "class": "invalid_input"}, "dry_run": true}),
        )
        .await?;
    assert_eq!(reply["matched"], 2, "{reply}");

    let (_, ops) = run.get("/v1/operations").await?;
    assert_eq!(
        ops["operations"],
        json!([]),
        "a dry run records no operation"
    );
    assert_eq!(
        projection(&run).len(),
        executions,
        "a dry run starts nothing"
    );
    assert!(retries(&run).is_empty());

    // Bad bodies name the field.
    for (body, field) in [
        (json!({"filter": {}}), "name"),
        (json!({"name": "x", "rate_per_sec": 0}), "rate_per_sec"),
        (
            json!({"name": "x", "rate_per_sec": 1_000_000}),
            "rate_per_sec",
        ),
        (json!({"name": "x", "dry_run": "yes"}), "dry_run"),
        (
            json!({"name": "x", "filter": {"class": "bogus"}}),
            "filter.class",
        ),
        (
            json!({"name": "x", "filter": {"reason": "bored"}}),
            "filter.reason",
        ),
        (
            json!({"name": "x", "filter": {"since": "monday"}}),
            "filter.since",
        ),
        (
            json!({"name": "x", "filter": {"status": "queued"}}),
            "filter.status",
        ),
        (json!({"name": "x", "filter": {"queue": 7}}), "filter.queue"),
        (json!({"name": "x", "filter": []}), "filter"),
        (json!({"name": "x", "flter": {}}), "flter"),
        (json!({"name": ""}), "name"),
    ] {
        let (status, problem) = run.post("/v1/dead-letters/replay", body.clone()).await?;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(problem["code"], "invalid_body", "{body}");
        assert_eq!(problem["field"], field, "{body}");
    }
    let (_, ops) = run.get("/v1/operations").await?;
    assert_eq!(ops["operations"], json!([]));
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_bulk_replay_of_ten_thousand_dead_letters_links_each_to_its_original() -> Result<()> {
    const N: usize = 10_000;
    // Without a reactor the test writes each dead letter's history in five
    // appends and nothing reacts to them or to the replays (which stay
    // pending): the operation, the index and the links are what is tested.
    let mut run = common::start_with(NatsServer::start()?, |c| c.reactor = false).await?;
    let created = Instant::now();
    let bulk = spec("bulk", "import", &[("batch", "nightly")]);
    let other = spec("other", "import", &[("batch", "nightly")]);
    let (originals, others) = tokio::try_join!(
        dead_letters(&run, N, &bulk, ErrorClass::Permission),
        dead_letters(&run, 20, &other, ErrorClass::Permission),
    )?;
    until_dead_letters(&run, N + 20, Duration::from_secs(60)).await?;
    eprintln!("{} dead letters in {:.1?}", N + 20, created.elapsed());

    let started = Instant::now();
    let body = json!({
        "name": "bug 1234 fixed",
        "requested_by": "alice",
        "filter": {"queue": "bulk", "class": "permission", "label": "batch=nightly"},
        "rate_per_sec": 10_000,
    });
    let (status, op) = run.post("/v1/dead-letters/replay", body.clone()).await?;
    assert_eq!(status, 202, "{op}");
    let op_id = op["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(op["state"], "running");
    // Progress shows while it runs.
    let op = until_ended(&run, &op_id, Duration::from_secs(60)).await?;
    let took = started.elapsed();
    eprintln!(
        "replayed {N} dead letters in {took:.1?} ({:.0}/s)",
        N as f64 / took.as_secs_f64()
    );
    assert_eq!(op["state"], "finished", "{op}");
    assert_eq!(op["matched"], N);
    assert_eq!(op["done"], N, "{op}");
    assert_eq!(
        (op["skipped"].as_u64(), op["failed"].as_u64()),
        (Some(0), Some(0)),
        "{op}"
    );
    assert_eq!(op["requested_by"], "alice");
    assert_eq!(op["name"], "bug 1234 fixed");
    assert!(op["finished_at"].is_string());

    // Every replay is in the log, once per original, linked to it and
    // labelled with the operation.
    let expected: HashSet<_> = originals.iter().cloned().collect();
    let linked = eventually(Duration::from_secs(30), "a retry of each", || async {
        let links = retries(&run);
        ensure!(links.len() >= N, "{} of {N} retried", links.len());
        Ok(Some(links))
    })
    .await?;
    assert_eq!(linked.len(), N, "one original per replay");
    for (original, replays) in &linked {
        assert!(
            expected.contains(original),
            "{original} was not in the filter"
        );
        assert_eq!(
            replays.len(),
            1,
            "{original} replayed {} times",
            replays.len()
        );
        assert_eq!(replays[0].1.as_deref(), Some(op_id.as_str()));
    }
    // And straight from the log, for a sample.
    let sample = linked.iter().step_by(N / 200).map(|(original, replays)| {
        let (journal, replay) = (&run.journal, replays[0].0.clone());
        async move {
            let history = journal.load(&replay).await?;
            let retry_of = history.state.spec.and_then(|s| s.retry_of);
            anyhow::ensure!(
                retry_of.as_ref() == Some(original),
                "{replay}: {retry_of:?}"
            );
            Ok(())
        }
    });
    futures::future::try_join_all(sample).await?;
    for other in &others {
        assert!(!linked.contains_key(other), "{other} is outside the filter");
    }
    let (_, page) = run
        .get("/v1/dead-letters?queue=bulk&replayed=false")
        .await?;
    assert_eq!(ids(&page).len(), 0);

    // The same filter again replays nothing more.
    let (status, dry) = run
        .post(
            "/v1/dead-letters/replay",
            json!({"filter": body["filter"], "dry_run": true}),
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(
        (dry["matched"].as_u64(), dry["would_replay"].as_u64()),
        (Some(N as u64), Some(0))
    );
    let (status, again) = run.post("/v1/dead-letters/replay", body).await?;
    assert_eq!(status, 202, "{again}");
    let again = until_ended(
        &run,
        again["id"].as_str().unwrap_or_default(),
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(again["state"], "finished");
    assert_eq!(again["done"], 0, "{again}");
    assert_eq!(again["skipped"], N, "{again}");
    let links = retries(&run);
    assert_eq!(
        links.values().map(Vec::len).sum::<usize>(),
        N,
        "no second replay"
    );

    let (_, ops) = run.get("/v1/operations").await?;
    assert_eq!(ops["operations"].as_array().map(Vec::len), Some(2));
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_bulk_cancel_cancels_exactly_the_matching_live_executions() -> Result<()> {
    let mut run = start().await?;
    let mut doomed = Vec::new();
    for i in 0..12 {
        let queue = if i < 10 { "cancel-me" } else { "keep" };
        doomed.push((
            queue,
            run.submit(json!({"queue": queue, "kind": "k", "labels": {"x": "1"}}))
                .await?,
        ));
    }
    let ended = dead_letters(
        &run,
        2,
        &spec("cancel-me", "k", &[("x", "1")]),
        ErrorClass::Permission,
    )
    .await?;
    until_dead_letters(&run, 2, Duration::from_secs(20)).await?;
    // One is running: it gets a cancel request (its worker would stop it).
    let running = doomed[0].1.clone();
    run.wait_status(&running, Status::Queued, None).await?;
    let claim = Command::Claim {
        worker: "w".into(),
        redelivered: false,
    };
    run.journal.transition(&running, &claim, Utc::now()).await?;
    for (_, id) in &doomed {
        if *id != running {
            run.wait_status(id, Status::Queued, None).await?;
        }
    }
    let body = json!({"filter": {"queue": "cancel-me", "label": "x=1"}, "reason": "queue retired"});
    eventually(
        Duration::from_secs(10),
        &format!("{running} running"),
        || async {
            let p = projection(&run);
            Ok(p.get(&running)
                .is_some_and(|e| e.state.status == Status::Running)
                .then_some(()))
        },
    )
    .await?;

    let mut dry = body.clone();
    dry["dry_run"] = json!(true);
    let (status, reply) = run.post("/v1/executions/cancel", dry).await?;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["matched"], 10, "{reply}");

    let (status, problem) = run
        .post("/v1/executions/cancel", json!({"reason": "all"}))
        .await?;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("filter")),
        "{problem}"
    );
    let (status, problem) = run
        .post(
            "/v1/executions/cancel",
            json!({"filter": {"status": "succeeded"}}),
        )
        .await?;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("filter.status")),
        "{problem}"
    );
    let (status, problem) = run
        .post(
            "/v1/executions/cancel",
            json!({"filter": {"class": "network"}}),
        )
        .await?;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("filter.class")),
        "{problem}"
    );

    let (status, op) = run.post("/v1/executions/cancel", body).await?;
    assert_eq!(status, 202, "{op}");
    let op = until_ended(
        &run,
        op["id"].as_str().unwrap_or_default(),
        Duration::from_secs(20),
    )
    .await?;
    assert_eq!(op["kind"], "cancel");
    assert_eq!(op["state"], "finished", "{op}");
    assert_eq!(
        (op["matched"].as_u64(), op["done"].as_u64()),
        (Some(10), Some(10)),
        "{op}"
    );
    for (queue, id) in &doomed {
        let history = run.journal.load(id).await?;
        match *queue {
            "keep" => assert_eq!(history.state.status, Status::Queued, "{id}"),
            _ if *id == running => {
                assert_eq!(history.state.status, Status::Running);
                assert!(history.state.cancel_requested);
                assert!(
                    history
                        .state
                        .reason
                        .unwrap_or_default()
                        .starts_with("queue retired")
                );
            }
            _ => {
                assert_eq!(history.state.status, Status::Cancelled, "{id}");
                assert!(
                    history
                        .state
                        .reason
                        .unwrap_or_default()
                        .contains(op["id"].as_str().unwrap_or("?"))
                );
            }
        }
    }
    for id in &ended {
        assert_eq!(
            run.journal.load(id).await?.state.status,
            Status::DeadLettered
        );
    }
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_cancelled_operation_stops_and_is_audited() -> Result<()> {
    let mut run = start().await?;
    dead_letters(&run, 40, &spec("slow", "k", &[]), ErrorClass::NotFound).await?;
    until_dead_letters(&run, 40, Duration::from_secs(20)).await?;
    let (status, op) = run
        .post(
            "/v1/dead-letters/replay",
            json!({"name": "slowly", "filter": {"queue": "slow"}, "rate_per_sec": 4}),
        )
        .await?;
    assert_eq!(status, 202, "{op}");
    let id = op["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/v1/operations/{id}");
    eventually(Duration::from_secs(10), "one replay done", || async {
        let (_, op) = run.get(&path).await?;
        ensure!(op["done"].as_u64() >= Some(1), "{op}");
        Ok(Some(()))
    })
    .await?;
    let (status, cancelled) = run
        .post(&format!("{path}/cancel"), json!({"requested_by": "bob"}))
        .await?;
    assert_eq!(status, 202, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["cancelled_by"], "bob");
    // The runner stops and writes its last counts: they stay put.
    let settled = eventually(Duration::from_secs(10), "the last counts", || async {
        let (_, a) = run.get(&path).await?;
        let replays = retries(&run).len() as u64;
        ensure!(
            a["done"].as_u64() == Some(replays),
            "{replays} replays: {a}"
        );
        Ok(Some(a))
    })
    .await?;
    assert_eq!(settled["state"], "cancelled");
    let done = settled["done"].as_u64().unwrap_or(0);
    assert!((1..40).contains(&done), "{settled}");

    let (status, problem) = run.post(&format!("{path}/cancel"), json!({})).await?;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("operation_ended"))
    );
    let (status, problem) = run.post("/v1/operations/nope/cancel", json!({})).await?;
    assert_eq!((status, problem["code"].as_str()), (404, Some("not_found")));
    let (status, _) = run.get("/v1/operations/nope").await?;
    assert_eq!(status, 404);
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_operation_interrupted_by_a_restart_resumes_without_replaying_twice() -> Result<()> {
    const N: usize = 60;
    let mut run = start().await?;
    let originals =
        dead_letters(&run, N, &spec("restart", "k", &[]), ErrorClass::Permission).await?;
    until_dead_letters(&run, N, Duration::from_secs(20)).await?;
    let (status, op) = run
        .post(
            "/v1/dead-letters/replay",
            json!({"name": "across a restart", "filter": {"queue": "restart"}, "rate_per_sec": 20}),
        )
        .await?;
    assert_eq!(status, 202, "{op}");
    let id = op["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/v1/operations/{id}");
    let before = eventually(Duration::from_secs(10), "five replays done", || async {
        let (_, op) = run.get(&path).await?;
        ensure!(op["done"].as_u64() >= Some(5), "{op}");
        Ok(Some(op))
    })
    .await?;
    if before["state"] != "running" {
        bail!("the operation ended before the restart: {before}");
    }
    run.stop().await;

    let server = run.server;
    let run = common::start_on(server).await?;
    let op = until_ended(&run, &id, Duration::from_secs(30)).await?;
    assert_eq!(op["state"], "finished", "{op}");
    assert_eq!(op["resumed"], 1, "{op}");
    assert_eq!(
        (op["matched"].as_u64(), op["done"].as_u64()),
        (Some(N as u64), Some(N as u64)),
        "{op}"
    );
    let links = eventually(Duration::from_secs(10), "a retry of each", || async {
        let links = retries(&run);
        ensure!(links.len() == N, "{} of {N} retried", links.len());
        Ok(Some(links))
    })
    .await?;
    for original in &originals {
        let replays = &links[original];
        assert_eq!(replays.len(), 1, "{original}: {replays:?}");
        assert_eq!(replays[0].1.as_deref(), Some(id.as_str()));
    }
    let mut run = run;
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn two_engines_replaying_the_same_dead_letters_replay_each_once() -> Result<()> {
    const N: usize = 300;
    let mut run = start().await?;
    let originals = dead_letters(&run, N, &spec("twice", "k", &[]), ErrorClass::Permission).await?;
    until_dead_letters(&run, N, Duration::from_secs(20)).await?;
    // A second replica on the same NATS server, with its own projection.
    let config = runlog_engine::EngineConfig::local(&run.server.url());
    let stop_second = tokio_util::sync::CancellationToken::new();
    let second = runlog_engine::Engine::start(config, stop_second.clone()).await?;
    let second_base = format!("http://{}", second.addr());
    eventually(
        Duration::from_secs(20),
        "the second engine caught up",
        || async {
            let projection = second.projection();
            let count = projection.dead_letter_count();
            ensure!(
                count >= N && projection.is_caught_up(),
                "{count} of {N} dead letters, caught up: {}",
                projection.is_caught_up()
            );
            Ok(Some(()))
        },
    )
    .await?;

    let body = json!({"name": "race", "filter": {"queue": "twice"}, "rate_per_sec": 10_000});
    let (first, other) = tokio::join!(run.post("/v1/dead-letters/replay", body.clone()), async {
        let response = run
            .http
            .post(format!("{second_base}/v1/dead-letters/replay"))
            .json(&body)
            .send()
            .await?;
        anyhow::Ok(response.json::<Value>().await?)
    });
    let (status, first) = first?;
    assert_eq!(status, 202, "{first}");
    let other = other?;
    let mut totals = (0, 0);
    for op in [&first, &other] {
        let op = until_ended(
            &run,
            op["id"].as_str().unwrap_or_default(),
            Duration::from_secs(30),
        )
        .await?;
        assert_eq!(op["state"], "finished", "{op}");
        assert_eq!(op["failed"], 0, "{op}");
        totals.0 += op["done"].as_u64().unwrap_or(0);
        totals.1 += op["skipped"].as_u64().unwrap_or(0);
    }
    assert_eq!(
        totals,
        (N as u64, N as u64),
        "each dead letter replayed by one of them"
    );
    let links = eventually(Duration::from_secs(10), "a replay of each", || async {
        let links = retries(&run);
        let replays = links.values().map(Vec::len).sum::<usize>();
        ensure!(replays >= N, "{replays} of {N} replayed");
        Ok(Some(links))
    })
    .await?;
    assert_eq!(links.len(), N);
    for original in &originals {
        assert_eq!(
            links[original].len(),
            1,
            "{original}: {:?}",
            links[original]
        );
    }
    stop_second.cancel();
    second.wait().await;
    run.stop().await;
    Ok(())
}
