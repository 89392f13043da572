//! The live feed: every stored lifecycle event, once, for every SSE client.
//!
//! The projection passes on every event it folds while following the log
//! ([`Projection::publish_to`](crate::projection::Projection::publish_to)):
//! the live feed is the log as this engine reads it, in log order, with
//! each event's sequence, and costs no second subscription or decode.
//! A bounded broadcast channel holds it; clients that fall behind see
//! `Lagged` and catch up from the log, or are closed; they never slow the
//! engine down or grow its memory. Progress reports (telemetry, not part
//! of the log) ride a second broadcast, latest wins, fed by a core
//! subscription.
//!
//! (The stream still republishes stored events on `<p>.live.ev.>` for
//! clients outside the engine.)

use std::sync::Arc;

use futures::StreamExt;
use runlog_events::codec::{self, Limits};
use runlog_events::event::Progress;
use runlog_events::{Envelope, Event, ExecutionId, Subjects};
use serde::Deserialize;
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
    /// Its execution's summary after it (`projection::summary`), when the
    /// engine knows it.
    pub state: Option<serde_json::Value>,
    /// The status in `state`, read once.
    status: Option<runlog_events::Status>,
    /// Its JSON as the feeds send it, made by the first feed that sends it:
    /// every other client gets the same bytes without serialising again.
    json: std::sync::OnceLock<String>,
}

impl Stored {
    /// The event stored at `seq`, leaving its execution in `state`.
    pub fn new(seq: u64, envelope: Envelope, state: Option<serde_json::Value>) -> Self {
        Stored {
            seq,
            envelope,
            status: status_of(state.as_ref()),
            state,
            json: std::sync::OnceLock::new(),
        }
    }

    /// The status the event left its execution in, when known.
    pub fn status(&self) -> Option<runlog_events::Status> {
        self.status
    }

    /// Its JSON, made once by `render`.
    pub fn json(
        &self,
        render: impl FnOnce(u64, &Envelope, Option<&serde_json::Value>) -> String,
    ) -> &str {
        self.json
            .get_or_init(|| render(self.seq, &self.envelope, self.state.as_ref()))
    }
}

/// The `status` of a summary.
pub fn status_of(state: Option<&serde_json::Value>) -> Option<runlog_events::Status> {
    state
        .and_then(|s| s.get("status"))
        .and_then(|s| runlog_events::Status::deserialize(s).ok())
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

    /// Where the projection passes on the events it folds.
    pub fn events_sender(&self) -> broadcast::Sender<Arc<Stored>> {
        self.events.clone()
    }

    /// Subscribes to progress reports on `client` and feeds their broadcast
    /// until `shutdown`. Returns once the subscription is in place; the
    /// feeding runs in a spawned task owned by `shutdown`.
    pub async fn start(
        &self,
        client: &async_nats::Client,
        subjects: &Subjects,
        shutdown: CancellationToken,
    ) -> Result<(), async_nats::SubscribeError> {
        let mut progress = client
            .subscribe(format!("{}.progress.>", subjects.prefix()))
            .await?;
        let limits = Limits::default();
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
