//! The `ssh` executor against a real OpenSSH server started by the test kit:
//! every key type, streamed output, exit codes, timeouts and cancellation
//! that reach the remote process group, refused keys and host keys, a
//! server that goes away and comes back, and connections reused across
//! tasks.

use std::collections::BTreeMap;
use std::time::Duration;

use runlog_events::event::{LogLine, LogStream};
use runlog_events::{ErrorClass, ExecutionId};
use runlog_testkit::{KeyType, PASSPHRASE, Sshd, eventually};
use runlog_worker::executor::SshExecutor;
use runlog_worker::executor::ssh::PoolLimits;
use runlog_worker::handler::{Context, Handler, HandlerResult};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// How long any awaited condition may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// An input for `sshd` with `key`, the host key pinned, and `extra` fields.
fn input(sshd: &Sshd, extra: Value) -> Value {
    let mut input = json!({
        "host": "127.0.0.1",
        "port": sshd.port(),
        "user": sshd.user(),
        "key": "SSH_KEY",
        "host_key": sshd.host_key(),
    });
    input
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    input
}

fn env(sshd: &Sshd, key: KeyType) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([("SSH_KEY".to_owned(), sshd.private_key(key))]);
    if key == KeyType::EncryptedEd25519 {
        env.insert("SSH_PASSPHRASE".to_owned(), PASSPHRASE.to_owned());
    }
    env
}

/// Runs one task to its end: the result and every log line.
async fn run_with(
    executor: &SshExecutor,
    input: Value,
    env: BTreeMap<String, String>,
    cancel: CancellationToken,
) -> (HandlerResult, Vec<LogLine>) {
    let (ctx, mut telemetry) =
        Context::builder(ExecutionId::new("ssh-test").unwrap(), 1, "ssh", input)
            .env(env)
            .cancel(cancel)
            .build();
    let result = tokio::time::timeout(PATIENCE, executor.run(ctx))
        .await
        .expect("the ssh task ended in time");
    let mut lines = Vec::new();
    while let Some(line) = telemetry.logs.recv().await {
        lines.push(line);
    }
    (result, lines)
}

async fn run(executor: &SshExecutor, sshd: &Sshd, extra: Value) -> (HandlerResult, Vec<LogLine>) {
    run_with(
        executor,
        input(sshd, extra),
        env(sshd, KeyType::Ed25519),
        CancellationToken::new(),
    )
    .await
}

fn texts(lines: &[LogLine], stream: LogStream) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| l.stream == stream)
        .map(|l| l.line.as_str())
        .collect()
}

/// Whether a process whose command line holds `pattern` runs on the host,
/// asked over a session of its own.
async fn remote_process(executor: &SshExecutor, sshd: &Sshd, pattern: &str) -> bool {
    // `[s]leep` matches `sleep` but not this pgrep's own command line.
    let (result, _) = run(
        executor,
        sshd,
        json!({"argv": ["pgrep", "-f", pattern], "retryable_exit_codes": [1]}),
    )
    .await;
    result.is_ok()
}

#[tokio::test]
async fn every_key_type_logs_in_and_output_is_streamed_and_captured() {
    let sshd = Sshd::start().expect("sshd starts");
    let executor = SshExecutor::new();
    for key in KeyType::ALL {
        let mut extra = json!({
            "shell": "echo out-1; echo err-1 >&2; printf 'progress 40%%\\n'; echo \"id=$ID\"; \
                      echo out-2",
            "env": {"ID": "abc123"},
            "progress": {"regex": "progress (?P<percent>\\d+)%"},
            "extract": {"id": "id=(?P<value>\\w+)"},
        });
        if key == KeyType::EncryptedEd25519 {
            extra["passphrase"] = json!("SSH_PASSPHRASE");
        }
        let (result, lines) = run_with(
            &executor,
            input(&sshd, extra),
            env(&sshd, key),
            CancellationToken::new(),
        )
        .await;
        let output = result.unwrap_or_else(|e| panic!("{key:?}: {e:?}\n{}", sshd.log()));
        assert_eq!(output["exit_code"], 0, "{key:?}");
        assert_eq!(
            output["stdout"], "out-1\nprogress 40%\nid=abc123\nout-2\n",
            "{key:?}"
        );
        assert_eq!(output["stderr"], "err-1\n", "the pid line is not output");
        assert_eq!(output["id"], "abc123");
        assert_eq!(
            texts(&lines, LogStream::Stdout),
            ["out-1", "progress 40%", "id=abc123", "out-2"]
        );
        assert_eq!(texts(&lines, LogStream::Stderr), ["err-1"]);
    }
}

#[tokio::test]
async fn exit_codes_stdin_and_cwd_reach_the_result() {
    let sshd = Sshd::start().expect("sshd starts");
    let executor = SshExecutor::new();
    let (result, _) = run(
        &executor,
        &sshd,
        json!({"shell": "echo failing >&2; exit 3"}),
    )
    .await;
    let error = result.unwrap_err();
    assert_eq!(error.class, ErrorClass::Unknown);
    assert!(error.retryable);
    assert!(
        error.message.contains("exited with code 3") && error.message.contains("failing"),
        "{}",
        error.message
    );
    let (result, _) = run(
        &executor,
        &sshd,
        json!({"argv": ["sh", "-c", "exit 4"], "permanent_exit_codes": [4]}),
    )
    .await;
    let error = result.unwrap_err();
    assert_eq!(
        (error.class, error.retryable),
        (ErrorClass::Permanent, false)
    );
    let (result, _) = run(
        &executor,
        &sshd,
        json!({"argv": ["cat"], "stdin": "from stdin\n"}),
    )
    .await;
    assert_eq!(result.unwrap()["stdout"], "from stdin\n");
    let (result, _) = run(&executor, &sshd, json!({"argv": ["pwd"], "cwd": "/tmp"})).await;
    assert_eq!(result.unwrap()["stdout"], "/tmp\n");
    let (result, _) = run(&executor, &sshd, json!({"argv": ["no-such-program-here"]})).await;
    let error = result.unwrap_err();
    assert!(error.message.contains("code 127"), "{}", error.message);
}

#[tokio::test]
async fn a_command_timeout_and_a_cancel_stop_the_remote_process_group() {
    let sshd = Sshd::start().expect("sshd starts");
    let executor = SshExecutor::new();
    // A script whose child would outlive a kill of the shell alone.
    let (result, _) = run(
        &executor,
        &sshd,
        json!({"shell": "sleep 3011 & sleep 3011; wait", "command_timeout_ms": 300}),
    )
    .await;
    let error = result.unwrap_err();
    assert_eq!(error.class, ErrorClass::Timeout, "{}", error.message);
    assert!(error.message.contains("SIGTERM"), "{}", error.message);
    eventually(PATIENCE, "the timed-out sleeps are gone", || async {
        Ok((!remote_process(&executor, &sshd, "[s]leep 3011").await).then_some(()))
    })
    .await
    .unwrap();

    let cancel = CancellationToken::new();
    let task = {
        let (executor, input, env, cancel) = (
            executor.clone(),
            input(
                &sshd,
                json!({"shell": "echo started; sleep 3012 & sleep 3012; wait"}),
            ),
            env(&sshd, KeyType::Ed25519),
            cancel.clone(),
        );
        tokio::spawn(async move { run_with(&executor, input, env, cancel).await })
    };
    eventually(PATIENCE, "the remote sleep runs", || async {
        Ok(remote_process(&executor, &sshd, "[s]leep 3012")
            .await
            .then_some(()))
    })
    .await
    .unwrap();
    cancel.cancel();
    let (result, lines) = task.await.unwrap();
    let error = result.unwrap_err();
    assert_eq!(error.class, ErrorClass::Cancelled, "{}", error.message);
    assert_eq!(texts(&lines, LogStream::Stdout), ["started"]);
    eventually(PATIENCE, "the cancelled sleeps are gone", || async {
        Ok((!remote_process(&executor, &sshd, "[s]leep 3012").await).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_wrong_key_and_a_changed_host_key_are_permanent_refusals() {
    let mut sshd = Sshd::start().expect("sshd starts");
    let executor = SshExecutor::new();
    // A key of its own server is not among this one's authorized keys.
    let other = Sshd::start().expect("a second sshd starts");
    let (result, _) = run_with(
        &executor,
        input(&sshd, json!({"argv": ["true"]})),
        env(&other, KeyType::Ed25519),
        CancellationToken::new(),
    )
    .await;
    let error = result.unwrap_err();
    assert_eq!(
        (error.class, error.retryable),
        (ErrorClass::Permission, false)
    );
    assert!(
        error.message.contains("authentication failed"),
        "{}",
        error.message
    );
    assert!(!error.message.contains("PRIVATE KEY"), "{}", error.message);

    // The wrong passphrase for the encrypted key.
    let mut wrong = env(&sshd, KeyType::EncryptedEd25519);
    wrong.insert("SSH_PASSPHRASE".into(), "not the passphrase".into());
    let (result, _) = run_with(
        &executor,
        input(
            &sshd,
            json!({"argv": ["true"], "passphrase": "SSH_PASSPHRASE"}),
        ),
        wrong,
        CancellationToken::new(),
    )
    .await;
    let error = result.unwrap_err();
    assert_eq!(
        (error.class, error.retryable),
        (ErrorClass::Permission, false)
    );
    assert!(
        !error.message.contains("not the passphrase"),
        "{}",
        error.message
    );

    // Pinned, then the host key changes under the same address.
    let pinned = input(&sshd, json!({"argv": ["true"]}));
    let known_hosts = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(known_hosts.path(), sshd.known_hosts_line()).unwrap();
    let by_file = input(&sshd, json!({"argv": ["true"]}));
    let mut by_file = by_file.as_object().unwrap().clone();
    by_file.remove("host_key");
    by_file.insert("known_hosts".into(), json!(known_hosts.path()));
    let by_file = Value::Object(by_file);
    for input in [&pinned, &by_file] {
        let (result, _) = run_with(
            &executor,
            input.clone(),
            env(&sshd, KeyType::Ed25519),
            CancellationToken::new(),
        )
        .await;
        result.expect("the known key is accepted");
    }
    sshd.new_host_key().unwrap();
    sshd.start_again().unwrap();
    for input in [&pinned, &by_file] {
        let (result, _) = run_with(
            &executor,
            input.clone(),
            env(&sshd, KeyType::Ed25519),
            CancellationToken::new(),
        )
        .await;
        let error = result.unwrap_err();
        assert_eq!(
            (error.class, error.retryable),
            (ErrorClass::Permission, false)
        );
        assert!(
            error.message.contains("host key mismatch"),
            "{}",
            error.message
        );
    }

    // Trust on first use records an unknown host, and only then trusts it.
    let tofu_file = tempfile::tempdir().unwrap().keep().join("known_hosts");
    let mut tofu = by_file.as_object().unwrap().clone();
    tofu.insert("known_hosts".into(), json!(tofu_file));
    let strict = Value::Object(tofu.clone());
    let (result, _) = run_with(
        &executor,
        strict.clone(),
        env(&sshd, KeyType::Ed25519),
        CancellationToken::new(),
    )
    .await;
    let error = result.unwrap_err();
    assert!(error.message.contains("unknown host"), "{}", error.message);
    tofu.insert("trust_on_first_use".into(), json!(true));
    let (result, _) = run_with(
        &executor,
        Value::Object(tofu),
        env(&sshd, KeyType::Ed25519),
        CancellationToken::new(),
    )
    .await;
    result.expect("trusted on first use");
    let (result, _) = run_with(
        &executor,
        strict,
        env(&sshd, KeyType::Ed25519),
        CancellationToken::new(),
    )
    .await;
    result.expect("the recorded key is trusted without asking");
}

#[tokio::test]
async fn a_server_that_goes_away_is_a_retryable_error_and_is_reached_again() {
    let mut sshd = Sshd::start().expect("sshd starts");
    let executor = SshExecutor::new();
    let (result, _) = run(&executor, &sshd, json!({"argv": ["echo", "one"]})).await;
    assert_eq!(result.unwrap()["stdout"], "one\n");
    sshd.stop();
    let (result, _) = run(&executor, &sshd, json!({"argv": ["echo", "two"]})).await;
    let error = result.unwrap_err();
    assert_eq!((error.class, error.retryable), (ErrorClass::Network, true));
    sshd.start_again().unwrap();
    let (result, _) = run(&executor, &sshd, json!({"argv": ["echo", "three"]})).await;
    assert_eq!(result.unwrap()["stdout"], "three\n");
}

#[tokio::test]
async fn fifty_tasks_to_one_host_share_a_few_connections() {
    let sshd = Sshd::start().expect("sshd starts");
    let limits = PoolLimits {
        connections: 3,
        sessions: 8,
        idle: Duration::from_secs(60),
    };
    let executor = SshExecutor::with_limits(limits);
    let before = sshd.accepted_connections();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (executor, input, env) = (
                executor.clone(),
                input(
                    &sshd,
                    json!({"shell": format!("sleep 0.05; echo task-{i}")}),
                ),
                env(&sshd, KeyType::Ed25519),
            );
            tokio::spawn(
                async move { run_with(&executor, input, env, CancellationToken::new()).await },
            )
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let (result, _) = task.await.unwrap();
        let output = result.unwrap_or_else(|e| panic!("task {i}: {e:?}"));
        assert_eq!(output["stdout"], format!("task-{i}\n"));
    }
    let accepted = sshd.accepted_connections() - before;
    assert!(
        (1..=limits.connections).contains(&accepted),
        "50 tasks opened {accepted} connections, at most {} allowed",
        limits.connections
    );
    // Later tasks reuse them too.
    for i in 0..5 {
        let (result, _) = run(&executor, &sshd, json!({"argv": ["echo", i.to_string()]})).await;
        result.unwrap();
    }
    assert_eq!(sshd.accepted_connections() - before, accepted);
}

#[tokio::test]
async fn a_probe_reports_the_host_key_timings_and_uname_on_a_connection_of_its_own() {
    let sshd = Sshd::start().expect("sshd starts");
    let executor = SshExecutor::new();
    let before = sshd.accepted_connections();
    for _ in 0..2 {
        let (result, _) = run(&executor, &sshd, json!({"probe": true})).await;
        let output = result.unwrap();
        assert_eq!(output["reachable"], true);
        assert!(
            output["uname"].as_str().unwrap().starts_with("Linux"),
            "{output}"
        );
        assert!(output["connect_ms"].as_f64().unwrap() > 0.0, "{output}");
        assert!(
            output["host_key"]
                .as_str()
                .unwrap()
                .starts_with("ssh-ed25519 SHA256:"),
            "{output}"
        );
    }
    // Each probe connects anew: a pooled connection would prove nothing.
    assert_eq!(sshd.accepted_connections() - before, 2);
    let (result, _) = run(
        &executor,
        &sshd,
        json!({"probe": true, "host_key": "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
    )
    .await;
    let error = result.unwrap_err();
    assert_eq!(error.class, ErrorClass::Permission, "{}", error.message);
    let (result, _) = run(&executor, &sshd, json!({"probe": true, "argv": ["true"]})).await;
    assert_eq!(result.unwrap_err().class, ErrorClass::InvalidInput);
}
