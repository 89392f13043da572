//! Dead letters: a compact index beside the executions, so the dead-letter
//! routes and bulk replays never scan every execution. Per dead letter it
//! keeps what the execution's entry does not hold in a searchable form (the
//! sequence and time of the dead letter, its reason and its last error
//! class); per retried execution the executions that retry it.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use runlog_events::decider::{ExecutionState, Status};
use runlog_events::event::{DeadLetterReason, Event};
use runlog_events::{Envelope, ErrorClass, ExecutionId, QueueName};
use serde::Serialize;

use super::{Entry, Filter, Projection};

/// The label a bulk operation puts on every execution it starts.
pub const OPERATION_LABEL: &str = "runlog.operation";

/// One dead-lettered execution, as the index keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetter {
    /// The stream sequence of its `dead_lettered` event: its place in
    /// listings, and the cursor of a page.
    pub seq: u64,
    /// When it was dead-lettered.
    pub at: DateTime<Utc>,
    /// Why.
    pub reason: DeadLetterReason,
    /// The class of its last error (none when no attempt failed: workers
    /// kept dying).
    pub class: Option<ErrorClass>,
}

/// A later execution that retries an earlier one (`spec.retry_of`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replay {
    /// The new execution.
    pub id: ExecutionId,
    /// The bulk operation that started it (its `runlog.operation` label).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

/// Filters of [`Projection::dead_letters`].
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only this queue.
    pub queue: Option<QueueName>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only dead letters whose last error is of this class.
    pub class: Option<ErrorClass>,
    /// Only dead letters of this reason.
    pub reason: Option<DeadLetterReason>,
    /// Only executions carrying every one of these labels.
    pub labels: BTreeMap<String, String>,
    /// Dead-lettered at or after.
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    pub until: Option<DateTime<Utc>>,
    /// Only dead letters that were (`true`) or were not (`false`) retried.
    pub replayed: Option<bool>,
    /// Only dead letters recorded at or below this stream sequence.
    pub upto_seq: Option<u64>,
}

/// A dead letter with what listings show of its execution.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterView {
    /// The execution.
    pub id: ExecutionId,
    /// Its index entry.
    pub letter: DeadLetter,
    /// Its queue.
    pub queue: Option<QueueName>,
    /// Its kind.
    pub kind: Option<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The attempt it ended at.
    pub attempts: u32,
    /// Every failed attempt, oldest first.
    pub errors: Vec<runlog_events::event::AttemptError>,
    /// The executions that retry it.
    pub replays: Vec<Replay>,
}

/// A page of [`Projection::dead_letters`].
#[derive(Debug, Clone)]
pub struct DeadLetterPage {
    /// Newest dead letter first.
    pub items: Vec<DeadLetterView>,
    /// Pass as `before` for the next page; `None` on the last page.
    pub next: Option<u64>,
}

#[derive(Debug, Default)]
pub(super) struct DeadLetterIndex {
    by_id: HashMap<ExecutionId, DeadLetter>,
    order: BTreeMap<u64, ExecutionId>,
    replays: HashMap<ExecutionId, Vec<Replay>>,
}

impl DeadLetterIndex {
    fn insert(&mut self, id: ExecutionId, letter: DeadLetter) {
        if let Some(old) = self.by_id.insert(id.clone(), letter) {
            self.order.remove(&old.seq);
        }
        self.order.insert(letter.seq, id);
    }

    fn link(&mut self, original: ExecutionId, replay: Replay) {
        let replays = self.replays.entry(original).or_default();
        if !replays.contains(&replay) {
            replays.push(replay);
        }
    }
}

impl DeadLetterFilter {
    fn matches(&self, letter: &DeadLetter, state: &ExecutionState, replayed: bool) -> bool {
        let spec = state.spec.as_ref();
        self.upto_seq.is_none_or(|s| letter.seq <= s)
            && self.class.is_none_or(|c| letter.class == Some(c))
            && self.reason.is_none_or(|r| letter.reason == r)
            && self.since.is_none_or(|t| letter.at >= t)
            && self.until.is_none_or(|t| letter.at < t)
            && self.replayed.is_none_or(|r| r == replayed)
            && self
                .queue
                .as_ref()
                .is_none_or(|q| spec.is_some_and(|s| s.queue == *q))
            && self
                .kind
                .as_ref()
                .is_none_or(|k| spec.is_some_and(|s| s.kind == *k))
            && self
                .labels
                .iter()
                .all(|(k, v)| spec.is_some_and(|s| s.labels.get(k) == Some(v)))
    }
}

impl Projection {
    /// Records a folded `dead_lettered` event, or the retry link of the
    /// event that created an execution (`submitted`, or a first `queued`).
    pub(super) fn index_dead_letter(&self, seq: u64, envelope: &Envelope) {
        let index = || {
            self.dead_letters
                .write()
                .expect("the dead-letter index is never poisoned")
        };
        match &envelope.event {
            Event::DeadLettered(d) => index().insert(
                envelope.execution.clone(),
                DeadLetter {
                    seq,
                    at: envelope.time,
                    reason: d.reason,
                    class: d.errors.last().map(|e| e.error.class),
                },
            ),
            event => {
                let spec = match event {
                    Event::Submitted(s) => Some(&s.spec),
                    Event::Queued(q) => q.spec.as_deref(),
                    _ => None,
                };
                if let Some(spec) = spec
                    && let Some(original) = &spec.retry_of
                {
                    index().link(original.clone(), replay_of(&envelope.execution, spec));
                }
            }
        }
    }

    /// The dead-letter index of a restored execution. A snapshot keeps the
    /// folded state only: the dead letter's sequence is the execution's last
    /// one (nothing follows a terminal event) and its reason is the state's.
    pub(super) fn restore_dead_letter(&self, execution: &ExecutionId, entry: &Entry) {
        let state = &entry.state;
        let mut index = self
            .dead_letters
            .write()
            .expect("the dead-letter index is never poisoned");
        if let Some(original) = state.spec.as_ref().and_then(|s| s.retry_of.clone()) {
            let spec = state.spec.as_ref().expect("checked above");
            index.link(original, replay_of(execution, spec));
        }
        if state.status == Status::DeadLettered {
            index.insert(
                execution.clone(),
                DeadLetter {
                    seq: entry.last_seq,
                    at: state.finished_at.unwrap_or_default(),
                    reason: state
                        .dead_letter_reason
                        .unwrap_or(DeadLetterReason::AttemptsExhausted),
                    class: state.errors.last().map(|e| e.error.class),
                },
            );
        }
    }

    /// Dead letters held.
    pub fn dead_letter_count(&self) -> usize {
        self.dead_letters
            .read()
            .expect("the dead-letter index is never poisoned")
            .by_id
            .len()
    }

    /// Dead letters matching `filter`, newest first, `limit` at most,
    /// starting below the `before` cursor of a previous page.
    pub fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        before: Option<u64>,
        limit: usize,
    ) -> DeadLetterPage {
        let index = self
            .dead_letters
            .read()
            .expect("the dead-letter index is never poisoned");
        let mut items = Vec::with_capacity(limit.min(1024));
        let mut next = None;
        for (seq, id) in index.order.range(..before.unwrap_or(u64::MAX)).rev() {
            let (Some(letter), Some(entry)) = (index.by_id.get(id), self.executions.get(id)) else {
                continue;
            };
            let replays = index.replays.get(id).map(Vec::as_slice).unwrap_or_default();
            if !filter.matches(letter, &entry.state, !replays.is_empty()) {
                continue;
            }
            if items.len() == limit {
                next = items.last().map(|v: &DeadLetterView| v.letter.seq);
                break;
            }
            let spec = entry.state.spec.as_ref();
            debug_assert_eq!(*seq, letter.seq);
            items.push(DeadLetterView {
                id: id.clone(),
                letter: *letter,
                queue: spec.map(|s| s.queue.clone()),
                kind: spec.map(|s| s.kind.clone()),
                labels: spec.map(|s| s.labels.clone()).unwrap_or_default(),
                attempts: entry.state.attempt,
                errors: entry.state.errors.clone(),
                replays: replays.to_vec(),
            });
        }
        DeadLetterPage { items, next }
    }

    /// One dead letter.
    pub fn dead_letter(&self, execution: &ExecutionId) -> Option<DeadLetterView> {
        let letter = *self
            .dead_letters
            .read()
            .expect("the dead-letter index is never poisoned")
            .by_id
            .get(execution)?;
        let filter = DeadLetterFilter {
            upto_seq: Some(letter.seq),
            ..DeadLetterFilter::default()
        };
        self.dead_letters(&filter, Some(letter.seq + 1), 1)
            .items
            .pop()
            .filter(|v| v.id == *execution)
    }

    /// The ids of every dead letter matching `filter`, oldest first.
    pub fn dead_letter_ids(&self, filter: &DeadLetterFilter) -> Vec<ExecutionId> {
        let index = self
            .dead_letters
            .read()
            .expect("the dead-letter index is never poisoned");
        index
            .order
            .values()
            .filter(|id| {
                let (Some(letter), Some(entry)) = (index.by_id.get(*id), self.executions.get(*id))
                else {
                    return false;
                };
                let replayed = index.replays.get(*id).is_some_and(|r| !r.is_empty());
                filter.matches(letter, &entry.state, replayed)
            })
            .cloned()
            .collect()
    }

    /// The executions that retry `original`, in log order.
    pub fn replays_of(&self, original: &ExecutionId) -> Vec<Replay> {
        self.dead_letters
            .read()
            .expect("the dead-letter index is never poisoned")
            .replays
            .get(original)
            .cloned()
            .unwrap_or_default()
    }

    /// The ids of every execution matching `filter` whose first event is at
    /// or below `upto_seq`, oldest first.
    pub fn ids(&self, filter: &Filter, upto_seq: u64) -> Vec<ExecutionId> {
        let order = self
            .order
            .read()
            .expect("the order index is never poisoned");
        order
            .range(..=upto_seq)
            .filter(|(_, id)| {
                self.executions
                    .get(*id)
                    .is_some_and(|e| filter.matches(&e.state))
            })
            .map(|(_, id)| id.clone())
            .collect()
    }
}

fn replay_of(execution: &ExecutionId, spec: &runlog_events::TaskSpec) -> Replay {
    Replay {
        id: execution.clone(),
        operation: spec.labels.get(OPERATION_LABEL).cloned(),
    }
}

#[cfg(test)]
mod dead_letter_tests {
    use super::*;
    use runlog_events::TaskSpec;
    use runlog_events::decider::{self, Command};
    use runlog_events::event::{DeadLettered, Submitted};
    use runlog_events::spec::TaskError;

    fn event(id: &ExecutionId, attempt: u32, event: Event) -> Envelope {
        Envelope::new(id.clone(), attempt, Utc::now(), "/test", event)
    }

    #[test]
    fn dead_letters_and_their_replays_are_indexed_and_survive_a_snapshot() {
        let projection = Projection::new();
        let original = ExecutionId::new("orig").unwrap();
        let mut spec = TaskSpec::new("shell");
        spec.labels.insert("team".into(), "infra".into());
        // The real life of a dead letter, through the core's rules.
        let mut state = ExecutionState::default();
        let mut seq = 0;
        for command in [
            Command::Submit { spec: spec.clone() },
            Command::Enqueue,
            Command::Claim {
                worker: "w".into(),
                redelivered: false,
            },
            Command::Fail {
                attempt: 1,
                error: TaskError::new(ErrorClass::Permission, "denied"),
            },
            Command::ResolveFailure { jitter: 0.0 },
        ] {
            for fact in decider::decide(&command, &state, Utc::now()).unwrap() {
                let envelope = event(&original, fact.attempt, fact.event);
                seq += 1;
                projection.apply(seq, &envelope);
                state = decider::evolve(state, &envelope);
            }
        }
        assert_eq!(state.status, Status::DeadLettered);
        let replay = ExecutionId::new("again").unwrap();
        let mut again = spec.clone();
        again.retry_of = Some(original.clone());
        again.labels.insert(OPERATION_LABEL.into(), "op1".into());
        projection.apply(
            seq + 1,
            &event(&replay, 0, Event::Submitted(Submitted { spec: again })),
        );

        let check = |p: &Projection| {
            let view = p.dead_letter(&original).expect("indexed");
            assert_eq!(view.letter.reason, DeadLetterReason::Permanent);
            assert_eq!(view.letter.class, Some(ErrorClass::Permission));
            assert_eq!(
                view.replays,
                vec![Replay {
                    id: replay.clone(),
                    operation: Some("op1".into())
                }]
            );
            let filter = DeadLetterFilter {
                replayed: Some(false),
                ..Default::default()
            };
            assert!(p.dead_letter_ids(&filter).is_empty());
            let filter = DeadLetterFilter {
                class: Some(ErrorClass::Network),
                ..Default::default()
            };
            assert!(p.dead_letters(&filter, None, 10).items.is_empty());
        };
        check(&projection);
        let restored = Projection::new();
        for (id, entry) in projection.entries() {
            restored.restore(id, entry);
        }
        check(&restored);
    }

    #[test]
    fn every_reason_is_kept_in_the_state() {
        for reason in [
            DeadLetterReason::AttemptsExhausted,
            DeadLetterReason::Permanent,
            DeadLetterReason::MaxDeliveries,
        ] {
            let id = ExecutionId::new("x").unwrap();
            let mut state = decider::evolve(
                ExecutionState::default(),
                &event(
                    &id,
                    0,
                    Event::Submitted(Submitted {
                        spec: TaskSpec::new("k"),
                    }),
                ),
            );
            state = decider::evolve(
                state,
                &event(
                    &id,
                    0,
                    Event::DeadLettered(DeadLettered {
                        reason,
                        errors: vec![],
                    }),
                ),
            );
            assert_eq!(state.status, Status::DeadLettered);
            assert_eq!(state.dead_letter_reason, Some(reason));
        }
    }
}
