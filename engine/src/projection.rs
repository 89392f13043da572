//! Projections: the execution log folded into an in-memory read model.
//!
//! The read model is thrown away and rebuilt at will: [`Projection::follow`]
//! replays `<p>.ev.>` from the stream's start (or from the sequence the
//! projection already holds) through the core's `evolve`, then stays live.
//! Every execution keeps the sequence of the newest event folded into it, so
//! a replayed event is never folded twice.

use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use dashmap::DashMap;
use futures::StreamExt;
use runlog_events::codec::{self, Limits};
use runlog_events::decider::{self, ExecutionState};
use runlog_events::{Envelope, ExecutionId, Subjects};
use tokio_util::sync::CancellationToken;

/// One execution in the read model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    /// Its folded state.
    pub state: ExecutionState,
    /// The stream sequence of the newest event folded in.
    pub last_seq: u64,
}

/// The in-memory read model of every execution.
#[derive(Debug, Default)]
pub struct Projection {
    executions: DashMap<ExecutionId, Entry>,
    applied: AtomicU64,
    skipped: AtomicU64,
}

/// Why following the log stopped.
#[derive(Debug, thiserror::Error)]
#[error("cannot follow the execution log: {0}")]
pub struct FollowError(String);

impl Projection {
    /// An empty projection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds one stored event. Events at or below the execution's last
    /// folded sequence are ignored, so replays are idempotent.
    pub fn apply(&self, seq: u64, envelope: &Envelope) {
        let mut entry = self
            .executions
            .entry(envelope.execution.clone())
            .or_default();
        if seq > entry.last_seq {
            if decider::apply(&mut entry.state, envelope).is_err() {
                self.skipped.fetch_add(1, Ordering::Relaxed);
            }
            entry.last_seq = seq;
        }
        drop(entry);
        self.applied.fetch_max(seq, Ordering::Relaxed);
    }

    /// The state of one execution.
    pub fn get(&self, execution: &ExecutionId) -> Option<Entry> {
        self.executions.get(execution).map(|e| e.clone())
    }

    /// Executions held.
    pub fn len(&self) -> usize {
        self.executions.len()
    }

    /// Whether no execution is held.
    pub fn is_empty(&self) -> bool {
        self.executions.is_empty()
    }

    /// The highest stream sequence folded so far.
    pub fn applied_seq(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Events that did not decode or that the state machine refused.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Replays the log after [`applied_seq`](Self::applied_seq) and keeps
    /// folding new events until `shutdown` is cancelled.
    pub async fn follow(
        &self,
        js: &jetstream::Context,
        subjects: &Subjects,
        shutdown: CancellationToken,
    ) -> Result<(), FollowError> {
        let err = |e: &dyn std::fmt::Display| FollowError(e.to_string());
        let stream = js
            .get_stream_no_info(subjects.exec_stream())
            .await
            .map_err(|e| err(&e))?;
        let from = self.applied_seq();
        let deliver_policy = if from == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: from + 1,
            }
        };
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subjects.all_events(),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?;
        let mut messages = consumer.messages().await.map_err(|e| err(&e))?;
        let limits = Limits::default();
        let empty = async_nats::HeaderMap::new();
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = messages.next() => match next {
                    Some(message) => message.map_err(|e| err(&e))?,
                    None => return Err(FollowError("the consumer ended".into())),
                },
            };
            let seq = message.info().map_err(|e| err(&e))?.stream_sequence;
            let headers = message.headers.as_ref().unwrap_or(&empty);
            match codec::decode(headers, &message.payload, &limits) {
                Ok(envelope) => self.apply(seq, &envelope),
                Err(e) => {
                    tracing::debug!(seq, error = %e, "skipping an undecodable event");
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                    self.applied.fetch_max(seq, Ordering::Relaxed);
                }
            }
        }
    }
}
