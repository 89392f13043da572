//! Bulk intake through both doors (`POST /v1/executions/batch` and
//! `<p>.submit-batch.<queue>`), against a real engine on a real nats-server.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use common::Running;
use runlog_events::{ExecutionId, Status};
use runlog_testkit::eventually;
use serde_json::{Value, json};

fn echo(n: usize) -> Value {
    json!({"kind": "echo", "input": {"n": n}})
}

/// The results of a batch that was read (HTTP 200).
async fn batch(running: &Running, specs: Vec<Value>) -> Result<Vec<Value>> {
    let (status, reply) = running
        .post("/v1/executions/batch", json!({ "executions": specs }))
        .await?;
    ensure!(status == 200, "the batch answered {status}: {reply}");
    Ok(reply["results"].as_array().cloned().unwrap_or_default())
}

/// The execution a result names.
fn id_of(result: &Value) -> Result<ExecutionId> {
    let id = result["id"].as_str();
    ensure!(id.is_some(), "not accepted: {result}");
    Ok(ExecutionId::new(id.unwrap_or_default())?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_a_thousand_is_accepted_with_distinct_ids_and_every_one_queued() -> Result<()> {
    let mut running = common::start().await?;
    // About 1.2 KiB each: the batch is past the single-submission body limit.
    let specs: Vec<Value> = (0..1000)
        .map(|n| json!({"kind": "echo", "input": {"n": n, "pad": "x".repeat(1200)}}))
        .collect();
    let size = serde_json::to_vec(&json!({ "executions": specs }))?.len();
    assert!(size > runlog_engine::api::MAX_BODY, "{size} bytes");
    let results = batch(&running, specs).await?;
    assert_eq!(results.len(), 1000);
    let mut ids = HashSet::new();
    for result in &results {
        assert_eq!(result["existing"], false, "{result}");
        // Recorded as submitted, or queued at once where intake does both.
        assert!(
            result["status"] == "pending" || result["status"] == "queued",
            "{result}"
        );
        ids.insert(id_of(result)?);
    }
    assert_eq!(ids.len(), 1000, "every spec got an execution of its own");

    // No worker runs: each one stops at queued, and the read model says so.
    eventually(Duration::from_secs(30), "1000 queued", || async {
        let (_, stats) = running.get("/v1/stats").await?;
        let queued = &stats["by_status"]["queued"];
        ensure!(queued == 1000, "{queued} queued");
        Ok(Some(()))
    })
    .await?;
    // The read model's count is of these executions: the log agrees, in order.
    for (n, result) in results.iter().enumerate().step_by(97) {
        let history = running.journal.load(&id_of(result)?).await?;
        assert_eq!(history.state.status, Status::Queued);
        let spec = history.state.spec.expect("a recorded spec");
        assert_eq!(spec.input["n"], n);
    }
    running.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invalid_spec_in_the_middle_fails_alone_with_its_field() -> Result<()> {
    let mut running = common::start().await?;
    let refused = ExecutionId::generate();
    let specs = vec![
        echo(0),
        echo(1),
        json!({"id": refused, "kind": "echo", "retry": {"backoff_multiplier": 0.5}}),
        json!({"input": {"no": "kind"}}),
        json!({"kind": "echo", "id": "not a token"}),
        echo(5),
    ];
    let results = batch(&running, specs).await?;
    assert_eq!(results.len(), 6);
    for n in [0, 1, 5] {
        let id = id_of(&results[n])?;
        running.wait_status(&id, Status::Queued, Some(1)).await?;
    }
    let error = &results[2]["error"];
    assert_eq!(error["code"], "invalid_task", "{error}");
    assert_eq!(error["field"], "retry.backoff_multiplier", "{error}");
    assert!(
        error["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("backoff_multiplier")
    );
    assert_eq!(results[3]["error"]["code"], "invalid_body");
    assert_eq!(results[3]["error"]["field"], "kind");
    assert_eq!(results[4]["error"]["field"], "id");
    assert!(
        running.journal.load(&refused).await?.events.is_empty(),
        "nothing recorded for the invalid spec"
    );
    running.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_limit_is_refused_with_a_problem_and_nothing_recorded() -> Result<()> {
    let mut running = common::start().await?;
    let specs: Vec<Value> = (0..1001).map(echo).collect();
    let response = running
        .http
        .post(format!("{}/v1/executions/batch", running.base))
        .json(&json!({ "executions": specs }))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 413);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await?;
    assert_eq!(problem["code"], "invalid_body");
    assert_eq!(problem["field"], "executions");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("at most 1000"),
        "{problem}"
    );
    // A body that is not a batch is a problem too.
    let (status, problem) = running
        .post("/v1/executions/batch", json!({"kind": "echo"}))
        .await?;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["field"], "executions", "{problem}");
    // A batch that was read records its specs; this one was not read.
    let (_, stats) = running.get("/v1/stats").await?;
    assert_eq!(stats["executions"], 0, "{stats}");
    running.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_or_id_twice_in_one_batch_gives_the_second_the_first_execution() -> Result<()> {
    let mut running = common::start().await?;
    let mut keyed = echo(0);
    keyed["idempotency_key"] = json!("invoice 2026-12/7");
    let named = json!({"kind": "echo", "id": "nightly-2026-12-02"});
    let results = batch(
        &running,
        vec![
            keyed.clone(),
            echo(1),
            keyed.clone(),
            named.clone(),
            named,
            keyed,
        ],
    )
    .await?;
    let first = id_of(&results[0])?;
    assert_eq!(results[0]["existing"], false);
    for n in [2, 5] {
        assert_eq!(id_of(&results[n])?, first, "{}", results[n]);
        assert_eq!(results[n]["existing"], true, "{}", results[n]);
    }
    assert_eq!(results[3]["existing"], false, "{}", results[3]);
    assert_eq!(results[4]["existing"], true, "{}", results[4]);
    assert_eq!(results[4]["id"], "nightly-2026-12-02");
    assert_eq!(results[1]["existing"], false);
    let history = running.wait_status(&first, Status::Queued, Some(1)).await?;
    assert_eq!(
        history
            .events
            .iter()
            .filter(|r| match &r.envelope.event {
                // The event that records an execution: `queued` with the
                // spec from an engine door, `submitted` when delayed.
                runlog_events::Event::Submitted(_) => true,
                runlog_events::Event::Queued(q) => q.spec.is_some(),
                _ => false,
            })
            .count(),
        1,
        "recorded once"
    );
    running.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_batch_door_answers_one_result_per_spec_on_its_queue() -> Result<()> {
    let mut running = common::start().await?;
    let body = json!({"executions": [echo(0), {"input": 1}, echo(2)]});
    let reply = running
        .client
        .request("runlog.submit-batch.nightly", body.to_string().into())
        .await?;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    let results = reply["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 3, "{reply}");
    assert_eq!(results[1]["error"]["field"], "kind", "{reply}");
    for n in [0, 2] {
        let history = running
            .wait_status(&id_of(&results[n])?, Status::Queued, Some(1))
            .await?;
        let spec = history.state.spec.expect("a recorded spec");
        assert_eq!(
            spec.queue.as_str(),
            "nightly",
            "the subject names the queue"
        );
    }

    // MessagePack in, the same JSON out.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/msgpack");
    let body = rmp_serde::to_vec_named(&json!({"executions": [echo(3), echo(4)]}))?;
    let reply = running
        .client
        .request_with_headers("runlog.submit-batch.default", headers, body.into())
        .await?;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    assert_eq!(reply["results"][0]["existing"], false, "{reply}");
    assert_eq!(reply["results"][1]["existing"], false, "{reply}");

    // Over the limit: the whole request is refused, with the limit named.
    let body = json!({ "executions": (0..1001).map(echo).collect::<Vec<_>>() });
    let reply = running
        .client
        .request("runlog.submit-batch.default", body.to_string().into())
        .await?;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    assert_eq!(reply["error"]["field"], "executions", "{reply}");
    assert!(reply.get("results").is_none(), "{reply}");

    // The single door is not disturbed by its neighbour.
    let reply = running
        .client
        .request("runlog.submit.default", echo(9).to_string().into())
        .await?;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    assert_eq!(reply["existing"], false, "{reply}");
    assert!(reply.get("results").is_none(), "{reply}");
    running.stop().await;
    Ok(())
}
