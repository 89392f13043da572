//! Publishing a running attempt's telemetry: coalesced progress, batched
//! log lines and heartbeats, on the telemetry subjects (`RUNLOG_LOGS`).
//!
//! - **Progress** is coalesced: at most one publish per
//!   `progress_interval` (250 ms: 4/s), always the newest value.
//! - **Log lines** go out in [`LogBatch`]es of up to `log_batch_lines` lines
//!   or after `log_batch_delay`, whichever comes first, numbered
//!   consecutively per attempt (`first_line`). Lines the handler wrote while
//!   the buffer was full are counted in the next batch's `dropped`.
//! - **Heartbeats** (`Heartbeat{worker}`) every `heartbeat` interval say the
//!   worker still runs the attempt.
//!
//! The values of the attempt's environment (sealed values and secrets)
//! are masked (`***`) in every line and progress message.
//!
//! When the handler ends, the rest is flushed before the result is
//! recorded, so a reader sees every line before the end.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use runlog_events::event::{LogBatch, LogLine};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::attempt::Reporter;
use crate::executor::mask::Masker;
use crate::handler::Telemetry;

/// How telemetry is paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// At most one progress publish per interval.
    pub progress_interval: Duration,
    /// A log batch is published when it holds this many lines…
    pub log_batch_lines: usize,
    /// …or when its first line is this old.
    pub log_batch_delay: Duration,
    /// How often a running attempt's heartbeat is published.
    pub heartbeat: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            progress_interval: Duration::from_millis(250),
            log_batch_lines: 100,
            log_batch_delay: Duration::from_millis(200),
            heartbeat: Duration::from_secs(5),
        }
    }
}

/// Log lines on their way into batches.
struct Batcher {
    reporter: Reporter,
    lines: Vec<LogLine>,
    next_line: u64,
    max_lines: usize,
    dropped: u64,
}

impl Batcher {
    async fn flush(&mut self, telemetry: &Telemetry) {
        let dropped = self.dropped + telemetry.dropped.swap(0, Ordering::Relaxed);
        if self.lines.is_empty() && dropped == 0 {
            return;
        }
        let take = self.lines.len().min(self.max_lines);
        let lines: Vec<LogLine> = self.lines.drain(..take).collect();
        let count = lines.len() as u64;
        let batch = LogBatch {
            first_line: self.next_line,
            lines,
            dropped,
        };
        match self.reporter.log(batch, Utc::now()).await {
            Ok(()) => {
                self.next_line += count;
                self.dropped = 0;
            }
            Err(e) => {
                // The lines are lost; the next batch says how many.
                tracing::warn!(execution = %self.reporter.execution(), error = %e, "cannot publish log lines");
                self.dropped = dropped + count;
            }
        }
    }
}

/// Publishes `telemetry` for the attempt of `reporter` until `finish`, then
/// flushes what is left.
pub(crate) async fn publish(
    reporter: Reporter,
    mut telemetry: Telemetry,
    config: TelemetryConfig,
    finish: CancellationToken,
    masker: Masker,
) {
    let mut batcher = Batcher {
        reporter: reporter.clone(),
        lines: Vec::with_capacity(config.log_batch_lines),
        next_line: 0,
        max_lines: config.log_batch_lines.max(1),
        dropped: 0,
    };
    let mut batch_due: Option<Instant> = None;
    let mut progress_dirty = false;
    let mut progress_due = Instant::now();
    let mut logs_open = true;
    let mut progress_open = true;
    let mut heartbeat =
        tokio::time::interval_at(Instant::now() + config.heartbeat, config.heartbeat);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let far = Duration::from_secs(3600);
    loop {
        tokio::select! {
            biased;
            _ = finish.cancelled() => break,
            line = telemetry.logs.recv(), if logs_open => match line {
                Some(mut line) => {
                    masker.mask_string(&mut line.line);
                    if batcher.lines.is_empty() {
                        batch_due = Some(Instant::now() + config.log_batch_delay);
                    }
                    batcher.lines.push(line);
                    if batcher.lines.len() >= batcher.max_lines {
                        batcher.flush(&telemetry).await;
                        batch_due = None;
                    }
                }
                None => logs_open = false,
            },
            changed = telemetry.progress.changed(), if progress_open => match changed {
                Ok(()) => progress_dirty = true,
                Err(_) => progress_open = false,
            },
            _ = tokio::time::sleep_until(batch_due.unwrap_or_else(|| Instant::now() + far)),
                if batch_due.is_some() => {
                batcher.flush(&telemetry).await;
                batch_due = None;
            }
            _ = tokio::time::sleep_until(progress_due), if progress_dirty => {}
            _ = heartbeat.tick() => {
                if let Err(e) = reporter.heartbeat(Utc::now()).await {
                    tracing::warn!(execution = %reporter.execution(), error = %e, "cannot publish a heartbeat");
                }
            }
        }
        if progress_dirty && Instant::now() >= progress_due {
            send_progress(&reporter, &mut telemetry, &masker).await;
            progress_dirty = false;
            progress_due = Instant::now() + config.progress_interval;
        }
    }
    // The handler is done: everything it wrote is in the channel.
    while let Ok(mut line) = telemetry.logs.try_recv() {
        masker.mask_string(&mut line.line);
        batcher.lines.push(line);
        if batcher.lines.len() >= batcher.max_lines {
            batcher.flush(&telemetry).await;
        }
    }
    batcher.flush(&telemetry).await;
    // `changed` still reports a value set just before the handler's
    // context was dropped.
    let unseen = matches!(telemetry.progress.changed().now_or_never(), Some(Ok(())));
    if progress_dirty || unseen {
        send_progress(&reporter, &mut telemetry, &masker).await;
    }
}

async fn send_progress(reporter: &Reporter, telemetry: &mut Telemetry, masker: &Masker) {
    let mut progress = telemetry.progress.borrow_and_update().clone();
    if let Some(message) = progress.as_mut().and_then(|p| p.message.as_mut()) {
        masker.mask_string(message);
    }
    if let Some(progress) = progress
        && let Err(e) = reporter.progress(progress, Utc::now()).await
    {
        tracing::warn!(execution = %reporter.execution(), error = %e, "cannot publish progress");
    }
}
