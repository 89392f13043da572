//! `runlog watch`: a live table of executions, like `top`.
//!
//! The table starts from two lists (the newest executions and every active
//! one), follows `/v1/stream` (lifecycle events and progress reports), and
//! reloads the lists periodically so it never drifts. The feed is opened
//! before the lists are read, and an event applies to a row only when it is
//! newer than what the row holds (stream sequences), so nothing falls in
//! between. On a terminal it draws on the alternate screen and restores the
//! terminal on Ctrl-C; otherwise it prints one line per event.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use runlog_events::{Envelope, Status};
use serde_json::{Value, json};

use super::list::{self, fetch};
use super::render::{self, Table, parse_duration};
use super::sse::Feed;
use super::views::{ProgressReport, Stats, Summary};
use super::{Client, Conn, Error, Exit, stdout_is_tty};

/// The `state` a lifecycle event of a feed carries: its execution's
/// summary after it.
fn event_state(data: &str) -> Option<Summary> {
    #[derive(serde::Deserialize)]
    struct WithState {
        state: Option<Summary>,
    }
    serde_json::from_str::<WithState>(data).ok()?.state
}

/// Redraws at most this often.
const FRAME: Duration = Duration::from_millis(200);

/// Options of `runlog watch`.
#[derive(Debug, clap::Args)]
#[group(skip)]
pub struct Args {
    #[command(flatten)]
    filters: list::Args,
    /// How often the table is reloaded from the engine (events update it in
    /// between).
    #[arg(long, value_parser = parse_duration, default_value = "5s", value_name = "DURATION")]
    refresh: Duration,
}

impl Args {
    /// The connection options.
    pub fn conn(&self) -> &Conn {
        &self.filters.conn
    }
}

/// Runs `runlog watch`.
pub async fn run(args: Args) -> Result<Exit, Error> {
    let client = args.filters.conn.client()?;
    let mut query = Vec::new();
    if let Some(queue) = &args.filters.queue {
        query.push(("queue", queue.clone()));
    }
    let mut feed = Feed::new(&client, "/v1/stream".to_owned(), query, None);
    feed.open().await?;
    if stdout_is_tty() && !args.filters.conn.json() {
        Screen::new(&client, &args).run(&mut feed).await
    } else {
        lines(&args, &mut feed).await
    }
}

/// One line per event, for pipes and logs (`--output json`: the event).
async fn lines(args: &Args, feed: &mut Feed) -> Result<Exit, Error> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut out = std::io::stdout();
    loop {
        let event = tokio::select! {
            event = feed.next() => event?,
            _ = &mut ctrl_c => return Ok(Exit::Success),
        };
        let line = match event.event.as_str() {
            "progress" => {
                let Ok(p) = serde_json::from_str::<ProgressReport>(&event.data) else {
                    continue;
                };
                if !args.filters.status.is_empty()
                    && !args.filters.status.contains(&Status::Running)
                {
                    continue;
                }
                if args.filters.conn.json() {
                    let mut value: Value = serde_json::from_str(&event.data).unwrap_or_default();
                    value["type"] = json!("progress");
                    value.to_string()
                } else {
                    let percent = p.percent.map(|p| format!("{p:.0}% ")).unwrap_or_default();
                    format!(
                        "{}  {}  {:<16} {percent}{}",
                        clock(Utc::now()),
                        p.execution,
                        "progress",
                        p.message.unwrap_or_default()
                    )
                }
            }
            "overflow" | "error" => {
                return Err(Error::Protocol(format!(
                    "the engine closed the feed: {}",
                    event.data
                )));
            }
            _ => {
                let Ok(envelope) = serde_json::from_str::<Envelope>(&event.data) else {
                    continue;
                };
                // The status the engine folded the event into; an event
                // replayed without one passes the filter.
                let status = event_state(&event.data).map(|s| s.status);
                if !args.filters.status.is_empty()
                    && status.is_some_and(|s| !args.filters.status.contains(&s))
                {
                    continue;
                }
                if args.filters.conn.json() {
                    event.data.clone()
                } else {
                    format!(
                        "{}  {}  {:<16} {}",
                        clock(envelope.time),
                        envelope.execution,
                        envelope.event_type().as_str(),
                        render::event(&envelope, Utc::now())
                    )
                }
            }
        };
        // A closed pipe (`| head`) ends the watch quietly.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return Ok(Exit::Success);
        }
    }
}

fn clock(t: DateTime<Utc>) -> String {
    t.with_timezone(&chrono::Local)
        .format("%H:%M:%S%.3f")
        .to_string()
}

/// One row: the execution as last listed or evolved by events.
struct Row {
    summary: Summary,
    progress: Option<(u32, String)>,
}

/// The full-screen table.
struct Screen<'a> {
    client: &'a Client,
    args: &'a Args,
    rows: HashMap<String, Row>,
    stats: Option<Stats>,
    note: Option<String>,
}

/// Restores the terminal however the watch ends (Ctrl-C, error, panic).
struct AltScreen;

impl AltScreen {
    fn enter() -> AltScreen {
        print!("\x1b[?1049h\x1b[?25l");
        let _ = std::io::stdout().flush();
        AltScreen
    }
}

impl Drop for AltScreen {
    fn drop(&mut self) {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
    }
}

impl<'a> Screen<'a> {
    fn new(client: &'a Client, args: &'a Args) -> Self {
        Screen {
            client,
            args,
            rows: HashMap::new(),
            stats: None,
            note: None,
        }
    }

    async fn run(mut self, feed: &mut Feed) -> Result<Exit, Error> {
        self.reload().await?;
        let _screen = AltScreen::enter();
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let mut reload = tokio::time::interval(self.args.refresh);
        reload.reset();
        let mut frame = tokio::time::interval(FRAME);
        let mut dirty = true;
        let mut last_draw = tokio::time::Instant::now();
        loop {
            tokio::select! {
                event = feed.next() => {
                    let event = event?;
                    match event.event.as_str() {
                        "overflow" => {
                            self.note = Some("fell behind the live feed; reloaded".into());
                            self.reload().await?;
                        }
                        "error" => return Err(Error::Protocol(format!("the engine closed the feed: {}", event.data))),
                        _ => self.apply(event.event.as_str(), event.id, &event.data),
                    }
                    dirty = true;
                }
                _ = reload.tick() => {
                    match self.reload().await {
                        Ok(()) => self.note = None,
                        Err(e) => self.note = Some(format!("reload failed: {e}")),
                    }
                    dirty = true;
                }
                _ = frame.tick() => {
                    // Ages and durations move even without events.
                    if dirty || last_draw.elapsed() >= Duration::from_secs(1) {
                        self.draw();
                        last_draw = tokio::time::Instant::now();
                        dirty = false;
                    }
                }
                _ = &mut ctrl_c => return Ok(Exit::Success),
            }
        }
    }

    /// Reads the newest and the active executions, and the counts.
    async fn reload(&mut self) -> Result<(), Error> {
        let filters = &self.args.filters;
        let query = filters.query()?;
        let limit = filters.limit.max(screen_rows());
        let (newest, _) = fetch(self.client, &query, limit).await?;
        let mut active_query: Vec<_> = query.into_iter().filter(|(k, _)| *k != "status").collect();
        active_query.push((
            "status",
            "pending,queued,running,failed,retry_scheduled".to_owned(),
        ));
        let (active, _) = fetch(self.client, &active_query, 1000).await?;
        let mut rows = HashMap::new();
        for item in newest.into_iter().chain(active) {
            let Ok(summary) = serde_json::from_value::<Summary>(item) else {
                continue;
            };
            // An active execution can be in both lists.
            if rows.contains_key(&summary.id) {
                continue;
            }
            let progress = self.rows.get(&summary.id).and_then(|r| r.progress.clone());
            let summary = match self.rows.remove(&summary.id) {
                Some(row) if row.summary.last_seq > summary.last_seq => row.summary,
                _ => summary,
            };
            rows.insert(summary.id.clone(), Row { summary, progress });
        }
        self.rows = rows;
        self.stats = self.client.get("/v1/stats", &[]).await.ok();
        Ok(())
    }

    fn apply(&mut self, kind: &str, seq: Option<u64>, data: &str) {
        if kind == "progress" {
            if let Ok(p) = serde_json::from_str::<ProgressReport>(data)
                && let Some(row) = self.rows.get_mut(&p.execution)
                && row.summary.attempt == p.attempt
            {
                let percent = p.percent.map(|p| p.clamp(0.0, 100.0) as u32).unwrap_or(0);
                row.progress = Some((percent, p.message.unwrap_or_default()));
            }
            return;
        }
        // Every lifecycle event carries its execution's summary after it
        // (`state`), folded by the engine: the row becomes that summary. An
        // event replayed from the log that is older than its execution's
        // newest carries none; the newest one follows.
        let Some(summary) = event_state(data) else {
            return;
        };
        let seq = seq.unwrap_or(summary.last_seq);
        let started = summary.status == Status::Running;
        match self.rows.get_mut(&summary.id) {
            Some(row) if seq <= row.summary.last_seq => {}
            Some(row) => {
                // Progress belongs to the running attempt it was reported for.
                if !started || row.summary.attempt != summary.attempt {
                    row.progress = None;
                }
                row.summary = summary;
            }
            None => {
                self.rows.insert(
                    summary.id.clone(),
                    Row {
                        summary,
                        progress: None,
                    },
                );
            }
        }
    }

    fn wanted(&self, s: &Summary) -> bool {
        let f = &self.args.filters;
        (f.status.is_empty() || f.status.contains(&s.status))
            && f.queue.as_ref().is_none_or(|q| s.queue.as_ref() == Some(q))
            && f.kind.as_ref().is_none_or(|k| s.kind.as_ref() == Some(k))
            && f.labels.iter().all(|(k, v)| {
                s.labels
                    .as_ref()
                    .is_some_and(|labels| labels.get(k) == Some(v))
            })
    }

    fn draw(&self) {
        let term = console::Term::stdout();
        let (height, width) = term.size();
        let (height, width) = (height as usize, width as usize);
        let now = Utc::now();
        let mut rows: Vec<&Row> = self
            .rows
            .values()
            .filter(|r| self.wanted(&r.summary))
            .collect();
        rows.sort_by_key(|r| {
            let s = &r.summary;
            let rank = match s.status {
                Status::Running => 0,
                Status::Failed => 1,
                Status::RetryScheduled => 2,
                Status::Queued => 3,
                Status::Pending => 4,
                _ => 5,
            };
            let time = s.finished_at.or(s.submitted_at).unwrap_or_default();
            (rank, std::cmp::Reverse(time))
        });
        let mut out = Vec::new();
        out.push(format!(
            "runlog watch  {}  {}   (Ctrl-C quits)",
            self.client.base(),
            now.with_timezone(&chrono::Local).format("%H:%M:%S")
        ));
        out.push(self.summary_line());
        out.push(self.note.clone().unwrap_or_default());
        let room = height.saturating_sub(out.len() + 2);
        let mut table = Table::new(&[
            "ID", "STATUS", "KIND", "QUEUE", "ATTEMPT", "AGE", "DURATION", "PROGRESS",
        ]);
        for row in rows.iter().take(room) {
            let mut cells = list::row(&row.summary, now);
            cells.push(match &row.progress {
                Some((percent, message)) => format!("{} {percent:>3}% {message}", bar(*percent)),
                None => String::new(),
            });
            table.row(cells);
        }
        out.extend(table.lines(Some(width)));
        if rows.len() > room {
            out.push(format!("… {} more", rows.len() - room));
        } else if rows.is_empty() {
            out.push(
                "no executions match; submit one with `runlog submit shell -- echo hello`".into(),
            );
        }
        let mut frame = String::from("\x1b[H");
        for (i, line) in out.iter().take(height).enumerate() {
            // No newline after the last row: it would scroll the screen.
            if i > 0 {
                frame.push_str("\r\n");
            }
            frame.push_str(&console::truncate_str(line, width, ""));
            frame.push_str("\x1b[K");
        }
        frame.push_str("\x1b[J");
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(frame.as_bytes());
        let _ = stdout.flush();
    }

    fn summary_line(&self) -> String {
        let Some(stats) = &self.stats else {
            return String::new();
        };
        let mut parts = vec![format!("{} executions:", stats.executions)];
        parts.extend(
            stats
                .by_status
                .iter()
                .map(|(status, n)| format!("{} {n}", render::status(*status))),
        );
        parts.push(format!(
            "| {} ended in the last minute",
            stats.rates.completed_last_minute
        ));
        if let Some(p50) = stats.rates.latency_ms_p50 {
            parts.push(format!(
                "p50 {}",
                render::duration(chrono::TimeDelta::milliseconds(p50))
            ));
        }
        if let Some(p95) = stats.rates.latency_ms_p95 {
            parts.push(format!(
                "p95 {}",
                render::duration(chrono::TimeDelta::milliseconds(p95))
            ));
        }
        parts.join("  ")
    }
}

/// A ten-cell bar for a percentage.
fn bar(percent: u32) -> String {
    let filled = (percent.min(100) / 10) as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(10 - filled))
}

/// Rows that fit on the terminal.
fn screen_rows() -> usize {
    console::Term::stdout().size().0 as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fill_by_tens() {
        assert_eq!(bar(0), "[..........]");
        assert_eq!(bar(42), "[####......]");
        assert_eq!(bar(250), "[##########]");
    }
}
