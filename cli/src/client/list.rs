//! `runlog ls`: executions, newest first, as an aligned table.

use chrono::Utc;
use runlog_events::Status;
use serde_json::{Value, json};

use super::render::{self, Table, parse_pair};
use super::views::{Page, Summary};
use super::{Client, Conn, Error, Exit, push_since};

/// The largest page the API gives.
const MAX_PAGE: usize = 1000;

/// Options of `runlog ls`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Only these states (comma-separated or repeated): pending, queued,
    /// running, failed, retry_scheduled, succeeded, cancelled, timed_out,
    /// dead_lettered, rejected.
    #[arg(long, short, value_delimiter = ',', value_parser = parse_status)]
    pub status: Vec<Status>,
    /// Only this queue.
    #[arg(long, short)]
    pub queue: Option<String>,
    /// Only this kind.
    #[arg(long, short)]
    pub kind: Option<String>,
    /// Only executions with this label (`team=infra`); repeat to require several.
    #[arg(long = "label", short = 'l', value_parser = parse_pair, value_name = "KEY=VALUE")]
    pub labels: Vec<(String, String)>,
    /// Only executions submitted since this time, or this long ago (`10m`, `2h`).
    #[arg(long, value_name = "TIME|DURATION")]
    pub since: Option<String>,
    /// At most this many executions.
    #[arg(long, short = 'n', default_value_t = 50)]
    pub limit: usize,
    #[command(flatten)]
    pub conn: Conn,
}

/// Parses a state name (`retry_scheduled`; `-` works for `_`).
pub fn parse_status(s: &str) -> Result<Status, String> {
    serde_json::from_value(json!(s.trim().replace('-', "_"))).map_err(|_| {
        format!(
            "unknown status {s:?}: use pending, queued, running, failed, retry_scheduled, \
             succeeded, cancelled, timed_out, dead_lettered or rejected"
        )
    })
}

impl Args {
    /// The connection options.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// The query of `GET /v1/executions` these filters make.
    pub fn query(&self) -> Result<Vec<(&'static str, String)>, Error> {
        let mut query = Vec::new();
        if !self.status.is_empty() {
            let names: Vec<&str> = self.status.iter().map(|s| s.as_str()).collect();
            query.push(("status", names.join(",")));
        }
        if let Some(queue) = &self.queue {
            query.push(("queue", queue.clone()));
        }
        if let Some(kind) = &self.kind {
            query.push(("kind", kind.clone()));
        }
        if !self.labels.is_empty() {
            let labels: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            query.push(("label", labels.join(",")));
        }
        push_since(&mut query, self.since.as_deref())?;
        Ok(query)
    }
}

/// Reads up to `limit` executions, following the cursor; the raw items and
/// the cursor of the rest.
pub async fn fetch(
    client: &Client,
    query: &[(&'static str, String)],
    limit: usize,
) -> Result<(Vec<Value>, Option<u64>), Error> {
    let mut items = Vec::new();
    let mut cursor = None;
    loop {
        let mut q = query.to_vec();
        q.push(("limit", (limit - items.len()).min(MAX_PAGE).to_string()));
        if let Some(c) = cursor {
            q.push(("cursor", format!("{c}")));
        }
        let page: Value = client.get("/v1/executions", &q).await?;
        let next = page["next_cursor"].as_u64();
        if let Some(Value::Array(batch)) = page.get("executions").cloned() {
            items.extend(batch);
        }
        match next {
            Some(c) if items.len() < limit => cursor = Some(c),
            _ => return Ok((items, next)),
        }
    }
}

/// Runs `runlog ls`.
pub async fn run(args: Args) -> Result<Exit, Error> {
    if args.limit == 0 {
        return Err(Error::Usage("--limit must be at least 1".into()));
    }
    let client = args.conn.client()?;
    let (items, next) = fetch(&client, &args.query()?, args.limit).await?;
    if args.conn.json() {
        println!("{}", json!({"executions": items, "next_cursor": next}));
        return Ok(Exit::Success);
    }
    let page: Page = serde_json::from_value(json!({"executions": items, "next_cursor": next}))
        .map_err(|e| Error::Protocol(format!("cannot read the list of executions: {e}")))?;
    if page.executions.is_empty() {
        eprintln!("no executions match; submit one with `runlog submit shell -- echo hello`");
        return Ok(Exit::Success);
    }
    table(&page.executions).print();
    if page.next_cursor.is_some() {
        eprintln!(
            "(the newest {}; --limit shows more, filters show fewer)",
            page.executions.len()
        );
    }
    Ok(Exit::Success)
}

/// The table of `ls` (and of `watch`).
pub fn table(items: &[Summary]) -> Table {
    let now = Utc::now();
    let mut table = Table::new(&[
        "ID", "STATUS", "KIND", "QUEUE", "ATTEMPT", "AGE", "DURATION",
    ]);
    for s in items {
        table.row(row(s, now));
    }
    table
}

/// One execution's cells.
pub fn row(s: &Summary, now: chrono::DateTime<Utc>) -> Vec<String> {
    vec![
        s.id.clone(),
        render::status(s.status),
        s.kind.clone().unwrap_or_else(|| "-".into()),
        s.queue.clone().unwrap_or_else(|| "-".into()),
        s.attempt.to_string(),
        render::age(s.submitted_at, now),
        render::span(s.started_at, s.finished_at, now),
    ]
}
