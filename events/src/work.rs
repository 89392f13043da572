//! Work items: what a worker pulls from `<p>.work.<queue>.<priority>.<exec>`.
//!
//! The engine's reactor publishes one work item for every `queued` event,
//! with `Nats-Msg-Id` `<exec>:work:<attempt>` so a repeated reaction is
//! dropped by the server. A work item is only a hint: the claim (an
//! optimistic append of `started`) decides whether there is still work, so
//! a duplicate or stale item is skipped and acknowledged.
//!
//! The item carries the kind and the required worker labels so a worker can
//! apply its capacity rules and label filter before it reads the history.
//! It may also carry the task spec (as recorded in `submitted`, so without
//! environment values): a worker that finds it there claims without reading
//! the log first. Without it, the worker reads `submitted`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::decider::Status;
use crate::event::{Event, Queued};
use crate::id::ExecutionId;
use crate::journal::History;
use crate::spec::TaskSpec;
use crate::subject::Subjects;

/// The body of a work item (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WorkItem {
    /// The execution to claim.
    pub execution: ExecutionId,
    /// The attempt that was queued.
    pub attempt: u32,
    /// The task kind.
    pub kind: String,
    /// Labels the worker must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub worker_labels: BTreeMap<String, String>,
    /// The stream sequence of the `queued` event.
    pub queued_seq: u64,
    /// The task as recorded in `submitted`, when the engine had it at hand
    /// and it is small (see [`WorkItem::MAX_SPEC_BYTES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<TaskSpec>,
}

impl WorkItem {
    /// The work item of a `queued` event stored at `seq`.
    pub fn of(execution: ExecutionId, attempt: u32, queued: &Queued, seq: u64) -> Self {
        WorkItem {
            execution,
            attempt,
            kind: queued.kind.clone(),
            worker_labels: queued.worker_labels.clone(),
            queued_seq: seq,
            spec: None,
        }
    }

    /// The work item of the attempt `history` is queued at, with the spec
    /// the history holds, and the `queued` it belongs to; `None` when the
    /// execution is not queued.
    pub fn of_queued(history: &History) -> Option<(WorkItem, Queued)> {
        if history.state.status != Status::Queued {
            return None;
        }
        let attempt = history.state.attempt;
        let execution = history.state.id.clone()?;
        history
            .events
            .iter()
            .rev()
            .find_map(|r| match &r.envelope.event {
                Event::Queued(q) if r.envelope.attempt == attempt => {
                    let mut item = WorkItem::of(execution.clone(), attempt, q, r.seq);
                    item.spec = history.state.spec.as_deref().cloned();
                    Some((item, q.clone()))
                }
                _ => None,
            })
    }

    /// The largest body a work item with its spec may have; a larger spec
    /// is left out and read from the log by the worker.
    pub const MAX_SPEC_BYTES: usize = 64 << 10;

    /// Its JSON body: with the spec when that stays within
    /// [`WorkItem::MAX_SPEC_BYTES`], without it otherwise.
    pub fn to_body(&self) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("a work item always serialises");
        if body.len() <= Self::MAX_SPEC_BYTES || self.spec.is_none() {
            return body;
        }
        let bare = WorkItem {
            spec: None,
            ..self.clone()
        };
        serde_json::to_vec(&bare).expect("a work item always serialises")
    }

    /// Its `Nats-Msg-Id`.
    pub fn msg_id(&self) -> String {
        format!("{}:work:{}", self.execution, self.attempt)
    }

    /// Publishes the item on its dispatch subject (the queue and priority
    /// of `queued`) and waits until the server stored it. A second publish
    /// of the same attempt's item within the duplicate window is dropped by
    /// its `Nats-Msg-Id`; a later one is skipped by the claim.
    pub async fn publish(
        &self,
        js: &async_nats::jetstream::Context,
        subjects: &Subjects,
        queued: &Queued,
    ) -> Result<(), async_nats::jetstream::context::PublishError> {
        let subject = subjects.dispatch(&queued.queue, queued.priority, &self.execution);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(codec::header::MSG_ID, self.msg_id().as_str());
        headers.insert(codec::header::CONTENT_TYPE, codec::JSON);
        js.publish_with_headers(subject, headers, self.to_body().into())
            .await?
            .await
            .map(drop)
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
    use super::*;

    #[test]
    fn labels_must_all_match() {
        let item = WorkItem {
            execution: ExecutionId::new("e1").unwrap(),
            attempt: 1,
            kind: "shell".into(),
            worker_labels: [("pool".to_owned(), "backup".to_owned())].into(),
            queued_seq: 7,
            spec: None,
        };
        assert_eq!(item.msg_id(), "e1:work:1");
        assert!(!item.accepts(&BTreeMap::new()));
        assert!(item.accepts(&[("pool".to_owned(), "backup".to_owned())].into()));
        assert!(!item.accepts(&[("pool".to_owned(), "eu".to_owned())].into()));
    }

    #[test]
    fn a_large_spec_stays_out_of_the_item() {
        let mut spec = TaskSpec::new("echo");
        let mut item = WorkItem {
            execution: ExecutionId::new("e1").unwrap(),
            attempt: 1,
            kind: "echo".into(),
            worker_labels: BTreeMap::new(),
            queued_seq: 7,
            spec: Some(spec.clone()),
        };
        let small: WorkItem = serde_json::from_slice(&item.to_body()).unwrap();
        assert_eq!(small.spec.as_ref(), Some(&spec));
        spec.input = serde_json::json!("x".repeat(WorkItem::MAX_SPEC_BYTES));
        item.spec = Some(spec);
        let body = item.to_body();
        assert!(body.len() < 1024, "{} bytes", body.len());
        let bare: WorkItem = serde_json::from_slice(&body).unwrap();
        assert_eq!(bare.spec, None);
    }
}
