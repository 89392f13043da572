//! `runlog logs ID [-f]`: the lines an execution's attempts wrote; with
//! `-f`, new lines as they come until the execution ends.

use serde_json::Value;

use super::sse::Feed;
use super::views::LogLine;
use super::{Conn, Error, Exit, path_id};

/// Batches read per request.
const PAGE: usize = 1000;

/// Options of `runlog logs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The execution id.
    id: String,
    /// Follow: print new lines as they come, until the execution ends.
    #[arg(long, short)]
    follow: bool,
    /// Only the lines of this attempt.
    #[arg(long, short)]
    attempt: Option<u32>,
    /// Prefix each line with its time, attempt and stream.
    #[arg(long, short)]
    timestamps: bool,
    #[command(flatten)]
    conn: Conn,
}

impl Args {
    /// The connection options.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }
}

/// Runs `runlog logs`.
pub async fn run(args: Args) -> Result<Exit, Error> {
    let client = args.conn.client()?;
    let id = path_id(&args.id);
    if args.follow {
        let mut feed = Feed::new(
            &client,
            format!("/v1/executions/{id}/logs/stream"),
            Vec::new(),
            None,
        );
        loop {
            let event = feed.next().await?;
            match event.event.as_str() {
                "log" => {
                    let batch: Value = serde_json::from_str(&event.data)
                        .map_err(|e| Error::Protocol(format!("cannot read a log event: {e}")))?;
                    print_lines(&args, &batch["lines"])?;
                }
                "end" => return Ok(Exit::Success),
                "error" => {
                    return Err(Error::Protocol(format!(
                        "the engine stopped the log feed: {}",
                        event.data
                    )));
                }
                _ => {}
            }
        }
    }
    let mut after = 0u64;
    let mut dropped = 0;
    loop {
        let query = [("after", after.to_string()), ("limit", PAGE.to_string())];
        let page: Value = client
            .get(&format!("/v1/executions/{id}/logs"), &query)
            .await?;
        let lines = &page["lines"];
        print_lines(&args, lines)?;
        dropped += page["dropped_lines"].as_u64().unwrap_or(0);
        let next = page["next_after"].as_u64().unwrap_or(after);
        if next <= after {
            break;
        }
        after = next;
    }
    if dropped > 0 && !args.conn.json() {
        eprintln!("({dropped} lines were dropped by the worker while it was overloaded)");
    }
    // Lines exist only once something ran: tell a mistyped id from a quiet task.
    if after == 0 {
        let _: Value = client.get(&format!("/v1/executions/{id}"), &[]).await?;
    }
    Ok(Exit::Success)
}

fn print_lines(args: &Args, lines: &Value) -> Result<(), Error> {
    let lines: Vec<Value> = lines.as_array().cloned().unwrap_or_default();
    for raw in lines {
        let line: LogLine = serde_json::from_value(raw.clone())
            .map_err(|e| Error::Protocol(format!("cannot read a log line: {e}")))?;
        if args.attempt.is_some_and(|a| a != line.attempt) {
            continue;
        }
        if args.conn.json() {
            println!("{raw}");
            continue;
        }
        let prefix = if args.timestamps {
            let time = line
                .time
                .map(|t| {
                    t.with_timezone(&chrono::Local)
                        .format("%H:%M:%S%.3f")
                        .to_string()
                })
                .unwrap_or_default();
            format!("{time} #{} {} ", line.attempt, line.stream)
        } else {
            String::new()
        };
        if line.stream == "stderr" {
            eprintln!("{prefix}{}", line.line);
        } else {
            println!("{prefix}{}", line.line);
        }
    }
    Ok(())
}
