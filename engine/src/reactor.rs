//! The reactor: turns recorded events into their consequences.
//!
//! A durable consumer (`<p>-reactor`, shared by every engine replica) reads
//! the lifecycle events and the fired timers of the execution stream, and
//! for each one does what must follow:
//!
//! | event | reaction |
//! |---|---|
//! | `submitted` | validate; `rejected` with the reason, or `queued` (or a start timer for `not_before`); an execution deadline timer |
//! | an undecodable `submitted` | `rejected` with the decode error |
//! | `failed`, `timed_out` (attempt) | `retry_scheduled` or `dead_lettered` (the core's `ResolveFailure`) |
//! | `retry_scheduled` | a retry timer at its `at` |
//! | `cancel_requested`, `timed_out` | the cancel signal to the worker |
//! | timer `retry` / `start` | `queued` |
//! | timer `attempt` / `deadline` | `timed_out` of the attempt / the execution |
//!
//! A `queued` event is its own work item (the workers' consumers read it
//! from the log, see `runlog_events::work`), so queueing an attempt is one
//! append, and the reactor reads neither `queued` nor `started`, whose
//! deadline timer the engine arms from its projection (`crate::deadlines`).
//! On the happy path of an execution submitted through an engine door, the
//! reactor reads nothing.
//!
//! Every reaction is idempotent: appends go through the core's `decide` with
//! optimistic concurrency (a reaction to a stale event is refused and
//! dropped), timers carry a `Nats-Msg-Id`. So a redelivered
//! event, or two replicas reacting to neighbouring events, change nothing.
//! A message is acknowledged only after its reaction is stored; a reaction
//! that fails for a transient reason is retried by redelivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, AckKind};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use runlog_events::codec::{self, DecodeError, Limits};
use runlog_events::decider::{self, Command, ExecutionState};
use runlog_events::event::{Event, TimeoutScope};
use runlog_events::journal::{AppendError, Journal, TransitionError};
use runlog_events::timer::{Schedule, Timer, TimerFired};
use runlog_events::{Envelope, EventType, ExecutionId, Subjects, WorkItem};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// The event types that have a consequence. The consumer reads only these
/// (and the fired timers): the others (`succeeded`, `cancelled`, …) would
/// cost a delivery and an ack each for nothing. `queued` and `started` are
/// left out on purpose: a `queued` is its own work item, and a `started`'s
/// deadline timer is armed from the projection (`crate::deadlines`).
pub const REACTS_TO: [EventType; 5] = [
    EventType::Submitted,
    EventType::Failed,
    EventType::TimedOut,
    EventType::RetryScheduled,
    EventType::CancelRequested,
];

/// Reactions in flight at once in one engine.
pub const CONCURRENCY: usize = 256;
/// How long the server waits for a reaction before redelivering its event.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// The pause before a reaction that failed transiently is tried again.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// Counters of one reactor.
#[derive(Debug, Default)]
pub struct ReactorStats {
    /// Messages reacted to.
    pub handled: AtomicU64,
    /// Attempts queued (each `queued` is its own work item).
    pub dispatched: AtomicU64,
    /// Timers set.
    pub timers: AtomicU64,
    /// Messages that could not be read (counted, acknowledged, logged).
    pub bad: AtomicU64,
    /// Reactions that failed transiently and were retried.
    pub retried: AtomicU64,
}

/// What to do with a message after its reaction.
enum Done {
    Ack,
    Retry,
}

/// Reacts to the execution log.
#[derive(Debug, Clone)]
pub struct Reactor {
    journal: Journal,
    subjects: Subjects,
    limits: Limits,
    stats: Arc<ReactorStats>,
}

/// Why the reactor stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    /// A stream it reads could not be opened.
    #[error(
        "the reactor cannot open stream {stream} ({source}); is JetStream enabled on the server?"
    )]
    Stream {
        /// The stream.
        stream: String,
        /// The client's error, with its kind.
        #[source]
        source: jetstream::context::GetStreamError,
    },
    /// Its durable consumer could not be created or updated.
    #[error(
        "the reactor cannot create its consumer {consumer} on stream {stream} ({source}); is the NATS server reachable?"
    )]
    Consumer {
        /// The stream.
        stream: String,
        /// The consumer.
        consumer: String,
        /// The client's error, with its kind.
        #[source]
        source: jetstream::stream::ConsumerError,
    },
    /// Its consumer could not be read.
    #[error(
        "the reactor cannot read its consumer {consumer} ({source}); is the NATS server reachable?"
    )]
    Messages {
        /// The consumer.
        consumer: String,
        /// The client's error, with its kind.
        #[source]
        source: jetstream::consumer::StreamError,
    },
    /// The dead-letter consumer's message stream ended.
    #[error("the reactor's consumer {consumer} ended")]
    Ended {
        /// The consumer.
        consumer: String,
    },
}

impl Reactor {
    /// A reactor that appends through `journal`.
    pub fn new(journal: Journal) -> Self {
        Reactor {
            subjects: journal.subjects().clone(),
            journal,
            limits: Limits::default(),
            stats: Arc::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<ReactorStats> {
        self.stats.clone()
    }

    /// The durable consumer every engine replica shares.
    pub fn consumer_config(subjects: &Subjects, replicas: usize) -> pull::Config {
        let name = format!("{}-reactor", subjects.prefix());
        pull::Config {
            durable_name: Some(name.clone()),
            name: Some(name),
            description: Some("runlog engine reactor".to_owned()),
            filter_subjects: REACTS_TO
                .iter()
                .map(|ty| subjects.events_of_type(*ty))
                .chain([subjects.all_timers()])
                .collect(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: (CONCURRENCY * 8) as i64,
            num_replicas: replicas,
            ..Default::default()
        }
    }

    /// Consumes with `js` (a connection kept for consuming) until `shutdown`.
    pub async fn run(
        &self,
        js: &jetstream::Context,
        replicas: usize,
        shutdown: CancellationToken,
    ) -> Result<(), ReactorError> {
        let config = Self::consumer_config(&self.subjects, replicas);
        let name = config.durable_name.clone().unwrap_or_default();
        let consumer = durable(js, &self.subjects.exec_stream(), config).await?;
        while !shutdown.is_cancelled() {
            let messages = consumer
                .stream()
                .max_messages_per_batch(CONCURRENCY)
                .messages()
                .await
                .map_err(|source| ReactorError::Messages {
                    consumer: name.clone(),
                    source,
                })?;
            let flow = messages
                .take_until(shutdown.cancelled())
                .for_each_concurrent(CONCURRENCY, |message| async move {
                    match message {
                        Ok(message) => self.handle(message).await,
                        Err(e) => tracing::warn!(error = %e, "reactor consumer error"),
                    }
                });
            flow.await;
            if !shutdown.is_cancelled() {
                tracing::warn!("the reactor's message stream ended; resubscribing");
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
        Ok(())
    }

    /// Turns the server's max-deliveries advisories (captured in the
    /// dead-letter stream) into `dead_lettered` events, until `shutdown`.
    /// An attempt whose workers kept dying, or that no worker could take,
    /// ends dead-lettered with reason `max_deliveries`.
    pub async fn run_dead_letters(
        &self,
        js: &jetstream::Context,
        replicas: usize,
        shutdown: CancellationToken,
    ) -> Result<(), ReactorError> {
        let stream = self.subjects.exec_stream();
        let log = js
            .get_stream_no_info(&stream)
            .await
            .map_err(|source| ReactorError::Stream { stream, source })?;
        let name = format!("{}-dead-letters", self.subjects.prefix());
        let config = pull::Config {
            durable_name: Some(name.clone()),
            name: Some(name.clone()),
            description: Some("runlog engine: max-deliveries advisories".to_owned()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            num_replicas: replicas,
            ..Default::default()
        };
        let consumer = durable(js, &self.subjects.dlq_stream(), config).await?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|source| ReactorError::Messages {
                consumer: name.clone(),
                source,
            })?;
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = messages.next() => match next {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "dead-letter consumer error");
                        continue;
                    }
                    None => return Err(ReactorError::Ended { consumer: name }),
                },
            };
            let done = self.dead_letter(&log, &message).await;
            let ack = match done {
                Done::Ack => AckKind::Ack,
                Done::Retry => AckKind::Nak(Some(RETRY_DELAY)),
            };
            if let Err(e) = message.ack_with(ack).await {
                tracing::warn!(error = %e, "cannot acknowledge a dead-letter advisory");
            }
        }
    }

    async fn dead_letter(
        &self,
        log: &jetstream::stream::Stream<()>,
        message: &jetstream::Message,
    ) -> Done {
        #[derive(Deserialize)]
        struct Advisory {
            stream_seq: u64,
        }
        if !message.subject.contains(".MAX_DELIVERIES.") {
            return Done::Ack; // terminated items were dropped on purpose
        }
        let Ok(advisory) = serde_json::from_slice::<Advisory>(&message.payload) else {
            self.bad(0, &message.subject, "an advisory that cannot be read");
            return Done::Ack;
        };
        let stored = match log.direct_get(advisory.stream_seq).await {
            Ok(stored) => stored,
            // Gone from the log (its retention): nothing left to end.
            Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => {
                return Done::Ack;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a dead-lettered work item");
                return Done::Retry;
            }
        };
        let item = WorkItem::from_delivery(
            &self.subjects,
            &stored.subject,
            Some(&stored.headers),
            &stored.payload,
            advisory.stream_seq,
            &self.limits,
        );
        let item = match item {
            Ok(item) => item,
            Err(e) => {
                self.bad(advisory.stream_seq, &stored.subject, &e.to_string());
                return Done::Ack;
            }
        };
        let command = Command::GiveUp {
            attempt: item.attempt,
        };
        self.transition(&item.execution, &command).await
    }

    async fn handle(&self, message: jetstream::Message) {
        let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let done = self.react(
            seq,
            &message.subject,
            message.headers.as_ref(),
            &message.payload,
        );
        let ack = match done.await {
            Done::Ack => AckKind::Ack,
            Done::Retry => {
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
                AckKind::Nak(Some(RETRY_DELAY))
            }
        };
        self.stats.handled.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = message.ack_with(ack).await {
            tracing::warn!(error = %e, seq, "cannot acknowledge a reaction");
        }
    }

    /// Reacts to one stored message (`seq` on `subject`).
    async fn react(
        &self,
        seq: u64,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        body: &[u8],
    ) -> Done {
        if subject.ends_with(".due") {
            return self.fired(subject, body).await;
        }
        let Some((execution, ty)) = self.subjects.parse_event(subject) else {
            self.bad(seq, subject, "not a lifecycle event subject");
            return Done::Ack;
        };
        let empty = async_nats::HeaderMap::new();
        match codec::decode(headers.unwrap_or(&empty), body, &self.limits) {
            Ok(envelope) if envelope.execution == execution && envelope.event_type() == ty => {
                self.on_event(seq, envelope).await
            }
            Ok(envelope) => {
                let reason = format!(
                    "the event names execution {} and type {}, its subject {execution} and {ty}",
                    envelope.execution,
                    envelope.event_type()
                );
                self.invalid(seq, &execution, ty, reason).await
            }
            Err(e) => self.invalid(seq, &execution, ty, describe(&e)).await,
        }
    }

    /// A message on an event subject that is not a valid event. A bad
    /// submission ends `rejected` with the reason; anything else is counted
    /// and skipped (the fold skips it too).
    async fn invalid(
        &self,
        seq: u64,
        execution: &ExecutionId,
        ty: EventType,
        reason: String,
    ) -> Done {
        self.bad(seq, execution.as_str(), &reason);
        if ty != EventType::Submitted {
            return Done::Ack;
        }
        let command = Command::Reject {
            field: None,
            reason: format!("the submission could not be read: {reason}"),
        };
        self.transition(execution, &command).await
    }

    async fn on_event(&self, seq: u64, envelope: Envelope) -> Done {
        let execution = envelope.execution.clone();
        match &envelope.event {
            Event::Submitted(submitted) => {
                let spec = &submitted.spec;
                if let Err(field) = spec.validate_recorded() {
                    let command = Command::Reject {
                        field: Some(field.field),
                        reason: field.reason,
                    };
                    return self.transition(&execution, &command).await;
                }
                if let Some(ms) = spec.timeout_ms {
                    let at = runlog_events::timer::after(envelope.time, ms);
                    if let Err(done) = self.set_timer(&execution, Timer::Deadline, at, 0).await {
                        return done;
                    }
                }
                match spec.not_before {
                    Some(at) if at > Utc::now() => {
                        match self.set_timer(&execution, Timer::Start, at, 0).await {
                            Ok(()) => Done::Ack,
                            Err(done) => done,
                        }
                    }
                    _ => self.enqueue_after(seq, envelope).await,
                }
            }
            Event::Failed(_)
            | Event::TimedOut(runlog_events::event::TimedOut {
                scope: TimeoutScope::Attempt,
                ..
            }) => {
                if matches!(envelope.event, Event::TimedOut(_)) {
                    self.signal_cancel(&execution, "the attempt ran past its deadline")
                        .await;
                }
                let command = Command::ResolveFailure {
                    jitter: rand::random::<f64>(),
                };
                self.transition(&execution, &command).await
            }
            Event::RetryScheduled(retry) => {
                match self
                    .set_timer(&execution, Timer::Retry, retry.at, envelope.attempt)
                    .await
                {
                    Ok(()) => Done::Ack,
                    Err(done) => done,
                }
            }
            Event::CancelRequested(request) => {
                self.signal_cancel(&execution, &request.reason).await;
                Done::Ack
            }
            Event::TimedOut(_) => {
                self.signal_cancel(&execution, "the execution ran past its deadline")
                    .await;
                Done::Ack
            }
            _ => Done::Ack,
        }
    }

    /// Queues the first attempt right after `submitted` (stored at `seq`):
    /// one append, expecting nothing else happened since. If something did
    /// (another replica queued it, a cancel came first), decide again on
    /// the whole history.
    async fn enqueue_after(&self, seq: u64, submitted: Envelope) -> Done {
        let mut state = ExecutionState::default();
        if decider::apply(&mut state, &submitted).is_err() {
            // A second `submitted` for an existing execution: nothing follows.
            return Done::Ack;
        }
        let now = Utc::now();
        let Ok(facts) = decider::decide(&Command::Enqueue, &state, now) else {
            return Done::Ack;
        };
        let mut expected = seq;
        for fact in facts {
            let mut envelope = Envelope::new(
                submitted.execution.clone(),
                fact.attempt,
                now,
                self.journal.source(),
                fact.event,
            );
            envelope.correlation_id = submitted.correlation_id.clone();
            envelope.traceparent = submitted.traceparent.clone();
            match self.journal.append(expected, &envelope).await {
                Ok(appended) => expected = appended.seq,
                Err(AppendError::Conflict { .. }) => {
                    return self.enqueue(&submitted.execution).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, execution = %submitted.execution, "cannot queue");
                    return Done::Retry;
                }
            }
            if let Event::Queued(_) = envelope.event {
                self.stats.dispatched.fetch_add(1, Ordering::Relaxed);
            }
        }
        Done::Ack
    }

    /// Queues the next attempt of `execution`, decided on its whole
    /// history. An attempt already queued (another replica's reaction, our
    /// own whose acknowledgement was lost) is dispatched already: its
    /// `queued` is the work item.
    async fn enqueue(&self, execution: &ExecutionId) -> Done {
        let history = match self.journal.load(execution).await {
            Ok(history) => history,
            Err(e) => {
                tracing::warn!(error = %e, %execution, "cannot read the history; will retry");
                return Done::Retry;
            }
        };
        let before = history.last_seq;
        match self
            .journal
            .advance(execution, history, &Command::Enqueue, Utc::now())
            .await
        {
            Ok(history) => {
                if history.last_seq != before {
                    self.stats.dispatched.fetch_add(1, Ordering::Relaxed);
                }
                Done::Ack
            }
            Err(TransitionError::Rejected(rejection)) => {
                tracing::debug!(%execution, code = rejection.code(), "nothing to queue");
                Done::Ack
            }
            Err(e) => {
                tracing::warn!(error = %e, %execution, "cannot queue; will retry");
                Done::Retry
            }
        }
    }

    /// Arms the deadline timer of `attempt` of `execution`; false when the
    /// publish failed.
    pub async fn arm_attempt_deadline(
        &self,
        execution: &ExecutionId,
        attempt: u32,
        at: DateTime<Utc>,
    ) -> bool {
        self.set_timer(execution, Timer::Attempt, at, attempt)
            .await
            .is_ok()
    }

    /// Sets a broker-held timer: a schedule on `<p>.sched.<exec>.<timer>`
    /// firing once at `at` on `<p>.sched.<exec>.<timer>.due`. A newer timer
    /// of the same kind replaces the older one.
    async fn set_timer(
        &self,
        execution: &ExecutionId,
        timer: Timer,
        at: DateTime<Utc>,
        attempt: u32,
    ) -> Result<(), Done> {
        let schedule = Schedule::new(&self.subjects, execution, timer, at, attempt);
        match schedule.publish(self.journal.jetstream()).await {
            Ok(()) => {
                self.stats.timers.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, %execution, timer = timer.as_str(), "cannot set a timer");
                Err(Done::Retry)
            }
        }
    }

    /// A timer fired.
    async fn fired(&self, subject: &str, body: &[u8]) -> Done {
        let parsed = self.subjects.parse_timer(subject);
        let fired = serde_json::from_slice::<TimerFired>(body);
        // The body's timer decides, as the schedule wrote both.
        let (Some((execution, _)), Ok(fired)) = (parsed, fired) else {
            self.bad(0, subject, "a timer that cannot be read");
            return Done::Ack;
        };
        let command = match fired.timer {
            Timer::Retry | Timer::Start => return self.enqueue(&execution).await,
            Timer::Attempt => Command::TimeOutAttempt {
                attempt: fired.attempt,
            },
            Timer::Deadline => Command::TimeOutExecution,
        };
        self.transition(&execution, &command).await
    }

    /// Load → decide → append. A refusal means the reaction is moot (the
    /// execution moved on); only I/O failures are retried.
    async fn transition(&self, execution: &ExecutionId, command: &Command) -> Done {
        match self
            .journal
            .transition(execution, command, Utc::now())
            .await
        {
            Ok(_) => Done::Ack,
            Err(TransitionError::Rejected(rejection)) => {
                tracing::debug!(%execution, code = rejection.code(), "reaction not needed");
                Done::Ack
            }
            Err(e) => {
                tracing::warn!(error = %e, %execution, "reaction failed; will retry");
                Done::Retry
            }
        }
    }

    /// Tells the worker of `execution` to stop (core NATS: a worker that
    /// misses it is stopped by its attempt's deadline or its claim).
    async fn signal_cancel(&self, execution: &ExecutionId, reason: &str) {
        let client = self.journal.jetstream().client();
        if let Err(e) = client
            .publish(self.subjects.cancel(execution), reason.to_owned().into())
            .await
        {
            tracing::warn!(error = %e, %execution, "cannot signal a cancel");
        }
    }

    fn bad(&self, seq: u64, what: &str, reason: &str) {
        self.stats.bad.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            seq,
            what,
            reason,
            "the reactor skipped a message it cannot read"
        );
    }
}

/// The durable consumer `config` names on `stream`, created if missing.
async fn durable(
    js: &jetstream::Context,
    stream: &str,
    config: pull::Config,
) -> Result<jetstream::consumer::PullConsumer, ReactorError> {
    let consumer = config.durable_name.clone().unwrap_or_default();
    // Create or update: an installation created by an older engine gets
    // this version's filter.
    js.get_stream_no_info(stream)
        .await
        .map_err(|source| ReactorError::Stream {
            stream: stream.to_owned(),
            source,
        })?
        .create_consumer(config)
        .await
        .map_err(|source| ReactorError::Consumer {
            stream: stream.to_owned(),
            consumer,
            source,
        })
}

fn describe(e: &DecodeError) -> String {
    format!("{e} ({:?})", e.kind())
}
