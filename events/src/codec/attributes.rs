//! The envelope's attributes, parsed from text the same way in both modes:
//! a header value in binary mode, a string field in structured mode.

use async_nats::HeaderMap;
use chrono::{DateTime, Datelike, Utc};

use super::{DecodeError, MAX_HEADER_VALUE, SPEC_VERSION};
use crate::envelope::TraceParent;
use crate::event::EventType;
use crate::id::ExecutionId;

pub(super) fn spec_version(name: &'static str, v: &str) -> Result<(), DecodeError> {
    if v == SPEC_VERSION {
        Ok(())
    } else {
        Err(invalid(
            name,
            format!("expected 1.0, got {:?}", truncate(v)),
        ))
    }
}

pub(super) fn event_type(v: &str) -> Result<EventType, DecodeError> {
    EventType::from_ce_type(v).ok_or_else(|| DecodeError::UnknownEventType(truncate(v)))
}

pub(super) fn id(name: &'static str, v: &str) -> Result<uuid::Uuid, DecodeError> {
    uuid::Uuid::parse_str(v).map_err(|e| invalid(name, e.to_string()))
}

pub(super) fn source(name: &'static str, v: &str) -> Result<String, DecodeError> {
    if v.is_empty() || v.len() > MAX_HEADER_VALUE {
        return Err(invalid(name, "must be 1 to 1024 bytes".into()));
    }
    Ok(v.to_owned())
}

pub(super) fn time(name: &'static str, v: &str) -> Result<DateTime<Utc>, DecodeError> {
    let time = DateTime::parse_from_rfc3339(v)
        .map_err(|e| invalid(name, format!("not RFC 3339: {e}")))?
        .with_timezone(&Utc);
    // RFC 3339 has four-digit years: a time that leaves them in UTC could
    // never be written back.
    if !(1..=9999).contains(&time.year()) {
        return Err(invalid(name, "the year in UTC must be 1 to 9999".into()));
    }
    Ok(time)
}

pub(super) fn subject(name: &'static str, v: &str) -> Result<ExecutionId, DecodeError> {
    ExecutionId::new(v).map_err(|e| invalid(name, e.to_string()))
}

pub(super) fn attempt(name: &'static str, v: &str) -> Result<u32, DecodeError> {
    v.parse::<u32>()
        .map_err(|_| invalid(name, format!("not an unsigned number: {}", truncate(v))))
}

pub(super) fn correlation_id(name: &'static str, v: &str) -> Result<String, DecodeError> {
    if v.len() > MAX_HEADER_VALUE {
        return Err(invalid(name, "longer than 1024 bytes".into()));
    }
    Ok(v.to_owned())
}

pub(super) fn traceparent(name: &'static str, v: &str) -> Result<TraceParent, DecodeError> {
    v.parse::<TraceParent>()
        .map_err(|e| invalid(name, e.to_string()))
}

pub(super) fn invalid(name: &'static str, reason: String) -> DecodeError {
    DecodeError::InvalidAttribute { name, reason }
}

/// A header's value; names match in any case, as the CloudEvents binding
/// says, so other clients may spell them as they like.
pub(super) fn find<'a>(headers: &'a HeaderMap, name: &'static str) -> Option<&'a str> {
    if let Some(v) = headers.get(name) {
        return Some(v.as_str());
    }
    headers
        .iter()
        .find(|(k, _)| AsRef::<str>::as_ref(*k).eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .map(|v| v.as_str())
}

/// Error messages quote at most 64 bytes of untrusted input.
pub(super) fn truncate(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
