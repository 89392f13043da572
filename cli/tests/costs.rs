//! Resources and cost per attempt, end to end: a `runlog worker` process
//! measures what each attempt used (CPU time and peak memory of a `shell`
//! task's processes, network bytes of an `http` task, wall time, result
//! and log bytes) and records it on the attempt's terminal event; the
//! engine sums it per execution and per group and prices it.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use runlog_engine::{Engine, EngineConfig};
use runlog_events::resources::Prices;
use runlog_testkit::{NatsServer, eventually};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
// The worker process, killed on drop.
use runlog_testkit::KilledOnDrop as Worker;

const PATIENCE: Duration = Duration::from_secs(60);

/// Holds 200 MiB it wrote to and burns 1 s of CPU in user mode.
const BURN: &str = "python3 -c \"import time\nb = b'x' * (200 << 20)\nt = time.process_time()\n\
                    while time.process_time() - t < 1.0: pass\n\"; true";

const PRICES: Prices = Prices {
    cpu_second: Some(0.01),
    gb_hour: Some(0.5),
    gb_output: Some(0.09),
};

/// A server, an engine with a price table (in this process) and a
/// `runlog worker` process.
struct Rig {
    _server: NatsServer,
    shutdown: CancellationToken,
    engine: Engine,
    base: String,
    http: reqwest::Client,
    _worker: Worker,
}

impl Rig {
    async fn start() -> Result<Rig> {
        let server = NatsServer::start()?;
        let shutdown = CancellationToken::new();
        let mut config = EngineConfig::local(&server.url());
        config.prices = PRICES;
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
            .args(["--queue", "default", "--queue", "web"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Rig {
            _server: server,
            shutdown,
            engine,
            base,
            http: reqwest::Client::new(),
            _worker: Worker(child),
        })
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.engine.wait().await;
    }

    async fn get(&self, path: &str) -> Result<Value> {
        let answer = self.http.get(format!("{}{path}", self.base)).send().await?;
        ensure!(answer.status().is_success(), "{path}: {}", answer.status());
        Ok(answer.json().await?)
    }

    async fn submit(&self, task: Value) -> Result<String> {
        let answer: Value = self
            .http
            .post(format!("{}/v1/executions", self.base))
            .json(&task)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(answer["id"].as_str().context("an id")?.to_owned())
    }

    async fn ended(&self, id: &str, want: &str) -> Result<Value> {
        eventually(PATIENCE, &format!("{id} {want}"), || async {
            let state = self.get(&format!("/v1/executions/{id}")).await?;
            ensure!(state["status"] == want, "{state}");
            Ok(Some(state))
        })
        .await
    }

    /// `runlog ARGS --engine-url …`: its standard output.
    fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_runlog"))
            .args(args)
            .args(["--engine-url", &self.base])
            .output()?;
        ensure!(
            out.status.success(),
            "runlog {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }
}

/// CPU seconds and peak RSS bytes `/usr/bin/time -v` reports for `script`.
fn usr_bin_time(script: &str) -> Result<(f64, f64)> {
    let timed = Command::new("/usr/bin/time")
        .args(["-v", "sh", "-c", script])
        .output()
        .context("/usr/bin/time runs (Debian package `time`, installed by set-up)")?;
    let report = String::from_utf8_lossy(&timed.stderr);
    let field = |name: &str| -> Result<f64> {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("{name} in {report}"))
    };
    let cpu = field("User time (seconds):")? + field("System time (seconds):")?;
    let rss = field("Maximum resident set size (kbytes):")? * 1024.0;
    Ok((cpu, rss))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_task_reports_cpu_and_peak_memory_as_the_os_does() -> Result<()> {
    let rig = Rig::start().await?;
    let id = rig
        .submit(json!({"kind": "shell", "input": {"shell": BURN}, "labels": {"team": "data"}}))
        .await?;
    let state = rig.ended(&id, "succeeded").await?;
    let (their_cpu, their_rss) = usr_bin_time(BURN)?;

    let cost = rig.get(&format!("/v1/executions/{id}/cost")).await?;
    let attempt = &cost["attempts"][0]["resources"];
    let ms = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let our_cpu = (ms(&attempt["cpu_user_ms"]) + ms(&attempt["cpu_system_ms"])) / 1000.0;
    let our_rss = ms(&attempt["peak_rss_bytes"]);
    eprintln!(
        "runlog: CPU {our_cpu:.3} s, peak RSS {our_rss} B; \
         /usr/bin/time -v: CPU {their_cpu:.3} s, peak RSS {their_rss} B"
    );
    ensure!(
        (our_cpu - their_cpu).abs() <= 0.1 * their_cpu,
        "CPU {our_cpu:.3} s against {their_cpu:.3} s: {cost:#}"
    );
    ensure!(
        (our_rss - their_rss).abs() <= 0.1 * their_rss,
        "peak RSS {our_rss} against {their_rss} bytes: {cost:#}"
    );
    ensure!(our_rss > 200.0 * 1024.0 * 1024.0, "{cost:#}");
    ensure!(ms(&attempt["wall_ms"]) >= 1000.0, "wall time: {cost:#}");

    // Summed on the execution, the same in its view, and priced.
    ensure!(cost["total"]["attempts"] == 1, "{cost:#}");
    ensure!(
        state["resources"] == cost["total"],
        "{state:#} against {cost:#}"
    );
    let priced = &cost["cost"];
    let cpu_s =
        ms(&cost["total"]["cpu_user_ms"]) / 1000.0 + ms(&cost["total"]["cpu_system_ms"]) / 1000.0;
    ensure!((ms(&priced["cpu"]) - 0.01 * cpu_s).abs() < 1e-9, "{cost:#}");
    let gb_hours = ms(&cost["total"]["memory_gb_hours"]);
    ensure!(
        gb_hours > 0.0 && (ms(&priced["memory"]) - 0.5 * gb_hours).abs() < 1e-12,
        "{cost:#}"
    );
    let sum = ms(&priced["cpu"]) + ms(&priced["memory"]) + ms(&priced["output"]);
    ensure!((ms(&priced["total"]) - sum).abs() < 1e-12, "{cost:#}");
    ensure!(cost["prices"]["cpu-second"] == 0.01, "{cost:#}");

    // The CLI shows them.
    let status = rig.cli(&["status", &id])?;
    ensure!(
        status.contains("used:") && status.contains("peak 2") && status.contains("cost:"),
        "{status}"
    );
    let one = rig.cli(&["costs", &id])?;
    ensure!(
        one.contains("PEAK RSS") && one.contains("succeeded"),
        "{one}"
    );
    rig.stop().await;
    Ok(())
}

/// An HTTP server answering `/blob` with 10,000 bytes.
async fn blob_server() -> Result<String> {
    let app = axum::Router::new().route(
        "/blob",
        axum::routing::post(|| async { "b".repeat(10_000) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/blob", listener.local_addr()?);
    tokio::spawn(async move {
        let _stopped = axum::serve(listener, app).await;
    });
    Ok(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costs_sum_by_queue_and_label_and_count_http_bytes() -> Result<()> {
    let rig = Rig::start().await?;
    let url = blob_server().await?;
    let body = "x".repeat(3_000);
    let fetched = rig
        .submit(json!({
            "kind": "http", "queue": "web", "labels": {"team": "web"},
            "input": {"url": url, "method": "POST", "body": body},
        }))
        .await?;
    let echoed = rig
        .submit(json!({
            "kind": "shell", "labels": {"team": "ops"},
            "input": {"shell": "echo one; echo two"},
        }))
        .await?;
    let failed = rig
        .submit(json!({
            "kind": "shell", "labels": {"team": "ops"}, "retry": {"max_attempts": 2, "backoff_base_ms": 10},
            "input": {"shell": "exit 3"},
        }))
        .await?;
    rig.ended(&fetched, "succeeded").await?;
    rig.ended(&echoed, "succeeded").await?;
    rig.ended(&failed, "dead_lettered").await?;

    // The http attempt's network bytes: at least its body each way.
    let http = rig.get(&format!("/v1/executions/{fetched}/cost")).await?;
    let r = &http["total"];
    ensure!(r["network_sent_bytes"].as_u64() > Some(3_000), "{http:#}");
    ensure!(
        r["network_received_bytes"].as_u64() > Some(10_000),
        "{http:#}"
    );
    ensure!(
        r.get("cpu_user_ms").is_none(),
        "an http task runs no process: {http:#}"
    );
    // The shell task's two log lines, each with its newline.
    let shell = rig.get(&format!("/v1/executions/{echoed}/cost")).await?;
    ensure!(shell["total"]["log_bytes"] == 8, "{shell:#}");
    // Both failed attempts count.
    let dead = rig.get(&format!("/v1/executions/{failed}/cost")).await?;
    ensure!(dead["total"]["attempts"] == 2, "{dead:#}");
    ensure!(
        dead["attempts"].as_array().map(Vec::len) == Some(2),
        "{dead:#}"
    );

    let by_queue = rig.get("/v1/costs?group_by=queue").await?;
    let group = |answer: &Value, key: &str| -> Result<Value> {
        answer["groups"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["key"] == key))
            .cloned()
            .with_context(|| format!("group {key} in {answer:#}"))
    };
    let web = group(&by_queue, "web")?;
    ensure!(
        web["executions"] == 1 && web["resources"] == http["total"],
        "{by_queue:#}"
    );
    let default = group(&by_queue, "default")?;
    ensure!(
        default["executions"] == 2 && default["resources"]["attempts"] == 3,
        "{by_queue:#}"
    );
    ensure!(by_queue["total"]["executions"] == 3, "{by_queue:#}");
    ensure!(
        by_queue["total"]["resources"]["attempts"] == 4,
        "{by_queue:#}"
    );

    let by_team = rig.get("/v1/costs?group_by=label:team&kind=shell").await?;
    ensure!(group(&by_team, "ops")?["executions"] == 2, "{by_team:#}");
    ensure!(
        group(&by_team, "web").is_err(),
        "filtered by kind: {by_team:#}"
    );
    let later = rig.get("/v1/costs?since=2999-01-01T00:00:00Z").await?;
    ensure!(later["total"]["executions"] == 0, "{later:#}");
    let by_day = rig.get("/v1/costs?group_by=day").await?;
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    ensure!(group(&by_day, &today)?["executions"] == 3, "{by_day:#}");
    let wrong = rig
        .http
        .get(format!("{}/v1/costs?group_by=worker", rig.base))
        .send()
        .await?;
    ensure!(wrong.status() == 400, "{}", wrong.status());

    let table = rig.cli(&["costs", "--by", "queue"])?;
    ensure!(
        table.contains("web") && table.contains("default") && table.contains("(all)"),
        "{table}"
    );
    rig.stop().await;
    Ok(())
}
