//! OpenTelemetry traces end to end: an engine and a `runlog worker
//! --otlp-endpoint` process export to a real OTLP/HTTP receiver, and each
//! execution is one trace under the caller's span: `submit` → `execution`
//! → per attempt `queue wait` and `attempt` → the handler's span, with the
//! ids every event's `traceparent` derives, and the trace passed on to the
//! process (`TRACEPARENT`) and to the HTTP server (`traceparent`).

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use runlog_engine::{Engine, EngineConfig};
use runlog_events::{ExecutionId, TraceParent};
use runlog_testkit::{NatsServer, OtlpReceiver, ReceivedSpan, eventually};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
// The worker process, killed on drop.
use runlog_testkit::KilledOnDrop as Worker;

const PATIENCE: Duration = Duration::from_secs(60);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// A server, a receiver, an engine exporting to it (in this process) and
/// a `runlog worker --otlp-endpoint` process.
struct Rig {
    server: NatsServer,
    receiver: OtlpReceiver,
    shutdown: CancellationToken,
    engine: Engine,
    base: String,
    http: reqwest::Client,
    worker: Worker,
}

impl Rig {
    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.engine.wait().await;
        Ok(())
    }

    async fn start() -> Result<Rig> {
        let server = NatsServer::start()?;
        let receiver = OtlpReceiver::start().await?;
        let shutdown = CancellationToken::new();
        let mut config = EngineConfig::local(&server.url());
        config.otlp_endpoint = Some(receiver.endpoint().to_owned());
        let engine = Engine::start(config, shutdown.clone()).await?;
        let base = format!("http://{}", engine.addr());
        let child = Command::new(env!("CARGO_BIN_EXE_runlog"))
            .args([
                "worker",
                "--allow-root",
                "--nats-url",
                &server.url(),
                "--id",
                "w1",
            ])
            .args(["--otlp-endpoint", receiver.endpoint()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Rig {
            server,
            receiver,
            shutdown,
            engine,
            base,
            http: reqwest::Client::new(),
            worker: Worker(child),
        })
    }
}

/// The spans of one trace, by name.
struct Trace(Vec<ReceivedSpan>);

impl Trace {
    fn named(&self, name: &str) -> Vec<&ReceivedSpan> {
        self.0.iter().filter(|s| s.name == name).collect()
    }

    fn one(&self, name: &str, of: &str) -> Result<&ReceivedSpan> {
        let spans: Vec<_> = self
            .named(name)
            .into_iter()
            .filter(|s| {
                s.attributes
                    .get("runlog.execution.id")
                    .is_none_or(|e| e == of)
            })
            .collect();
        ensure!(spans.len() == 1, "one {name} span of {of}: {spans:#?}");
        Ok(spans[0])
    }
}

/// An HTTP server that keeps the `traceparent` of every request.
async fn target() -> Result<(String, Arc<Mutex<Vec<String>>>)> {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/ping",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let kept = kept.clone();
            async move {
                if let Some(v) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
                    kept.lock().expect("never poisoned").push(v.to_owned());
                }
                "pong"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/ping", listener.local_addr()?);
    tokio::spawn(async move {
        let _stopped = axum::serve(listener, app).await;
    });
    Ok((url, seen))
}

/// The `traceparent` of every log batch of `execution` on the logs stream.
async fn log_batches(
    server: &NatsServer,
    execution: &ExecutionId,
) -> Result<Vec<Option<TraceParent>>> {
    use futures::StreamExt;
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await?);
    let subjects = runlog_events::Subjects::default();
    let stream = js.get_stream(subjects.logs_stream()).await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?;
    let mut found = Vec::new();
    let empty = async_nats::HeaderMap::new();
    while let Some(message) = messages.next().await {
        let message = message?;
        let pending = message.info().map_err(anyhow::Error::msg)?.pending;
        let headers = message.headers.as_ref().unwrap_or(&empty);
        if let Ok(envelope) = runlog_events::codec::decode(
            headers,
            &message.payload,
            &runlog_events::codec::Limits::default(),
        ) && envelope.execution == *execution
            && matches!(envelope.event, runlog_events::Event::Log(_))
        {
            found.push(envelope.traceparent);
        }
        if pending == 0 {
            break;
        }
    }
    Ok(found)
}

/// The stored events of `id`, as `GET /v1/executions/{id}/events` lists them.
async fn events(http: &reqwest::Client, base: &str, id: &ExecutionId) -> Result<Vec<Value>> {
    let history: Value = http
        .get(format!("{base}/v1/executions/{id}/events"))
        .send()
        .await?
        .json()
        .await?;
    Ok(history["events"].as_array().context("events")?.clone())
}

async fn submit(
    http: &reqwest::Client,
    base: &str,
    traceparent: Option<&str>,
    task: Value,
) -> Result<ExecutionId> {
    let mut request = http.post(format!("{base}/v1/executions")).json(&task);
    if let Some(tp) = traceparent {
        request = request.header("traceparent", tp);
    }
    let answer: Value = request.send().await?.error_for_status()?.json().await?;
    Ok(ExecutionId::new(answer["id"].as_str().context("an id")?)?)
}

async fn wait_status(
    http: &reqwest::Client,
    base: &str,
    id: &ExecutionId,
    want: &str,
) -> Result<()> {
    eventually(PATIENCE, &format!("{id} {want}"), || async {
        let state: Value = http
            .get(format!("{base}/v1/executions/{id}"))
            .send()
            .await?
            .json()
            .await?;
        ensure!(state["status"] == want, "{state}");
        Ok(Some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_execution_is_one_trace_from_the_caller_s_span_to_its_end() -> Result<()> {
    let Rig {
        server,
        receiver,
        shutdown,
        engine,
        base,
        http,
        worker: _worker,
    } = Rig::start().await?;
    let dir = tempfile::tempdir()?;
    let (url, seen) = target().await?;
    let caller = format!("00-{TRACE}-{CALLER_SPAN}-01");

    // Fails once, then succeeds: two attempts, and the process says the
    // trace context it was given.
    let flaky = submit(
        &http,
        &base,
        Some(&caller),
        json!({
            "kind": "shell",
            "input": {
                "shell": "n=$(( $(cat \"$TRIES\" 2>/dev/null || echo 0) + 1 )); echo $n > \"$TRIES\"; \
                          echo \"tp=$TRACEPARENT\"; [ $n -ge 2 ]",
                "env": {"TRIES": dir.path().join("tries")},
            },
            "retry": {"max_attempts": 2, "backoff_base_ms": 50, "backoff_max_ms": 50},
        }),
    )
    .await?;
    let called = submit(
        &http,
        &base,
        Some(&caller),
        json!({"kind": "http", "input": {"url": url}}),
    )
    .await?;
    // No caller span: the trace starts at the engine's door. Dead-lettered
    // at once, so the engine (not the worker) ends it.
    let doomed = submit(
        &http,
        &base,
        None,
        json!({"kind": "shell", "input": {"shell": "exit 3"}, "retry": {"max_attempts": 1}}),
    )
    .await?;
    wait_status(&http, &base, &flaky, "succeeded").await?;
    wait_status(&http, &base, &called, "succeeded").await?;
    wait_status(&http, &base, &doomed, "dead_lettered").await?;

    // Every event of an execution carries the context its spans hang
    // from: the engine door's `submit` span, in the caller's trace.
    let mut contexts = Vec::new();
    for id in [&flaky, &called, &doomed] {
        let events = events(&http, &base, id).await?;
        ensure!(events.len() >= 3, "{events:?}");
        let first = events[0]["traceparent"].as_str().context("a traceparent")?;
        for event in &events {
            ensure!(event["traceparent"] == first, "{id}: {event} after {first}");
        }
        contexts.push(first.parse::<TraceParent>()?);
    }
    let (flaky_ctx, called_ctx, doomed_ctx) = (&contexts[0], &contexts[1], &contexts[2]);
    // The workers' telemetry (log batches, on the logs stream) too.
    let batches = log_batches(&server, &flaky).await?;
    ensure!(!batches.is_empty(), "the flaky task logged");
    for batch in &batches {
        ensure!(
            batch.as_ref() == Some(flaky_ctx),
            "{batch:?} is not {flaky_ctx}"
        );
    }
    ensure!(flaky_ctx.trace_id() == TRACE && called_ctx.trace_id() == TRACE);
    ensure!(
        doomed_ctx.trace_id() != TRACE,
        "a new trace without a caller"
    );
    ensure!(flaky_ctx.span_id() != CALLER_SPAN, "the door's own span");
    // The API names each execution's trace, to look it up in a backend.
    for (id, context) in [(&flaky, flaky_ctx), (&doomed, doomed_ctx)] {
        let view: Value = http
            .get(format!("{base}/v1/executions/{id}"))
            .send()
            .await?
            .json()
            .await?;
        ensure!(view["trace_id"] == context.trace_id(), "{view}");
    }

    // flaky: submit, execution, 2 × (queue wait, attempt, shell).
    let spans = receiver
        .wait_for("the spans of the three executions", PATIENCE, |spans| {
            let of = |t: &str, n: &str| {
                spans
                    .iter()
                    .filter(|s| s.trace_id == t && s.name == n)
                    .count()
            };
            of(TRACE, "execution") == 2
                && of(TRACE, "attempt") == 3
                && of(TRACE, "shell") == 2
                && of(TRACE, "http") == 1
                && of(TRACE, "queue wait") == 3
                && of(doomed_ctx.trace_id(), "execution") == 1
                && of(doomed_ctx.trace_id(), "shell") == 1
        })
        .await?;
    let trace = Trace(
        spans
            .iter()
            .filter(|s| s.trace_id == TRACE)
            .cloned()
            .collect(),
    );

    let submits: Vec<_> = trace.named("submit");
    ensure!(submits.len() == 2, "{submits:#?}");
    for submit in &submits {
        ensure!(submit.parent_span_id == CALLER_SPAN, "{submit:#?}");
        ensure!(
            submit.service == "runlog-engine" && submit.kind == 2,
            "{submit:#?}"
        );
    }
    let submit = trace.one("submit", flaky.as_str())?;
    ensure!(submit.span_id == flaky_ctx.span_id(), "{submit:#?}");

    let execution = trace.one("execution", flaky.as_str())?;
    ensure!(execution.span_id == flaky_ctx.execution_span_id(&flaky));
    ensure!(execution.parent_span_id == submit.span_id, "{execution:#?}");
    ensure!(execution.status == 1, "succeeded: {execution:#?}");
    ensure!(execution.attributes["runlog.status"] == "succeeded");
    ensure!(execution.attributes["runlog.attempts"] == "2");
    // The worker recorded `succeeded`: it exported the execution's span.
    ensure!(execution.service == "runlog-worker", "{execution:#?}");
    ensure!(execution.start_ns >= submit.start_ns && execution.end_ns > execution.start_ns);

    let attempts: Vec<_> = trace
        .named("attempt")
        .into_iter()
        .filter(|s| s.attributes["runlog.execution.id"] == flaky.as_str())
        .collect();
    ensure!(attempts.len() == 2, "{attempts:#?}");
    for attempt in &attempts {
        let n: u32 = attempt.attributes["runlog.attempt"].parse()?;
        ensure!(
            attempt.span_id == flaky_ctx.attempt_span_id(&flaky, n),
            "{attempt:#?}"
        );
        ensure!(attempt.parent_span_id == execution.span_id, "{attempt:#?}");
        ensure!(attempt.attributes["runlog.worker"] == "w1");
        ensure!(attempt.service == "runlog-worker");
        ensure!(attempt.start_ns >= execution.start_ns && attempt.end_ns <= execution.end_ns);
        ensure!(
            attempt.status == if n == 1 { 2 } else { 1 },
            "attempt {n}: {attempt:#?}"
        );
        let shells: Vec<_> = trace
            .named("shell")
            .into_iter()
            .filter(|s| s.parent_span_id == attempt.span_id)
            .collect();
        ensure!(
            shells.len() == 1,
            "one shell span under attempt {n}: {shells:#?}"
        );
        ensure!(shells[0].start_ns >= attempt.start_ns && shells[0].end_ns <= attempt.end_ns);
        // The process was given its own span's context.
        let logs: Value = http
            .get(format!("{base}/v1/executions/{flaky}/logs"))
            .send()
            .await?
            .json()
            .await?;
        let said = format!("tp=00-{TRACE}-{}-01", shells[0].span_id);
        ensure!(
            logs["lines"]
                .as_array()
                .context("lines")?
                .iter()
                .any(|l| l["attempt"] == n && l["line"] == said.as_str()),
            "attempt {n} said {said}: {logs}"
        );
    }
    let waits: Vec<_> = trace
        .named("queue wait")
        .into_iter()
        .filter(|s| s.parent_span_id == execution.span_id)
        .collect();
    ensure!(waits.len() == 2, "{waits:#?}");

    // The HTTP task's span is a client span, and its server got its context.
    let called_exec = trace.one("execution", called.as_str())?;
    let called_attempt = trace.one("attempt", called.as_str())?;
    ensure!(called_attempt.parent_span_id == called_exec.span_id);
    let client = trace
        .named("http")
        .into_iter()
        .next()
        .context("an http span")?;
    ensure!(
        client.kind == 3 && client.parent_span_id == called_attempt.span_id,
        "{client:#?}"
    );
    let got = seen.lock().expect("never poisoned").clone();
    ensure!(
        got == vec![format!("00-{TRACE}-{}-01", client.span_id)],
        "{got:?}"
    );

    // Without a caller: the door's span is the root; the reactor recorded
    // the dead letter, so the engine exported the execution's span.
    let doomed_spans: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == doomed_ctx.trace_id())
        .collect();
    let root = doomed_spans
        .iter()
        .find(|s| s.name == "submit")
        .context("a submit span")?;
    ensure!(root.parent_span_id.is_empty() && root.span_id == doomed_ctx.span_id());
    let ended = doomed_spans
        .iter()
        .find(|s| s.name == "execution")
        .context("an execution span")?;
    ensure!(
        ended.service == "runlog-engine" && ended.status == 2,
        "{ended:#?}"
    );
    ensure!(ended.attributes["runlog.status"] == "dead_lettered");
    ensure!(ended.parent_span_id == root.span_id);

    // The engine counts what it exported: 3 `submit` spans and the
    // dead-lettered execution's.
    eventually(PATIENCE, "the engine's span counters", || async {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let exported = text
            .lines()
            .find_map(|l| l.strip_prefix("runlog_trace_spans_total{outcome=\"exported\"} "))
            .context("the exported series")?;
        ensure!(exported == "4", "{exported}");
        ensure!(text.contains("runlog_trace_spans_total{outcome=\"dropped\"} 0"));
        Ok(Some(()))
    })
    .await?;

    shutdown.cancel();
    engine.wait().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_caller_gets_no_spans_and_keeps_its_context() -> Result<()> {
    let rig = Rig::start().await?;
    let (receiver, base, http) = (&rig.receiver, &rig.base, &rig.http);
    let unsampled = format!("00-{TRACE}-{CALLER_SPAN}-00");
    let quiet = submit(
        http,
        base,
        Some(&unsampled),
        json!({"kind": "echo", "input": {}}),
    )
    .await?;
    // A sampled one after it: once its spans arrived, the quiet one's
    // would have too.
    let loud = submit(http, base, None, json!({"kind": "echo", "input": {}})).await?;
    wait_status(http, base, &quiet, "succeeded").await?;
    wait_status(http, base, &loud, "succeeded").await?;
    let spans = receiver
        .wait_for("the sampled execution's spans", PATIENCE, |spans| {
            spans.iter().any(|s| {
                s.name == "execution"
                    && s.attributes.get("runlog.execution.id").map(String::as_str)
                        == Some(loud.as_str())
            })
        })
        .await?;
    ensure!(
        spans.iter().all(|s| s.trace_id != TRACE),
        "no span of the unsampled trace: {spans:#?}"
    );
    for event in events(http, base, &quiet).await? {
        let tp: TraceParent = event["traceparent"].as_str().context("kept")?.parse()?;
        ensure!(tp.trace_id() == TRACE && !tp.sampled(), "{event}");
    }
    rig.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_s_node_runs_hang_under_the_workflow_s_span() -> Result<()> {
    let rig = Rig::start().await?;
    let (receiver, base, http) = (&rig.receiver, &rig.base, &rig.http);
    let defined = http
        .post(format!("{base}/v1/workflows"))
        .header("content-type", "application/yaml")
        .body(
            "name: traced\nversion: 1\nnodes:\n  first: {kind: echo, input: {n: 1}}\n  \
             second: {kind: echo, depends_on: [first], input: {n: 2}}\n",
        )
        .send()
        .await?;
    ensure!(
        defined.status().as_u16() == 201,
        "{}",
        defined.text().await?
    );
    let started: Value = http
        .post(format!("{base}/v1/workflows/traced/executions"))
        .json(&json!({}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = ExecutionId::new(started["id"].as_str().context("an id")?)?;
    let context = TraceParent::of_workflow(&id);
    let spans = receiver
        .wait_for("the workflow's span and its two runs", PATIENCE, |spans| {
            let of = |n: &str| {
                spans
                    .iter()
                    .filter(|s| s.trace_id == context.trace_id() && s.name == n)
                    .count()
            };
            of("workflow") == 1 && of("execution") == 2 && of("attempt") == 2
        })
        .await?;
    let trace = Trace(
        spans
            .into_iter()
            .filter(|s| s.trace_id == context.trace_id())
            .collect(),
    );
    let workflow = trace.named("workflow")[0];
    ensure!(
        workflow.parent_span_id.is_empty() && workflow.span_id == context.span_id(),
        "{workflow:#?}"
    );
    ensure!(workflow.status == 1 && workflow.attributes["runlog.workflow"] == "traced");
    ensure!(workflow.attributes["runlog.workflow.execution.id"] == id.as_str());
    let submits = trace.named("submit");
    ensure!(submits.len() == 2, "{submits:#?}");
    for submit in submits {
        ensure!(submit.parent_span_id == workflow.span_id, "{submit:#?}");
        let run = submit.attributes["runlog.execution.id"].as_str();
        let execution = trace.one("execution", run)?;
        ensure!(execution.parent_span_id == submit.span_id, "{execution:#?}");
        ensure!(
            execution.start_ns >= workflow.start_ns && execution.end_ns <= workflow.end_ns,
            "{execution:#?} within {workflow:#?}"
        );
    }

    // Started under a caller's span, the workflow's span is its child, in
    // the caller's trace; a sub-workflow's span is a child of its parent's,
    // and its node runs follow it there.
    let defined = http
        .post(format!("{base}/v1/workflows"))
        .header("content-type", "application/yaml")
        .body("name: outer\nversion: 1\nnodes:\n  inner: {kind: workflow, input: {workflow: traced}}\n")
        .send()
        .await?;
    ensure!(
        defined.status().as_u16() == 201,
        "{}",
        defined.text().await?
    );
    let caller: TraceParent = format!("00-{TRACE}-{CALLER_SPAN}-01").parse()?;
    let started: Value = http
        .post(format!("{base}/v1/workflows/outer/executions"))
        .header("traceparent", caller.as_str())
        .json(&json!({}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let outer = ExecutionId::new(started["id"].as_str().context("an id")?)?;
    let spans = receiver
        .wait_for("both workflow spans and the two runs", PATIENCE, |spans| {
            let of = |n: &str| {
                spans
                    .iter()
                    .filter(|s| s.trace_id == TRACE && s.name == n)
                    .count()
            };
            of("workflow") == 2 && of("execution") == 2 && of("attempt") == 2
        })
        .await?;
    let trace = Trace(spans.into_iter().filter(|s| s.trace_id == TRACE).collect());
    let of_id = |id: &str| {
        trace
            .named("workflow")
            .into_iter()
            .find(|w| w.attributes["runlog.workflow.execution.id"] == id)
    };
    let parent = of_id(outer.as_str()).context("the outer workflow's span")?;
    ensure!(
        parent.parent_span_id == CALLER_SPAN
            && parent.span_id == TraceParent::of_workflow_under(Some(&caller), &outer).span_id(),
        "{parent:#?}"
    );
    let child = trace
        .named("workflow")
        .into_iter()
        .find(|w| w.span_id != parent.span_id)
        .context("the sub-workflow's span")?;
    ensure!(child.parent_span_id == parent.span_id, "{child:#?}");
    ensure!(
        child.attributes["runlog.workflow"] == "traced",
        "the sub-workflow's span names its workflow: {child:#?}"
    );
    let submits = trace.named("submit");
    ensure!(
        submits.len() == 2 && submits.iter().all(|s| s.parent_span_id == child.span_id),
        "{submits:#?}"
    );
    rig.stop().await
}
