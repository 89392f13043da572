//! Log search: the lines of the logs stream that match a substring or a
//! regular expression, newest first, found by a bounded scan.
//!
//! There is no index: the search reads the stream backwards in chunks
//! (batched direct gets of `<p>.log.>`, newest chunk first; the first
//! chunk is [`FIRST_CHUNK`] messages, each next one twice as large up to
//! [`CHUNK`], so a recent match comes back quickly), tests every line,
//! and stops once it has `limit` matches, has tested `scan_limit` lines,
//! has passed `since`, or has reached the start of the stream. The answer says how many lines and messages it read and
//! whether it covered everything that could match (`complete`), so a
//! caller knows when "no match" means none. The cost is linear in the lines
//! read; `docs/api.md` says how it scales and which index would come next.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use regex::{Regex, RegexBuilder};
use runlog_events::codec::{self, Limits};
use runlog_events::direct::{self, DirectGetError};
use runlog_events::{Event, ExecutionId, QueueName, Subjects};
use serde::Serialize;

use crate::projection::Projection;

/// Messages read by the first step backwards.
pub const FIRST_CHUNK: u64 = 250;
/// Messages read per step backwards, at most.
pub const CHUNK: u64 = 4_000;
/// Lines tested at most unless the caller says otherwise.
pub const DEFAULT_SCAN_LIMIT: u64 = 1_000_000;
/// Lines tested at most, whatever the caller says.
pub const MAX_SCAN_LIMIT: u64 = 20_000_000;
/// The largest compiled regular expression accepted.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// What a line must contain.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// This text, as is.
    Substring(String),
    /// A match of this expression (the `regex` crate's syntax: linear time,
    /// no back-references).
    Regex(Regex),
}

impl Pattern {
    /// A regular expression, refused with the parser's words when it does
    /// not compile or is too large.
    pub fn regex(expression: &str) -> Result<Pattern, String> {
        RegexBuilder::new(expression)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(Pattern::Regex)
            .map_err(|e| e.to_string())
    }

    fn matches(&self, line: &str) -> bool {
        match self {
            Pattern::Substring(text) => line.contains(text.as_str()),
            Pattern::Regex(regex) => regex.is_match(line),
        }
    }
}

/// A search.
#[derive(Debug, Clone)]
pub struct Search {
    /// What a line must contain.
    pub pattern: Pattern,
    /// Only lines of executions of this queue.
    pub queue: Option<QueueName>,
    /// Only lines of executions of this kind.
    pub kind: Option<String>,
    /// Only lines written at or after.
    pub since: Option<DateTime<Utc>>,
    /// Only lines written before.
    pub until: Option<DateTime<Utc>>,
    /// Matches returned at most.
    pub limit: usize,
    /// Lines tested at most.
    pub scan_limit: u64,
}

/// One matching line.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// Its execution.
    pub execution: ExecutionId,
    /// The execution's queue and kind, when the read model knows them.
    pub queue: Option<String>,
    /// Its kind.
    pub kind: Option<String>,
    /// The attempt that wrote it.
    pub attempt: u32,
    /// The stream sequence of its batch.
    pub seq: u64,
    /// Its number within the attempt (0-based).
    pub n: u64,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// The line.
    pub line: String,
    /// When its batch was recorded.
    pub time: DateTime<Utc>,
}

/// What a search found and how much it read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Results {
    /// Matching lines, newest first.
    pub matches: Vec<Found>,
    /// Lines tested against the pattern.
    pub scanned_lines: u64,
    /// Log batches read.
    pub scanned_messages: u64,
    /// Whether every line that could match was tested (false: the scan
    /// limit or the match limit stopped the search first).
    pub complete: bool,
    /// The oldest stream sequence read (0 when nothing was).
    pub oldest_seq: u64,
    /// How long the search took.
    pub took_ms: u64,
}

/// Runs `search` over the logs stream of `subjects`, with queue and kind
/// from `projection`.
pub async fn search(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    projection: &Projection,
    search: &Search,
) -> Result<Results, DirectGetError> {
    let started = Instant::now();
    let stream = subjects.logs_stream();
    let (first, last, held) = direct::bounds(js, &stream).await?;
    let filter = format!("{}.log.>", subjects.prefix());
    let client = js.client();
    let mut results = Results {
        complete: true,
        ..Results::default()
    };
    let mut scan = Scan {
        search,
        projection,
        known: HashMap::new(),
        found: Vec::new(),
        passed_since: false,
        lines: 0,
        messages: 0,
        oldest: 0,
    };
    let ranges = direct::backwards(first, last, FIRST_CHUNK, CHUNK);
    for (lo, hi) in ranges.take_while(|_| held > 0) {
        if scan.lines >= search.scan_limit {
            results.complete = false;
            break;
        }
        // A read returns matching subjects only: at most `hi - lo + 1` of
        // them lie in the chunk; later ones belong to the chunk before.
        direct::read(
            &client,
            &stream,
            &filter,
            lo,
            (hi - lo + 1) as usize,
            |stored| {
                if stored.seq <= hi {
                    scan.batch(stored);
                }
            },
        )
        .await?;
        // Oldest first within the chunk: the newest matches go out first.
        for found in scan.found.drain(..).rev() {
            if results.matches.len() == search.limit {
                results.complete = false;
                break;
            }
            results.matches.push(found);
        }
        if !results.complete || scan.passed_since {
            break;
        }
    }
    results.scanned_lines = scan.lines;
    results.scanned_messages = scan.messages;
    results.oldest_seq = scan.oldest;
    results.took_ms = started.elapsed().as_millis() as u64;
    Ok(results)
}

/// One pass over a chunk.
struct Scan<'a> {
    search: &'a Search,
    projection: &'a Projection,
    /// Queue and kind of the executions met so far.
    known: HashMap<ExecutionId, Option<(QueueName, String)>>,
    /// Matches of the current chunk, oldest first.
    found: Vec<Found>,
    /// A batch older than `since` was met: every earlier chunk is older.
    passed_since: bool,
    lines: u64,
    messages: u64,
    oldest: u64,
}

impl Scan<'_> {
    fn batch(&mut self, stored: direct::Stored) {
        self.messages += 1;
        if self.oldest == 0 || stored.seq < self.oldest {
            self.oldest = stored.seq;
        }
        let Ok(envelope) = codec::decode(&stored.headers, &stored.payload, &Limits::default())
        else {
            return;
        };
        let Event::Log(batch) = &envelope.event else {
            return;
        };
        let s = self.search;
        if s.since.is_some_and(|t| envelope.time < t) {
            self.passed_since = true;
            return;
        }
        if s.until.is_some_and(|t| envelope.time >= t) {
            return;
        }
        let projection = self.projection;
        let meta = self
            .known
            .entry(envelope.execution.clone())
            .or_insert_with(|| projection.queue_and_kind(&envelope.execution))
            .clone();
        let wanted = match &meta {
            Some((queue, kind)) => {
                s.queue.as_ref().is_none_or(|q| q == queue)
                    && s.kind.as_ref().is_none_or(|k| k == kind)
            }
            None => s.queue.is_none() && s.kind.is_none(),
        };
        if !wanted {
            return;
        }
        for (i, line) in batch.lines.iter().enumerate() {
            self.lines += 1;
            if s.pattern.matches(&line.line) {
                self.found.push(Found {
                    execution: envelope.execution.clone(),
                    queue: meta.as_ref().map(|(q, _)| q.to_string()),
                    kind: meta.as_ref().map(|(_, k)| k.clone()),
                    attempt: envelope.attempt,
                    seq: stored.seq,
                    n: batch.first_line + i as u64,
                    stream: line.stream.as_str(),
                    line: line.line.clone(),
                    time: envelope.time,
                });
            }
        }
    }
}
