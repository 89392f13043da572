//! Envelope ⇄ NATS message (headers + body), in both modes of the
//! CloudEvents 1.0 NATS binding.
//!
//! - **Structured mode** ([`structured`]), what runlog writes: the whole
//!   event, attributes and `data`, is one JSON or MessagePack object in the
//!   body; `Content-Type` is `application/cloudevents+json` or
//!   `application/cloudevents+msgpack`, and `Nats-Msg-Id` is the only other
//!   header. A message with two headers is delivered and parsed several times
//!   faster than one with eleven, which is what replaying a long log costs.
//! - **Binary mode** ([`binary`]), which every reader also accepts: the
//!   attributes are `ce-*` headers and the body is the event's `data`, JSON
//!   or MessagePack as `Content-Type` says. It is the easiest to write by
//!   hand from another language.
//!
//! Rust components write MessagePack (maps with field names, so every
//! language can read it); both formats decode in both modes.
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
//! assert_eq!(headers.len(), 2); // Content-Type and Nats-Msg-Id
//! let back = codec::decode(&headers, &body, &Limits::default()).unwrap();
//! assert_eq!(back, env);
//!
//! // The same event in binary mode decodes to the same envelope.
//! let (headers, body) = codec::encode_binary(&env, Format::Json).unwrap();
//! assert_eq!(codec::decode(&headers, &body, &Limits::default()).unwrap(), env);
//! ```

mod attributes;
pub mod binary;
mod data;
pub mod structured;

use std::fmt;

use async_nats::HeaderMap;
use bytes::Bytes;

use crate::envelope::Envelope;
use crate::event::EventType;

pub use binary::encode as encode_binary;
pub use data::{decode_body, encode_body};

/// Header names: the CloudEvents NATS binding, runlog's extensions, and the
/// JetStream headers runlog sets or reads.
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
    /// The mode and format of the body; binary-mode JSON when absent.
    pub const CONTENT_TYPE: &str = "Content-Type";
    /// JetStream de-duplication id.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// The sequence the writer expects the newest message of a subject (or
    /// of the filter in [`EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT`]) to have;
    /// 0: none.
    pub const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
    /// Widens the expected-sequence check from the publish subject to a
    /// filter (async-nats has no builder for it).
    pub const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str =
        "Nats-Expected-Last-Subject-Sequence-Subject";
    /// Makes a message a schedule (`@at <RFC 3339>`).
    pub const SCHEDULE: &str = "Nats-Schedule";
    /// The subject a schedule fires on.
    pub const SCHEDULE_TARGET: &str = "Nats-Schedule-Target";
    /// A per-message TTL in seconds (key-value leases).
    pub const TTL: &str = "Nats-TTL";
    /// The stream sequence of a direct-get reply or a republished message.
    pub const SEQUENCE: &str = "Nats-Sequence";
    /// Messages still matching after a direct-get batch.
    pub const NUM_PENDING: &str = "Nats-Num-Pending";
}

/// The CloudEvents version runlog speaks.
pub const SPEC_VERSION: &str = "1.0";
/// Content type of JSON bodies (binary mode).
pub const JSON: &str = "application/json";
/// Content type of MessagePack bodies (binary mode).
pub const MSGPACK: &str = "application/msgpack";
/// Content type of a structured-mode JSON event.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";
/// Content type of a structured-mode MessagePack event.
pub const CLOUDEVENTS_MSGPACK: &str = "application/cloudevents+msgpack";
/// Longest accepted value of a free-form attribute (source, correlation id).
pub const MAX_HEADER_VALUE: usize = 1024;

/// Body encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// JSON.
    Json,
    /// MessagePack maps with field names.
    MessagePack,
}

/// How the envelope travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Attributes in `ce-*` headers, the event's data in the body.
    Binary,
    /// Attributes and data together in the body.
    Structured,
}

impl Format {
    /// The binary-mode `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => JSON,
            Format::MessagePack => MSGPACK,
        }
    }

    /// The structured-mode `Content-Type` of this format.
    pub fn structured_content_type(self) -> &'static str {
        match self {
            Format::Json => CLOUDEVENTS_JSON,
            Format::MessagePack => CLOUDEVENTS_MSGPACK,
        }
    }

    /// The mode and format a `Content-Type` names.
    pub fn from_content_type(v: &str) -> Option<(Mode, Self)> {
        let mime = v.split(';').next().unwrap_or("").trim();
        let mime = mime.to_ascii_lowercase();
        match mime.as_str() {
            JSON => Some((Mode::Binary, Format::Json)),
            MSGPACK | "application/x-msgpack" | "application/vnd.msgpack" => {
                Some((Mode::Binary, Format::MessagePack))
            }
            CLOUDEVENTS_JSON => Some((Mode::Structured, Format::Json)),
            CLOUDEVENTS_MSGPACK => Some((Mode::Structured, Format::MessagePack)),
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
    /// A required attribute (a header in binary mode) is absent.
    MissingAttribute,
    /// An attribute is present but malformed.
    InvalidAttribute,
    /// The type names no runlog event type.
    UnknownEventType,
    /// `Content-Type` names neither mode of JSON or MessagePack.
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
    /// A required attribute is absent.
    #[error("missing required attribute {0}")]
    MissingAttribute(&'static str),
    /// An attribute is malformed.
    #[error("attribute {name} is invalid: {reason}")]
    InvalidAttribute {
        /// Attribute name: the header in binary mode (`ce-time`), the field
        /// in structured mode (`time`).
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Unknown event type.
    #[error("unknown event type {0:?} (expected runlog.execution.<type>)")]
    UnknownEventType(String),
    /// Unsupported content type.
    #[error(
        "unsupported content type {0:?}: use application/json or application/msgpack \
         (binary mode) or application/cloudevents+json or application/cloudevents+msgpack \
         (structured mode)"
    )]
    UnsupportedContentType(String),
    /// The body ends early.
    #[error("{format} body{} is truncated", of_type(*event_type))]
    Truncated {
        /// Body format.
        format: Format,
        /// The event type the body was read as, when known.
        event_type: Option<EventType>,
    },
    /// The body does not match its event type's schema.
    #[error("{format} body{} is invalid: {reason}", of_type(*event_type))]
    InvalidBody {
        /// Body format.
        format: Format,
        /// The event type the body was read as, when known.
        event_type: Option<EventType>,
        /// The parser's explanation.
        reason: String,
    },
}

fn of_type(event_type: Option<EventType>) -> String {
    event_type.map_or_else(String::new, |t| format!(" of a {t} event"))
}

impl DecodeError {
    /// The kind of this error.
    pub fn kind(&self) -> DecodeErrorKind {
        match self {
            DecodeError::TooLarge { .. } => DecodeErrorKind::TooLarge,
            DecodeError::MissingAttribute(_) => DecodeErrorKind::MissingAttribute,
            DecodeError::InvalidAttribute { .. } => DecodeErrorKind::InvalidAttribute,
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
    /// A value would break the header syntax (a line break) or is too long.
    #[error("attribute {name} cannot carry this value: {reason}")]
    InvalidAttribute {
        /// Attribute name.
        name: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The event is larger than runlog stores (and decoders accept).
    #[error(
        "the {event_type} event would be {size} bytes, over the limit of {limit} bytes; \
         keep large inputs and outputs out of events (a URL or a path the task reads)"
    )]
    TooLarge {
        /// The event type.
        event_type: EventType,
        /// The encoded body's size.
        size: usize,
        /// The limit ([`DEFAULT_MAX_PAYLOAD`]).
        limit: usize,
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

/// Encodes `envelope` as runlog stores it: structured mode in `format`, with
/// `Content-Type` and `Nats-Msg-Id` headers. A body over
/// [`DEFAULT_MAX_PAYLOAD`], which no decoder would accept back (nor a
/// nats-server with its default `max_payload`), is refused.
pub fn encode(envelope: &Envelope, format: Format) -> Result<(HeaderMap, Bytes), EncodeError> {
    let body = structured::encode(envelope, format)?;
    if body.len() > DEFAULT_MAX_PAYLOAD {
        return Err(EncodeError::TooLarge {
            event_type: envelope.event.event_type(),
            size: body.len(),
            limit: DEFAULT_MAX_PAYLOAD,
        });
    }
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, format.structured_content_type());
    headers.insert(header::MSG_ID, envelope.msg_id().as_str());
    Ok((headers, body))
}

/// Decodes a message in either mode into an [`Envelope`]; `Content-Type`
/// says which (binary-mode JSON when absent).
pub fn decode(headers: &HeaderMap, body: &[u8], limits: &Limits) -> Result<Envelope, DecodeError> {
    if body.len() > limits.max_payload {
        return Err(DecodeError::TooLarge {
            size: body.len(),
            limit: limits.max_payload,
        });
    }
    let (mode, format) = match attributes::find(headers, header::CONTENT_TYPE) {
        None => (Mode::Binary, Format::Json),
        Some(ct) => Format::from_content_type(ct)
            .ok_or_else(|| DecodeError::UnsupportedContentType(attributes::truncate(ct)))?,
    };
    match mode {
        Mode::Binary => binary::decode(headers, format, body),
        Mode::Structured => structured::decode(format, body),
    }
}
