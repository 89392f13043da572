//! Schedules end to end: real `runlog engine` and `runlog worker` processes
//! on a real nats-server, engines killed with SIGKILL between ticks. What
//! ran is read back from the schedule's runs and from each run's own log.
//!
//! Waiting for ticks is waiting for the clock: each wait is on a condition
//! (so many runs recorded) with a deadline, and the only fixed spans are the
//! faults themselves (an engine kept down for ten ticks).

#[path = "faults/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chrono::{DateTime, TimeDelta, Utc};
use harness::{EngineProcess, WorkerProcesses};
use runlog_events::journal::Journal;
use runlog_events::{Event, ExecutionId, Subjects};
use runlog_testkit::{NatsServer, eventually};
use serde_json::{Value, json};

struct Stack {
    server: NatsServer,
    engines: Vec<EngineProcess>,
    _workers: WorkerProcesses,
    http: reqwest::Client,
    _dir: Dir,
}

/// A temporary directory, removed on drop.
struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Stack {
    fn start(name: &str, engines: usize) -> Result<Stack> {
        let dir =
            Dir(std::env::temp_dir().join(format!("runlog-{name}-{}", ExecutionId::generate())));
        std::fs::create_dir_all(&dir.0)?;
        let server = NatsServer::start()?;
        let urls = [server.url()];
        let engines = (0..engines)
            .map(|_| EngineProcess::start(&urls, 1, &dir.0))
            .collect::<Result<Vec<_>>>()?;
        let workers = WorkerProcesses::start(1, 32, &urls, 1, &dir.0)?;
        Ok(Stack {
            server,
            engines,
            _workers: workers,
            http: reqwest::Client::new(),
            _dir: dir,
        })
    }

    fn base(&self) -> &str {
        &self.engines[0].base
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.base());
        let request = match method {
            "POST" => self.http.post(url),
            "PUT" => self.http.put(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.get(url),
        };
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    async fn create(&self, body: Value) -> Result<String> {
        let (status, reply) = self.call("POST", "/v1/schedules", Some(body)).await?;
        ensure!(status == 201, "create: {status} {reply}");
        Ok(reply["id"].as_str().context("an id")?.to_owned())
    }

    async fn pause(&self, id: &str) -> Result<()> {
        let (status, reply) = self
            .call("POST", &format!("/v1/schedules/{id}/pause"), None)
            .await?;
        ensure!(status == 200, "pause: {status} {reply}");
        Ok(())
    }

    /// The schedule's runs, oldest first.
    async fn runs(&self, id: &str) -> Result<Vec<Value>> {
        let (status, reply) = self
            .call("GET", &format!("/v1/schedules/{id}/runs?limit=1000"), None)
            .await?;
        ensure!(status == 200, "runs: {status} {reply}");
        let mut runs = reply["runs"].as_array().cloned().unwrap_or_default();
        runs.reverse();
        Ok(runs)
    }

    /// Waits until the schedule has `n` runs, all ended.
    async fn until_runs(&self, id: &str, n: usize, within: Duration) -> Result<Vec<Value>> {
        eventually(within, &format!("{n} ended runs of {id}"), || async {
            let runs = self.runs(id).await?;
            let ended = runs
                .iter()
                .all(|r| !matches!(r["status"].as_str(), Some("pending" | "queued" | "running")));
            Ok((runs.len() >= n && ended).then_some(runs))
        })
        .await
    }

    fn journal(&self, client: &async_nats::Client) -> Journal {
        Journal::new(
            async_nats::jetstream::new(client.clone()),
            Subjects::default(),
            "/test",
        )
    }

    /// Every run ran exactly once: one `succeeded` (or one terminal event)
    /// in its own log.
    async fn each_ran_once(&self, runs: &[Value]) -> Result<()> {
        let client = async_nats::connect(self.server.url()).await?;
        let journal = self.journal(&client);
        for run in runs {
            let execution = ExecutionId::new(run["execution"].as_str().context("execution")?)?;
            let history = journal.load(&execution).await?;
            let succeeded = history
                .events
                .iter()
                .filter(|e| matches!(e.envelope.event, Event::Succeeded(_)))
                .count();
            let started = history
                .events
                .iter()
                .filter(|e| matches!(e.envelope.event, Event::Started(_)))
                .count();
            ensure!(
                succeeded == 1 && started == 1,
                "run {execution} of tick {} started {started} times, succeeded {succeeded} times",
                run["scheduled_for"]
            );
            let spec = history.state.spec.as_ref().context("a spec")?;
            ensure!(
                spec.scheduled_for.map(|t| json!(t)) == Some(run["scheduled_for"].clone()),
                "run {execution} carries scheduled_for {:?}, the schedule says {}",
                spec.scheduled_for,
                run["scheduled_for"]
            );
        }
        Ok(())
    }
}

fn time(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn ticks(runs: &[Value]) -> Vec<DateTime<Utc>> {
    runs.iter().map(|r| time(&r["scheduled_for"])).collect()
}

/// Ticks that appear more than once.
fn twice(runs: &[Value]) -> Vec<DateTime<Utc>> {
    let mut seen = BTreeMap::new();
    for tick in ticks(runs) {
        *seen.entry(tick).or_insert(0) += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(t, _)| t)
        .collect()
}

/// The gaps in a series of ticks `every` apart.
fn gaps(ticks: &[DateTime<Utc>], every: TimeDelta) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut sorted = ticks.to_vec();
    sorted.sort();
    sorted
        .windows(2)
        .filter(|w| w[1] - w[0] != every)
        .map(|w| (w[0], w[1]))
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

const QUICK: &str = "true";

fn task(shell: &str) -> Value {
    json!({"kind": "shell", "input": {"shell": shell}})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_second_cron_in_berlin_runs_every_tick_once_across_an_engine_kill() -> Result<()> {
    let span = if harness::long() {
        Duration::from_secs(600)
    } else {
        Duration::from_secs(20)
    };
    let mut stack = Stack::start("schedule-kill", 1)?;
    let id = stack
        .create(json!({
            "id": "berlin",
            "cron": "*/2 * * * * *",
            "time_zone": "Europe/Berlin",
            "catch_up": "all",
            // A caught-up run may still go when the next tick comes.
            "overlap": "allow_all",
            "task": task(QUICK),
        }))
        .await?;
    let began = Utc::now();
    let half = tokio::time::Instant::now() + span / 2;
    stack.until_runs(&id, 2, Duration::from_secs(10)).await?;
    tokio::time::sleep_until(half).await;
    // kill -9 between ticks, and back 3 s later: one or two ticks come due
    // while no engine runs.
    stack.engines[0].kill();
    let killed = Utc::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.engines[0].restart()?;
    let restarted = Utc::now();
    let expected = (span.as_secs() / 2) as usize - 1;
    stack
        .until_runs(&id, expected, span + Duration::from_secs(30))
        .await?;
    stack.pause(&id).await?;
    let runs = stack.runs(&id).await?;
    let ticks = ticks(&runs);
    ensure!(
        twice(&runs).is_empty(),
        "ticks run twice: {:?}",
        twice(&runs)
    );
    let gaps = gaps(&ticks, TimeDelta::seconds(2));
    ensure!(
        gaps.is_empty(),
        "missing ticks between {gaps:?} (killed {killed}, back {restarted})"
    );
    ensure!(
        ticks.iter().any(|t| *t > killed && *t < restarted),
        "no tick fell into the engine's downtime ({killed} to {restarted}): the kill tested nothing"
    );
    stack.each_ran_once(&runs).await?;
    // Drift: from a tick to its run's start, for the ticks run on time.
    let mut drift: Vec<f64> = runs
        .iter()
        .filter(|r| r["trigger"] == "tick")
        .map(|r| {
            (time(&r["started_at"]) - time(&r["scheduled_for"]))
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1000.0
        })
        .collect();
    drift.sort_by(f64::total_cmp);
    let caught_up = runs.iter().filter(|r| r["trigger"] == "catch_up").count();
    println!(
        "schedule across a kill: {} ticks from {began} in {span:?}, {caught_up} caught up after the \
         restart; tick → start drift p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        runs.len(),
        percentile(&drift, 0.5),
        percentile(&drift, 0.99),
        drift.last().copied().unwrap_or(f64::NAN),
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ticks_missed_while_no_engine_ran_follow_each_catch_up_policy() -> Result<()> {
    let mut stack = Stack::start("schedule-catch-up", 1)?;
    for policy in ["none", "last", "all"] {
        stack
            .create(json!({
                "id": policy,
                "every": "1s",
                "catch_up": policy,
                "overlap": "allow_all",
                "task": task(QUICK),
            }))
            .await?;
    }
    for policy in ["none", "last", "all"] {
        stack.until_runs(policy, 2, Duration::from_secs(10)).await?;
    }
    stack.engines[0].kill();
    let killed = Utc::now();
    // Stopped for ten ticks.
    tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_millis(10_500)).await;
    let back = Utc::now();
    stack.engines[0].restart()?;
    let down = |t: &DateTime<Utc>| *t > killed && *t < back;
    for policy in ["none", "last", "all"] {
        // Two ticks on time after the restart.
        eventually(
            Duration::from_secs(15),
            "ticks after the restart",
            || async {
                let runs = stack.runs(policy).await?;
                let after = runs
                    .iter()
                    .filter(|r| r["trigger"] == "tick" && time(&r["scheduled_for"]) > back)
                    .count();
                Ok((after >= 2).then_some(()))
            },
        )
        .await?;
    }
    for policy in ["none", "last", "all"] {
        stack.pause(policy).await?;
    }
    for policy in ["none", "last", "all"] {
        let runs = stack.runs(policy).await?;
        ensure!(
            twice(&runs).is_empty(),
            "{policy}: ticks run twice: {:?}",
            twice(&runs)
        );
        let caught: Vec<DateTime<Utc>> = runs
            .iter()
            .filter(|r| r["trigger"] == "catch_up")
            .map(|r| time(&r["scheduled_for"]))
            .collect();
        let in_downtime = ticks(&runs).iter().filter(|t| down(t)).count();
        let newest_run_before = ticks(&runs).into_iter().filter(|t| *t <= killed).max();
        let first_on_time_after = runs
            .iter()
            .filter(|r| r["trigger"] == "tick" && time(&r["scheduled_for"]) > killed)
            .map(|r| time(&r["scheduled_for"]))
            .min()
            .context("a tick after the restart")?;
        println!(
            "catch_up {policy}: {} runs in the 10.5 s down, {} caught up ({:?})",
            in_downtime,
            caught.len(),
            caught
        );
        match policy {
            "none" => {
                ensure!(caught.is_empty(), "none: caught up {caught:?}");
                ensure!(in_downtime == 0, "none: {in_downtime} runs of the downtime");
            }
            "last" => {
                ensure!(caught.len() == 1, "last: caught up {caught:?}");
                // The newest missed tick: the one just before the first on time.
                ensure!(
                    caught[0] == first_on_time_after - TimeDelta::seconds(1),
                    "last: caught up {} but the first tick on time was {first_on_time_after}",
                    caught[0]
                );
            }
            _ => {
                ensure!(
                    in_downtime >= 10,
                    "all: only {in_downtime} runs of the downtime"
                );
                let since = newest_run_before.context("a run before the kill")?;
                let series: Vec<DateTime<Utc>> =
                    ticks(&runs).into_iter().filter(|t| *t >= since).collect();
                let gaps = gaps(&series, TimeDelta::seconds(1));
                ensure!(gaps.is_empty(), "all: missing ticks between {gaps:?}");
            }
        }
        stack.each_ran_once(&runs).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_of_an_hour_at_one_minute_runs_sixty_ticks_once() -> Result<()> {
    let stack = Stack::start("schedule-backfill", 1)?;
    let id = stack
        .create(json!({
            "cron": "* * * * *",
            "paused": true,
            "overlap": "allow_all",
            "task": task(QUICK),
        }))
        .await?;
    let range = json!({"from": "2026-11-30T10:00:00Z", "to": "2026-11-30T10:59:59Z"});
    let (status, first) = stack
        .call(
            "POST",
            &format!("/v1/schedules/{id}/backfill"),
            Some(range.clone()),
        )
        .await?;
    ensure!(status == 200, "backfill: {status} {first}");
    let started = first["started"].as_array().context("started")?;
    ensure!(
        started.len() == 60,
        "{} runs started: {first}",
        started.len()
    );
    ensure!(
        started[0]["scheduled_for"] == "2026-11-30T10:00:00Z",
        "{first}"
    );
    ensure!(
        started[59]["scheduled_for"] == "2026-11-30T10:59:00Z",
        "{first}"
    );
    let (status, second) = stack
        .call("POST", &format!("/v1/schedules/{id}/backfill"), Some(range))
        .await?;
    ensure!(status == 200, "second backfill: {status} {second}");
    ensure!(
        second["started"].as_array().is_some_and(Vec::is_empty) && second["existing"] == 60,
        "the second backfill: {second}"
    );
    let runs = stack.until_runs(&id, 60, Duration::from_secs(60)).await?;
    ensure!(runs.len() == 60, "{} runs", runs.len());
    ensure!(runs.iter().all(|r| r["trigger"] == "backfill"));
    stack.each_ran_once(&runs).await?;
    // A range that ends before it starts names the field.
    let (status, reply) = stack
        .call(
            "POST",
            &format!("/v1/schedules/{id}/backfill"),
            Some(json!({"from": "2026-11-30T11:00:00Z", "to": "2026-11-30T10:00:00Z"})),
        )
        .await?;
    ensure!(status == 422 && reply["field"] == "to", "{status} {reply}");
    Ok(())
}

/// Runs of a series (start, end) as read from the runs list.
fn spans(runs: &[Value]) -> Vec<(DateTime<Utc>, DateTime<Utc>, String)> {
    runs.iter()
        .map(|r| {
            (
                time(&r["started_at"]),
                time(&r["finished_at"]),
                r["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn overlapping(spans: &[(DateTime<Utc>, DateTime<Utc>, String)]) -> usize {
    let mut sorted = spans.to_vec();
    sorted.sort();
    sorted.windows(2).filter(|w| w[1].0 < w[0].1).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_overlap_policy_with_runs_longer_than_the_interval() -> Result<()> {
    let stack = Stack::start("schedule-overlap", 1)?;
    for policy in ["skip", "buffer_one", "allow_all", "cancel_previous"] {
        stack
            .create(json!({
                "id": policy,
                "every": "1s",
                "overlap": policy,
                "task": task("sleep 2.5"),
            }))
            .await?;
    }
    // Long enough for three 2.5 s runs one after the other.
    let (status, reply) = stack.call("GET", "/v1/schedules/skip", None).await?;
    ensure!(status == 200, "{reply}");
    eventually(Duration::from_secs(30), "three runs of skip", || async {
        Ok((stack.runs("skip").await?.len() >= 3).then_some(()))
    })
    .await?;
    for policy in ["skip", "buffer_one", "allow_all", "cancel_previous"] {
        stack.pause(policy).await?;
    }
    let mut report = Vec::new();
    for policy in ["skip", "buffer_one", "allow_all", "cancel_previous"] {
        let runs = stack.until_runs(policy, 1, Duration::from_secs(30)).await?;
        let (_, view) = stack
            .call("GET", &format!("/v1/schedules/{policy}"), None)
            .await?;
        let spans = spans(&runs);
        let overlaps = overlapping(&spans);
        let cancelled = spans.iter().filter(|s| s.2 == "cancelled").count();
        let buffered = runs.iter().filter(|r| r["trigger"] == "buffered").count();
        report.push(format!(
            "{policy}: {} runs, {overlaps} overlapping, {cancelled} cancelled, {buffered} buffered, {} skipped",
            runs.len(),
            view["skipped_count"]
        ));
        ensure!(twice(&runs).is_empty(), "{policy}: ticks run twice");
        match policy {
            "skip" => {
                ensure!(overlaps == 0, "skip: {overlaps} runs overlap: {spans:?}");
                ensure!(view["skipped_count"].as_u64() >= Some(2), "skip: {view}");
            }
            "buffer_one" => {
                ensure!(
                    overlaps == 0,
                    "buffer_one: {overlaps} runs overlap: {spans:?}"
                );
                ensure!(buffered >= 1, "buffer_one: no buffered run: {runs:?}");
                ensure!(
                    view["skipped_count"].as_u64() >= Some(1),
                    "buffer_one: {view}"
                );
            }
            "allow_all" => {
                ensure!(
                    overlaps >= 2,
                    "allow_all: only {overlaps} overlaps: {spans:?}"
                );
                ensure!(cancelled == 0, "allow_all cancelled runs");
            }
            _ => {
                ensure!(
                    cancelled >= 2,
                    "cancel_previous: {cancelled} cancelled: {spans:?}"
                );
                // Every run but the newest was cancelled when the next started.
                let alive = spans.iter().filter(|s| s.2 == "succeeded").count();
                ensure!(
                    alive <= 1,
                    "cancel_previous: {alive} runs succeeded: {spans:?}"
                );
            }
        }
    }
    println!("{}", report.join("\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_engines_on_one_server_run_every_tick_once() -> Result<()> {
    let stack = Stack::start("schedule-two-engines", 2)?;
    let id = stack
        .create(json!({"every": "1s", "overlap": "allow_all", "task": task(QUICK)}))
        .await?;
    stack.until_runs(&id, 8, Duration::from_secs(30)).await?;
    stack.pause(&id).await?;
    let runs = stack.until_runs(&id, 8, Duration::from_secs(30)).await?;
    ensure!(
        twice(&runs).is_empty(),
        "ticks run twice: {:?}",
        twice(&runs)
    );
    let gaps = gaps(&ticks(&runs), TimeDelta::seconds(1));
    ensure!(gaps.is_empty(), "missing ticks between {gaps:?}");
    stack.each_ran_once(&runs).await?;
    println!("two engines: {} ticks, each once", runs.len());
    Ok(())
}

/// Runs the `runlog` binary against the stack's first engine: its exit code
/// and what it printed (stdout, then stderr).
fn runlog(stack: &Stack, args: &[&str]) -> Result<(i32, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runlog"))
        .args(args)
        .env("RUNLOG_ENGINE_URL", stack.base())
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.code().unwrap_or(-1), text))
}

/// Runs `runlog` and expects exit code `code`; returns what it printed.
fn expect(stack: &Stack, code: i32, args: &[&str]) -> Result<String> {
    let (got, text) = runlog(stack, args)?;
    ensure!(
        got == code,
        "runlog {args:?} exited {got}, not {code}:\n{text}"
    );
    Ok(text)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_creates_lists_shows_pauses_runs_backfills_and_deletes_a_schedule() -> Result<()> {
    let stack = Stack::start("schedule-cli", 1)?;
    let created = expect(
        &stack,
        0,
        &[
            "schedule",
            "create",
            "ticker",
            "shell",
            "--every",
            "1s",
            "--overlap",
            "skip",
            "-l",
            "team=ops",
            "--",
            "true",
        ],
    )?;
    ensure!(created.contains("created schedule ticker"), "{created}");
    ensure!(created.contains("next:"), "{created}");
    let listed_text = expect(&stack, 0, &["schedule", "ls"])?;
    ensure!(
        listed_text.contains("ticker") && listed_text.contains("every 1s → shell on default"),
        "{listed_text}"
    );
    stack
        .until_runs("ticker", 2, Duration::from_secs(30))
        .await?;

    let paused = expect(
        &stack,
        0,
        &["schedule", "pause", "ticker", "--reason", "maintenance"],
    )?;
    ensure!(paused.contains("paused schedule ticker"), "{paused}");
    let shown = expect(&stack, 0, &["schedule", "show", "ticker"])?;
    ensure!(
        shown.contains("ticker: paused") && shown.contains("paused because: maintenance"),
        "{shown}"
    );
    ensure!(shown.contains("no tick to come"), "{shown}");

    // A paused schedule runs now, and --wait follows the run to its end.
    let manual = expect(&stack, 0, &["schedule", "run-now", "ticker", "--wait"])?;
    ensure!(manual.contains("a manual run of ticker"), "{manual}");

    let backfill = ["schedule", "backfill", "ticker"];
    let range = [
        "--from",
        "2026-11-30T10:00:00Z",
        "--to",
        "2026-11-30T10:00:09Z",
    ];
    let first = expect(
        &stack,
        0,
        &[&backfill[..], &range, &["--overlap", "allow_all"]].concat(),
    )?;
    ensure!(
        first.contains("10 runs started, 0 ticks had run"),
        "{first}"
    );
    let again = expect(
        &stack,
        0,
        &[&backfill[..], &range, &["-o", "json"]].concat(),
    )?;
    let again: Value = serde_json::from_str(again.trim())?;
    ensure!(
        again["existing"] == 10 && again["started"] == json!([]),
        "{again}"
    );

    let runs = stack
        .until_runs("ticker", 2 + 1 + 10, Duration::from_secs(60))
        .await?;
    let triggers: BTreeMap<String, usize> = runs.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r["trigger"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
        m
    });
    ensure!(
        triggers.get("manual") == Some(&1) && triggers.get("backfill") == Some(&10),
        "{triggers:?}"
    );
    let history = expect(&stack, 0, &["schedule", "show", "ticker", "--runs", "20"])?;
    ensure!(
        history.contains("manual") && history.contains("backfill") && history.contains("succeeded"),
        "{history}"
    );
    let events = expect(&stack, 0, &["schedule", "show", "ticker", "--events"])?;
    ensure!(
        events.contains("created: every 1s → shell on default")
            && events.contains("paused: maintenance")
            && events.contains("(manual)")
            && events.contains("(backfill)"),
        "{events}"
    );

    let resumed = expect(&stack, 0, &["schedule", "resume", "ticker"])?;
    ensure!(resumed.contains("resumed schedule ticker"), "{resumed}");
    expect(&stack, 0, &["schedule", "delete", "ticker"])?;
    let listed: Value =
        serde_json::from_str(expect(&stack, 0, &["schedule", "ls", "-o", "json"])?.trim())?;
    ensure!(listed["schedules"] == json!([]), "{listed}");

    // Mistakes: each names what is wrong and exits with its code.
    let missing = expect(&stack, 5, &["schedule", "show", "nope"])?;
    ensure!(missing.contains("not_found"), "{missing}");
    let bad_cron = expect(
        &stack,
        2,
        &["schedule", "create", "bad", "echo", "--cron", "61 * * * *"],
    )?;
    ensure!(bad_cron.contains("field cron"), "{bad_cron}");
    let taken = expect(
        &stack,
        0,
        &["schedule", "create", "twice", "echo", "--every", "1h"],
    )
    .and_then(|_| {
        expect(
            &stack,
            6,
            &["schedule", "create", "twice", "echo", "--every", "1h"],
        )
    })?;
    ensure!(taken.contains("exists"), "{taken}");
    println!("{listed_text}{shown}{history}{events}{bad_cron}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workflow_schedule_starts_a_workflow_each_tick_and_run_now_follows_it() -> Result<()> {
    let stack = Stack::start("schedule-workflow", 1)?;
    let file = stack._dir.0.join("greet.yaml");
    std::fs::write(
        &file,
        "name: greet\nversion: 1\nnodes:\n  hello:\n    kind: echo\n    input: {who: \"${{ .inputs.who }}\"}\n",
    )?;
    expect(
        &stack,
        0,
        &["workflow", "apply", file.to_str().context("a path")?],
    )?;
    let created = expect(
        &stack,
        0,
        &[
            "schedule",
            "create",
            "greeter",
            "--every",
            "1s",
            "--workflow",
            "greet",
            "--input",
            r#"{"who": "cron"}"#,
        ],
    )?;
    ensure!(created.contains("created schedule greeter"), "{created}");
    let runs = stack
        .until_runs("greeter", 2, Duration::from_secs(30))
        .await?;
    stack.pause("greeter").await?;
    for run in &runs {
        let execution = run["execution"].as_str().context("execution")?;
        let (status, view) = stack
            .call("GET", &format!("/v1/workflow-executions/{execution}"), None)
            .await?;
        ensure!(status == 200, "{execution}: {status} {view}");
        ensure!(
            view["workflow"] == "greet" && view["status"] == "succeeded",
            "{view}"
        );
        ensure!(
            view["input"] == json!({"who": "cron"}),
            "the tick's input: {view}"
        );
        ensure!(run["status"] == "succeeded", "{run}");
    }
    // A workflow run of a schedule is followed as a tree of nodes.
    let manual = expect(&stack, 0, &["schedule", "run-now", "greeter", "--wait"])?;
    ensure!(
        manual.contains("greet v1: succeeded") && manual.contains("hello (echo) succeeded"),
        "{manual}"
    );
    let listed = expect(&stack, 0, &["schedule", "ls"])?;
    ensure!(listed.contains("every 1s → workflow greet"), "{listed}");
    Ok(())
}
