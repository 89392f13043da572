//! JSON Schema (draft 2020-12) of everything that crosses the wire.
//!
//! Clients in other languages validate against, or generate types from,
//! these files instead of reading Rust. [`all`] builds them from the types
//! themselves, so they cannot drift from the codec; [`write_all`] writes
//! them to a folder (the committed copy lives in `docs/protocol/schema`, and
//! a test fails when it is stale).
//!
//! | file | describes |
//! |---|---|
//! | `event/<type>.json` | the body of each event type (`event/started.json`, ...) |
//! | `envelope.json` | an event with its metadata as one JSON object (raw history) |
//! | `command.json` | a [`Command`], tagged by its `command` field |
//! | `task-spec.json` | a [`TaskSpec`] |
//!
//! The schemas describe what runlog *accepts* (the deserialize side):
//! fields with a default are optional, and unknown fields are allowed and
//! ignored. Everything runlog writes is valid against them.
//!
//! # Examples
//! ```
//! let schemas = runlog_events::schema::all();
//! let started = &schemas["event/started.json"];
//! assert_eq!(started["$id"], "https://runlog.dev/schema/v1/event/started.json");
//! assert_eq!(started["required"], serde_json::json!(["worker"]));
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::Value;

use crate::decider::Command;
use crate::envelope::Envelope;
use crate::event::{
    AttemptLost, CancelRequested, Cancelled, DeadLettered, Event, EventType, Failed, Heartbeat,
    LogBatch, Progress, Queued, Rejected, RetryScheduled, Started, Submitted, Succeeded, TimedOut,
};
use crate::spec::TaskSpec;

/// Where the schemas are published; each file's `$id` is this plus its
/// relative path. `v1` changes only with an incompatible wire change.
pub const BASE_URI: &str = "https://runlog.dev/schema/v1/";

/// Every schema, keyed by its path relative to the schema folder
/// (`event/started.json`, `envelope.json`, ...).
pub fn all() -> BTreeMap<String, Value> {
    let meanings = event_meanings();
    let mut schemas = BTreeMap::new();
    for ty in EventType::ALL {
        let path = format!("event/{}.json", ty.as_str());
        let ce_type = ty.ce_type();
        let meaning = meanings.get(ty.as_str()).map_or("", String::as_str);
        let description = format!("Body (`data`) of a `{ce_type}` event. {meaning}");
        let schema = event_body_schema(ty);
        schemas.insert(path.clone(), finish(schema, &path, &description));
    }
    schemas.insert(
        "envelope.json".to_owned(),
        finish(
            root_schema::<Envelope>(),
            "envelope.json",
            "One event of an execution with its metadata, as a single JSON object: the \
             CloudEvents attributes by name, `type` (the event type token) and `data` (the \
             body, as in `event/<type>.json`). This is the shape of the HTTP API's event \
             listings; on NATS see `cloudevent.json`.",
        ),
    );
    schemas.insert(
        "cloudevent.json".to_owned(),
        finish(
            structured_event_schema(),
            "cloudevent.json",
            "One event as runlog stores it on NATS: CloudEvents structured mode, the whole \
             event in the message body (`Content-Type: application/cloudevents+json`, or the \
             same object in MessagePack with `application/cloudevents+msgpack`). `data` is \
             the body of its type, as in `event/<type>.json`.",
        ),
    );
    schemas.insert(
        "command.json".to_owned(),
        finish(
            root_schema::<Command>(),
            "command.json",
            "What a caller wants to happen to an execution; the `command` field names the \
             variant.",
        ),
    );
    schemas.insert(
        "task-spec.json".to_owned(),
        finish(
            root_schema::<TaskSpec>(),
            "task-spec.json",
            "Everything a caller states about a task when submitting it. Secret values never \
             travel in the log: `secrets` maps an environment variable name to the name of a \
             secret that the worker resolves.",
        ),
    );
    schemas.insert(
        "workflow.json".to_owned(),
        finish(
            root_schema::<crate::workflow::Definition>(),
            "workflow.json",
            "One version of a workflow: named, versioned nodes with their kinds, inputs \
             (templates with jq expressions in `${{ … }}`), dependencies, conditions and \
             fan-out. docs/workflows.md describes it.",
        ),
    );
    schemas.insert(
        "workflow-event.json".to_owned(),
        finish(
            root_schema::<crate::workflow::run::WorkflowEnvelope>(),
            "workflow-event.json",
            "One event of a workflow execution, the JSON body of a message on \
             `<p>.wf.<execution>` in the execution stream. docs/workflows.md \
             describes the events.",
        ),
    );
    schemas.insert(
        "schedule.json".to_owned(),
        finish(
            root_schema::<crate::schedule::ScheduleSpec>(),
            "schedule.json",
            "A schedule as created through POST /v1/schedules: when it ticks (cron in a \
             time zone, or an interval), what each tick runs, and its overlap and catch-up \
             policies. docs/schedules.md describes it.",
        ),
    );
    schemas.insert(
        "schedule-event.json".to_owned(),
        finish(
            root_schema::<crate::schedule::ScheduleEnvelope>(),
            "schedule-event.json",
            "One event of a schedule, the JSON body of a message on `<p>.sc.<schedule>` \
             in the execution stream. docs/schedules.md describes the events.",
        ),
    );
    schemas
}

/// The structured-mode event: the CloudEvents attributes runlog reads, and
/// `data`. Other members (extensions of other producers) are allowed and
/// ignored.
fn structured_event_schema() -> Value {
    let types: Vec<String> = EventType::ALL.iter().map(|t| t.ce_type()).collect();
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "CloudEvent",
        "type": "object",
        "required": ["specversion", "id", "type", "source", "subject", "time"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string", "format": "uuid", "description": "Unique per event; runlog writes UUIDv7."},
            "type": {"enum": types},
            "source": {"type": "string", "minLength": 1, "maxLength": 1024},
            "subject": {"type": "string", "minLength": 1, "description": "The execution id."},
            "time": {"type": "string", "format": "date-time"},
            "attempt": {
                "description": "The attempt the event concerns; 0 when absent. A decimal string is also read.",
                "anyOf": [
                    {"type": "integer", "minimum": 0, "maximum": 4_294_967_295u64},
                    {"type": "string", "pattern": "^[0-9]{1,10}$"}
                ]
            },
            "correlationid": {"type": "string", "maxLength": 1024},
            "traceparent": {"type": "string", "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"},
            "data": {"type": "object", "description": "The body of the event's type (event/<type>.json); `{}` when absent."}
        }
    })
}

/// Writes every schema of [`all`] under `dir` as pretty JSON with a trailing
/// newline, and deletes `*.json` files under `dir` that [`all`] no longer
/// produces. Returns the paths written, in path order.
///
/// # Errors
///
/// The first I/O error met while creating a folder, writing a file or
/// removing a stale one; files handled before it stay written.
pub fn write_all(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let schemas = all();
    let mut written = Vec::with_capacity(schemas.len());
    for (relative, schema) in &schemas {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, render(schema))?;
        written.push(path);
    }
    let wanted: BTreeSet<PathBuf> = written.iter().cloned().collect();
    for stale in json_files(dir)? {
        if !wanted.contains(&stale) {
            std::fs::remove_file(&stale)?;
        }
    }
    Ok(written)
}

/// The schema of the body of events of type `ty`. The match is exhaustive so
/// that a new event type cannot be left without a schema.
fn event_body_schema(ty: EventType) -> Value {
    match ty {
        EventType::Submitted => root_schema::<Submitted>(),
        EventType::Queued => root_schema::<Queued>(),
        EventType::Started => root_schema::<Started>(),
        EventType::Progress => root_schema::<Progress>(),
        EventType::Log => root_schema::<LogBatch>(),
        EventType::Heartbeat => root_schema::<Heartbeat>(),
        EventType::Succeeded => root_schema::<Succeeded>(),
        EventType::Failed => root_schema::<Failed>(),
        EventType::RetryScheduled => root_schema::<RetryScheduled>(),
        EventType::CancelRequested => root_schema::<CancelRequested>(),
        EventType::Cancelled => root_schema::<Cancelled>(),
        EventType::TimedOut => root_schema::<TimedOut>(),
        EventType::AttemptLost => root_schema::<AttemptLost>(),
        EventType::DeadLettered => root_schema::<DeadLettered>(),
        EventType::Rejected => root_schema::<Rejected>(),
    }
}

/// A standalone draft 2020-12 schema of `T`, its subschemas under `$defs`.
fn root_schema<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// What each event means, from the doc comments of [`Event`]'s variants,
/// keyed by type token: one source for the Rust docs and the schemas.
fn event_meanings() -> BTreeMap<String, String> {
    let event = root_schema::<Event>();
    let variants = event
        .get("oneOf")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    variants
        .iter()
        .filter_map(|v| {
            let token = v.pointer("/properties/type/const")?.as_str()?;
            let meaning = v.get("description")?.as_str()?;
            Some((token.to_owned(), meaning.to_owned()))
        })
        .collect()
}

/// Adds `$id` and `description`, and orders every object's keys. The
/// `title` stays the Rust type name (`Started`, `TaskSpec`), which code
/// generators in other languages turn into class names.
fn finish(mut schema: Value, relative: &str, description: &str) -> Value {
    if let Some(object) = schema.as_object_mut() {
        object.insert("$id".to_owned(), format!("{BASE_URI}{relative}").into());
        object.insert("description".to_owned(), description.trim().into());
    }
    sort_keys(schema)
}

/// Rebuilds every object with its keys in order, whatever map `serde_json`
/// was built with, so the files are byte-for-byte reproducible.
fn sort_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, sort_keys(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// The file contents of a schema: pretty JSON and a trailing newline.
fn render(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a JSON value always serializes");
    text.push('\n');
    text
}

/// Every `*.json` file under `dir`, recursively; none when `dir` is missing.
fn json_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                found.push(path);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_has_a_described_body_schema() {
        let schemas = all();
        for ty in EventType::ALL {
            let schema = &schemas[&format!("event/{}.json", ty.as_str())];
            let description = schema["description"].as_str().unwrap();
            assert!(
                description.len() > format!("Body (`data`) of a `{}` event. ", ty.ce_type()).len(),
                "{ty} has no meaning: {description}"
            );
        }
        assert_eq!(schemas.len(), EventType::ALL.len() + 8);
    }

    #[test]
    fn write_all_removes_stale_files() {
        let dir = std::env::temp_dir().join(format!("runlog-schema-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(dir.join("event")).unwrap();
        std::fs::write(dir.join("event/gone.json"), "{}").unwrap();
        std::fs::write(dir.join("README.md"), "kept").unwrap();
        let written = write_all(&dir).unwrap();
        assert_eq!(written.len(), all().len());
        assert!(!dir.join("event/gone.json").exists());
        assert!(dir.join("README.md").exists());
        let text = std::fs::read_to_string(dir.join("event/started.json")).unwrap();
        assert!(text.ends_with("}\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
