//! What the fault tests share: `runlog engine` and `runlog worker` child
//! processes that can be killed with SIGKILL, a steady feeder of
//! submissions, and the ledger that folds the execution log to count what
//! was lost or completed twice.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use runlog_events::codec::{self, Limits};
use runlog_events::decider::{self, ExecutionState};
use runlog_events::event::TimeoutScope;
use runlog_events::{Envelope, Event, ExecutionId, Status, Subjects, direct};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// `RUNLOG_FAULTS_LONG=1` runs the long version.
pub fn long() -> bool {
    std::env::var("RUNLOG_FAULTS_LONG").is_ok_and(|v| v == "1")
}

/// The size of a load test's run.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Executions submitted.
    pub tasks: usize,
    /// Submissions per second.
    pub rate: f64,
    /// How long each task's shell sleeps.
    pub sleep: Duration,
    /// Worker processes.
    pub workers: usize,
    /// Slots per worker.
    pub concurrency: usize,
    /// How long everything may take to settle after the last submission.
    pub settle: Duration,
}

impl Load {
    /// The short version by default, the long one with `RUNLOG_FAULTS_LONG=1`.
    pub fn pick(short_tasks: usize, workers: usize) -> Load {
        if long() {
            Load {
                tasks: 5_000,
                rate: 60.0,
                sleep: Duration::from_millis(200),
                workers,
                concurrency: 12,
                settle: Duration::from_secs(240),
            }
        } else {
            Load {
                tasks: short_tasks,
                rate: 30.0,
                sleep: Duration::from_millis(300),
                workers,
                concurrency: 6,
                settle: Duration::from_secs(90),
            }
        }
    }

    /// How long the feeder takes.
    pub fn feeding(&self) -> Duration {
        Duration::from_secs_f64(self.tasks as f64 / self.rate)
    }
}

/// Fault tests run one at a time even under the default parallel test
/// runner: they share two cores, and their figures mean nothing otherwise.
/// (An async mutex: held across the whole test, it works across the tests'
/// runtimes.)
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// A child process's stderr, appended to a file in the test's folder.
fn log_file(path: &Path) -> Result<Stdio> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    Ok(Stdio::from(file))
}

/// The last `lines` lines of a log, for a failure message.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A `runlog engine` process, killed on drop.
pub struct EngineProcess {
    child: Option<Child>,
    args: Vec<String>,
    log: PathBuf,
    /// `http://127.0.0.1:PORT` of the running process (a restart picks a
    /// new port).
    pub base: String,
}

impl EngineProcess {
    /// Starts `runlog engine` on `urls` and returns once its API listens.
    pub fn start(urls: &[String], replicas: usize, dir: &Path) -> Result<EngineProcess> {
        let args = [
            "engine",
            "--nats-url",
            &urls.join(","),
            "--listen",
            "127.0.0.1:0",
            "--replicas",
            &replicas.to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        let mut engine = EngineProcess {
            child: None,
            args,
            log: dir.join("engine.log"),
            base: String::new(),
        };
        engine.spawn()?;
        Ok(engine)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_runlog"))
            .args(&self.args)
            .env("RUNLOG_LOG", "warn")
            // Two silent seconds with the worker alive show a task as stuck.
            .env("RUNLOG_STUCK_AFTER", "2s")
            .stdout(Stdio::piped())
            .stderr(log_file(&self.log)?)
            .spawn()?;
        let stdout = child.stdout.take().context("engine stdout")?;
        self.child = Some(child);
        // The first line names the API's address once everything runs.
        let mut line = String::new();
        tokio::task::block_in_place(|| BufReader::new(stdout).read_line(&mut line))?;
        self.base = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://"))
            .with_context(|| {
                format!(
                    "the engine did not start: first line {line:?}\n{}",
                    tail(&self.log, 20)
                )
            })?
            .to_owned();
        Ok(())
    }

    /// SIGKILL, and wait for the process to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (a kill first if it runs).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// Whether the process runs (it never exited on its own).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The process's stderr.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `runlog worker` processes in numbered slots, killed on drop.
pub struct WorkerProcesses {
    urls: Vec<String>,
    replicas: usize,
    concurrency: usize,
    extra: Vec<String>,
    dir: PathBuf,
    slots: Vec<Option<Child>>,
    generation: u32,
}

impl WorkerProcesses {
    /// Starts `n` workers with `concurrency` slots each, a 2 s `ack_wait`
    /// (so killed workers' items return fast) and 1 s heartbeats.
    pub fn start(
        n: usize,
        concurrency: usize,
        urls: &[String],
        replicas: usize,
        dir: &Path,
    ) -> Result<WorkerProcesses> {
        Self::start_with(n, concurrency, urls, replicas, dir, &[])
    }

    /// As [`start`](Self::start), with extra `runlog worker` flags.
    pub fn start_with(
        n: usize,
        concurrency: usize,
        urls: &[String],
        replicas: usize,
        dir: &Path,
        extra: &[&str],
    ) -> Result<WorkerProcesses> {
        let mut workers = WorkerProcesses {
            urls: urls.to_vec(),
            replicas,
            concurrency,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            dir: dir.to_owned(),
            slots: (0..n).map(|_| None).collect(),
            generation: 0,
        };
        for slot in 0..n {
            workers.spawn(slot)?;
        }
        Ok(workers)
    }

    fn spawn(&mut self, slot: usize) -> Result<()> {
        self.generation += 1;
        let id = format!("w{slot}-g{}", self.generation);
        let child = Command::new(env!("CARGO_BIN_EXE_runlog"))
            .args([
                "worker",
                "--allow-root",
                "--nats-url",
                &self.urls.join(","),
                "--id",
                &id,
            ])
            .args(["--replicas", &self.replicas.to_string()])
            .args(["--concurrency", &self.concurrency.to_string()])
            .args(["--ack-wait", "2s", "--heartbeat", "1s"])
            .args(&self.extra)
            .env("RUNLOG_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir.join(format!("worker-{slot}.log")))?)
            .spawn()?;
        self.slots[slot] = Some(child);
        Ok(())
    }

    /// SIGKILL the worker in `slot` and wait for it to exit.
    pub fn kill(&mut self, slot: usize) {
        if let Some(mut child) = self.slots[slot].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill the worker in `slot` and start a new one (a new worker id).
    pub fn restart(&mut self, slot: usize) -> Result<()> {
        self.kill(slot);
        self.spawn(slot)
    }

    /// Slots whose process exited on its own (none should).
    pub fn exited(&mut self) -> Vec<usize> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(slot, c)| {
                let running = c.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
                (!running).then_some(slot)
            })
            .collect()
    }

    /// Why the workers that exited on their own did: exit status and the
    /// end of their log.
    pub fn exit_report(&mut self) -> String {
        let mut report = String::new();
        for (slot, child) in self.slots.iter_mut().enumerate() {
            let status = match child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => status.to_string(),
                Some(Err(e)) => e.to_string(),
                None => "no process".to_owned(),
                Some(Ok(None)) => continue,
            };
            let log = self.dir.join(format!("worker-{slot}.log"));
            report.push_str(&format!(
                "\nworker {slot} exited ({status}):\n{}",
                tail(&log, 25)
            ));
        }
        report
    }

    /// Workers started so far, restarts included.
    pub fn started(&self) -> u32 {
        self.generation
    }
}

impl Drop for WorkerProcesses {
    fn drop(&mut self) {
        for slot in 0..self.slots.len() {
            self.kill(slot);
        }
    }
}

/// The spec of a load task: a shell sleep, retried generously (a lost
/// attempt is not a failure, but a slow machine may time some out).
pub fn task(sleep: Duration) -> Value {
    json!({
        "kind": "shell",
        "input": {"shell": format!("sleep {:.3}", sleep.as_secs_f64())},
        "retry": {"max_attempts": 5, "backoff_base_ms": 200, "backoff_max_ms": 1000},
    })
}

/// Submits `load.tasks` executions with ids `<run>-<n>` through the NATS
/// door at `load.rate` per second. Each submission is retried with the
/// same id until it is accepted, so an engine or server outage delays it
/// and never duplicates it. Returns the ids when every one was accepted.
pub async fn feed(client: async_nats::Client, run: &str, load: Load) -> Result<Vec<ExecutionId>> {
    let period = Duration::from_secs_f64(1.0 / load.rate);
    let mut tick = tokio::time::interval(period);
    let mut submissions = JoinSet::new();
    let mut ids = Vec::with_capacity(load.tasks);
    for n in 0..load.tasks {
        tick.tick().await;
        let id = ExecutionId::new(format!("{run}-{n}"))?;
        ids.push(id.clone());
        let mut body = task(load.sleep);
        body["id"] = json!(id);
        let client = client.clone();
        submissions.spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let reply = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.request("runlog.submit.default", body.to_string().into()),
                )
                .await;
                if let Ok(Ok(reply)) = reply {
                    let reply: Value = serde_json::from_slice(&reply.payload)?;
                    if reply["id"] == json!(id) {
                        return Ok(());
                    }
                    if reply["error"]["code"] != json!("unavailable") {
                        bail!("{id} refused: {reply}");
                    }
                }
                if Instant::now() > deadline {
                    bail!("{id} was not accepted within 120 s");
                }
                // Retry pacing while the engine or the server is down.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    while let Some(done) = submissions.join_next().await {
        done??;
    }
    Ok(ids)
}

/// One execution as the log tells it.
#[derive(Debug, Default)]
pub struct Told {
    /// Folded by the core's `evolve`.
    pub state: ExecutionState,
    /// When it was recorded (`submitted`, or a first `queued`).
    pub submitted: Option<DateTime<Utc>>,
    /// Terminal events stored (whether or not the fold accepted them).
    pub terminal: u32,
    /// `succeeded` events stored.
    pub succeeded: u32,
    /// `started` events stored.
    pub started: u32,
    /// `attempt_lost` events stored.
    pub lost_attempts: u32,
    /// When its first terminal event was recorded.
    pub ended: Option<DateTime<Utc>>,
}

/// The execution log folded by the test itself, read with batched direct
/// gets from `RUNLOG_EXEC` (no engine involved), incrementally.
#[derive(Debug, Default)]
pub struct Ledger {
    next: u64,
    /// Every execution seen.
    pub executions: HashMap<ExecutionId, Told>,
    /// Stored messages that did not decode.
    pub undecodable: u64,
    /// Decoded events the fold refused.
    pub refused: u64,
}

/// The figures every load test ends with.
#[derive(Debug)]
pub struct Verdict {
    /// Executions submitted.
    pub executions: usize,
    /// Not terminal by the deadline.
    pub lost: Vec<ExecutionId>,
    /// More than one terminal event, or more than one `succeeded`.
    pub twice: Vec<ExecutionId>,
    /// Final states.
    pub by_status: BTreeMap<String, usize>,
    /// `attempt_lost` events (attempts of killed workers taken over).
    pub attempts_lost: u32,
    /// `started` events beyond one per execution.
    pub extra_starts: u32,
    /// The executions judged.
    pub ids: Vec<ExecutionId>,
}

impl Ledger {
    /// Reads and folds everything stored since the last call.
    pub async fn catch_up(&mut self, client: &async_nats::Client) -> Result<()> {
        let subjects = Subjects::default();
        let mut stored = Vec::new();
        direct::read(
            client,
            &subjects.exec_stream(),
            &subjects.all_events(),
            self.next,
            usize::MAX,
            |m| stored.push(m),
        )
        .await?;
        let limits = Limits::default();
        for m in stored {
            self.next = m.seq + 1;
            match codec::decode(&m.headers, &m.payload, &limits) {
                Ok(envelope) => self.fold(&envelope),
                Err(_) => self.undecodable += 1,
            }
        }
        Ok(())
    }

    fn fold(&mut self, envelope: &Envelope) {
        let told = self
            .executions
            .entry(envelope.execution.clone())
            .or_default();
        match &envelope.event {
            // Recorded: `submitted`, or the `queued` with the spec that an
            // engine door writes instead.
            Event::Submitted(_) => told.submitted = Some(envelope.time),
            Event::Queued(q) if q.spec.is_some() => told.submitted = Some(envelope.time),
            Event::Started(_) => told.started += 1,
            Event::AttemptLost(_) => told.lost_attempts += 1,
            Event::Succeeded(_) => told.succeeded += 1,
            _ => {}
        }
        if is_terminal(&envelope.event) {
            told.terminal += 1;
            told.ended.get_or_insert(envelope.time);
        }
        if decider::apply(&mut told.state, envelope).is_err() {
            self.refused += 1;
        }
    }

    /// Folds every 100 ms until `check` yields a value or `limit` passes.
    pub async fn until<T>(
        &mut self,
        client: &async_nats::Client,
        what: &str,
        limit: Duration,
        check: impl Fn(&Ledger) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + limit;
        loop {
            // A failed read (the server restarting) is tried again.
            if self.catch_up(client).await.is_ok()
                && let Some(v) = check(self)
            {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("{what}: not within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many of `ids` have ended.
    pub fn ended(&self, ids: &[ExecutionId]) -> usize {
        ids.iter()
            .filter(|id| {
                self.executions
                    .get(*id)
                    .is_some_and(|t| t.state.status.is_terminal())
            })
            .count()
    }

    /// Folds until every one of `ids` ended or `limit` passes; the verdict
    /// either way.
    pub async fn settle(
        &mut self,
        client: &async_nats::Client,
        ids: &[ExecutionId],
        limit: Duration,
    ) -> Result<Verdict> {
        let deadline = Instant::now() + limit;
        loop {
            self.catch_up(client).await?;
            if self.ended(ids) == ids.len() || Instant::now() > deadline {
                return Ok(self.verdict(ids));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The verdict on `ids` as of now.
    pub fn verdict(&self, ids: &[ExecutionId]) -> Verdict {
        let none = Told::default();
        let mut verdict = Verdict {
            executions: ids.len(),
            lost: Vec::new(),
            twice: Vec::new(),
            by_status: BTreeMap::new(),
            attempts_lost: 0,
            extra_starts: 0,
            ids: ids.to_vec(),
        };
        for id in ids {
            let told = self.executions.get(id).unwrap_or(&none);
            if !told.state.status.is_terminal() {
                verdict.lost.push(id.clone());
            }
            if told.terminal > 1 || told.succeeded > 1 {
                verdict.twice.push(id.clone());
            }
            *verdict
                .by_status
                .entry(told.state.status.as_str().to_owned())
                .or_default() += 1;
            verdict.attempts_lost += told.lost_attempts;
            verdict.extra_starts += told.started.saturating_sub(1);
        }
        verdict
    }

    /// Of the executions submitted after `t`, the first to end: when.
    pub fn first_end_submitted_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.executions
            .values()
            .filter(|told| told.submitted.is_some_and(|s| s > t))
            .filter_map(|told| told.ended)
            .min()
    }

    /// Of the executions submitted after `t`, the first to end: when it was
    /// submitted, started and ended, counted from `t`.
    pub fn first_after(&self, t: DateTime<Utc>) -> String {
        let first = self
            .executions
            .values()
            .filter(|told| told.submitted.is_some_and(|s| s > t))
            .filter(|told| told.ended.is_some())
            .min_by_key(|told| told.ended);
        let at = |time: Option<DateTime<Utc>>| time.map_or("-".to_owned(), |time| secs(time - t));
        match first {
            Some(told) => format!(
                "submitted +{}, started +{}, ended +{}",
                at(told.submitted),
                at(told.state.started_at),
                at(told.ended)
            ),
            None => "none".to_owned(),
        }
    }

    /// The longest time between two consecutive ends in `[from, to]`.
    pub fn longest_stall(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
        let mut ends: Vec<DateTime<Utc>> = self
            .executions
            .values()
            .filter_map(|t| t.ended)
            .filter(|t| *t >= from && *t <= to)
            .collect();
        ends.sort();
        ends.windows(2)
            .map(|w| (w[1] - w[0]).to_std().unwrap_or_default())
            .max()
            .unwrap_or_default()
    }
}

/// Whether an event ends its execution (a failed or timed-out attempt
/// does not: a retry or a dead letter follows).
pub fn is_terminal(event: &Event) -> bool {
    match event {
        Event::TimedOut(t) => t.scope == TimeoutScope::Execution,
        event => matches!(
            event,
            Event::Succeeded(_) | Event::Cancelled(_) | Event::DeadLettered(_) | Event::Rejected(_)
        ),
    }
}

impl Verdict {
    /// Prints the figures and checks 0 lost and 0 completed twice.
    pub fn report(&self, test: &str, ledger: &Ledger, extra: &str) -> Result<()> {
        let slowest = self
            .ids
            .iter()
            .filter_map(|id| ledger.executions.get(id))
            .filter_map(|t| Some(t.ended? - t.submitted?))
            .max()
            .unwrap_or_default();
        println!(
            "[{test}] executions {}, lost {}, completed twice {}, final states {:?}, \
             attempts lost (taken over) {}, extra starts {}, slowest submitted→ended {}; {extra}",
            self.executions,
            self.lost.len(),
            self.twice.len(),
            self.by_status,
            self.attempts_lost,
            self.extra_starts,
            secs(slowest),
        );
        let sample = |ids: &[ExecutionId]| -> Vec<String> {
            ids.iter()
                .take(5)
                .map(|id| {
                    let told = &ledger.executions.get(id);
                    format!(
                        "{id}: {:?} (terminal events {}, succeeded {})",
                        told.map(|t| t.state.status).unwrap_or(Status::New),
                        told.map_or(0, |t| t.terminal),
                        told.map_or(0, |t| t.succeeded),
                    )
                })
                .collect()
        };
        if !self.lost.is_empty() {
            bail!(
                "[{test}] {} executions lost (not terminal by the deadline), e.g. {:?}",
                self.lost.len(),
                sample(&self.lost)
            );
        }
        if !self.twice.is_empty() {
            bail!(
                "[{test}] {} executions completed twice, e.g. {:?}",
                self.twice.len(),
                sample(&self.twice)
            );
        }
        Ok(())
    }
}

/// `d` in seconds with two decimals, for figures.
pub fn secs(d: chrono::TimeDelta) -> String {
    format!("{:.2} s", d.num_milliseconds() as f64 / 1000.0)
}
