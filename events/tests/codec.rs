//! Decoding untrusted messages: every kind of bad input has its own typed
//! error, and every envelope round-trips through both formats.

use async_nats::HeaderMap;
use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use runlog_events::codec::{self, DecodeErrorKind, Format, Limits, header};
use runlog_events::event::{Progress, Started, Submitted, Succeeded};
use runlog_events::{Envelope, Event, ExecutionId, TaskSpec};

fn started() -> Envelope {
    let mut env = Envelope::new(
        ExecutionId::new("e1").unwrap(),
        2,
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap(),
        "/runlog/worker/w1",
        Event::Started(Started {
            worker: "w1".into(),
            deadline: None,
        }),
    );
    env.correlation_id = Some("order-42".into());
    env.traceparent = Some(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    env
}

fn kind(headers: &HeaderMap, body: &[u8]) -> DecodeErrorKind {
    codec::decode(headers, body, &Limits::default())
        .expect_err("decoding must fail")
        .kind()
}

fn with(headers: &HeaderMap, name: &str, value: &str) -> HeaderMap {
    let mut h = headers.clone();
    h.insert(name, value);
    h
}

fn without(headers: &HeaderMap, name: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, values) in headers.iter() {
        let key: &str = k.as_ref();
        if key != name {
            for v in values {
                h.append(key, v.as_str());
            }
        }
    }
    h
}

#[test]
fn both_formats_round_trip_in_both_modes_and_rust_writes_messagepack_maps() {
    let env = started();
    for format in [Format::Json, Format::MessagePack] {
        let (headers, body) = codec::encode(&env, format).unwrap();
        assert_eq!(
            headers.get(header::CONTENT_TYPE).unwrap().as_str(),
            format.structured_content_type()
        );
        assert_eq!(
            codec::decode(&headers, &body, &Limits::default()).unwrap(),
            env
        );
        let (headers, body) = codec::encode_binary(&env, format).unwrap();
        assert_eq!(
            headers.get(header::CONTENT_TYPE).unwrap().as_str(),
            format.content_type()
        );
        assert_eq!(
            codec::decode(&headers, &body, &Limits::default()).unwrap(),
            env
        );
    }
    // MessagePack bodies are maps with field names, readable by any client.
    let (_, body) = codec::encode_binary(&env, Format::MessagePack).unwrap();
    let value: serde_json::Value = rmp_serde::from_slice(&body).unwrap();
    assert_eq!(value, serde_json::json!({"worker": "w1"}));
    let (_, body) = codec::encode(&env, Format::MessagePack).unwrap();
    let value: serde_json::Value = rmp_serde::from_slice(&body).unwrap();
    assert_eq!(value["data"], serde_json::json!({"worker": "w1"}));
    assert_eq!(value["id"], serde_json::json!(env.id.to_string()));
}

#[test]
fn structured_events_follow_the_cloudevents_json_format() {
    let env = started();
    let (headers, body) = codec::encode(&env, Format::Json).unwrap();
    assert_eq!(headers.len(), 2, "only Content-Type and Nats-Msg-Id");
    assert_eq!(
        headers.get(header::MSG_ID).unwrap().as_str(),
        "e1:started:2:w1"
    );
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        value,
        serde_json::json!({
            "specversion": "1.0",
            "id": env.id.to_string(),
            "type": "runlog.execution.started",
            "source": "/runlog/worker/w1",
            "subject": "e1",
            "time": "2026-11-23T12:00:00Z",
            "attempt": 2,
            "correlationid": "order-42",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "data": {"worker": "w1"},
        })
    );
}

/// A structured JSON event written by another program: members in any
/// order, unknown extensions, the attempt as a string.
#[test]
fn structured_events_from_other_writers_decode() {
    let headers = with(
        &HeaderMap::new(),
        header::CONTENT_TYPE,
        codec::CLOUDEVENTS_JSON,
    );
    let body = br#"{"data": {"worker": "w9"}, "comexampleext": [1, {"a": 2}],
        "attempt": "3", "time": "2026-11-23T12:00:00+01:00", "subject": "e7",
        "source": "/elsewhere", "type": "runlog.execution.started",
        "id": "0193a7e2-7a3c-7cc0-8a4e-3c2b1a090807", "specversion": "1.0"}"#;
    let env = codec::decode(&headers, body, &Limits::default()).unwrap();
    assert_eq!(env.attempt, 3);
    assert_eq!(env.execution.as_str(), "e7");
    assert_eq!(
        env.time,
        Utc.with_ymd_and_hms(2026, 11, 23, 11, 0, 0).unwrap()
    );
    assert_eq!(
        env.event,
        Event::Started(Started {
            worker: "w9".into(),
            deadline: None,
        })
    );
}

#[test]
fn bad_structured_events_are_typed() {
    let (headers, body) = codec::encode(&started(), Format::Json).unwrap();
    let good: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut v = good.clone();
        f(v.as_object_mut().unwrap());
        serde_json::to_vec(&v).unwrap()
    };
    for required in ["specversion", "id", "type", "source", "subject", "time"] {
        let err = codec::decode(
            &headers,
            &edit(&|m| {
                m.remove(required);
            }),
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), DecodeErrorKind::MissingAttribute, "{required}");
        assert!(err.to_string().contains(required), "{err}");
    }
    for (name, value) in [
        ("specversion", serde_json::json!("0.3")),
        ("id", serde_json::json!("not-a-uuid")),
        ("time", serde_json::json!("yesterday")),
        ("subject", serde_json::json!("a.b")),
        ("attempt", serde_json::json!(-1)),
        ("attempt", serde_json::json!(5_000_000_000u64)),
        ("traceparent", serde_json::json!("00-zz")),
        ("source", serde_json::json!("")),
    ] {
        let body = edit(&|m| {
            m.insert(name.into(), value.clone());
        });
        assert_eq!(
            kind(&headers, &body),
            DecodeErrorKind::InvalidAttribute,
            "{name}: {value}"
        );
    }
    let unknown = edit(&|m| {
        m.insert("type".into(), "runlog.execution.exploded".into());
    });
    assert_eq!(kind(&headers, &unknown), DecodeErrorKind::UnknownEventType);
    let bad_data = edit(&|m| {
        m.insert("data".into(), serde_json::json!({"worker": 7}));
    });
    let err = codec::decode(&headers, &bad_data, &Limits::default()).unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::InvalidBody);
    assert!(err.to_string().contains("started"), "{err}");
    // A member twice is ambiguous: refused, whichever member it is.
    let twice =
        String::from_utf8(body.to_vec())
            .unwrap()
            .replacen('{', r#"{"subject": "other", "#, 1);
    assert_eq!(
        kind(&headers, twice.as_bytes()),
        DecodeErrorKind::InvalidAttribute
    );
    assert_eq!(kind(&headers, b"[1, 2]"), DecodeErrorKind::InvalidBody);
    assert_eq!(kind(&headers, b"\x00garbage"), DecodeErrorKind::InvalidBody);
    let msgpack = with(&headers, header::CONTENT_TYPE, codec::CLOUDEVENTS_MSGPACK);
    assert_eq!(
        kind(&msgpack, &[0xc1, 0xff, 0x00, 0x13]),
        DecodeErrorKind::InvalidBody
    );
}

#[test]
fn binary_headers_follow_the_cloudevents_nats_binding() {
    let env = started();
    let (headers, _) = codec::encode_binary(&env, Format::Json).unwrap();
    let get = |n: &str| headers.get(n).map(|v| v.as_str().to_owned());
    assert_eq!(get("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(get("ce-type").as_deref(), Some("runlog.execution.started"));
    assert_eq!(get("ce-subject").as_deref(), Some("e1"));
    assert_eq!(get("ce-time").as_deref(), Some("2026-11-23T12:00:00Z"));
    assert_eq!(get("ce-attempt").as_deref(), Some("2"));
    assert_eq!(get("ce-id"), Some(env.id.to_string()));
    assert_eq!(get("Nats-Msg-Id").as_deref(), Some("e1:started:2:w1"));
    assert_eq!(env.id.get_version_num(), 7, "event ids are UUIDv7");
}

#[test]
fn garbage_bodies_are_invalid_not_panics() {
    let (headers, _) = codec::encode_binary(&started(), Format::MessagePack).unwrap();
    assert_eq!(
        kind(&headers, &[0xc1, 0xff, 0x00, 0x13]),
        DecodeErrorKind::InvalidBody
    );
    let json = with(&headers, header::CONTENT_TYPE, codec::JSON);
    assert_eq!(
        kind(&json, b"\x00\x01garbage"),
        DecodeErrorKind::InvalidBody
    );
    assert_eq!(
        kind(&json, b"{\"worker\": 7}"),
        DecodeErrorKind::InvalidBody
    );
    assert_eq!(kind(&json, b"{\"nope\": 1}"), DecodeErrorKind::InvalidBody);
}

#[test]
fn truncated_bodies_say_so() {
    let env = started();
    for encode in [codec::encode, codec::encode_binary] {
        let (headers, body) = encode(&env, Format::MessagePack).unwrap();
        for cut in 0..body.len() {
            assert_eq!(
                kind(&headers, &body[..cut]),
                DecodeErrorKind::Truncated,
                "cut at {cut}"
            );
        }
        let (headers, body) = encode(&env, Format::Json).unwrap();
        assert_eq!(
            kind(&headers, &body[..body.len() - 1]),
            DecodeErrorKind::Truncated
        );
        let mut extra = body.to_vec();
        extra.extend_from_slice(b" {}");
        assert_eq!(kind(&headers, &extra), DecodeErrorKind::InvalidBody);
        let (headers, body) = encode(&env, Format::MessagePack).unwrap();
        let mut extra = body.to_vec();
        extra.push(0xc0);
        assert_eq!(kind(&headers, &extra), DecodeErrorKind::InvalidBody);
    }
}

#[test]
fn unknown_types_missing_and_bad_headers_are_typed() {
    let (headers, body) = codec::encode_binary(&started(), Format::Json).unwrap();
    assert_eq!(
        kind(
            &with(&headers, header::TYPE, "runlog.execution.exploded"),
            &body
        ),
        DecodeErrorKind::UnknownEventType
    );
    assert_eq!(
        kind(&with(&headers, header::TYPE, "com.example.other"), &body),
        DecodeErrorKind::UnknownEventType
    );
    for required in [
        header::SPEC_VERSION,
        header::ID,
        header::TYPE,
        header::SOURCE,
        header::TIME,
        header::SUBJECT,
    ] {
        let err =
            codec::decode(&without(&headers, required), &body, &Limits::default()).unwrap_err();
        assert_eq!(err.kind(), DecodeErrorKind::MissingAttribute, "{required}");
        assert!(err.to_string().contains(required));
    }
    for (name, value) in [
        (header::SPEC_VERSION, "0.3"),
        (header::ID, "not-a-uuid"),
        (header::TIME, "yesterday"),
        (header::TIME, "9999-12-31T23:00:00-01:00"),
        (header::SUBJECT, "a.b"),
        (header::ATTEMPT, "-1"),
        (header::TRACEPARENT, "00-zz"),
    ] {
        assert_eq!(
            kind(&with(&headers, name, value), &body),
            DecodeErrorKind::InvalidAttribute,
            "{name}: {value}"
        );
    }
    assert_eq!(
        kind(&with(&headers, header::CONTENT_TYPE, "text/plain"), &body),
        DecodeErrorKind::UnsupportedContentType
    );
    // Optional headers: no attempt means 0, no content type means JSON.
    let bare = without(&without(&headers, header::ATTEMPT), header::CONTENT_TYPE);
    let env = codec::decode(&bare, &body, &Limits::default()).unwrap();
    assert_eq!(env.attempt, 0);
    // Header names match in any case.
    let mut shouty = HeaderMap::new();
    for (k, values) in headers.iter() {
        let key: &str = k.as_ref();
        shouty.insert(key.to_ascii_uppercase().as_str(), values[0].as_str());
    }
    assert!(codec::decode(&shouty, &body, &Limits::default()).is_ok());
}

#[test]
fn oversized_bodies_are_refused_before_parsing() {
    let (headers, _) = codec::encode(&started(), Format::Json).unwrap();
    let huge = vec![b'{'; codec::DEFAULT_MAX_PAYLOAD + 1];
    let err = codec::decode(&headers, &huge, &Limits::default()).unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::TooLarge);
    assert!(err.to_string().contains("1048577"));
    let small = Limits { max_payload: 8 };
    let (_, body) = codec::encode(&started(), Format::Json).unwrap();
    assert_eq!(
        codec::decode(&headers, &body, &small).unwrap_err().kind(),
        DecodeErrorKind::TooLarge
    );
}

#[test]
fn non_finite_numbers_from_messagepack_are_refused() {
    let env = Envelope::new(
        ExecutionId::new("e1").unwrap(),
        1,
        Utc::now(),
        "/test",
        Event::Progress(Progress {
            percent: Some(f32::NAN),
            message: None,
            counters: Default::default(),
        }),
    );
    let (headers, body) = codec::encode(&env, Format::MessagePack).unwrap();
    assert_eq!(kind(&headers, &body), DecodeErrorKind::InvalidBody);
}

#[test]
fn deep_nesting_is_refused_without_exhausting_the_stack() {
    let mut deep = String::new();
    for _ in 0..100_000 {
        deep.push('[');
    }
    let body = format!("{{\"output\": {deep}");
    let env = Envelope::new(
        ExecutionId::new("e1").unwrap(),
        1,
        Utc::now(),
        "/test",
        Event::Succeeded(Succeeded {
            output: serde_json::Value::Null,
            resources: None,
        }),
    );
    let (headers, _) = codec::encode_binary(&env, Format::Json).unwrap();
    assert_eq!(
        kind(&headers, body.as_bytes()),
        DecodeErrorKind::InvalidBody
    );
    // The same in MessagePack: 100,000 nested one-element arrays.
    let mut packed = vec![0x81, 0xa6];
    packed.extend_from_slice(b"output");
    packed.extend(std::iter::repeat_n(0x91u8, 100_000));
    packed.push(0xc0);
    let (headers, _) = codec::encode_binary(&env, Format::MessagePack).unwrap();
    assert_eq!(kind(&headers, &packed), DecodeErrorKind::InvalidBody);
    // And inside a structured event, before its type is known.
    let (headers, _) = codec::encode(&env, Format::Json).unwrap();
    let body = format!("{{\"data\": {deep}");
    assert_eq!(
        kind(&headers, body.as_bytes()),
        DecodeErrorKind::InvalidBody
    );
}

#[test]
fn header_values_that_would_break_the_protocol_are_refused_on_encode() {
    let mut env = started();
    env.source = "evil\r\nNats-Msg-Id: x".into();
    assert!(codec::encode(&env, Format::Json).is_err());
    let mut env = started();
    env.correlation_id = Some("x".repeat(2000));
    assert!(codec::encode(&env, Format::Json).is_err());
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn any_envelope_round_trips_in_both_formats(
        input in arb_json(),
        output in arb_json(),
        attempt in any::<u32>(),
        secs in 0i64..253_402_300_799,
        nanos in 0u32..1_000_000_000,
        correlation in proptest::option::of("[ -~]{0,40}"),
    ) {
        let time = Utc.timestamp_opt(secs, nanos).unwrap();
        let mut spec = TaskSpec::new("shell");
        spec.input = input;
        for event in [Event::Submitted(Submitted { spec }), Event::Succeeded(Succeeded { output, resources: None })] {
            let mut env = Envelope::new(ExecutionId::generate(), attempt, time, "/prop", event);
            env.correlation_id = correlation.clone();
            for format in [Format::Json, Format::MessagePack] {
                for encode in [codec::encode, codec::encode_binary] {
                    let (headers, body) = encode(&env, format).unwrap();
                    let back = codec::decode(&headers, &body, &Limits { max_payload: usize::MAX }).unwrap();
                    prop_assert_eq!(&back, &env);
                }
            }
        }
    }
}

/// Found by the fuzzer: a float read from MessagePack must survive a JSON
/// round trip bit for bit.
#[test]
fn floats_round_trip_exactly_between_formats() {
    let body = [
        0x81, 0xa6, b'o', b'u', b't', b'p', b'u', b't', 0xcb, 0x40, 0x0a, 0x00, 0x00, 0x31, 0x2e,
        0x30, 0xc2,
    ];
    let event = codec::decode_body(
        runlog_events::EventType::Succeeded,
        Format::MessagePack,
        &body,
    )
    .unwrap();
    let json = codec::encode_body(&event, Format::Json).unwrap();
    let back =
        codec::decode_body(runlog_events::EventType::Succeeded, Format::Json, &json).unwrap();
    assert_eq!(back, event);
}
