//! Appending to and replaying schedules' logs, and arming their ticks.
//!
//! A schedule's events are JSON bodies ([`ScheduleEnvelope`]) on one
//! subject, `<p>.sc.<schedule>`; every append states the newest sequence
//! its writer has seen there (`Nats-Expected-Last-Subject-Sequence`), so
//! two engines deciding on the same tick cannot both record it.
//!
//! The next tick is a message schedule on `<p>.sc.<schedule>.next` firing
//! once on `<p>.sc.<schedule>.next.due` (one per schedule: arming another
//! tick replaces it), with a `Nats-Msg-Id` naming the tick, so arming the
//! same tick twice stores it once.

use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use async_nats::jetstream::context::PublishError;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::{ScheduleEnvelope, ScheduleState, apply};
use crate::codec::header;
use crate::direct::DirectGetError;
use crate::id::ScheduleId;
use crate::occ::AppendFailure;
use crate::subject::Subjects;

/// The largest schedule event (a `created` carries the whole spec).
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// A schedule as replayed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScheduleHistory {
    /// The folded state.
    pub state: ScheduleState,
    /// The sequence of its newest event (0 when it has none).
    pub last_seq: u64,
    /// Events that did not decode or did not apply, with the reason.
    pub skipped: Vec<(u64, String)>,
}

impl ScheduleHistory {
    /// Folds one stored body at `seq`; an unreadable or impossible event is
    /// skipped and listed.
    pub fn fold(&mut self, seq: u64, body: &[u8]) -> Option<ScheduleEnvelope> {
        if seq <= self.last_seq {
            return None;
        }
        self.last_seq = seq;
        let envelope = match serde_json::from_slice::<ScheduleEnvelope>(body) {
            Ok(envelope) => envelope,
            Err(e) => {
                self.skipped
                    .push((seq, format!("not a schedule event: {e}")));
                return None;
            }
        };
        match apply(&mut self.state, &envelope) {
            Ok(()) => Some(envelope),
            Err(e) => {
                self.skipped.push((seq, e.to_string()));
                None
            }
        }
    }
}

/// Why a schedule append failed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleAppendError {
    /// Someone appended first: fold again and decide again.
    #[error("schedule {schedule} changed since sequence {expected}")]
    Conflict {
        /// The schedule.
        schedule: ScheduleId,
        /// The sequence we expected.
        expected: u64,
    },
    /// The event is larger than [`MAX_EVENT_BYTES`].
    #[error(
        "a {event} event of schedule {schedule} is {bytes} bytes, over the limit of {MAX_EVENT_BYTES}"
    )]
    TooLarge {
        /// The schedule.
        schedule: ScheduleId,
        /// The event's type.
        event: &'static str,
        /// Its size.
        bytes: usize,
    },
    /// NATS did not accept the publish.
    #[error(
        "cannot append to the schedule log on {subject} ({source}); is the NATS server reachable?"
    )]
    Publish {
        /// The subject.
        subject: String,
        /// The client's error, with its kind.
        #[source]
        source: PublishError,
    },
}

/// Why a schedule's history could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the history of schedule {schedule}: {source}")]
pub struct ScheduleLoadError {
    /// The schedule.
    pub schedule: ScheduleId,
    /// The read that failed.
    #[source]
    pub source: DirectGetError,
}

/// The body of a fired tick timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickFired {
    /// The tick it was armed for.
    pub tick: DateTime<Utc>,
}

/// Reads and writes schedules' events, and arms their ticks.
#[derive(Debug, Clone)]
pub struct ScheduleLog {
    js: Context,
    subjects: Subjects,
    source: String,
}

impl ScheduleLog {
    /// A log on `js` under `subjects`, recording `source` as the writer.
    pub fn new(js: Context, subjects: Subjects, source: impl Into<String>) -> Self {
        ScheduleLog {
            js,
            subjects,
            source: source.into(),
        }
    }

    /// The writer's name, recorded on every event.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Appends `envelope`, expecting `expected` to be the newest sequence of
    /// its schedule (0: it must not exist yet). Returns its sequence.
    pub async fn append(
        &self,
        expected: u64,
        envelope: &ScheduleEnvelope,
    ) -> Result<u64, ScheduleAppendError> {
        let schedule = &envelope.schedule;
        let body = serde_json::to_vec(envelope).expect("a schedule event always serialises");
        if body.len() > MAX_EVENT_BYTES {
            return Err(ScheduleAppendError::TooLarge {
                schedule: schedule.clone(),
                event: envelope.event.type_name(),
                bytes: body.len(),
            });
        }
        let subject = self.subjects.schedule_log(schedule);
        crate::occ::append_json(&self.js, &subject, expected, body)
            .await
            .map_err(|e| match e {
                AppendFailure::Conflict => ScheduleAppendError::Conflict {
                    schedule: schedule.clone(),
                    expected,
                },
                AppendFailure::Publish(source) => ScheduleAppendError::Publish { subject, source },
            })
    }

    /// Replays every event of `schedule` and folds it; an empty history
    /// when it was never created.
    pub async fn load(&self, schedule: &ScheduleId) -> Result<ScheduleHistory, ScheduleLoadError> {
        Ok(self.replay(schedule).await?.0)
    }

    /// Every event of `schedule` that applied, with its sequence, oldest
    /// first.
    pub async fn events(
        &self,
        schedule: &ScheduleId,
    ) -> Result<Vec<(u64, ScheduleEnvelope)>, ScheduleLoadError> {
        Ok(self.replay(schedule).await?.1)
    }

    async fn replay(
        &self,
        schedule: &ScheduleId,
    ) -> Result<(ScheduleHistory, Vec<(u64, ScheduleEnvelope)>), ScheduleLoadError> {
        let failed = |source| ScheduleLoadError {
            schedule: schedule.clone(),
            source,
        };
        let stream = self.subjects.exec_stream();
        let client = self.js.client();
        let subject = self.subjects.schedule_log(schedule);
        let mut history = ScheduleHistory::default();
        let mut events = Vec::new();
        crate::direct::all(&client, &stream, &subject, |stored| {
            if let Some(envelope) = history.fold(stored.seq, &stored.payload) {
                events.push((stored.seq, envelope));
            }
        })
        .await
        .map_err(failed)?;
        Ok((history, events))
    }

    /// Arms the timer of `schedule`'s tick at `tick`, firing at `fire_at`
    /// (the tick plus its jitter), in place of any armed before.
    pub async fn arm(
        &self,
        schedule: &ScheduleId,
        tick: DateTime<Utc>,
        fire_at: DateTime<Utc>,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(&TickFired { tick }).expect("a tick always serialises");
        let mut headers = HeaderMap::new();
        let fire_at = crate::timer::ceil_ms(fire_at).to_rfc3339_opts(SecondsFormat::Millis, true);
        headers.insert(header::SCHEDULE, format!("@at {fire_at}").as_str());
        headers.insert(
            header::SCHEDULE_TARGET,
            self.subjects.tick_due(schedule).as_str(),
        );
        headers.insert(
            header::MSG_ID,
            format!("{schedule}:tick:{}", tick.timestamp_millis()).as_str(),
        );
        self.js
            .publish_with_headers(self.subjects.tick_timer(schedule), headers, body.into())
            .await?
            .await
            .map(drop)
    }
}
