//! Fuzzes the wire decoder of `runlog-events` (`codec::decode` and
//! `codec::decode_body`) with untrusted messages.
//!
//! The input is a NATS message as text (headers, an empty line, the body:
//! see `runlog_events_fuzz::parse_input`), so seeds in `fuzz/seeds/decode/`
//! and crash artifacts are readable. Properties checked:
//!
//! 1. Decoding never panics (the codec promises typed errors for untrusted
//!    input), and every error can be displayed and classified.
//! 2. Whatever decodes re-encodes, in JSON and in MessagePack, and decodes
//!    back to an equal value: for whole messages (`decode` ∘ `encode`) and
//!    for bare bodies of every event type (`decode_body` ∘ `encode_body`).
//!
//! Run with `scripts/fuzz.sh`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runlog_events::EventType;
use runlog_events::codec::{self, DecodeError, Format, Limits};

/// The limit applied to fuzzed messages.
const LIMITS: Limits = Limits {
    max_payload: 64 * 1024,
};

/// Re-encoded messages may legitimately be larger than what was accepted
/// (MessagePack floats written as JSON text, escaped control characters), so
/// the round trip decodes them without a size limit.
const NO_LIMIT: Limits = Limits {
    max_payload: usize::MAX,
};

const FORMATS: [Format; 2] = [Format::Json, Format::MessagePack];

fuzz_target!(|data: &[u8]| {
    let (headers, body) = runlog_events_fuzz::parse_input(data);
    message(&headers, body);
    raw(body);
    if body.len() != data.len() {
        raw(data);
    }
});

/// Whole messages: headers + body through `decode`, then the round trip.
fn message(headers: &async_nats::HeaderMap, body: &[u8]) {
    let envelope = match codec::decode(headers, body, &LIMITS) {
        Ok(envelope) => envelope,
        Err(e) => {
            check_error(&e);
            if body.len() > LIMITS.max_payload {
                assert!(
                    matches!(e, DecodeError::TooLarge { .. }),
                    "oversized body not refused as too large: {e}"
                );
            }
            return;
        }
    };
    assert!(
        body.len() <= LIMITS.max_payload,
        "a body over the limit was accepted"
    );
    for format in FORMATS {
        let (h, b) = codec::encode(&envelope, format).unwrap_or_else(|e| {
            panic!("a decoded envelope does not re-encode as {format}: {e}\n{envelope:#?}")
        });
        let back = codec::decode(&h, &b, &NO_LIMIT).unwrap_or_else(|e| {
            panic!(
                "a decoded envelope, re-encoded as {format}, does not decode: {e}\n\
                 envelope: {envelope:#?}\nheaders: {h:?}\nbody: {}",
                String::from_utf8_lossy(&b)
            )
        });
        assert_eq!(
            back, envelope,
            "the {format} round trip changed the envelope"
        );
    }
}

/// Bare bodies: every event type, both formats, through `decode_body`, then
/// the round trip through `encode_body`.
fn raw(data: &[u8]) {
    for event_type in EventType::ALL {
        for format in FORMATS {
            let event = match codec::decode_body(event_type, format, data) {
                Ok(event) => event,
                Err(e) => {
                    check_error(&e);
                    continue;
                }
            };
            assert_eq!(
                event.event_type(),
                event_type,
                "decode_body returned another type"
            );
            for again in FORMATS {
                let b = codec::encode_body(&event, again).unwrap_or_else(|e| {
                    panic!("a {event_type} body decoded from {format} does not re-encode as {again}: {e}\n{event:#?}")
                });
                let back = codec::decode_body(event_type, again, &b).unwrap_or_else(|e| {
                    panic!(
                        "a {event_type} body decoded from {format}, re-encoded as {again}, does not decode: {e}\n\
                         event: {event:#?}\nbody: {}",
                        String::from_utf8_lossy(&b)
                    )
                });
                assert_eq!(
                    back, event,
                    "the {format} -> {again} round trip changed a {event_type} body"
                );
            }
        }
    }
}

/// Errors must display (the message goes into logs and `rejected` events)
/// and classify without panicking.
fn check_error(e: &DecodeError) {
    let _ = e.kind();
    let _ = e.to_string();
}
