//! Appending to and replaying the execution log.
//!
//! Every lifecycle append states the last sequence its writer has seen for
//! the execution (`Nats-Expected-Last-Subject-Sequence`, checked against the
//! filter `<p>.ev.<exec>.>`), so transitions of one execution are
//! linearizable: two workers can never both claim an attempt, and a result
//! can never land after a recorded cancel. Expected 0 means "create".
//!
//! A conflict (JetStream error 10071) is resolved by the Msg-Id rule: read the
//! newest event of the execution (and the newest on our own subject); if its
//! `Nats-Msg-Id` is ours, our earlier try was stored and we won; otherwise
//! someone else wrote first and the
//! caller folds again and decides again ([`Journal::advance`] does this, and
//! also recognises our event further back in the history).
//!
//! Timeouts and "no stream" errors during a cluster election are retried
//! with the same Msg-Id. On a single replica the retry of a stored publish
//! fails the expectation (10071) before de-duplication runs, and the Msg-Id
//! rule resolves it; on a replicated stream the server answers "duplicate".

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::context::{GetStreamError, PublishError, PublishErrorKind};
use chrono::{DateTime, Utc};

use crate::codec::{self, DecodeError, EncodeError, Format, Limits, header};
use crate::decider::{self, Command, ExecutionState, Rejection};
use crate::direct::DirectGetError;
use crate::envelope::Envelope;
use crate::event::Event;
use crate::id::ExecutionId;
use crate::spec::TaskSpec;
use crate::subject::Subjects;

/// The body format of what a journal writes (every reader decodes both).
const FORMAT: Format = Format::MessagePack;
/// How long transient publish failures (timeouts, elections) are retried.
const RETRY_HORIZON: Duration = Duration::from_secs(15);
/// How many times [`Journal::transition`] re-folds after losing a race.
const MAX_CONFLICTS: usize = 16;

/// An event as stored, with its stream sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// Stream sequence: the event's position in the log, and its SSE id.
    pub seq: u64,
    /// The event.
    pub envelope: Envelope,
}

/// The replayed history of one execution.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// Every lifecycle event, in log order.
    pub events: Vec<Recorded>,
    /// The state folded from them.
    pub state: ExecutionState,
    /// The sequence of the newest event (0 when there is none): the
    /// expectation for the next append.
    pub last_seq: u64,
    /// Events that did not decode or did not apply, with the reason.
    pub skipped: Vec<(u64, String)>,
}

/// The outcome of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The event's stream sequence.
    pub seq: u64,
    /// The event had been stored before (a retry of our own publish).
    pub duplicate: bool,
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended first. Fold again and decide again.
    #[error("execution {execution} changed since sequence {expected} (now at {actual:?})")]
    Conflict {
        /// The execution.
        execution: ExecutionId,
        /// The sequence we expected.
        expected: u64,
        /// The newest sequence, if it could be read.
        actual: Option<u64>,
    },
    /// The event could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// NATS did not accept the publish within the retry horizon.
    #[error(
        "cannot append to the execution log on {subject} ({source}); is the NATS server reachable?"
    )]
    Publish {
        /// The subject published on.
        subject: String,
        /// The client's error, with its kind.
        #[source]
        source: PublishError,
    },
    /// The stream could not be opened to resolve a conflicting append.
    #[error(
        "cannot check a conflicting append to execution {execution}: stream {stream} did not open ({source}); is the NATS server reachable?"
    )]
    Stream {
        /// The execution.
        execution: ExecutionId,
        /// The stream.
        stream: String,
        /// The client's error, with its kind.
        #[source]
        source: GetStreamError,
    },
}

/// Why a history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The log could not be read.
    #[error("cannot read the history of execution {execution}: {source}")]
    Read {
        /// The execution.
        execution: ExecutionId,
        /// The direct get that failed.
        #[source]
        source: DirectGetError,
    },
    /// The event that created the execution does not decode.
    #[error(
        "cannot read the history of execution {execution}: undecodable event ({:?}): {source}",
        .source.kind()
    )]
    Undecodable {
        /// The execution.
        execution: ExecutionId,
        /// The decoder's error, with its kind.
        #[source]
        source: DecodeError,
    },
}

impl LoadError {
    fn read(execution: &ExecutionId) -> impl FnOnce(DirectGetError) -> LoadError + '_ {
        move |source| LoadError::Read {
            execution: execution.clone(),
            source,
        }
    }
}

/// Why [`Journal::transition`] failed.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    /// The rules refuse the command.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// Reading the history failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Appending failed.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// Other writers kept winning.
    #[error("execution {0} kept changing under us; gave up after {MAX_CONFLICTS} tries")]
    Contended(ExecutionId),
}

/// Reads and writes the execution log.
#[derive(Debug, Clone)]
pub struct Journal {
    js: Context,
    subjects: Subjects,
    limits: Limits,
    source: String,
    ended: Option<Ended>,
}

/// What a journal's writer is told of each execution it ends (its terminal
/// event stored through [`Journal::advance`]): the state after the event,
/// and the event. The engine and the workers export the execution's trace
/// span from it, so the span is exported once, by whoever ended it.
pub type OnEnded = Arc<dyn Fn(&ExecutionState, &Envelope) + Send + Sync>;

#[derive(Clone)]
struct Ended(OnEnded);

impl std::fmt::Debug for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnEnded")
    }
}

impl Journal {
    /// A journal on `js` for the installation named by `subjects`; `source`
    /// identifies the writer in each event (`/runlog/worker/w1`).
    pub fn new(js: Context, subjects: Subjects, source: impl Into<String>) -> Self {
        Journal {
            js,
            subjects,
            limits: Limits::default(),
            source: source.into(),
            ended: None,
        }
    }

    /// This journal, telling `ended` of every execution it ends.
    pub fn on_ended(mut self, ended: OnEnded) -> Self {
        self.ended = Some(Ended(ended));
        self
    }

    /// The subject names in use.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// The `source` this journal writes into envelopes.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Appends a lifecycle event, expecting `expected` to be the newest
    /// sequence of its execution (0: the execution must not exist yet).
    pub async fn append(
        &self,
        expected: u64,
        envelope: &Envelope,
    ) -> Result<Appended, AppendError> {
        let (mut headers, body) = codec::encode(envelope, FORMAT)?;
        let msg_id = envelope.msg_id();
        let filter = self.subjects.execution_events(&envelope.execution);
        headers.insert(header::EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string());
        headers.insert(
            header::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
            filter.as_str(),
        );
        let subject = self.subjects.of(envelope);
        let deadline = tokio::time::Instant::now() + RETRY_HORIZON;
        let mut pause = Duration::from_millis(50);
        loop {
            let attempt = async {
                self.js
                    .publish_with_headers(subject.clone(), headers.clone(), body.clone())
                    .await?
                    .await
            };
            match attempt.await {
                Ok(ack) => {
                    return Ok(Appended {
                        seq: ack.sequence,
                        duplicate: ack.duplicate,
                    });
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    return self
                        .resolve_conflict(envelope, &filter, &msg_id, expected)
                        .await;
                }
                Err(e) if transient(e.kind()) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, %subject, "append failed, retrying with the same Msg-Id");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(source) => return Err(AppendError::Publish { subject, source }),
            }
        }
    }

    /// The Msg-Id rule: the newest event of the execution is ours → we won.
    /// Else the newest event on our own subject may still be ours (stored
    /// before someone else appended); otherwise it is a conflict.
    async fn resolve_conflict(
        &self,
        envelope: &Envelope,
        filter: &str,
        msg_id: &str,
        expected: u64,
    ) -> Result<Appended, AppendError> {
        let name = self.subjects.exec_stream();
        let stream = match self.js.get_stream_no_info(&name).await {
            Ok(stream) => stream,
            Err(source) => {
                return Err(AppendError::Stream {
                    execution: envelope.execution.clone(),
                    stream: name,
                    source,
                });
            }
        };
        let mut actual = None;
        for subject in [filter.to_owned(), self.subjects.of(envelope)] {
            let Ok(stored) = stream.direct_get_last_for_subject(subject).await else {
                continue;
            };
            actual = actual.or(Some(stored.sequence));
            let stored_id = stored.headers.get(header::MSG_ID).map(|v| v.as_str());
            if stored_id == Some(msg_id) {
                return Ok(Appended {
                    seq: stored.sequence,
                    duplicate: true,
                });
            }
        }
        Err(AppendError::Conflict {
            execution: envelope.execution.clone(),
            expected,
            actual,
        })
    }

    /// Appends telemetry (progress, log, heartbeat): no concurrency check.
    pub async fn append_telemetry(&self, envelope: &Envelope) -> Result<Appended, AppendError> {
        let (headers, body) = codec::encode(envelope, FORMAT)?;
        // The subject is built again only on failure: no copy per message.
        let failed = |source| AppendError::Publish {
            subject: self.subjects.of(envelope),
            source,
        };
        let ack = self
            .js
            .publish_with_headers(self.subjects.of(envelope), headers, body)
            .await
            .map_err(failed)?
            .await
            .map_err(failed)?;
        Ok(Appended {
            seq: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Replays every lifecycle event of `execution` and folds it.
    ///
    /// Reads with batched direct gets (`next_by_subj` on `<p>.ev.<exec>.>`):
    /// no consumer is created per load, so loads cost the server nothing
    /// once they return, however many run at once. On a replicated stream a
    /// replica may answer and lag the leader slightly; writers never trust a
    /// load for freshness, their appends are checked by the expected sequence.
    ///
    /// The read starts at the execution's `submitted` event, found through
    /// the server's per-subject index (a literal subject): a wildcard read
    /// from sequence 1 makes the server scan the whole stream for the first
    /// match, which grows with the log and dominated the server's CPU.
    pub async fn load(&self, execution: &ExecutionId) -> Result<History, LoadError> {
        let stream = self.subjects.exec_stream();
        let from = match self
            .creation(execution)
            .await
            .map_err(LoadError::read(execution))?
        {
            Some(created) => created.seq,
            // Never submitted: nothing else could apply.
            None => return Ok(History::default()),
        };
        let filter = self.subjects.execution_events(execution);
        let mut history = History::default();
        crate::direct::read(
            &self.js.client(),
            &stream,
            &filter,
            from,
            usize::MAX,
            |stored| {
                history.last_seq = stored.seq;
                self.fold_into(&mut history, stored.seq, &stored.headers, &stored.payload);
            },
        )
        .await
        .map_err(LoadError::read(execution))?;
        Ok(history)
    }

    /// The stored event that created `execution`: its `submitted`, or the
    /// `queued` carrying the spec that an engine door records instead. Both
    /// are found through the server's per-subject index: `submitted` by
    /// literal subject, the first `queued` by `<p>.ev.<exec>.queued.>`,
    /// whose literal prefix the index resolves without a scan of the log.
    pub async fn creation(
        &self,
        execution: &ExecutionId,
    ) -> Result<Option<crate::direct::Stored>, DirectGetError> {
        use crate::event::EventType;
        let stream = self.subjects.exec_stream();
        let submitted = self.subjects.event(execution, EventType::Submitted);
        if let Some(stored) = crate::direct::last(&self.js, &stream, &submitted).await? {
            return Ok(Some(stored));
        }
        let queued = self.subjects.event(execution, EventType::Queued);
        crate::direct::first(&self.js.client(), &stream, &queued).await
    }

    /// The task `execution` was recorded with (as stored: environment
    /// values sealed), and the envelope that carries it; `None` when the
    /// execution does not exist.
    pub async fn recorded_spec(
        &self,
        execution: &ExecutionId,
    ) -> Result<Option<(TaskSpec, Envelope)>, LoadError> {
        let Some(stored) = self
            .creation(execution)
            .await
            .map_err(LoadError::read(execution))?
        else {
            return Ok(None);
        };
        let mut envelope =
            codec::decode(&stored.headers, &stored.payload, &self.limits).map_err(|source| {
                LoadError::Undecodable {
                    execution: execution.clone(),
                    source,
                }
            })?;
        let spec = match &mut envelope.event {
            Event::Submitted(submitted) => submitted.spec.clone(),
            Event::Queued(queued) => match queued.spec.take() {
                Some(spec) => *spec,
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        Ok(Some((spec, envelope)))
    }

    fn fold_into(
        &self,
        history: &mut History,
        seq: u64,
        headers: &async_nats::HeaderMap,
        body: &[u8],
    ) {
        match codec::decode(headers, body, &self.limits) {
            Ok(envelope) => {
                if let Err(e) = decider::apply(&mut history.state, &envelope) {
                    history.skipped.push((seq, e.to_string()));
                }
                history.events.push(Recorded { seq, envelope });
            }
            Err(e) => history.skipped.push((seq, describe(&e))),
        }
    }

    /// Load → decide → append, repeated when another writer wins the race.
    ///
    /// Returns the history after the command, with the appended events.
    pub async fn transition(
        &self,
        execution: &ExecutionId,
        command: &Command,
        now: DateTime<Utc>,
    ) -> Result<History, TransitionError> {
        let history = self.load(execution).await?;
        self.advance(execution, history, command, now).await
    }

    /// Decide → append from a history the caller already holds (no read on
    /// the happy path: one publish per event); loads again only when another
    /// writer wins the race.
    pub async fn advance(
        &self,
        execution: &ExecutionId,
        mut history: History,
        command: &Command,
        now: DateTime<Utc>,
    ) -> Result<History, TransitionError> {
        let mut tried: Option<String> = None;
        for round in 0..MAX_CONFLICTS {
            if round > 0 {
                // Direct gets may be served by a replica that lags the leader
                // by a few milliseconds: give it a moment before reading again.
                tokio::time::sleep(Duration::from_millis(2 * round as u64)).await;
                history = self.load(execution).await?;
                // Our append may have been stored before someone else's:
                // the Msg-Id rule, applied to the whole history.
                if let Some(id) = &tried
                    && history.events.iter().any(|r| r.envelope.msg_id() == *id)
                {
                    return Ok(history);
                }
            }
            let facts = decider::decide(command, &history.state, now)?;
            let mut raced = false;
            for fact in facts {
                let mut envelope = Envelope::new(
                    execution.clone(),
                    fact.attempt,
                    now,
                    self.source.clone(),
                    fact.event,
                );
                envelope.traceparent.clone_from(&history.state.traceparent);
                match self.append(history.last_seq, &envelope).await {
                    Ok(appended) => {
                        history.last_seq = appended.seq;
                        let was_terminal = history.state.status.is_terminal();
                        history.state =
                            decider::evolve(std::mem::take(&mut history.state), &envelope);
                        if let Some(Ended(ended)) = &self.ended
                            && !was_terminal
                            && history.state.status.is_terminal()
                        {
                            ended(&history.state, &envelope);
                        }
                        history.events.push(Recorded {
                            seq: appended.seq,
                            envelope,
                        });
                    }
                    Err(AppendError::Conflict { .. }) => {
                        tried = Some(envelope.msg_id());
                        raced = true;
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if !raced {
                return Ok(history);
            }
        }
        Err(TransitionError::Contended(execution.clone()))
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &Context {
        &self.js
    }
}

fn transient(kind: PublishErrorKind) -> bool {
    matches!(
        kind,
        PublishErrorKind::TimedOut
            | PublishErrorKind::StreamNotFound
            | PublishErrorKind::BrokenPipe
    )
}

fn describe(e: &DecodeError) -> String {
    format!("undecodable event ({:?}): {e}", e.kind())
}
