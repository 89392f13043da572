//! `runlog status ID`: one execution, its attempts, output or error.

use chrono::Utc;
use runlog_events::resources::ResourceTotals;
use serde_json::Value;

use super::render::{self, Table};
use super::views::Execution;
use super::{Conn, Error, Exit, path_id};

/// Options of `runlog status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The execution id (as `runlog submit` or `runlog ls` print it).
    id: String,
    #[command(flatten)]
    conn: Conn,
}

impl Args {
    /// The connection options.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }
}

/// Runs `runlog status`.
pub async fn run(args: Args) -> Result<Exit, Error> {
    let client = args.conn.client()?;
    let raw: Value = client
        .get(&format!("/v1/executions/{}", path_id(&args.id)), &[])
        .await?;
    if args.conn.json() {
        println!("{raw}");
        return Ok(Exit::Success);
    }
    let e: Execution = serde_json::from_value(raw)
        .map_err(|e| Error::Protocol(format!("cannot read the state of {}: {e}", args.id)))?;
    print(&e);
    Ok(Exit::Success)
}

fn print(e: &Execution) {
    let now = Utc::now();
    let field = |name: &str, value: String| println!("{:<11}{value}", format!("{name}:"));
    field("id", e.id.clone());
    let mut status = render::status(e.status);
    if e.cancel_requested && !e.status.is_terminal() {
        status.push_str(" (cancel requested)");
    }
    field("status", status);
    if let Some(warning) = &e.warning {
        field("warning", warning.clone());
    }
    if let Some(spec) = &e.spec {
        field("kind", spec.kind.clone());
        field(
            "queue",
            format!("{} ({} priority)", spec.queue, spec.priority),
        );
        if !spec.labels.is_empty() {
            field("labels", pairs(&spec.labels));
        }
        if !spec.worker_labels.is_empty() {
            field("requires", pairs(&spec.worker_labels));
        }
        if let Some(of) = &spec.retry_of {
            field("retry of", of.to_string());
        }
    }
    field(
        "attempt",
        match &e.spec {
            Some(spec) => format!("{} of at most {}", e.attempt, spec.retry.max_attempts),
            None => e.attempt.to_string(),
        },
    );
    if let Some(worker) = &e.worker {
        field("worker", worker.clone());
    }
    if let Some(t) = e.submitted_at {
        field(
            "submitted",
            format!("{} ({} ago)", local(t), render::age(Some(t), now)),
        );
    }
    if e.started_at.is_some() {
        field(
            "running",
            render::span(e.started_at, e.finished_at, now)
                + if e.finished_at.is_none() {
                    " so far"
                } else {
                    ""
                },
        );
    }
    if let Some(t) = e.finished_at {
        field(
            "ended",
            format!(
                "{} (took {} from submission)",
                local(t),
                render::span(e.submitted_at, Some(t), now)
            ),
        );
    }
    if let Some(at) = e.retry_at {
        field(
            "retry at",
            format!("{} (in {})", local(at), render::duration(at - now)),
        );
    }
    if let Some(p) = &e.progress {
        let percent = p.percent.map(|p| format!("{p:.0}% ")).unwrap_or_default();
        field(
            "progress",
            format!("{percent}{}", p.message.as_deref().unwrap_or("")),
        );
    }
    if let Some(reason) = &e.reason {
        field("reason", reason.clone());
    }
    if let Some(error) = &e.error {
        field(
            "error",
            format!(
                "{} (class {})",
                error.message,
                serde_json::to_value(error.class)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
        );
    }
    if let Some(r) = &e.resources {
        field("used", used(r));
    }
    if let Some(cost) = &e.cost {
        field(
            "cost",
            format!(
                "{:.6} (cpu {:.6}, memory {:.6}, output {:.6})",
                cost.total, cost.cpu, cost.memory, cost.output
            ),
        );
    }
    if let Some(output) = &e.output {
        println!("output:");
        let pretty = serde_json::to_string_pretty(output).unwrap_or_default();
        for line in pretty.lines() {
            println!("  {line}");
        }
    }
    if !e.attempts.is_empty() {
        println!("attempts:");
        let mut table = Table::new(&[
            "#", "WORKER", "STARTED", "TOOK", "OUTCOME", "CPU", "PEAK RSS", "ERROR",
        ]);
        for a in &e.attempts {
            table.row(vec![
                a.attempt.to_string(),
                a.worker.clone().unwrap_or_else(|| "-".into()),
                a.started_at.map(local).unwrap_or_else(|| "-".into()),
                render::span(a.started_at, a.ended_at, now),
                a.outcome.clone().unwrap_or_else(|| "running".into()),
                a.resources
                    .and_then(|r| r.cpu_ms())
                    .map_or_else(|| "-".into(), render::millis),
                a.resources
                    .and_then(|r| r.peak_rss_bytes)
                    .map_or_else(|| "-".into(), render::bytes),
                a.error
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
            ]);
        }
        for line in table.lines(render::terminal_width().map(|w| w.saturating_sub(2))) {
            println!("  {line}");
        }
    }
}

/// What an execution's attempts used, in one line: `cpu 1.0s (user 0.9s,
/// system 0.1s), peak 210 MB, 0.00006 GB·h, output 40 B, logs 3.4 KB`.
pub(super) fn used(r: &ResourceTotals) -> String {
    let mut parts = vec![format!(
        "{} attempt{} over {}",
        r.attempts,
        if r.attempts == 1 { "" } else { "s" },
        render::millis(r.wall_ms)
    )];
    if let Some(cpu) = r.cpu_ms() {
        parts.push(format!(
            "cpu {} (user {}, system {})",
            render::millis(cpu),
            render::millis(r.cpu_user_ms.unwrap_or(0)),
            render::millis(r.cpu_system_ms.unwrap_or(0))
        ));
    }
    if let Some(rss) = r.peak_rss_bytes {
        parts.push(format!(
            "peak {} ({:.6} GB·h)",
            render::bytes(rss),
            r.memory_gb_hours
        ));
    }
    parts.push(format!("output {}", render::bytes(r.output_bytes)));
    parts.push(format!("logs {}", render::bytes(r.log_bytes)));
    if let (Some(sent), Some(received)) = (r.network_sent_bytes, r.network_received_bytes) {
        parts.push(format!(
            "network {} sent, {} received",
            render::bytes(sent),
            render::bytes(received)
        ));
    }
    parts.join(", ")
}

fn local(t: chrono::DateTime<Utc>) -> String {
    t.with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn pairs(map: &std::collections::BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
