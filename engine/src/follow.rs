//! Following one kind of log on the execution stream: the workflow runner
//! and the scheduler fold every event on their subjects from the start of
//! the stream, then each new one as it lands.
//!
//! An ordered consumer delivers them; when it fails (a server restart, a
//! leader change), a new one starts after the last sequence seen, so each
//! event is folded once.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// One event as the follower delivers it.
#[derive(Debug)]
pub(crate) struct Delivery<'a> {
    /// Its subject.
    pub subject: &'a str,
    /// Its stream sequence.
    pub seq: u64,
    /// Its body.
    pub payload: &'a [u8],
}

/// What to follow, and what to do with it.
pub(crate) trait Follower {
    /// The subject filter (`<p>.wf.>`).
    fn filter(&self) -> String;
    /// What the log is, for the warning when following fails.
    fn what(&self) -> &'static str;
    /// Folds one event.
    fn deliver(&self, delivery: Delivery<'_>);
    /// The consumer has delivered every event stored when it started (or
    /// there were none).
    fn caught_up(&self) {}
}

/// Follows `follower`'s subjects on `stream` until `shutdown`, trying again
/// `pause` after each failure.
pub(crate) async fn follow(
    js: &jetstream::Context,
    stream: &str,
    follower: &impl Follower,
    pause: Duration,
    shutdown: &CancellationToken,
) {
    let mut last = 0u64;
    while !shutdown.is_cancelled() {
        if let Err(e) = follow_from(js, stream, follower, &mut last, shutdown).await {
            tracing::warn!(
                error = %e,
                "following the {} failed; again in {pause:?}",
                follower.what()
            );
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

async fn follow_from(
    js: &jetstream::Context,
    stream: &str,
    follower: &impl Follower,
    last: &mut u64,
    shutdown: &CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let stream = js.get_stream_no_info(stream).await?;
    let mut consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: follower.filter(),
            deliver_policy: match *last {
                0 => DeliverPolicy::All,
                seq => DeliverPolicy::ByStartSequence {
                    start_sequence: seq + 1,
                },
            },
            ..Default::default()
        })
        .await?;
    if consumer.info().await?.num_pending == 0 {
        follower.caught_up();
    }
    let mut messages = consumer.messages().await?;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = messages.next() => match next {
                Some(message) => message?,
                None => return Err(format!("the consumer of the {} ended", follower.what()).into()),
            },
        };
        let info = message.info()?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        *last = seq;
        follower.deliver(Delivery {
            subject: &message.subject,
            seq,
            payload: &message.payload,
        });
        if pending == 0 {
            follower.caught_up();
        }
    }
}
