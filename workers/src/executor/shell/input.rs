//! The input of a `shell` task, as users write it (`docs/executors.md`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use runlog_events::{ErrorClass, TaskError};
use serde::Deserialize;

/// The input of a `shell` task.
///
/// Exactly one of `argv` and `shell` must be given.
///
/// # Examples
/// ```
/// use runlog_worker::executor::ShellInput;
///
/// let input: ShellInput = serde_json::from_value(serde_json::json!({
///     "argv": ["restic", "backup", "--json", "/data"],
///     "progress": {"json": {"percent_field": "percent_done", "scale": 100}},
///     "extract": {"snapshot_id": {"json": "/snapshot_id"}},
///     "retryable_exit_codes": [1, 3],
/// }))
/// .unwrap();
/// assert_eq!(input.argv.unwrap()[0], "restic");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellInput {
    /// The program and its arguments, run directly (no shell, no word
    /// splitting, no globbing). The program is looked up on `PATH`.
    pub argv: Option<Vec<String>>,
    /// A script run with `sh -c`, for when you need pipes, loops or
    /// expansion.
    pub shell: Option<String>,
    /// Extra environment variables, on top of the worker's environment and
    /// the task's (sealed and secret) environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The working directory; the worker's when absent.
    pub cwd: Option<PathBuf>,
    /// Written to the program's standard input, which is then closed. When
    /// absent, standard input is `/dev/null`.
    pub stdin: Option<String>,
    /// Bytes of each stream kept in the output (half from the start, half
    /// from the end). Default [`DEFAULT_CAPTURE_BYTES`](super::DEFAULT_CAPTURE_BYTES), at most
    /// [`MAX_CAPTURE_BYTES`](super::MAX_CAPTURE_BYTES).
    pub capture_bytes: Option<usize>,
    /// How to read progress from output lines.
    pub progress: Option<ProgressPattern>,
    /// Output fields read from output lines, by name.
    #[serde(default)]
    pub extract: BTreeMap<String, Extract>,
    /// Exit codes that mean retrying will not help.
    #[serde(default)]
    pub permanent_exit_codes: Vec<i32>,
    /// When not empty, the only non-zero exit codes that are retried.
    #[serde(default)]
    pub retryable_exit_codes: Vec<i32>,
    /// Milliseconds between `SIGTERM` and `SIGKILL` when the attempt is
    /// stopped. Default [`DEFAULT_KILL_GRACE_MS`](super::DEFAULT_KILL_GRACE_MS).
    pub kill_grace_ms: Option<u64>,
}

/// How progress is read from output lines (both streams).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ProgressPattern {
    /// A regex with a named group `percent` (a number, 0 to 100) and
    /// optionally `message`. Any other named group whose match is an
    /// unsigned integer becomes a counter.
    Regex(String),
    /// Fields of JSON lines, like `restic backup --json` status lines.
    Json(JsonProgress),
}

/// Progress read from JSON output lines. A field is a top-level field name
/// (`percent_done`) or a JSON pointer (`/stats/percent`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonProgress {
    /// The numeric field holding the completion; lines without it are not
    /// progress lines.
    pub percent_field: String,
    /// Multiplies the field to get a percentage: `100` for a 0..1 fraction.
    #[serde(default = "unit_scale")]
    pub scale: f64,
    /// The field holding the status message.
    pub message_field: Option<String>,
    /// Counter name → field holding an unsigned integer.
    #[serde(default)]
    pub counters: BTreeMap<String, String>,
}

fn unit_scale() -> f64 {
    1.0
}

/// Where an output field comes from. The last line that matches wins.
///
/// In JSON: a string is a regex (`"snapshot (?P<value>[0-9a-f]+) saved"`);
/// `{"regex": ...}` says the same explicitly; `{"json": "/snapshot_id"}`
/// reads a field of JSON lines.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "ExtractForm")]
pub enum Extract {
    /// A regex; the value is the named group `value`, else the first
    /// group, else the whole match. Always a string.
    Regex(String),
    /// A field name or JSON pointer into JSON lines; the value keeps its
    /// JSON type.
    Json(String),
}

/// The forms [`Extract`] is written in.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a regex string, {\"regex\": \"...\"} or {\"json\": \"/pointer\"}"
)]
enum ExtractForm {
    Short(String),
    Tagged(TaggedExtract),
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum TaggedExtract {
    Regex(String),
    Json(String),
}

impl From<ExtractForm> for Extract {
    fn from(form: ExtractForm) -> Self {
        match form {
            ExtractForm::Short(regex) | ExtractForm::Tagged(TaggedExtract::Regex(regex)) => {
                Extract::Regex(regex)
            }
            ExtractForm::Tagged(TaggedExtract::Json(field)) => Extract::Json(field),
        }
    }
}

/// An input error, pointing at the docs.
pub(super) fn invalid(message: impl Into<String>) -> TaskError {
    TaskError::new(
        ErrorClass::InvalidInput,
        format!("shell input: {} (see docs/executors.md)", message.into()),
    )
}

/// Which non-zero exit codes are worth another attempt.
#[derive(Debug, Clone, Default)]
pub(in crate::executor) struct ExitPolicy {
    pub(in crate::executor) permanent: Vec<i32>,
    pub(in crate::executor) retryable: Vec<i32>,
}

impl ExitPolicy {
    /// The class of a failed exit: `permanent` for a code the task lists
    /// as such, `unknown` otherwise.
    pub(in crate::executor) fn class(&self, code: i32) -> ErrorClass {
        if self.permanent.contains(&code) {
            ErrorClass::Permanent
        } else {
            ErrorClass::Unknown
        }
    }

    pub(in crate::executor) fn retryable(&self, code: i32) -> bool {
        if self.permanent.contains(&code) {
            false
        } else if self.retryable.is_empty() {
            true
        } else {
            self.retryable.contains(&code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_policy_lists_override_the_retryable_default() {
        let default = ExitPolicy::default();
        assert!(default.retryable(1));
        let permanent = ExitPolicy {
            permanent: vec![2],
            retryable: vec![],
        };
        assert!(!permanent.retryable(2));
        assert!(permanent.retryable(1));
        // A listed code is the task saying so: class `permanent`, not `unknown`.
        assert_eq!(permanent.class(2), ErrorClass::Permanent);
        assert_eq!(permanent.class(1), ErrorClass::Unknown);
        let only = ExitPolicy {
            permanent: vec![],
            retryable: vec![75],
        };
        assert!(only.retryable(75));
        assert!(!only.retryable(1));
    }
}
