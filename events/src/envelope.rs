//! The envelope: who, when and which attempt, around every event.
//!
//! On the wire the envelope is a set of NATS headers that follow the
//! CloudEvents 1.0 NATS binding (see [`crate::codec`]); in memory it is this
//! struct.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{Event, EventType};
use crate::id::ExecutionId;

/// One event of one execution, with its metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope {
    /// Unique event id (UUIDv7), the CloudEvents `id`.
    pub id: Uuid,
    /// The execution the event belongs to, the CloudEvents `subject`.
    pub execution: ExecutionId,
    /// The attempt the event concerns (0 before the first attempt).
    pub attempt: u32,
    /// When the event was recorded.
    pub time: DateTime<Utc>,
    /// The component that recorded it (`/runlog/engine/host-1`).
    #[schemars(length(min = 1, max = 1024))]
    pub source: String,
    /// Groups executions that belong together (a workflow, a request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub correlation_id: Option<String>,
    /// W3C trace context of the operation that caused the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<TraceParent>,
    /// The event itself.
    #[serde(flatten)]
    pub event: Event,
}

impl Envelope {
    /// Wraps `event` with a fresh UUIDv7 id.
    pub fn new(
        execution: ExecutionId,
        attempt: u32,
        time: DateTime<Utc>,
        source: impl Into<String>,
        event: Event,
    ) -> Self {
        Envelope {
            id: Uuid::now_v7(),
            execution,
            attempt,
            time,
            source: source.into(),
            correlation_id: None,
            traceparent: None,
            event,
        }
    }

    /// The event's type.
    pub fn event_type(&self) -> EventType {
        self.event.event_type()
    }

    /// The `Nats-Msg-Id` of this event.
    ///
    /// Lifecycle events happen at most once per type and attempt, so their id
    /// is `<exec>:<type>:<attempt>` and a retried publish is dropped by the
    /// server's de-duplication. A claim also names its worker
    /// (`<exec>:started:<attempt>:<worker>`): two workers racing for one
    /// attempt are different facts, and on a replicated stream the loser
    /// must see a conflict, not a "duplicate" of the winner's claim.
    /// Telemetry (progress, log, heartbeat) happens many times per attempt
    /// and uses the event id.
    pub fn msg_id(&self) -> String {
        let ty = self.event_type();
        match &self.event {
            Event::Started(started) => format!(
                "{}:{ty}:{}:{}",
                self.execution, self.attempt, started.worker
            ),
            // An attempt's deadline and the execution's deadline can both
            // pass at one attempt: two facts, two ids.
            Event::TimedOut(t) if t.scope == crate::event::TimeoutScope::Execution => {
                format!("{}:{ty}:{}:execution", self.execution, self.attempt)
            }
            _ if ty.is_lifecycle() => format!("{}:{ty}:{}", self.execution, self.attempt),
            _ => self.id.to_string(),
        }
    }
}

/// A W3C `traceparent` value (`00-<trace-id>-<parent-id>-<flags>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct TraceParent(
    #[schemars(regex(pattern = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"))] String,
);

/// A `traceparent` that does not follow the W3C format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("traceparent must look like 00-<32 hex>-<16 hex>-<2 hex>")]
pub struct TraceParentError;

impl TraceParent {
    /// The value as sent in the header.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trace id: the 32 hex digits after the version.
    pub fn trace_id(&self) -> &str {
        self.0.get(3..35).unwrap_or_default()
    }

    /// The parent id: the 16 hex digits of the span that caused the event.
    pub fn span_id(&self) -> &str {
        self.0.get(36..52).unwrap_or_default()
    }

    /// Whether the caller asked for the trace to be recorded (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.0
            .get(53..55)
            .and_then(|f| u8::from_str_radix(f, 16).ok())
            .is_some_and(|f| f & 1 == 1)
    }

    /// A new trace, sampled, whose parent is a random span id (the span of
    /// whoever starts the trace records that id).
    pub fn random() -> Self {
        let bytes: [u8; 24] = rand::random();
        let mut trace = hex(&bytes[..16]);
        if bytes[..16].iter().all(|b| *b == 0) {
            trace.replace_range(31.., "1");
        }
        TraceParent(format!("00-{trace}-{}-01", random_span_id()))
    }

    /// The same trace and flags with `span_id` (16 hex digits) as parent.
    pub fn with_span(&self, span_id: &str) -> Self {
        let flags = self.0.get(53..55).unwrap_or("01");
        TraceParent(format!("00-{}-{span_id}-{flags}", self.trace_id()))
    }

    /// The id of the span of `execution`, a child of this context: the
    /// first 8 bytes of SHA-256 over `runlog/execution/<trace id>/<parent
    /// id>/<execution>`, so every component derives it from the events
    /// alone (docs/protocol.md, Traces).
    pub fn execution_span_id(&self, execution: &ExecutionId) -> String {
        derived(&[
            "runlog/execution",
            self.trace_id(),
            self.span_id(),
            execution.as_str(),
        ])
    }

    /// The trace of workflow execution `workflow`: a trace id and the
    /// workflow's span id, both derived from its id (SHA-256 over
    /// `runlog/workflow-trace/<id>`, first 16 bytes, and over
    /// `runlog/workflow/<id>`, first 8), so its node runs hang under its
    /// span without the id being stored anywhere. Sampled.
    pub fn of_workflow(workflow: &ExecutionId) -> Self {
        let mut trace = derived_bytes(&["runlog/workflow-trace", workflow.as_str()], 16);
        if trace.bytes().all(|b| b == b'0') {
            trace.replace_range(31.., "1");
        }
        let span = derived(&["runlog/workflow", workflow.as_str()]);
        TraceParent(format!("00-{trace}-{span}-01"))
    }

    /// The context of workflow execution `workflow` started under
    /// `caller` (a caller's `traceparent`, or its parent workflow's
    /// context): the caller's trace and flags, the workflow span's id
    /// derived as [`of_workflow`](Self::of_workflow) derives it. Without a
    /// caller, [`of_workflow`](Self::of_workflow): a trace of its own.
    pub fn of_workflow_under(caller: Option<&TraceParent>, workflow: &ExecutionId) -> Self {
        match caller {
            Some(caller) => caller.with_span(&derived(&["runlog/workflow", workflow.as_str()])),
            None => Self::of_workflow(workflow),
        }
    }

    /// The id of the span of attempt `attempt` of `execution`, a child of
    /// the execution's span: SHA-256 over `runlog/attempt/<trace
    /// id>/<execution span id>/<attempt>`, first 8 bytes.
    pub fn attempt_span_id(&self, execution: &ExecutionId, attempt: u32) -> String {
        derived(&[
            "runlog/attempt",
            self.trace_id(),
            &self.execution_span_id(execution),
            &attempt.to_string(),
        ])
    }
}

/// 16 random hex digits, never all zero.
pub fn random_span_id() -> String {
    let mut bytes: [u8; 8] = rand::random();
    if bytes == [0; 8] {
        bytes[7] = 1;
    }
    hex(&bytes)
}

fn derived(parts: &[&str]) -> String {
    let id = derived_bytes(parts, 8);
    if id.bytes().all(|b| b == b'0') {
        return "0000000000000001".to_owned();
    }
    id
}

/// The first `n` bytes of SHA-256 over `parts` joined by `/`, in hex.
fn derived_bytes(parts: &[&str], n: usize) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(parts.join("/").as_bytes());
    hex(&digest[..n])
}

/// `bytes` as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _infallible = write!(s, "{b:02x}");
            s
        })
}

impl FromStr for TraceParent {
    type Err = TraceParentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('-').collect();
        let hex = |p: &str, n: usize| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let valid = parts.len() == 4
            && hex(parts[0], 2)
            && parts[0] != "ff"
            && hex(parts[1], 32)
            && parts[1].bytes().any(|b| b != b'0')
            && hex(parts[2], 16)
            && parts[2].bytes().any(|b| b != b'0')
            && hex(parts[3], 2);
        if valid {
            Ok(TraceParent(s.to_owned()))
        } else {
            Err(TraceParentError)
        }
    }
}

impl<'de> Deserialize<'de> for TraceParent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_span_ids_are_stable_and_distinct() {
        let caller: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap();
        assert_eq!(caller.span_id(), "00f067aa0ba902b7");
        assert!(caller.sampled());
        let a = ExecutionId::new("a").unwrap();
        let b = ExecutionId::new("b").unwrap();
        let span = caller.execution_span_id(&a);
        assert_eq!(span.len(), 16);
        assert_eq!(span, caller.execution_span_id(&a));
        assert_ne!(span, caller.execution_span_id(&b));
        assert_ne!(caller.attempt_span_id(&a, 1), caller.attempt_span_id(&a, 2));
        // The value other languages compute: sha256 of the joined parts.
        assert_eq!(
            span,
            super::derived(&[
                "runlog/execution",
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "00f067aa0ba902b7",
                "a"
            ])
        );
        let child = caller.with_span(&span);
        assert_eq!(child.trace_id(), caller.trace_id());
        assert_eq!(child.span_id(), span);
        let workflow = TraceParent::of_workflow(&a);
        assert!(
            workflow.as_str().parse::<TraceParent>().is_ok(),
            "{workflow}"
        );
        assert_eq!(workflow, TraceParent::of_workflow(&a));
        assert_ne!(workflow.trace_id(), TraceParent::of_workflow(&b).trace_id());
        let fresh = TraceParent::random();
        assert!(fresh.as_str().parse::<TraceParent>().is_ok(), "{fresh}");
        assert!(fresh.sampled());
        let unsampled: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
            .parse()
            .unwrap();
        assert!(!unsampled.sampled());
        assert!(!unsampled.with_span(&span).sampled());
    }

    #[test]
    fn traceparent_follows_w3c() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(ok.parse::<TraceParent>().unwrap().as_str(), ok);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(bad.parse::<TraceParent>().is_err(), "{bad}");
        }
    }
}
