//! Broker-held timers: retries after their backoff, delayed starts and
//! deadlines, held by nats-server as message schedules.
//!
//! A timer of execution `e` is a schedule on `<p>.sched.<e>.<timer>` (one
//! per kind: a newer one replaces the older) that fires once, at its
//! instant, on `<p>.sched.<e>.<timer>.due` in the same stream. The engine's
//! reactor consumes the fired timers and turns them into commands; whoever
//! knows the instant first sets the timer (the reactor for retries, starts
//! and execution deadlines, the claiming worker for its attempt's deadline).

use async_nats::HeaderMap;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::codec::header;
pub use crate::event::Timer;
use crate::id::ExecutionId;
use crate::subject::Subjects;

/// The body of a timer, as the schedule publishes it when it fires.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimerFired {
    /// Why.
    pub timer: Timer,
    /// The attempt it belongs to.
    pub attempt: u32,
}

/// A timer ready to publish: the schedule's subject, headers and body.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// `<p>.sched.<exec>.<timer>`.
    pub subject: String,
    /// `Nats-Schedule`, its target and a `Nats-Msg-Id`.
    pub headers: HeaderMap,
    /// The [`TimerFired`] body, JSON.
    pub body: bytes::Bytes,
}

impl Schedule {
    /// The schedule of `timer` for `attempt` of `execution`, firing at `at`
    /// (rounded up to the millisecond: a schedule holds milliseconds, and
    /// truncating would fire a deadline up to a millisecond early).
    pub fn new(
        subjects: &Subjects,
        execution: &ExecutionId,
        timer: Timer,
        at: DateTime<Utc>,
        attempt: u32,
    ) -> Self {
        let body = serde_json::to_vec(&TimerFired { timer, attempt })
            .expect("a timer body always serialises");
        let mut headers = HeaderMap::new();
        let at = ceil_ms(at).to_rfc3339_opts(SecondsFormat::Millis, true);
        headers.insert(header::SCHEDULE, format!("@at {at}").as_str());
        headers.insert(
            header::SCHEDULE_TARGET,
            subjects.timer(execution, timer.as_str()).as_str(),
        );
        headers.insert(
            header::MSG_ID,
            format!("{execution}:timer:{}:{attempt}", timer.as_str()).as_str(),
        );
        Schedule {
            subject: subjects.schedule(execution, timer.as_str()),
            headers,
            body: body.into(),
        }
    }
}

impl Schedule {
    /// Publishes the schedule and waits until the server stored it. A
    /// second one of the same timer replaces the first (one schedule per
    /// subject); within the duplicate window it is dropped by its
    /// `Nats-Msg-Id`.
    pub async fn publish(
        self,
        js: &async_nats::jetstream::Context,
    ) -> Result<(), async_nats::jetstream::context::PublishError> {
        js.publish_with_headers(self.subject, self.headers, self.body)
            .await?
            .await
            .map(drop)
    }
}

/// `ms` milliseconds after `time`, or the latest representable instant.
pub fn after(time: DateTime<Utc>, ms: u64) -> DateTime<Utc> {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| time.checked_add_signed(chrono::TimeDelta::milliseconds(ms)))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `time` rounded up to the millisecond.
pub fn ceil_ms(time: DateTime<Utc>) -> DateTime<Utc> {
    let sub_ms = time.timestamp_subsec_nanos() % 1_000_000;
    if sub_ms == 0 {
        return time;
    }
    time + chrono::TimeDelta::nanoseconds(i64::from(1_000_000 - sub_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_fires_on_its_due_subject_never_early() {
        let subjects = Subjects::default();
        let exec = ExecutionId::new("e1").unwrap();
        let at = DateTime::parse_from_rfc3339("2026-01-01T00:00:00.0001Z")
            .unwrap()
            .with_timezone(&Utc);
        let s = Schedule::new(&subjects, &exec, Timer::Attempt, at, 2);
        assert_eq!(s.subject, "runlog.sched.e1.attempt");
        assert_eq!(
            s.headers.get(header::SCHEDULE).unwrap().as_str(),
            "@at 2026-01-01T00:00:00.001Z"
        );
        assert_eq!(
            s.headers.get(header::SCHEDULE_TARGET).unwrap().as_str(),
            "runlog.sched.e1.attempt.due"
        );
        assert_eq!(
            s.headers.get(header::MSG_ID).unwrap().as_str(),
            "e1:timer:attempt:2"
        );
        let fired: TimerFired = serde_json::from_slice(&s.body).unwrap();
        assert_eq!((fired.timer, fired.attempt), (Timer::Attempt, 2));
    }
}
