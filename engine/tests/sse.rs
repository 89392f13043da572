//! Server-Sent Events against a real engine: a client that disconnects
//! mid-stream and reconnects with `Last-Event-ID` gets every event exactly
//! once, in log order.

mod common;

use std::time::Duration;

use anyhow::Result;
use chrono::Utc;
use common::{Sse, read_sse, start};
use runlog_events::decider::Command;
use runlog_events::{ExecutionId, Status, direct};
use serde_json::json;

async fn open(run: &common::Running, path: &str, last: Option<u64>) -> Result<reqwest::Response> {
    let mut request = run.http.get(format!("{}{path}", run.base));
    if let Some(last) = last {
        request = request.header("Last-Event-ID", last.to_string());
    }
    let response = request.send().await?;
    anyhow::ensure!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    Ok(response)
}

async fn run_to_success(run: &common::Running, exec: &ExecutionId) -> Result<()> {
    let claim = Command::Claim {
        worker: "w1".into(),
        redelivered: false,
    };
    run.journal.transition(exec, &claim, Utc::now()).await?;
    let done = Command::Succeed {
        attempt: 1,
        output: json!({"ok": true}),
    };
    run.journal.transition(exec, &done, Utc::now()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_stream_resumes_after_last_event_id_without_gap_or_duplicate() -> Result<()> {
    let mut run = start().await?;
    let exec = run.submit(json!({"kind": "shell"})).await?;
    run.wait_status(&exec, Status::Queued, None).await?;
    let path = format!("/v1/executions/{exec}/stream");

    let mut first = open(&run, &path, None).await?;
    // An engine door records it in one event (`queued` with the spec).
    let seen = read_sse(&mut first, Duration::from_secs(10), |e| !e.is_empty()).await?;
    drop(first); // disconnect mid-stream
    let last = seen[0].id.expect("events carry ids");
    run_to_success(&run, &exec).await?;

    let mut second = open(&run, &path, Some(last)).await?;
    let rest = read_sse(&mut second, Duration::from_secs(10), |e| {
        e.last().is_some_and(|e| e.event == "end")
    })
    .await?;
    let all: Vec<&Sse> = seen
        .iter()
        .chain(&rest)
        .filter(|e| e.event != "end")
        .collect();
    let types: Vec<&str> = all.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(types, ["queued", "started", "succeeded"]);
    let history = run.journal.load(&exec).await?;
    let ids: Vec<u64> = all.iter().filter_map(|e| e.id).collect();
    let seqs: Vec<u64> = history.events.iter().map(|r| r.seq).collect();
    assert_eq!(ids, seqs, "exactly the log's events, once each, in order");
    // Each event carries the status it left the execution in, and the
    // execution's summary after it, live or replayed.
    let statuses: Vec<&str> = all
        .iter()
        .map(|e| e.data["status"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(statuses, ["queued", "running", "succeeded"]);
    for e in &all {
        assert_eq!(e.data["state"]["id"], exec.as_str(), "{:?}", e.data);
        assert_eq!(e.data["state"]["last_seq"], e.id.unwrap(), "{:?}", e.data);
    }
    assert_eq!(all[1].data["state"]["worker"], "w1");
    assert_eq!(rest.last().unwrap().data["status"], "succeeded");
    run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_stream_resumes_exactly_while_events_keep_coming() -> Result<()> {
    let mut run = start().await?;
    let mut first = open(&run, "/v1/stream?progress=false", None).await?;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(run.submit(json!({"kind": "shell"})).await?);
    }
    let seen = read_sse(&mut first, Duration::from_secs(10), |e| e.len() >= 3).await?;
    drop(first);
    let last = seen.last().unwrap().id.unwrap();
    // More happens while the client is away.
    for exec in &ids {
        run.wait_status(exec, Status::Queued, None).await?;
        run_to_success(&run, exec).await?;
    }
    let mut second = open(&run, "/v1/stream?progress=false", Some(last)).await?;
    // Every execution queued (with its spec), started, succeeded: 15 events.
    let rest = read_sse(&mut second, Duration::from_secs(10), |e| {
        seen.len() + e.len() >= 15
    })
    .await?;
    let got: Vec<u64> = seen.iter().chain(&rest).filter_map(|e| e.id).collect();
    let mut stored = Vec::new();
    direct::read(
        &run.client,
        &run.subjects.exec_stream(),
        &run.subjects.all_events(),
        1,
        usize::MAX,
        |m| stored.push(m.seq),
    )
    .await?;
    assert_eq!(got, stored, "no gap, no duplicate, log order");
    // Live events carry the fold's state; so does a replayed event that is
    // its execution's newest (each `succeeded` here).
    for e in seen
        .iter()
        .chain(rest.iter().filter(|e| e.event == "succeeded"))
    {
        assert!(e.data["state"].is_object(), "{:?}", e.data);
        assert_eq!(e.data["status"], e.data["state"]["status"]);
    }
    run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_stream_sends_stored_and_live_lines_then_ends() -> Result<()> {
    use runlog_events::event::{Event, LogBatch, LogLine, LogStream};
    let mut run = start().await?;
    let exec = run.submit(json!({"kind": "shell"})).await?;
    run.wait_status(&exec, Status::Queued, None).await?;
    let claim = Command::Claim {
        worker: "w1".into(),
        redelivered: false,
    };
    run.journal.transition(&exec, &claim, Utc::now()).await?;
    let batch = |first: u64, text: &str| {
        runlog_events::Envelope::new(
            exec.clone(),
            1,
            Utc::now(),
            "/test",
            Event::Log(LogBatch {
                first_line: first,
                lines: vec![LogLine {
                    stream: LogStream::Stdout,
                    line: text.into(),
                }],
                dropped: 0,
            }),
        )
    };
    run.journal
        .append_telemetry(&batch(0, "stored before"))
        .await?;
    let mut stream = open(&run, &format!("/v1/executions/{exec}/logs/stream"), None).await?;
    let early = read_sse(&mut stream, Duration::from_secs(10), |e| !e.is_empty()).await?;
    run.journal
        .append_telemetry(&batch(1, "live after"))
        .await?;
    let done = Command::Succeed {
        attempt: 1,
        output: json!(null),
    };
    let more = read_sse(&mut stream, Duration::from_secs(10), |e| !e.is_empty()).await?;
    run.journal.transition(&exec, &done, Utc::now()).await?;
    let end = read_sse(&mut stream, Duration::from_secs(10), |e| {
        e.last().is_some_and(|e| e.event == "end")
    })
    .await?;
    let lines: Vec<String> = early
        .iter()
        .chain(&more)
        .chain(&end)
        .filter(|e| e.event == "log")
        .flat_map(|e| e.data["lines"].as_array().cloned().unwrap_or_default())
        .map(|l| l["line"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(lines, ["stored before", "live after"]);
    let (_, logs) = run.get(&format!("/v1/executions/{exec}/logs")).await?;
    assert_eq!(logs["lines"].as_array().map(Vec::len), Some(2));
    run.stop().await;
    Ok(())
}
