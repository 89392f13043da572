//! Structured mode: the whole event, attributes and `data`, is one object in
//! the body (the CloudEvents JSON event format, and the same object in
//! MessagePack).
//!
//! ```json
//! {"specversion": "1.0", "id": "0193…", "type": "runlog.execution.started",
//!  "source": "/runlog/worker/w1", "subject": "<execution>", "time": "2026-11-23T12:00:00Z",
//!  "attempt": 1, "data": {"worker": "w1"}}
//! ```
//!
//! Decoding reads the object in one pass: `data` is parsed straight into its
//! event type when `type` came first (runlog writes it first); otherwise it
//! is held as a JSON value until the type is known. A bad attribute does not
//! stop the pass (the object must still be well-formed); the first one is
//! reported with its own [`DecodeError`] kind.

use std::cell::Cell;
use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::attributes;
use super::data::{self, Data, DataOf};
use super::{DecodeError, EncodeError, Format, MAX_HEADER_VALUE, SPEC_VERSION};
use crate::envelope::{Envelope, TraceParent};
use crate::event::{Event, EventType};
use crate::id::ExecutionId;

#[derive(Serialize)]
struct Out<'a> {
    specversion: &'static str,
    id: uuid::fmt::Hyphenated,
    #[serde(rename = "type")]
    ty: String,
    source: &'a str,
    subject: &'a str,
    time: String,
    attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlationid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    data: Data<'a>,
}

/// Encodes `envelope` as a structured-mode body in `format`.
pub fn encode(envelope: &Envelope, format: Format) -> Result<Bytes, EncodeError> {
    check_text("source", &envelope.source)?;
    if let Some(c) = &envelope.correlation_id {
        check_text("correlationid", c)?;
    }
    let ty = envelope.event_type();
    let out = Out {
        specversion: SPEC_VERSION,
        id: envelope.id.hyphenated(),
        ty: ty.ce_type(),
        source: &envelope.source,
        subject: envelope.execution.as_str(),
        time: envelope.time.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        attempt: envelope.attempt,
        correlationid: envelope.correlation_id.as_deref(),
        traceparent: envelope.traceparent.as_ref().map(TraceParent::as_str),
        data: Data(&envelope.event),
    };
    data::to_vec(&out, format, ty).map(Bytes::from)
}

/// The same rule in both modes, so every event can be written either way:
/// at most 1024 bytes and no line break.
fn check_text(name: &'static str, value: &str) -> Result<(), EncodeError> {
    if value.len() > MAX_HEADER_VALUE {
        return Err(EncodeError::InvalidAttribute {
            name,
            reason: "longer than 1024 bytes",
        });
    }
    if value.contains(['\r', '\n']) {
        return Err(EncodeError::InvalidAttribute {
            name,
            reason: "contains a line break",
        });
    }
    Ok(())
}

/// Decodes a structured-mode body in `format` (the caller checked its size).
pub(super) fn decode(format: Format, body: &[u8]) -> Result<Envelope, DecodeError> {
    let seen = Cell::new(None);
    let whole = Whole {
        format,
        seen: &seen,
    };
    let envelope = match data::from_slice(whole, format, body, None) {
        Ok(outcome) => outcome?,
        Err(mut e) => {
            if let DecodeError::Truncated { event_type, .. }
            | DecodeError::InvalidBody { event_type, .. } = &mut e
            {
                *event_type = seen.get();
            }
            return Err(e);
        }
    };
    let event = data::checked(envelope.event, format)?;
    Ok(Envelope { event, ..envelope })
}

/// The members of a structured event that runlog reads; others (extension
/// attributes of other producers) are skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Member {
    Specversion,
    Id,
    Type,
    Source,
    Subject,
    Time,
    Attempt,
    Correlationid,
    Traceparent,
    Data,
    #[serde(other)]
    Other,
}

/// The whole object. Its value is itself a result: a well-formed object with
/// a bad attribute is a [`DecodeError`] of that attribute, not a syntax
/// error.
struct Whole<'a> {
    format: Format,
    /// The event type once read, for the error of a `data` that does not
    /// parse.
    seen: &'a Cell<Option<EventType>>,
}

impl<'de> DeserializeSeed<'de> for Whole<'_> {
    type Value = Result<Envelope, DecodeError>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

/// What the pass has read so far.
#[derive(Default)]
struct Read {
    specversion: bool,
    id: Option<uuid::Uuid>,
    ty: Option<EventType>,
    source: Option<String>,
    subject: Option<ExecutionId>,
    time: Option<DateTime<Utc>>,
    attempt: Option<u32>,
    correlation_id: Option<String>,
    traceparent: Option<TraceParent>,
    data: Option<Event>,
    early_data: Option<serde_json::Value>,
    /// The first bad attribute.
    problem: Option<DecodeError>,
}

impl Read {
    fn keep<T>(
        &mut self,
        slot: fn(&mut Read) -> &mut Option<T>,
        name: &'static str,
        value: Result<T, DecodeError>,
    ) {
        if self.problem.is_some() {
            return;
        }
        match value {
            Ok(_) if slot(self).is_some() => {
                self.problem = Some(attributes::invalid(name, "appears twice".into()));
            }
            Ok(v) => *slot(self) = Some(v),
            Err(e) => self.problem = Some(e),
        }
    }

    fn finish(self, format: Format) -> Result<Envelope, DecodeError> {
        if let Some(problem) = self.problem {
            return Err(problem);
        }
        let missing = DecodeError::MissingAttribute;
        if !self.specversion {
            return Err(missing("specversion"));
        }
        let ty = self.ty.ok_or(missing("type"))?;
        let event = match (self.data, self.early_data) {
            (Some(event), _) => event,
            (None, Some(value)) => data::from_value(ty, format, value)?,
            // No data: an event whose fields are all optional.
            (None, None) => data::from_value(ty, format, serde_json::json!({}))?,
        };
        Ok(Envelope {
            id: self.id.ok_or(missing("id"))?,
            execution: self.subject.ok_or(missing("subject"))?,
            attempt: self.attempt.unwrap_or(0),
            time: self.time.ok_or(missing("time"))?,
            source: self.source.ok_or(missing("source"))?,
            correlation_id: self.correlation_id,
            traceparent: self.traceparent,
            event,
        })
    }
}

impl<'de> Visitor<'de> for Whole<'_> {
    type Value = Result<Envelope, DecodeError>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CloudEvents object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut read = Read::default();
        while let Some(member) = map.next_key::<Member>()? {
            if read.problem.is_some() {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            match member {
                Member::Specversion => {
                    let v = map.next_value_seed(Text(|s: &str| {
                        attributes::spec_version("specversion", s)
                    }))?;
                    match v {
                        Ok(()) if read.specversion => {
                            read.problem =
                                Some(attributes::invalid("specversion", "appears twice".into()));
                        }
                        Ok(()) => read.specversion = true,
                        Err(e) => read.problem = Some(e),
                    }
                }
                Member::Id => {
                    let v = map.next_value_seed(Text(|s: &str| attributes::id("id", s)))?;
                    read.keep(|r| &mut r.id, "id", v);
                }
                Member::Type => {
                    let v = map.next_value_seed(Text(attributes::event_type))?;
                    self.seen.set(v.as_ref().ok().copied());
                    read.keep(|r| &mut r.ty, "type", v);
                }
                Member::Source => {
                    let v = map.next_value_seed(Text(|s: &str| attributes::source("source", s)))?;
                    read.keep(|r| &mut r.source, "source", v);
                }
                Member::Subject => {
                    let v =
                        map.next_value_seed(Text(|s: &str| attributes::subject("subject", s)))?;
                    read.keep(|r| &mut r.subject, "subject", v);
                }
                Member::Time => {
                    let v = map.next_value_seed(Text(|s: &str| attributes::time("time", s)))?;
                    read.keep(|r| &mut r.time, "time", v);
                }
                Member::Attempt => {
                    let v = map.next_value_seed(Attempt)?;
                    read.keep(|r| &mut r.attempt, "attempt", v);
                }
                Member::Correlationid => {
                    let v = map.next_value_seed(Text(|s: &str| {
                        attributes::correlation_id("correlationid", s)
                    }))?;
                    read.keep(|r| &mut r.correlation_id, "correlationid", v);
                }
                Member::Traceparent => {
                    let v = map.next_value_seed(Text(|s: &str| {
                        attributes::traceparent("traceparent", s)
                    }))?;
                    read.keep(|r| &mut r.traceparent, "traceparent", v);
                }
                Member::Data if read.data.is_some() || read.early_data.is_some() => {
                    map.next_value::<IgnoredAny>()?;
                    read.problem = Some(attributes::invalid("data", "appears twice".into()));
                }
                Member::Data => match read.ty {
                    Some(ty) => read.data = Some(map.next_value_seed(DataOf(ty))?),
                    None => read.early_data = Some(map.next_value()?),
                },
                Member::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(read.finish(self.format))
    }
}

/// A string member parsed in place (no copy of the text).
struct Text<F>(F);

impl<'de, T, F: FnOnce(&str) -> Result<T, DecodeError>> DeserializeSeed<'de> for Text<F> {
    type Value = Result<T, DecodeError>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, T, F: FnOnce(&str) -> Result<T, DecodeError>> Visitor<'de> for Text<F> {
    type Value = Result<T, DecodeError>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok((self.0)(v))
    }
}

/// The attempt: a number, or a decimal string as in binary mode.
struct Attempt;

impl<'de> DeserializeSeed<'de> for Attempt {
    type Value = Result<u32, DecodeError>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Attempt {
    type Value = Result<u32, DecodeError>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an unsigned 32-bit number")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(u32::try_from(v)
            .map_err(|_| attributes::invalid("attempt", format!("{v} is larger than 2^32-1"))))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(u32::try_from(v)
            .map_err(|_| attributes::invalid("attempt", format!("{v} is not an unsigned number"))))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(attributes::attempt("attempt", v))
    }
}
