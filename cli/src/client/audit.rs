//! `runlog audit`: the engine's audit trail (`GET /v1/audit`), newest
//! first: who changed what, through which door, from where, and the answer.
//!
//! ```text
//! runlog audit --since 1h
//! runlog audit --route /cancel --method POST
//! runlog audit --target 01a23b25-… -o json
//! ```

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::render::{self, Table};
use super::{Conn, Error, Exit, push_since};

/// Options of `runlog audit`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only commands of this actor (`anonymous` until the API has tokens).
    #[arg(long)]
    actor: Option<String>,
    /// Only routes (or subjects) containing this (`/cancel`, `/v1/schedules`).
    #[arg(long)]
    route: Option<String>,
    /// Only this method (`POST`, `PUT`, `DELETE`; `PUB` for the NATS doors).
    #[arg(long)]
    method: Option<String>,
    /// Only commands that created or named this execution, schedule, server, ...
    #[arg(long)]
    target: Option<String>,
    /// Only commands since this time, or this long ago (`10m`, `2h`).
    #[arg(long)]
    since: Option<String>,
    /// At most this many records.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    #[command(flatten)]
    conn: Conn,
}

impl Args {
    /// The connection options.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }
}

/// Runs `runlog audit`.
pub async fn run(args: Args) -> Result<Exit, Error> {
    let client = args.conn.client()?;
    let mut query: Vec<(&str, String)> = vec![("limit", args.limit.to_string())];
    for (key, value) in [
        ("actor", &args.actor),
        ("route", &args.route),
        ("method", &args.method),
        ("target", &args.target),
    ] {
        if let Some(value) = value {
            query.push((key, value.clone()));
        }
    }
    push_since(&mut query, args.since.as_deref())?;
    let raw: Value = client.get("/v1/audit", &query).await?;
    if args.conn.json() {
        println!("{raw}");
        return Ok(Exit::Success);
    }
    let records = raw["records"].as_array().cloned().unwrap_or_default();
    if records.is_empty() {
        eprintln!("no command matches");
        return Ok(Exit::Success);
    }
    let now = Utc::now();
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let mut table = Table::new(&[
        "WHEN", "ACTOR", "DOOR", "FROM", "METHOD", "PATH", "STATUS", "TARGET",
    ]);
    for r in &records {
        let when = r["time"]
            .as_str()
            .and_then(|t| t.parse::<DateTime<Utc>>().ok())
            .map_or_else(
                || "-".to_owned(),
                |t| format!("{} ago", render::age(Some(t), now)),
            );
        let from = match (r["from"].as_str(), r["forwarded_for"].as_str()) {
            (Some(peer), Some(forwarded)) => format!("{peer} (for {forwarded})"),
            (Some(peer), None) => peer.to_owned(),
            (None, _) => "-".to_owned(),
        };
        table.row(vec![
            when,
            text(&r["actor"]),
            text(&r["door"]),
            from,
            text(&r["method"]),
            text(&r["path"]),
            r["status"].to_string(),
            text(&r["target"]),
        ]);
    }
    table.print();
    Ok(Exit::Success)
}
