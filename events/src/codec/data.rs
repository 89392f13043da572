//! An event's `data`: the body in binary mode, the `data` member in
//! structured mode. One serializer and one type-directed deserializer serve
//! both.

use bytes::Bytes;
use serde::de::DeserializeSeed;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{DecodeError, EncodeError, Format};
use crate::event::{Event, EventType};

/// Serializes the data of an event (without its type tag).
pub(super) struct Data<'a>(pub(super) &'a Event);

impl Serialize for Data<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Event::Submitted(b) => b.serialize(s),
            Event::Queued(b) => b.serialize(s),
            Event::Started(b) => b.serialize(s),
            Event::Progress(b) => b.serialize(s),
            Event::Log(b) => b.serialize(s),
            Event::Heartbeat(b) => b.serialize(s),
            Event::Succeeded(b) => b.serialize(s),
            Event::Failed(b) => b.serialize(s),
            Event::RetryScheduled(b) => b.serialize(s),
            Event::CancelRequested(b) => b.serialize(s),
            Event::Cancelled(b) => b.serialize(s),
            Event::TimedOut(b) => b.serialize(s),
            Event::AttemptLost(b) => b.serialize(s),
            Event::DeadLettered(b) => b.serialize(s),
            Event::Rejected(b) => b.serialize(s),
        }
    }
}

/// Deserializes the data of an event of a known type.
#[derive(Debug, Clone, Copy)]
pub(super) struct DataOf(pub(super) EventType);

impl<'de> DeserializeSeed<'de> for DataOf {
    type Value = Event;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Event, D::Error> {
        use crate::event::EventType as T;
        Ok(match self.0 {
            T::Submitted => Event::Submitted(Deserialize::deserialize(d)?),
            T::Queued => Event::Queued(Deserialize::deserialize(d)?),
            T::Started => Event::Started(Deserialize::deserialize(d)?),
            T::Progress => Event::Progress(Deserialize::deserialize(d)?),
            T::Log => Event::Log(Deserialize::deserialize(d)?),
            T::Heartbeat => Event::Heartbeat(Deserialize::deserialize(d)?),
            T::Succeeded => Event::Succeeded(Deserialize::deserialize(d)?),
            T::Failed => Event::Failed(Deserialize::deserialize(d)?),
            T::RetryScheduled => Event::RetryScheduled(Deserialize::deserialize(d)?),
            T::CancelRequested => Event::CancelRequested(Deserialize::deserialize(d)?),
            T::Cancelled => Event::Cancelled(Deserialize::deserialize(d)?),
            T::TimedOut => Event::TimedOut(Deserialize::deserialize(d)?),
            T::AttemptLost => Event::AttemptLost(Deserialize::deserialize(d)?),
            T::DeadLettered => Event::DeadLettered(Deserialize::deserialize(d)?),
            T::Rejected => Event::Rejected(Deserialize::deserialize(d)?),
        })
    }
}

/// Serializes `value` in `format` (MessagePack as maps with field names).
pub(super) fn to_vec<T: Serialize>(
    value: &T,
    format: Format,
    event_type: EventType,
) -> Result<Vec<u8>, EncodeError> {
    let err = |reason: String| EncodeError::Body { event_type, reason };
    match format {
        Format::Json => serde_json::to_vec(value).map_err(|e| err(e.to_string())),
        Format::MessagePack => rmp_serde::to_vec_named(value).map_err(|e| err(e.to_string())),
    }
}

/// Encodes only the event's data, as it appears in a binary-mode body.
pub fn encode_body(event: &Event, format: Format) -> Result<Bytes, EncodeError> {
    to_vec(&Data(event), format, event.event_type()).map(Bytes::from)
}

/// Decodes the data of an event of a known type and format.
pub fn decode_body(
    event_type: EventType,
    format: Format,
    body: &[u8],
) -> Result<Event, DecodeError> {
    let event = from_slice(DataOf(event_type), format, body, Some(event_type))?;
    checked(event, format)
}

/// Deserializes a whole body with `seed`: no trailing bytes, nesting bounded
/// so a hostile body cannot exhaust the stack.
pub(super) fn from_slice<'de, S: DeserializeSeed<'de>>(
    seed: S,
    format: Format,
    body: &'de [u8],
    event_type: Option<EventType>,
) -> Result<S::Value, DecodeError> {
    match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_slice(body);
            let value = seed
                .deserialize(&mut de)
                .and_then(|v| de.end().map(|()| v))
                .map_err(|e| json_error(e, event_type))?;
            Ok(value)
        }
        Format::MessagePack => {
            let mut rest = body;
            let mut de = rmp_serde::Deserializer::new(&mut rest);
            // The same nesting bound as serde_json.
            de.set_max_depth(128);
            let value = seed
                .deserialize(&mut de)
                .map_err(|e| msgpack_error(e, event_type))?;
            if !rest.is_empty() {
                return Err(DecodeError::InvalidBody {
                    format,
                    event_type,
                    reason: format!("{} trailing bytes", rest.len()),
                });
            }
            Ok(value)
        }
    }
}

/// Decodes data that was read before its type was known (a structured event
/// whose `data` comes before `type`).
pub(super) fn from_value(
    event_type: EventType,
    format: Format,
    value: serde_json::Value,
) -> Result<Event, DecodeError> {
    DataOf(event_type)
        .deserialize(value)
        .map_err(|e| DecodeError::InvalidBody {
            format,
            event_type: Some(event_type),
            reason: e.to_string(),
        })
}

/// Refuses numbers that have no meaning (see [`check_numbers`]).
pub(super) fn checked(event: Event, format: Format) -> Result<Event, DecodeError> {
    check_numbers(&event).map_err(|reason| DecodeError::InvalidBody {
        format,
        event_type: Some(event.event_type()),
        reason: reason.to_owned(),
    })?;
    Ok(event)
}

/// MessagePack can carry NaN and infinities, which JSON cannot: refuse them
/// where a number has a meaning, so every decoded event can be re-encoded.
fn check_numbers(event: &Event) -> Result<(), &'static str> {
    match event {
        Event::Progress(p) if p.percent.is_some_and(|v| !v.is_finite()) => {
            Err("percent must be a finite number")
        }
        Event::Submitted(s) if !s.spec.retry.backoff_multiplier.is_finite() => {
            Err("spec.retry.backoff_multiplier must be a finite number")
        }
        _ => Ok(()),
    }
}

fn json_error(e: serde_json::Error, event_type: Option<EventType>) -> DecodeError {
    if e.is_eof() {
        DecodeError::Truncated {
            format: Format::Json,
            event_type,
        }
    } else {
        DecodeError::InvalidBody {
            format: Format::Json,
            event_type,
            reason: e.to_string(),
        }
    }
}

fn msgpack_error(e: rmp_serde::decode::Error, event_type: Option<EventType>) -> DecodeError {
    use rmp_serde::decode::Error as E;
    let eof = match &e {
        E::InvalidMarkerRead(io) | E::InvalidDataRead(io) => {
            io.kind() == std::io::ErrorKind::UnexpectedEof
        }
        _ => false,
    };
    if eof {
        DecodeError::Truncated {
            format: Format::MessagePack,
            event_type,
        }
    } else {
        DecodeError::InvalidBody {
            format: Format::MessagePack,
            event_type,
            reason: e.to_string(),
        }
    }
}
