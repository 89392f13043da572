//! Envelope ⇄ NATS message (headers + body).
//!
//! The envelope travels as headers of the CloudEvents 1.0 NATS binding
//! (binary content mode); the body is the event's data, JSON or MessagePack
//! as `Content-Type` says. Rust components write MessagePack (maps with field
//! names, so every language can read it); both formats decode.
//!
//! Decoding takes untrusted bytes and never panics: every way a message can
//! be wrong has its own [`DecodeErrorKind`].
//!
//! # Examples
//! ```
//! use runlog_events::codec::{self, Format, Limits};
//! use runlog_events::{Envelope, Event, ExecutionId, event::Started};
//!
//! let env = Envelope::new(
//!     ExecutionId::generate(),
//!     1,
//!     chrono::Utc::now(),
//!     "/runlog/worker/w1",
//!     Event::Started(Started { worker: "w1".into(), deadline: None }),
//! );
//! let (headers, body) = codec::encode(&env, Format::MessagePack).unwrap();
//! let back = codec::decode(&headers, &body, &Limits::default()).unwrap();
//! assert_eq!(back, env);
//! ```

use std::fmt;

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::envelope::{Envelope, TraceParent};
use crate::event::{Event, EventType};
use crate::id::ExecutionId;

/// Header names of the CloudEvents NATS binding, and runlog's extensions.
pub mod header {
    /// CloudEvents spec version; always `1.0`.
    pub const SPEC_VERSION: &str = "ce-specversion";
    /// Event id (UUIDv7).
    pub const ID: &str = "ce-id";
    /// Event type, `runlog.execution.<type>`.
    pub const TYPE: &str = "ce-type";
    /// Producer of the event.
    pub const SOURCE: &str = "ce-source";
    /// RFC 3339 time of the event.
    pub const TIME: &str = "ce-time";
    /// Execution id.
    pub const SUBJECT: &str = "ce-subject";
    /// Attempt number (extension attribute); 0 when absent.
    pub const ATTEMPT: &str = "ce-attempt";
    /// Correlation id (extension attribute).
    pub const CORRELATION_ID: &str = "ce-correlationid";
    /// W3C trace context (CloudEvents distributed-tracing extension).
    pub const TRACEPARENT: &str = "ce-traceparent";
    /// `application/json` or `application/msgpack`; JSON when absent.
    pub const CONTENT_TYPE: &str = "Content-Type";
    /// JetStream de-duplication id.
    pub const MSG_ID: &str = "Nats-Msg-Id";
}

/// The CloudEvents version runlog speaks.
pub const SPEC_VERSION: &str = "1.0";
/// Content type of JSON bodies.
pub const JSON: &str = "application/json";
/// Content type of MessagePack bodies.
pub const MSGPACK: &str = "application/msgpack";
/// Longest accepted value of a free-form header (source, correlation id).
pub const MAX_HEADER_VALUE: usize = 1024;

/// Body encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `application/json`.
    Json,
    /// `application/msgpack`.
    MessagePack,
}

impl Format {
    /// The `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => JSON,
            Format::MessagePack => MSGPACK,
        }
    }

    fn from_content_type(v: &str) -> Option<Self> {
        let mime = v.split(';').next().unwrap_or("").trim();
        match mime.to_ascii_lowercase().as_str() {
            JSON | "application/cloudevents+json" => Some(Format::Json),
            MSGPACK | "application/x-msgpack" | "application/vnd.msgpack" => {
                Some(Format::MessagePack)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Json => "JSON",
            Format::MessagePack => "MessagePack",
        })
    }
}

/// Size limits applied while decoding untrusted messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted body, in bytes.
    pub max_payload: usize,
}

/// The default body limit: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// What kind of problem a [`DecodeError`] is, for callers that branch on it
/// (metrics, `rejected` reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeErrorKind {
    /// The body is larger than [`Limits::max_payload`].
    TooLarge,
    /// A required header is absent.
    MissingHeader,
    /// A header is present but malformed.
    InvalidHeader,
    /// `ce-type` names no runlog event type.
    UnknownEventType,
    /// `Content-Type` is neither JSON nor MessagePack.
    UnsupportedContentType,
    /// The body ends in the middle of a value.
    Truncated,
    /// The body is not valid for its format or event type.
    InvalidBody,
}

/// Why a message could not be decoded into an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body is too large.
    #[error("body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Body size.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// A required header is absent.
    #[error("missing required header {0}")]
    MissingHeader(&'static str),
    /// A header is malformed.
    #[error("header {name} is invalid: {reason}")]
    InvalidHeader {
        /// Header name.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Unknown event type.
    #[error("unknown event type {0:?} (expected runlog.execution.<type>)")]
    UnknownEventType(String),
    /// Unsupported content type.
    #[error("unsupported content type {0:?}: use application/json or application/msgpack")]
    UnsupportedContentType(String),
    /// The body ends early.
    #[error("{format} body of a {event_type} event is truncated")]
    Truncated {
        /// Body format.
        format: Format,
        /// The event type the body was read as.
        event_type: EventType,
    },
    /// The body does not match its event type's schema.
    #[error("{format} body of a {event_type} event is invalid: {reason}")]
    InvalidBody {
        /// Body format.
        format: Format,
        /// The event type the body was read as.
        event_type: EventType,
        /// The parser's explanation.
        reason: String,
    },
}

impl DecodeError {
    /// The kind of this error.
    pub fn kind(&self) -> DecodeErrorKind {
        match self {
            DecodeError::TooLarge { .. } => DecodeErrorKind::TooLarge,
            DecodeError::MissingHeader(_) => DecodeErrorKind::MissingHeader,
            DecodeError::InvalidHeader { .. } => DecodeErrorKind::InvalidHeader,
            DecodeError::UnknownEventType(_) => DecodeErrorKind::UnknownEventType,
            DecodeError::UnsupportedContentType(_) => DecodeErrorKind::UnsupportedContentType,
            DecodeError::Truncated { .. } => DecodeErrorKind::Truncated,
            DecodeError::InvalidBody { .. } => DecodeErrorKind::InvalidBody,
        }
    }
}

/// Why an envelope could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A value would break the header syntax (a newline) or is too long.
    #[error("header {name} cannot carry this value: {reason}")]
    InvalidHeader {
        /// Header name.
        name: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The serializer failed (a map with non-string keys, say).
    #[error("cannot serialize the {event_type} body: {reason}")]
    Body {
        /// The event type.
        event_type: EventType,
        /// The serializer's explanation.
        reason: String,
    },
}

/// Encodes `envelope` as NATS headers and a body in `format`.
pub fn encode(envelope: &Envelope, format: Format) -> Result<(HeaderMap, Bytes), EncodeError> {
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: &str| -> Result<(), EncodeError> {
        if value.len() > MAX_HEADER_VALUE {
            return Err(EncodeError::InvalidHeader {
                name,
                reason: "longer than 1024 bytes",
            });
        }
        let value =
            value
                .parse::<async_nats::HeaderValue>()
                .map_err(|_| EncodeError::InvalidHeader {
                    name,
                    reason: "contains a line break",
                })?;
        headers.insert(name, value);
        Ok(())
    };
    let ty = envelope.event_type();
    put(header::SPEC_VERSION, SPEC_VERSION)?;
    put(header::ID, &envelope.id.to_string())?;
    put(header::TYPE, &ty.ce_type())?;
    put(header::SOURCE, &envelope.source)?;
    put(
        header::TIME,
        &envelope.time.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    )?;
    put(header::SUBJECT, envelope.execution.as_str())?;
    put(header::ATTEMPT, &envelope.attempt.to_string())?;
    if let Some(c) = &envelope.correlation_id {
        put(header::CORRELATION_ID, c)?;
    }
    if let Some(t) = &envelope.traceparent {
        put(header::TRACEPARENT, t.as_str())?;
    }
    put(header::CONTENT_TYPE, format.content_type())?;
    put(header::MSG_ID, &envelope.msg_id())?;
    let body = encode_body(&envelope.event, format)?;
    Ok((headers, body))
}

/// Encodes only the event's data, as it appears in a message body.
pub fn encode_body(event: &Event, format: Format) -> Result<Bytes, EncodeError> {
    fn ser<T: Serialize>(v: &T, format: Format, ty: EventType) -> Result<Vec<u8>, EncodeError> {
        let err = |reason: String| EncodeError::Body {
            event_type: ty,
            reason,
        };
        match format {
            Format::Json => serde_json::to_vec(v).map_err(|e| err(e.to_string())),
            Format::MessagePack => rmp_serde::to_vec_named(v).map_err(|e| err(e.to_string())),
        }
    }
    let ty = event.event_type();
    let bytes = match event {
        Event::Submitted(b) => ser(b, format, ty),
        Event::Queued(b) => ser(b, format, ty),
        Event::Started(b) => ser(b, format, ty),
        Event::Progress(b) => ser(b, format, ty),
        Event::Log(b) => ser(b, format, ty),
        Event::Heartbeat(b) => ser(b, format, ty),
        Event::Succeeded(b) => ser(b, format, ty),
        Event::Failed(b) => ser(b, format, ty),
        Event::RetryScheduled(b) => ser(b, format, ty),
        Event::CancelRequested(b) => ser(b, format, ty),
        Event::Cancelled(b) => ser(b, format, ty),
        Event::TimedOut(b) => ser(b, format, ty),
        Event::AttemptLost(b) => ser(b, format, ty),
        Event::DeadLettered(b) => ser(b, format, ty),
        Event::Rejected(b) => ser(b, format, ty),
    }?;
    Ok(Bytes::from(bytes))
}

/// Decodes a message (headers and body) into an [`Envelope`].
pub fn decode(headers: &HeaderMap, body: &[u8], limits: &Limits) -> Result<Envelope, DecodeError> {
    if body.len() > limits.max_payload {
        return Err(DecodeError::TooLarge {
            size: body.len(),
            limit: limits.max_payload,
        });
    }
    let spec = required(headers, header::SPEC_VERSION)?;
    if spec != SPEC_VERSION {
        return Err(invalid(
            header::SPEC_VERSION,
            format!("expected 1.0, got {spec:?}"),
        ));
    }
    let ce_type = required(headers, header::TYPE)?;
    let event_type = EventType::from_ce_type(ce_type)
        .ok_or_else(|| DecodeError::UnknownEventType(truncate(ce_type)))?;
    let id = required(headers, header::ID)?;
    let id = uuid::Uuid::parse_str(id).map_err(|e| invalid(header::ID, e.to_string()))?;
    let source = required(headers, header::SOURCE)?;
    if source.is_empty() || source.len() > MAX_HEADER_VALUE {
        return Err(invalid(header::SOURCE, "must be 1 to 1024 bytes".into()));
    }
    let time = required(headers, header::TIME)?;
    let time = DateTime::parse_from_rfc3339(time)
        .map_err(|e| invalid(header::TIME, format!("not RFC 3339: {e}")))?
        .with_timezone(&Utc);
    // RFC 3339 has four-digit years: a time that leaves them in UTC could
    // never be written back.
    if !(1..=9999).contains(&time.year()) {
        return Err(invalid(
            header::TIME,
            "the year in UTC must be 1 to 9999".into(),
        ));
    }
    let execution = required(headers, header::SUBJECT)?;
    let execution =
        ExecutionId::new(execution).map_err(|e| invalid(header::SUBJECT, e.to_string()))?;
    let attempt = match optional(headers, header::ATTEMPT) {
        None => 0,
        Some(v) => v.parse::<u32>().map_err(|_| {
            invalid(
                header::ATTEMPT,
                format!("not an unsigned number: {}", truncate(v)),
            )
        })?,
    };
    let correlation_id = match optional(headers, header::CORRELATION_ID) {
        Some(c) if c.len() > MAX_HEADER_VALUE => {
            return Err(invalid(
                header::CORRELATION_ID,
                "longer than 1024 bytes".into(),
            ));
        }
        other => other.map(str::to_owned),
    };
    let traceparent = optional(headers, header::TRACEPARENT)
        .map(|t| t.parse::<TraceParent>())
        .transpose()
        .map_err(|e| invalid(header::TRACEPARENT, e.to_string()))?;
    let format = match optional(headers, header::CONTENT_TYPE) {
        None => Format::Json,
        Some(ct) => Format::from_content_type(ct)
            .ok_or_else(|| DecodeError::UnsupportedContentType(truncate(ct)))?,
    };
    let event = decode_body(event_type, format, body)?;
    Ok(Envelope {
        id,
        execution,
        attempt,
        time,
        source: source.to_owned(),
        correlation_id,
        traceparent,
        event,
    })
}

/// Decodes an event body of a known type and format.
pub fn decode_body(
    event_type: EventType,
    format: Format,
    body: &[u8],
) -> Result<Event, DecodeError> {
    fn de<T: DeserializeOwned>(
        ty: EventType,
        format: Format,
        body: &[u8],
    ) -> Result<T, DecodeError> {
        match format {
            Format::Json => serde_json::from_slice(body).map_err(|e| {
                if e.is_eof() {
                    DecodeError::Truncated {
                        format,
                        event_type: ty,
                    }
                } else {
                    DecodeError::InvalidBody {
                        format,
                        event_type: ty,
                        reason: e.to_string(),
                    }
                }
            }),
            Format::MessagePack => {
                let mut rest = body;
                let mut de = rmp_serde::Deserializer::new(&mut rest);
                // The same nesting bound as serde_json, so a hostile body
                // cannot exhaust the stack.
                de.set_max_depth(128);
                let value = T::deserialize(&mut de).map_err(|e| msgpack_error(e, ty))?;
                if !rest.is_empty() {
                    return Err(DecodeError::InvalidBody {
                        format,
                        event_type: ty,
                        reason: format!("{} trailing bytes", rest.len()),
                    });
                }
                Ok(value)
            }
        }
    }
    use crate::event::EventType as T;
    let event = match event_type {
        T::Submitted => Event::Submitted(de(event_type, format, body)?),
        T::Queued => Event::Queued(de(event_type, format, body)?),
        T::Started => Event::Started(de(event_type, format, body)?),
        T::Progress => Event::Progress(de(event_type, format, body)?),
        T::Log => Event::Log(de(event_type, format, body)?),
        T::Heartbeat => Event::Heartbeat(de(event_type, format, body)?),
        T::Succeeded => Event::Succeeded(de(event_type, format, body)?),
        T::Failed => Event::Failed(de(event_type, format, body)?),
        T::RetryScheduled => Event::RetryScheduled(de(event_type, format, body)?),
        T::CancelRequested => Event::CancelRequested(de(event_type, format, body)?),
        T::Cancelled => Event::Cancelled(de(event_type, format, body)?),
        T::TimedOut => Event::TimedOut(de(event_type, format, body)?),
        T::AttemptLost => Event::AttemptLost(de(event_type, format, body)?),
        T::DeadLettered => Event::DeadLettered(de(event_type, format, body)?),
        T::Rejected => Event::Rejected(de(event_type, format, body)?),
    };
    check_numbers(&event).map_err(|reason| DecodeError::InvalidBody {
        format,
        event_type,
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

fn msgpack_error(e: rmp_serde::decode::Error, event_type: EventType) -> DecodeError {
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

fn find<'a>(headers: &'a HeaderMap, name: &'static str) -> Option<&'a str> {
    if let Some(v) = headers.get(name) {
        return Some(v.as_str());
    }
    // Header names are case-insensitive in the CloudEvents binding; accept
    // any spelling from other clients.
    headers
        .iter()
        .find(|(k, _)| AsRef::<str>::as_ref(*k).eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .map(|v| v.as_str())
}

fn required<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, DecodeError> {
    find(headers, name).ok_or(DecodeError::MissingHeader(name))
}

fn optional<'a>(headers: &'a HeaderMap, name: &'static str) -> Option<&'a str> {
    find(headers, name)
}

fn invalid(name: &'static str, reason: String) -> DecodeError {
    DecodeError::InvalidHeader { name, reason }
}

/// Error messages quote at most 64 bytes of untrusted input.
fn truncate(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
