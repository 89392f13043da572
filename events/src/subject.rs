//! Every subject and stream name runlog uses, built in one place.
//!
//! All names share a prefix (`runlog` by default) so several installations
//! can share one NATS account.
//!
//! | subject | holds |
//! |---|---|
//! | `<p>.ev.<exec>.<type>` | lifecycle events: the execution log, checked with optimistic concurrency on `<p>.ev.<exec>.>` |
//! | `<p>.ev.<exec>.queued.<queue>.<priority>` | a `queued` event, which is also the work item: workers pull them, one durable consumer per queue and priority |
//! | `<p>.sched.<exec>.<purpose>` | broker-held timers (retry backoff, deadlines); each fires on `<p>.sched.<exec>.<purpose>.due` |
//! | `<p>.log.<exec>`, `<p>.progress.<exec>`, `<p>.heartbeat.<exec>` | telemetry of running attempts |
//! | `<p>.live.ev.<exec>.<type>` | the stream's RePublish of every stored lifecycle event (live feeds) |
//! | `<p>.cancel.<exec>` | core-NATS cancel signal to the worker |
//! | `<p>.submit.<queue>` | request/reply intake |
//! | `<p>.wf.<exec>` | events of a workflow execution (the type in the body), checked with optimistic concurrency on the subject |
//! | `<p>.sc.<schedule>` | events of a schedule (the type in the body), checked the same way |
//! | `<p>.sc.<schedule>.next` | the broker-held timer of a schedule's next tick; it fires on `<p>.sc.<schedule>.next.due` |
//!
//! # Examples
//! ```
//! use runlog_events::{EventType, ExecutionId, Priority, QueueName, Subjects};
//!
//! let s = Subjects::default();
//! let exec = ExecutionId::new("e1").unwrap();
//! assert_eq!(s.event(&exec, EventType::Started), "runlog.ev.e1.started");
//! assert_eq!(s.execution_events(&exec), "runlog.ev.e1.>");
//! assert_eq!(s.queued(&exec, &QueueName::default(), Priority::High), "runlog.ev.e1.queued.default.high");
//! assert_eq!(s.dispatch_filter(&QueueName::default(), Priority::High), "runlog.ev.*.queued.default.high");
//! assert_eq!(s.exec_stream(), "RUNLOG_EXEC");
//! ```

use crate::envelope::Envelope;
use crate::event::{Event, EventType, Timer};
use crate::id::{ExecutionId, QueueName, ScheduleId, TokenError, validate_token};
use crate::spec::Priority;

/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "runlog";

/// Builds subject and stream names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
    upper: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Subjects::new(DEFAULT_PREFIX).expect("the default prefix is a valid token")
    }
}

impl Subjects {
    /// Names under `prefix`, which must be a subject token.
    pub fn new(prefix: &str) -> Result<Self, TokenError> {
        validate_token(prefix)?;
        Ok(Subjects {
            prefix: prefix.to_owned(),
            upper: prefix.to_ascii_uppercase(),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The subject an event of `exec` of type `ty` is published on.
    /// Lifecycle events go to the execution log, telemetry to its own
    /// subjects. A `queued` event's subject also names its queue and
    /// priority ([`Subjects::queued`]); for [`EventType::Queued`] this is
    /// the filter of every `queued` of `exec`.
    pub fn event(&self, exec: &ExecutionId, ty: EventType) -> String {
        let p = &self.prefix;
        match ty {
            EventType::Log => format!("{p}.log.{exec}"),
            EventType::Progress => format!("{p}.progress.{exec}"),
            EventType::Heartbeat => format!("{p}.heartbeat.{exec}"),
            EventType::Queued => format!("{p}.ev.{exec}.queued.>"),
            _ => format!("{p}.ev.{exec}.{}", ty.as_str()),
        }
    }

    /// The subject of a `queued` event of `exec` on `queue` at `priority`:
    /// the work item the workers of that queue and priority pull.
    pub fn queued(&self, exec: &ExecutionId, queue: &QueueName, priority: Priority) -> String {
        format!("{}.ev.{exec}.queued.{queue}.{priority}", self.prefix)
    }

    /// The subject an envelope is published on.
    pub fn of(&self, envelope: &Envelope) -> String {
        match &envelope.event {
            Event::Queued(q) => self.queued(&envelope.execution, &q.queue, q.priority),
            _ => self.event(&envelope.execution, envelope.event_type()),
        }
    }

    /// Every lifecycle event of one execution: the optimistic-concurrency
    /// filter and the replay filter.
    pub fn execution_events(&self, exec: &ExecutionId) -> String {
        format!("{}.ev.{exec}.>", self.prefix)
    }

    /// The one subject every event of workflow execution `exec` is
    /// published on (the type is in the body): a literal subject, so the
    /// expected-sequence check of an append and the start of a replay are
    /// lookups in the server's per-subject index.
    pub fn workflow_events(&self, exec: &ExecutionId) -> String {
        format!("{}.wf.{exec}", self.prefix)
    }

    /// Every event of every workflow execution.
    pub fn all_workflow_events(&self) -> String {
        format!("{}.wf.>", self.prefix)
    }

    /// The one subject every event of schedule `id` is published on (the
    /// type is in the body), literal as [`workflow_events`](Self::workflow_events).
    pub fn schedule_log(&self, id: &ScheduleId) -> String {
        format!("{}.sc.{id}", self.prefix)
    }

    /// Every event of every schedule (not their timers).
    pub fn schedule_logs(&self) -> String {
        format!("{}.sc.*", self.prefix)
    }

    /// Every subject of every schedule: events and tick timers.
    pub fn all_schedule_subjects(&self) -> String {
        format!("{}.sc.>", self.prefix)
    }

    /// The broker-held timer of schedule `id`'s next tick (one per schedule:
    /// a newer one replaces the older).
    pub fn tick_timer(&self, id: &ScheduleId) -> String {
        format!("{}.sc.{id}.next", self.prefix)
    }

    /// Where the tick timer of schedule `id` fires.
    pub fn tick_due(&self, id: &ScheduleId) -> String {
        format!("{}.sc.{id}.next.due", self.prefix)
    }

    /// Every fired tick timer: the engine's `<p>-ticks` consumer reads these.
    pub fn all_ticks_due(&self) -> String {
        format!("{}.sc.*.next.due", self.prefix)
    }

    /// The durable consumer of fired tick timers, shared by the engines.
    pub fn ticks_consumer(&self) -> String {
        format!("{}-ticks", self.prefix)
    }

    /// The schedule whose log `subject` is (`<p>.sc.<id>`).
    pub fn parse_schedule_log(&self, subject: &str) -> Option<ScheduleId> {
        let id = subject.strip_prefix(&self.prefix)?.strip_prefix(".sc.")?;
        ScheduleId::new(id).ok()
    }

    /// The workflow execution whose log `subject` is (`<p>.wf.<id>`).
    pub fn parse_workflow_events(&self, subject: &str) -> Option<ExecutionId> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".wf.")?;
        ExecutionId::new(rest.split('.').next()?).ok()
    }

    /// The schedule a fired tick timer belongs to.
    pub fn parse_tick_due(&self, subject: &str) -> Option<ScheduleId> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".sc.")?;
        let id = rest.strip_suffix(".next.due")?;
        ScheduleId::new(id).ok()
    }

    /// Every lifecycle event of every execution.
    pub fn all_events(&self) -> String {
        format!("{}.ev.>", self.prefix)
    }

    /// Every lifecycle event of type `ty`, of every execution.
    pub fn events_of_type(&self, ty: EventType) -> String {
        match ty {
            EventType::Queued => format!("{}.ev.*.queued.>", self.prefix),
            _ => format!("{}.ev.*.{}", self.prefix, ty.as_str()),
        }
    }

    /// Where the stream republishes stored lifecycle events.
    pub fn live_events(&self) -> String {
        format!("{}.live.ev.>", self.prefix)
    }

    /// The live feed of one execution.
    pub fn live_execution_events(&self, exec: &ExecutionId) -> String {
        format!("{}.live.ev.{exec}.>", self.prefix)
    }

    /// The live feed of one execution's log lines (the logs stream's
    /// RePublish, with `Nats-Sequence`).
    pub fn live_log(&self, exec: &ExecutionId) -> String {
        format!("{}.live.log.{exec}", self.prefix)
    }

    /// Every `queued` event of `queue` at `priority`: the filter of the
    /// workers' consumer of that queue and priority.
    pub fn dispatch_filter(&self, queue: &QueueName, priority: Priority) -> String {
        format!("{}.ev.*.queued.{queue}.{priority}", self.prefix)
    }

    /// A broker-held timer of `exec` (`retry`, `deadline`).
    pub fn schedule(&self, exec: &ExecutionId, purpose: &str) -> String {
        format!("{}.sched.{exec}.{purpose}", self.prefix)
    }

    /// Every timer subject.
    pub fn all_schedules(&self) -> String {
        format!("{}.sched.>", self.prefix)
    }

    /// Telemetry subjects held by the logs stream.
    pub fn all_telemetry(&self) -> [String; 3] {
        let p = &self.prefix;
        [
            format!("{p}.log.>"),
            format!("{p}.progress.>"),
            format!("{p}.heartbeat.>"),
        ]
    }

    /// The cancel signal of `exec`.
    pub fn cancel(&self, exec: &ExecutionId) -> String {
        format!("{}{exec}", self.cancel_prefix())
    }

    /// Every cancel signal (a worker subscribes once and routes by id).
    pub fn all_cancels(&self) -> String {
        format!("{}*", self.cancel_prefix())
    }

    /// What a cancel signal's subject starts with, before the execution id.
    pub fn cancel_prefix(&self) -> String {
        format!("{}.cancel.", self.prefix)
    }

    /// Request/reply intake of `queue`.
    pub fn submit(&self, queue: &QueueName) -> String {
        format!("{}.submit.{queue}", self.prefix)
    }

    /// The execution stream (events and timers).
    pub fn exec_stream(&self) -> String {
        format!("{}_EXEC", self.upper)
    }

    /// The telemetry stream.
    pub fn logs_stream(&self) -> String {
        format!("{}_LOGS", self.upper)
    }

    /// The stream that captures dead-letter advisories.
    pub fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.upper)
    }

    /// The audit trail: who changed what, through which door.
    pub fn audit_stream(&self) -> String {
        format!("{}_AUDIT", self.upper)
    }

    /// The subject of the audit trail's records.
    pub fn audit(&self) -> String {
        format!("{}.audit", self.prefix)
    }

    /// The key-value bucket of sealed task environments (key: execution id).
    pub fn env_bucket(&self) -> String {
        format!("{}-env", self.prefix)
    }

    /// The key-value bucket of named secrets, sealed (key: secret name).
    pub fn secrets_bucket(&self) -> String {
        format!("{}-secrets", self.prefix)
    }

    /// The key-value bucket of live workers (key: worker id, with a TTL).
    pub fn workers_bucket(&self) -> String {
        format!("{}-workers", self.prefix)
    }

    /// The key-value bucket of idempotency keys (key: a digest of the
    /// caller's key, value: the execution id).
    pub fn idempotency_bucket(&self) -> String {
        format!("{}-idempotency", self.prefix)
    }

    /// Where a broker-held timer of `exec` fires: the reactor consumes these.
    pub fn timer(&self, exec: &ExecutionId, purpose: &str) -> String {
        format!("{}.sched.{exec}.{purpose}.due", self.prefix)
    }

    /// Every fired timer.
    pub fn all_timers(&self) -> String {
        format!("{}.sched.*.*.due", self.prefix)
    }

    /// The durable consumer shared by all workers of `queue` at `priority`.
    pub fn dispatch_consumer(&self, queue: &QueueName, priority: Priority) -> String {
        format!("{}-work-{queue}-{priority}", self.prefix)
    }

    /// Reads the execution and type out of a lifecycle event subject
    /// (`runlog.ev.<exec>.<type>`, `runlog.ev.<exec>.queued.<queue>.<priority>`,
    /// or their live republish).
    pub fn parse_event(&self, subject: &str) -> Option<(ExecutionId, EventType)> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        let rest = rest.strip_prefix("live.").unwrap_or(rest);
        let mut parts = rest.split('.');
        let (Some("ev"), Some(exec), Some(ty)) = (parts.next(), parts.next(), parts.next()) else {
            return None;
        };
        let ty: EventType = ty.parse().ok()?;
        let routed = match ty {
            EventType::Queued => {
                let (Some(queue), Some(priority)) = (parts.next(), parts.next()) else {
                    return None;
                };
                QueueName::new(queue).is_ok() && priority.parse::<Priority>().is_ok()
            }
            _ => true,
        };
        if !routed || parts.next().is_some() {
            return None;
        }
        Some((ExecutionId::new(exec).ok()?, ty))
    }

    /// Reads the execution and the timer out of the subject a timer fires
    /// on (`<p>.sched.<exec>.<timer>.due`, [`Subjects::timer`]). The attempt
    /// travels in the body.
    pub fn parse_timer(&self, subject: &str) -> Option<(ExecutionId, Timer)> {
        let rest = subject
            .strip_prefix(&self.prefix)?
            .strip_prefix(".sched.")?;
        let mut parts = rest.split('.');
        let (Some(exec), Some(timer), Some("due"), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        Some((ExecutionId::new(exec).ok()?, timer.parse().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let s = Subjects::new("acme").unwrap();
        let e = ExecutionId::new("x1").unwrap();
        assert_eq!(s.event(&e, EventType::Log), "acme.log.x1");
        assert_eq!(
            s.event(&e, EventType::RetryScheduled),
            "acme.ev.x1.retry_scheduled"
        );
        assert_eq!(s.logs_stream(), "ACME_LOGS");
        assert_eq!(
            s.dispatch_consumer(&QueueName::default(), Priority::Low),
            "acme-work-default-low"
        );
        assert!(Subjects::new("a.b").is_err());
    }

    #[test]
    fn event_subjects_parse_back() {
        let s = Subjects::default();
        let e = ExecutionId::generate();
        for ty in EventType::ALL
            .into_iter()
            .filter(|t| t.is_lifecycle() && *t != EventType::Queued)
        {
            assert_eq!(s.parse_event(&s.event(&e, ty)), Some((e.clone(), ty)));
        }
        let queued = s.queued(&e, &QueueName::default(), Priority::Low);
        assert_eq!(s.parse_event(&queued), Some((e.clone(), EventType::Queued)));
        assert_eq!(
            s.parse_event(&format!("runlog.live.ev.{e}.queued.default.high")),
            Some((e.clone(), EventType::Queued))
        );
        for bad in [
            "runlog.ev.e1",
            "runlog.ev.e1.nope",
            "other.ev.e1.queued.default.high",
            "runlog.ev.e1.queued",
            "runlog.ev.e1.queued.x",
            "runlog.ev.e1.queued.default.urgent",
            "runlog.ev.e1.queued.default.high.x",
            "runlog.ev.e1.started.x",
        ] {
            assert_eq!(s.parse_event(bad), None, "{bad}");
        }
    }

    #[test]
    fn log_subjects_parse_back() {
        let s = Subjects::new("acme").unwrap();
        let schedule = ScheduleId::new("nightly").unwrap();
        let workflow = ExecutionId::generate();
        assert_eq!(
            s.parse_schedule_log(&s.schedule_log(&schedule)),
            Some(schedule.clone())
        );
        assert_eq!(s.parse_schedule_log(&s.tick_due(&schedule)), None);
        assert_eq!(
            s.parse_workflow_events(&s.workflow_events(&workflow)),
            Some(workflow)
        );
        assert_eq!(s.parse_workflow_events("other.wf.x"), None);
    }

    #[test]
    fn timer_subjects_parse_back() {
        let s = Subjects::new("acme").unwrap();
        let e = ExecutionId::generate();
        for timer in Timer::ALL {
            assert_eq!(
                s.parse_timer(&s.timer(&e, timer.as_str())),
                Some((e.clone(), timer))
            );
        }
        for bad in [
            "acme.sched.e1.retry",
            "acme.sched.e1.nope.due",
            "acme.sched.e1.retry.due.x",
            "acme.sched..retry.due",
            "acme.ev.e1.retry.due",
            "runlog.sched.e1.retry.due",
            "acmex.sched.e1.retry.due",
        ] {
            assert_eq!(s.parse_timer(bad), None, "{bad}");
        }
    }
}
