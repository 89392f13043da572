//! The engine against a real nats-server: the intake doors, the reactor's
//! reactions, the HTTP API and its errors. Tests play the worker's part by
//! appending through the journal.

mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use chrono::Utc;
use common::start;
use runlog_events::decider::Command;
use runlog_events::event::{Event, Submitted};
use runlog_events::{
    Envelope, ErrorClass, ExecutionId, Priority, QueueName, Status, TaskError, TaskSpec, WorkItem,
    direct,
};
use runlog_testkit::eventually;
use serde_json::{Value, json};

async fn claim(run: &common::Running, exec: &ExecutionId, worker: &str) -> Result<()> {
    let command = Command::Claim {
        worker: worker.into(),
        redelivered: false,
    };
    run.journal.transition(exec, &command, Utc::now()).await?;
    Ok(())
}

async fn fail(
    run: &common::Running,
    exec: &ExecutionId,
    attempt: u32,
    class: ErrorClass,
) -> Result<()> {
    let command = Command::Fail {
        attempt,
        error: TaskError::new(class, "it broke"),
    };
    run.journal.transition(exec, &command, Utc::now()).await?;
    Ok(())
}

/// The work item of `exec` on `queue` at `priority`: its latest `queued`
/// event there, if any.
async fn work_item(
    run: &common::Running,
    queue: &str,
    priority: Priority,
    exec: &ExecutionId,
) -> Result<Option<WorkItem>> {
    let subject = run.subjects.queued(exec, &QueueName::new(queue)?, priority);
    let Some(stored) = direct::last(&run.js, &run.subjects.exec_stream(), &subject).await? else {
        return Ok(None);
    };
    let item = WorkItem::from_delivery(
        &run.subjects,
        &subject,
        Some(&stored.headers),
        &stored.payload,
        stored.seq,
        &runlog_events::codec::Limits::default(),
    )?;
    Ok(Some(item))
}

#[tokio::test]
async fn the_three_doors_reach_the_same_queued_state() -> Result<()> {
    let mut run = start().await?;
    let body = json!({
        "queue": "backups",
        "kind": "shell",
        "priority": "high",
        "input": {"argv": ["restic", "backup", "/srv"]},
        "labels": {"team": "infra"},
        "worker_labels": {"pool": "backup"},
        "retry": {"max_attempts": 5},
    });

    // HTTP.
    let by_http = run.submit(body.clone()).await?;
    // NATS request/reply, JSON and MessagePack.
    let reply = run
        .client
        .request("runlog.submit.backups", body.to_string().into())
        .await?;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    let by_nats = ExecutionId::new(reply["id"].as_str().unwrap_or_default())?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/msgpack");
    let packed = rmp_serde::to_vec_named(&body)?;
    let reply = run
        .client
        .request_with_headers("runlog.submit.backups", headers, packed.into())
        .await?;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    let by_msgpack = ExecutionId::new(reply["id"].as_str().unwrap_or_default())?;
    // A `submitted` event appended by any publisher.
    let spec: TaskSpec = serde_json::from_value(body.clone())?;
    let direct_id = ExecutionId::generate();
    let envelope = Envelope::new(
        direct_id.clone(),
        0,
        Utc::now(),
        "/test/other-language",
        Event::Submitted(Submitted { spec }),
    );
    run.journal.append(0, &envelope).await?;

    let mut states = Vec::new();
    for exec in [&by_http, &by_nats, &by_msgpack, &direct_id] {
        let history = run.wait_status(exec, Status::Queued, Some(1)).await?;
        let item = eventually(Duration::from_secs(10), "the work item", || {
            work_item(&run, "backups", Priority::High, exec)
        })
        .await?;
        assert_eq!(item.attempt, 1);
        assert_eq!(item.kind, "shell");
        assert_eq!(
            item.worker_labels.get("pool").map(String::as_str),
            Some("backup")
        );
        states.push(history.state);
    }
    let same = |s: &runlog_events::ExecutionState| (s.status, s.attempt, s.spec.clone());
    for state in &states[1..] {
        assert_eq!(same(state), same(&states[0]));
    }
    // The projection agrees with the log.
    for exec in [&by_http, &by_nats, &by_msgpack, &direct_id] {
        let (status, view) = run.get(&format!("/v1/executions/{exec}")).await?;
        assert_eq!(status, 200);
        assert_eq!(view["status"], "queued");
        assert_eq!(view["spec"]["queue"], "backups");
    }
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_malformed_direct_submission_ends_rejected_with_its_reason() -> Result<()> {
    let mut run = start().await?;
    // A spec that breaks a rule.
    let mut spec = TaskSpec::new("shell");
    spec.retry.max_attempts = 0;
    let bad_rule = ExecutionId::generate();
    let envelope = Envelope::new(
        bad_rule.clone(),
        0,
        Utc::now(),
        "/test",
        Event::Submitted(Submitted { spec }),
    );
    run.journal.append(0, &envelope).await?;
    // Environment values recorded in the log.
    let mut spec = TaskSpec::new("shell");
    spec.env.insert("TOKEN".into(), "s3cr3t".into());
    let leaked = ExecutionId::generate();
    let envelope = Envelope::new(
        leaked.clone(),
        0,
        Utc::now(),
        "/test",
        Event::Submitted(Submitted { spec }),
    );
    run.journal.append(0, &envelope).await?;
    // Garbage bytes on a submitted subject.
    let garbage = ExecutionId::generate();
    run.js
        .publish(
            format!("runlog.ev.{garbage}.submitted"),
            vec![0xc1, 0xff, 0x00].into(),
        )
        .await?
        .await?;

    let history = run.wait_status(&bad_rule, Status::Rejected, None).await?;
    let reason = history.state.reason.unwrap_or_default();
    assert!(reason.contains("retry.max_attempts"), "{reason}");
    let history = run.wait_status(&leaked, Status::Rejected, None).await?;
    assert!(history.state.reason.unwrap_or_default().starts_with("env:"));
    let (_, view) = run.get(&format!("/v1/executions/{leaked}")).await?;
    assert!(
        !view.to_string().contains("s3cr3t"),
        "the API never echoes env values"
    );
    let (_, events) = run.get(&format!("/v1/executions/{leaked}/events")).await?;
    assert!(!events.to_string().contains("s3cr3t"));
    let history = run.wait_status(&garbage, Status::Rejected, None).await?;
    let reason = history.state.reason.unwrap_or_default();
    assert!(reason.contains("could not be read"), "{reason}");
    assert!(
        work_item(&run, "default", Priority::Normal, &bad_rule)
            .await
            .ok()
            .flatten()
            .is_none()
    );
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_failed_attempt_is_retried_after_its_backoff_then_dead_lettered() -> Result<()> {
    let mut run = start().await?;
    let exec = run
        .submit(json!({
            "kind": "http",
            "retry": {"max_attempts": 2, "backoff_base_ms": 50, "backoff_max_ms": 100},
        }))
        .await?;
    run.wait_status(&exec, Status::Queued, Some(1)).await?;
    claim(&run, &exec, "w1").await?;
    fail(&run, &exec, 1, ErrorClass::Network).await?;
    let history = run.wait_status(&exec, Status::Queued, Some(2)).await?;
    let types: Vec<_> = history
        .events
        .iter()
        .map(|r| r.envelope.event_type().as_str())
        .collect();
    assert_eq!(
        types,
        ["queued", "started", "failed", "retry_scheduled", "queued"]
    );
    eventually(Duration::from_secs(10), "the work item", || {
        work_item(&run, "default", Priority::Normal, &exec)
    })
    .await
    .and_then(|item| {
        anyhow::ensure!(item.attempt == 2 || item.attempt == 1);
        Ok(())
    })?;
    claim(&run, &exec, "w2").await?;
    fail(&run, &exec, 2, ErrorClass::Network).await?;
    let history = run.wait_status(&exec, Status::DeadLettered, None).await?;
    assert_eq!(
        history.state.errors.len(),
        2,
        "the whole error history is kept"
    );
    match &history.events.last().unwrap().envelope.event {
        Event::DeadLettered(d) => assert_eq!(d.errors.len(), 2),
        other => panic!("expected dead_lettered, got {other:?}"),
    }
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_permanent_error_is_dead_lettered_at_once() -> Result<()> {
    let mut run = start().await?;
    let exec = run
        .submit(json!({"kind": "http", "retry": {"max_attempts": 5}}))
        .await?;
    run.wait_status(&exec, Status::Queued, Some(1)).await?;
    claim(&run, &exec, "w1").await?;
    fail(&run, &exec, 1, ErrorClass::InvalidInput).await?;
    let history = run.wait_status(&exec, Status::DeadLettered, None).await?;
    assert_eq!(history.state.errors.len(), 1);
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn deadlines_fire_for_a_silent_worker_and_an_idle_queue() -> Result<()> {
    let mut run = start().await?;
    let mut cancels = run.client.subscribe("runlog.cancel.>").await?;
    // The worker claims and goes silent: the attempt times out.
    let silent = run
        .submit(json!({"kind": "shell", "attempt_timeout_ms": 300, "retry": {"max_attempts": 1}}))
        .await?;
    run.wait_status(&silent, Status::Queued, Some(1)).await?;
    claim(&run, &silent, "w1").await?;
    let history = run.wait_status(&silent, Status::DeadLettered, None).await?;
    assert!(history.events.iter().any(|r| matches!(
        r.envelope.event,
        Event::TimedOut(runlog_events::event::TimedOut {
            scope: runlog_events::event::TimeoutScope::Attempt,
            ..
        })
    )));
    // The worker is told to stop.
    let signal = tokio::time::timeout(
        Duration::from_secs(5),
        futures::StreamExt::next(&mut cancels),
    )
    .await?;
    assert_eq!(
        signal.map(|m| m.subject.to_string()),
        Some(format!("runlog.cancel.{silent}"))
    );
    // Nobody takes it: the execution's own deadline ends it.
    let idle = run
        .submit(json!({"kind": "shell", "timeout_ms": 300}))
        .await?;
    run.wait_status(&idle, Status::TimedOut, None).await?;
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn not_before_holds_the_first_attempt() -> Result<()> {
    let mut run = start().await?;
    let at = Utc::now() + chrono::TimeDelta::milliseconds(700);
    let exec = run
        .submit(json!({"kind": "shell", "not_before": at}))
        .await?;
    let history = run.wait_status(&exec, Status::Queued, Some(1)).await?;
    let queued_at = history.events.last().unwrap().envelope.time;
    assert!(queued_at >= at, "queued at {queued_at}, not before {at}");
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn cancel_ends_a_queued_execution_at_once_and_signals_a_running_one() -> Result<()> {
    let mut run = start().await?;
    let queued = run.submit(json!({"kind": "shell"})).await?;
    run.wait_status(&queued, Status::Queued, None).await?;
    let (status, body) = run
        .post(
            &format!("/v1/executions/{queued}/cancel"),
            json!({"reason": "not needed"}),
        )
        .await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "cancelled");

    let mut cancels = run.client.subscribe("runlog.cancel.>").await?;
    let running = run.submit(json!({"kind": "shell"})).await?;
    run.wait_status(&running, Status::Queued, None).await?;
    claim(&run, &running, "w1").await?;
    let (status, body) = run
        .post(&format!("/v1/executions/{running}/cancel"), json!({}))
        .await?;
    assert_eq!(status, 202);
    assert_eq!(body["status"], "running");
    assert_eq!(body["cancel_requested"], true);
    let signal = tokio::time::timeout(
        Duration::from_secs(5),
        futures::StreamExt::next(&mut cancels),
    )
    .await?;
    assert_eq!(
        signal.map(|m| m.subject.to_string()),
        Some(format!("runlog.cancel.{running}"))
    );

    let (status, body) = run
        .post(&format!("/v1/executions/{queued}/cancel"), json!({}))
        .await?;
    assert_eq!(status, 409);
    assert_eq!(body["code"], "already_ended");
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_retry_starts_a_new_chain_linked_to_its_original() -> Result<()> {
    let mut run = start().await?;
    let original = run
        .submit(json!({"kind": "shell", "env": {"TOKEN": "s3cr3t"}, "retry": {"max_attempts": 1}}))
        .await?;
    run.wait_status(&original, Status::Queued, None).await?;
    claim(&run, &original, "w1").await?;
    fail(&run, &original, 1, ErrorClass::Unknown).await?;
    run.wait_status(&original, Status::DeadLettered, None)
        .await?;
    let (status, body) = run
        .post(&format!("/v1/executions/{original}/retry"), json!({}))
        .await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["retry_of"], original.as_str());
    let retry = ExecutionId::new(body["id"].as_str().unwrap())?;
    let history = run.wait_status(&retry, Status::Queued, Some(1)).await?;
    let spec = history.state.spec.unwrap();
    assert_eq!(spec.retry_of.as_ref(), Some(&original));
    assert_eq!(spec.sealed_env, vec!["TOKEN".to_owned()]);
    // The sealed value follows the retry, and never enters the log.
    let env = run.js.get_key_value("runlog-env").await?;
    let sealed = env.get(retry.as_str()).await?.expect("sealed env copied");
    let ring = runlog_events::sealing::Keyring::load(run.key.path())?;
    let opened = runlog_events::secrets::open_env(&ring, &retry, &sealed)?;
    assert_eq!(opened["TOKEN"], "s3cr3t");
    assert!(!String::from_utf8_lossy(&sealed).contains("s3cr3t"));
    let (_, events) = run
        .get(&format!("/v1/executions/{original}/events"))
        .await?;
    assert!(!events.to_string().contains("s3cr3t"));

    let (status, body) = run
        .post(&format!("/v1/executions/{retry}/retry"), json!({}))
        .await?;
    assert_eq!(status, 409);
    assert_eq!(body["code"], "not_retryable");
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_failed_execution_awaiting_its_retry_cannot_be_retried_by_hand() -> Result<()> {
    // No reactor: the execution stays `failed`, as it does for the moment
    // between a failure and the reactor's `retry_scheduled`. A retry then
    // would start a second chain beside the scheduled one.
    let server = runlog_testkit::NatsServer::start()?;
    let mut run = common::start_with(server, |c| c.reactor = false).await?;
    let original = run
        .submit(json!({"kind": "shell", "retry": {"max_attempts": 3}}))
        .await?;
    run.wait_status(&original, Status::Queued, None).await?;
    claim(&run, &original, "w1").await?;
    fail(&run, &original, 1, ErrorClass::Network).await?;
    run.wait_status(&original, Status::Failed, None).await?;
    let (status, body) = run
        .post(&format!("/v1/executions/{original}/retry"), json!({}))
        .await?;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "not_retryable");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("failed"),
        "{body}"
    );
    // One chain in the log: nothing was submitted beside it.
    let (_, stats) = run.get("/v1/stats").await?;
    assert_eq!(stats["executions"], 1, "{stats}");
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_execution_through_every_door() -> Result<()> {
    let mut run = start().await?;
    let body = json!({"kind": "shell", "idempotency_key": "deploy #42 / prod"});
    let (status, first) = run.post("/v1/executions", body.clone()).await?;
    assert_eq!(status, 201);
    let (status, second) = run.post("/v1/executions", body.clone()).await?;
    assert_eq!(status, 200);
    assert_eq!(second["existing"], true);
    assert_eq!(first["id"], second["id"]);
    let reply = run
        .client
        .request("runlog.submit.default", body.to_string().into())
        .await?;
    let third: Value = serde_json::from_slice(&reply.payload)?;
    assert_eq!(third["id"], first["id"]);
    assert_eq!(third["existing"], true);
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn api_errors_are_problem_details_with_stable_codes() -> Result<()> {
    let mut run = start().await?;
    let response = run
        .http
        .post(format!("{}/v1/executions", run.base))
        .header("content-type", "application/json")
        .body("{\"queue\": \"q\"}")
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 422);
    assert_eq!(
        response.headers()["content-type"].to_str()?,
        "application/problem+json"
    );
    let problem: Value = response.json().await?;
    assert_eq!(problem["code"], "invalid_body");
    assert_eq!(problem["field"], "kind");
    // Not JSON at all: a bad request, not a rule broken by a good body.
    let response = run
        .http
        .post(format!("{}/v1/executions", run.base))
        .header("content-type", "application/json")
        .body("{\"kind\": \"shell\",")
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 400);
    let problem: Value = response.json().await?;
    assert_eq!(problem["code"], "invalid_body");

    let (status, problem) = run
        .post(
            "/v1/executions",
            json!({"kind": "shell", "retry": {"max_attempts": 0}}),
        )
        .await?;
    assert_eq!(status, 422);
    assert_eq!(problem["code"], "invalid_task");
    assert_eq!(problem["field"], "retry.max_attempts");

    let (status, problem) = run.get("/v1/executions/nope").await?;
    assert_eq!(status, 404);
    assert_eq!(problem["code"], "not_found");

    let huge = json!({"kind": "shell", "input": "x".repeat(2 * 1024 * 1024)});
    let (status, problem) = run.post("/v1/executions", huge).await?;
    assert_eq!(status, 413);
    assert_eq!(problem["code"], "invalid_body");

    let (status, problem) = run.get("/v1/executions?status=sleeping").await?;
    assert_eq!(status, 400);
    assert_eq!(problem["field"], "status");
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_input_over_the_event_limit_but_within_the_body_limit_is_a_413_naming_the_limit()
-> Result<()> {
    let mut run = start().await?;
    // The body fits the HTTP limit (1 MiB + 64 KiB); its `queued` event does
    // not fit the event limit (1 MiB). Not a 503: NATS is fine.
    let input = "x".repeat(1024 * 1024 + 20 * 1024);
    let (status, problem) = run
        .post("/v1/executions", json!({"kind": "shell", "input": input}))
        .await?;
    assert_eq!(status, 413, "{problem}");
    assert_eq!(problem["code"], "payload_too_large");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("limit of 1048576 bytes"), "{detail}");
    // Nothing was recorded, and the next submission is fine.
    let (status, _) = run.post("/v1/executions", json!({"kind": "echo"})).await?;
    assert_eq!(status, 201);
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_bad_submission_names_its_field_by_json_path_through_both_doors() -> Result<()> {
    let mut run = start().await?;
    for (body, field, says) in [
        (
            json!({"kind": "shell", "priority": "urgent"}),
            "priority",
            "`high`, `normal`, `low`",
        ),
        (
            json!({"kind": "shell", "queue": "bad queue!"}),
            "queue",
            "letters, digits",
        ),
        (
            json!({"kind": "shell", "inptu": {}}),
            "inptu",
            "did you mean `input`?",
        ),
        (
            json!({"kind": "shell", "retry": {"max_atempts": 2}}),
            "retry.max_atempts",
            "`max_attempts`",
        ),
        (
            json!({"kind": "shell", "retry": {"max_attempts": "x"}}),
            "retry.max_attempts",
            "whole number",
        ),
        (
            json!({"kind": "shell", "labels": {"team": 1}}),
            "labels.team",
            "expected a string",
        ),
        (json!({"kind": "shell", "id": 7}), "id", "expected a string"),
    ] {
        let (status, problem) = run.post("/v1/executions", body.clone()).await?;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(problem["field"], field, "{body}: {problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{body}: {detail}");
        assert!(!detail.contains("line 1"), "{body}: {detail}");
        // The NATS door reads the same way.
        let answer = run
            .client
            .request("runlog.submit.default", serde_json::to_vec(&body)?.into())
            .await?;
        let answer: Value = serde_json::from_slice(&answer.payload)?;
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    // Nothing of it was recorded.
    let (_, list) = run.get("/v1/executions").await?;
    assert_eq!(
        list["executions"].as_array().map(Vec::len),
        Some(0),
        "{list}"
    );
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn listing_filters_and_pages_newest_first() -> Result<()> {
    let mut run = start().await?;
    let mut ids = Vec::new();
    for i in 0..7 {
        let queue = if i % 2 == 0 { "even" } else { "odd" };
        ids.push(
            run.submit(json!({"kind": "shell", "queue": queue, "labels": {"n": i.to_string()}}))
                .await?,
        );
    }
    for id in &ids {
        run.wait_status(id, Status::Queued, None).await?;
    }
    eventually(
        Duration::from_secs(10),
        "4 listed in the queue even",
        || async {
            let (_, page) = run.get("/v1/executions?queue=even").await?;
            let listed = page["executions"].as_array().map(Vec::len);
            ensure!(listed == Some(4), "listed {listed:?}");
            Ok(Some(()))
        },
    )
    .await?;
    let (_, page) = run.get("/v1/executions?queue=even&limit=3").await?;
    let got: Vec<_> = page["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(got, vec![json!(ids[6]), json!(ids[4]), json!(ids[2])]);
    let cursor = page["next_cursor"].as_u64().unwrap();
    let (_, page) = run
        .get(&format!(
            "/v1/executions?queue=even&limit=3&cursor={cursor}"
        ))
        .await?;
    let got: Vec<_> = page["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(got, vec![json!(ids[0])]);
    assert!(page["next_cursor"].is_null());
    let (_, page) = run.get("/v1/executions?label=n=3&status=queued").await?;
    assert_eq!(page["executions"][0]["id"], json!(ids[3]));
    let (_, queues) = run.get("/v1/queues").await?;
    let even = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "even")
        .unwrap();
    assert_eq!(even["depth"], 4);
    let (status, _) = run.get("/readyz").await?;
    assert_eq!(status, 200);
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_work_item_the_server_gives_up_on_ends_dead_lettered() -> Result<()> {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    let mut run = start().await?;
    // A consumer that gives up after one unacknowledged delivery.
    let log = run.js.get_stream("RUNLOG_EXEC").await?;
    let consumer = log
        .create_consumer(pull::Config {
            durable_name: Some("runlog-work-default-normal".into()),
            filter_subject: "runlog.ev.*.queued.default.normal".into(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_millis(500),
            max_deliver: 1,
            ..Default::default()
        })
        .await?;
    let exec = run.submit(json!({"kind": "shell"})).await?;
    run.wait_status(&exec, Status::Queued, None).await?;
    // A worker takes the item and dies without a word.
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(Duration::from_secs(10))
        .messages()
        .await?;
    let taken = futures::StreamExt::next(&mut batch)
        .await
        .expect("an item")
        .map_err(|e| anyhow::anyhow!(e))?;
    drop(taken);
    let history = run.wait_status(&exec, Status::DeadLettered, None).await?;
    match &history.events.last().unwrap().envelope.event {
        Event::DeadLettered(d) => {
            assert_eq!(
                d.reason,
                runlog_events::event::DeadLetterReason::MaxDeliveries
            )
        }
        other => panic!("expected dead_lettered, got {other:?}"),
    }
    run.stop().await;
    Ok(())
}
