//! Reading a task spec a caller sent, strictly: an unknown field is refused
//! with the nearest known one, and every error names its field by its JSON
//! path (`retry.max_attempts`) and says what is allowed.
//!
//! Only the doors that take submissions (HTTP, NATS) read this strictly. A
//! spec read back from the log keeps serde's tolerance of unknown fields, so
//! an older engine can read events a newer one wrote.

use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::spec::{FieldError, TaskSpec};

/// Reads `value` as a task spec. `extra` names top-level fields the door
/// takes beside the spec's own (`id`, `correlation_id`), which the caller
/// has removed from `value` already but which count as known.
pub fn read_spec(value: Value, extra: &[&str]) -> Result<TaskSpec, FieldError> {
    let Value::Object(object) = &value else {
        return Err(FieldError {
            field: String::new(),
            reason: format!(
                "a task spec is a JSON object, not {}",
                kind_of_value(&value)
            ),
        });
    };
    unknown_field(object, spec_root(), "", extra)?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let reason = plain(e.into_inner().to_string());
        // A missing field is reported at its parent: name the field itself.
        let field = match reason.strip_prefix("missing field `") {
            Some(rest) => join(&path, rest.split('`').next().unwrap_or_default()),
            None => path,
        };
        FieldError { field, reason }
    })
}

/// The first field of `object` that its schema does not name, searching
/// nested objects that have fixed fields (`retry`), not maps (`labels`) or
/// free values (`input`).
fn unknown_field(
    object: &Map<String, Value>,
    schema: &Value,
    path: &str,
    extra: &[&str],
) -> Result<(), FieldError> {
    let Some(properties) = properties_of(schema) else {
        return Ok(());
    };
    for (name, value) in object {
        let Some(field_schema) = properties.get(name) else {
            if extra.contains(&name.as_str()) {
                continue;
            }
            let known: Vec<&str> = properties
                .keys()
                .map(String::as_str)
                .chain(extra.iter().copied())
                .collect();
            return Err(FieldError {
                field: join(path, name),
                reason: unknown_reason(name, &known),
            });
        };
        if let Value::Object(inner) = value {
            unknown_field(inner, field_schema, &join(path, name), &[])?;
        }
    }
    Ok(())
}

fn unknown_reason(name: &str, known: &[&str]) -> String {
    let mut sorted = known.to_vec();
    sorted.sort_unstable();
    let list = sorted.join(", ");
    match nearest(name, known) {
        Some(near) => format!("unknown field (did you mean `{near}`?); known fields: {list}"),
        None => format!("unknown field; known fields: {list}"),
    }
}

/// The known name closest to `name`, if it is close enough to be a typo.
fn nearest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let (distance, best) = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), *k))
        .min()?;
    (distance <= (name.len() / 3).max(2)).then_some(best)
}

/// The `properties` of an object schema, through `$ref`s and the `anyOf`
/// of an optional field; `None` for anything else (maps, free values).
fn properties_of(schema: &Value) -> Option<&Map<String, Value>> {
    let schema = resolve(schema);
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        return Some(properties);
    }
    schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(Value::as_array)?
        .iter()
        .find_map(properties_of)
}

fn resolve(schema: &Value) -> &Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => reference
            .strip_prefix("#/$defs/")
            .and_then(|name| spec_root().pointer(&format!("/$defs/{name}")))
            .unwrap_or(schema),
        None => schema,
    }
}

fn spec_root() -> &'static Value {
    static ROOT: OnceLock<Value> = OnceLock::new();
    ROOT.get_or_init(|| {
        schemars::generate::SchemaSettings::draft2020_12()
            .for_deserialize()
            .into_generator()
            .into_root_schema_for::<TaskSpec>()
            .to_value()
    })
}

/// serde's sentence without Rust's type names.
fn plain(reason: String) -> String {
    reason
        .replace(
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        )
        .replace("expected u64", "expected a whole number of 0 or more")
        .replace("expected f64", "expected a number")
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// What a JSON value is, for messages (`a number`).
pub(crate) fn kind_of_value(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refused(value: Value) -> FieldError {
        read_spec(value, &["id", "correlation_id"]).expect_err("refused")
    }

    #[test]
    fn a_misspelled_field_is_refused_with_the_nearest_known_one() {
        let e = refused(json!({"kind": "shell", "inptu": {"script": "true"}}));
        assert_eq!(e.field, "inptu");
        assert!(e.reason.contains("did you mean `input`?"), "{}", e.reason);
        let e = refused(json!({"kind": "shell", "retry": {"max_atempts": 2}}));
        assert_eq!(e.field, "retry.max_atempts");
        assert!(e.reason.contains("`max_attempts`"), "{}", e.reason);
        let e = refused(json!({"kind": "shell", "corelation_id": "x"}));
        assert!(e.reason.contains("`correlation_id`"), "{}", e.reason);
        // Nothing close: the known fields are listed.
        let e = refused(json!({"kind": "shell", "zzzzzzzzzz": 1}));
        assert!(!e.reason.contains("did you mean"), "{}", e.reason);
        assert!(e.reason.contains("worker_labels"), "{}", e.reason);
    }

    #[test]
    fn maps_and_free_values_hold_any_key() {
        let spec = read_spec(
            json!({"kind": "shell", "labels": {"anything": "x"},
                   "input": {"whatever": {"deep": 1}}, "id": "ignored-here"}),
            &["id"],
        )
        .expect("accepted");
        assert_eq!(spec.labels["anything"], "x");
    }

    #[test]
    fn a_bad_value_is_named_by_its_json_path_and_says_what_is_allowed() {
        let e = refused(json!({"kind": "shell", "priority": "urgent"}));
        assert_eq!(e.field, "priority");
        assert!(e.reason.contains("`high`, `normal`, `low`"), "{}", e.reason);
        let e = refused(json!({"kind": "shell", "queue": "bad queue!"}));
        assert_eq!(e.field, "queue");
        assert!(e.reason.contains("letters, digits"), "{}", e.reason);
        let e = refused(json!({"kind": "shell", "retry": {"max_attempts": "x"}}));
        assert_eq!(e.field, "retry.max_attempts");
        let e = refused(json!({"kind": "shell", "labels": {"team": 1}}));
        assert_eq!(e.field, "labels.team");
        assert!(!e.reason.contains("line"), "{}", e.reason);
        let e = refused(json!({"queue": "q"}));
        assert_eq!(e.field, "kind");
        assert!(e.reason.contains("missing field `kind`"), "{}", e.reason);
        let e = refused(json!(["kind"]));
        assert!(e.reason.contains("JSON object"), "{}", e.reason);
    }
}
