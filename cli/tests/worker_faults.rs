//! Faults with real processes: a worker killed with SIGKILL while it runs
//! fifty tasks, whose work another worker finishes exactly once each; and a
//! cancelled shell task whose whole process group, grandchildren included,
//! is gone within its kill grace.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use runlog_engine::{Engine, EngineConfig};
use runlog_events::journal::{History, Journal};
use runlog_events::{Event, ExecutionId, Priority, QueueName, Status, Subjects};
use runlog_testkit::{NatsServer, eventually};
use runlog_worker::runtime::{Worker, WorkerConfig};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

async fn start_engine(nats: &str, shutdown: &CancellationToken) -> Result<Engine> {
    Ok(Engine::start(EngineConfig::local(nats), shutdown.clone()).await?)
}

async fn submit(http: &reqwest::Client, engine: &Engine, spec: &Value) -> Result<ExecutionId> {
    let reply: Value = http
        .post(format!("http://{}/v1/executions", engine.addr()))
        .json(spec)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(ExecutionId::new(reply["id"].as_str().unwrap_or_default())?)
}

/// A process as `/proc/<pid>/stat` shows it.
#[derive(Debug)]
struct Proc {
    pid: i32,
    state: char,
    ppid: i32,
    pgrp: i32,
}

fn processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses; fields follow the last ')'.
        let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        let pgrp = fields.next()?.parse().ok()?;
        Some(Proc {
            pid,
            state,
            ppid,
            pgrp,
        })
    })
    .collect()
}

/// The members of process group `pgid` that have not exited. Grandchildren
/// orphaned by their shell linger as zombies (state `Z`, parent 1) until
/// PID 1 reaps them, which a container's init does late (about a second
/// here) or never, and `kill(-pgid, 0)` finds them meanwhile.
fn live_members(pgid: i32) -> Vec<Proc> {
    processes()
        .into_iter()
        .filter(|p| p.pgrp == pgid && p.state != 'Z')
        .collect()
}

/// What `kill(-pgid, 0)` says, through kill(1): `true` for ESRCH.
fn group_absent(pgid: i32) -> bool {
    !Command::new("kill")
        .args(["-0", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn kill_group(pgid: i32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// The process groups of tasks started with `VAR=value` in their
/// environment, killed on drop: a worker killed with SIGKILL leaves its
/// tasks running, each the leader of its own group.
struct TaskGroups {
    needle: Vec<u8>,
}

impl TaskGroups {
    fn tagged(var: &str, value: &Path) -> Self {
        TaskGroups {
            needle: format!("{var}={}", value.display()).into_bytes(),
        }
    }

    fn live(&self) -> BTreeSet<i32> {
        processes()
            .into_iter()
            .filter(|p| p.state != 'Z')
            .filter(|p| {
                std::fs::read(format!("/proc/{}/environ", p.pid))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == self.needle))
            })
            .map(|p| p.pgrp)
            .collect()
    }

    fn kill_all(&self) -> usize {
        let groups = self.live();
        for pgid in &groups {
            kill_group(*pgid);
        }
        groups.len()
    }
}

impl Drop for TaskGroups {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A `runlog worker` process, killed on drop.
struct WorkerProcess(Child);

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn terminal(event: &Event) -> bool {
    matches!(
        event,
        Event::Succeeded(_)
            | Event::Failed(_)
            | Event::Cancelled(_)
            | Event::TimedOut(_)
            | Event::DeadLettered(_)
            | Event::Rejected(_)
    )
}

/// Started on `first`, lost, started again on `second`, succeeded once; and
/// never two `started` without an `attempt_lost` between them.
fn check_handover(id: &ExecutionId, h: &History, first: &str, second: &str) -> Result<()> {
    ensure!(
        h.state.status == Status::Succeeded,
        "{id} ended {:?}",
        h.state.status
    );
    let mut starts = Vec::new();
    let mut lost = Vec::new();
    let mut ends = 0;
    let mut holder: Option<&str> = None;
    for recorded in &h.events {
        let env = &recorded.envelope;
        match &env.event {
            Event::Started(s) => {
                ensure!(
                    holder.is_none(),
                    "{id}: started on {} at seq {} while {holder:?} still holds it",
                    s.worker,
                    recorded.seq
                );
                holder = Some(&s.worker);
                starts.push((env.attempt, s.worker.as_str()));
            }
            Event::AttemptLost(l) => {
                ensure!(
                    holder == Some(l.worker.as_str()),
                    "{id}: lost by {} held by {holder:?}",
                    l.worker
                );
                holder = None;
                lost.push(l.worker.as_str());
            }
            event if terminal(event) => {
                holder = None;
                ends += 1;
            }
            _ => {}
        }
    }
    ensure!(lost == [first], "{id}: attempt_lost {lost:?}");
    ensure!(ends == 1, "{id}: {ends} terminal events");
    ensure!(
        starts == [(1, first), (2, second)],
        "{id}: started {starts:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_fifty_tasks_are_finished_by_another() -> Result<()> {
    const TASKS: usize = 50;
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("marker");
    let groups = TaskGroups::tagged("MARKER", &marker);
    let server = NatsServer::start()?;
    let shutdown = CancellationToken::new();
    let engine = start_engine(&server.url(), &shutdown).await?;
    let client = async_nats::connect(server.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    let journal = Journal::new(js.clone(), Subjects::default(), "/test/worker-faults");
    let http = reqwest::Client::new();

    // The first worker creates the dispatch consumers, with its short ack_wait.
    let ack_wait = Duration::from_secs(2);
    let mut doomed = WorkerProcess(
        Command::new(env!("CARGO_BIN_EXE_runlog"))
            .args([
                "worker",
                "--allow-root",
                "--nats-url",
                &server.url(),
                "--id",
                "doomed",
            ])
            .args(["--concurrency", "50", "--ack-wait", "2s"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let subjects = Subjects::default();
    eventually(
        Duration::from_secs(20),
        "the worker creates its consumers",
        || async {
            let stream = js.get_stream(subjects.exec_stream()).await?;
            for priority in Priority::ALL {
                let name = subjects.dispatch_consumer(&QueueName::default(), priority);
                let consumer = stream
                    .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
                if consumer.cached_info().config.ack_wait != ack_wait {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await?;

    // Each task waits for the marker; runs that begin after it exists end at once.
    let spec = json!({
        "kind": "shell",
        "input": {
            "shell": "test -e \"$MARKER\" || exec sleep 600",
            "env": {"MARKER": marker},
        },
        "retry": {"max_attempts": 3},
    });
    let ids: Vec<ExecutionId> = futures::stream::iter(0..TASKS)
        .map(|_| submit(&http, &engine, &spec))
        .buffer_unordered(10)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;

    let load_all = || async {
        futures::stream::iter(&ids)
            .map(|id| journal.load(id))
            .buffered(10)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .ok()
    };
    eventually(
        Duration::from_secs(30),
        "all fifty run on the first worker",
        || async {
            let all = load_all().await.context("a history did not load")?;
            let running = all.iter().all(|h| {
                h.state.status == Status::Running && h.state.worker.as_deref() == Some("doomed")
            });
            Ok((running && groups.live().len() == TASKS).then_some(()))
        },
    )
    .await?;

    let killed = Instant::now();
    let killed_at = Utc::now();
    doomed.0.kill()?;
    doomed.0.wait()?;
    std::fs::write(&marker, b"")?;
    let orphans = groups.live().len();
    ensure!(
        orphans == TASKS,
        "{orphans} task groups outlive their worker, not {TASKS}"
    );

    let rescuer = Worker::new(
        client.clone(),
        WorkerConfig {
            nats_url: server.url(),
            id: "rescuer".into(),
            concurrency: 50.try_into()?,
            ..WorkerConfig::default()
        },
        runlog_worker::executor::builtin(),
    );
    let rescuer = tokio::spawn(rescuer.run(shutdown.clone()));

    let histories = eventually(
        Duration::from_secs(40),
        "the second worker finishes all fifty",
        || async {
            let all = load_all().await.context("a history did not load")?;
            Ok(all
                .iter()
                .all(|h| h.state.status.is_terminal())
                .then_some(all))
        },
    )
    .await?;
    let recovered = killed.elapsed();
    for (id, h) in ids.iter().zip(&histories) {
        check_handover(id, h, "doomed", "rescuer")?;
    }

    // Figures from the log's own clocks.
    let time_of = |h: &History, pick: fn(&Event) -> bool| -> Option<DateTime<Utc>> {
        h.events
            .iter()
            .find(|r| pick(&r.envelope.event))
            .map(|r| r.envelope.time)
    };
    let mut lost_after = Vec::new();
    let mut done_after = Vec::new();
    for h in &histories {
        let lost = time_of(h, |e| matches!(e, Event::AttemptLost(_))).context("lost")?;
        let done = time_of(h, |e| matches!(e, Event::Succeeded(_))).context("succeeded")?;
        lost_after.push((lost - killed_at).num_milliseconds());
        done_after.push((done - killed_at).num_milliseconds());
    }
    lost_after.sort();
    done_after.sort();
    println!(
        "kill -9 of a worker running {TASKS} tasks (ack_wait {ack_wait:?}): \
         attempt_lost recorded {}..{} ms after the kill (median {} ms), \
         all {TASKS} succeeded on the second worker {} ms after it \
         (first {} ms); {recovered:.2?} of wall time to recover",
        lost_after[0],
        lost_after[TASKS - 1],
        lost_after[TASKS / 2],
        done_after[TASKS - 1],
        done_after[0],
    );

    // The killed worker's tasks still run, each in its own group: end them.
    let left = groups.kill_all();
    eventually(
        Duration::from_secs(10),
        "the orphaned task groups die",
        || async { Ok(groups.live().is_empty().then_some(())) },
    )
    .await?;
    println!("{left} orphaned task groups of the killed worker were still running; killed");

    shutdown.cancel();
    rescuer.await??;
    engine.wait().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_shell_task_kills_its_grandchildren_and_ends_cancelled() -> Result<()> {
    const GRACE: Duration = Duration::from_millis(2000);
    let server = NatsServer::start()?;
    let shutdown = CancellationToken::new();
    let engine = start_engine(&server.url(), &shutdown).await?;
    let client = async_nats::connect(server.url()).await?;
    let worker = Worker::new(
        client.clone(),
        WorkerConfig {
            nats_url: server.url(),
            id: "cancel-worker".into(),
            ..WorkerConfig::default()
        },
        runlog_worker::executor::builtin(),
    );
    let worker = tokio::spawn(worker.run(shutdown.clone()));
    let http = reqwest::Client::new();
    let base = format!("http://{}", engine.addr());

    let id = submit(
        &http,
        &engine,
        &json!({
            "kind": "shell",
            "input": {
                "shell": "echo $$; sleep 600 & sleep 600; wait",
                "kill_grace_ms": GRACE.as_millis() as u64,
            },
        }),
    )
    .await?;
    // The script's pid is its group's id: it leads the group.
    let pgid: i32 = eventually(
        Duration::from_secs(20),
        "the task prints its pid",
        || async {
            let logs: Value = http
                .get(format!("{base}/v1/executions/{id}/logs"))
                .send()
                .await?
                .json()
                .await?;
            let first = logs["lines"][0]["line"].as_str().context("no line yet")?;
            Ok(Some(first.trim().parse()?))
        },
    )
    .await?;
    let group = TaskGroup(pgid);
    let members = eventually(
        Duration::from_secs(10),
        "the script and both sleeps run",
        || async {
            let members = live_members(pgid);
            Ok((members.len() == 3).then_some(members))
        },
    )
    .await?;
    ensure!(
        members.iter().any(|p| p.pid == pgid),
        "{pgid} leads its group: {members:?}"
    );
    let view: Value = http
        .get(format!("{base}/v1/executions/{id}"))
        .send()
        .await?
        .json()
        .await?;
    ensure!(view["status"] == "running", "{view}");

    let cancelled = Instant::now();
    let reply = http
        .post(format!("{base}/v1/executions/{id}/cancel"))
        .json(&json!({"reason": "test"}))
        .send()
        .await?;
    ensure!(reply.status().is_success(), "cancel: {}", reply.status());

    eventually(GRACE, "the process group dies", || async {
        Ok(live_members(pgid).is_empty().then_some(()))
    })
    .await
    .with_context(|| format!("still alive: {:?}", live_members(pgid)))?;
    let exited_after = cancelled.elapsed();
    // kill(-pgid, 0) finds the group until its last zombie is reaped: by the
    // task's shell, or by PID 1 for grandchildren orphaned first. Some
    // container inits reap late or never; then only such zombies may remain.
    let esrch_after = eventually(
        GRACE.saturating_sub(exited_after),
        "kill(-pgid, 0) reports ESRCH",
        || async { Ok(group_absent(pgid).then(|| cancelled.elapsed())) },
    )
    .await
    .ok();
    if esrch_after.is_none() {
        let leftovers: Vec<Proc> = processes().into_iter().filter(|p| p.pgrp == pgid).collect();
        ensure!(
            leftovers.iter().all(|p| p.state == 'Z' && p.ppid == 1),
            "only zombies PID 1 has not reaped yet may remain: {leftovers:?}"
        );
    }
    let view: Value = eventually(Duration::from_secs(10), "the execution ends", || async {
        let view: Value = http
            .get(format!("{base}/v1/executions/{id}"))
            .send()
            .await?
            .json()
            .await?;
        let status = view["status"].as_str().context("no status")?;
        Ok((!matches!(status, "queued" | "running")).then_some(view))
    })
    .await?;
    ensure!(view["status"] == "cancelled", "ended {}", view["status"]);
    let attempts = view["attempts"].as_array().context("attempts")?;
    ensure!(
        attempts.len() == 1 && attempts[0]["outcome"] == "cancelled",
        "{attempts:?}"
    );
    println!(
        "process group {pgid}: every member exited {exited_after:.2?} after the cancel \
         (kill grace {GRACE:?}); kill(-pgid, 0) {}",
        match esrch_after {
            Some(t) => format!("reports ESRCH after {t:.2?}"),
            None => "still finds zombies that PID 1 has not reaped".to_owned(),
        }
    );
    drop(group);

    shutdown.cancel();
    worker.await??;
    engine.wait().await;
    Ok(())
}

/// A process group killed on drop, so a failing test leaves no sleeps behind.
struct TaskGroup(i32);

impl Drop for TaskGroup {
    fn drop(&mut self) {
        if !live_members(self.0).is_empty() {
            kill_group(self.0);
        }
    }
}
