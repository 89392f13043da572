//! What a worker lets its tasks do, checked before an attempt runs.
//!
//! An [`ExecutorPolicy`] holds a [`QueueRule`] for every queue (`"*"`, the
//! rule of queues without their own): kinds the worker refuses there, and
//! the programs `shell`, `script` and `ssh` tasks may start there. It also
//! says whether child processes may run as root. A refused attempt fails
//! with a `permission` error without running: nothing is started, no
//! secret is resolved.
//!
//! The program of a task is what the executor would start: `argv[0]` of a
//! `shell` or `ssh` task, `sh` for their `shell` scripts, the interpreter
//! of a `script` task (`python3`, `node`, `sh`). An allowed name (`restic`)
//! matches that name as written, looked up on the worker's `PATH`; an
//! allowed path (`/usr/bin/restic`) matches that path as written. Where an
//! allow-list is in force a `shell` task may not set `PATH` or a variable
//! that changes what a program loads (`LD_*`, `BASH_ENV`, `ENV`): either
//! would start another program under an allowed name.

use std::collections::{BTreeMap, BTreeSet};

use runlog_events::{ErrorClass, QueueName, TaskSpec};
use serde_json::Value;

/// The kinds whose tasks start programs on this host.
pub const PROCESS_KINDS: [&str; 2] = ["shell", "script"];

/// Variables a task may not set where programs are allow-listed.
const LOADER_VARIABLES: [&str; 3] = ["PATH", "BASH_ENV", "ENV"];

/// What one queue's tasks may do on this worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueRule {
    /// Kinds refused on the queue.
    pub disabled: BTreeSet<String>,
    /// When set, the only programs `shell`, `script` and `ssh` tasks may
    /// start.
    pub programs: Option<BTreeSet<String>>,
}

/// The worker's rules for its tasks; the default refuses nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorPolicy {
    /// The rule of every queue without its own.
    pub default: QueueRule,
    /// Rules of single queues; a queue's rule replaces the default field
    /// by field (a `programs` list it does not set is the default's).
    pub queues: BTreeMap<QueueName, QueueRulePatch>,
    /// Whether `shell` and `script` tasks may start programs as root (the
    /// worker runs as root and no `run_as` user is set).
    pub allow_root: bool,
}

/// A queue's own rule: each field it sets replaces the default's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueRulePatch {
    /// Kinds refused on the queue.
    pub disabled: Option<BTreeSet<String>>,
    /// The only programs tasks of the queue may start.
    pub programs: Option<BTreeSet<String>>,
}

impl Default for ExecutorPolicy {
    fn default() -> Self {
        ExecutorPolicy {
            default: QueueRule::default(),
            queues: BTreeMap::new(),
            allow_root: true,
        }
    }
}

/// Why an attempt may not run here: a `permission` error, never retried
/// on this worker (another worker's rules may differ, but retrying the
/// same input here cannot help).
fn refuse(message: String) -> runlog_events::TaskError {
    let mut error = runlog_events::TaskError::new(ErrorClass::Permission, message);
    error.retryable = false;
    error
}

impl ExecutorPolicy {
    /// The rule of `queue`.
    pub fn rule(&self, queue: &QueueName) -> QueueRule {
        let mut rule = self.default.clone();
        if let Some(patch) = self.queues.get(queue) {
            if let Some(disabled) = &patch.disabled {
                rule.disabled = disabled.clone();
            }
            if let Some(programs) = &patch.programs {
                rule.programs = Some(programs.clone());
            }
        }
        rule
    }

    /// Whether `spec` may run on this worker, whose child processes run
    /// as root when `children_run_as_root`.
    pub fn check(
        &self,
        spec: &TaskSpec,
        children_run_as_root: bool,
    ) -> Result<(), runlog_events::TaskError> {
        let kind = spec.kind.as_str();
        let rule = self.rule(&spec.queue);
        if rule.disabled.contains(kind) {
            return Err(refuse(format!(
                "this worker does not run `{kind}` tasks on queue {} (worker.executors \
                 disables it)",
                spec.queue
            )));
        }
        if PROCESS_KINDS.contains(&kind) && children_run_as_root && !self.allow_root {
            return Err(refuse(format!(
                "this worker runs as root and would start the `{kind}` task's program as \
                 root: start it with --run-as USER, or --allow-root if that is meant"
            )));
        }
        let Some(programs) = &rule.programs else {
            return Ok(());
        };
        let Some(program) = program_of(kind, &spec.input) else {
            return Ok(());
        };
        if !programs.contains(&program) {
            return Err(refuse(format!(
                "`{program}` is not among the programs this worker lets `{kind}` tasks of \
                 queue {} start ({}; worker.executors programs)",
                spec.queue,
                programs.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if kind == "shell" {
            let names = spec
                .env
                .keys()
                .chain(&spec.sealed_env)
                .chain(spec.secrets.keys())
                .cloned()
                .chain(
                    spec.input
                        .get("env")
                        .and_then(Value::as_object)
                        .into_iter()
                        .flat_map(|env| env.keys().cloned()),
                );
            if let Some(name) = names.into_iter().find(|n| changes_the_program(n)) {
                return Err(refuse(format!(
                    "the task sets {name}, which would change what `{program}` runs; tasks \
                     may not set it where programs are allow-listed"
                )));
            }
        }
        Ok(())
    }
}

fn changes_the_program(name: &str) -> bool {
    LOADER_VARIABLES.contains(&name) || name.starts_with("LD_")
}

/// The program a task of `kind` starts, when the kind starts one and the
/// input names it (an input that names none fails in its executor).
pub fn program_of(kind: &str, input: &Value) -> Option<String> {
    match kind {
        "shell" | "ssh" => match (input.get("argv"), input.get("shell")) {
            (Some(argv), None) => argv.get(0)?.as_str().map(str::to_owned),
            (None, Some(_)) => Some("sh".to_owned()),
            _ => None,
        },
        "script" => {
            let language = input.get("language")?.as_str()?;
            Some(
                match language {
                    "python3" => "python3",
                    "node" => "node",
                    "sh" => "sh",
                    _ => return None,
                }
                .to_owned(),
            )
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(queue: &str, kind: &str, input: Value) -> TaskSpec {
        let mut spec = TaskSpec::new(kind);
        spec.input = input;
        spec.queue = QueueName::new(queue).unwrap();
        spec
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn programs_outside_the_allow_list_and_disabled_kinds_are_refused() {
        let mut policy = ExecutorPolicy::default();
        policy.default.programs = Some(set(&["restic", "/usr/bin/tofu"]));
        policy.queues.insert(
            QueueName::new("remote").unwrap(),
            QueueRulePatch {
                disabled: Some(set(&["script"])),
                programs: Some(set(&["systemctl"])),
            },
        );
        let ok = |s: &TaskSpec| policy.check(s, false).map_err(|e| e.message);
        assert_eq!(
            ok(&spec(
                "default",
                "shell",
                json!({"argv": ["restic", "backup"]})
            )),
            Ok(())
        );
        assert_eq!(
            ok(&spec(
                "default",
                "shell",
                json!({"argv": ["/usr/bin/tofu"]})
            )),
            Ok(())
        );
        let denied = policy
            .check(
                &spec("default", "shell", json!({"argv": ["/tmp/restic"]})),
                false,
            )
            .unwrap_err();
        assert_eq!(denied.class, ErrorClass::Permission);
        assert!(
            denied.message.contains("`/tmp/restic` is not among"),
            "{denied:?}"
        );
        assert!(ok(&spec("default", "shell", json!({"shell": "restic backup"}))).is_err());
        assert!(
            ok(&spec(
                "default",
                "script",
                json!({"language": "python3", "code": ""})
            ))
            .is_err()
        );
        assert_eq!(
            ok(&spec("default", "http", json!({"url": "http://x"}))),
            Ok(())
        );
        assert_eq!(
            ok(&spec(
                "remote",
                "ssh",
                json!({"argv": ["systemctl", "restart"]})
            )),
            Ok(())
        );
        assert!(ok(&spec("remote", "ssh", json!({"argv": ["restic"]}))).is_err());
        let disabled = ok(&spec(
            "remote",
            "script",
            json!({"language": "sh", "code": ""}),
        ));
        assert!(
            disabled
                .unwrap_err()
                .contains("does not run `script` tasks")
        );
    }

    #[test]
    fn a_task_may_not_move_path_under_an_allow_list() {
        let mut policy = ExecutorPolicy::default();
        policy.default.programs = Some(set(&["restic"]));
        let moved = spec(
            "default",
            "shell",
            json!({"argv": ["restic"], "env": {"PATH": "/tmp/evil"}}),
        );
        assert!(
            policy
                .check(&moved, false)
                .unwrap_err()
                .message
                .contains("PATH")
        );
        let mut preload = spec("default", "shell", json!({"argv": ["restic"]}));
        preload.env.insert("LD_PRELOAD".into(), "/tmp/x.so".into());
        assert!(policy.check(&preload, false).is_err());
        let mut fine = spec("default", "shell", json!({"argv": ["restic"]}));
        fine.env
            .insert("RESTIC_REPOSITORY".into(), "/srv/repo".into());
        assert_eq!(policy.check(&fine, false).map_err(|e| e.message), Ok(()));
    }

    #[test]
    fn root_children_need_consent() {
        let policy = ExecutorPolicy {
            allow_root: false,
            ..ExecutorPolicy::default()
        };
        let shell = spec("default", "shell", json!({"argv": ["id"]}));
        let refused = policy.check(&shell, true).unwrap_err();
        assert!(refused.message.contains("--run-as"), "{refused:?}");
        assert!(policy.check(&shell, false).is_ok());
        assert!(
            policy
                .check(&spec("default", "http", json!({})), true)
                .is_ok()
        );
        assert!(
            policy
                .check(&spec("default", "ssh", json!({"argv": ["id"]})), true)
                .is_ok()
        );
    }
}
