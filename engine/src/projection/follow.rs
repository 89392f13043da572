//! Following the log: a pipelined catch-up, then an ordered consumer, each
//! event decoded once and folded in log order.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures::StreamExt;
use runlog_events::codec::{self, Limits};
use runlog_events::{Envelope, Subjects};
use tokio_util::sync::CancellationToken;

use super::Projection;

/// Why following the log stopped.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The execution stream could not be opened.
    #[error("cannot open the execution log {stream} ({source}); is the NATS server reachable?")]
    Stream {
        /// The stream.
        stream: String,
        /// The client's error.
        source: jetstream::context::GetStreamError,
    },
    /// The stream's state could not be read.
    #[error("cannot read the state of the execution log ({0}); is the NATS server reachable?")]
    Info(#[source] jetstream::context::RequestError),
    /// The consumer's state could not be read.
    #[error("cannot read the state of the projection's consumer ({0})")]
    ConsumerInfo(#[source] jetstream::context::ConsumerInfoError),
    /// The projection's consumer could not be created.
    #[error("cannot create the projection's consumer ({0})")]
    Consumer(#[source] jetstream::stream::ConsumerError),
    /// The consumer's deliveries failed (or a delivery had no position).
    #[error("the projection's consumer failed ({0})")]
    Messages(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A decoding task failed.
    #[error("a decoding task failed ({0})")]
    Decoder(#[source] tokio::task::JoinError),
    /// The consumer ended.
    #[error("the projection's consumer ended")]
    Ended,
}

impl Projection {
    /// Whether the projection has folded every event stored when it
    /// started following (the API's readiness).
    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Relaxed)
    }

    /// Waits until [`is_caught_up`](Self::is_caught_up); false if `stop`
    /// came first. (Checked every 50 ms: the flag is a plain atomic.)
    pub async fn wait_caught_up(&self, stop: &CancellationToken) -> bool {
        while !self.is_caught_up() {
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            }
        }
        true
    }

    /// Replays the log after [`applied_seq`](Self::applied_seq) and keeps
    /// folding new events until `shutdown` is cancelled.
    ///
    /// Two phases: the catch-up reads what the log held at the start through
    /// a plain pull consumer with large batches (no acks: it only reads), then
    /// an ordered consumer follows from there, which survives reconnects and
    /// server restarts by itself.
    pub async fn follow(
        &self,
        js: &jetstream::Context,
        subjects: &Subjects,
        shutdown: CancellationToken,
    ) -> Result<(), FollowError> {
        let mut stream = js
            .get_stream(subjects.exec_stream())
            .await
            .map_err(|source| FollowError::Stream {
                stream: subjects.exec_stream(),
                source,
            })?;
        let last = stream
            .info()
            .await
            .map_err(FollowError::Info)?
            .state
            .last_sequence;
        if self.applied_seq() < last && !self.catch_up(&stream, subjects, last, &shutdown).await? {
            return Ok(());
        }
        // Everything stored when following began is folded: that is ready.
        self.caught_up.store(true, Ordering::Relaxed);
        let mut consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subjects.all_events(),
                deliver_policy: after(self.applied_seq()),
                ..Default::default()
            })
            .await
            .map_err(FollowError::Consumer)?;
        if consumer
            .info()
            .await
            .map_err(FollowError::ConsumerInfo)?
            .num_pending
            == 0
        {
            self.caught_up.store(true, Ordering::Relaxed);
        }
        let messages = consumer
            .messages()
            .await
            .map_err(|e| FollowError::Messages(e.into()))?;
        let mut decoded = pipeline(messages);
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = decoded.next() => match next {
                    Some(Ok(batch)) => batch?,
                    Some(Err(e)) => return Err(FollowError::Decoder(e)),
                    None => return Err(FollowError::Ended),
                },
            };
            let live = self.live.get().filter(|live| live.receiver_count() > 0);
            for event in batch {
                let pending = event.pending;
                self.lag.store(pending, Ordering::Relaxed);
                let folded = self.fold(event, live.is_some());
                if let (Some(live), Some((seq, envelope, state))) = (live, folded) {
                    let stored = crate::live::Stored::new(seq, envelope, state);
                    let _no_receivers = live.send(Arc::new(stored));
                }
                if pending == 0 {
                    self.caught_up.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// Folds the log up to `last` (or as far as it goes, if events past
    /// `last` never match the filter). Returns false when `shutdown` came
    /// first.
    async fn catch_up(
        &self,
        stream: &jetstream::stream::Stream,
        subjects: &Subjects,
        last: u64,
        shutdown: &CancellationToken,
    ) -> Result<bool, FollowError> {
        let mut consumer = stream
            .create_consumer(pull::Config {
                filter_subject: subjects.all_events(),
                deliver_policy: after(self.applied_seq()),
                ack_policy: AckPolicy::None,
                memory_storage: true,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(FollowError::Consumer)?;
        let name = consumer.cached_info().name.clone();
        let result = async {
            if consumer
                .info()
                .await
                .map_err(FollowError::ConsumerInfo)?
                .num_pending
                == 0
            {
                return Ok(true);
            }
            let messages = consumer
                .stream()
                .max_messages_per_batch(CATCH_UP_BATCH)
                .messages()
                .await
                .map_err(|e| FollowError::Messages(e.into()))?;
            let mut decoded = pipeline(messages);
            loop {
                let batch = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(false),
                    next = decoded.next() => match next {
                        Some(Ok(batch)) => batch?,
                        Some(Err(e)) => return Err(FollowError::Decoder(e)),
                        None => return Err(FollowError::Ended),
                    },
                };
                let mut done = false;
                for event in batch {
                    done |= event.seq >= last || event.pending == 0;
                    self.lag.store(event.pending, Ordering::Relaxed);
                    self.fold(event, false);
                }
                if done {
                    return Ok(true);
                }
            }
        }
        .await;
        // Best effort: the server removes it after its inactive threshold anyway.
        let _ = stream.delete_consumer(&name).await;
        result
    }

    /// Folds a decoded event and hands it back, with the execution's
    /// summary after it when `summarise`; an undecodable one is counted and
    /// skipped.
    fn fold(
        &self,
        event: Decoded,
        summarise: bool,
    ) -> Option<(u64, Envelope, Option<serde_json::Value>)> {
        match event.envelope {
            Ok(envelope) => {
                let state = self.apply_and_summarise(event.seq, &envelope, summarise);
                Some((event.seq, envelope, state))
            }
            Err(e) => {
                tracing::debug!(seq = event.seq, error = %e, "skipping an undecodable event");
                self.skipped.fetch_add(1, Ordering::Relaxed);
                self.applied.fetch_max(event.seq, Ordering::Relaxed);
                None
            }
        }
    }
}

/// Delivery from the sequence after `seq`.
fn after(seq: u64) -> DeliverPolicy {
    if seq == 0 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        }
    }
}

/// Messages decoded together.
const BATCH: usize = 512;
/// Batches decoded at once.
const DECODERS: usize = 2;
/// Messages per pull request while catching up: fewer round trips than the
/// ordered consumer's 500.
const CATCH_UP_BATCH: usize = 4096;

/// Three stages overlap: the client library receives, up to [`DECODERS`]
/// batches decode at once on the runtime's threads, and the caller folds
/// them in log order. Whatever is ready forms a batch, so a replay moves in
/// large batches and a live event is folded at once.
fn pipeline<E: std::error::Error + Send + Sync + 'static>(
    messages: impl futures::Stream<Item = Result<jetstream::Message, E>> + Send + 'static,
) -> impl futures::Stream<Item = Result<Result<Vec<Decoded>, FollowError>, tokio::task::JoinError>>
{
    messages
        .ready_chunks(BATCH)
        .map(|batch| tokio::spawn(async move { decode_batch(batch) }))
        .buffered(DECODERS)
}

/// A stored event, decoded (or not) and ready to fold.
struct Decoded {
    seq: u64,
    /// Messages the consumer still had to deliver after this one.
    pending: u64,
    envelope: Result<Envelope, codec::DecodeError>,
}

fn decode_batch<E: std::error::Error + Send + Sync + 'static>(
    batch: Vec<Result<jetstream::Message, E>>,
) -> Result<Vec<Decoded>, FollowError> {
    let limits = Limits::default();
    let empty = async_nats::HeaderMap::new();
    batch
        .into_iter()
        .map(|message| {
            let message = message.map_err(|e| FollowError::Messages(e.into()))?;
            let info = message.info().map_err(FollowError::Messages)?;
            let headers = message.headers.as_ref().unwrap_or(&empty);
            Ok(Decoded {
                seq: info.stream_sequence,
                pending: info.pending,
                envelope: codec::decode(headers, &message.payload, &limits),
            })
        })
        .collect()
}
