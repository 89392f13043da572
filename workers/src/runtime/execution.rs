//! The life of one work item once it has a slot, in named steps.
//!
//! 0. [`attempt`] asks the limits gate (`limits`): an item whose rate or
//!    concurrency key is at its limit goes back to the dispatcher to be
//!    held, and a started one keeps its concurrency lease until its result
//!    is recorded. [`execute`] then asks the item's circuit breaker
//!    (`breaker`): an open one hands the item back or has it held.
//! 1. `claim`: watch for the execution's cancel signal (before the claim,
//!    so a signal sent right after it is not missed), then claim the
//!    attempt. A skip is acknowledged and dropped.
//! 2. `prepare`: hold the task to the worker's executor policy (kinds,
//!    programs, root), resolve the environment and find the handler by
//!    kind; an error here fails the attempt without running it.
//! 3. `run`: start the handler under a token that a cancel signal, the
//!    attempt deadline or a hard shutdown cancels. Telemetry is published
//!    alongside; the work item gets in-progress acks.
//! 4. `record`: record how it ended (`succeeded`, `failed`, `cancelled`,
//!    `timed_out`), then acknowledge the work item. If recording fails for
//!    a transient reason the item is left unacknowledged, and the server
//!    redelivers it. On a hard shutdown the item is handed back with an
//!    immediate NAK and nothing is recorded: the next claim records the
//!    lost attempt.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::Message;
use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use runlog_events::decider::{Rejection, Status};
use runlog_events::envelope::random_span_id;
use runlog_events::journal::{Journal, TransitionError};
use runlog_events::{ErrorClass, Subjects, TaskError, TraceParent, WorkItem};
use runlog_telemetry::{Kind, Span, Traces, spans};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::breaker::{Breakers, Gate, Permit};
use super::environment::{self, SecretSource, Vault};
use super::limits::{Admission, LimitKeys, Limits};
use super::liveness::{Running, RunningAttempt};
use super::metrics::{Append, RunOutcome, WorkerMetrics};
use super::signals::{Signals, Watch};
use super::telemetry::{self, TelemetryConfig};
use runlog_events::sealing::Keyring;

use crate::attempt::{Attempt, AttemptError, Claim, Outcome};
use crate::executor::mask::Masker;
use crate::handler::{Context, DynHandler, HandlerResult, Registry};
use crate::identity::RunAs;
use crate::meters::{Meters, json_len};
use crate::policy::ExecutorPolicy;

/// What every attempt task of a worker shares.
pub(crate) struct Shared {
    /// Routes the cancel signals of this worker's attempts.
    pub signals: Arc<Signals>,
    pub journal: Journal,
    pub subjects: Subjects,
    pub worker: String,
    pub registry: Registry,
    pub secrets: Arc<dyn SecretSource>,
    /// Opens sealed environments and stored secrets.
    pub keyring: Option<Arc<Keyring>>,
    pub env_bucket: OnceCell<kv::Store>,
    pub secrets_bucket: OnceCell<kv::Store>,
    pub telemetry: TelemetryConfig,
    pub cancel_grace: Duration,
    /// Interval of in-progress acks.
    pub keep_alive: Duration,
    pub nak_delay: Duration,
    pub running: Arc<Running>,
    /// Circuit breakers of the tasks' targets.
    pub breakers: Breakers,
    /// Rate limits and concurrency keys.
    pub limits: Arc<Limits>,
    /// What `/metrics` shows.
    pub metrics: WorkerMetrics,
    /// Where the attempts' spans go, when traces are exported.
    pub traces: Option<Traces>,
    /// What tasks may do here.
    pub policy: ExecutorPolicy,
    /// Whether child processes run as root.
    pub children_run_as_root: bool,
    /// The user child processes run as.
    pub run_as: Option<Arc<RunAs>>,
}

impl Shared {
    /// The trace of `attempt` (the parent of its execution's span), when
    /// traces are exported and the trace is sampled.
    fn trace_of(&self, attempt: &Attempt) -> Option<(&Traces, TraceParent)> {
        let traces = self.traces.as_ref()?;
        let parent = attempt.history().state.traceparent.as_ref()?;
        parent.sampled().then(|| (traces, parent.clone()))
    }
}

impl Shared {
    /// The `<p>-env` bucket, `None` while it does not exist.
    async fn env_bucket(&self) -> Option<&kv::Store> {
        let js = self.journal.jetstream();
        let name = self.subjects.env_bucket();
        self.env_bucket
            .get_or_try_init(|| async { js.get_key_value(name).await })
            .await
            .ok()
    }

    /// The `<p>-secrets` bucket, `None` while it does not exist.
    async fn secrets_bucket(&self) -> Option<&kv::Store> {
        let js = self.journal.jetstream();
        let name = self.subjects.secrets_bucket();
        self.secrets_bucket
            .get_or_try_init(|| async { js.get_key_value(name).await })
            .await
            .ok()
    }
}

/// How the handler's run ended, before it is recorded.
enum Ending {
    Recorded(Outcome),
    /// Hand the item back without recording anything.
    HandBack,
}

/// Aborts a spawned task when dropped, so an aborted attempt task takes
/// its handler and telemetry down with it.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How an attempt task ended, for the dispatcher.
pub(crate) enum Ended {
    /// The item ran (or was dropped or handed back); the keys it was
    /// admitted under, if any limit applied.
    Done(Option<LimitKeys>),
    /// A key of the item is at its limit: hold it until `retry_at`.
    Held(Box<Held>),
}

/// An item the limits gate or an open circuit breaker held back.
pub(crate) struct Held {
    pub message: Message,
    pub item: WorkItem,
    /// `None` while the task's keys could not be read.
    pub keys: Option<LimitKeys>,
    pub retry_at: Instant,
    /// Held because a NAK would spend its last delivery: the worker keeps
    /// it however many items it already holds.
    pub last_delivery: bool,
}

impl Held {
    /// An item the limits gate holds until `retry_at`.
    fn limited(
        message: Message,
        item: WorkItem,
        keys: Option<LimitKeys>,
        retry_at: Instant,
    ) -> Self {
        Held {
            message,
            item,
            keys,
            retry_at,
            last_delivery: false,
        }
    }
}

/// Runs one work item through the limits gate, then to its end. `keys`
/// are the item's limit keys when an earlier pass read them.
pub(crate) async fn attempt(
    shared: Arc<Shared>,
    message: Message,
    item: WorkItem,
    redelivered: bool,
    hard_stop: CancellationToken,
    keys: Option<LimitKeys>,
) -> Ended {
    if !shared.limits.active() {
        return match execute(shared, message, item, redelivered, hard_stop, None).await {
            Some(held) => Ended::Held(held),
            None => Ended::Done(None),
        };
    }
    let keys = match keys.or_else(|| item.spec.as_ref().map(LimitKeys::of)) {
        Some(keys) => keys,
        None => match shared
            .limits
            .keys_of(&shared.journal, &item.execution)
            .await
        {
            Ok(Some(keys)) => keys,
            Ok(None) => LimitKeys::default(),
            Err(e) => {
                tracing::warn!(execution = %item.execution, error = %e, "cannot read the task's limit keys; holding the item");
                let retry_at = Instant::now() + Duration::from_secs(1);
                return Ended::Held(Box::new(Held::limited(message, item, None, retry_at)));
            }
        },
    };
    match shared.limits.admit(&keys, &item.execution).await {
        Admission::Free => match execute(shared, message, item, redelivered, hard_stop, None).await
        {
            Some(mut held) => {
                held.keys = Some(keys);
                Ended::Held(held)
            }
            None => Ended::Done(None),
        },
        Admission::Go(permit) => {
            let at = permit.at;
            let held = execute(shared, message, item, redelivered, hard_stop, Some(at)).await;
            permit.release().await;
            match held {
                Some(mut held) => {
                    held.keys = Some(keys);
                    Ended::Held(held)
                }
                None => Ended::Done(Some(keys)),
            }
        }
        Admission::Hold(retry_at) => {
            Ended::Held(Box::new(Held::limited(message, item, Some(keys), retry_at)))
        }
    }
}

/// Runs one work item to its end: breaker gate, `claim`, `prepare`,
/// `run`, `record`. `hard_stop` is cancelled when the worker's drain
/// timeout passes. `started_at` is the start time a rate limit recorded
/// (the claim's time otherwise). Returns the item when its open circuit
/// breaker has the worker hold it.
pub(crate) async fn execute(
    shared: Arc<Shared>,
    message: Message,
    item: WorkItem,
    redelivered: bool,
    hard_stop: CancellationToken,
    started_at: Option<DateTime<Utc>>,
) -> Option<Box<Held>> {
    let permit = match shared.breakers.gate(&shared.journal, &message, &item).await {
        Gate::Run(permit) => permit,
        // Its breaker is open: handed back for later, or held here.
        Gate::Delay(wait) => {
            nak(&message, Some(wait)).await;
            return None;
        }
        Gate::Hold(retry_at) => {
            return Some(Box::new(Held {
                message,
                item,
                keys: None,
                retry_at,
                last_delivery: true,
            }));
        }
    };
    let claiming = Claiming {
        message,
        item,
        redelivered,
        started_at,
        permit,
        hard_stop,
    };
    let mut claimed = claim(&shared, claiming).await?;
    let attempt = &claimed.attempt;
    let _running = shared.running.enter(RunningAttempt {
        execution: attempt.execution().clone(),
        attempt: attempt.number(),
        kind: attempt.spec().kind.clone(),
        capacity: attempt.spec().capacity.clone(),
        started_at: claimed.claimed_at,
    });
    tracing::debug!(execution = %attempt.execution(), attempt = attempt.number(), kind = %attempt.spec().kind, "attempt started");
    let ending = match prepare(&shared, attempt).await {
        Err(error) => Ending::Recorded(Outcome::Failed { error }),
        Ok((env, handler)) => claimed.run(&shared, env, handler).await,
    };
    claimed.record(&shared, ending).await;
    None
}

/// An item its breaker let through, about to be claimed.
struct Claiming {
    message: Message,
    item: WorkItem,
    redelivered: bool,
    started_at: Option<DateTime<Utc>>,
    permit: Permit,
    hard_stop: CancellationToken,
}

/// An attempt this worker claimed, on its way to its end: what the steps
/// after the claim share.
struct Claimed {
    message: Message,
    attempt: Box<Attempt>,
    /// Settled with the outcome, before it is recorded.
    permit: Permit,
    /// The execution's cancel signal, watched since before the claim.
    cancel_signal: Watch,
    /// Cancelled when the worker's drain timeout passes.
    hard_stop: CancellationToken,
    /// The in-progress acks of the work item, until its result is recorded.
    keep_alive: Interval,
    /// When the attempt started, as recorded.
    claimed_at: DateTime<Utc>,
    /// When the attempt started on this worker's clock (its deadline
    /// counts from here).
    started: Instant,
    /// What the handler measured, once it ran.
    meters: Option<Arc<Meters>>,
}

/// Watches for the cancel signal (before the claim, so a signal sent
/// right after it is not missed), then claims the attempt. An item with
/// nothing to run is acknowledged, terminated or handed back here.
async fn claim(shared: &Shared, claiming: Claiming) -> Option<Claimed> {
    let Claiming {
        message,
        item,
        redelivered,
        started_at,
        permit,
        hard_stop,
    } = claiming;
    let exec = &item.execution;
    let cancel_signal = shared.signals.watch(exec);
    let (claimed_at, started) = (started_at.unwrap_or_else(Utc::now), Instant::now());
    let claim = Attempt::claim_item(
        &shared.journal,
        &item,
        &shared.worker,
        redelivered,
        claimed_at,
    )
    .await;
    shared.metrics.appended(Append::Claim, started.elapsed());
    let attempt = match claim {
        Ok(Claim::Started(attempt)) => attempt,
        Ok(Claim::Skip { code, status }) => {
            tracing::debug!(execution = %exec, code, %status, "nothing to run");
            ack(&message).await;
            return None;
        }
        // An item of an execution that was never submitted is terminated,
        // not acknowledged: the server's MSG_TERMINATED advisory lands in
        // the dead-letter stream, so the stray item is counted and visible.
        Err(
            AttemptError::NoSpec(_)
            | AttemptError::Transition(TransitionError::Rejected(
                Rejection::NotFound
                | Rejection::WrongStatus {
                    status: Status::New,
                    ..
                },
            )),
        ) => {
            tracing::warn!(execution = %exec, "work item of an execution without a submission; terminating it");
            if let Err(e) = message.ack_with(AckKind::Term).await {
                tracing::warn!(error = %e, "cannot terminate a work item");
            }
            return None;
        }
        Err(AttemptError::Transition(TransitionError::Rejected(rejection))) => {
            tracing::warn!(execution = %exec, code = rejection.code(), error = %rejection, "work item refused; dropping it");
            ack(&message).await;
            return None;
        }
        Err(e) => {
            tracing::warn!(execution = %exec, error = %e, "cannot claim; the item comes back later");
            nak(&message, Some(shared.nak_delay)).await;
            return None;
        }
    };
    if let (Some((traces, parent)), Some(queued_at)) = (shared.trace_of(&attempt), item.queued_at)
        && let Some(span) = Span::child_of(
            &spans::execution_context(&parent, exec),
            &random_span_id(),
            "queue wait",
        )
    {
        traces.record(
            span.between(queued_at, claimed_at)
                .attr("runlog.attempt", i64::from(attempt.number()))
                .attr("runlog.queue", item.queue.as_str().to_owned()),
        );
    }
    let mut keep_alive =
        tokio::time::interval_at(Instant::now() + shared.keep_alive, shared.keep_alive);
    keep_alive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    Some(Claimed {
        message,
        attempt,
        permit,
        cancel_signal,
        hard_stop,
        keep_alive,
        claimed_at,
        started,
        meters: None,
    })
}

/// Resolves the attempt's environment and finds the handler of its kind.
/// An error here fails the attempt without running anything.
async fn prepare(
    shared: &Shared,
    attempt: &Attempt,
) -> Result<(BTreeMap<String, String>, Arc<dyn DynHandler>), TaskError> {
    let spec = attempt.spec();
    shared.policy.check(spec, shared.children_run_as_root)?;
    let ring = shared.keyring.as_deref();
    let vault = Vault {
        ring,
        sealed: match spec.sealed_env.is_empty() {
            true => None,
            false => shared.env_bucket().await,
        },
        stored: match spec.secrets.is_empty() || ring.is_none() {
            true => None,
            false => shared.secrets_bucket().await,
        },
    };
    let env =
        environment::resolve(spec, attempt.execution(), vault, shared.secrets.as_ref()).await?;
    let handler = shared.registry.get(&spec.kind).ok_or_else(|| {
        let mut error = TaskError::new(
            ErrorClass::InvalidInput,
            format!(
                "worker {} has no handler for kind {:?} (it runs {})",
                shared.worker,
                spec.kind,
                shared.registry.kinds().join(", ")
            ),
        );
        error.retryable = false;
        error
    })?;
    Ok((env, handler))
}

impl Claimed {
    /// Runs the handler under a token that a cancel signal, the attempt
    /// deadline or a hard stop cancels, with its telemetry published
    /// alongside and flushed before it returns.
    async fn run(
        &mut self,
        shared: &Shared,
        env: BTreeMap<String, String>,
        handler: Arc<dyn DynHandler>,
    ) -> Ending {
        let spec = self.attempt.spec();
        let deadline = spec
            .attempt_timeout_ms
            .map(|ms| self.started + Duration::from_millis(ms));
        let token = CancellationToken::new();
        // The handler's span: a child of the attempt's, its context passed
        // on to what the handler calls.
        let traced = shared.trace_of(&self.attempt).map(|(traces, parent)| {
            let attempt =
                spans::attempt_context(&parent, self.attempt.execution(), self.attempt.number());
            let own = random_span_id();
            (traces.clone(), attempt.with_span(&own), attempt, own)
        });
        // Every value of the environment is sealed or secret: none leaves
        // this worker in a log line, progress message, error or output.
        let masker = Masker::new(env.values().map(String::as_str));
        let (ctx, telemetry) = Context::builder(
            self.attempt.execution().clone(),
            self.attempt.number(),
            &spec.kind,
            spec.input.clone(),
        )
        .env(env)
        .deadline(deadline)
        .run_as(shared.run_as.clone())
        .cancel(token.clone())
        .traceparent(traced.as_ref().map(|(_, own, _, _)| own.clone()))
        .build();
        self.meters = Some(telemetry.meters.clone());
        let handler_started = Utc::now();
        let finish = CancellationToken::new();
        let mut publisher = AbortOnDrop(tokio::spawn(
            telemetry::publish(
                self.attempt.reporter(),
                telemetry,
                shared.telemetry,
                finish.clone(),
                masker.clone(),
            )
            .in_current_span(),
        ));
        let mut run = AbortOnDrop(tokio::spawn(handler.run_boxed(ctx).in_current_span()));
        let mut ending = self
            .supervise(shared.cancel_grace, &mut run, &token, deadline)
            .await;
        if let Ending::Recorded(outcome) = &mut ending {
            mask_outcome(&masker, outcome);
        }
        let kind = &self.attempt.spec().kind;
        if let Some((traces, _, attempt, own)) = traced
            && let Some(span) = Span::child_of(&attempt, &own, kind.clone())
        {
            let span = span
                .kind(if kind == "http" {
                    Kind::Client
                } else {
                    Kind::Internal
                })
                .between(handler_started, Utc::now())
                .attr("runlog.kind", kind.clone());
            traces.record(match &ending {
                Ending::Recorded(Outcome::Succeeded { .. }) => span.ok(),
                Ending::Recorded(outcome) => span.error(outcome_label(outcome).as_str()),
                Ending::HandBack => span.error("handed back"),
            });
        }
        // Flush the telemetry before the result, so readers see every line first.
        finish.cancel();
        let flush = tokio::time::timeout(Duration::from_secs(5), &mut publisher.0);
        if flush.await.is_err() {
            tracing::warn!(execution = %self.attempt.execution(), "telemetry did not flush in time");
        }
        ending
    }

    /// Waits for the handler, a cancel signal, the deadline or a hard stop,
    /// keeping the work item alive meanwhile. A stopped handler gets
    /// `grace` to return.
    async fn supervise(
        &mut self,
        grace: Duration,
        run: &mut AbortOnDrop<HandlerResult>,
        token: &CancellationToken,
        deadline: Option<Instant>,
    ) -> Ending {
        let far = Instant::now() + Duration::from_secs(366 * 24 * 3600);
        let stopped = loop {
            tokio::select! {
                biased;
                result = &mut run.0 => return Ending::Recorded(outcome_of(result)),
                _ = self.cancel_signal.signalled() => break Ending::Recorded(Outcome::Cancelled),
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => {
                    break Ending::Recorded(Outcome::TimedOut);
                }
                _ = self.hard_stop.cancelled() => break Ending::HandBack,
                _ = self.keep_alive.tick() => progress(&self.message).await,
            }
        };
        // Ask the handler to stop and give it the grace period to do so; its
        // result no longer matters.
        token.cancel();
        let grace_ends = tokio::time::sleep(grace);
        tokio::pin!(grace_ends);
        loop {
            tokio::select! {
                _ = &mut run.0 => break,
                _ = &mut grace_ends => {
                    tracing::warn!(?grace, "the handler did not stop within its grace period; abandoning it");
                    run.0.abort();
                    break;
                }
                _ = self.keep_alive.tick() => progress(&self.message).await,
            }
        }
        stopped
    }

    /// Records how the attempt ended, then acknowledges the work item; a
    /// hand-back is a NAK with nothing recorded. If recording fails for a
    /// transient reason the item is left unacknowledged, and the server
    /// redelivers it.
    async fn record(self, shared: &Shared, ending: Ending) {
        let Claimed {
            message,
            attempt,
            permit,
            cancel_signal,
            mut keep_alive,
            started: self_started,
            claimed_at,
            meters,
            ..
        } = self;
        drop(cancel_signal);
        let exec = attempt.execution();
        let outcome = match ending {
            Ending::HandBack => {
                tracing::info!(execution = %exec, attempt = attempt.number(), "handing the work item back");
                nak(&message, None).await;
                return;
            }
            Ending::Recorded(outcome) => outcome,
        };
        shared
            .breakers
            .settle(permit, attempt.spec(), &outcome)
            .await;
        let exec = exec.clone();
        let ran = self_started.elapsed();
        let (queue, kind) = (attempt.spec().queue.clone(), attempt.spec().kind.clone());
        let label = outcome_label(&outcome);
        let traced = shared
            .trace_of(&attempt)
            .map(|(traces, parent)| (traces, parent, attempt.number()));
        // Recording may take a while (retries during an election): keep the item.
        let appending = Instant::now();
        let finished_at = Utc::now();
        let output_bytes = match &outcome {
            Outcome::Succeeded { output } => json_len(output),
            Outcome::Failed { error } => json_len(error),
            Outcome::Cancelled | Outcome::TimedOut => 0,
        };
        let resources = meters.unwrap_or_default().resources(ran, output_bytes);
        let record = attempt.finish(outcome, Some(resources), finished_at);
        tokio::pin!(record);
        let recorded = loop {
            tokio::select! {
                recorded = &mut record => break recorded,
                _ = keep_alive.tick() => progress(&message).await,
            }
        };
        shared.metrics.appended(Append::Result, appending.elapsed());
        match recorded {
            Ok(history) => {
                shared.metrics.ran(queue.as_str(), &kind, label, ran);
                if let Some((traces, parent, number)) = traced
                    && let Some(span) = Span::child_of(
                        &spans::execution_context(&parent, &exec),
                        &parent.attempt_span_id(&exec, number),
                        "attempt",
                    )
                {
                    let span = span
                        .between(claimed_at, finished_at)
                        .attr("runlog.execution.id", exec.as_str().to_owned())
                        .attr("runlog.attempt", i64::from(number))
                        .attr("runlog.worker", shared.worker.clone())
                        .attr("runlog.outcome", label.as_str());
                    traces.record(match label {
                        RunOutcome::Succeeded => span.ok(),
                        other => span.error(other.as_str()),
                    });
                }
                tracing::debug!(execution = %exec, status = %history.state.status, "attempt recorded");
                ack(&message).await;
            }
            Err(AttemptError::Transition(TransitionError::Rejected(rejection))) => {
                // The attempt is no longer ours (declared lost, or the execution ended).
                tracing::info!(execution = %exec, code = rejection.code(), error = %rejection, "result refused; dropping the work item");
                ack(&message).await;
            }
            Err(e) => {
                // Leave it unacknowledged: the server redelivers it after ack_wait.
                tracing::warn!(execution = %exec, error = %e, "cannot record the result; the work item will be redelivered");
            }
        }
    }
}

/// Masks the environment's values in an output or error.
fn mask_outcome(masker: &Masker, outcome: &mut Outcome) {
    match outcome {
        Outcome::Succeeded { output } => masker.mask_json(output),
        Outcome::Failed { error } => masker.mask_string(&mut error.message),
        Outcome::Cancelled | Outcome::TimedOut => {}
    }
}

fn outcome_label(outcome: &Outcome) -> RunOutcome {
    match outcome {
        Outcome::Succeeded { .. } => RunOutcome::Succeeded,
        Outcome::Failed { .. } => RunOutcome::Failed,
        Outcome::Cancelled => RunOutcome::Cancelled,
        Outcome::TimedOut => RunOutcome::TimedOut,
    }
}

fn outcome_of(result: Result<HandlerResult, tokio::task::JoinError>) -> Outcome {
    match result {
        Ok(Ok(output)) => Outcome::Succeeded { output },
        Ok(Err(error)) => Outcome::Failed { error },
        Err(e) if e.is_panic() => Outcome::Failed {
            error: TaskError::new(ErrorClass::Crashed, "the handler panicked"),
        },
        Err(_) => Outcome::Failed {
            error: TaskError::new(ErrorClass::Crashed, "the handler was aborted"),
        },
    }
}

/// Acknowledges, without waiting for the server to confirm: a lost ack
/// only brings the item back after `ack_wait`, and the claim of the
/// redelivered item finds its attempt ended in the log and skips it. (A
/// confirmed ack costs a round trip and an inbox per item.)
pub(crate) async fn ack(message: &Message) {
    if let Err(e) = message.ack().await {
        tracing::warn!(error = %e, "cannot acknowledge a work item; it may be redelivered");
    }
}

/// Hands an item back: redelivered after `delay`, or at once.
pub(crate) async fn nak(message: &Message, delay: Option<Duration>) {
    if let Err(e) = message.ack_with(AckKind::Nak(delay)).await {
        tracing::warn!(error = %e, "cannot hand a work item back; it returns after ack_wait");
    }
}

/// Tells the server the item is still being worked on.
pub(crate) async fn progress(message: &Message) {
    if let Err(e) = message.ack_with(AckKind::Progress).await {
        tracing::debug!(error = %e, "in-progress ack failed");
    }
}
