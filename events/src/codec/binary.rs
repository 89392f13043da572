//! Binary mode: the attributes are `ce-*` headers, the body is the event's
//! data.

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::SecondsFormat;

use super::attributes::{self, find};
use super::{DecodeError, EncodeError, Format, MAX_HEADER_VALUE, SPEC_VERSION, data, header};
use crate::envelope::Envelope;

/// Encodes `envelope` in binary mode: every attribute a `ce-*` header, the
/// event's data in `format` as the body, plus `Content-Type` and
/// `Nats-Msg-Id`.
pub fn encode(envelope: &Envelope, format: Format) -> Result<(HeaderMap, Bytes), EncodeError> {
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: &str| -> Result<(), EncodeError> {
        if value.len() > MAX_HEADER_VALUE {
            return Err(EncodeError::InvalidAttribute {
                name,
                reason: "longer than 1024 bytes",
            });
        }
        let value = value.parse::<async_nats::HeaderValue>().map_err(|_| {
            EncodeError::InvalidAttribute {
                name,
                reason: "contains a line break",
            }
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
    let body = data::encode_body(&envelope.event, format)?;
    Ok((headers, body))
}

/// Decodes a binary-mode message whose body is in `format` (the caller has
/// read `Content-Type` and checked the size).
pub(super) fn decode(
    headers: &HeaderMap,
    format: Format,
    body: &[u8],
) -> Result<Envelope, DecodeError> {
    let required =
        |name: &'static str| find(headers, name).ok_or(DecodeError::MissingAttribute(name));
    attributes::spec_version(header::SPEC_VERSION, required(header::SPEC_VERSION)?)?;
    let event_type = attributes::event_type(required(header::TYPE)?)?;
    let id = attributes::id(header::ID, required(header::ID)?)?;
    let source = attributes::source(header::SOURCE, required(header::SOURCE)?)?;
    let time = attributes::time(header::TIME, required(header::TIME)?)?;
    let execution = attributes::subject(header::SUBJECT, required(header::SUBJECT)?)?;
    let attempt = find(headers, header::ATTEMPT)
        .map(|v| attributes::attempt(header::ATTEMPT, v))
        .transpose()?
        .unwrap_or(0);
    let correlation_id = find(headers, header::CORRELATION_ID)
        .map(|v| attributes::correlation_id(header::CORRELATION_ID, v))
        .transpose()?;
    let traceparent = find(headers, header::TRACEPARENT)
        .map(|v| attributes::traceparent(header::TRACEPARENT, v))
        .transpose()?;
    let event = data::decode_body(event_type, format, body)?;
    Ok(Envelope {
        id,
        execution,
        attempt,
        time,
        source,
        correlation_id,
        traceparent,
        event,
    })
}
