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
