//! The `log-search` scenario: 100,000 log lines of 20 executions in the
//! logs stream of a real engine process, one planted line among them, and
//! `GET /v1/logs/search?q=<planted>` timed: every line is tested (one
//! match, the limit never reached), so the figure is the cost of a full
//! bounded scan of that many lines.

use std::time::Instant;

use anyhow::{Context, ensure};
use async_nats::jetstream;
use chrono::Utc;
use runlog_events::event::{Event, LogBatch, LogLine, LogStream};
use runlog_events::journal::Journal;
use runlog_events::{Envelope, ExecutionId, Subjects};

use crate::rig::Rig;

/// What one search found and took.
#[derive(Debug, Clone, Copy)]
pub struct Searched {
    /// Lines the engine tested.
    pub scanned_lines: u64,
    /// The engine's own figure.
    pub took_ms: f64,
    /// Request to answer, as the client saw it.
    pub wall_ms: f64,
}

const EXECUTIONS: usize = 20;
const BATCHES: u64 = 100;
const PLANTED: &str = "needle-42: the backup found 3 unreadable files";

/// Plants `lines` lines (at least 20 × 100) and times `searches` searches
/// for the planted one.
pub async fn log_search(lines: u64, searches: usize) -> anyhow::Result<Vec<Searched>> {
    let rig = Rig::start().await?;
    let http = reqwest::Client::new();
    let mut executions = Vec::new();
    for _ in 0..EXECUTIONS {
        let answer: serde_json::Value = http
            .post(format!("{}/v1/executions", rig.http()))
            .json(&serde_json::json!({"kind": "shell", "queue": "search", "input": {"shell": "true"}}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        executions.push(ExecutionId::new(answer["id"].as_str().context("an id")?)?);
    }
    let js = jetstream::new(async_nats::connect(rig.nats_url()).await?);
    let journal = Journal::new(js, Subjects::default(), "/runlog/loadtest");
    let per_batch = (lines / (EXECUTIONS as u64 * BATCHES)).max(1);
    let planted_at = (BATCHES / 2) * per_batch;
    let mut appends = Vec::new();
    for b in 0..BATCHES {
        for (i, exec) in executions.iter().enumerate() {
            let lines = (0..per_batch)
                .map(|k| {
                    let n = b * per_batch + k;
                    let line = if i == 7 && n == planted_at {
                        PLANTED.to_owned()
                    } else {
                        format!("line {n}: copied 4096 bytes of /srv/data/part-{i}")
                    };
                    LogLine {
                        stream: LogStream::Stdout,
                        line,
                    }
                })
                .collect();
            let batch = Event::Log(LogBatch {
                first_line: b * per_batch,
                lines,
                dropped: 0,
            });
            appends.push(Envelope::new(
                exec.clone(),
                1,
                Utc::now(),
                "/runlog/loadtest",
                batch,
            ));
        }
    }
    for envelope in &appends {
        journal.append_telemetry(envelope).await?;
    }
    let mut runs = Vec::new();
    for _ in 0..searches {
        let started = Instant::now();
        let answer: serde_json::Value = http
            .get(format!("{}/v1/logs/search", rig.http()))
            .query(&[("q", "needle-42")])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
        ensure!(
            answer["matches"][0]["line"] == PLANTED && answer["complete"] == true,
            "the planted line is found: {answer}"
        );
        runs.push(Searched {
            scanned_lines: answer["scanned_lines"].as_u64().unwrap_or(0),
            took_ms: answer["took_ms"].as_f64().unwrap_or(f64::NAN),
            wall_ms,
        });
    }
    Ok(runs)
}
