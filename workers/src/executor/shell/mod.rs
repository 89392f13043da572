//! The `shell` executor: runs one program per attempt.
//!
//! The program runs in its own process group with its output on pipes.
//! Each output line goes to the attempt's log as it arrives, is matched
//! against the task's progress pattern and extractors, and lands in a
//! bounded capture (head and tail) that becomes part of the output. On
//! cancellation or deadline the whole group gets `SIGTERM`, then `SIGKILL`
//! after a grace period, so the grandchildren a script started die too.
//!
//! [`ShellInput`] is the input format; `docs/executors.md` describes it
//! for users.
//!
//! - `input`: the [`ShellInput`] format, as users write it;
//! - `process`: the program's process group, its pipes, stopping it;
//! - `capture`: the bounded copy of each stream and the split into lines;
//! - `observe`: progress, extracted fields and the stderr tail, read
//!   from each line.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::Signal;
use runlog_events::{ErrorClass, TaskError};
use serde_json::Value;

use crate::executor::mask::mask;
use crate::executor::stop::StopReason;
use crate::handler::{Context, Handler, HandlerResult};

mod capture;
mod input;
mod observe;
mod process;
mod script;
pub mod usage;

pub use capture::MAX_LINE_BYTES;
pub use input::{Extract, JsonProgress, ProgressPattern, ShellInput};
pub use script::{Language, ScriptExecutor, ScriptInput};

pub(in crate::executor) use capture::{Lines, Shared};
pub(in crate::executor) use input::ExitPolicy;
use input::invalid;
pub(in crate::executor) use observe::Observer;
use process::{Ended, Program};

/// Bytes of each stream kept in the output when the input does not say.
pub const DEFAULT_CAPTURE_BYTES: usize = 64 * 1024;
/// The largest `capture_bytes` accepted: the output travels in one event.
pub const MAX_CAPTURE_BYTES: usize = 256 * 1024;
/// Time between `SIGTERM` and `SIGKILL` when the input does not say.
pub const DEFAULT_KILL_GRACE_MS: u64 = 5_000;

/// Runs `shell` tasks. Stateless: one value serves any number of attempts
/// at once.
#[derive(Debug, Clone, Default)]
pub struct ShellExecutor {
    _private: (),
}

impl ShellExecutor {
    /// The executor.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Handler for ShellExecutor {
    async fn run(&self, ctx: Context) -> HandlerResult {
        let plan = Plan::new(ctx.input())?;
        execute(&plan, &ctx).await
    }
}

/// Runs `plan` to its end: its output, or how it failed or was stopped.
async fn execute(plan: &Plan, ctx: &Context) -> HandlerResult {
    if let Some(reason) = StopReason::now(ctx) {
        return Err(reason.error(format!(
            "{}: the attempt was stopped before {} started",
            reason_word(reason),
            plan.program.name
        )));
    }
    let child = process::spawn(&plan.program, ctx).await?;
    let shared = Mutex::new(Shared::new(plan.capture_bytes, plan.observer.clone()));
    let ended = process::supervise(child, &plan.program, ctx, &shared).await;
    let shared = shared.into_inner().unwrap_or_else(PoisonError::into_inner);
    match ended {
        Ended::Stopped { reason, escalated } => Err(reason.error(format!(
            "{}: stopped {} and its process group with SIGTERM{}",
            reason_word(reason),
            plan.program.name,
            if escalated {
                format!(", then SIGKILL after {} ms", plan.program.grace.as_millis())
            } else {
                String::new()
            }
        ))),
        Ended::Lost(error) => Err(TaskError::new(
            ErrorClass::Unknown,
            format!("lost track of {}: {error}", plan.program.name),
        )),
        Ended::Exited(status) => plan.result(status, shared, ctx.env().values()),
    }
}

fn reason_word(reason: StopReason) -> &'static str {
    match reason {
        StopReason::Cancelled => "cancelled",
        StopReason::Timeout => "ran past the attempt deadline",
    }
}

/// A validated input, ready to run.
#[derive(Debug)]
struct Plan {
    program: Program,
    capture_bytes: usize,
    observer: Observer,
    exits: ExitPolicy,
}

impl Plan {
    fn new(input: &Value) -> Result<Self, TaskError> {
        let input: ShellInput =
            serde_json::from_value(input.clone()).map_err(|e| invalid(e.to_string()))?;
        let (name, executable, args) = match (input.argv, input.shell) {
            (Some(argv), None) => {
                let mut argv = argv.into_iter();
                let executable = argv
                    .next()
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| invalid("`argv` must start with a program name"))?;
                (format!("`{executable}`"), executable, argv.collect())
            }
            (None, Some(script)) => (
                "the shell script".to_owned(),
                "sh".to_owned(),
                vec!["-c".to_owned(), script],
            ),
            _ => {
                return Err(invalid(
                    "give exactly one of `argv` (runs a program) and `shell` (runs `sh -c`)",
                ));
            }
        };
        if let Some(bad) = input
            .env
            .iter()
            .find(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
        {
            return Err(invalid(format!(
                "`env.{}`: names must be non-empty without `=` or NUL, values without NUL",
                bad.0
            )));
        }
        let (capture_bytes, exits) = output_rules(
            input.capture_bytes,
            &input.permanent_exit_codes,
            &input.retryable_exit_codes,
        )
        .map_err(invalid)?;
        Ok(Plan {
            program: Program {
                name,
                executable,
                args,
                env: input.env,
                cwd: input.cwd,
                stdin: input.stdin,
                task_env: true,
                grace: Duration::from_millis(input.kill_grace_ms.unwrap_or(DEFAULT_KILL_GRACE_MS)),
            },
            capture_bytes,
            observer: Observer::new(input.progress.as_ref(), &input.extract)?,
            exits,
        })
    }

    /// The attempt's result once the program exited on its own.
    fn result<'a>(
        &self,
        status: ExitStatus,
        shared: Shared,
        secrets: impl IntoIterator<Item = &'a String>,
    ) -> HandlerResult {
        let exit = match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, signal) => {
                let number = signal.unwrap_or_default();
                let name = Signal::try_from(number).map_or("an unknown signal", Signal::as_str);
                Exit::Signal(format!("{name} ({number})"))
            }
        };
        exit_result(&self.program.name, exit, shared, &self.exits, secrets)
    }
}

/// The capture size and the exit-code policy an input asks for: refused
/// when the capture is larger than one event may carry, or a code is both
/// permanent and retryable.
pub(in crate::executor) fn output_rules(
    capture_bytes: Option<usize>,
    permanent: &[i32],
    retryable: &[i32],
) -> Result<(usize, ExitPolicy), String> {
    let capture_bytes = capture_bytes.unwrap_or(DEFAULT_CAPTURE_BYTES);
    if capture_bytes > MAX_CAPTURE_BYTES {
        return Err(format!(
            "`capture_bytes` is {capture_bytes}, at most {MAX_CAPTURE_BYTES} are kept: \
             write large output to a file instead"
        ));
    }
    if let Some(code) = permanent.iter().find(|c| retryable.contains(c)) {
        return Err(format!(
            "exit code {code} is both in `permanent_exit_codes` and `retryable_exit_codes`"
        ));
    }
    let exits = ExitPolicy {
        permanent: permanent.to_vec(),
        retryable: retryable.to_vec(),
    };
    Ok((capture_bytes, exits))
}

/// How a program ended on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::executor) enum Exit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by the named signal.
    Signal(String),
}

/// The attempt's result once a program (local or remote) ended on its
/// own: its output for exit code 0; otherwise an error quoting the end of
/// its stderr, classed and retried as `exits` says, with `secrets` masked.
pub(in crate::executor) fn exit_result<'a>(
    name: &str,
    exit: Exit,
    shared: Shared,
    exits: &ExitPolicy,
    secrets: impl IntoIterator<Item = &'a String>,
) -> HandlerResult {
    let secrets: Vec<&str> = secrets.into_iter().map(String::as_str).collect();
    let stderr_tail = || {
        let lines: Vec<&str> = shared
            .observer
            .stderr_tail
            .iter()
            .map(|s| s.as_str())
            .collect();
        if lines.is_empty() {
            "no output on stderr".to_owned()
        } else {
            format!("stderr ends with: {}", lines.join(" | "))
        }
    };
    match exit {
        Exit::Code(0) => Ok(shared.output()),
        Exit::Code(code) => {
            let message = format!("{name} exited with code {code}; {}", stderr_tail());
            let mut error = TaskError::new(exits.class(code), mask(&message, secrets));
            error.retryable = exits.retryable(code);
            Err(error)
        }
        Exit::Signal(signal) => {
            let message = format!(
                "{name} was killed by {signal}, perhaps by the out-of-memory killer \
                 or from outside the worker; {}",
                stderr_tail()
            );
            Err(TaskError::new(ErrorClass::Crashed, mask(&message, secrets)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exactly_one_of_argv_and_shell_is_required() {
        for input in [
            json!({}),
            json!({"argv": ["true"], "shell": "true"}),
            json!({"argv": []}),
        ] {
            let error = Plan::new(&input).unwrap_err();
            assert_eq!(error.class, ErrorClass::InvalidInput, "{input}");
        }
        assert!(Plan::new(&json!({"shell": "true"})).is_ok());
    }

    #[test]
    fn a_progress_regex_without_percent_group_is_refused() {
        let error =
            Plan::new(&json!({"argv": ["true"], "progress": {"regex": "(\\d+)%"}})).unwrap_err();
        assert!(error.message.contains("percent"), "{}", error.message);
    }

    #[test]
    fn extract_accepts_the_short_and_tagged_forms() {
        let input: ShellInput = serde_json::from_value(json!({
            "argv": ["true"],
            "extract": {"a": "x(?P<value>\\d)", "b": {"regex": "y"}, "c": {"json": "/id"}},
        }))
        .unwrap();
        assert_eq!(input.extract["a"], Extract::Regex("x(?P<value>\\d)".into()));
        assert_eq!(input.extract["b"], Extract::Regex("y".into()));
        assert_eq!(input.extract["c"], Extract::Json("/id".into()));
        let error = Plan::new(&json!({"argv": ["true"], "extract": {"stdout": "x"}})).unwrap_err();
        assert_eq!(error.class, ErrorClass::InvalidInput);
    }
}
