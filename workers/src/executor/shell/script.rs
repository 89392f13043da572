//! `script`: a piece of code in python3, node or sh. The task's `input` is
//! written to its standard input as JSON, and what it prints on standard
//! output is its output, read as JSON. It runs in a clean environment
//! (`PATH` and `LANG` only), with no secret unless the input names it in
//! `env`, under a memory limit (the address space for python3 and sh, the
//! heap for node, whose runtime reserves more address space than it uses)
//! and the attempt's deadline. Its lines go to the attempt's log as a
//! shell program's do, and cancel stops its process group.
//!
//! ```json
//! {"language": "python3",
//!  "code": "import json,sys; d=json.load(sys.stdin); print(json.dumps({'n': len(d['items'])}))",
//!  "input": {"items": [1, 2, 3]},
//!  "env": ["API_TOKEN"],
//!  "memory_mb": 256}
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use runlog_events::{ErrorClass, TaskError};
use serde::Deserialize;
use serde_json::Value;

use super::input::ExitPolicy;
use super::observe::Observer;
use super::process::Program;
use super::{DEFAULT_KILL_GRACE_MS, MAX_CAPTURE_BYTES, Plan, execute};
use crate::handler::{Context, Handler, HandlerResult};

/// The memory a script gets unless it says otherwise.
pub const DEFAULT_MEMORY_MB: u64 = 512;
/// The most memory a script may ask for.
pub const MAX_MEMORY_MB: u64 = 16 * 1024;

/// The input of a `script` task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptInput {
    /// `python3`, `node` or `sh`.
    pub language: Language,
    /// The code.
    pub code: String,
    /// Written to standard input as JSON.
    #[serde(default)]
    pub input: Value,
    /// Names of the task's environment values (sealed env or secrets) the
    /// script may read; it sees no other.
    #[serde(default)]
    pub env: Vec<String>,
    /// Its memory limit in MiB ([`DEFAULT_MEMORY_MB`] when absent).
    #[serde(default)]
    pub memory_mb: Option<u64>,
}

/// A language a script is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// `python3 -c`.
    Python3,
    /// `node -e`.
    Node,
    /// `sh -c`.
    Sh,
}

impl Language {
    fn as_str(self) -> &'static str {
        match self {
            Language::Python3 => "python3",
            Language::Node => "node",
            Language::Sh => "sh",
        }
    }
}

/// Runs `script` tasks.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScriptExecutor;

impl Handler for ScriptExecutor {
    async fn run(&self, ctx: Context) -> HandlerResult {
        let script: ScriptInput = serde_json::from_value(ctx.input().clone())
            .map_err(|e| script_invalid(e.to_string()))?;
        let plan = plan(&script, ctx.env())?;
        let output = execute(&plan, &ctx).await?;
        let truncated = output["stdout_truncated_bytes"].as_u64().unwrap_or(0);
        if truncated > 0 {
            return Err(TaskError::new(
                ErrorClass::Permanent,
                format!(
                    "{} printed more than {MAX_CAPTURE_BYTES} bytes on stdout; \
                     an output larger than that belongs in a file",
                    plan.program.name
                ),
            ));
        }
        let stdout = output["stdout"].as_str().unwrap_or_default().trim();
        if stdout.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(stdout).map_err(|e| {
            TaskError::new(
                ErrorClass::Permanent,
                format!(
                    "{} did not print JSON on stdout ({e}); its output must be one JSON value",
                    plan.program.name
                ),
            )
        })
    }
}

fn script_invalid(reason: impl std::fmt::Display) -> TaskError {
    TaskError::new(
        ErrorClass::InvalidInput,
        format!("script input: {reason} (see docs/executors.md)"),
    )
}

/// The program a script runs as.
fn plan(script: &ScriptInput, task_env: &BTreeMap<String, String>) -> Result<Plan, TaskError> {
    let memory_mb = script.memory_mb.unwrap_or(DEFAULT_MEMORY_MB);
    if memory_mb == 0 || memory_mb > MAX_MEMORY_MB {
        return Err(script_invalid(format!(
            "`memory_mb` is {memory_mb}; it is 1 to {MAX_MEMORY_MB}"
        )));
    }
    let mut env = BTreeMap::from([
        (
            "PATH".to_owned(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
    ]);
    for name in &script.env {
        let value = task_env.get(name).ok_or_else(|| {
            script_invalid(format!(
                "`env` names {name:?}, which the task does not have: give the task that \
                 environment value (sealed `env`) or secret"
            ))
        })?;
        env.insert(name.clone(), value.clone());
    }
    let language = script.language;
    let bytes = memory_mb * 1024 * 1024;
    let (executable, args): (&str, Vec<String>) = match language {
        Language::Python3 | Language::Sh => (
            "prlimit",
            vec![
                format!("--as={bytes}"),
                "--".into(),
                language.as_str().into(),
                "-c".into(),
                script.code.clone(),
            ],
        ),
        Language::Node => (
            "node",
            vec![
                format!("--max-old-space-size={memory_mb}"),
                "-e".into(),
                script.code.clone(),
            ],
        ),
    };
    Ok(Plan {
        program: Program {
            name: format!("the {} script", language.as_str()),
            executable: executable.to_owned(),
            args,
            env,
            cwd: None,
            stdin: Some(script.input.to_string()),
            task_env: false,
            grace: Duration::from_millis(DEFAULT_KILL_GRACE_MS),
        },
        capture_bytes: MAX_CAPTURE_BYTES,
        observer: Observer::new(None, &BTreeMap::new())?,
        exits: ExitPolicy::default(),
    })
}
