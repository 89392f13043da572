//! The committed JSON Schema files in `docs/protocol/schema` are current,
//! cover every event type, are described in `docs/protocol.md`, and accept
//! exactly what the codec writes.
//!
//! `RUNLOG_BLESS=1 cargo test -p runlog-events --test schema` rewrites the
//! committed files instead of comparing them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use runlog_events::codec::{self, Format, Limits, header};
use runlog_events::event::{
    AttemptError, AttemptLost, CancelRequested, Cancelled, DeadLetterReason, DeadLettered, Failed,
    Heartbeat, LogBatch, LogLine, LogStream, Progress, Queued, Rejected, RetryScheduled, Started,
    Submitted, Succeeded, TimedOut, TimeoutScope,
};
use runlog_events::resources::Resources;
use runlog_events::{
    Command, Envelope, ErrorClass, Event, EventType, ExecutionId, Priority, QueueName, TaskError,
    TaskSpec, schema,
};
use serde_json::{Value, json};

const REGENERATE: &str = "RUNLOG_BLESS=1 cargo test -p runlog-events --test schema";

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol/schema")
}

fn protocol_doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn bless() -> bool {
    std::env::var_os("RUNLOG_BLESS").is_some_and(|v| v == "1")
}

/// Every `*.json` under `dir`, by its `/`-separated path relative to `dir`.
fn files_on_disk(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, found: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, found);
            } else if path.extension().is_some_and(|e| e == "json") {
                let relative = path.strip_prefix(root).unwrap();
                let parts: Vec<_> = relative.iter().map(|p| p.to_string_lossy()).collect();
                found.insert(parts.join("/"));
            }
        }
    }
    let mut found = BTreeSet::new();
    walk(dir, dir, &mut found);
    found
}

#[test]
fn committed_schema_is_current() {
    let dir = schema_dir();
    if bless() {
        let written = schema::write_all(&dir).expect("write the schema files");
        eprintln!(
            "wrote {} schema files under {}",
            written.len(),
            dir.display()
        );
        return;
    }
    let expected = schema::all();
    let on_disk = files_on_disk(&dir);
    let mut missing = Vec::new();
    let mut stale = Vec::new();
    for (relative, schema) in &expected {
        if !on_disk.contains(relative) {
            missing.push(relative.as_str());
            continue;
        }
        let text = std::fs::read_to_string(dir.join(relative)).unwrap();
        if serde_json::from_str::<Value>(&text).ok().as_ref() != Some(schema) {
            stale.push(relative.as_str());
        }
    }
    let extra: Vec<&str> = on_disk
        .iter()
        .filter(|f| !expected.contains_key(*f))
        .map(String::as_str)
        .collect();
    if missing.is_empty() && stale.is_empty() && extra.is_empty() {
        return;
    }
    let mut report = format!(
        "the JSON Schema files in {} are out of date:\n",
        dir.display()
    );
    for (label, files) in [("stale", &stale), ("missing", &missing), ("extra", &extra)] {
        for file in files {
            report.push_str(&format!("  {label}: {file}\n"));
        }
    }
    report.push_str(&format!(
        "regenerate them with `{REGENERATE}` and commit the result"
    ));
    panic!("{report}");
}

#[test]
fn every_event_type_has_a_schema_and_a_section_in_the_protocol_doc() {
    let schemas = schema::all();
    let doc = protocol_doc();
    let dir = schema_dir();
    let mut problems = Vec::new();
    for ty in EventType::ALL {
        let file = format!("event/{}.json", ty.as_str());
        if !schemas.contains_key(&file) {
            problems.push(format!("schema::all() has no {file}"));
        }
        if !dir.join(&file).is_file() && !bless() {
            problems.push(format!("{file} is not committed (run `{REGENERATE}`)"));
        }
        let row = format!("| `{}` |", ty.as_str());
        if !doc.lines().any(|l| l.starts_with(&row)) {
            problems.push(format!("protocol.md has no table row starting with {row}"));
        }
        let link = format!("(protocol/schema/{file})");
        if !doc.contains(&link) {
            problems.push(format!("protocol.md does not link {link}"));
        }
    }
    for name in header_names() {
        if !doc.contains(&format!("`{name}")) {
            problems.push(format!("protocol.md does not mention the header `{name}`"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The values of every constant in `codec::header`, read from the source so
/// that a header added later is checked too.
fn header_names() -> Vec<&'static str> {
    let source = include_str!("../src/codec/mod.rs");
    let module = source
        .split_once("pub mod header {")
        .and_then(|(_, rest)| rest.split_once("\n}"))
        .map(|(body, _)| body)
        .expect("codec/mod.rs has a `pub mod header { ... }`");
    // A long constant's value may sit on the line after its name.
    let names: Vec<&str> = module
        .split("pub const")
        .skip(1)
        .filter_map(|c| c.split('"').nth(1))
        .collect();
    // The parse must see at least the headers known today.
    for known in [
        header::SPEC_VERSION,
        header::ID,
        header::TYPE,
        header::SOURCE,
        header::TIME,
        header::SUBJECT,
        header::ATTEMPT,
        header::CORRELATION_ID,
        header::TRACEPARENT,
        header::CONTENT_TYPE,
        header::MSG_ID,
        header::EXPECTED_LAST_SUBJECT_SEQUENCE,
        header::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
        header::SCHEDULE,
        header::SCHEDULE_TARGET,
    ] {
        assert!(
            names.contains(&known),
            "did not find {known} in codec::header"
        );
    }
    names
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// A realistic body of every event type. The match is exhaustive so that a
/// new event type needs an example here.
fn example(ty: EventType) -> Event {
    let error = TaskError {
        class: ErrorClass::RateLimited,
        message: "POST https://api.example.com/reports: 429 Too Many Requests".into(),
        retryable: true,
        retry_after_ms: Some(30_000),
    };
    match ty {
        EventType::Submitted => {
            let mut spec = TaskSpec::new("shell");
            spec.queue = QueueName::new("backups").unwrap();
            spec.priority = Priority::High;
            spec.input = json!({"command": ["pg_dump", "--format=custom", "app"]});
            spec.sealed_env.push("PGPASSWORD".into());
            spec.secrets
                .insert("PGPASSWORD".into(), "prod/db/backup".into());
            spec.attempt_timeout_ms = Some(600_000);
            spec.timeout_ms = Some(3_600_000);
            spec.retry.max_attempts = 5;
            spec.retry.non_retryable.push(ErrorClass::Crashed);
            spec.labels.insert("team".into(), "infra".into());
            spec.worker_labels.insert("pool".into(), "backup".into());
            spec.idempotency_key = Some("backup-2026-11-23".into());
            spec.not_before = Some(at("2026-11-23T02:00:00Z"));
            Event::Submitted(Submitted { spec })
        }
        EventType::Queued => Event::Queued(Queued {
            queue: QueueName::new("backups").unwrap(),
            priority: Priority::High,
            kind: "shell".into(),
            worker_labels: [("pool".to_owned(), "backup".to_owned())].into(),
            capacity: None,
            spec: None,
        }),
        EventType::Started => Event::Started(Started {
            worker: "w-host1-7".into(),
            deadline: None,
        }),
        EventType::Progress => Event::Progress(Progress {
            percent: Some(42.5),
            message: Some("dumping table events".into()),
            counters: [("bytes_done".to_owned(), 1_073_741_824)].into(),
        }),
        EventType::Log => Event::Log(LogBatch {
            first_line: 120,
            lines: vec![
                LogLine {
                    stream: LogStream::Stdout,
                    line: "pg_dump: dumping contents of table \"public.events\"".into(),
                },
                LogLine {
                    stream: LogStream::Stderr,
                    line: "warning: \u{1F40C} slow disk".into(),
                },
            ],
            dropped: 3,
        }),
        EventType::Heartbeat => Event::Heartbeat(Heartbeat {
            worker: "w-host1-7".into(),
        }),
        EventType::Succeeded => Event::Succeeded(Succeeded {
            output: json!({"file": "s3://backups/app-2026-11-23.dump", "bytes": 5_368_709_120_u64}),
            resources: Some(Resources {
                wall_ms: 421_530,
                cpu_user_ms: Some(312_400),
                cpu_system_ms: Some(20_110),
                peak_rss_bytes: Some(734_003_200),
                output_bytes: 62,
                log_bytes: 18_204,
                network_sent_bytes: None,
                network_received_bytes: None,
            }),
        }),
        EventType::Failed => Event::Failed(Failed {
            error,
            resources: None,
        }),
        EventType::RetryScheduled => Event::RetryScheduled(RetryScheduled {
            at: at("2026-11-23T02:10:30.250Z"),
            class: ErrorClass::RateLimited,
        }),
        EventType::CancelRequested => Event::CancelRequested(CancelRequested {
            reason: "superseded by a manual backup".into(),
            operation: None,
        }),
        EventType::Cancelled => Event::Cancelled(Cancelled {
            reason: "superseded by a manual backup".into(),
            operation: None,
            resources: None,
        }),
        EventType::TimedOut => Event::TimedOut(TimedOut {
            scope: TimeoutScope::Attempt,
            resources: None,
        }),
        EventType::AttemptLost => Event::AttemptLost(AttemptLost {
            worker: "w-host2-1".into(),
        }),
        EventType::DeadLettered => Event::DeadLettered(DeadLettered {
            reason: DeadLetterReason::AttemptsExhausted,
            errors: vec![AttemptError {
                attempt: 1,
                at: at("2026-11-23T02:10:00Z"),
                error,
            }],
        }),
        EventType::Rejected => Event::Rejected(Rejected {
            field: Some("retry.max_attempts".into()),
            reason: "must be at least 1".into(),
        }),
    }
}

fn envelope(event: Event) -> Envelope {
    Envelope {
        id: "0196f1c2-7a3b-7c4d-8e5f-a1b2c3d4e5f6".parse().unwrap(),
        execution: ExecutionId::new("0196f1c2-5d10-7e2a-9b44-3f0c2a1d9e87").unwrap(),
        attempt: 2,
        time: at("2026-11-23T02:04:05.123456Z"),
        source: "/runlog/worker/host1".into(),
        correlation_id: Some("nightly-2026-11-23".into()),
        traceparent: Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        ),
        event,
    }
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::meta::validate(schema)
        .unwrap_or_else(|e| panic!("{} is not a valid 2020-12 schema: {e}", schema["$id"]));
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("{} does not compile: {e}", schema["$id"]))
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn example_bodies_validate() {
    let schemas = schema::all();
    let envelope_schema = validator(&schemas["envelope.json"]);
    let cloudevent_schema = validator(&schemas["cloudevent.json"]);
    for ty in EventType::ALL {
        let env = envelope(example(ty));
        let body_schema = validator(&schemas[&format!("event/{ty}.json")]);

        let (headers, body) = codec::encode(&env, Format::Json).unwrap();
        let structured: Value = serde_json::from_slice(&body).unwrap();
        let bad = errors(&cloudevent_schema, &structured);
        assert!(
            bad.is_empty(),
            "{ty} event {structured} is invalid: {bad:?}"
        );
        let json_body = structured["data"].clone();
        let bad = errors(&body_schema, &json_body);
        assert!(
            bad.is_empty(),
            "{ty} JSON body {json_body} is invalid: {bad:?}"
        );
        let back = codec::decode(&headers, &body, &Limits::default()).unwrap();
        assert_eq!(back, env, "{ty} does not round-trip through JSON");

        // MessagePack maps carry the same names, so the same schema applies.
        let (headers, body) = codec::encode(&env, Format::MessagePack).unwrap();
        let msgpack: Value = rmp_serde::from_slice(&body).unwrap();
        assert_eq!(
            msgpack, structured,
            "{ty} MessagePack and JSON events differ"
        );
        let back = codec::decode(&headers, &body, &Limits::default()).unwrap();
        assert_eq!(back, env, "{ty} does not round-trip through MessagePack");

        // Binary mode: the body alone is the data.
        let (headers, body) = codec::encode_binary(&env, Format::MessagePack).unwrap();
        let binary: Value = rmp_serde::from_slice(&body).unwrap();
        assert_eq!(binary, json_body, "{ty} binary and structured data differ");
        let back = codec::decode(&headers, &body, &Limits::default()).unwrap();
        assert_eq!(back, env, "{ty} does not round-trip in binary mode");

        let whole = serde_json::to_value(&env).unwrap();
        let bad = errors(&envelope_schema, &whole);
        assert!(bad.is_empty(), "{ty} envelope {whole} is invalid: {bad:?}");
        assert_eq!(whole["type"], ty.as_str());
        assert_eq!(whole["data"], json_body);
    }
}

#[test]
fn minimal_bodies_validate_and_decode() {
    let schemas = schema::all();
    // The smallest body of each type that runlog accepts: defaults omitted.
    let minimal = |ty: EventType| match ty {
        EventType::Submitted => json!({"spec": {"kind": "shell"}}),
        EventType::Queued => json!({"queue": "default", "priority": "normal"}),
        EventType::Started | EventType::Heartbeat | EventType::AttemptLost => {
            json!({"worker": "w1"})
        }
        EventType::Progress
        | EventType::Succeeded
        | EventType::CancelRequested
        | EventType::Cancelled => json!({}),
        EventType::Log => json!({"first_line": 0, "lines": []}),
        EventType::Failed => {
            json!({"error": {"class": "unknown", "message": "boom", "retryable": false}})
        }
        EventType::RetryScheduled => json!({"at": "2026-11-23T02:10:30Z", "class": "network"}),
        EventType::TimedOut => json!({"scope": "execution"}),
        EventType::DeadLettered => json!({"reason": "max_deliveries", "errors": []}),
        EventType::Rejected => json!({"reason": "kind: must not be empty"}),
    };
    for ty in EventType::ALL {
        let body = minimal(ty);
        let bad = errors(&validator(&schemas[&format!("event/{ty}.json")]), &body);
        assert!(
            bad.is_empty(),
            "minimal {ty} body {body} is invalid: {bad:?}"
        );
        let bytes = serde_json::to_vec(&body).unwrap();
        codec::decode_body(ty, Format::Json, &bytes)
            .unwrap_or_else(|e| panic!("minimal {ty} body {body} does not decode: {e}"));
    }
}

#[test]
fn schema_and_codec_both_refuse_malformed_bodies() {
    let schemas = schema::all();
    let cases = [
        (EventType::Started, json!({})),
        (EventType::Started, json!({"worker": 7})),
        (
            EventType::Queued,
            json!({"queue": "a.b", "priority": "normal"}),
        ),
        (
            EventType::Queued,
            json!({"queue": "default", "priority": "urgent"}),
        ),
        (
            EventType::Submitted,
            json!({"spec": {"kind": "shell", "retry": {"max_attempts": -1}}}),
        ),
        (EventType::TimedOut, json!({"scope": "forever"})),
        (
            EventType::RetryScheduled,
            json!({"at": "tomorrow", "class": "network"}),
        ),
        (
            EventType::Log,
            json!({"first_line": 0, "lines": [{"stream": "stdin", "line": ""}]}),
        ),
        (
            EventType::DeadLettered,
            json!({"reason": "bored", "errors": []}),
        ),
        (EventType::Rejected, json!({"field": "kind"})),
    ];
    for (ty, body) in cases {
        let bad = errors(&validator(&schemas[&format!("event/{ty}.json")]), &body);
        assert!(!bad.is_empty(), "the {ty} schema accepts {body}");
        let bytes = serde_json::to_vec(&body).unwrap();
        assert!(
            codec::decode_body(ty, Format::Json, &bytes).is_err(),
            "the codec accepts the {ty} body {body}"
        );
    }
}

#[test]
fn commands_and_task_specs_validate() {
    let schemas = schema::all();
    let command_schema = validator(&schemas["command.json"]);
    let spec_schema = validator(&schemas["task-spec.json"]);
    let Event::Submitted(Submitted { spec }) = example(EventType::Submitted) else {
        unreachable!()
    };
    let bad = errors(&spec_schema, &serde_json::to_value(&spec).unwrap());
    assert!(bad.is_empty(), "task spec is invalid: {bad:?}");
    // Commands as a client in another language writes them: defaults omitted.
    let commands = [
        json!({"command": "submit", "spec": serde_json::to_value(&spec).unwrap()}),
        json!({"command": "submit", "spec": {"kind": "shell"}}),
        json!({"command": "enqueue"}),
        json!({"command": "claim", "worker": "w1"}),
        json!({"command": "fail", "attempt": 1,
               "error": {"class": "network", "message": "connection reset", "retryable": true}}),
        json!({"command": "resolve_failure", "jitter": 0.5}),
        json!({"command": "request_cancel", "reason": "no longer needed"}),
    ];
    for value in commands {
        let bad = errors(&command_schema, &value);
        assert!(bad.is_empty(), "command {value} is invalid: {bad:?}");
        let command: Command = serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("command {value} does not deserialize: {e}"));
        // What runlog writes back validates too.
        let written = serde_json::to_value(&command).unwrap();
        let bad = errors(&command_schema, &written);
        assert!(bad.is_empty(), "command {written} is invalid: {bad:?}");
    }
    let unknown = json!({"command": "explode"});
    assert!(!errors(&command_schema, &unknown).is_empty());
}

#[test]
fn schemas_are_keyed_by_their_id() {
    for (relative, schema) in schema::all() {
        assert_eq!(
            schema["$id"],
            format!("{}{relative}", schema::BASE_URI),
            "{relative}"
        );
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert!(schema["title"].is_string(), "{relative} has no title");
    }
}
