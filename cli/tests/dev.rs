//! `runlog dev --once` against its own nats-server: a real append and replay
//! of one execution, and history that survives a restart.

use std::process::Command;

fn dev(data: &std::path::Path, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_runlog"))
        .args([
            "dev",
            "--once",
            "--nats-port",
            "0",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .args(extra)
        .output()
        .expect("runlog runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "runlog dev failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn dev_runs_one_execution_through_the_core_and_keeps_its_history() {
    let data = tempfile::tempdir().unwrap();
    let first = dev(data.path(), &[]);
    assert!(
        first.contains("the log holds 0 executions from earlier runs"),
        "{first}"
    );
    for line in [
        "submitted",
        "claimed      attempt 1",
        "finished     succeeded with output {\"message\":\"hello from runlog dev\"}",
        "replayed     3 events",
        "state        succeeded (the fold of the replayed log equals the live state)",
    ] {
        assert!(first.contains(line), "missing {line:?} in:\n{first}");
    }
    let types: Vec<&str> = first
        .lines()
        .filter(|l| l.trim_start().starts_with("seq"))
        .map(|l| l.split_whitespace().nth(2).unwrap_or(""))
        .collect();
    assert_eq!(types, ["queued", "started", "succeeded"]);

    // The store is kept: a second start finds the first run's events.
    let second = dev(data.path(), &[]);
    assert!(
        second.contains("the log holds 1 executions from earlier runs"),
        "{second}"
    );
}

#[test]
fn dev_demo_shows_every_state_and_says_what_to_try() {
    let data = tempfile::tempdir().unwrap();
    let out = dev(data.path(), &["--demo"]);
    for line in [
        "dashboard    http://127.0.0.1:",
        "nats         nats://127.0.0.1:",
        "runlog submit shell --wait -- sh -c",
        "  runlog ls",
        "  runlog watch",
        "cancel requested",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    let ended: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split(" ended ").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or(""))
        .collect();
    for state in ["succeeded", "dead_lettered", "timed_out", "cancelled"] {
        assert!(ended.contains(&state), "no demo task ended {state}:\n{out}");
    }
    let retried = out
        .lines()
        .find(|l| l.contains("succeeds on its retry") && l.contains(" ended "))
        .unwrap_or_default();
    assert!(
        retried.contains("ended succeeded after 2 attempt(s)"),
        "{retried}"
    );
}

#[test]
fn schema_command_writes_every_event_schema() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_runlog"))
        .args(["schema", "--out"])
        .arg(out.path())
        .status()
        .expect("runlog runs");
    assert!(status.success());
    assert!(out.path().join("event/submitted.json").is_file());
    assert!(out.path().join("command.json").is_file());
}

/// With `--otlp-endpoint`, the engine's span of the demonstration's
/// submission reaches the receiver: exported, and flushed as dev stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_exports_traces_to_an_otlp_receiver() {
    let receiver = runlog_testkit::OtlpReceiver::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let endpoint = receiver.endpoint().to_owned();
    let path = data.path().to_owned();
    let stdout = tokio::task::spawn_blocking(move || dev(&path, &["--otlp-endpoint", &endpoint]))
        .await
        .unwrap();
    assert!(
        stdout.contains("traces       http://127.0.0.1:"),
        "{stdout}"
    );
    // dev has stopped: whatever it exported is here already.
    let spans = receiver.spans();
    assert!(
        spans
            .iter()
            .any(|s| s.name == "submit" && s.service == "runlog-engine" && s.kind == 2),
        "{spans:#?}"
    );
}
