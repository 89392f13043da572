//! The `shell` executor against real processes.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::killpg;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use runlog_events::event::{LogLine, LogStream};
use runlog_events::{ErrorClass, ExecutionId};
use runlog_testkit::eventually;
use runlog_worker::executor::ShellExecutor;
use runlog_worker::handler::{Context, ContextBuilder, Handler, HandlerResult, Telemetry};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long any awaited condition may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(15);

fn builder(input: Value) -> ContextBuilder {
    Context::builder(ExecutionId::new("shell-test").unwrap(), 1, "shell", input)
}

fn context(input: Value) -> (Context, Telemetry) {
    builder(input).build()
}

/// Runs `ctx` to its end and returns the result with every log line.
async fn finish(ctx: Context, mut telemetry: Telemetry) -> (HandlerResult, Vec<LogLine>) {
    let result = tokio::time::timeout(PATIENCE, ShellExecutor::new().run(ctx))
        .await
        .expect("the shell task ended in time");
    let mut lines = Vec::new();
    // The context is gone with the run, so the channel ends here.
    while let Some(line) = telemetry.logs.recv().await {
        lines.push(line);
    }
    (result, lines)
}

async fn run(input: Value) -> (HandlerResult, Vec<LogLine>) {
    let (ctx, telemetry) = context(input);
    finish(ctx, telemetry).await
}

fn texts(lines: &[LogLine], stream: LogStream) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| l.stream == stream)
        .map(|l| l.line.as_str())
        .collect()
}

/// Starts the task in the background.
fn start(ctx: Context) -> JoinHandle<HandlerResult> {
    tokio::spawn(async move { ShellExecutor::new().run(ctx).await })
}

async fn next_line(telemetry: &mut Telemetry) -> LogLine {
    tokio::time::timeout(PATIENCE, telemetry.logs.recv())
        .await
        .expect("a log line in time")
        .expect("the task is still running")
}

async fn outcome(task: JoinHandle<HandlerResult>) -> HandlerResult {
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the task stopped in time")
        .unwrap()
}

/// Makes this test process adopt orphaned grandchildren. Containers often
/// run an init that never reaps, and a zombie still counts as a member of
/// its process group; adopting them lets [`assert_group_gone`] reap them.
fn adopt_orphans() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
}

/// Waits until no process of group `pgid` exists.
async fn assert_group_gone(pgid: Pid) {
    eventually(
        PATIENCE,
        &format!("process group {pgid} to be gone"),
        || async {
            while let Ok(status) =
                waitpid(Pid::from_raw(-pgid.as_raw()), Some(WaitPidFlag::WNOHANG))
            {
                if status == WaitStatus::StillAlive {
                    break;
                }
            }
            anyhow::ensure!(
                killpg(pgid, None) == Err(Errno::ESRCH),
                "process group {pgid} is still alive"
            );
            Ok(Some(()))
        },
    )
    .await
    .unwrap();
}

/// The group of a script that printed `$$` as its first line.
async fn group_of(telemetry: &mut Telemetry) -> Pid {
    let line = next_line(telemetry).await;
    let pgid = Pid::from_raw(line.line.trim().parse().expect("a pid"));
    assert_eq!(killpg(pgid, None), Ok(()), "the group runs");
    pgid
}

#[tokio::test]
async fn lines_reach_the_log_in_order() {
    let (result, lines) = run(json!({"argv": ["seq", "1", "500"]})).await;
    result.unwrap();
    let expected: Vec<String> = (1..=500).map(|i| i.to_string()).collect();
    assert_eq!(texts(&lines, LogStream::Stdout), expected);
}

#[tokio::test]
async fn lines_stream_while_the_program_still_runs() {
    let cancel = CancellationToken::new();
    let (ctx, mut telemetry) = builder(json!({"shell": "echo first; echo second >&2; sleep 100"}))
        .cancel(cancel.clone())
        .build();
    let task = start(ctx);
    let mut seen = vec![
        next_line(&mut telemetry).await,
        next_line(&mut telemetry).await,
    ];
    seen.sort_by_key(|l| l.line.clone());
    assert_eq!(
        seen,
        [
            LogLine {
                stream: LogStream::Stdout,
                line: "first".into()
            },
            LogLine {
                stream: LogStream::Stderr,
                line: "second".into()
            },
        ]
    );
    assert!(!task.is_finished());
    cancel.cancel();
    outcome(task).await.unwrap_err();
}

#[tokio::test]
async fn a_zero_exit_returns_the_captured_output() {
    let (result, _) = run(json!({"argv": ["sh", "-c", "printf 'a\\nb\\n'; echo oops >&2"]})).await;
    assert_eq!(
        result.unwrap(),
        json!({
            "exit_code": 0,
            "stdout": "a\nb\n",
            "stderr": "oops\n",
            "stdout_truncated_bytes": 0,
            "stderr_truncated_bytes": 0,
        })
    );
}

#[tokio::test]
async fn a_non_zero_exit_is_retryable_and_quotes_stderr() {
    let (result, _) = run(json!({"shell": "echo one >&2; echo two >&2; exit 3"})).await;
    let error = result.unwrap_err();
    assert_eq!(error.class, ErrorClass::Unknown);
    assert!(error.retryable);
    assert!(error.message.contains("code 3"), "{}", error.message);
    assert!(error.message.contains("one | two"), "{}", error.message);
}

#[tokio::test]
async fn exit_code_lists_decide_what_is_retried() {
    let exit = |code: i32, extra: Value| {
        let mut input = json!({"shell": format!("exit {code}")});
        input
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        input
    };
    let (permanent, _) = run(exit(3, json!({"permanent_exit_codes": [3]}))).await;
    let permanent = permanent.unwrap_err();
    assert!(!permanent.retryable);
    // A listed code is the task's own verdict: class `permanent`, not `unknown`.
    assert_eq!(permanent.class, ErrorClass::Permanent);
    let (other, _) = run(exit(3, json!({"retryable_exit_codes": [75]}))).await;
    let other = other.unwrap_err();
    assert!(!other.retryable);
    assert_eq!(other.class, ErrorClass::Unknown);
    let (listed, _) = run(exit(75, json!({"retryable_exit_codes": [75]}))).await;
    assert!(listed.unwrap_err().retryable);
}

#[tokio::test]
async fn a_program_killed_by_a_signal_crashed() {
    let (result, _) = run(json!({"shell": "kill -KILL $$"})).await;
    let error = result.unwrap_err();
    assert_eq!(error.class, ErrorClass::Crashed);
    assert!(error.message.contains("SIGKILL"), "{}", error.message);
}

#[tokio::test]
async fn a_missing_program_is_not_found() {
    let (result, _) = run(json!({"argv": ["runlog-no-such-program", "x"]})).await;
    let error = result.unwrap_err();
    assert_eq!(error.class, ErrorClass::NotFound);
    assert!(!error.retryable);
    assert!(
        error.message.contains("runlog-no-such-program"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn invalid_input_is_refused_before_anything_runs() {
    for input in [
        json!({"argv": ["true"], "shell": "true"}),
        json!({"shell": "true", "comand": "typo"}),
        json!({"shell": "true", "progress": {"regex": "("}}),
        json!({"shell": "true", "cwd": "/definitely/not/here"}),
    ] {
        let (result, lines) = run(input.clone()).await;
        let error = result.unwrap_err();
        assert_eq!(error.class, ErrorClass::InvalidInput, "{input}");
        assert!(!error.retryable);
        assert!(lines.is_empty());
    }
}

#[tokio::test]
async fn capture_keeps_head_and_tail_and_counts_truncation() {
    let (result, lines) = run(json!({"argv": ["seq", "1", "1000"], "capture_bytes": 100})).await;
    let output = result.unwrap();
    let full: String = (1..=1000).map(|i| format!("{i}\n")).collect();
    let truncated = full.len() - 100;
    assert_eq!(output["stdout_truncated_bytes"], truncated);
    assert_eq!(
        output["stdout"],
        format!(
            "{}\n[... {truncated} bytes truncated ...]\n{}",
            &full[..50],
            &full[full.len() - 50..]
        )
    );
    assert_eq!(
        texts(&lines, LogStream::Stdout).len(),
        1000,
        "the log is not capped"
    );
}

#[tokio::test]
async fn regex_progress_is_reported() {
    let (ctx, telemetry) = builder(json!({
        "shell": "echo '10% starting'; echo '55% copying'; echo done",
        "progress": {"regex": "(?P<percent>[0-9.]+)% (?P<message>\\w+)"},
    }))
    .build();
    let progress = telemetry.progress.clone();
    finish(ctx, telemetry).await.0.unwrap();
    let last = progress.borrow().clone().expect("progress was reported");
    assert_eq!(last.percent, Some(55.0));
    assert_eq!(last.message.as_deref(), Some("copying"));
}

#[tokio::test]
async fn json_progress_and_extraction_read_restic_style_lines() {
    let script = r#"
        echo '{"message_type":"status","percent_done":0.25,"files_done":1}'
        echo '{"message_type":"status","percent_done":0.42,"files_done":3}'
        echo '{"message_type":"summary","files_new":3,"snapshot_id":"5f1e2d3c"}'
        echo 'snapshot 5f1e2d3c saved'
    "#;
    let (ctx, telemetry) = builder(json!({
        "shell": script,
        "progress": {"json": {
            "percent_field": "percent_done",
            "scale": 100,
            "message_field": "message_type",
            "counters": {"files_done": "/files_done"},
        }},
        "extract": {
            "snapshot_id": {"json": "/snapshot_id"},
            "files_new": {"json": "files_new"},
            "saved": "snapshot (?P<value>[0-9a-f]+) saved",
        },
    }))
    .build();
    let progress = telemetry.progress.clone();
    let output = finish(ctx, telemetry).await.0.unwrap();
    assert_eq!(output["snapshot_id"], "5f1e2d3c");
    assert_eq!(output["files_new"], 3);
    assert_eq!(output["saved"], "5f1e2d3c");
    let last = progress.borrow().clone().expect("progress was reported");
    assert!((last.percent.unwrap() - 42.0).abs() < 1e-3, "{last:?}");
    assert_eq!(last.message.as_deref(), Some("status"));
    assert_eq!(
        last.counters,
        BTreeMap::from([("files_done".to_owned(), 3)])
    );
}

#[tokio::test]
async fn stdin_is_written_then_closed() {
    let (result, lines) = run(json!({"argv": ["cat"], "stdin": "hello\nworld"})).await;
    assert_eq!(result.unwrap()["stdout"], "hello\nworld");
    assert_eq!(texts(&lines, LogStream::Stdout), ["hello", "world"]);
}

#[tokio::test]
async fn cwd_sets_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (result, _) = run(json!({"argv": ["pwd", "-P"], "cwd": dir.path()})).await;
    let output = result.unwrap();
    assert_eq!(
        output["stdout"].as_str().unwrap().trim_end(),
        dir.path().canonicalize().unwrap().to_str().unwrap()
    );
}

#[tokio::test]
async fn env_merges_task_and_input_variables() {
    let env = BTreeMap::from([("API_TOKEN".to_owned(), "super-secret-value".to_owned())]);
    let (ctx, telemetry) = builder(json!({
        "shell": "test \"$API_TOKEN\" = super-secret-value && echo \"$GREETING\"",
        "env": {"GREETING": "hello"},
    }))
    .env(env)
    .build();
    let output = finish(ctx, telemetry).await.0.unwrap();
    assert_eq!(output["stdout"], "hello\n");
}

#[tokio::test]
async fn errors_never_show_environment_values() {
    let env = BTreeMap::from([("API_TOKEN".to_owned(), "super-secret-value".to_owned())]);
    let (ctx, telemetry) = builder(json!({
        "shell": "echo \"rejected token $API_TOKEN\" >&2; exit 1",
    }))
    .env(env)
    .build();
    let error = finish(ctx, telemetry).await.0.unwrap_err();
    assert!(
        !error.message.contains("super-secret-value"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("rejected token ***"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn cancel_kills_the_whole_process_group() {
    adopt_orphans();
    let cancel = CancellationToken::new();
    let (ctx, mut telemetry) = builder(json!({"shell": "sleep 100 & sleep 100 & echo $$; wait"}))
        .cancel(cancel.clone())
        .build();
    let task = start(ctx);
    let pgid = group_of(&mut telemetry).await;
    cancel.cancel();
    let error = outcome(task).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Cancelled);
    assert!(!error.retryable);
    assert!(!error.message.contains("SIGKILL"), "{}", error.message);
    assert_group_gone(pgid).await;
}

#[tokio::test]
async fn a_passed_deadline_stops_the_group_as_a_timeout() {
    adopt_orphans();
    let (ctx, mut telemetry) = builder(json!({"shell": "sleep 100 & echo $$; wait"}))
        .deadline(Some(Instant::now() + Duration::from_millis(500)))
        .build();
    let task = start(ctx);
    let pgid = group_of(&mut telemetry).await;
    let error = outcome(task).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Timeout);
    assert!(error.retryable);
    assert_group_gone(pgid).await;
}

#[tokio::test]
async fn sigkill_follows_when_the_program_ignores_sigterm() {
    adopt_orphans();
    let cancel = CancellationToken::new();
    let (ctx, mut telemetry) = builder(json!({
        "shell": "trap '' TERM; sleep 100 & echo $$; wait",
        "kill_grace_ms": 300,
    }))
    .cancel(cancel.clone())
    .build();
    let task = start(ctx);
    let pgid = group_of(&mut telemetry).await;
    let cancelled_at = Instant::now();
    cancel.cancel();
    let error = outcome(task).await.unwrap_err();
    assert!(cancelled_at.elapsed() >= Duration::from_millis(300));
    assert_eq!(error.class, ErrorClass::Cancelled);
    assert!(error.message.contains("SIGKILL"), "{}", error.message);
    assert_group_gone(pgid).await;
}

#[tokio::test]
async fn background_processes_left_behind_are_stopped() {
    adopt_orphans();
    let (ctx, mut telemetry) = builder(json!({
        "shell": "sleep 100 >/dev/null 2>&1 & echo $$",
    }))
    .build();
    let task = start(ctx);
    let pgid = Pid::from_raw(next_line(&mut telemetry).await.line.parse().unwrap());
    outcome(task).await.unwrap();
    assert_group_gone(pgid).await;
}

#[tokio::test]
async fn an_already_cancelled_attempt_starts_nothing() {
    let cancel = CancellationToken::new();
    cancel.cancel();
    let (ctx, telemetry) = builder(json!({"shell": "echo should-not-run"}))
        .cancel(cancel)
        .build();
    let (result, lines) = finish(ctx, telemetry).await;
    assert_eq!(result.unwrap_err().class, ErrorClass::Cancelled);
    assert!(lines.is_empty());
}
