//! The seed corpus of the `decode` target: one valid message per event type
//! and body format, in `fuzz/seeds/decode/` (scripts/fuzz.sh copies them into
//! the corpus before a run).
//!
//! The test lives in the workspace so that the default test command checks the
//! committed seeds are current without building the fuzz crate (which needs
//! nightly and the engine). Rewrite them after a change to the codec or the
//! events:
//!     RUNLOG_UPDATE_SEEDS=1 cargo test -p runlog-events --test fuzz_seeds

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, TimeZone, Utc};
use runlog_events::codec::{self, Format, Limits};
use runlog_events::event::{
    AttemptError, AttemptLost, CancelRequested, Cancelled, DeadLetterReason, DeadLettered, Failed,
    Heartbeat, LogBatch, LogLine, LogStream, Progress, Queued, Rejected, RetryScheduled, Started,
    Submitted, Succeeded, TimedOut, TimeoutScope,
};
use runlog_events::resources::Resources;
use runlog_events::{
    Envelope, ErrorClass, Event, EventType, ExecutionId, Priority, QueueName, TaskError, TaskSpec,
};

// The input format the `decode` target reads, shared with it as source.
#[path = "../../fuzz/src/lib.rs"]
mod fuzz_input;
use fuzz_input::{format_input, parse_input};

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600 + secs, 123_456_000)
        .unwrap()
}

fn events() -> Vec<Event> {
    let mut spec = TaskSpec::new("shell");
    spec.input =
        serde_json::json!({"cmd": ["echo", "hi"], "n": 1.5, "deep": {"ok": true, "none": null}});
    spec.env.insert("MODE".into(), "fast".into());
    spec.secrets.insert("TOKEN".into(), "api-token".into());
    spec.labels.insert("team".into(), "infra".into());
    spec.attempt_timeout_ms = Some(30_000);
    spec.timeout_ms = Some(600_000);
    spec.idempotency_key = Some("nightly-2026-01-01".into());
    spec.not_before = Some(at(60));
    spec.retry.non_retryable = vec![ErrorClass::Permission];
    let error = TaskError {
        retry_after_ms: Some(2_500),
        ..TaskError::new(ErrorClass::RateLimited, "HTTP 429: slow down ✓")
    };
    let events = vec![
        Event::Submitted(Submitted { spec }),
        Event::Queued(Queued {
            queue: QueueName::new("backups").unwrap(),
            priority: Priority::High,
            kind: "shell".into(),
            worker_labels: Default::default(),
            capacity: None,
            spec: None,
        }),
        Event::Started(Started {
            worker: "w1".into(),
            deadline: None,
        }),
        Event::Progress(Progress {
            percent: Some(42.5),
            message: Some("copying".into()),
            counters: BTreeMap::from([("files_done".into(), 7), ("bytes_done".into(), u64::MAX)]),
        }),
        Event::Log(LogBatch {
            first_line: 10,
            lines: vec![
                LogLine {
                    stream: LogStream::Stdout,
                    line: "hello \"world\"".into(),
                },
                LogLine {
                    stream: LogStream::Stderr,
                    line: "tab\there\u{0}".into(),
                },
            ],
            dropped: 3,
        }),
        Event::Heartbeat(Heartbeat {
            worker: "w1".into(),
        }),
        Event::Succeeded(Succeeded {
            output: serde_json::json!({"rows": 3, "neg": -1, "list": [1, "two", 3.25, false]}),
            resources: Some(Resources {
                wall_ms: 1_250,
                cpu_user_ms: Some(900),
                cpu_system_ms: Some(40),
                peak_rss_bytes: Some(209_715_200),
                output_bytes: 57,
                log_bytes: 31,
                ..Resources::default()
            }),
        }),
        Event::Failed(Failed {
            error: error.clone(),
            resources: None,
        }),
        Event::RetryScheduled(RetryScheduled {
            at: at(120),
            class: ErrorClass::Network,
        }),
        Event::CancelRequested(CancelRequested {
            reason: "operator".into(),
            operation: Some("op-7".into()),
        }),
        Event::Cancelled(Cancelled {
            reason: String::new(),
            operation: None,
            resources: None,
        }),
        Event::TimedOut(TimedOut {
            scope: TimeoutScope::Attempt,
            resources: None,
        }),
        Event::AttemptLost(AttemptLost {
            worker: "w2".into(),
        }),
        Event::DeadLettered(DeadLettered {
            reason: DeadLetterReason::AttemptsExhausted,
            errors: vec![
                AttemptError {
                    attempt: 1,
                    at: at(10),
                    error: error.clone(),
                },
                AttemptError {
                    attempt: 2,
                    at: at(20),
                    error: TaskError::new(ErrorClass::Crashed, "exit 137"),
                },
            ],
        }),
        Event::Rejected(Rejected {
            field: Some("retry.max_attempts".into()),
            reason: "must be at least 1".into(),
        }),
    ];
    assert_eq!(
        events.iter().map(Event::event_type).collect::<Vec<_>>(),
        EventType::ALL,
        "one seed event per event type"
    );
    events
}

/// Every seed file name and its content.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, event) in events().into_iter().enumerate() {
        let ty = event.event_type();
        let mut env = Envelope::new(
            ExecutionId::new("0195f3a0-7c1e-7b2a-9d4e-123456789abc").unwrap(),
            u32::try_from(i % 3).unwrap(),
            at(i64::try_from(i).unwrap()),
            "/runlog/engine/seed-host",
            event,
        );
        env.id = uuid::Uuid::from_u128(0x0195_f3a0_7c1e_7b2a_9d4e_0000_0000_0000 + i as u128);
        if i % 2 == 0 {
            env.correlation_id = Some("workflow-17".into());
        }
        if i % 3 == 0 {
            env.traceparent = Some(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                    .parse()
                    .unwrap(),
            );
        }
        for (format, ext) in [(Format::Json, "json"), (Format::MessagePack, "msgpack")] {
            let (headers, body) = codec::encode(&env, format).unwrap();
            let input = format_input(&headers, &body);
            // The seed must reach the decoder as the message it stands for.
            let (parsed, parsed_body) = parse_input(&input);
            assert_eq!(parsed_body, &body[..]);
            assert_eq!(
                codec::decode(&parsed, parsed_body, &Limits::default()).unwrap(),
                env
            );
            out.push((format!("{ty}.{ext}"), input));
        }
    }
    out
}

#[test]
fn seeds_are_current() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/decode");
    let update = std::env::var_os("RUNLOG_UPDATE_SEEDS").is_some();
    if update {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, content) in seeds() {
        let path = dir.join(&name);
        if update {
            std::fs::write(&path, &content).unwrap();
        } else {
            let on_disk = std::fs::read(&path).unwrap_or_default();
            assert!(
                on_disk == content,
                "{} is missing or stale: rerun with RUNLOG_UPDATE_SEEDS=1",
                path.display()
            );
        }
    }
}
