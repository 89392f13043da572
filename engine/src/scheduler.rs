//! The scheduler: turns schedules' ticks into executions.
//!
//! Its state is the fold of the schedules' logs (`<p>.sc.*`), which it
//! follows from the start with an ordered consumer; nothing else is stored.
//! It looks at a schedule when
//!
//! - the schedule's tick timer fired (the broker holds the next tick of
//!   every active schedule: a message schedule on `<p>.sc.<id>.next`,
//!   consumed from `<p>.sc.*.next.due` by the `<p>-ticks` durable consumer
//!   the engines share);
//! - the API changed it (created, updated, resumed, run now, backfill);
//! - every second, which catches what a timer cannot: a buffered tick whose
//!   earlier run ended, a run recorded by an engine that died before it
//!   submitted it, a timer that could not be armed.
//!
//! Each look is fold → [`schedule::due`] → append with the expected
//! sequence → the effects, each idempotent: a run's execution is submitted
//! under the id derived from the schedule and the tick (a second submission
//! finds it), an earlier run is cancelled. Ticks that came due before this
//! engine started and that no engine ran were missed: the schedule's
//! catch-up policy decides them. So an engine killed at any point, or two
//! engines looking at once, run no tick twice and miss none.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self};
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use futures::StreamExt;
use runlog_events::decider::Command;
use runlog_events::journal::{Journal, TransitionError};
use runlog_events::schedule::log::{
    ScheduleAppendError, ScheduleHistory, ScheduleLoadError, ScheduleLog,
};
use runlog_events::schedule::spec::{MAX_TICKS_AT_ONCE, jitter_of};
use runlog_events::schedule::{
    self, Now, Overlap, Plan, ScheduleEnvelope, ScheduleEvent, ScheduleSpec, ScheduleState,
    ScheduleStatus, Trigger,
};
use runlog_events::spec::FieldError;
use runlog_events::{ExecutionId, ScheduleId, Subjects};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::follow::{self, Delivery, Follower};
use crate::intake::{Intake, Submission};
use crate::projection::Projection;
use crate::workflow_runner::Runner;

/// How often every active schedule is looked at without a timer.
pub const POLL: Duration = Duration::from_secs(1);
/// Re-folds after losing a race before a command gives up.
const MAX_CONFLICTS: usize = 16;
/// A run recorded this recently but not in the read model yet counts as
/// running (its submission may be on its way).
const JUST_RECORDED: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// Fired timers handled at once.
const CONCURRENCY: usize = 16;

/// Why a schedule command failed.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The spec breaks the rules: every problem, with its field.
    #[error("the schedule is invalid: {}", FieldError::join(.0))]
    Invalid(Vec<FieldError>),
    /// No such schedule (or it was deleted).
    #[error("no schedule {0:?}; list them with GET /v1/schedules")]
    NotFound(String),
    /// A schedule of this id exists.
    #[error("schedule {0} exists already; change it with PUT /v1/schedules/{0}")]
    Exists(ScheduleId),
    /// A backfill's range is wrong or too long.
    #[error("{reason}")]
    BadRange {
        /// The field at fault (`from`, `to`).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Other engines kept changing the schedule.
    #[error("schedule {0} changed {MAX_CONFLICTS} times while this command was decided; try again")]
    Busy(ScheduleId),
    /// The log could not be read.
    #[error(transparent)]
    Load(#[from] ScheduleLoadError),
    /// The log could not be written.
    #[error(transparent)]
    Append(#[from] ScheduleAppendError),
}

/// What a backfill did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Backfilled {
    /// The runs started, by tick.
    pub started: Vec<(DateTime<Utc>, ExecutionId)>,
    /// Ticks of the range that had run before.
    pub existing: usize,
    /// Ticks left out by the overlap policy (skipped or buffered).
    pub skipped: usize,
}

/// Runs schedules; cheap to clone.
#[derive(Debug, Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    log: ScheduleLog,
    subjects: Subjects,
    intake: Intake,
    journal: Journal,
    runner: Runner,
    executions: Arc<Projection>,
    /// Every schedule, folded.
    states: DashMap<ScheduleId, ScheduleHistory>,
    /// One lock per schedule: this engine's commands and looks at one
    /// schedule take turns (other engines are kept out by the expected
    /// sequence).
    locks: DashMap<ScheduleId, Arc<tokio::sync::Mutex<()>>>,
    /// The tick each schedule's timer was armed for by this engine.
    armed: DashMap<ScheduleId, DateTime<Utc>>,
    /// Runs known to be submitted.
    submitted: DashMap<ExecutionId, ()>,
    /// The schedules' logs were folded up to their end once.
    caught_up: AtomicBool,
    /// When this engine started: unhandled ticks due before it were missed.
    started: DateTime<Utc>,
    /// Schedules that changed (live feeds, the dashboard).
    changes: broadcast::Sender<ScheduleId>,
}

impl Scheduler {
    /// A scheduler appending through `log`, submitting task runs through
    /// `intake` and workflow runs through `runner`.
    pub fn new(
        log: ScheduleLog,
        intake: Intake,
        runner: Runner,
        executions: Arc<Projection>,
    ) -> Self {
        let journal = intake.journal().clone();
        Scheduler {
            inner: Arc::new(Inner {
                subjects: journal.subjects().clone(),
                log,
                intake,
                journal,
                runner,
                executions,
                states: DashMap::new(),
                locks: DashMap::new(),
                armed: DashMap::new(),
                submitted: DashMap::new(),
                caught_up: AtomicBool::new(false),
                started: Utc::now(),
                changes: broadcast::channel(256).0,
            }),
        }
    }

    /// Schedules that changed, by id.
    pub fn changes(&self) -> broadcast::Receiver<ScheduleId> {
        self.inner.changes.subscribe()
    }

    /// A schedule as folded (also a deleted one).
    pub async fn get(&self, id: &ScheduleId) -> Result<Option<ScheduleHistory>, SchedulerError> {
        if let Some(history) = self.inner.states.get(id) {
            return Ok(Some(history.clone()));
        }
        let history = self.inner.log.load(id).await?;
        Ok((history.last_seq > 0).then_some(history))
    }

    /// The schedule's own history, oldest first (each event with its
    /// sequence).
    pub async fn events(&self, id: &ScheduleId) -> Result<Vec<Value>, SchedulerError> {
        let events = self.inner.log.events(id).await?;
        Ok(events
            .into_iter()
            .map(|(seq, envelope)| {
                let mut value = json!(envelope);
                value["seq"] = json!(seq);
                value
            })
            .collect())
    }

    /// Every schedule not deleted, by id.
    pub fn list(&self) -> Vec<(ScheduleId, ScheduleHistory)> {
        let mut all: Vec<_> = self
            .inner
            .states
            .iter()
            .filter(|h| {
                !matches!(
                    h.state.status,
                    ScheduleStatus::None | ScheduleStatus::Deleted
                )
            })
            .map(|h| (h.key().clone(), h.value().clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Creates a schedule under `id` (generated when absent).
    pub async fn create(
        &self,
        id: Option<ScheduleId>,
        spec: ScheduleSpec,
    ) -> Result<(ScheduleId, ScheduleHistory), SchedulerError> {
        check(&spec)?;
        let id = id.unwrap_or_else(ScheduleId::generate);
        let history = self
            .record(&id, |state| match state.status {
                ScheduleStatus::None => Ok(vec![ScheduleEvent::Created { spec: spec.clone() }]),
                _ => Err(SchedulerError::Exists(id.clone())),
            })
            .await?;
        self.look(&id).await;
        Ok((id, history))
    }

    /// Replaces a schedule's spec; ticks count from now on.
    pub async fn update(
        &self,
        id: &ScheduleId,
        spec: ScheduleSpec,
    ) -> Result<ScheduleHistory, SchedulerError> {
        check(&spec)?;
        let history = self
            .record(id, |state| {
                exists(id, state)?;
                Ok(vec![ScheduleEvent::Updated { spec: spec.clone() }])
            })
            .await?;
        self.look(id).await;
        Ok(history)
    }

    /// Pauses a schedule (a paused one stays paused).
    pub async fn pause(
        &self,
        id: &ScheduleId,
        reason: Option<String>,
    ) -> Result<ScheduleHistory, SchedulerError> {
        self.record(id, |state| {
            exists(id, state)?;
            Ok(match state.status {
                ScheduleStatus::Paused => Vec::new(),
                _ => vec![ScheduleEvent::Paused {
                    reason: reason.clone(),
                }],
            })
        })
        .await
    }

    /// Resumes a paused schedule; ticks during the pause do not run.
    pub async fn resume(&self, id: &ScheduleId) -> Result<ScheduleHistory, SchedulerError> {
        let history = self
            .record(id, |state| {
                exists(id, state)?;
                Ok(match state.status {
                    ScheduleStatus::Paused => vec![ScheduleEvent::Resumed],
                    _ => Vec::new(),
                })
            })
            .await?;
        self.look(id).await;
        Ok(history)
    }

    /// Deletes a schedule; its runs stay.
    pub async fn delete(&self, id: &ScheduleId) -> Result<ScheduleHistory, SchedulerError> {
        self.record(id, |state| {
            exists(id, state)?;
            Ok(vec![ScheduleEvent::Deleted])
        })
        .await
    }

    /// Runs a schedule now, whatever its overlap policy: a manual run with
    /// a fresh id, its logical time now.
    pub async fn run_now(&self, id: &ScheduleId) -> Result<ExecutionId, SchedulerError> {
        let execution = ExecutionId::generate();
        let now = Utc::now();
        let history = self
            .record(id, |state| {
                exists(id, state)?;
                Ok(vec![ScheduleEvent::Triggered {
                    tick: now,
                    execution: execution.clone(),
                    trigger: Trigger::Manual,
                }])
            })
            .await?;
        self.start_runs(id, &history.state, std::slice::from_ref(&execution))
            .await;
        Ok(execution)
    }

    /// Runs the ticks of `[from, to]` that never ran, oldest first, each
    /// with its logical time, under `overlap` (the schedule's own when
    /// absent).
    pub async fn backfill(
        &self,
        id: &ScheduleId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        overlap: Option<Overlap>,
    ) -> Result<Backfilled, SchedulerError> {
        if to < from {
            return Err(SchedulerError::BadRange {
                field: "to",
                reason: format!("the range ends ({to}) before it starts ({from})"),
            });
        }
        let mut done = Backfilled::default();
        let history = self
            .record(id, |state| {
                exists(id, state)?;
                let spec = state.spec.as_ref().expect("an existing schedule has a spec");
                let timing = spec.timing().map_err(|e| SchedulerError::Invalid(vec![e]))?;
                let before = from - chrono::TimeDelta::milliseconds(1);
                let ticks = timing.between(before, to, MAX_TICKS_AT_ONCE + 1);
                if ticks.len() > MAX_TICKS_AT_ONCE {
                    return Err(SchedulerError::BadRange {
                        field: "to",
                        reason: format!(
                            "the range holds more than {MAX_TICKS_AT_ONCE} ticks; backfill it in parts"
                        ),
                    });
                }
                let (existing, fresh): (Vec<_>, Vec<_>) =
                    ticks.into_iter().partition(|t| self.ran(state, id, *t));
                let plan = schedule::backfill(
                    id,
                    &fresh,
                    overlap.unwrap_or(spec.overlap),
                    &self.running(state),
                );
                done = Backfilled {
                    started: started(&plan),
                    existing: existing.len(),
                    skipped: fresh.len() - started(&plan).len(),
                };
                Ok(plan.events)
            })
            .await?;
        let executions: Vec<_> = done.started.iter().map(|(_, e)| e.clone()).collect();
        self.start_runs(id, &history.state, &executions).await;
        Ok(done)
    }

    /// The tick at `tick` ran before: its run is recorded or exists.
    fn ran(&self, state: &ScheduleState, id: &ScheduleId, tick: DateTime<Utc>) -> bool {
        let execution = schedule::spec::run_id(id, tick);
        state.runs.iter().any(|r| r.execution == execution)
            || self.inner.executions.get(&execution).is_some()
    }

    /// Records what `decide` makes of the schedule's state, deciding again
    /// on the newest state after losing a race.
    async fn record(
        &self,
        id: &ScheduleId,
        mut decide: impl FnMut(&ScheduleState) -> Result<Vec<ScheduleEvent>, SchedulerError>,
    ) -> Result<ScheduleHistory, SchedulerError> {
        let lock = self.lock(id);
        let _held = lock.lock().await;
        for _ in 0..MAX_CONFLICTS {
            let history = match self.inner.states.get(id) {
                Some(h) => h.clone(),
                None => self.inner.log.load(id).await?,
            };
            let events = decide(&history.state)?;
            match self.append_all(id, history, events).await {
                Ok(history) => return Ok(history),
                Err(ScheduleAppendError::Conflict { .. }) => self.reload(id).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(SchedulerError::Busy(id.clone()))
    }

    /// Appends `events` one after the other on top of `history`, folding
    /// each into this engine's copy at once.
    async fn append_all(
        &self,
        id: &ScheduleId,
        mut history: ScheduleHistory,
        events: Vec<ScheduleEvent>,
    ) -> Result<ScheduleHistory, ScheduleAppendError> {
        for event in events {
            let envelope =
                ScheduleEnvelope::new(id.clone(), Utc::now(), self.inner.log.source(), event);
            let seq = self.inner.log.append(history.last_seq, &envelope).await?;
            let body = serde_json::to_vec(&envelope).expect("a schedule event always serialises");
            history.fold(seq, &body);
            self.store(id, &history);
        }
        Ok(history)
    }

    /// Keeps `history` unless the copy held is newer.
    fn store(&self, id: &ScheduleId, history: &ScheduleHistory) {
        let mut entry = self.inner.states.entry(id.clone()).or_default();
        if history.last_seq > entry.last_seq {
            *entry = history.clone();
            drop(entry);
            let _no_listeners = self.inner.changes.send(id.clone());
        }
    }

    async fn reload(&self, id: &ScheduleId) -> Result<(), SchedulerError> {
        let history = self.inner.log.load(id).await?;
        self.store(id, &history);
        Ok(())
    }

    fn lock(&self, id: &ScheduleId) -> Arc<tokio::sync::Mutex<()>> {
        self.inner.locks.entry(id.clone()).or_default().clone()
    }

    /// The runs of the schedule still going: not ended in the read model,
    /// or recorded so recently that they may not be in it yet.
    fn running(&self, state: &ScheduleState) -> Vec<ExecutionId> {
        let now = Utc::now();
        let workflow = state.spec.as_ref().is_some_and(|s| s.workflow.is_some());
        state
            .runs
            .iter()
            .filter(|run| {
                let ended = if workflow {
                    self.inner.runner.has_ended(&run.execution)
                } else {
                    self.inner
                        .executions
                        .get(&run.execution)
                        .map(|e| e.state.status.is_terminal())
                };
                match ended {
                    Some(ended) => !ended,
                    None => now.signed_duration_since(run.recorded_at) < JUST_RECORDED,
                }
            })
            .map(|run| run.execution.clone())
            .collect()
    }

    /// Looks at one schedule: records what its due ticks do, starts the
    /// runs recorded but not known to be submitted, and arms the timer of
    /// its next tick.
    async fn look(&self, id: &ScheduleId) {
        if !self.inner.caught_up.load(Ordering::Relaxed) || !self.inner.executions.is_caught_up() {
            return;
        }
        let at = Now {
            now: Utc::now(),
            engine_started: self.inner.started,
        };
        let mut plan = Plan::default();
        let recorded = self
            .record(id, |state| {
                plan = schedule::due(id, state, at, &self.running(state));
                Ok(plan.events.clone())
            })
            .await;
        let history = match recorded {
            Ok(history) => history,
            Err(SchedulerError::Load(_) | SchedulerError::Append(_) | SchedulerError::Busy(_))
                if !plan.is_empty() =>
            {
                tracing::warn!(schedule = %id, "cannot record the schedule's ticks; again in a second");
                return;
            }
            Err(_) => return,
        };
        for execution in &plan.cancel {
            self.cancel(id, execution).await;
        }
        let pending: Vec<ExecutionId> = history
            .state
            .runs
            .iter()
            .filter(|r| !self.inner.submitted.contains_key(&r.execution))
            .map(|r| r.execution.clone())
            .collect();
        self.start_runs(id, &history.state, &pending).await;
        self.arm_next(id, &history.state).await;
    }

    /// Submits each of `executions` (runs recorded in `state`) from the
    /// schedule's template; a run found submitted before is left as it is.
    async fn start_runs(&self, id: &ScheduleId, state: &ScheduleState, executions: &[ExecutionId]) {
        let Some(spec) = &state.spec else { return };
        for execution in executions {
            if self.inner.submitted.contains_key(execution) {
                continue;
            }
            let exists = match spec.workflow {
                Some(_) => self.inner.runner.has_ended(execution).is_some(),
                None => self.inner.executions.get(execution).is_some(),
            };
            if exists {
                self.inner.submitted.insert(execution.clone(), ());
                continue;
            }
            let Some(run) = state.runs.iter().rev().find(|r| r.execution == *execution) else {
                continue;
            };
            let started = if let Some(task) = &spec.task {
                let mut task = task.clone();
                task.schedule = Some(id.clone());
                task.scheduled_for = Some(run.scheduled_for);
                task.trigger = Some(run.trigger);
                let mut submission = Submission::new(task);
                submission.execution = Some(execution.clone());
                submission.correlation_id = Some(id.to_string());
                match self.inner.intake.submit(submission, Utc::now()).await {
                    Ok(_) => Ok(()),
                    // Refused (a secret name that no longer exists, say):
                    // the execution records why; nothing to retry.
                    Err(crate::intake::IntakeError::Rejected(r)) => {
                        tracing::warn!(schedule = %id, %execution, reason = %r, "a scheduled run was refused");
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                }
            } else if let Some(workflow) = &spec.workflow {
                self.inner
                    .runner
                    .start_as(
                        execution.clone(),
                        &workflow.name,
                        workflow.version,
                        workflow.input.clone(),
                    )
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            } else {
                Ok(())
            };
            match started {
                Ok(()) => {
                    self.inner.submitted.insert(execution.clone(), ());
                }
                Err(e) => {
                    tracing::warn!(schedule = %id, %execution, error = %e, "cannot start a scheduled run; again in a second");
                }
            }
        }
    }

    async fn cancel(&self, id: &ScheduleId, execution: &ExecutionId) {
        let reason = format!("a newer run of schedule {id} started (overlap: cancel_previous)");
        let cancelled = match self.inner.runner.has_ended(execution) {
            Some(_) => self
                .inner
                .runner
                .cancel(execution, reason)
                .await
                .map_err(|e| e.to_string()),
            None => {
                let command = Command::RequestCancel {
                    reason,
                    operation: None,
                };
                match self
                    .inner
                    .journal
                    .transition(execution, &command, Utc::now())
                    .await
                {
                    Ok(_) | Err(TransitionError::Rejected(_)) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        if let Err(e) = cancelled {
            tracing::warn!(schedule = %id, %execution, error = %e, "cannot cancel the earlier run");
        }
    }

    /// Arms the broker-held timer of the schedule's next tick, unless this
    /// engine armed that tick already.
    async fn arm_next(&self, id: &ScheduleId, state: &ScheduleState) {
        let (Some(spec), ScheduleStatus::Active) = (&state.spec, state.status) else {
            self.inner.armed.remove(id);
            return;
        };
        let Ok(timing) = spec.timing() else { return };
        let Some(after) = state.handled_through.max(state.ticking_since) else {
            return;
        };
        let Some(next) = timing.next_after(after) else {
            return;
        };
        if self.inner.armed.get(id).is_some_and(|t| *t == next) {
            return;
        }
        let fire_at = next
            + chrono::TimeDelta::from_std(jitter_of(id, next, spec.jitter)).unwrap_or_default();
        match self.inner.log.arm(id, next, fire_at).await {
            Ok(()) => {
                self.inner.armed.insert(id.clone(), next);
            }
            Err(e) => tracing::warn!(schedule = %id, error = %e, "cannot arm the next tick"),
        }
    }

    /// Runs until `shutdown`: follows the schedules' logs, takes fired tick
    /// timers (with `ticks`), and looks at every active schedule each
    /// second.
    pub async fn run(
        &self,
        js: jetstream::Context,
        replicas: usize,
        ticks: bool,
        shutdown: CancellationToken,
    ) {
        let follower = {
            let scheduler = self.clone();
            let (js, stop) = (js.clone(), shutdown.clone());
            tokio::spawn(async move {
                let stream = scheduler.inner.subjects.exec_stream();
                follow::follow(&js, &stream, &scheduler, POLL, &stop).await
            })
        };
        if !ticks {
            shutdown.cancelled().await;
            follower.abort();
            return;
        }
        let timers = {
            let scheduler = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { scheduler.take_timers(js, replicas, stop).await })
        };
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = poll.tick() => {
                    let active: Vec<ScheduleId> = self
                        .inner
                        .states
                        .iter()
                        .filter(|h| h.state.status == ScheduleStatus::Active)
                        .map(|h| h.key().clone())
                        .collect();
                    for id in active {
                        self.look(&id).await;
                    }
                }
            }
        }
        follower.abort();
        timers.abort();
    }

    /// The durable consumer of fired tick timers every engine shares.
    pub fn consumer_config(subjects: &Subjects, replicas: usize) -> pull::Config {
        let name = subjects.ticks_consumer();
        pull::Config {
            durable_name: Some(name.clone()),
            name: Some(name),
            description: Some("runlog engine: fired schedule ticks".to_owned()),
            filter_subject: subjects.all_ticks_due(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            num_replicas: replicas,
            ..Default::default()
        }
    }

    /// Takes fired tick timers until `shutdown`; restarts the consumer if
    /// it fails.
    async fn take_timers(
        &self,
        js: jetstream::Context,
        replicas: usize,
        shutdown: CancellationToken,
    ) {
        while !shutdown.is_cancelled() {
            if let Err(e) = self.take_timers_once(&js, replicas, &shutdown).await {
                tracing::warn!(error = %e, "taking tick timers failed; again in a second");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    async fn take_timers_once(
        &self,
        js: &jetstream::Context,
        replicas: usize,
        shutdown: &CancellationToken,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let consumer = js
            .get_stream_no_info(self.inner.subjects.exec_stream())
            .await?
            .create_consumer(Self::consumer_config(&self.inner.subjects, replicas))
            .await?;
        // Fired timers of the time before this engine caught up wait: a
        // look needs the folded schedules and the read model.
        while !self.inner.caught_up.load(Ordering::Relaxed) || !self.inner.executions.is_caught_up()
        {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        let messages = consumer.messages().await?;
        messages
            .take_until(shutdown.cancelled())
            .for_each_concurrent(CONCURRENCY, |message| async move {
                let message = match message {
                    Ok(message) => message,
                    Err(e) => return tracing::warn!(error = %e, "tick consumer error"),
                };
                match self.inner.subjects.parse_tick_due(&message.subject) {
                    Some(id) => self.look(&id).await,
                    None => {
                        tracing::warn!(subject = %message.subject, "a tick timer of no schedule")
                    }
                }
                if let Err(e) = message.ack().await {
                    tracing::warn!(error = %e, "cannot acknowledge a tick timer");
                }
            })
            .await;
        Ok(())
    }

    /// A schedule as the API shows it: its spec, status, next five ticks,
    /// and its runs' counts, last run and success rate (over its newest
    /// [`RECENT_RUNS`](schedule::RECENT_RUNS) runs).
    pub fn view(&self, id: &ScheduleId, history: &ScheduleHistory) -> Value {
        let s = &history.state;
        let next: Vec<DateTime<Utc>> = match (&s.spec, s.status) {
            (Some(spec), ScheduleStatus::Active) => spec
                .timing()
                .ok()
                .and_then(|t| {
                    let after = s.handled_through.max(s.ticking_since)?;
                    let after = after.max(Utc::now());
                    Some(t.between(after, DateTime::<Utc>::MAX_UTC, 5))
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let runs = self.runs(history, usize::MAX);
        let ended: Vec<&Value> = runs
            .iter()
            .filter(|r| {
                matches!(
                    r["status"].as_str(),
                    Some(
                        "succeeded"
                            | "failed"
                            | "dead_lettered"
                            | "timed_out"
                            | "cancelled"
                            | "rejected"
                    )
                )
            })
            .collect();
        let succeeded = ended.iter().filter(|r| r["status"] == "succeeded").count();
        json!({
            "id": id,
            "status": s.status,
            "spec": s.spec,
            "paused_reason": s.paused_reason,
            "created_at": s.created_at,
            "updated_at": s.updated_at,
            "next_ticks": next,
            "buffered": s.buffered,
            "run_count": s.run_count,
            "skipped_count": s.skipped_count,
            "succeeded": succeeded,
            "failed": ended.len() - succeeded,
            "success_rate": (!ended.is_empty()).then(|| succeeded as f64 / ended.len() as f64),
            "last_run": runs.first(),
            "revision": history.last_seq,
        })
    }

    /// The schedule's newest runs, newest first, each with its execution's
    /// status and duration.
    pub fn runs(&self, history: &ScheduleHistory, limit: usize) -> Vec<Value> {
        history
            .state
            .runs
            .iter()
            .rev()
            .take(limit)
            .map(|run| {
                let (status, started_at, finished_at) =
                    match self.inner.executions.get(&run.execution) {
                        Some(entry) => (
                            json!(entry.state.status),
                            entry.state.started_at,
                            entry.state.finished_at,
                        ),
                        None => match self.inner.runner.status_of(&run.execution) {
                            Some(status) => (status, None, None),
                            None => (json!("pending"), None, None),
                        },
                    };
                let duration_ms = started_at
                    .zip(finished_at)
                    .map(|(a, b)| b.signed_duration_since(a).num_milliseconds());
                json!({
                    "execution": run.execution,
                    "scheduled_for": run.scheduled_for,
                    "trigger": run.trigger,
                    "recorded_at": run.recorded_at,
                    "status": status,
                    "started_at": started_at,
                    "finished_at": finished_at,
                    "duration_ms": duration_ms,
                })
            })
            .collect()
    }
}

/// The scheduler folds every schedule's log (`<p>.sc.<id>`).
impl Follower for Scheduler {
    fn filter(&self) -> String {
        self.inner.subjects.schedule_logs()
    }

    fn what(&self) -> &'static str {
        "schedules' logs"
    }

    fn deliver(&self, delivery: Delivery<'_>) {
        let Some(id) = self.inner.subjects.parse_schedule_log(delivery.subject) else {
            return;
        };
        let seq = delivery.seq;
        let folded = {
            let mut entry = self.inner.states.entry(id.clone()).or_default();
            let before = entry.last_seq;
            entry.fold(seq, delivery.payload);
            if let Some((at, reason)) = entry.skipped.last()
                && *at == seq
            {
                tracing::warn!(schedule = %id, seq, reason, "skipped a schedule event");
            }
            entry.last_seq > before
        };
        if folded {
            let _no_listeners = self.inner.changes.send(id);
        }
    }

    fn caught_up(&self) {
        self.inner.caught_up.store(true, Ordering::Relaxed);
    }
}

fn check(spec: &ScheduleSpec) -> Result<(), SchedulerError> {
    let errors = spec.check();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(SchedulerError::Invalid(errors))
    }
}

fn exists(id: &ScheduleId, state: &ScheduleState) -> Result<(), SchedulerError> {
    match state.status {
        ScheduleStatus::None | ScheduleStatus::Deleted => {
            Err(SchedulerError::NotFound(id.to_string()))
        }
        _ => Ok(()),
    }
}

fn started(plan: &Plan) -> Vec<(DateTime<Utc>, ExecutionId)> {
    plan.events
        .iter()
        .filter_map(|e| match e {
            ScheduleEvent::Triggered {
                tick, execution, ..
            } => Some((*tick, execution.clone())),
            _ => None,
        })
        .collect()
}
