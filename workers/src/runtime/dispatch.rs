//! The dispatcher: the one loop of a worker that fetches by priority,
//! applies the capacity rules, starts attempts, and drains on shutdown.
//!
//! Admission of a fetched item:
//!
//! 1. Its required labels are not all on this worker: NAK with a delay of
//!    `nak_delay × deliveries` (at most 30 s), so a matching worker takes it.
//! 2. It can start (a slot is free, its kind is under its limit, no
//!    exclusive attempt runs or waits): it starts.
//! 3. No slot is free (an item over-fetched by the idle long polls): it
//!    waits in the worker for a slot.
//! 4. Its kind is at its limit, or an exclusive conflict blocks it: on its
//!    first delivery it is NAKed with `nak_delay`, so an idle worker can take
//!    it; a redelivered item waits in the worker instead, so capacity costs
//!    an item at most one of the consumer's `max_deliver` deliveries.
//!
//! Waiting items count against the slots (fetches ask only for what is
//! left), get in-progress acks, and start in priority order as soon as the
//! rules allow. While attempts run, a fetch round waits until a quarter of
//! the slots are free, or at most a few milliseconds, so slots are refilled
//! in batches rather than one fetch request per finished attempt. While an
//! exclusive item waits, nothing else starts and the worker stops
//! fetching, so the exclusive item starts once the running attempts end.
//!
//! 5. Its rate or concurrency key is at its limit (the attempt task asks
//!    the `limits` gate before claiming): the item is *held*. A held item
//!    spends no delivery, takes no slot (the worker keeps fetching, so other
//!    keys proceed), gets in-progress acks, and is tried again when the gate
//!    says (a rate's next free instant, a concurrency key's poll interval,
//!    or at once when an attempt of the key ends on this worker). Beyond
//!    `hold` held items, the next one is NAKed with a growing delay.
//! 6. Its circuit breaker is open and a NAK would spend its last delivery
//!    (the attempt task asks the `breaker` gate before claiming): it is
//!    held like a limited item until the breaker may probe, however many
//!    items are held already.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use runlog_events::codec::Limits;
use runlog_events::{Priority, WorkItem};
use tokio::sync::watch;
use tokio::task::{self, JoinError, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::capacity::{Blocked, Capacity};
use super::execution::{self, Ended, Shared};
use super::fetch::{Fetched, Fetcher};
use super::limits::LimitKeys;

/// The longest delay a label mismatch NAKs an item with.
const MAX_NAK_DELAY: Duration = Duration::from_secs(30);
/// How long free slots wait for more to free up before fewer than a refill
/// are fetched.
const REFILL_WAIT: Duration = Duration::from_millis(5);
/// How long the dispatcher waits after a failed fetch before the next one.
const FETCH_RETRY: Duration = Duration::from_millis(500);
/// How often the dispatcher looks for a reconnect of its connection.
const RECONNECT_CHECK: Duration = Duration::from_millis(200);

/// An item that waits in the worker for a slot or for its kind's limit.
struct Waiting {
    message: Message,
    item: WorkItem,
    priority: Priority,
    arrival: u64,
    redelivered: bool,
    /// Its limit keys, once read.
    keys: Option<LimitKeys>,
    /// Held for a rate or concurrency limit until then; held items take no
    /// slot.
    held_until: Option<Instant>,
}

/// One worker's dispatch loop and the attempts it owns.
pub(crate) struct Dispatcher {
    fetcher: Fetcher,
    capacity: Capacity,
    labels: BTreeMap<String, String>,
    shared: Arc<Shared>,
    paused: watch::Receiver<bool>,
    drain_timeout: Duration,
    waiting: Vec<Waiting>,
    arrivals: u64,
    attempts: JoinSet<Ended>,
    kinds: HashMap<task::Id, (String, Priority, u64, bool)>,
    hard_stop: CancellationToken,
    /// Shutting down: items the limits gate holds back are handed back.
    draining: bool,
    /// The connection's counters: a reconnect shows as a new `connects`.
    connection: Arc<async_nats::Statistics>,
}

impl Dispatcher {
    pub fn new(
        fetcher: Fetcher,
        capacity: Capacity,
        labels: BTreeMap<String, String>,
        shared: Arc<Shared>,
        paused: watch::Receiver<bool>,
        drain_timeout: Duration,
        connection: Arc<async_nats::Statistics>,
    ) -> Self {
        Dispatcher {
            fetcher,
            capacity,
            labels,
            shared,
            paused,
            drain_timeout,
            waiting: Vec::new(),
            arrivals: 0,
            attempts: JoinSet::new(),
            kinds: HashMap::new(),
            hard_stop: CancellationToken::new(),
            draining: false,
            connection,
        }
    }

    /// Runs until `shutdown`, then drains.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let keep_alive = self.shared.keep_alive;
        let mut tick = tokio::time::interval_at(Instant::now() + keep_alive, keep_alive);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut retry_at: Option<Instant> = None;
        // Since when fewer slots than a refill are free.
        let mut short_since: Option<Instant> = None;
        let mut paused_open = true;
        let far = Duration::from_secs(3600);
        let mut connects = self.connects();
        let mut reconnected = tokio::time::interval(RECONNECT_CHECK);
        reconnected.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            self.start_waiting();
            if shutdown.is_cancelled() {
                break;
            }
            let quota = self.quota();
            let now = Instant::now();
            short_since = match short_since {
                _ if quota == 0 || quota >= self.refill() => None,
                None => Some(now),
                since => since,
            };
            let refill_due = short_since.is_none_or(|t| now >= t + REFILL_WAIT);
            if quota > 0 && refill_due && retry_at.is_none() && self.may_fetch() {
                short_since = None;
                match self.fetcher.round(quota).await {
                    Ok(items) if !items.is_empty() => {
                        for fetched in items {
                            self.admit(fetched).await;
                        }
                        continue;
                    }
                    Ok(_) => {
                        if let Err(e) = self.fetcher.long_poll().await {
                            tracing::warn!(error = %e, "cannot park a long poll; retrying");
                            retry_at = Some(Instant::now() + FETCH_RETRY);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot fetch work items; retrying");
                        retry_at = Some(Instant::now() + FETCH_RETRY);
                    }
                }
            }
            let next_held = self.next_held();
            tokio::select! {
                _ = shutdown.cancelled() => {}
                Some(done) = self.attempts.join_next_with_id(), if !self.attempts.is_empty() => {
                    self.finished(done).await;
                }
                polled = self.fetcher.next_polled(), if self.fetcher.is_polling() => match polled {
                    Some(Ok(fetched)) => self.admit(fetched).await,
                    Some(Err(e)) => tracing::warn!(error = %e, "a long poll failed"),
                    None => {}
                },
                changed = self.paused.changed(), if paused_open => paused_open = changed.is_ok(),
                _ = tick.tick() => self.keep_waiting_alive().await,
                _ = reconnected.tick() => {
                    // Pull requests parked at a server live in its memory: after a
                    // reconnect (a restarted server, another node) they are gone,
                    // and waiting for them to expire would leave work unclaimed.
                    let now = self.connects();
                    if now != connects {
                        connects = now;
                        tracing::info!("reconnected to NATS; pulling work again");
                        self.fetcher.stop_polling();
                        retry_at = None;
                    }
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(|| Instant::now() + far)),
                    if retry_at.is_some() => retry_at = None,
                _ = tokio::time::sleep_until(next_held.unwrap_or_else(|| Instant::now() + far)),
                    if next_held.is_some() => {}
                _ = tokio::time::sleep_until(short_since.map_or_else(|| Instant::now() + far, |t| t + REFILL_WAIT)),
                    if short_since.is_some() => {}
            }
        }
        self.drain().await;
    }

    fn connects(&self) -> u64 {
        self.connection
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many items the next fetch round may take: the free slots, and
    /// no more than keeps the possible over-fetch of parked polls at
    /// `sources − 1`.
    fn quota(&self) -> usize {
        let concurrency = self.capacity.concurrency();
        let waiting = self.waiting.iter().filter(|w| w.held_until.is_none());
        let held = self.capacity.running() + waiting.count();
        let room = concurrency.saturating_sub(held);
        let bound = (concurrency + self.fetcher.sources())
            .saturating_sub(1)
            .saturating_sub(held + self.fetcher.outstanding());
        room.min(bound)
    }

    /// How many free slots make a fetch round at once while attempts run:
    /// a quarter of the slots. Fewer wait up to [`REFILL_WAIT`] for more to
    /// free up. Refilling one slot at a time would cost a fetch request
    /// (and an empty answer from every higher level) per item. An idle
    /// worker fetches as soon as anything is free.
    fn refill(&self) -> usize {
        if self.capacity.running() == 0 {
            1
        } else {
            (self.capacity.concurrency() / 4).max(1)
        }
    }

    /// The NAK delay of an item handed back on its `delivered`-th delivery:
    /// `nak_delay × delivered`, at most [`MAX_NAK_DELAY`].
    fn growing_delay(&self, delivered: i64) -> Duration {
        let factor = u32::try_from(delivered).unwrap_or(u32::MAX);
        self.shared
            .nak_delay
            .saturating_mul(factor)
            .min(MAX_NAK_DELAY)
    }

    fn may_fetch(&self) -> bool {
        !*self.paused.borrow() && !self.capacity.exclusive_running() && !self.exclusive_waiting()
    }

    fn exclusive_waiting(&self) -> bool {
        self.waiting
            .iter()
            .any(|w| w.held_until.is_none() && self.capacity.is_exclusive(w.item.capacity_class()))
    }

    /// Whether an item of capacity class `kind` (its kind unless it names
    /// a class) may start now.
    fn check(&self, kind: &str) -> Result<(), Blocked> {
        self.capacity.check(kind)?;
        if !self.capacity.is_exclusive(kind) && self.exclusive_waiting() {
            return Err(Blocked::Exclusive);
        }
        Ok(())
    }

    async fn admit(&mut self, fetched: Fetched) {
        let Fetched { message, priority } = fetched;
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1).max(1);
        let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let item = WorkItem::from_delivery(
            &self.shared.subjects,
            &message.subject,
            message.headers.as_ref(),
            &message.payload,
            seq,
            &Limits::default(),
        );
        let item = match item {
            Ok(item) => item,
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "not a work item; terminating it");
                if let Err(e) = message.ack_with(AckKind::Term).await {
                    tracing::warn!(error = %e, "cannot terminate a work item");
                }
                return;
            }
        };
        if !item.accepts(&self.labels) {
            let delay = self.growing_delay(delivered);
            tracing::debug!(execution = %item.execution, ?delay, "labels do not match; handing the item back");
            execution::nak(&message, Some(delay)).await;
            return;
        }
        self.arrivals += 1;
        let redelivered = delivered > 1;
        let waiting = Waiting {
            message,
            item,
            priority,
            arrival: self.arrivals,
            redelivered,
            keys: None,
            held_until: None,
        };
        match self.check(waiting.item.capacity_class()) {
            Ok(()) => self.start(waiting),
            Err(Blocked::Full) => self.wait(waiting),
            Err(_) if delivered == 1 => {
                tracing::debug!(execution = %waiting.item.execution, class = %waiting.item.capacity_class(), "capacity class at its limit; handing the item back once");
                execution::nak(&waiting.message, Some(self.shared.nak_delay)).await;
            }
            Err(_) => self.wait(waiting),
        }
    }

    fn wait(&mut self, waiting: Waiting) {
        let key = (waiting.priority, waiting.arrival);
        let at = self
            .waiting
            .partition_point(|w| (w.priority, w.arrival) <= key);
        self.waiting.insert(at, waiting);
    }

    /// Starts every waiting item the rules allow, in priority order.
    fn start_waiting(&mut self) {
        let now = Instant::now();
        while let Some(at) = self.waiting.iter().position(|w| {
            w.held_until.is_none_or(|t| t <= now) && self.check(w.item.capacity_class()).is_ok()
        }) {
            let waiting = self.waiting.remove(at);
            self.start(waiting);
        }
    }

    fn start(&mut self, waiting: Waiting) {
        let Waiting {
            message,
            item,
            priority,
            arrival,
            redelivered,
            keys,
            ..
        } = waiting;
        let kind = item.capacity_class().to_owned();
        self.capacity.start(&kind);
        let span = attempt_span(&item);
        let handle = self.attempts.spawn(
            execution::attempt(
                self.shared.clone(),
                message,
                item,
                redelivered,
                self.hard_stop.clone(),
                keys,
            )
            .instrument(span),
        );
        self.kinds
            .insert(handle.id(), (kind, priority, arrival, redelivered));
    }

    /// When the next held item may be tried again. Items already due wait
    /// for a slot like any other (an ending attempt wakes the loop).
    fn next_held(&self) -> Option<Instant> {
        let now = Instant::now();
        self.waiting
            .iter()
            .filter_map(|w| w.held_until)
            .filter(|t| *t > now)
            .min()
    }

    async fn finished(&mut self, done: Result<(task::Id, Ended), JoinError>) {
        let (id, ended) = match done {
            Ok((id, ended)) => (id, Some(ended)),
            Err(e) => {
                if e.is_panic() {
                    tracing::error!(
                        "an attempt task panicked; its work item returns after ack_wait"
                    );
                }
                (e.id(), None)
            }
        };
        let Some((kind, priority, arrival, redelivered)) = self.kinds.remove(&id) else {
            return;
        };
        self.capacity.finish(&kind);
        match ended {
            Some(Ended::Held(held)) => {
                let execution::Held {
                    message,
                    item,
                    keys,
                    retry_at,
                    last_delivery,
                } = *held;
                if self.draining {
                    execution::nak(&message, None).await;
                    return;
                }
                let held = self.waiting.iter().filter(|w| w.held_until.is_some());
                if !last_delivery && held.count() >= self.shared.limits.hold() {
                    let delivered = message.info().map(|i| i.delivered).unwrap_or(1).max(1);
                    let delay = self.growing_delay(delivered);
                    tracing::debug!(execution = %item.execution, ?delay, "its limit is reached and the worker holds enough items; handing it back");
                    execution::nak(&message, Some(delay)).await;
                    return;
                }
                // Its key's other held items need not ask before then either.
                if let Some(keys) = &keys {
                    for w in &mut self.waiting {
                        let shares = w.keys.as_ref().is_some_and(|k| {
                            (k.rate.is_some() && k.rate == keys.rate)
                                || (k.concurrency.is_some() && k.concurrency == keys.concurrency)
                        });
                        if shares && let Some(until) = &mut w.held_until {
                            *until = (*until).max(retry_at);
                        }
                    }
                }
                self.wait(Waiting {
                    message,
                    item,
                    priority,
                    arrival,
                    redelivered,
                    keys,
                    held_until: Some(retry_at),
                });
            }
            Some(Ended::Done(Some(LimitKeys {
                concurrency: Some(key),
                ..
            }))) => {
                // A slot of `key` just freed here: try its held items now.
                let now = Instant::now();
                for w in &mut self.waiting {
                    let same = w
                        .keys
                        .as_ref()
                        .is_some_and(|k| k.concurrency.as_ref() == Some(&key));
                    if same && w.held_until.is_some() {
                        w.held_until = Some(now);
                    }
                }
            }
            Some(Ended::Done(_)) | None => {}
        }
    }

    async fn keep_waiting_alive(&mut self) {
        for waiting in &self.waiting {
            execution::progress(&waiting.message).await;
        }
    }

    /// Stops fetching, hands waiting items back, lets running attempts
    /// finish within the drain timeout, then stops the rest and hands their
    /// items back without recording anything.
    async fn drain(mut self) {
        self.draining = true;
        self.fetcher.stop_polling();
        for waiting in std::mem::take(&mut self.waiting) {
            execution::nak(&waiting.message, None).await;
        }
        let deadline = Instant::now() + self.drain_timeout;
        while !self.attempts.is_empty() {
            tokio::select! {
                Some(done) = self.attempts.join_next_with_id() => self.finished(done).await,
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        if self.attempts.is_empty() {
            return;
        }
        tracing::info!(
            attempts = self.attempts.len(),
            "drain timeout passed: stopping the remaining attempts and handing their work back"
        );
        self.hard_stop.cancel();
        let limit = Instant::now() + self.shared.cancel_grace + Duration::from_secs(5);
        while !self.attempts.is_empty() {
            match tokio::time::timeout_at(limit, self.attempts.join_next_with_id()).await {
                Ok(Some(done)) => self.finished(done).await,
                Ok(None) => break,
                Err(_) => {
                    self.attempts.shutdown().await;
                    break;
                }
            }
        }
    }
}

/// The span every line about one attempt is written in: its execution,
/// attempt, queue and the caller's trace id (`--log-format json` prints
/// them as the line's `span`). At error level, so a worker that logs
/// anything at all logs them.
fn attempt_span(item: &WorkItem) -> tracing::Span {
    let span = tracing::error_span!(
        "attempt",
        execution = %item.execution,
        attempt = item.attempt,
        queue = %item.queue,
        trace_id = tracing::field::Empty,
    );
    if let Some(traceparent) = &item.traceparent {
        span.record("trace_id", traceparent.trace_id());
    }
    span
}
