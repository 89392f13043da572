//! `GET /v1/logs/search`: a planted line among 100,000 lines of 20
//! executions in two queues, found by substring and by regular expression,
//! filtered by queue, kind and time, newest first, with the lines scanned
//! reported and the scan bounded.

mod common;

use anyhow::{Result, ensure};
use chrono::Utc;
use common::start;
use runlog_events::event::{Event, LogBatch, LogLine, LogStream};
use runlog_events::{Envelope, ExecutionId, Status};
use serde_json::{Value, json};

const EXECUTIONS: usize = 20;
const BATCHES: u64 = 100;
const LINES: u64 = 50;
const TOTAL: u64 = EXECUTIONS as u64 * BATCHES * LINES;
const PLANTED: &str = "needle-42: the backup of /srv/photos found 3 unreadable files";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_line_among_100_000_is_found_newest_first_with_the_lines_scanned() -> Result<()> {
    let mut run = start().await?;
    let mut executions: Vec<ExecutionId> = Vec::new();
    for i in 0..EXECUTIONS {
        let (queue, kind) = if i % 2 == 0 {
            ("search-a", "shell")
        } else {
            ("search-b", "echo")
        };
        let input = json!({"shell": "true"});
        let exec = run
            .submit(json!({"kind": kind, "queue": queue, "input": input}))
            .await?;
        run.wait_status(&exec, Status::Queued, None).await?;
        executions.push(exec);
    }
    // Execution 7 (queue search-b) writes the planted line in its 50th batch.
    let target = executions[7].clone();
    let before_all = Utc::now();
    for b in 0..BATCHES {
        for exec in &executions {
            let lines = (0..LINES)
                .map(|i| {
                    let n = b * LINES + i;
                    let line = if *exec == target && n == 2_500 {
                        PLANTED.to_owned()
                    } else {
                        format!("line {n} of {exec}: copied 4096 bytes")
                    };
                    LogLine {
                        stream: LogStream::Stdout,
                        line,
                    }
                })
                .collect();
            let batch = Event::Log(LogBatch {
                first_line: b * LINES,
                lines,
                dropped: 0,
            });
            run.journal
                .append_telemetry(&Envelope::new(exec.clone(), 1, Utc::now(), "/test", batch))
                .await?;
        }
    }
    let last_exec = executions[EXECUTIONS - 1].clone();

    let search = |query: String| {
        let run = &run;
        async move {
            let (status, answer) = run.get(&format!("/v1/logs/search?{query}")).await?;
            ensure!(status == 200, "{status}: {answer}");
            Ok::<Value, anyhow::Error>(answer)
        }
    };

    // By substring: one match, and every line was read to be sure.
    let found = search("q=needle-42".into()).await?;
    ensure!(
        found["matches"].as_array().map(Vec::len) == Some(1),
        "{found}"
    );
    let m = &found["matches"][0];
    ensure!(
        m["execution"] == target.as_str()
            && m["line"] == PLANTED
            && m["n"] == 2_500
            && m["queue"] == "search-b"
            && m["kind"] == "echo"
            && m["stream"] == "stdout"
            && m["attempt"] == 1,
        "{m}"
    );
    ensure!(found["scanned_lines"] == TOTAL, "{found}");
    ensure!(
        found["scanned_messages"] == EXECUTIONS as u64 * BATCHES,
        "{found}"
    );
    ensure!(
        found["complete"] == true && found["took_ms"].is_u64(),
        "{found}"
    );

    // By regular expression.
    let found = search("regex=needle-%5Cd%2B%3A.*unreadable".into()).await?;
    ensure!(found["matches"][0]["line"] == PLANTED, "{found}");

    // Queue and kind filters: lines of other executions are not tested.
    let found = search("q=needle-42&queue=search-a".into()).await?;
    ensure!(found["matches"] == json!([]), "{found}");
    ensure!(
        found["scanned_lines"] == TOTAL / 2 && found["complete"] == true,
        "{found}"
    );
    let found = search("q=needle-42&kind=echo".into()).await?;
    ensure!(
        found["matches"].as_array().map(Vec::len) == Some(1),
        "{found}"
    );

    // Newest first, and a match limit ends the scan early.
    let found = search("q=copied&limit=3".into()).await?;
    let lines: Vec<&Value> = found["matches"].as_array().into_iter().flatten().collect();
    ensure!(lines.len() == 3 && found["complete"] == false, "{found}");
    let last_line = BATCHES * LINES - 1;
    ensure!(
        lines[0]["execution"] == last_exec.as_str() && lines[0]["n"] == last_line,
        "the newest line comes first: {found}"
    );
    ensure!(
        lines[1]["n"] == last_line - 1 && lines[2]["n"] == last_line - 2,
        "{found}"
    );
    ensure!(found["scanned_lines"].as_u64() < Some(TOTAL), "{found}");

    // The scan limit bounds the work, and says the answer is partial.
    let found = search("q=needle-42&scan_limit=10000".into()).await?;
    let scanned = found["scanned_lines"].as_u64().unwrap_or(0);
    ensure!(
        found["complete"] == false && (10_000..TOTAL).contains(&scanned),
        "{found}"
    );

    // Time bounds: nothing was written before the first batch.
    let until = (before_all - chrono::TimeDelta::seconds(1)).to_rfc3339();
    let found = search(format!("q=line&until={}", urlencode(&until))).await?;
    ensure!(found["matches"] == json!([]), "{found}");
    let since = Utc::now().to_rfc3339();
    let found = search(format!("q=line&since={}", urlencode(&since))).await?;
    ensure!(
        found["matches"] == json!([]) && found["scanned_lines"] == 0,
        "{found}"
    );

    // Bad queries are refused with the field to blame.
    for (query, field) in [
        ("regex=(unclosed", "regex"),
        ("q=a&regex=b", "regex"),
        ("", "q"),
        ("q=a&queue=no%20spaces", "queue"),
    ] {
        let (status, answer) = run.get(&format!("/v1/logs/search?{query}")).await?;
        ensure!(
            status == 400 && answer["code"] == "invalid_query" && answer["field"] == field,
            "{query}: {status} {answer}"
        );
    }
    run.stop().await;
    Ok(())
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}
