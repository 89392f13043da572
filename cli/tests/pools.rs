//! Agent pools end to end: `runlog worker --pool` processes joining with
//! pool tokens against an engine, plans and applies as `shell` tasks told
//! apart by their capacity class, one apply per workspace through a
//! concurrency key, an agent killed mid-apply, and what the log shows.
//!
//! - a worker with a wrong token, or one revoked with `runlog pool token
//!   revoke`, exits with the engine's reason and takes
//!   nothing; a worker of pool `other` never receives `tf` work;
//! - two agents of `tf` with `plan=3` and `apply=1,exclusive` run 200
//!   random plans and applies over 4 workspaces: from the log, never more
//!   than 3 plans at once on an agent, an apply alone on its agent, never
//!   two applies of one workspace at once anywhere;
//! - an agent killed with SIGKILL in the middle of an apply: the apply runs
//!   again on the other agent, never twice at once, and every task ends
//!   `succeeded`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use chrono::{DateTime, Utc};
use runlog_engine::{Engine, EngineConfig};
use runlog_events::journal::Journal;
use runlog_events::{Event, ExecutionId, Subjects};
use runlog_testkit::{NatsServer, eventually};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(60);
const TASKS: usize = 200;
const WORKSPACES: usize = 4;

/// Worker processes, killed on drop.
struct Agents(Vec<(String, Child)>);

impl Agents {
    fn kill(&mut self, id: &str) {
        if let Some((_, child)) = self.0.iter_mut().find(|(i, _)| i == id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn agent(nats: &str, id: &str, pool: &str, token_file: &Path, log: &Path) -> Result<Child> {
    Ok(Command::new(env!("CARGO_BIN_EXE_runlog"))
        .args([
            "worker",
            "--allow-root",
            "--nats-url",
            nats,
            "--id",
            id,
            "--pool",
            pool,
        ])
        .arg("--token-file")
        .arg(token_file)
        .args([
            "--concurrency",
            "4",
            "--capacity",
            "plan=3",
            "--capacity",
            "apply=1,exclusive",
        ])
        .args(["--concurrency-limit", "*:1", "--lease-ttl", "2s"])
        .args(["--ack-wait", "2s", "--heartbeat", "1s"])
        .env("RUNLOG_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?)
}

/// Runs the `runlog` binary against the engine; its stdout, or why it failed.
async fn cli(api: &Api, args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_runlog"))
        .args(args)
        .args(["--engine-url", &api.base])
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "runlog {args:?}: {} {stdout} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        ensure!(status.is_success(), "POST {path}: {status} {body}");
        Ok(body)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        Ok(self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}

/// An attempt as the log shows it: who ran it, from when to when.
#[derive(Debug, Clone)]
struct Ran {
    execution: ExecutionId,
    worker: String,
    class: String,
    workspace: Option<String>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

/// Starts an agent of pool `tf` with `token` and waits for it to exit, as a
/// refused agent must; answers what it said.
async fn refused(nats: &str, id: &str, token: &Path, dir: &Path) -> Result<String> {
    let log = dir.join(format!("{id}.log"));
    let mut child = agent(nats, id, "tf", token, &log)?;
    let status = eventually(PATIENCE, "the refused agent exits", || {
        let exited = child.try_wait();
        async move { Ok(exited?) }
    })
    .await?;
    ensure!(!status.success(), "the refused agent {id} exited {status}");
    Ok(std::fs::read_to_string(&log)?)
}

fn overlap(a: &Ran, b: &Ran) -> bool {
    a.from < b.to && b.from < a.to
}

fn task(class: &str, workspace: usize, sleep_ms: u64) -> Value {
    let mut task = json!({
        "kind": "shell",
        "queue": "tf",
        "capacity": class,
        "labels": {"workspace": format!("w{workspace}")},
        "input": {"shell": format!("sleep {:.3}", sleep_ms as f64 / 1000.0)},
        "retry": {"max_attempts": 5, "backoff_base_ms": 100, "backoff_max_ms": 500},
    });
    if class == "apply" {
        task["concurrency_key"] = json!(format!("workspace=w{workspace}"));
    }
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_runs_plans_in_parallel_applies_alone_and_survives_an_agent_killed_mid_apply()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = NatsServer::start()?;
    let shutdown = CancellationToken::new();
    let engine = Engine::start(EngineConfig::local(&server.url()), shutdown.clone()).await?;
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://{}", engine.addr()),
    };

    // Two pools, each with a token; a token no pool issued.
    let tf = api.post("/v1/pools", json!({"name": "tf"})).await?;
    // The other pool through the CLI.
    let created = cli(&api, &["pool", "create", "other", "-o", "json"]).await?;
    let other: Value = serde_json::from_str(&created)?;
    let (tf_token, other_token, wrong_token) = (
        dir.path().join("tf.token"),
        dir.path().join("other.token"),
        dir.path().join("wrong.token"),
    );
    std::fs::write(&tf_token, tf["token"].as_str().context("a token")?)?;
    std::fs::write(&other_token, other["token"].as_str().context("a token")?)?;
    let id = tf["id"].as_str().context("a token id")?;
    std::fs::write(&wrong_token, format!("{id}.{}", "0".repeat(64)))?;

    // A wrong token, and a token revoked through the CLI: each worker exits
    // with the engine's reason.
    let said = refused(&server.url(), "intruder", &wrong_token, dir.path()).await?;
    ensure!(
        said.contains("pool \"tf\" refused this worker: the token is not one of pool \"tf\"'s"),
        "{said}"
    );
    let second: Value =
        serde_json::from_str(&cli(&api, &["pool", "token", "create", "tf", "-o", "json"]).await?)?;
    let second_id = second["id"].as_str().context("a token id")?;
    let revoked_token = dir.path().join("revoked.token");
    std::fs::write(&revoked_token, second["token"].as_str().context("a token")?)?;
    cli(&api, &["pool", "token", "revoke", "tf", second_id]).await?;
    let said = refused(&server.url(), "revoked", &revoked_token, dir.path()).await?;
    ensure!(
        said.contains(&format!("the token {second_id} of pool \"tf\" was revoked")),
        "{said}"
    );

    let mut agents = Agents(Vec::new());
    for (id, pool, token) in [
        ("a1", "tf", &tf_token),
        ("a2", "tf", &tf_token),
        ("o1", "other", &other_token),
    ] {
        let child = agent(
            &server.url(),
            id,
            pool,
            token,
            &dir.path().join(format!("{id}.log")),
        )?;
        agents.0.push((id.to_owned(), child));
    }
    let pools = eventually(PATIENCE, "both agents of tf are listed", || async {
        let pools = api.get("/v1/pools").await?;
        let tf = pools["pools"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "tf"))
            .cloned();
        Ok(tf.filter(|tf| tf["agents"].as_array().is_some_and(|a| a.len() == 2)))
    })
    .await?;
    let summaries: Vec<&str> = pools["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["summary"].as_str())
        .collect();
    ensure!(
        summaries == ["plan 0/3, apply 0/1", "plan 0/3, apply 0/1"],
        "{pools}"
    );
    ensure!(
        pools["tokens"].as_array().is_some_and(|t| {
            t.len() == 2 && t.iter().filter(|t| t["revoked_at"].is_null()).count() == 1
        }) && !pools
            .to_string()
            .contains(tf["token"].as_str().unwrap_or("?"))
            && !pools
                .to_string()
                .contains(second["token"].as_str().unwrap_or("?")),
        "{pools}"
    );

    let listed = cli(&api, &["pool", "ls"]).await?;
    ensure!(
        listed.contains("a1") && listed.contains("o1") && listed.contains("plan 0/3, apply 0/1"),
        "{listed}"
    );

    // 200 random plans and applies over 4 workspaces.
    let mut seed: u64 = 0x5eed_1234;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let specs: Vec<Value> = (0..TASKS)
        .map(|_| {
            let roll = next();
            let workspace = (roll % WORKSPACES as u64) as usize;
            if roll % 5 == 0 {
                task("apply", workspace, 50 + roll % 100)
            } else {
                task("plan", workspace, 50 + roll % 200)
            }
        })
        .collect();
    let answer = api
        .post("/v1/executions/batch", json!({"executions": specs}))
        .await?;
    let mut ids = Vec::new();
    for result in answer["results"].as_array().context("results")? {
        ids.push(ExecutionId::new(result["id"].as_str().context("an id")?)?);
    }
    ensure!(ids.len() == TASKS);

    let client = async_nats::connect(server.url()).await?;
    let journal = Journal::new(
        async_nats::jetstream::new(client),
        Subjects::default(),
        "/test/reader",
    );
    // Once both agents have done a share, a long apply, and its agent
    // killed with SIGKILL while it runs.
    eventually(PATIENCE, "a quarter of the tasks ended", || async {
        let mut ended = 0;
        for id in &ids {
            if journal.load(id).await?.state.status.is_terminal() {
                ended += 1;
            }
        }
        Ok((ended >= TASKS / 4).then_some(()))
    })
    .await?;
    let mut long = task("apply", 0, 6_000);
    long["priority"] = json!("high");
    let long = api.post("/v1/executions", long).await?;
    let long = ExecutionId::new(long["id"].as_str().context("an id")?)?;
    let running = eventually(PATIENCE, "the long apply runs", || async {
        let view = api.get(&format!("/v1/executions/{long}")).await?;
        Ok((view["status"] == "running")
            .then(|| view["worker"].as_str().map(str::to_owned))
            .flatten())
    })
    .await?;
    eventually(
        PATIENCE,
        "the pool shows the apply on its agent",
        || async {
            let pools = api.get("/v1/pools").await?;
            Ok(pools
                .to_string()
                .contains("plan 0/3, apply 1/1")
                .then_some(()))
        },
    )
    .await?;
    agents.kill(&running);
    // The killed agent ran nothing after this, whatever the log says until
    // its attempts are taken over.
    let killed_at = Utc::now();
    let survivor = if running == "a1" { "a2" } else { "a1" };
    ids.push(long.clone());

    eventually(Duration::from_secs(180), "every task ends", || async {
        for id in &ids {
            if !journal.load(id).await?.state.status.is_terminal() {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;

    // What the log says.
    let mut ran = Vec::new();
    for id in &ids {
        let history = journal.load(id).await?;
        ensure!(
            history.state.status.to_string() == "succeeded",
            "{id} ended {}",
            history.state.status
        );
        let spec = history.state.spec.clone().context("a spec")?;
        let class = spec.capacity.clone().context("a capacity class")?;
        let workspace = spec.concurrency_key.clone();
        let mut open: Option<(String, DateTime<Utc>)> = None;
        for recorded in &history.events {
            let envelope = &recorded.envelope;
            match &envelope.event {
                Event::Started(started) => open = Some((started.worker.clone(), envelope.time)),
                Event::Succeeded(_) | Event::Failed(_) | Event::AttemptLost(_) => {
                    if let Some((worker, from)) = open.take() {
                        let to = if worker == running {
                            envelope.time.min(killed_at)
                        } else {
                            envelope.time
                        };
                        ran.push(Ran {
                            execution: id.clone(),
                            worker,
                            class: class.clone(),
                            workspace: workspace.clone(),
                            from,
                            to,
                        });
                    }
                }
                _ => {}
            }
        }
        if let Some((worker, _)) = open {
            bail!("{id} has an attempt on {worker} that never ended in the log");
        }
    }
    ensure!(
        !ran.iter().any(|r| r.worker == "o1"),
        "pool other's agent ran tf work"
    );
    let mut most_plans = 0;
    for r in &ran {
        let same_agent: Vec<&Ran> = ran
            .iter()
            .filter(|o| o.worker == r.worker && o.execution != r.execution && overlap(r, o))
            .collect();
        if r.class == "apply" {
            ensure!(
                same_agent.is_empty(),
                "apply {} on {} ran beside {:?}",
                r.execution,
                r.worker,
                same_agent.iter().map(|o| &o.execution).collect::<Vec<_>>()
            );
            let twin = ran.iter().find(|o| {
                o.class == "apply"
                    && o.execution != r.execution
                    && o.workspace == r.workspace
                    && overlap(r, o)
            });
            ensure!(
                twin.is_none(),
                "two applies of {:?} at once: {r:?} and {twin:?}",
                r.workspace
            );
        } else {
            // Plans running on this agent at the moment this one started.
            let plans = ran
                .iter()
                .filter(|o| {
                    o.worker == r.worker && o.class == "plan" && o.from <= r.from && r.from < o.to
                })
                .count();
            ensure!(
                plans <= 3,
                "{plans} plans at once on {} when {} started",
                r.worker,
                r.execution
            );
            most_plans = most_plans.max(plans);
        }
    }
    let long_runs: Vec<&Ran> = ran.iter().filter(|r| r.execution == long).collect();
    ensure!(
        long_runs.len() >= 2
            && long_runs[0].worker == running
            && long_runs.last().map(|r| r.worker.as_str()) == Some(survivor),
        "the long apply ran on {:?}",
        long_runs.iter().map(|r| &r.worker).collect::<Vec<_>>()
    );
    let per_agent: BTreeMap<&str, usize> = ran.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.worker.as_str()).or_default() += 1;
        m
    });
    // The pool ran plans in parallel up to the limit, not one by one.
    ensure!(
        most_plans == 3,
        "at most {most_plans} plans ran at once on an agent"
    );
    println!(
        "{} attempts by agent: {per_agent:?}; the long apply: {} attempts",
        ran.len(),
        long_runs.len()
    );

    drop(agents);
    shutdown.cancel();
    engine.wait().await;
    Ok(())
}
