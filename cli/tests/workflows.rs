//! Workflows run end to end: real `runlog engine` and `runlog worker`
//! processes on a real nats-server, a local HTTP server as the outside
//! world. What happened is read back from the workflow log and the task
//! log, not only from the API.

#[path = "faults/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chrono::{DateTime, Utc};
use harness::{EngineProcess, WorkerProcesses};
use runlog_events::journal::Journal;
use runlog_events::workflow::log::WorkflowLog;
use runlog_events::workflow::run::{WorkflowEnvelope, WorkflowEvent};
use runlog_events::{Event, ExecutionId, Subjects};
use runlog_testkit::{NatsServer, Postgres, eventually};
use serde_json::{Value, json};

/// A local HTTP server that answers every request with `body`.
fn http_server(body: Value) -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let body = body.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(url)
}

struct Stack {
    server: NatsServer,
    engine: EngineProcess,
    _workers: Workers,
    http: reqwest::Client,
    _dir: tempdir::Dir,
}

/// The stack's worker: the fault suite's processes, or one `runlog worker`
/// with secrets in its environment (`RUNLOG_SECRET_<NAME>`).
enum Workers {
    /// Killed when dropped.
    Plain(#[allow(dead_code)] WorkerProcesses),
    WithSecrets(std::process::Child),
}

impl Drop for Workers {
    fn drop(&mut self) {
        if let Workers::WithSecrets(child) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

mod tempdir {
    /// A temporary directory, removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(name: &str) -> std::io::Result<Dir> {
            let path = std::env::temp_dir().join(format!(
                "runlog-{name}-{}",
                runlog_events::ExecutionId::generate()
            ));
            std::fs::create_dir_all(&path)?;
            Ok(Dir(path))
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Stack {
    fn start(name: &str) -> Result<Stack> {
        Self::start_with_secrets(name, &[])
    }

    fn start_with_secrets(name: &str, secrets: &[(&str, String)]) -> Result<Stack> {
        let dir = tempdir::Dir::new(name)?;
        let server = NatsServer::start()?;
        let urls = [server.url()];
        let engine = EngineProcess::start(&urls, 1, &dir.0)?;
        let workers = if secrets.is_empty() {
            Workers::Plain(WorkerProcesses::start(1, 16, &urls, 1, &dir.0)?)
        } else {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_runlog"));
            command
                .args([
                    "worker",
                    "--allow-root",
                    "--nats-url",
                    &server.url(),
                    "--concurrency",
                    "16",
                ])
                .env("RUNLOG_LOG", "warn")
                .stdout(std::process::Stdio::null());
            for (name, value) in secrets {
                command.env(format!("RUNLOG_SECRET_{name}"), value);
            }
            Workers::WithSecrets(command.spawn()?)
        };
        Ok(Stack {
            server,
            engine,
            _workers: workers,
            http: reqwest::Client::new(),
            _dir: dir,
        })
    }

    async fn post(&self, path: &str, body: Value) -> Result<(u16, Value)> {
        let response = self
            .http
            .post(format!("{}{path}", self.engine.base))
            .json(&body)
            .send()
            .await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    async fn define(&self, yaml: &str) -> Result<()> {
        let response = self
            .http
            .post(format!("{}/v1/workflows", self.engine.base))
            .header("content-type", "application/yaml")
            .body(yaml.to_owned())
            .send()
            .await?;
        let status = response.status().as_u16();
        let body: Value = response.json().await?;
        ensure!(status == 201, "define: {status} {body}");
        Ok(())
    }

    async fn run(&self, name: &str, input: Value) -> Result<ExecutionId> {
        let (status, body) = self
            .post(
                &format!("/v1/workflows/{name}/executions"),
                json!({"input": input}),
            )
            .await?;
        ensure!(status == 201, "start: {status} {body}");
        Ok(ExecutionId::new(body["id"].as_str().context("an id")?)?)
    }

    async fn view(&self, id: &ExecutionId) -> Result<Value> {
        let response = self
            .http
            .get(format!("{}/v1/workflow-executions/{id}", self.engine.base))
            .send()
            .await?;
        Ok(response.json().await?)
    }

    /// Waits until the execution's status is `status` (and no run goes on).
    async fn until(&self, id: &ExecutionId, status: &str, within: Duration) -> Result<Value> {
        eventually(within, &format!("workflow {status}"), || async {
            let view = self.view(id).await?;
            let runs_done = view["nodes"]
                .as_object()
                .into_iter()
                .flatten()
                .flat_map(|(_, n)| n["runs"].as_array().cloned().unwrap_or_default())
                .all(|r| r["status"] != "running");
            Ok((view["status"] == status && runs_done).then_some(view))
        })
        .await
    }

    fn journal(&self, client: &async_nats::Client) -> Journal {
        let js = async_nats::jetstream::new(client.clone());
        Journal::new(js, Subjects::default(), "/test")
    }

    fn workflow_log(&self, client: &async_nats::Client) -> WorkflowLog {
        let js = async_nats::jetstream::new(client.clone());
        WorkflowLog::new(js, Subjects::default(), "/test")
    }
}

const PIPELINE: &str = r#"
name: pipeline
version: 1
nodes:
  fetch:
    kind: http
    input: {url: "URL/items"}
  count:
    kind: transform
    depends_on: [fetch]
    input:
      items: "${{ .nodes.fetch.output.body.items }}"
      n: "${{ .nodes.fetch.output.body.items | length }}"
  many:
    kind: condition
    depends_on: [count]
    input: "${{ .nodes.count.output.n > 2 }}"
  left:
    kind: sql
    depends_on: [many]
    when: ".nodes.many.output.result"
    secrets: {DB: pipeline-db}
    input:
      connection: DB
      query: "select pg_sleep(SLEEP)::text as slept, $1::int4 * 10 as n, $2::text as who"
      params: ["${{ .nodes.count.output.n }}", "left"]
  right:
    kind: script
    depends_on: [many]
    when: ".nodes.many.output.result"
    input:
      language: python3
      code: "import json,sys,time; d=json.load(sys.stdin); time.sleep(SLEEP); print(json.dumps({'sum': sum(d['items'])}))"
      input: {items: "${{ .nodes.count.output.items }}"}
  few:
    kind: echo
    depends_on: [many]
    when: ".nodes.many.output.result | not"
  join:
    kind: transform
    depends_on: [left, right, few]
    when: ".nodes.left.status == \"succeeded\""
    input:
      left: "${{ .nodes.left.output.rows[0] }}"
      right: "${{ .nodes.right.output.sum }}"
output: "${{ .nodes.join.output }}"
"#;

fn times(run: &Value) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let at = |field: &str| -> Result<DateTime<Utc>> {
        Ok(run[field].as_str().context("a time")?.parse()?)
    };
    Ok((at("started_at")?, at("finished_at")?))
}

/// The node and execution of every `run_started` in the workflow log, in
/// order; the log must fold without a skipped event.
async fn runs_started(
    client: &async_nats::Client,
    log: &WorkflowLog,
    id: &ExecutionId,
) -> Result<Vec<(String, ExecutionId)>> {
    let history = log.load(id).await?;
    ensure!(history.skipped.is_empty(), "{:?}", history.skipped);
    let mut runs = Vec::new();
    runlog_events::direct::read(
        client,
        "RUNLOG_EXEC",
        &format!("runlog.wf.{id}"),
        1,
        usize::MAX,
        |stored| {
            if let Ok(env) = serde_json::from_slice::<WorkflowEnvelope>(&stored.payload)
                && let WorkflowEvent::RunStarted {
                    node, execution, ..
                } = env.event
            {
                runs.push((node, execution));
            }
        },
    )
    .await?;
    Ok(runs)
}

/// How many attempts of `execution` started, from the task log.
async fn starts(journal: &Journal, execution: &ExecutionId) -> Result<usize> {
    let history = journal.load(execution).await?;
    Ok(history
        .events
        .iter()
        .filter(|e| matches!(e.envelope.event, Event::Started(_)))
        .count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_runs_with_parallel_branches_and_skips_the_false_one() -> Result<()> {
    let pg = Postgres::start()?;
    let stack = Stack::start_with_secrets("wf-pipeline", &[("PIPELINE_DB", pg.url())])?;
    let url = http_server(json!({"items": [1, 2, 3]}))?;
    stack
        .define(&PIPELINE.replace("URL", &url).replace("SLEEP", "1"))
        .await?;
    let id = stack.run("pipeline", json!({})).await?;
    let view = stack
        .until(&id, "succeeded", Duration::from_secs(60))
        .await?;

    let nodes = &view["nodes"];
    for (node, status) in [
        ("fetch", "succeeded"),
        ("count", "succeeded"),
        ("many", "succeeded"),
        ("left", "succeeded"),
        ("right", "succeeded"),
        ("few", "skipped"),
        ("join", "succeeded"),
    ] {
        ensure!(nodes[node]["status"] == status, "{node}: {}", nodes[node]);
    }
    ensure!(nodes["count"]["output"]["n"] == 3, "{}", nodes["count"]);
    ensure!(nodes["many"]["output"] == json!({"result": true}));
    ensure!(
        view["output"] == json!({"left": {"slept": "", "n": 30, "who": "left"}, "right": 6}),
        "{}",
        view["output"]
    );
    // The branches overlapped: each started before the other ended.
    let (left_start, left_end) = times(&nodes["left"]["runs"][0])?;
    let (right_start, right_end) = times(&nodes["right"]["runs"][0])?;
    ensure!(
        left_start < right_end && right_start < left_end,
        "left {left_start}..{left_end}, right {right_start}..{right_end}"
    );
    // Each run is a task execution of its own, linked to the workflow.
    let client = async_nats::connect(stack.server.url()).await?;
    let journal = stack.journal(&client);
    let left = ExecutionId::new(
        nodes["left"]["runs"][0]["execution"]
            .as_str()
            .context("id")?,
    )?;
    let spec = journal.load(&left).await?.state.spec.context("a spec")?;
    ensure!(spec.workflow_execution.as_ref() == Some(&id) && spec.node.as_deref() == Some("left"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_engine_resumes_the_graph_and_runs_no_node_twice() -> Result<()> {
    let pg = Postgres::start()?;
    let mut stack = Stack::start_with_secrets("wf-kill", &[("PIPELINE_DB", pg.url())])?;
    let url = http_server(json!({"items": [1, 2, 3]}))?;
    stack
        .define(&PIPELINE.replace("URL", &url).replace("SLEEP", "2"))
        .await?;
    let id = stack.run("pipeline", json!({})).await?;
    // Kill -9 while both branches run.
    eventually(Duration::from_secs(30), "branches running", || async {
        let view = stack.view(&id).await?;
        let running = ["left", "right"]
            .iter()
            .all(|n| view["nodes"][n]["runs"][0]["status"] == "running");
        Ok(running.then_some(()))
    })
    .await?;
    stack.engine.kill();
    stack.engine.restart()?;
    let view = stack
        .until(&id, "succeeded", Duration::from_secs(60))
        .await?;
    ensure!(view["nodes"]["join"]["status"] == "succeeded", "{view}");

    let client = async_nats::connect(stack.server.url()).await?;
    let log = stack.workflow_log(&client);
    let journal = stack.journal(&client);
    let runs = runs_started(&client, &log, &id).await?;
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for (node, execution) in &runs {
        *per_node.entry(node).or_default() += 1;
        ensure!(
            starts(&journal, execution).await? == 1,
            "{node} started twice"
        );
    }
    ensure!(
        per_node == BTreeMap::from([("fetch", 1), ("left", 1), ("right", 1)]),
        "{per_node:?}"
    );
    Ok(())
}

const FLAKY: &str = r#"
name: flaky
version: 1
on_failure: {handler: {workflow: on-flaky}}
nodes:
  first:
    kind: echo
    input: {n: 1}
  second:
    kind: shell
    depends_on: [first]
    retry: {max_attempts: 1}
    input: {shell: "if [ -f MARKER ]; then echo fixed; else touch MARKER; exit 3; fi"}
  third:
    kind: echo
    depends_on: [second]
    input: {after: "${{ .nodes.second.output.stdout }}"}
"#;

const HANDLER: &str = r#"
name: on-flaky
version: 1
nodes:
  note:
    kind: transform
    input: {failed: "${{ .inputs.node }}", because: "${{ .inputs.error }}"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_starts_the_handler_and_a_retry_reruns_only_the_failed_part() -> Result<()> {
    let stack = Stack::start("wf-retry")?;
    let marker = stack._dir.0.join("marker");
    stack.define(HANDLER).await?;
    stack
        .define(&FLAKY.replace("MARKER", &marker.display().to_string()))
        .await?;
    let id = stack.run("flaky", json!({})).await?;
    let failed = stack.until(&id, "failed", Duration::from_secs(60)).await?;
    ensure!(failed["failed_node"] == "second", "{failed}");
    ensure!(failed["nodes"]["third"]["status"] == "waiting", "{failed}");

    // The handler ran with the failure as its input.
    let handler = ExecutionId::new(failed["handler"].as_str().context("a handler")?)?;
    let handled = stack
        .until(&handler, "succeeded", Duration::from_secs(30))
        .await?;
    ensure!(handled["input"]["execution"] == id.as_str(), "{handled}");
    ensure!(
        handled["nodes"]["note"]["output"]["failed"] == "second",
        "{handled}"
    );
    ensure!(handled["handles"] == id.as_str());

    // Retry: `second` and `third` run, `first` keeps its output.
    let (status, body) = stack
        .post(&format!("/v1/workflow-executions/{id}/retry"), json!({}))
        .await?;
    ensure!(status == 202, "{status} {body}");
    let done = stack
        .until(&id, "succeeded", Duration::from_secs(60))
        .await?;
    ensure!(done["round"] == 1, "{done}");
    ensure!(
        done["nodes"]["third"]["output"] == json!({"after": "fixed\n"}),
        "{done}"
    );
    let client = async_nats::connect(stack.server.url()).await?;
    let runs = runs_started(&client, &stack.workflow_log(&client), &id).await?;
    let nodes: Vec<&str> = runs.iter().map(|(n, _)| n.as_str()).collect();
    ensure!(nodes == ["first", "second", "second", "third"], "{nodes:?}");

    // A succeeded execution cannot be retried.
    let (status, body) = stack
        .post(&format!("/v1/workflow-executions/{id}/retry"), json!({}))
        .await?;
    ensure!(
        status == 409 && body["code"] == "not_retryable",
        "{status} {body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_the_running_nodes_and_a_fan_out_keeps_its_cap() -> Result<()> {
    let stack = Stack::start("wf-cancel")?;
    stack
        .define(
            r#"
name: fan
version: 1
nodes:
  each:
    kind: echo
    for_each: "[range(40)]"
    concurrency: 5
    input: {i: "${{ .index }}"}
  slow:
    kind: shell
    depends_on: [each]
    input: {shell: "sleep 30"}
"#,
        )
        .await?;
    let id = stack.run("fan", json!({})).await?;
    let view = eventually(Duration::from_secs(60), "slow runs", || async {
        let view = stack.view(&id).await?;
        Ok((view["nodes"]["slow"]["runs"][0]["status"] == "running").then_some(view))
    })
    .await?;
    let outputs: Vec<i64> = view["nodes"]["each"]["output"]
        .as_array()
        .context("an array")?
        .iter()
        .filter_map(|o| o["i"].as_i64())
        .collect();
    ensure!(outputs == (0..40).collect::<Vec<_>>(), "{outputs:?}");
    // At most five runs of `each` were running at any time.
    let mut spans: Vec<(DateTime<Utc>, i32)> = Vec::new();
    for run in view["nodes"]["each"]["runs"].as_array().context("runs")? {
        let (start, end) = times(run)?;
        spans.push((start, 1));
        spans.push((end, -1));
    }
    spans.sort();
    let (mut now, mut most) = (0, 0);
    for (_, d) in spans {
        now += d;
        most = most.max(now);
    }
    ensure!(most <= 5, "{most} runs at once");

    let started = std::time::Instant::now();
    let (status, body) = stack
        .post(
            &format!("/v1/workflow-executions/{id}/cancel"),
            json!({"reason": "enough"}),
        )
        .await?;
    ensure!(status == 202, "{status} {body}");
    let view = stack
        .until(&id, "cancelled", Duration::from_secs(20))
        .await?;
    ensure!(
        started.elapsed() < Duration::from_secs(15),
        "the sleep was stopped, not waited for"
    );
    ensure!(
        view["nodes"]["slow"]["runs"][0]["status"] == "cancelled",
        "{view}"
    );
    ensure!(view["reason"] == "enough", "{view}");
    Ok(())
}

/// Runs the `runlog` binary against the stack's engine.
fn runlog(stack: &Stack, args: &[&str]) -> Result<(i32, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runlog"))
        .args(args)
        .env("RUNLOG_ENGINE_URL", &stack.engine.base)
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.code().unwrap_or(-1), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_applies_runs_follows_and_retries_a_workflow() -> Result<()> {
    let stack = Stack::start("wf-cli")?;
    let file = stack._dir.0.join("greet.yaml");
    let marker = stack._dir.0.join("marker");
    std::fs::write(
        &file,
        r#"
name: greet
version: 1
nodes:
  hello:
    kind: echo
    input: {who: "${{ .inputs.who }}"}
  shout:
    kind: transform
    depends_on: [hello]
    input: "HELLO ${{ .nodes.hello.output.who | ascii_upcase }}"
  once:
    kind: shell
    depends_on: [shout]
    retry: {max_attempts: 1}
    input: {shell: "test -f MARKER || { touch MARKER; exit 1; }"}
"#
        .replace("MARKER", &marker.display().to_string()),
    )?;
    let path = file.display().to_string();
    let (code, out) = runlog(&stack, &["workflow", "apply", &path])?;
    ensure!(
        code == 0 && out.contains("greet version 1: defined (3 nodes)"),
        "{code} {out}"
    );
    let (code, out) = runlog(&stack, &["workflow", "apply", &path])?;
    ensure!(code == 0 && out.contains("unchanged"), "{code} {out}");
    let (code, out) = runlog(&stack, &["workflow", "ls"])?;
    ensure!(
        code == 0 && out.contains("greet") && out.contains("1"),
        "{out}"
    );

    // The first run fails at `once`: exit 1, the tree says where.
    let (code, out) = runlog(
        &stack,
        &[
            "workflow",
            "run",
            "greet",
            "--input",
            r#"{"who": "ann"}"#,
            "--wait",
        ],
    )?;
    ensure!(code == 1, "{code} {out}");
    ensure!(out.contains("once: failed"), "{out}");
    ensure!(out.contains("✓ shout (transform) succeeded"), "{out}");
    let id = out
        .lines()
        .find(|l| l.contains(" greet v1: "))
        .and_then(|l| l.split(' ').next())
        .context("the tree names the execution")?
        .to_owned();
    let (code, out) = runlog(&stack, &["workflow", "retry", &id, "--wait"])?;
    ensure!(code == 0, "{code} {out}");
    ensure!(out.contains(&format!("{id} greet v1: succeeded")), "{out}");
    let (code, out) = runlog(&stack, &["workflow", "status", &id, "-o", "json"])?;
    ensure!(code == 0, "{code} {out}");
    let view: Value = serde_json::from_str(out.trim())?;
    ensure!(view["nodes"]["shout"]["output"] == "HELLO ANN", "{view}");
    ensure!(view["round"] == 1, "{view}");
    let (code, out) = runlog(&stack, &["workflow", "ls", "--executions", "greet"])?;
    ensure!(
        code == 0 && out.contains(&id) && out.contains("3/3"),
        "{out}"
    );
    let (code, out) = runlog(&stack, &["workflow", "cancel", &id])?;
    ensure!(
        code == 6,
        "an ended execution cannot be cancelled: {code} {out}"
    );
    let (code, out) = runlog(&stack, &["workflow", "status", "nope"])?;
    ensure!(code == 5, "{code} {out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_for_each_over_a_thousand_items_fifty_at_once_completes() -> Result<()> {
    let stack = Stack::start("wf-thousand")?;
    stack
        .define(
            r#"
name: thousand
version: 1
nodes:
  each:
    kind: echo
    for_each: "[range(1000)]"
    concurrency: 50
    input: {i: "${{ .index }}"}
  total:
    kind: transform
    depends_on: [each]
    input: "${{ [.nodes.each.output[].i] | add }}"
output: "${{ .nodes.total.output }}"
"#,
        )
        .await?;
    let started = std::time::Instant::now();
    let id = stack.run("thousand", json!({})).await?;
    let view = stack
        .until(&id, "succeeded", Duration::from_secs(240))
        .await?;
    ensure!(view["output"] == 499_500, "{}", view["output"]);
    let runs = view["nodes"]["each"]["runs"].as_array().context("runs")?;
    ensure!(runs.len() == 1000, "{} runs", runs.len());
    // Never more than fifty at once, from the runs' own times.
    let mut spans: Vec<(DateTime<Utc>, i32)> = Vec::new();
    for run in runs {
        let (start, end) = times(run)?;
        spans.push((start, 1));
        spans.push((end, -1));
    }
    spans.sort();
    let (mut now, mut most) = (0, 0);
    for (_, d) in spans {
        now += d;
        most = most.max(now);
    }
    ensure!(most <= 50, "{most} runs at once");
    eprintln!(
        "for_each 1000 × 50: {:.2} s, at most {most} runs at once",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
