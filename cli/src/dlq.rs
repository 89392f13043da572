//! `runlog dlq`: find dead letters, look at one, replay them in bulk, and
//! follow bulk operations, through the engine's HTTP API
//! (`docs/dead-letters.md`).
//!
//! ```text
//! runlog dlq list --queue billing --class network --since 2h
//! runlog dlq show 01a20b…
//! runlog dlq replay --name "bug 1234 fixed" --queue billing --class network --dry-run
//! runlog dlq replay --name "bug 1234 fixed" --queue billing --class network --rate 200 --follow
//! runlog dlq operation 01a20c… --follow
//! ```

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};

/// How often `--follow` reads an operation's progress.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `runlog dlq`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The engine's HTTP API.
    #[arg(
        long,
        env = "RUNLOG_ENGINE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    engine_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List dead letters, newest first.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Only dead letters that were (true) or were not (false) replayed.
        #[arg(long)]
        replayed: Option<bool>,
        /// At most this many (all pages are read up to it).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// How to print.
        #[arg(long, short = 'o', env = "RUNLOG_OUTPUT", value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Show one dead letter with its whole error history.
    Show {
        /// The execution id.
        id: String,
        /// How to print.
        #[arg(long, short = 'o', env = "RUNLOG_OUTPUT", value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Replay every dead letter matching the filters, each at most once, as
    /// a new execution linked to its original (a named, audited operation).
    Replay {
        /// The operation's name, kept in its audit record (required unless
        /// --dry-run).
        #[arg(long, required_unless_present = "dry_run")]
        name: Option<String>,
        #[command(flatten)]
        filter: Filter,
        /// Count the matches and show a sample; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// At most this many replays per second (engine default 100).
        #[arg(long)]
        rate: Option<u32>,
        /// Show progress until the operation ends.
        #[arg(long)]
        follow: bool,
        /// How to print.
        #[arg(long, short = 'o', env = "RUNLOG_OUTPUT", value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Show bulk operations (replays, cancels), or one; follow or cancel it.
    Operation {
        /// The operation id; all operations when absent.
        id: Option<String>,
        /// Show progress until it ends.
        #[arg(long, requires = "id")]
        follow: bool,
        /// Stop it: items under way complete, the rest are left alone.
        #[arg(long, requires = "id", conflicts_with = "follow")]
        cancel: bool,
        /// How to print.
        #[arg(long, short = 'o', env = "RUNLOG_OUTPUT", value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// The filters shared by `list` and `replay`.
#[derive(Debug, Clone, clap::Args)]
struct Filter {
    /// Only this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only this task kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only this class of the last error (network, timeout, rate_limited,
    /// resource, permission, invalid_input, not_found, permanent, crashed,
    /// cancelled, unknown).
    #[arg(long)]
    class: Option<String>,
    /// Only this reason: attempts_exhausted, permanent or max_deliveries.
    #[arg(long)]
    reason: Option<String>,
    /// Only executions with this label (key=value; repeat for several).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Dead-lettered at or after: RFC 3339, or an age such as 30m, 2h, 7d.
    #[arg(long)]
    since: Option<String>,
    /// Dead-lettered before: RFC 3339, or an age such as 30m, 2h, 7d.
    #[arg(long)]
    until: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Aligned columns for people.
    Text,
    /// The API's JSON.
    Json,
}

impl Filter {
    /// The filter as `(field, value)` pairs, times made absolute.
    fn pairs(&self, now: DateTime<Utc>) -> anyhow::Result<Vec<(&'static str, String)>> {
        let mut pairs = Vec::new();
        for (field, value) in [
            ("queue", &self.queue),
            ("kind", &self.kind),
            ("class", &self.class),
            ("reason", &self.reason),
        ] {
            if let Some(value) = value {
                pairs.push((field, value.clone()));
            }
        }
        if !self.labels.is_empty() {
            pairs.push(("label", self.labels.join(",")));
        }
        for (field, value) in [("since", &self.since), ("until", &self.until)] {
            if let Some(value) = value {
                pairs.push((
                    field,
                    instant(value, now).with_context(|| format!("--{field}"))?,
                ));
            }
        }
        Ok(pairs)
    }
}

/// An RFC 3339 time, or an age (`90s`, `30m`, `2h`, `7d`) before `now`.
fn instant(value: &str, now: DateTime<Utc>) -> anyhow::Result<String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(value) {
        return Ok(time.with_timezone(&Utc).to_rfc3339());
    }
    let split = value.len().saturating_sub(1);
    let (number, unit) = value.split_at(split);
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 0,
    };
    match number.parse::<i64>() {
        Ok(n) if seconds > 0 && n >= 0 => {
            Ok((now - chrono::TimeDelta::seconds(n * seconds)).to_rfc3339())
        }
        _ => bail!("{value:?} is neither an RFC 3339 time nor an age such as 30m, 2h or 7d"),
    }
}

/// A thin client of the engine's API that turns problems into sentences.
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(base: &str) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Api {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request.send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the engine at {} ({e}): is it running? `runlog dev` or \
                 `runlog engine` starts one; point --engine-url (or RUNLOG_ENGINE_URL) at it",
                self.base
            )
        })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        match (body["detail"].as_str(), body["code"].as_str()) {
            (Some(detail), Some(code)) => match body["field"].as_str() {
                Some(field) => bail!("{detail} ({code}, field {field})"),
                None => bail!("{detail} ({code})"),
            },
            _ => bail!("the engine answered {status}: {body}"),
        }
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(url).query(query)).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.post(url).json(&body)).await
    }
}

/// Runs `runlog dlq`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let api = Api::new(&args.engine_url)?;
    let now = Utc::now();
    match args.command {
        Command::List {
            filter,
            replayed,
            limit,
            output,
        } => list(&api, filter.pairs(now)?, replayed, limit, output).await,
        Command::Show { id, output } => show(&api, &id, output).await,
        Command::Replay {
            name,
            filter,
            dry_run,
            rate,
            follow,
            output,
        } => {
            let mut body = json!({
                "filter": filter
                    .pairs(now)?
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), json!(v)))
                    .collect::<serde_json::Map<_, _>>(),
                "dry_run": dry_run,
                "requested_by": requester(),
            });
            if let Some(name) = name {
                body["name"] = json!(name);
            }
            if let Some(rate) = rate {
                body["rate_per_sec"] = json!(rate);
            }
            let reply = api.post("/v1/dead-letters/replay", body).await?;
            if output == Output::Json && !follow {
                return print_json(&reply);
            }
            if dry_run {
                println!(
                    "{} dead letters match: {} would be replayed, {} were replayed before",
                    reply["matched"], reply["would_replay"], reply["already_replayed"]
                );
                for id in reply["sample"].as_array().into_iter().flatten() {
                    println!("  {}", id.as_str().unwrap_or_default());
                }
                return Ok(());
            }
            let id = reply["id"].as_str().unwrap_or_default().to_owned();
            println!(
                "replay {id} started: {} dead letters at most {}/s",
                reply["matched"], reply["rate_per_sec"]
            );
            if follow {
                return self::follow(&api, &id, output).await;
            }
            println!("follow it with `runlog dlq operation {id} --follow`");
            Ok(())
        }
        Command::Operation {
            id,
            follow,
            cancel,
            output,
        } => match id {
            None => operations(&api, output).await,
            Some(id) if cancel => {
                let body = json!({ "requested_by": requester() });
                let op = api
                    .post(&format!("/v1/operations/{id}/cancel"), body)
                    .await?;
                match output {
                    Output::Json => print_json(&op),
                    Output::Text => {
                        println!("operation {id} cancelled; {}", progress(&op));
                        Ok(())
                    }
                }
            }
            Some(id) if follow => self::follow(&api, &id, output).await,
            Some(id) => {
                let op = api.get(&format!("/v1/operations/{id}"), &[]).await?;
                match output {
                    Output::Json => print_json(&op),
                    Output::Text => {
                        print_operation(&op);
                        Ok(())
                    }
                }
            }
        },
    }
}

/// Who asks, for the audit record.
fn requester() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    match std::env::var("HOSTNAME") {
        Ok(host) if !host.is_empty() => format!("{user}@{host} (runlog dlq)"),
        _ => format!("{user} (runlog dlq)"),
    }
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn list(
    api: &Api,
    filter: Vec<(&'static str, String)>,
    replayed: Option<bool>,
    limit: usize,
    output: Output,
) -> anyhow::Result<()> {
    let mut items: Vec<Value> = Vec::new();
    let mut cursor: Option<u64> = None;
    while items.len() < limit {
        let mut query = filter.clone();
        query.push(("limit", (limit - items.len()).min(1000).to_string()));
        if let Some(replayed) = replayed {
            query.push(("replayed", replayed.to_string()));
        }
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor.to_string()));
        }
        let page = api.get("/v1/dead-letters", &query).await?;
        items.extend(page["dead_letters"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_u64() {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    if output == Output::Json {
        return print_json(&Value::Array(items));
    }
    if items.is_empty() {
        println!("no dead letters match");
        return Ok(());
    }
    let rows: Vec<[String; 8]> = items
        .iter()
        .map(|d| {
            [
                text(&d["id"]),
                text(&d["queue"]),
                text(&d["kind"]),
                text(&d["reason"]),
                text(&d["last_error"]["class"]),
                text(&d["dead_lettered_at"]),
                match d["replays"].as_array().and_then(|r| r.last()) {
                    Some(r) => text(&r["id"]),
                    None => "-".to_owned(),
                },
                shorten(&text(&d["last_error"]["message"]), 60),
            ]
        })
        .collect();
    table(
        [
            "ID",
            "QUEUE",
            "KIND",
            "REASON",
            "CLASS",
            "DEAD-LETTERED",
            "REPLAY",
            "ERROR",
        ],
        &rows,
    );
    if items.len() == limit {
        println!("(first {limit}; raise --limit for more)");
    }
    Ok(())
}

async fn show(api: &Api, id: &str, output: Output) -> anyhow::Result<()> {
    let d = api.get(&format!("/v1/dead-letters/{id}"), &[]).await?;
    if output == Output::Json {
        return print_json(&d);
    }
    println!("dead letter     {}", text(&d["id"]));
    println!(
        "queue, kind     {}, {}",
        text(&d["queue"]),
        text(&d["kind"])
    );
    if let Some(labels) = d["labels"].as_object().filter(|l| !l.is_empty()) {
        let labels: Vec<_> = labels
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect();
        println!("labels          {}", labels.join(", "));
    }
    println!("reason          {}", text(&d["reason"]));
    println!("attempts        {}", d["attempts"]);
    println!("dead-lettered   {}", text(&d["dead_lettered_at"]));
    for replay in d["replays"].as_array().into_iter().flatten() {
        match replay["operation"].as_str() {
            Some(op) => println!("replayed as     {} (operation {op})", text(&replay["id"])),
            None => println!("replayed as     {}", text(&replay["id"])),
        }
    }
    println!("errors:");
    for e in d["errors"].as_array().into_iter().flatten() {
        println!(
            "  attempt {} at {}: [{}] {}",
            e["attempt"],
            text(&e["at"]),
            text(&e["error"]["class"]),
            text(&e["error"]["message"])
        );
    }
    Ok(())
}

async fn operations(api: &Api, output: Output) -> anyhow::Result<()> {
    let reply = api.get("/v1/operations", &[]).await?;
    if output == Output::Json {
        return print_json(&reply["operations"]);
    }
    let rows: Vec<[String; 9]> = reply["operations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|op| {
            [
                text(&op["id"]),
                text(&op["kind"]),
                text(&op["state"]),
                shorten(&text(&op["name"]), 40),
                text(&op["requested_by"]),
                op["matched"].to_string(),
                op["done"].to_string(),
                op["skipped"].to_string(),
                op["failed"].to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no bulk operations yet");
        return Ok(());
    }
    table(
        [
            "ID", "KIND", "STATE", "NAME", "BY", "MATCHED", "DONE", "SKIPPED", "FAILED",
        ],
        &rows,
    );
    Ok(())
}

fn progress(op: &Value) -> String {
    format!(
        "{}: {} of {} done, {} skipped, {} failed",
        text(&op["state"]),
        op["done"],
        op["matched"],
        op["skipped"],
        op["failed"]
    )
}

fn print_operation(op: &Value) {
    println!(
        "operation       {} ({})",
        text(&op["id"]),
        text(&op["kind"])
    );
    println!("name            {}", text(&op["name"]));
    println!("requested by    {}", text(&op["requested_by"]));
    println!("filter          {}", op["filter"]);
    println!("rate            {}/s", op["rate_per_sec"]);
    println!("created         {}", text(&op["created_at"]));
    if op["finished_at"].is_string() {
        println!("ended           {}", text(&op["finished_at"]));
    }
    if op["cancelled_by"].is_string() {
        println!("cancelled by    {}", text(&op["cancelled_by"]));
    }
    println!("progress        {}", progress(op));
    for e in op["errors"].as_array().into_iter().flatten() {
        println!("  {}: {}", text(&e["id"]), text(&e["detail"]));
    }
}

/// Shows an operation's progress until it ends; fails if it was cancelled
/// or some items failed.
async fn follow(api: &Api, id: &str, output: Output) -> anyhow::Result<()> {
    let path = format!("/v1/operations/{id}");
    let tty = std::io::stdout().is_terminal() && output == Output::Text;
    let mut last = String::new();
    let op = loop {
        let op = tokio::select! {
            op = api.get(&path, &[]) => op?,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("\nstopped following; operation {id} keeps running \
                           (`runlog dlq operation {id} --cancel` stops it)");
                std::process::exit(130);
            }
        };
        let line = progress(&op);
        if line != last && output == Output::Text {
            if tty {
                print!("\r\x1b[2K{line}");
                std::io::stdout().flush()?;
            } else {
                println!("{line}");
            }
            last = line;
        }
        if op["state"] != "running" {
            break op;
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    };
    if tty {
        println!();
    }
    if output == Output::Json {
        print_json(&op)?;
    }
    let failed = op["failed"].as_u64().unwrap_or(0);
    if op["state"] == "cancelled" {
        bail!(
            "operation {id} was cancelled by {}",
            text(&op["cancelled_by"])
        );
    }
    if failed > 0 {
        bail!(
            "{failed} items of operation {id} failed (`runlog dlq operation {id}` lists the \
             first); running the same replay again retries them and skips the rest"
        );
    }
    Ok(())
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn shorten(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or_default();
    if line.chars().count() <= max {
        return line.to_owned();
    }
    let cut: String = line.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_times_become_instants() {
        let now = DateTime::parse_from_rfc3339("2026-11-24T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(instant("2h", now).unwrap(), "2026-11-24T04:00:00+00:00");
        assert_eq!(instant("7d", now).unwrap(), "2026-11-17T06:00:00+00:00");
        assert_eq!(
            instant("2026-11-24T05:00:00+01:00", now).unwrap(),
            "2026-11-24T04:00:00+00:00"
        );
        assert!(instant("yesterday", now).is_err());
        assert!(instant("-2h", now).is_err());
    }
}
