//! What a caller asks for: the task specification, its priority, its retry
//! policy, and the classified errors an attempt can end with.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::id::{ExecutionId, QueueName, ScheduleId};

/// Dispatch priority. Workers drain `high` before `normal` before `low`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Served first.
    High,
    /// The default.
    #[default]
    Normal,
    /// Served last, but never starved.
    Low,
}

impl Priority {
    /// Every level, highest first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// The subject token of this level.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => Err(format!(
                "unknown priority {other:?}: use high, normal or low"
            )),
        }
    }
}

/// Why an attempt failed. Retries depend on the class, never on parsing a
/// message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Connection refused or reset, DNS failure: try again.
    Network,
    /// The attempt ran past its deadline.
    Timeout,
    /// The target said "slow down" (HTTP 429); honour `retry_after_ms`.
    RateLimited,
    /// Not enough memory, disk or a similar resource: try again later.
    Resource,
    /// Credentials were refused: retrying will not help.
    Permission,
    /// The task's input is wrong: retrying will not help.
    InvalidInput,
    /// The target does not exist: retrying will not help.
    NotFound,
    /// The task itself says retrying will not help (a shell task's exit
    /// code listed in `permanent_exit_codes`).
    Permanent,
    /// The process died (signal, OOM kill, non-zero exit without a class).
    Crashed,
    /// The attempt was stopped on request.
    Cancelled,
    /// Nothing better is known.
    Unknown,
}

impl ErrorClass {
    /// Whether this class is retried when the task's policy does not say
    /// otherwise.
    pub fn retryable_by_default(self) -> bool {
        !matches!(
            self,
            ErrorClass::Permission
                | ErrorClass::InvalidInput
                | ErrorClass::NotFound
                | ErrorClass::Permanent
                | ErrorClass::Cancelled
        )
    }
}

/// The error an attempt ended with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskError {
    /// The class that decides retryability.
    pub class: ErrorClass,
    /// A human-readable message. Never holds secret values.
    pub message: String,
    /// Whether the executor believes another attempt could succeed. The
    /// policy may still refuse (attempts exhausted, class listed as
    /// non-retryable).
    pub retryable: bool,
    /// The smallest delay before the next attempt that the target asked for
    /// (`Retry-After`), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl TaskError {
    /// An error of `class`, retryable as the class is by default.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        TaskError {
            class,
            message: message.into(),
            retryable: class.retryable_by_default(),
            retry_after_ms: None,
        }
    }
}

/// How failed attempts are retried: exponential backoff with full jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct RetryPolicy {
    /// Failed attempts allowed before the execution is dead-lettered
    /// (1 = no retry). Attempts lost to a dead worker do not count.
    #[schemars(range(min = 1))]
    pub max_attempts: u32,
    /// Backoff before the first retry, in milliseconds.
    pub backoff_base_ms: u64,
    /// Upper bound of any backoff, in milliseconds.
    pub backoff_max_ms: u64,
    /// Growth factor per failed attempt.
    #[schemars(range(min = 1.0))]
    pub backoff_multiplier: f64,
    /// Classes never retried for this task, on top of the classes that are
    /// not retryable by default.
    pub non_retryable: Vec<ErrorClass>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
            backoff_multiplier: 2.0,
            non_retryable: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// Whether `error`, the `failures`-th failure (1-based), gets another attempt.
    pub fn allows_retry(&self, error: &TaskError, failures: u32) -> bool {
        !self.is_permanent(error) && failures < self.max_attempts
    }

    /// Whether `error` is never retried under this policy, however many
    /// attempts are left.
    pub fn is_permanent(&self, error: &TaskError) -> bool {
        !error.retryable
            || !error.class.retryable_by_default()
            || self.non_retryable.contains(&error.class)
    }

    /// The backoff after the `failures`-th failure (1-based), in
    /// milliseconds. `jitter` in `[0, 1]` picks a point in the full-jitter
    /// window `[0, min(max, base * multiplier^(failures-1))]`; a
    /// `retry_after_ms` from the target is a floor.
    pub fn backoff_ms(&self, failures: u32, jitter: f64, retry_after_ms: Option<u64>) -> u64 {
        let exponent = failures.saturating_sub(1).min(64) as i32;
        let growth = self.backoff_multiplier.max(1.0).powi(exponent);
        let window = (self.backoff_base_ms as f64 * growth).min(self.backoff_max_ms as f64);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            1.0
        };
        let delay = (window * jitter) as u64;
        delay.max(retry_after_ms.unwrap_or(0))
    }
}

/// Everything a caller states about a task when submitting it.
///
/// Secret values never travel in the log: `secrets` maps an environment
/// variable name to the *name* of a secret that the worker resolves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskSpec {
    /// The queue the task is dispatched on.
    #[serde(default)]
    pub queue: QueueName,
    /// The task kind (`shell`, `http`, or a custom handler name).
    #[schemars(length(min = 1, max = 128))]
    pub kind: String,
    /// Dispatch priority.
    #[serde(default)]
    pub priority: Priority,
    /// The task's input, interpreted by its kind.
    #[serde(default)]
    pub input: serde_json::Value,
    /// Environment values as a caller hands them to intake. Never recorded:
    /// intake seals the values in the `<p>-env` key-value bucket under the
    /// execution id and lists the names in `sealed_env`, so a recorded spec
    /// with values here is refused by [`validate`](Self::validate).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Names of the environment variables sealed in the `<p>-env` bucket
    /// (key: the execution id, value: a JSON object of name → value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sealed_env: Vec<String>,
    /// Secret environment variables: variable name → secret name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Deadline of one attempt, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31_622_400_000u64))]
    pub attempt_timeout_ms: Option<u64>,
    /// Deadline of the whole execution from submission, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31_622_400_000u64))]
    pub timeout_ms: Option<u64>,
    /// Retry policy.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Free-form labels for filtering (`team=infra`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Labels a worker must carry to take the task (`pool=backup`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub worker_labels: BTreeMap<String, String>,
    /// Rate-limit key (`provider=openai`): across the cluster, workers
    /// start attempts of one key no faster than the limit configured for
    /// it (`docs/workers.md`, "Rate limits and concurrency keys"). 1–128 of
    /// `A-Z a-z 0-9 _ - = .`, no leading, trailing or double dot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub rate_key: Option<String>,
    /// Concurrency key (`workspace=prod`): across the cluster, at most the
    /// configured number of attempts of one key run at once (`1` for "one
    /// apply per workspace"). Same characters as `rate_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub concurrency_key: Option<String>,
    /// The capacity class worker capacity rules match instead of the kind
    /// (`plan`, `apply`): a plan and an apply that are both `shell` tasks
    /// get different rules (`docs/workers.md`, "Capacity rules"). Same
    /// characters as `rate_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub capacity: Option<String>,
    /// Circuit-breaker key (`provider=openai`): attempts of one key share a
    /// breaker that opens after too many failures and delays them while
    /// open (`docs/workers.md`, "Circuit breakers"). Without it, an `http`
    /// task's breaker is its target host. Same characters as `rate_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub breaker: Option<String>,
    /// Caller-chosen key: every submission with the same key gets the same
    /// execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub idempotency_key: Option<String>,
    /// Do not dispatch before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// The execution this one retries, when it was started by a replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<ExecutionId>,
    /// The workflow execution this task is a node run of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_execution: Option<ExecutionId>,
    /// With `workflow_execution`: the node it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub node: Option<String>,
    /// The schedule this task is a run of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleId>,
    /// With `schedule`: the run's logical time (its tick, or when a manual
    /// run was asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// With `schedule`: why the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
}

/// Why an execution of a schedule was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A tick, on time.
    Tick,
    /// A tick missed while no engine ran, run later.
    CatchUp,
    /// A tick of a past range, asked for.
    Backfill,
    /// Run now, asked for.
    Manual,
    /// A tick that waited for the run before it (`buffer_one`).
    Buffered,
}

impl Trigger {
    /// Its name (`catch_up`).
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Tick => "tick",
            Trigger::CatchUp => "catch_up",
            Trigger::Backfill => "backfill",
            Trigger::Manual => "manual",
            Trigger::Buffered => "buffered",
        }
    }
}

/// Limits checked by [`TaskSpec::validate`].
pub const MAX_KIND_LEN: usize = 128;
/// The longest deadline a spec may state: a year (366 days), in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = 366 * 24 * 3600 * 1000;
/// The longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// A field of a [`TaskSpec`] that is invalid, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// The JSON path of the field (`retry.max_attempts`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FieldError {
    /// Every error of `errors` on one line (`cron: …; time_zone: …`).
    pub fn join(errors: &[FieldError]) -> String {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl TaskSpec {
    /// A spec with defaults for everything but the kind.
    pub fn new(kind: impl Into<String>) -> Self {
        TaskSpec {
            queue: QueueName::default(),
            kind: kind.into(),
            priority: Priority::default(),
            input: serde_json::Value::Null,
            env: BTreeMap::new(),
            sealed_env: Vec::new(),
            secrets: BTreeMap::new(),
            attempt_timeout_ms: None,
            timeout_ms: None,
            retry: RetryPolicy::default(),
            labels: BTreeMap::new(),
            worker_labels: BTreeMap::new(),
            rate_key: None,
            concurrency_key: None,
            capacity: None,
            breaker: None,
            idempotency_key: None,
            not_before: None,
            retry_of: None,
            workflow_execution: None,
            node: None,
            schedule: None,
            scheduled_for: None,
            trigger: None,
        }
    }

    /// Checks the rules a submission must meet; names the first bad field.
    pub fn validate(&self) -> Result<(), FieldError> {
        let bad = |field: &str, reason: &str| {
            Err(FieldError {
                field: field.to_owned(),
                reason: reason.to_owned(),
            })
        };
        if self.kind.trim().is_empty() {
            return bad("kind", "must not be empty");
        }
        if self.kind.len() > MAX_KIND_LEN {
            return bad("kind", "must be at most 128 bytes");
        }
        if self.retry.max_attempts == 0 {
            return bad("retry.max_attempts", "must be at least 1");
        }
        if !(self.retry.backoff_multiplier.is_finite() && self.retry.backoff_multiplier >= 1.0) {
            return bad("retry.backoff_multiplier", "must be a number >= 1");
        }
        if self.retry.backoff_max_ms < self.retry.backoff_base_ms {
            return bad("retry.backoff_max_ms", "must be >= retry.backoff_base_ms");
        }
        if self.attempt_timeout_ms == Some(0) {
            return bad("attempt_timeout_ms", "must be positive");
        }
        if self.timeout_ms == Some(0) {
            return bad("timeout_ms", "must be positive");
        }
        if self
            .attempt_timeout_ms
            .is_some_and(|ms| ms > MAX_TIMEOUT_MS)
        {
            return bad("attempt_timeout_ms", "must be at most a year (31622400000)");
        }
        if self.timeout_ms.is_some_and(|ms| ms > MAX_TIMEOUT_MS) {
            return bad("timeout_ms", "must be at most a year (31622400000)");
        }
        if self
            .idempotency_key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_LEN)
        {
            return bad("idempotency_key", "must be 1 to 256 bytes");
        }
        for (field, key) in [
            ("rate_key", &self.rate_key),
            ("concurrency_key", &self.concurrency_key),
            ("capacity", &self.capacity),
            ("breaker", &self.breaker),
        ] {
            if let Some(reason) = key.as_deref().and_then(limit_key_error) {
                return bad(field, reason);
            }
        }
        for (field, labels) in [
            ("labels", &self.labels),
            ("worker_labels", &self.worker_labels),
        ] {
            if labels.len() > MAX_LABELS {
                return bad(field, "must hold at most 64 labels");
            }
            if let Some((key, value)) = labels.iter().find(|(k, v)| {
                k.trim().is_empty() || k.len() > MAX_LABEL_KEY_LEN || v.len() > MAX_LABEL_VALUE_LEN
            }) {
                let reason = if value.len() > MAX_LABEL_VALUE_LEN {
                    "values must be at most 1024 bytes"
                } else {
                    "keys must be 1 to 128 bytes"
                };
                return bad(&format!("{field}.{key}"), reason);
            }
        }
        if let Some(name) = self
            .env
            .keys()
            .chain(&self.sealed_env)
            .chain(self.secrets.keys())
            .find(|k| !is_env_name(k))
        {
            return bad(
                &format!("env.{name}"),
                "is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
            );
        }
        if let Some((variable, _)) = self.secrets.iter().find(|(_, name)| !is_secret_name(name)) {
            return bad(
                &format!("secrets.{variable}"),
                "does not name a secret: use 1 to 128 of A-Z a-z 0-9 _ . - (not starting with .)",
            );
        }
        if let Some(name) = self
            .sealed_env
            .iter()
            .find(|k| self.secrets.contains_key(*k))
        {
            return bad(&format!("secrets.{name}"), "is also set in env");
        }
        Ok(())
    }

    /// [`validate`](Self::validate), plus the rule for a spec about to be
    /// recorded: no environment values in it.
    pub fn validate_recorded(&self) -> Result<(), FieldError> {
        self.validate()?;
        if !self.env.is_empty() {
            return Err(FieldError {
                field: "env".to_owned(),
                reason: "environment values would be recorded in the log: submit them through \
                         the HTTP or NATS intake, which seals them, or store them with \
                         `runlog secret set` and name them in secrets"
                    .to_owned(),
            });
        }
        Ok(())
    }
}

/// The longest secret name, in bytes.
pub const MAX_SECRET_NAME_LEN: usize = 128;
/// Whether `name` can name a secret: 1 to 128 of `A-Z a-z 0-9 _ . -`, not
/// starting with `.`.
///
/// # Examples
/// ```
/// use runlog_events::secrets::is_secret_name;
///
/// assert!(is_secret_name("db-password"));
/// assert!(!is_secret_name("a/b"));
/// assert!(!is_secret_name(".hidden"));
/// ```
pub fn is_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SECRET_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The longest rate or concurrency key, in bytes.
pub const MAX_LIMIT_KEY_LEN: usize = 128;
/// Labels (and worker labels) a task may carry.
pub const MAX_LABELS: usize = 64;
/// The longest label key, in bytes.
pub const MAX_LABEL_KEY_LEN: usize = 128;
/// The longest label value, in bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 1024;

/// Why `key` is not a valid rate or concurrency key, if it is not: 1–128 of
/// `A-Z a-z 0-9 _ - = .` with no leading, trailing or double dot (the key
/// becomes part of a key-value key).
///
/// # Examples
/// ```
/// use runlog_events::spec::limit_key_error;
///
/// assert_eq!(limit_key_error("workspace=prod"), None);
/// assert_eq!(limit_key_error("host=api.example.com"), None);
/// assert!(limit_key_error("a b").is_some());
/// assert!(limit_key_error("a..b").is_some());
/// ```
pub fn limit_key_error(key: &str) -> Option<&'static str> {
    if key.is_empty() || key.len() > MAX_LIMIT_KEY_LEN {
        return Some("must be 1 to 128 bytes");
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '.'))
    {
        return Some("may hold only A-Z a-z 0-9 _ - = .");
    }
    if key.starts_with('.') || key.ends_with('.') || key.contains("..") {
        return Some("must not start or end with a dot or hold two dots in a row");
    }
    None
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff_ms(1, 1.0, None), 1_000);
        assert_eq!(p.backoff_ms(2, 1.0, None), 2_000);
        assert_eq!(p.backoff_ms(3, 0.5, None), 2_000);
        assert_eq!(p.backoff_ms(40, 1.0, None), 300_000);
        assert_eq!(p.backoff_ms(1, 0.0, Some(5_000)), 5_000);
        assert_eq!(p.backoff_ms(1, f64::NAN, None), 1_000);
    }

    #[test]
    fn permanent_classes_are_never_retried() {
        let p = RetryPolicy::default();
        assert!(p.allows_retry(&TaskError::new(ErrorClass::Network, "reset"), 1));
        assert!(!p.allows_retry(&TaskError::new(ErrorClass::Network, "reset"), 3));
        let mut forced = TaskError::new(ErrorClass::Permission, "denied");
        forced.retryable = true;
        assert!(!p.allows_retry(&forced, 1));
        let p = RetryPolicy {
            non_retryable: vec![ErrorClass::Timeout],
            ..RetryPolicy::default()
        };
        assert!(!p.allows_retry(&TaskError::new(ErrorClass::Timeout, "slow"), 1));
    }

    #[test]
    fn validation_names_the_field() {
        let mut spec = TaskSpec::new("shell");
        assert!(spec.validate().is_ok());
        spec.retry.max_attempts = 0;
        assert_eq!(spec.validate().unwrap_err().field, "retry.max_attempts");
        let mut spec = TaskSpec::new("shell");
        spec.labels = (0..65).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert_eq!(spec.validate().unwrap_err().field, "labels");
        spec.labels = BTreeMap::from([("team".to_owned(), "x".repeat(1025))]);
        assert_eq!(spec.validate().unwrap_err().field, "labels.team");
        spec.labels = BTreeMap::from([("team".to_owned(), "x".repeat(1024))]);
        assert!(spec.validate().is_ok());
        let mut spec = TaskSpec::new("shell");
        spec.env.insert("1BAD".into(), "x".into());
        assert_eq!(spec.validate().unwrap_err().field, "env.1BAD");
    }

    #[test]
    fn limit_keys_are_validated() {
        let mut spec = TaskSpec::new("shell");
        spec.rate_key = Some("provider=openai".into());
        spec.concurrency_key = Some("workspace=prod".into());
        assert!(spec.validate().is_ok());
        spec.concurrency_key = Some("workspace prod".into());
        assert_eq!(spec.validate().unwrap_err().field, "concurrency_key");
        spec.concurrency_key = None;
        spec.rate_key = Some(String::new());
        assert_eq!(spec.validate().unwrap_err().field, "rate_key");
        spec.rate_key = None;
        spec.breaker = Some("host=api..example".into());
        assert_eq!(spec.validate().unwrap_err().field, "breaker");
    }
}
