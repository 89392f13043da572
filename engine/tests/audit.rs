//! The audit trail: every state-changing command through the HTTP API and
//! the NATS door is recorded with who, from where, when and the answer;
//! reads are not; `GET /v1/audit` lists newest first and filters.

mod common;

use anyhow::{Result, ensure};
use chrono::Utc;
use common::start;
use runlog_events::Status;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_is_recorded_with_its_door_peer_and_answer_and_reads_are_not() -> Result<()> {
    let mut run = start().await?;
    let since = Utc::now();
    let exec = run
        .submit(json!({"kind": "shell", "input": {"shell": "true"}}))
        .await?;
    run.wait_status(&exec, Status::Queued, None).await?;
    let (status, _) = run
        .post(
            &format!("/v1/executions/{exec}/cancel"),
            json!({"reason": "wrong host"}),
        )
        .await?;
    ensure!(status == 202, "cancel: {status}");
    run.wait_status(&exec, Status::Cancelled, None).await?;
    let (status, retried) = run
        .post(&format!("/v1/executions/{exec}/retry"), json!({}))
        .await?;
    ensure!(status == 201, "retry: {status} {retried}");
    let (status, _) = run
        .post(
            "/v1/schedules",
            json!({"id": "nightly", "cron": "0 30 2 * * *",
                   "task": {"kind": "shell", "input": {"shell": "true"}}}),
        )
        .await?;
    ensure!(status == 201, "schedule: {status}");
    let deleted = run
        .http
        .delete(format!("{}/v1/schedules/nightly", run.base))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await?;
    ensure!(deleted.status().is_success(), "{}", deleted.status());
    // A refused command is recorded with its answer.
    let (status, _) = run
        .post(
            "/v1/executions/01a23bdb-0000-7000-8000-000000000000/cancel",
            json!({}),
        )
        .await?;
    ensure!(status == 404, "{status}");
    // The NATS door.
    let answer = run
        .client
        .request(
            "runlog.submit.default",
            json!({"kind": "shell", "input": {"shell": "true"}})
                .to_string()
                .into(),
        )
        .await?;
    let by_nats: Value = serde_json::from_slice(&answer.payload)?;
    let by_nats = by_nats["id"].as_str().unwrap_or_default().to_owned();
    // Reads are not recorded.
    run.get("/v1/executions").await?;
    run.get(&format!("/v1/executions/{exec}")).await?;

    let records = runlog_testkit::eventually(
        std::time::Duration::from_secs(15),
        "the seven commands are in the trail",
        || async {
            let (_, body) = run.get("/v1/audit").await?;
            let records = body["records"].as_array().cloned().unwrap_or_default();
            Ok((records.len() == 7).then_some(records))
        },
    )
    .await?;
    let routes: Vec<(&str, &str, u64)> = records
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap_or(""),
                r["route"].as_str().unwrap_or(""),
                r["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    ensure!(
        routes
            == [
                ("PUB", "runlog.submit.*", 200),
                ("POST", "/v1/executions/{id}/cancel", 404),
                ("DELETE", "/v1/schedules/{id}", 200),
                ("POST", "/v1/schedules", 201),
                ("POST", "/v1/executions/{id}/retry", 201),
                ("POST", "/v1/executions/{id}/cancel", 202),
                ("POST", "/v1/executions", 201),
            ],
        "newest first: {routes:?}"
    );
    let submitted = &records[6];
    ensure!(
        submitted["target"] == exec.as_str()
            && submitted["actor"] == "anonymous"
            && submitted["door"] == "http"
            && submitted["from"]
                .as_str()
                .is_some_and(|f| f.starts_with("127.0.0.1:"))
            && submitted["time"].as_str().is_some(),
        "{submitted}"
    );
    ensure!(
        records[5]["target"] == exec.as_str(),
        "the cancel names its execution"
    );
    ensure!(
        records[4]["target"] == retried["id"],
        "the retry names the new execution"
    );
    ensure!(
        records[2]["target"] == "nightly" && records[2]["forwarded_for"] == "203.0.113.7",
        "{}",
        records[2]
    );
    // The NATS door is summarised: its submissions are in the log.
    ensure!(
        records[0]["count"] == 1 && records[0]["door"] == "nats" && records[0]["target"].is_null(),
        "{}",
        records[0]
    );
    let (status, _) = run.get(&format!("/v1/executions/{by_nats}")).await?;
    ensure!(status == 200, "the door's submission is in the log");
    ensure!(
        records
            .iter()
            .all(|r| r.get("body").is_none() && !r.to_string().contains("wrong host")),
        "records hold no bodies"
    );

    // Filters.
    let (_, body) = run.get("/v1/audit?route=/cancel").await?;
    ensure!(
        body["records"].as_array().map(Vec::len) == Some(2),
        "{body}"
    );
    let (_, body) = run.get("/v1/audit?method=delete").await?;
    ensure!(
        body["records"].as_array().map(Vec::len) == Some(1),
        "{body}"
    );
    let (_, body) = run.get(&format!("/v1/audit?target={exec}")).await?;
    ensure!(
        body["records"].as_array().map(Vec::len) == Some(2),
        "{body}"
    );
    let (_, body) = run.get("/v1/audit?limit=2").await?;
    ensure!(
        body["records"][0]["door"] == "nats" && body["records"].as_array().map(Vec::len) == Some(2),
        "{body}"
    );
    let (_, body) = run.get("/v1/audit?actor=someone-else").await?;
    ensure!(body["records"] == json!([]), "{body}");
    let until = urlencoded(&since.to_rfc3339());
    let (_, body) = run.get(&format!("/v1/audit?until={until}")).await?;
    ensure!(body["records"] == json!([]), "{body}");
    let (status, body) = run.get("/v1/audit?since=yesterday").await?;
    ensure!(
        status == 400 && body["code"] == "invalid_query",
        "{status} {body}"
    );
    run.stop().await;
    Ok(())
}

fn urlencoded(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}
