//! `runlog workers` and `runlog queues`: who takes work, and what waits.

use chrono::Utc;
use runlog_events::Priority;
use serde_json::Value;

use super::render::{self, Table};
use super::views::{Queues, Workers};
use super::{Conn, Error, Exit};

/// Options of `runlog workers` and `runlog queues`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    conn: Conn,
}

impl Args {
    /// The connection options.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }
}

/// Runs `runlog workers`.
pub async fn workers(args: Args) -> Result<Exit, Error> {
    let client = args.conn.client()?;
    let raw: Value = client.get("/v1/workers", &[]).await?;
    if args.conn.json() {
        println!("{raw}");
        return Ok(Exit::Success);
    }
    let mut answer: Workers = serde_json::from_value(raw)
        .map_err(|e| Error::Protocol(format!("cannot read the worker registry: {e}")))?;
    if answer.workers.is_empty() {
        eprintln!("no live worker: start one with `runlog worker` (`runlog dev` runs one)");
        return Ok(Exit::Success);
    }
    answer.workers.sort_by(|a, b| a.id.cmp(&b.id));
    let now = Utc::now();
    let mut table = Table::new(&[
        "ID", "HOST", "QUEUES", "LABELS", "RUNNING", "UP", "SEEN", "STATE",
    ]);
    for w in &answer.workers {
        let labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        table.row(vec![
            w.id.clone(),
            w.host.clone(),
            if w.queues.is_empty() {
                "default".into()
            } else {
                w.queues.join(",")
            },
            if labels.is_empty() {
                "-".into()
            } else {
                labels.join(",")
            },
            format!("{}/{}", w.running.len(), w.concurrency),
            render::age(w.started_at, now),
            format!("{} ago", render::age(w.last_seen, now)),
            if w.paused_for_resources {
                "paused (host overloaded)".into()
            } else {
                "taking work".into()
            },
        ]);
    }
    table.print();
    Ok(Exit::Success)
}

/// Runs `runlog queues`.
pub async fn queues(args: Args) -> Result<Exit, Error> {
    let client = args.conn.client()?;
    let raw: Value = client.get("/v1/queues", &[]).await?;
    if args.conn.json() {
        println!("{raw}");
        return Ok(Exit::Success);
    }
    let answer: Queues = serde_json::from_value(raw)
        .map_err(|e| Error::Protocol(format!("cannot read the queues: {e}")))?;
    if answer.queues.is_empty() {
        eprintln!("no queue has seen work yet; submit with `runlog submit shell -- echo hello`");
        return Ok(Exit::Success);
    }
    let mut table = Table::new(&[
        "QUEUE", "WAITING", "HIGH", "NORMAL", "LOW", "RUNNING", "RETRYING",
    ]);
    for q in &answer.queues {
        let at = |p: Priority| q.queued.get(&p).copied().unwrap_or(0).to_string();
        table.row(vec![
            q.queue.clone(),
            q.depth.to_string(),
            at(Priority::High),
            at(Priority::Normal),
            at(Priority::Low),
            q.running.to_string(),
            q.retry_scheduled.to_string(),
        ]);
    }
    table.print();
    Ok(Exit::Success)
}
