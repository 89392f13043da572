//! The live feed: every stored lifecycle event, once, for every SSE client.
//!
//! One core subscription per engine on the stream's RePublish subject
//! (`<p>.live.ev.>`: only stored events, scheduler-made ones included, each
//! with its `Nats-Sequence`) feeds a bounded broadcast channel. Clients that
//! fall behind it see `Lagged` and catch up from the log, or are closed;
//! they never slow the engine down or grow its memory. Progress reports
//! (telemetry, not part of the log) ride a second broadcast, latest wins.

use std::sync::Arc;

use futures::StreamExt;
use runlog_events::codec::{self, Limits};
use runlog_events::event::Progress;
use runlog_events::{Envelope, Event, ExecutionId, Subjects};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Events the broadcast holds for slow clients before they lag.
pub const CAPACITY: usize = 16_384;

/// A stored lifecycle event.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its stream sequence (the SSE id).
    pub seq: u64,
    /// The event.
    pub envelope: Envelope,
}

/// A progress report of a running attempt.
#[derive(Debug, Clone)]
pub struct ProgressReport {
    /// The execution.
    pub execution: ExecutionId,
    /// The attempt.
    pub attempt: u32,
    /// The report.
    pub progress: Progress,
}

/// The engine's live feeds.
#[derive(Debug, Clone)]
pub struct Live {
    events: broadcast::Sender<Arc<Stored>>,
    progress: broadcast::Sender<Arc<ProgressReport>>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            events: broadcast::channel(CAPACITY).0,
            progress: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Live {
    /// Feeds with no subscription yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A receiver of every event stored from now on.
    pub fn events(&self) -> broadcast::Receiver<Arc<Stored>> {
        self.events.subscribe()
    }

    /// A receiver of progress reports from now on.
    pub fn progress(&self) -> broadcast::Receiver<Arc<ProgressReport>> {
        self.progress.subscribe()
    }

    /// Subscribes on `client` and feeds the broadcasts until `shutdown`.
    /// Returns once the subscriptions are in place; the feeding runs in
    /// spawned tasks owned by `shutdown`.
    pub async fn start(
        &self,
        client: &async_nats::Client,
        subjects: &Subjects,
        shutdown: CancellationToken,
    ) -> Result<(), async_nats::SubscribeError> {
        let mut events = client.subscribe(subjects.live_events()).await?;
        let mut progress = client
            .subscribe(format!("{}.progress.>", subjects.prefix()))
            .await?;
        let limits = Limits::default();
        let sender = self.events.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let empty = async_nats::HeaderMap::new();
            while let Some(message) = tokio::select! {
                _ = stop.cancelled() => None,
                m = events.next() => m,
            } {
                let headers = message.headers.as_ref().unwrap_or(&empty);
                let seq = headers
                    .get("Nats-Sequence")
                    .and_then(|v| v.as_str().parse().ok())
                    .unwrap_or(0);
                match codec::decode(headers, &message.payload, &limits) {
                    Ok(envelope) => {
                        let _no_receivers = sender.send(Arc::new(Stored { seq, envelope }));
                    }
                    Err(e) => {
                        tracing::debug!(seq, error = %e, "live feed skips an undecodable event")
                    }
                }
            }
        });
        let sender = self.progress.clone();
        tokio::spawn(async move {
            let empty = async_nats::HeaderMap::new();
            while let Some(message) = tokio::select! {
                _ = shutdown.cancelled() => None,
                m = progress.next() => m,
            } {
                let headers = message.headers.as_ref().unwrap_or(&empty);
                if let Ok(Envelope {
                    execution,
                    attempt,
                    event: Event::Progress(progress),
                    ..
                }) = codec::decode(headers, &message.payload, &limits)
                {
                    let _no_receivers = sender.send(Arc::new(ProgressReport {
                        execution,
                        attempt,
                        progress,
                    }));
                }
            }
        });
        Ok(())
    }
}
