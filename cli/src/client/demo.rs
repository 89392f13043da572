//! The load `runlog dev --demo` submits, through the HTTP API like any
//! client, so that a newcomer sees every state within a minute: shell tasks
//! reporting progress, HTTP tasks, a task that fails once and succeeds on
//! its retry, one that fails for good and is dead-lettered, one that runs
//! past its deadline, and a long one the demo cancels.

use std::path::Path;
use std::time::Duration;

use runlog_events::Status;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::views::{Accepted, Page};
use super::{Client, Error, path_id};

/// When the demo cancels its long task.
const CANCEL_AFTER: Duration = Duration::from_secs(5);
/// How long `--once` waits for every demo execution to end.
const SETTLE_WITHIN: Duration = Duration::from_secs(90);

/// One demo execution: what it shows, and the state it should end in.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The execution id.
    pub id: String,
    /// What it shows.
    pub what: &'static str,
    /// The state it ends in.
    pub expect: Status,
}

/// The demo's tasks, against the engine at `engine` (the HTTP tasks call its
/// `/healthz`); `scratch` is a folder for the retrying task's marker file.
fn tasks(engine: &str, scratch: &Path, run: &str) -> Vec<(&'static str, Status, Value)> {
    let progress = |steps: u32, priority: &str| {
        json!({
            "kind": "shell",
            "priority": priority,
            "input": {
                "shell": format!(
                    "for i in $(seq 1 {steps}); do echo \"copying part $i of {steps}: $((i * 100 / {steps}))%\"; sleep 1; done"
                ),
                "progress": {"regex": r"(?P<message>copying part \d+ of \d+): (?P<percent>\d+)%"},
            },
        })
    };
    let marker = scratch.join(format!("{run}.attempt-1-failed"));
    vec![
        (
            "shell task with progress (high priority)",
            Status::Succeeded,
            progress(8, "high"),
        ),
        (
            "shell task with progress",
            Status::Succeeded,
            progress(12, "normal"),
        ),
        (
            "shell task with progress (low priority)",
            Status::Succeeded,
            progress(16, "low"),
        ),
        (
            "HTTP GET of the engine's /healthz",
            Status::Succeeded,
            json!({"kind": "http", "input": {"url": format!("{engine}/healthz")}}),
        ),
        (
            "HTTP GET of the engine's /v1/queues",
            Status::Succeeded,
            json!({"kind": "http", "input": {"url": format!("{engine}/v1/queues")}}),
        ),
        (
            "fails on attempt 1, succeeds on its retry",
            Status::Succeeded,
            json!({
                "kind": "shell",
                "input": {
                    "shell": "if [ -e \"$MARKER\" ]; then echo \"attempt 2: attempt 1 left its marker, all good\"; \
                              else touch \"$MARKER\"; echo \"attempt 1 fails on purpose\" >&2; exit 1; fi",
                    "env": {"MARKER": marker.display().to_string()},
                },
                "retry": {"max_attempts": 3, "backoff_base_ms": 2000, "backoff_max_ms": 3000},
            }),
        ),
        (
            "fails every attempt, then is dead-lettered",
            Status::DeadLettered,
            json!({
                "kind": "shell",
                "input": {"shell": "echo \"this task always fails\" >&2; exit 1"},
                "retry": {"max_attempts": 2, "backoff_base_ms": 1000, "backoff_max_ms": 2000},
            }),
        ),
        (
            "runs past its 4 s deadline",
            Status::TimedOut,
            json!({
                "kind": "shell",
                "input": {"shell": "echo \"sleeping for a minute\"; sleep 60", "kill_grace_ms": 1000},
                "timeout_ms": 4000,
                "retry": {"max_attempts": 1},
            }),
        ),
        (
            "a long task the demo cancels after 5 s",
            Status::Cancelled,
            json!({
                "kind": "shell",
                "input": {
                    "shell": "for i in $(seq 1 300); do echo \"working, second $i\"; sleep 1; done",
                    "kill_grace_ms": 1000,
                },
            }),
        ),
    ]
}

/// Submits the demo load, prints a line per task, and cancels the long task
/// after a few seconds. With `settle`, waits until every demo execution
/// ended and checks each ended as expected. Stops early when `shutdown`
/// fires.
pub async fn run(
    client: &Client,
    scratch: &Path,
    settle: bool,
    shutdown: CancellationToken,
) -> Result<Vec<Submitted>, Error> {
    std::fs::create_dir_all(scratch).map_err(|e| {
        Error::Local(format!(
            "cannot create the demo's folder {}: {e}",
            scratch.display()
        ))
    })?;
    let run = chrono::Utc::now().format("%Y%m%dT%H%M%S").to_string();
    let mut submitted = Vec::new();
    for (what, expect, mut body) in tasks(client.base(), scratch, &run) {
        body["labels"] = json!({"demo": run});
        let accepted: Accepted = client.post("/v1/executions", &body).await?;
        println!("demo         {}  {what}", accepted.id);
        submitted.push(Submitted {
            id: accepted.id,
            what,
            expect,
        });
    }
    println!(
        "demo         follow it with `runlog watch`, or list it with `runlog ls --label demo={run}`"
    );
    let long = submitted
        .iter()
        .find(|s| s.expect == Status::Cancelled)
        .map(|s| s.id.clone());
    tokio::select! {
        _ = tokio::time::sleep(CANCEL_AFTER) => {}
        _ = shutdown.cancelled() => return Ok(submitted),
    }
    if let Some(long) = long {
        let _: Value = client
            .post(
                &format!("/v1/executions/{}/cancel", path_id(&long)),
                &json!({"reason": "the demo cancels its long task"}),
            )
            .await?;
        println!("demo         {long}  cancel requested");
    }
    if settle {
        tokio::select! {
            ended = wait_for_end(client, &run) => ended?,
            _ = shutdown.cancelled() => {}
        }
    }
    Ok(submitted)
}

/// Waits until every execution labelled `demo=<run>` has ended.
async fn wait_for_end(client: &Client, run: &str) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + SETTLE_WITHIN;
    let query = [
        ("label", format!("demo={run}")),
        ("limit", "100".to_owned()),
    ];
    loop {
        let page: Page = client.get("/v1/executions", &query).await?;
        if page.executions.iter().all(|e| e.status.is_terminal()) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Protocol(format!(
                "the demo's executions did not all end within {}s",
                SETTLE_WITHIN.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
