//! Attempt deadlines, armed from the projection.
//!
//! A `started` that records a deadline needs a broker-held timer, so that
//! the engine ends the attempt even if its worker hangs or dies. The
//! projection reads every `started` anyway; arming from it costs the log
//! nothing, where a reactor reaction cost a delivery and an ack for every
//! attempt, with a deadline or not.
//!
//! Arming is idempotent (one schedule per execution and kind, with the
//! `Nats-Msg-Id` `<exec>:timer:attempt:<n>`), so every engine replica arms
//! and nothing is lost when one dies: once its projection has caught up,
//! and whenever the live feed lagged or a publish failed, an engine arms
//! the deadline of every running attempt it holds. A timer re-armed for a
//! past instant fires at once, and the core refuses it unless that attempt
//! is still running past its deadline.

use std::sync::Arc;
use std::time::Duration;

use runlog_events::{Event, Status};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::live::Live;
use crate::projection::{Filter, Projection};
use crate::reactor::Reactor;

/// How long after a failed publish every running attempt is armed again.
const RETRY: Duration = Duration::from_secs(1);

/// Arms attempt deadlines until `stop`.
pub async fn arm(
    reactor: Reactor,
    projection: Arc<Projection>,
    live: Live,
    stop: CancellationToken,
) {
    // Subscribed before the catch-up ends, so no `started` falls between
    // the sweep and the feed.
    let mut events = live.events();
    if !projection.wait_caught_up(&stop).await {
        return;
    }
    let mut sweep = true;
    loop {
        if sweep {
            sweep = !arm_running(&reactor, &projection).await;
        }
        let retry = tokio::time::sleep(if sweep { RETRY } else { Duration::MAX / 4 });
        let stored = tokio::select! {
            _ = stop.cancelled() => return,
            _ = retry => continue,
            stored = events.recv() => stored,
        };
        match stored {
            Ok(stored) => {
                if let Event::Started(started) = &stored.envelope.event
                    && let Some(at) = started.deadline
                {
                    let (execution, attempt) =
                        (&stored.envelope.execution, stored.envelope.attempt);
                    sweep |= !reactor.arm_attempt_deadline(execution, attempt, at).await;
                }
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::debug!(
                    missed,
                    "the deadline arming lagged the live feed; arming every running attempt"
                );
                sweep = true;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Arms the deadline of every running attempt the projection holds; false
/// when a publish failed.
async fn arm_running(reactor: &Reactor, projection: &Projection) -> bool {
    let filter = Filter {
        status: vec![Status::Running],
        ..Filter::default()
    };
    let mut all = true;
    for id in projection.ids(&filter, projection.applied_seq()) {
        let Some(entry) = projection.get(&id) else {
            continue;
        };
        let state = &entry.state;
        if let Some(at) = state.attempt_deadline
            && state.status == Status::Running
        {
            all &= reactor.arm_attempt_deadline(&id, state.attempt, at).await;
        }
    }
    all
}
