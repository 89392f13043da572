//! Schedules: small event-sourced objects whose ticks become executions.
//!
//! A schedule's events (created, updated, paused, resumed, deleted, and
//! what each tick did: triggered, skipped, buffered) are JSON bodies on one
//! subject, `<p>.sc.<schedule>`, in the execution stream, appended with
//! optimistic concurrency ([`log`]). Its state is their fold
//! ([`ScheduleState`]); what a due tick does is decided from that state
//! ([`due`]), purely, so two engines deciding on the same tick cannot both
//! record it, and every run has an id derived from the schedule and the
//! tick ([`spec::run_id`]): a tick runs once even when its execution is
//! submitted again.

pub mod log;
pub mod spec;

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use self::spec::{CatchUp, Overlap, ScheduleSpec, Timing, Trigger, WorkflowTemplate};
use crate::id::{ExecutionId, ScheduleId};

/// Runs kept in a schedule's state (the newest): its runs list, the
/// success rate and the overlap checks read these.
pub const RECENT_RUNS: usize = 1_000;

/// One event of a schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ScheduleEvent {
    /// The schedule was created.
    Created {
        /// What it is.
        spec: ScheduleSpec,
    },
    /// Its spec was replaced; ticks count from now on.
    Updated {
        /// The new spec.
        spec: ScheduleSpec,
    },
    /// It stopped ticking.
    Paused {
        /// Why, for people.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// It ticks again; ticks during the pause do not run.
    Resumed,
    /// It is gone; its runs stay.
    Deleted,
    /// An execution was started for it.
    Triggered {
        /// The logical time (`scheduled_for`): the tick, or when a manual run
        /// was asked for.
        tick: DateTime<Utc>,
        /// The execution.
        execution: ExecutionId,
        /// Why.
        trigger: Trigger,
    },
    /// Ticks did not run.
    Skipped {
        /// The first.
        from: DateTime<Utc>,
        /// The last.
        to: DateTime<Utc>,
        /// How many.
        count: u32,
        /// Why.
        reason: SkipReason,
    },
    /// A tick waits for the run before it (`overlap: buffer_one`).
    Buffered {
        /// The tick.
        tick: DateTime<Utc>,
    },
}

impl ScheduleEvent {
    /// The type's name (`triggered`).
    pub fn type_name(&self) -> &'static str {
        match self {
            ScheduleEvent::Created { .. } => "created",
            ScheduleEvent::Updated { .. } => "updated",
            ScheduleEvent::Paused { .. } => "paused",
            ScheduleEvent::Resumed => "resumed",
            ScheduleEvent::Deleted => "deleted",
            ScheduleEvent::Triggered { .. } => "triggered",
            ScheduleEvent::Skipped { .. } => "skipped",
            ScheduleEvent::Buffered { .. } => "buffered",
        }
    }
}

/// Why ticks did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// An earlier run was still going (`overlap: skip`, or a buffered tick
    /// replaced by a newer one).
    Overlap,
    /// Missed while no engine ran, and the catch-up policy leaves it out.
    Missed,
}

/// One event of one schedule, with its metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScheduleEnvelope {
    /// Unique event id (UUIDv7).
    pub id: uuid::Uuid,
    /// The schedule.
    pub schedule: ScheduleId,
    /// When it was recorded.
    pub time: DateTime<Utc>,
    /// The component that recorded it.
    pub source: String,
    /// The event.
    #[serde(flatten)]
    pub event: ScheduleEvent,
}

impl ScheduleEnvelope {
    /// Wraps `event` with a fresh id.
    pub fn new(
        schedule: ScheduleId,
        time: DateTime<Utc>,
        source: impl Into<String>,
        event: ScheduleEvent,
    ) -> Self {
        ScheduleEnvelope {
            id: uuid::Uuid::now_v7(),
            schedule,
            time,
            source: source.into(),
            event,
        }
    }
}

/// Where a schedule stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleStatus {
    /// Never created.
    #[default]
    None,
    /// Ticking.
    Active,
    /// Not ticking until resumed.
    Paused,
    /// Deleted.
    Deleted,
}

/// One run of a schedule, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The execution.
    pub execution: ExecutionId,
    /// Its logical time.
    pub scheduled_for: DateTime<Utc>,
    /// Why it started.
    pub trigger: Trigger,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
}

/// A schedule, folded from its events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScheduleState {
    /// Its spec (the newest).
    pub spec: Option<ScheduleSpec>,
    /// Where it stands.
    pub status: ScheduleStatus,
    /// When it was created.
    pub created_at: Option<DateTime<Utc>>,
    /// When its spec or status last changed.
    pub updated_at: Option<DateTime<Utc>>,
    /// Why it is paused.
    pub paused_reason: Option<String>,
    /// Ticks after this instant count: its creation, its last update or
    /// resumption.
    pub ticking_since: Option<DateTime<Utc>>,
    /// The newest tick dealt with (run, skipped or buffered).
    pub handled_through: Option<DateTime<Utc>>,
    /// The tick waiting for the run before it.
    pub buffered: Option<DateTime<Utc>>,
    /// The newest runs, oldest first (at most [`RECENT_RUNS`]).
    pub runs: VecDeque<Run>,
    /// Runs ever started.
    pub run_count: u64,
    /// Ticks ever skipped.
    pub skipped_count: u64,
}

/// An event that does not apply to the state it was folded into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {event} event does not apply to a schedule that is {status:?}")]
pub struct ScheduleApplyError {
    /// The event's type.
    pub event: &'static str,
    /// The schedule's status.
    pub status: ScheduleStatus,
}

/// Folds one event into `state`.
pub fn apply(state: &mut ScheduleState, e: &ScheduleEnvelope) -> Result<(), ScheduleApplyError> {
    let refuse = |state: &ScheduleState| ScheduleApplyError {
        event: e.event.type_name(),
        status: state.status,
    };
    let exists = !matches!(state.status, ScheduleStatus::None | ScheduleStatus::Deleted);
    match &e.event {
        ScheduleEvent::Created { spec } => {
            if state.status != ScheduleStatus::None {
                return Err(refuse(state));
            }
            state.status = if spec.paused {
                ScheduleStatus::Paused
            } else {
                ScheduleStatus::Active
            };
            state.spec = Some(spec.clone());
            state.created_at = Some(e.time);
            state.updated_at = Some(e.time);
            state.ticking_since = Some(e.time);
        }
        ScheduleEvent::Updated { spec } => {
            if !exists {
                return Err(refuse(state));
            }
            state.spec = Some(spec.clone());
            state.updated_at = Some(e.time);
            state.ticking_since = Some(e.time);
            state.buffered = None;
        }
        ScheduleEvent::Paused { reason } => {
            if !exists {
                return Err(refuse(state));
            }
            state.status = ScheduleStatus::Paused;
            state.paused_reason = reason.clone();
            state.updated_at = Some(e.time);
            state.buffered = None;
        }
        ScheduleEvent::Resumed => {
            if !exists {
                return Err(refuse(state));
            }
            state.status = ScheduleStatus::Active;
            state.paused_reason = None;
            state.updated_at = Some(e.time);
            state.ticking_since = Some(e.time);
        }
        ScheduleEvent::Deleted => {
            if !exists {
                return Err(refuse(state));
            }
            state.status = ScheduleStatus::Deleted;
            state.updated_at = Some(e.time);
            state.buffered = None;
        }
        ScheduleEvent::Triggered {
            tick,
            execution,
            trigger,
        } => {
            if !exists {
                return Err(refuse(state));
            }
            if matches!(
                trigger,
                Trigger::Tick | Trigger::CatchUp | Trigger::Buffered
            ) {
                state.handled_through = state.handled_through.max(Some(*tick));
            }
            if *trigger == Trigger::Buffered && state.buffered == Some(*tick) {
                state.buffered = None;
            }
            state.run_count += 1;
            state.runs.push_back(Run {
                execution: execution.clone(),
                scheduled_for: *tick,
                trigger: *trigger,
                recorded_at: e.time,
            });
            while state.runs.len() > RECENT_RUNS {
                state.runs.pop_front();
            }
        }
        ScheduleEvent::Skipped { to, count, .. } => {
            if !exists {
                return Err(refuse(state));
            }
            state.handled_through = state.handled_through.max(Some(*to));
            state.skipped_count += u64::from(*count);
        }
        ScheduleEvent::Buffered { tick } => {
            if !exists {
                return Err(refuse(state));
            }
            if state.buffered.is_some() {
                // The newest waiting tick is kept; the older one is skipped.
                state.skipped_count += 1;
            }
            state.buffered = Some(*tick);
            state.handled_through = state.handled_through.max(Some(*tick));
        }
    }
    Ok(())
}

/// What deciding on a schedule asks for: the events to record, then the
/// runs to cancel (`overlap: cancel_previous`). The executions to start are
/// the `triggered` events' own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// To append, in order.
    pub events: Vec<ScheduleEvent>,
    /// Runs to cancel once the events are recorded.
    pub cancel: Vec<ExecutionId>,
}

impl Plan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.cancel.is_empty()
    }

    fn skip(&mut self, tick: DateTime<Utc>, reason: SkipReason) {
        if let Some(ScheduleEvent::Skipped {
            to,
            count,
            reason: last,
            ..
        }) = self.events.last_mut()
            && *last == reason
        {
            *to = tick;
            *count += 1;
            return;
        }
        self.events.push(ScheduleEvent::Skipped {
            from: tick,
            to: tick,
            count: 1,
            reason,
        });
    }
}

/// What the deciding engine knows beside the schedule's state.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// The time.
    pub now: DateTime<Utc>,
    /// When this engine started: unhandled ticks due before it were missed
    /// (no engine ran them when they came due), the catch-up policy
    /// decides them.
    pub engine_started: DateTime<Utc>,
}

/// What the ticks of `id` that are due by `now` do, oldest first: a buffered
/// tick whose earlier run ended runs; ticks missed before this engine
/// started follow the catch-up policy; the others, and the catch-up's
/// chosen ones, follow the overlap policy against `running`, the runs
/// still going.
pub fn due(id: &ScheduleId, state: &ScheduleState, at: Now, running: &[ExecutionId]) -> Plan {
    let mut plan = Plan::default();
    let (Some(spec), ScheduleStatus::Active) = (&state.spec, state.status) else {
        return plan;
    };
    let Ok(timing) = spec.timing() else {
        return plan;
    };
    let mut running = running.to_vec();
    if let Some(tick) = state.buffered
        && running.is_empty()
    {
        let execution = spec::run_id(id, tick);
        running.push(execution.clone());
        plan.events.push(ScheduleEvent::Triggered {
            tick,
            execution,
            trigger: Trigger::Buffered,
        });
    }
    let after = state.handled_through.max(state.ticking_since);
    let Some(after) = after else {
        return plan;
    };
    let ready = |tick: DateTime<Utc>| tick + spec::jitter_of(id, tick, spec.jitter) <= at.now;
    let ticks: Vec<_> = timing
        .between(after, at.now, spec::MAX_TICKS_AT_ONCE)
        .into_iter()
        .take_while(|t| ready(*t))
        .collect();
    let (missed, on_time): (Vec<_>, Vec<_>) = ticks
        .into_iter()
        .partition(|t| *t + spec::jitter_of(id, *t, spec.jitter) < at.engine_started);
    let caught_up: Vec<DateTime<Utc>> = match spec.catch_up {
        CatchUp::None => Vec::new(),
        CatchUp::Last => missed.last().copied().into_iter().collect(),
        CatchUp::All => {
            let window = chrono::TimeDelta::from_std(spec.catch_up_window())
                .unwrap_or(chrono::TimeDelta::MAX);
            missed
                .iter()
                .copied()
                .filter(|t| at.now.signed_duration_since(*t) <= window)
                .collect()
        }
    };
    for tick in missed.iter().copied().chain(on_time.iter().copied()) {
        let trigger = if on_time.contains(&tick) {
            Trigger::Tick
        } else if caught_up.contains(&tick) {
            Trigger::CatchUp
        } else {
            plan.skip(tick, SkipReason::Missed);
            continue;
        };
        overlap(&mut plan, id, spec.overlap, tick, trigger, &mut running);
    }
    plan
}

/// The runs of a backfill of `ticks` (each not run before), oldest first,
/// under `policy` against `running`.
pub fn backfill(
    id: &ScheduleId,
    ticks: &[DateTime<Utc>],
    policy: Overlap,
    running: &[ExecutionId],
) -> Plan {
    let mut plan = Plan::default();
    let mut running = running.to_vec();
    for &tick in ticks {
        overlap(&mut plan, id, policy, tick, Trigger::Backfill, &mut running);
    }
    plan
}

fn overlap(
    plan: &mut Plan,
    id: &ScheduleId,
    policy: Overlap,
    tick: DateTime<Utc>,
    trigger: Trigger,
    running: &mut Vec<ExecutionId>,
) {
    let execution = spec::run_id(id, tick);
    match policy {
        _ if running.is_empty() => {}
        Overlap::AllowAll => {}
        Overlap::Skip => return plan.skip(tick, SkipReason::Overlap),
        Overlap::BufferOne => {
            plan.events.push(ScheduleEvent::Buffered { tick });
            return;
        }
        Overlap::CancelPrevious => plan.cancel.append(running),
    }
    running.push(execution.clone());
    plan.events.push(ScheduleEvent::Triggered {
        tick,
        execution,
        trigger,
    });
}

#[cfg(test)]
mod tests;
