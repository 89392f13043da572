//! Work items: what a worker takes from a delivered `queued` event.
//!
//! There is no separate work message. A `queued` event is stored on
//! `<p>.ev.<exec>.queued.<queue>.<priority>`, and the workers of that
//! queue share one durable consumer per priority level filtered on those
//! subjects, so the append that queues an attempt is also its dispatch.
//! Nothing can be recorded queued without being dispatched, and nothing is
//! dispatched that the log does not hold.
//!
//! A delivered `queued` is only a hint: the claim (an optimistic append of
//! `started`) decides whether there is still work, so a stale delivery (the
//! execution was cancelled, another worker took over after a lost attempt)
//! is skipped and acknowledged.
//!
//! The event carries the kind and the required worker labels, so a worker
//! applies its capacity rules and label filter before it reads the
//! history. The first `queued` of an execution carries the spec as well: a
//! worker that finds it there claims without reading the log first. A later
//! `queued` (a retry) does not, and the worker reads the event that created
//! the execution.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};

use crate::codec::{self, DecodeError, Limits};
use crate::envelope::TraceParent;
use crate::event::{Event, Queued};
use crate::id::{ExecutionId, QueueName};
use crate::spec::TaskSpec;
use crate::subject::Subjects;

/// A queued attempt, as a worker sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkItem {
    /// The execution to claim.
    pub execution: ExecutionId,
    /// The attempt that was queued.
    pub attempt: u32,
    /// The queue it was handed to.
    pub queue: QueueName,
    /// The caller's trace, when the `queued` carries one.
    pub traceparent: Option<TraceParent>,
    /// When the `queued` was recorded, when the delivery said.
    pub queued_at: Option<DateTime<Utc>>,
    /// The task kind.
    pub kind: String,
    /// Labels the worker must carry.
    pub worker_labels: BTreeMap<String, String>,
    /// The capacity class the task names, if any.
    pub capacity: Option<String>,
    /// The stream sequence of the `queued` event.
    pub queued_seq: u64,
    /// The task as recorded (environment values sealed), when the `queued`
    /// carries it.
    pub spec: Option<TaskSpec>,
}

/// Why a delivered message is not a work item.
#[derive(Debug, thiserror::Error)]
pub enum WorkItemError {
    /// The subject is not a `queued` event's.
    #[error("{subject:?} is not the subject of a queued event")]
    Subject {
        /// The subject it was delivered on.
        subject: String,
    },
    /// The body is not an event.
    #[error("the event cannot be read: {0}")]
    Decode(#[from] DecodeError),
    /// The body is an event, but not the `queued` its subject names.
    #[error(
        "the event on {subject:?} is {found} of {execution}, not a queued event of that execution, queue and priority"
    )]
    Mismatch {
        /// The subject it was delivered on.
        subject: String,
        /// The event it holds.
        found: String,
        /// The execution the event names.
        execution: ExecutionId,
    },
}

impl WorkItem {
    /// What worker capacity rules match: the capacity class the task names,
    /// else its kind.
    pub fn capacity_class(&self) -> &str {
        self.capacity.as_deref().unwrap_or(&self.kind)
    }

    /// The work item of a `queued` event of `execution` stored at `seq`.
    pub fn of(execution: ExecutionId, attempt: u32, queued: &Queued, seq: u64) -> Self {
        WorkItem {
            execution,
            attempt,
            queue: queued.queue.clone(),
            traceparent: None,
            queued_at: None,
            kind: queued.kind.clone(),
            worker_labels: queued.worker_labels.clone(),
            capacity: queued.capacity.clone(),
            queued_seq: seq,
            spec: queued.spec.as_deref().cloned(),
        }
    }

    /// The work item of a `queued` event delivered on `subject` from
    /// stream sequence `seq`. The event must be the `queued` its subject
    /// names (execution, queue and priority), so a foreign publisher cannot
    /// route an attempt past the rules of its own queue.
    pub fn from_delivery(
        subjects: &Subjects,
        subject: &str,
        headers: Option<&HeaderMap>,
        body: &[u8],
        seq: u64,
        limits: &Limits,
    ) -> Result<Self, WorkItemError> {
        let Some((execution, crate::EventType::Queued)) = subjects.parse_event(subject) else {
            return Err(WorkItemError::Subject {
                subject: subject.to_owned(),
            });
        };
        let empty = HeaderMap::new();
        let envelope = codec::decode(headers.unwrap_or(&empty), body, limits)?;
        match &envelope.event {
            Event::Queued(q)
                if envelope.execution == execution
                    && subjects.queued(&execution, &q.queue, q.priority) == subject =>
            {
                let mut item = WorkItem::of(execution, envelope.attempt, q, seq);
                item.traceparent = envelope.traceparent.clone();
                item.queued_at = Some(envelope.time);
                Ok(item)
            }
            other => Err(WorkItemError::Mismatch {
                subject: subject.to_owned(),
                found: other.event_type().to_string(),
                execution: envelope.execution.clone(),
            }),
        }
    }

    /// Whether a worker with `labels` may take it: every required label
    /// must be present with the same value.
    pub fn accepts(&self, labels: &BTreeMap<String, String>) -> bool {
        self.worker_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::envelope::Envelope;
    use crate::event::Started;
    use crate::id::QueueName;
    use crate::spec::Priority;

    fn queued(labels: BTreeMap<String, String>) -> Queued {
        Queued {
            queue: QueueName::default(),
            priority: Priority::High,
            kind: "shell".into(),
            worker_labels: labels,
            capacity: None,
            spec: Some(Box::new(TaskSpec::new("shell"))),
        }
    }

    #[test]
    fn labels_must_all_match() {
        let q = queued([("pool".to_owned(), "backup".to_owned())].into());
        let item = WorkItem::of(ExecutionId::new("e1").unwrap(), 1, &q, 7);
        assert_eq!(item.spec.as_ref().map(|s| s.kind.as_str()), Some("shell"));
        assert!(!item.accepts(&BTreeMap::new()));
        assert!(item.accepts(&[("pool".to_owned(), "backup".to_owned())].into()));
        assert!(!item.accepts(&[("pool".to_owned(), "eu".to_owned())].into()));
    }

    #[test]
    fn a_delivery_must_be_the_queued_its_subject_names() {
        let s = Subjects::default();
        let e = ExecutionId::new("e1").unwrap();
        let limits = Limits::default();
        let event = |event: Event| {
            let envelope = Envelope::new(e.clone(), 1, Utc::now(), "/test", event);
            let (headers, body) = codec::encode(&envelope, codec::Format::Json).unwrap();
            (headers, body)
        };
        let (headers, body) = event(Event::Queued(queued(BTreeMap::new())));
        let subject = s.queued(&e, &QueueName::default(), Priority::High);
        let item = WorkItem::from_delivery(&s, &subject, Some(&headers), &body, 9, &limits)
            .expect("a queued event on its own subject");
        assert_eq!((item.attempt, item.queued_seq), (1, 9));

        let elsewhere = s.queued(&e, &QueueName::default(), Priority::Low);
        let moved = WorkItem::from_delivery(&s, &elsewhere, Some(&headers), &body, 9, &limits);
        assert!(
            matches!(moved, Err(WorkItemError::Mismatch { .. })),
            "{moved:?}"
        );

        let (headers, body) = event(Event::Started(Started {
            worker: "w".into(),
            deadline: None,
        }));
        let wrong = WorkItem::from_delivery(&s, &subject, Some(&headers), &body, 9, &limits);
        assert!(
            matches!(wrong, Err(WorkItemError::Mismatch { .. })),
            "{wrong:?}"
        );

        let garbage = WorkItem::from_delivery(&s, &subject, None, b"\xff\x00", 9, &limits);
        assert!(
            matches!(garbage, Err(WorkItemError::Decode(_))),
            "{garbage:?}"
        );

        let started = s.event(&e, crate::EventType::Started);
        let off = WorkItem::from_delivery(&s, &started, Some(&headers), &body, 9, &limits);
        assert!(matches!(off, Err(WorkItemError::Subject { .. })), "{off:?}");
    }
}
