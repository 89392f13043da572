//! Text output: aligned tables, short durations and ages, colours for
//! states, and the parsing of human durations (`30s`, `1h30m`).

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use console::Style;
use runlog_events::event::TimeoutScope;
use runlog_events::{Envelope, Event, Status};

/// An aligned table: a header row, then rows, columns padded to the widest
/// cell. Colour codes in a cell do not count towards its width.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines, each at most `width` columns when given.
    pub fn lines(&self, width: Option<usize>) -> Vec<String> {
        let columns = self.header.len();
        let mut widths = vec![0; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(console::measure_text_width(cell));
            }
        }
        let line = |row: &Vec<String>| {
            let mut out = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                if i + 1 == columns {
                    out.push_str(cell);
                } else {
                    out.push_str(&console::pad_str(
                        cell,
                        widths[i],
                        console::Alignment::Left,
                        None,
                    ));
                    out.push_str("  ");
                }
            }
            let out = out.trim_end().to_owned();
            match width {
                Some(w) => console::truncate_str(&out, w, "…").into_owned(),
                None => out,
            }
        };
        let bold = Style::new().bold();
        let mut lines = vec![bold.apply_to(line(&self.header)).to_string()];
        lines.extend(self.rows.iter().map(line));
        lines
    }

    /// Prints the table to standard output.
    pub fn print(&self) {
        for line in self.lines(None) {
            println!("{line}");
        }
    }
}

/// A state's name, coloured by how it went (colours only on a terminal).
pub fn status(status: Status) -> String {
    let style = match status {
        Status::Succeeded => Style::new().green(),
        Status::Running => Style::new().cyan(),
        Status::Queued | Status::Pending | Status::RetryScheduled => Style::new().yellow(),
        Status::Failed | Status::DeadLettered | Status::Rejected | Status::TimedOut => {
            Style::new().red()
        }
        Status::Cancelled => Style::new().magenta(),
        Status::New => Style::new(),
    };
    style.apply_to(status.as_str()).to_string()
}

/// A duration in at most two units: `850ms`, `4.2s`, `3m05s`, `2h10m`, `3d4h`.
pub fn duration(d: TimeDelta) -> String {
    let ms = d.num_milliseconds().max(0);
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms}ms"),
        0..10 => format!("{:.1}s", ms as f64 / 1000.0),
        10..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A byte count in at most four digits and a unit: `512 B`, `3.4 KB`,
/// `210 MB` (powers of 1000, as the price table's GB).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ if value < 10.0 => format!("{value:.1} {}", UNITS[unit]),
        _ => format!("{value:.0} {}", UNITS[unit]),
    }
}

/// Milliseconds as a [`duration`].
pub fn millis(ms: u64) -> String {
    duration(TimeDelta::milliseconds(
        i64::try_from(ms).unwrap_or(i64::MAX),
    ))
}

/// How long ago `t` was, as `4.2s`, `3m05s`; `-` when unknown.
pub fn age(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    t.map(|t| duration(now - t))
        .unwrap_or_else(|| "-".to_owned())
}

/// The time from `start` to `end` (or to `now` while it runs); `-` when it
/// has not started.
pub fn span(
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> String {
    match start {
        Some(start) => duration(end.unwrap_or(now) - start),
        None => "-".to_owned(),
    }
}

/// Parses a human duration: a sequence of number+unit (`ms`, `s`, `m`, `h`,
/// `d`), such as `30s`, `1h30m`, `250ms`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration: write it like 30s, 5m, 1h30m, 250ms or 2d");
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += Duration::from_secs_f64(number * unit);
    }
    Ok(total)
}

/// Parses an instant: RFC 3339 (`2026-11-24T06:00:00Z`), or a duration meaning
/// that long before `now` (`10m` = ten minutes ago).
pub fn parse_since(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = parse_duration(s).map_err(|_| {
        format!("{s:?} is neither a time (2026-11-24T06:00:00Z) nor a duration (10m, 2h)")
    })?;
    let d = TimeDelta::from_std(d).map_err(|_| format!("{s:?} is too long ago"))?;
    Ok(now - d)
}

/// Parses `key=value`.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

/// A snake_case name as serde writes it (`attempts_exhausted`).
fn serde_name(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        other => other.map(|v| v.to_string()).unwrap_or_default(),
    }
}

/// What an event says, in a few words (`attempt 2 started on w1`).
pub fn event(envelope: &Envelope, now: DateTime<Utc>) -> String {
    let attempt = envelope.attempt;
    match &envelope.event {
        Event::Submitted(s) => format!(
            "submitted: {} on queue {} ({})",
            s.spec.kind, s.spec.queue, s.spec.priority
        ),
        Event::Queued(q) => format!("attempt {attempt} queued on {} ({})", q.queue, q.priority),
        Event::Started(s) => format!("attempt {attempt} started on {}", s.worker),
        Event::Progress(p) => {
            let percent = p.percent.map(|p| format!("{p:.0}% ")).unwrap_or_default();
            format!("{percent}{}", p.message.as_deref().unwrap_or(""))
        }
        Event::Log(batch) => format!("{} log lines", batch.lines.len()),
        Event::Heartbeat(_) => format!("attempt {attempt} is alive"),
        Event::Succeeded(_) => format!("attempt {attempt} succeeded"),
        Event::Failed(f) => format!(
            "attempt {attempt} failed ({}{}): {}",
            serde_name(&f.error.class),
            if f.error.retryable { ", retryable" } else { "" },
            f.error.message
        ),
        Event::RetryScheduled(r) => format!(
            "retry at {} (in {}; the failure was of class {})",
            r.at.with_timezone(&chrono::Local).format("%H:%M:%S"),
            duration(r.at - now),
            serde_name(&r.class)
        ),
        Event::CancelRequested(c) => format!("cancel requested: {}", c.reason),
        Event::Cancelled(c) => format!("cancelled: {}", c.reason),
        Event::TimedOut(t) if t.scope == TimeoutScope::Attempt => {
            format!("attempt {attempt} ran past its timeout")
        }
        Event::TimedOut(_) => "the execution ran past its deadline".to_owned(),
        Event::AttemptLost(l) => format!(
            "attempt {attempt} lost: worker {} stopped answering; the work goes on as the next attempt",
            l.worker
        ),
        Event::DeadLettered(d) => format!(
            "dead-lettered ({}) after {} failed attempts",
            serde_name(&d.reason),
            d.errors.len()
        ),
        Event::Rejected(r) => match &r.field {
            Some(field) => format!("rejected: {field}: {}", r.reason),
            None => format!("rejected: {}", r.reason),
        },
    }
}

/// The width of the terminal on standard output, when it is one.
pub fn terminal_width() -> Option<usize> {
    let term = console::Term::stdout();
    term.is_term().then(|| term.size().1 as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_in_powers_of_1000() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3_400), "3.4 KB");
        assert_eq!(bytes(209_715_200), "210 MB");
        assert_eq!(millis(1_250), "1.2s");
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn durations_print_in_two_units() {
        let ms = TimeDelta::milliseconds;
        assert_eq!(duration(ms(850)), "850ms");
        assert_eq!(duration(ms(4_230)), "4.2s");
        assert_eq!(duration(ms(185_000)), "3m05s");
        assert_eq!(duration(ms(7_800_000)), "2h10m");
        assert_eq!(duration(ms(277_200_000)), "3d5h");
    }

    #[test]
    fn table_columns_align() {
        let mut t = Table::new(&["ID", "STATUS"]);
        t.row(vec!["a".into(), "queued".into()]);
        t.row(vec!["abcdef".into(), "running".into()]);
        let lines: Vec<String> = t
            .lines(None)
            .into_iter()
            .map(|l| console::strip_ansi_codes(&l).into_owned())
            .collect();
        assert_eq!(
            lines,
            ["ID      STATUS", "a       queued", "abcdef  running"]
        );
    }
}
