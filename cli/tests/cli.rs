//! The `runlog` client commands, run as the real binary against a real
//! engine and worker (in this process) on a real nats-server: what they
//! print, and the exit codes scripts rely on.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use runlog_engine::{Engine, EngineConfig};
use runlog_testkit::{NatsServer, SecretKey, eventually};
use runlog_worker::runtime::{Worker, WorkerConfig};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long one `runlog` run may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// A nats-server, an engine and a worker, stopped on drop.
struct Stack {
    _server: NatsServer,
    engine: Option<Engine>,
    worker: Option<JoinHandle<()>>,
    shutdown: CancellationToken,
    url: String,
    worker_id: String,
    /// The engine's and the worker's secret key file.
    _key: SecretKey,
}

impl Stack {
    async fn start(name: &str) -> Result<Stack> {
        let server = NatsServer::start()?;
        let shutdown = CancellationToken::new();
        let key = SecretKey::new()?;
        let mut config = EngineConfig::local(&server.url());
        config.secret_key_file = key.file();
        let engine = Engine::start(config, shutdown.clone()).await?;
        let url = format!("http://{}", engine.addr());
        let client = async_nats::connect(server.url()).await?;
        let worker_id = format!("cli-test-{name}");
        let worker = Worker::new(
            client,
            WorkerConfig {
                nats_url: server.url(),
                id: worker_id.clone(),
                secret_key_file: key.file(),
                ..WorkerConfig::default()
            },
            runlog_worker::executor::builtin(),
        );
        let stop = shutdown.clone();
        let worker = tokio::spawn(async move {
            if let Err(e) = worker.run(stop).await {
                eprintln!("the test worker stopped: {e}");
            }
        });
        Ok(Stack {
            _server: server,
            engine: Some(engine),
            worker: Some(worker),
            shutdown,
            url,
            worker_id,
            _key: key,
        })
    }

    async fn runlog(&self, args: &[&str]) -> Result<Run> {
        runlog(&self.url, args).await
    }

    /// `runlog ARGS -o json`, parsed; fails unless it exits 0.
    async fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let run = self.runlog(&all).await?;
        ensure!(run.code == 0, "runlog {args:?} failed: {run:?}");
        serde_json::from_str(&run.stdout).with_context(|| format!("not JSON: {run:?}"))
    }

    /// Waits until execution `id` is in `status`.
    async fn wait_for(&self, id: &str, status: &str) -> Result<Value> {
        let what = format!("{id} to be {status}");
        eventually(Duration::from_secs(30), &what, || async {
            let now = self.json(&["status", id]).await?;
            ensure!(now["status"] == status, "{now}");
            Ok(Some(now))
        })
        .await
    }

    async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        if let Some(worker) = self.worker.take() {
            worker.await?;
        }
        if let Some(engine) = self.engine.take() {
            engine.wait().await;
        }
        Ok(())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// What a `runlog` run did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the binary with the engine URL in its environment.
async fn runlog(url: &str, args: &[&str]) -> Result<Run> {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_runlog"))
        .args(args)
        .env("RUNLOG_ENGINE_URL", url)
        .env_remove("RUNLOG_OUTPUT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let out = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .with_context(|| format!("runlog {args:?} did not end within {RUN_LIMIT:?}"))??;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_streams_the_shell_loop_and_exits_zero() -> Result<()> {
    let stack = Stack::start("loop").await?;
    let run = stack
        .runlog(&[
            "submit",
            "shell",
            "--",
            "sh",
            "-c",
            "for i in 1 2 3; do echo $i; sleep 1; done",
            "--wait",
        ])
        .await?;
    ensure!(run.code == 0, "{run:?}");
    ensure!(
        run.stdout == "1\n2\n3\n",
        "the log lines, in order: {run:?}"
    );
    ensure!(run.stderr.contains("succeeded"), "{run:?}");

    // The execution is the one `ls` shows, with its argv as given.
    let list = stack.json(&["ls", "--kind", "shell"]).await?;
    let listed = &list["executions"][0];
    ensure!(listed["status"] == "succeeded", "{list}");
    let id = listed["id"].as_str().context("an id")?;
    let status = stack.json(&["status", id]).await?;
    ensure!(
        status["spec"]["input"]["argv"][2] == "for i in 1 2 3; do echo $i; sleep 1; done",
        "{status}"
    );
    let logs = stack.runlog(&["logs", id]).await?;
    ensure!(logs.code == 0 && logs.stdout == "1\n2\n3\n", "{logs:?}");

    // Environment values reach the task and are never printed.
    let run = stack
        .runlog(&[
            "submit",
            "shell",
            "--env",
            "SECRET=hunter22",
            "--wait",
            "--",
            "sh",
            "-c",
            "echo \"the secret ends in ${SECRET#hunter}\"",
        ])
        .await?;
    ensure!(run.code == 0, "{run:?}");
    ensure!(run.stdout == "the secret ends in 22\n", "{run:?}");
    ensure!(!run.stderr.contains("hunter22"), "{run:?}");
    let list = stack.json(&["ls", "--limit", "1"]).await?;
    let id = list["executions"][0]["id"].as_str().context("an id")?;
    let status = stack.runlog(&["status", id, "-o", "json"]).await?;
    ensure!(
        status.stdout.contains("SECRET") && !status.stdout.contains("hunter22"),
        "{status:?}"
    );

    // Without --wait the id alone goes to stdout, for `id=$(runlog submit ...)`.
    let run = stack
        .runlog(&["submit", "echo", "--input", r#"{"message": "hi"}"#])
        .await?;
    ensure!(run.code == 0, "{run:?}");
    let id = run.stdout.trim();
    let done = stack.wait_for(id, "succeeded").await?;
    ensure!(done["output"]["message"] == "hi", "{done}");
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_from_file_reports_each_bad_line_and_submits_the_others() -> Result<()> {
    let stack = Stack::start("from-file").await?;
    let dir = tempfile::tempdir()?;
    let tasks = dir.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        [
            r#"{"kind": "echo", "input": {"n": 1}}"#,
            r#"{"kind": "echo", "input": {"n": 2"#,
            "",
            r#"{"kind": "echo", "retry": {"backoff_multiplier": 0.5}}"#,
            r#"{"kind": "echo", "id": "from-file-5", "input": {"n": 5}}"#,
            r#"{"kind": "echo", "id": "from-file-5", "input": {"n": 5}}"#,
        ]
        .join("\n"),
    )?;
    let path = tasks.to_str().context("a UTF-8 path")?;
    let run = stack.runlog(&["submit", "--from-file", path]).await?;
    ensure!(
        run.code == 2,
        "a failed line makes the exit non-zero: {run:?}"
    );
    let ids: Vec<&str> = run.stdout.lines().collect();
    ensure!(ids.len() == 3, "the accepted lines' ids: {run:?}");
    ensure!(
        ids[1] == "from-file-5" && ids[2] == "from-file-5",
        "{run:?}"
    );
    ensure!(
        run.stderr
            .contains("2 submitted, 1 existing (same id or idempotency key), 2 failed"),
        "{run:?}"
    );
    ensure!(
        run.stderr.contains("line 2: not a JSON task spec"),
        "the line that is not JSON, by number: {run:?}"
    );
    ensure!(
        run.stderr.contains("line 4: ")
            && run
                .stderr
                .contains("(invalid_task, field retry.backoff_multiplier)"),
        "the invalid spec, by number, with its field: {run:?}"
    );
    for id in &ids[..2] {
        stack.wait_for(id, "succeeded").await?;
    }

    // More lines than one batch holds, as JSON for scripts.
    let many: Vec<String> = (0..1001)
        .map(|n| format!(r#"{{"kind": "echo", "input": {{"n": {n}}}}}"#))
        .collect();
    std::fs::write(&tasks, many.join("\n"))?;
    let summary = stack.json(&["submit", "--from-file", path]).await?;
    ensure!(
        summary["submitted"] == 1001 && summary["failed"] == 0,
        "{summary}"
    );
    let results = summary["results"].as_array().context("results")?;
    let distinct: std::collections::HashSet<&str> =
        results.iter().filter_map(|r| r["id"].as_str()).collect();
    ensure!(distinct.len() == 1001, "one execution per line");
    ensure!(results[1000]["line"] == 1001, "{}", results[1000]);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_resumes_its_feeds_across_an_engine_restart() -> Result<()> {
    let server = NatsServer::start()?;
    let start_engine = |listen: std::net::SocketAddr, stop: CancellationToken| {
        let mut config = EngineConfig::default();
        config.nats.urls = vec![server.url()];
        config.listen = listen;
        Engine::start(config, stop)
    };
    let first_stop = CancellationToken::new();
    let first = start_engine("127.0.0.1:0".parse()?, first_stop.clone()).await?;
    let addr = first.addr();
    let url = format!("http://{addr}");
    let worker_stop = CancellationToken::new();
    let worker = Worker::new(
        async_nats::connect(server.url()).await?,
        WorkerConfig {
            nats_url: server.url(),
            id: "cli-test-restart".into(),
            ..WorkerConfig::default()
        },
        runlog_worker::executor::builtin(),
    );
    let worker = tokio::spawn(worker.run(worker_stop.clone()));

    let marker = tempfile::tempdir()?;
    let go = marker.path().join("go");
    let script = format!(
        "echo before; while [ ! -e {go} ]; do sleep 0.05; done; echo after",
        go = go.display()
    );
    let waiting = {
        let url = url.clone();
        tokio::spawn(async move {
            runlog(
                &url,
                &["submit", "shell", "--wait", "--", "sh", "-c", &script],
            )
            .await
        })
    };
    // The task has written its first line: the feeds have something to resume after.
    let what = "the task to write its first line";
    let id = eventually(Duration::from_secs(30), what, || async {
        let list = runlog(&url, &["ls", "--status", "running", "-o", "json"]).await?;
        let listed = serde_json::from_str::<Value>(&list.stdout)?;
        let Some(id) = listed["executions"][0]["id"].as_str() else {
            bail!("none running: {listed}");
        };
        let logs = runlog(&url, &["logs", id]).await?;
        ensure!(logs.stdout == "before\n", "{id} logged {:?}", logs.stdout);
        Ok(Some(id.to_owned()))
    })
    .await?;

    // The engine goes away while the CLI waits, and comes back on the same address.
    first_stop.cancel();
    first.wait().await;
    let second_stop = CancellationToken::new();
    let second = start_engine(addr, second_stop.clone()).await?;
    std::fs::write(&go, b"")?;

    let run = waiting.await??;
    ensure!(run.code == 0, "{run:?}");
    ensure!(
        run.stdout == "before\nafter\n",
        "each line once, in order: {run:?}"
    );
    ensure!(run.stderr.contains(&format!("{id} succeeded")), "{run:?}");
    worker_stop.cancel();
    worker.await??;
    second_stop.cancel();
    second.wait().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_exits_one_and_can_be_inspected_and_retried() -> Result<()> {
    let stack = Stack::start("fail").await?;
    let run = stack
        .runlog(&[
            "submit",
            "shell",
            "--retries",
            "1",
            "--label",
            "case=fail",
            "--wait",
            "--",
            "sh",
            "-c",
            "echo broken >&2; exit 3",
        ])
        .await?;
    ensure!(run.code == 1, "a dead-lettered task exits 1: {run:?}");
    ensure!(run.stderr.contains("dead_lettered"), "{run:?}");
    ensure!(run.stderr.contains("exited with code 3"), "{run:?}");

    let list = stack
        .json(&["ls", "--label", "case=fail", "--status", "dead_lettered"])
        .await?;
    let items = list["executions"].as_array().context("a list")?;
    ensure!(items.len() == 1, "{list}");
    let id = items[0]["id"].as_str().context("an id")?.to_owned();
    ensure!(items[0]["attempt"] == 2, "{list}");

    let status = stack.json(&["status", &id]).await?;
    let attempts = status["attempts"].as_array().context("attempts")?;
    ensure!(attempts.len() == 2, "{status}");
    ensure!(
        attempts.iter().all(|a| a["outcome"] == "failed"),
        "{status}"
    );
    let text = stack.runlog(&["status", &id]).await?;
    ensure!(text.code == 0, "{text:?}");
    ensure!(text.stdout.contains("dead_lettered"), "{text:?}");
    ensure!(text.stdout.contains("exited with code 3"), "{text:?}");

    // Both attempts wrote to stderr; logs prints it there.
    let logs = stack.runlog(&["logs", &id, "--timestamps"]).await?;
    ensure!(logs.code == 0, "{logs:?}");
    ensure!(
        logs.stderr.matches("broken").count() == 2
            && logs.stderr.contains("#1 stderr")
            && logs.stderr.contains("#2 stderr"),
        "{logs:?}"
    );

    // A retry is a new execution linked to the original; it fails again.
    let retry = stack.json(&["retry", &id]).await?;
    ensure!(retry["retry_of"] == id.as_str(), "{retry}");
    let again = retry["id"].as_str().context("a new id")?;
    let retried = stack.wait_for(again, "dead_lettered").await?;
    ensure!(retried["spec"]["retry_of"] == id.as_str(), "{retried}");

    // A succeeded execution cannot be retried: exit 6.
    let ok = stack.runlog(&["submit", "echo", "--wait"]).await?;
    ensure!(ok.code == 0, "{ok:?}");
    let ok_id = stack.json(&["ls", "--kind", "echo"]).await?["executions"][0]["id"]
        .as_str()
        .context("an id")?
        .to_owned();
    let refused = stack.runlog(&["retry", &ok_id]).await?;
    ensure!(refused.code == 6, "{refused:?}");
    ensure!(refused.stderr.contains("not_retryable"), "{refused:?}");

    // The audit trail lists both retries, the refused one with its answer.
    let audit = eventually(
        Duration::from_secs(15),
        "the retries are audited",
        || async {
            let audit = stack.json(&["audit", "--route", "/retry"]).await?;
            let records = audit["records"].as_array().cloned().unwrap_or_default();
            Ok((records.len() == 2).then_some(records))
        },
    )
    .await?;
    ensure!(
        audit[0]["status"] == 409 && audit[0]["path"] == format!("/v1/executions/{ok_id}/retry"),
        "{audit:?}"
    );
    ensure!(
        audit[1]["status"] == 201 && audit[1]["target"] == again,
        "{audit:?}"
    );
    let table = stack
        .runlog(&["audit", "--route", "/retry", "--since", "1h"])
        .await?;
    ensure!(
        table.code == 0
            && table.stdout.starts_with("WHEN")
            && table.stdout.contains(&format!("/v1/executions/{id}/retry"))
            && table.stdout.contains("anonymous")
            && table.stdout.contains("409"),
        "{table:?}"
    );
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_waiting_submit_with_exit_three_and_deadlines_exit_four() -> Result<()> {
    let stack = Stack::start("cancel").await?;
    let url = stack.url.clone();
    let waiting = tokio::spawn(async move {
        runlog(
            &url,
            &[
                "submit",
                "shell",
                "--label",
                "case=cancel",
                "--wait",
                "--",
                "sh",
                "-c",
                "echo started; sleep 60",
            ],
        )
        .await
    });
    let id = eventually(Duration::from_secs(30), "the task to run", || async {
        let list = stack
            .json(&["ls", "--label", "case=cancel", "--status", "running"])
            .await?;
        let Some(id) = list["executions"][0]["id"].as_str() else {
            bail!("none running: {list}");
        };
        Ok(Some(id.to_owned()))
    })
    .await?;
    let cancel = stack
        .runlog(&["cancel", &id, "--reason", "the test is done with it"])
        .await?;
    ensure!(cancel.code == 0, "{cancel:?}");
    let waited = waiting.await??;
    ensure!(waited.code == 3, "a cancelled task exits 3: {waited:?}");
    ensure!(waited.stdout.contains("started"), "{waited:?}");
    let status = stack.json(&["status", &id]).await?;
    ensure!(status["status"] == "cancelled", "{status}");
    ensure!(status["reason"] == "the test is done with it", "{status}");

    // Cancelling it again: it has ended, exit 6.
    let again = stack.runlog(&["cancel", &id]).await?;
    ensure!(again.code == 6, "{again:?}");

    // The whole execution's deadline passes: timed out, exit 4.
    let late = stack
        .runlog(&[
            "submit",
            "shell",
            "--deadline",
            "1s",
            "--wait",
            "--",
            "sleep",
            "60",
        ])
        .await?;
    ensure!(late.code == 4, "a timed-out task exits 4: {late:?}");
    ensure!(late.stderr.contains("timed_out"), "{late:?}");
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_prints_lines_until_the_task_ends() -> Result<()> {
    let stack = Stack::start("follow").await?;
    let run = stack
        .runlog(&[
            "submit",
            "shell",
            "--",
            "sh",
            "-c",
            "for i in 1 2 3 4; do echo line $i; sleep 0.3; done",
        ])
        .await?;
    ensure!(run.code == 0, "{run:?}");
    let id = run.stdout.trim().to_owned();
    let follow = stack.runlog(&["logs", "-f", &id]).await?;
    ensure!(follow.code == 0, "{follow:?}");
    ensure!(
        follow.stdout == "line 1\nline 2\nline 3\nline 4\n",
        "{follow:?}"
    );
    let json = stack.runlog(&["logs", &id, "--output", "json"]).await?;
    let lines: Vec<Value> = json
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(lines.len() == 4 && lines[3]["line"] == "line 4", "{json:?}");
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_queues_show_the_cluster() -> Result<()> {
    let stack = Stack::start("cluster").await?;
    // The worker registers shortly after it starts.
    let workers = eventually(
        Duration::from_secs(30),
        "the worker to register",
        || async {
            let workers = stack.json(&["workers"]).await?;
            ensure!(
                workers["workers"]
                    .as_array()
                    .is_some_and(|w| w.iter().any(|w| w["id"] == stack.worker_id.as_str())),
                "no worker registered: {workers}"
            );
            Ok(Some(workers))
        },
    )
    .await?;
    ensure!(workers["workers"][0]["queues"][0] == "default", "{workers}");
    let text = stack.runlog(&["workers"]).await?;
    ensure!(
        text.code == 0 && text.stdout.contains(&stack.worker_id),
        "{text:?}"
    );

    let run = stack
        .runlog(&["submit", "echo", "--queue", "default", "--wait"])
        .await?;
    ensure!(run.code == 0, "{run:?}");
    // --wait with JSON: the final state, and the exit of the outcome.
    let waited = stack
        .json(&["submit", "echo", "--input", r#"{"n": 7}"#, "--wait"])
        .await?;
    ensure!(waited["status"] == "succeeded", "{waited}");
    ensure!(waited["output"]["n"] == 7, "{waited}");
    let queues = stack.json(&["queues"]).await?;
    ensure!(queues["queues"][0]["queue"] == "default", "{queues}");
    ensure!(queues["queues"][0]["depth"] == 0, "{queues}");
    let text = stack.runlog(&["queues"]).await?;
    ensure!(
        text.code == 0 && text.stdout.starts_with("QUEUE") && text.stdout.contains("default"),
        "{text:?}"
    );

    // No such execution: exit 5, and a hint.
    let missing = stack.runlog(&["status", "no-such-execution"]).await?;
    ensure!(missing.code == 5, "{missing:?}");
    ensure!(missing.stderr.contains("runlog ls"), "{missing:?}");
    // A request the engine refuses as invalid: exit 2, naming the field.
    let invalid = stack
        .runlog(&["submit", "echo", "--id", "no spaces"])
        .await?;
    ensure!(invalid.code == 2, "{invalid:?}");
    ensure!(invalid.stderr.contains("id"), "{invalid:?}");
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_no_live_worker_runs_is_accepted_with_a_warning_everywhere() -> Result<()> {
    let stack = Stack::start("warnings").await?;
    // Until the engine has seen the worker's registry entry, a kind the
    // worker lacks reads as an unserved queue; wait for the sharper warning.
    let what = "the warning about the kind";
    let run = eventually(Duration::from_secs(30), what, || async {
        let run = stack.runlog(&["submit", "plan"]).await?;
        // Every submission is accepted: a refusal fails at once, not at the deadline.
        assert_eq!(run.code, 0, "accepted all the same: {run:?}");
        ensure!(
            run.stderr
                .contains("no live worker runs kind \"plan\" on queue \"default\""),
            "no warning about the kind: {run:?}"
        );
        Ok(Some(run))
    })
    .await?;
    ensure!(run.stderr.starts_with("warning: "), "{run:?}");
    // This worker dead-letters a kind it lacks at once (`invalid_input`);
    // a task of a queue no worker serves waits, and says why while it does.
    let answer = stack.json(&["submit", "echo", "--queue", "tf"]).await?;
    ensure!(
        answer["warning"] == "no live worker serves queue \"tf\"",
        "{answer}"
    );
    let id = answer["id"].as_str().unwrap_or_default();
    let status = stack.json(&["status", id]).await?;
    ensure!(
        status["warning"] == "no live worker serves queue \"tf\"",
        "{status}"
    );
    let text = stack.runlog(&["status", id]).await?;
    ensure!(text.stdout.contains("warning:"), "{text:?}");
    let queues = stack.json(&["queues"]).await?;
    let tf = queues["queues"]
        .as_array()
        .and_then(|q| q.iter().find(|q| q["queue"] == "tf"))
        .cloned()
        .unwrap_or_default();
    ensure!(
        tf["warning"] == "no live worker serves queue \"tf\"",
        "{queues}"
    );
    // A task the worker runs gets none.
    let fine = stack.runlog(&["submit", "echo"]).await?;
    ensure!(
        fine.code == 0 && !fine.stderr.contains("warning"),
        "{fine:?}"
    );
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_one_line_per_event_when_piped() -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let stack = Stack::start("watch").await?;
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_runlog"))
        .args(["watch", "--engine-url", &stack.url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().context("stdout")?).lines();
    // The watch subscribes at some point after it starts: submit until one
    // submission shows up whole, from `queued` (an engine door records it
    // in one event) to `succeeded`.
    const KINDS: [&str; 3] = ["queued", "started", "succeeded"];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen: Vec<String> = Vec::new();
    'found: loop {
        let run = stack.runlog(&["submit", "echo"]).await?;
        ensure!(run.code == 0, "{run:?}");
        let id = run.stdout.trim().to_owned();
        let until = Instant::now() + Duration::from_secs(2);
        while let Ok(Ok(Some(line))) = tokio::time::timeout_at(until, lines.next_line()).await {
            seen.push(line);
            let kinds: Vec<&str> = seen
                .iter()
                .filter(|l| l.split_whitespace().nth(1) == Some(id.as_str()))
                .filter_map(|l| l.split_whitespace().nth(2))
                .collect();
            if KINDS.iter().all(|k| kinds.contains(k)) {
                break 'found;
            }
        }
        ensure!(
            Instant::now() < deadline,
            "watch printed no execution whole: {seen:#?}"
        );
    }
    watch.kill().await?;
    stack.stop().await
}

#[tokio::test]
async fn an_unreachable_engine_says_what_to_do_and_exits_seven() -> Result<()> {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let run = runlog(&url, &["ls"]).await?;
    ensure!(run.code == 7, "{run:?}");
    ensure!(
        run.stderr
            .contains(&format!("cannot reach the engine at {url}"))
            && run.stderr.contains("is `runlog dev` running?")
            && run.stderr.contains("RUNLOG_ENGINE_URL"),
        "{run:?}"
    );
    let json = runlog(&url, &["status", "x", "--output", "json"]).await?;
    ensure!(json.code == 7, "{json:?}");
    let error: Value = serde_json::from_str(json.stderr.trim())?;
    ensure!(error["error"]["code"] == "unreachable", "{json:?}");
    Ok(())
}

#[tokio::test]
async fn every_command_explains_itself_and_bad_flags_exit_two() -> Result<()> {
    for command in [
        "submit", "status", "ls", "watch", "logs", "cancel", "retry", "workers", "queues", "audit",
    ] {
        let help = runlog("http://127.0.0.1:1", &[command, "--help"]).await?;
        ensure!(help.code == 0, "{command}: {help:?}");
        ensure!(
            help.stdout.contains("Exit codes:") && help.stdout.contains("--engine-url"),
            "{command}: {help:?}"
        );
    }
    let bad = runlog(
        "http://127.0.0.1:1",
        &["submit", "shell", "--priority", "urgent"],
    )
    .await?;
    ensure!(bad.code == 2, "{bad:?}");
    ensure!(bad.stderr.contains("high, normal or low"), "{bad:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_set_from_a_file_used_by_name_and_never_printed() -> Result<()> {
    const VALUE: &str = "s3cr3t-from-a-file";
    let stack = Stack::start("secrets").await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("token");
    std::fs::write(&file, VALUE)?;
    let file = file.to_str().context("a UTF-8 path")?;

    let set = stack
        .runlog(&["secret", "set", "api-token", "--from-file", file])
        .await?;
    ensure!(set.code == 0, "{set:?}");
    ensure!(set.stdout.contains("api-token set (18 bytes"), "{set:?}");
    let ls = stack.runlog(&["secret", "ls"]).await?;
    ensure!(ls.code == 0 && ls.stdout.contains("api-token"), "{ls:?}");

    // The worker resolves it by name; the task's output shows it masked.
    let run = stack
        .runlog(&[
            "submit",
            "shell",
            "--secret",
            "TOKEN=api-token",
            "--wait",
            "--",
            "sh",
            "-c",
            "echo \"length ${#TOKEN}\"; echo \"token $TOKEN\"",
        ])
        .await?;
    ensure!(run.code == 0, "{run:?}");
    ensure!(run.stdout == "length 18\ntoken ***\n", "{run:?}");
    let list = stack.json(&["ls", "--limit", "1"]).await?;
    let id = list["executions"][0]["id"].as_str().context("an id")?;
    let logs = stack.runlog(&["logs", id]).await?;
    ensure!(logs.stdout == "length 18\ntoken ***\n", "{logs:?}");
    for shown in [&set, &ls, &run, &logs] {
        ensure!(
            !shown.stdout.contains(VALUE) && !shown.stderr.contains(VALUE),
            "{shown:?}"
        );
    }

    let rm = stack.runlog(&["secret", "rm", "api-token"]).await?;
    ensure!(rm.code == 0, "{rm:?}");
    let again = stack.runlog(&["secret", "rm", "api-token"]).await?;
    ensure!(
        again.code != 0 && again.stderr.contains("not_found"),
        "{again:?}"
    );
    // A task naming it now fails `permission` and says where to put it.
    let missing = stack
        .runlog(&[
            "submit",
            "shell",
            "--secret",
            "TOKEN=api-token",
            "--wait",
            "--",
            "true",
        ])
        .await?;
    ensure!(missing.code == 1, "{missing:?}");
    let list = stack.json(&["ls", "--limit", "1"]).await?;
    let id = list["executions"][0]["id"].as_str().context("an id")?;
    let status = stack.json(&["status", id]).await?;
    ensure!(status["error"]["class"] == "permission", "{status}");
    let message = status["error"]["message"].as_str().unwrap_or_default();
    ensure!(message.contains("runlog secret set api-token"), "{status}");

    let key = dir.path().join("new.key");
    let key_arg = key.to_str().context("a UTF-8 path")?;
    let made = stack.runlog(&["secret", "keygen", key_arg]).await?;
    ensure!(made.code == 0, "{made:?}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key)?.permissions());
    ensure!(mode & 0o777 == 0o600, "mode {mode:o}");
    let again = stack.runlog(&["secret", "keygen", key_arg]).await?;
    ensure!(
        again.code != 0 && again.stderr.contains("exists already"),
        "{again:?}"
    );
    stack.stop().await
}
