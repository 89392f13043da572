//! `runlog schedule`: create schedules, list and show them with their runs,
//! pause, resume and delete them, run one now and backfill a past range
//! (`docs/schedules.md`).
//!
//! ```text
//! runlog schedule create nightly-backup --cron '30 2 * * *' --tz Europe/Berlin \
//!     -q backups shell -- restic backup /srv
//! runlog schedule create report --every 1h --workflow report --input '{}'
//! runlog schedule ls
//! runlog schedule show nightly-backup --events
//! runlog schedule run-now nightly-backup --wait
//! runlog schedule backfill nightly-backup --from 2026-11-01T00:00:00Z --to 7d
//! ```

use std::path::{Path, PathBuf};

use chrono::{DateTime, Local, Utc};
use clap::Subcommand;
use serde_json::{Map, Value, json};

use super::render::{self, Table, parse_since};
use super::submit::TaskFlags;
use super::{Client, Conn, Error, Exit, path_id};

/// Options of `runlog schedule`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

impl Args {
    /// The connection options (every subcommand takes them).
    pub fn conn(&self) -> &Conn {
        match &self.command {
            Command::Create(create) => &create.conn,
            Command::Ls { conn }
            | Command::Show { conn, .. }
            | Command::Pause { conn, .. }
            | Command::Resume { conn, .. }
            | Command::Delete { conn, .. }
            | Command::RunNow { conn, .. }
            | Command::Backfill { conn, .. } => conn,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a schedule: when (--cron or --every, in --tz) and what (a task
    /// kind with its flags, or --workflow), or a spec file (-f) the flags
    /// add to.
    Create(Box<CreateArgs>),
    /// List the schedules: when they tick, what they run, their next tick
    /// and last run.
    Ls {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a schedule: its spec, next ticks, counts and newest runs; with
    /// --events its own history.
    Show {
        /// The schedule's id.
        id: String,
        /// How many of the newest runs to show.
        #[arg(long, default_value_t = 10, value_name = "N")]
        runs: usize,
        /// Show the schedule's own log instead: every change and every
        /// tick's fate, oldest first.
        #[arg(long)]
        events: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Pause a schedule: ticks during the pause do not run.
    Pause {
        /// The schedule's id.
        id: String,
        /// Why (shown with the schedule).
        #[arg(long, short)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Resume a paused schedule from its next tick.
    Resume {
        /// The schedule's id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a schedule for good; its runs and its log stay.
    Delete {
        /// The schedule's id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Start a run now, whatever the overlap policy (trigger `manual`);
    /// --wait follows it and exits with its outcome.
    RunNow {
        /// The schedule's id.
        id: String,
        /// Follow the run to its end.
        #[arg(long, short)]
        wait: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Run every tick of a past range that never ran, oldest first, each
    /// with its logical time (trigger `backfill`).
    Backfill {
        /// The schedule's id.
        id: String,
        /// The range's start: a time (2026-11-01T00:00:00Z) or how long ago
        /// (7d).
        #[arg(long, value_name = "TIME|DURATION")]
        from: String,
        /// The range's end, the same way (default: now).
        #[arg(long, value_name = "TIME|DURATION")]
        to: Option<String>,
        /// The overlap policy for these runs, instead of the schedule's.
        #[arg(long, value_parser = OVERLAP)]
        overlap: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

/// The overlap policies (`docs/schedules.md`).
const OVERLAP: [&str; 4] = ["skip", "buffer_one", "allow_all", "cancel_previous"];

/// Options of `runlog schedule create`.
#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// The schedule's id (1-64 of A-Z a-z 0-9 _ -).
    id: String,
    /// The kind of task each tick runs: `shell`, `http`, `echo`, or a
    /// custom handler's kind (or --workflow instead).
    kind: Option<String>,
    /// A schedule spec in YAML or JSON (as `POST /v1/schedules` takes it);
    /// the flags given replace its fields.
    #[arg(long, short = 'f', value_name = "FILE")]
    file: Option<PathBuf>,
    /// A cron expression: 5 fields (minute first), 6 (second first) or a
    /// nickname (@daily).
    #[arg(long, value_name = "EXPR", conflicts_with = "every")]
    cron: Option<String>,
    /// Instead of --cron: an interval (2s, 15m, 6h).
    #[arg(long, value_name = "DURATION")]
    every: Option<String>,
    /// The IANA time zone the cron expression reads in (Europe/Berlin;
    /// default UTC).
    #[arg(long = "tz", value_name = "ZONE")]
    time_zone: Option<String>,
    /// What a tick does while an earlier run still goes (default skip).
    #[arg(long, value_parser = OVERLAP)]
    overlap: Option<String>,
    /// What happens to ticks missed while no engine ran (default last).
    #[arg(long, value_parser = ["none", "last", "all"])]
    catch_up: Option<String>,
    /// With --catch-up all: how far back missed ticks run (default 1d).
    #[arg(long, value_name = "DURATION")]
    catch_up_window: Option<String>,
    /// Start each tick's run up to this much after its time, by an amount
    /// fixed per tick.
    #[arg(long, value_name = "DURATION")]
    jitter: Option<String>,
    /// No tick before this time.
    #[arg(long, value_name = "TIME")]
    start_at: Option<String>,
    /// No tick after this time.
    #[arg(long, value_name = "TIME")]
    end_at: Option<String>,
    /// Create it paused.
    #[arg(long)]
    paused: bool,
    /// A description, for people.
    #[arg(long)]
    description: Option<String>,
    /// Run this workflow on each tick instead of a task (--input is its
    /// input).
    #[arg(long, value_name = "NAME", conflicts_with = "kind")]
    workflow: Option<String>,
    /// The workflow's version (its newest when absent).
    #[arg(long, value_name = "N", requires = "workflow")]
    workflow_version: Option<u32>,
    #[command(flatten)]
    task: TaskFlags,
    #[command(flatten)]
    conn: Conn,
}

/// Runs `runlog schedule`.
pub async fn run(args: Args) -> Result<Exit, Error> {
    let conn = args.conn().clone();
    let client = conn.client()?;
    let json_out = conn.json();
    match args.command {
        Command::Create(create) => {
            let body = spec(&create)?;
            let view: Value = client.post("/v1/schedules", &body).await?;
            if json_out {
                println!("{view}");
            } else {
                println!("created schedule {}", view["id"].as_str().unwrap_or("?"));
                print!("{}", next_ticks(&view));
            }
            Ok(Exit::Success)
        }
        Command::Ls { .. } => ls(&client, json_out).await,
        Command::Show {
            id, runs, events, ..
        } => {
            if events {
                show_events(&client, &id, json_out).await
            } else {
                show(&client, &id, runs, json_out).await
            }
        }
        Command::Pause { id, reason, .. } => {
            let body = reason.map_or_else(|| json!({}), |r| json!({"reason": r}));
            let view: Value = client.post(&route(&id, "/pause"), &body).await?;
            changed(&view, "paused", json_out)
        }
        Command::Resume { id, .. } => {
            let view: Value = client.post(&route(&id, "/resume"), &json!({})).await?;
            changed(&view, "resumed", json_out)?;
            if !json_out {
                print!("{}", next_ticks(&view));
            }
            Ok(Exit::Success)
        }
        Command::Delete { id, .. } => {
            let view: Value = client.delete(&route(&id, "")).await?;
            changed(&view, "deleted", json_out)
        }
        Command::RunNow { id, wait, .. } => run_now(&client, &id, wait, &conn).await,
        Command::Backfill {
            id,
            from,
            to,
            overlap,
            ..
        } => {
            let now = Utc::now();
            let from = parse_since(&from, now).map_err(|e| Error::Usage(format!("--from: {e}")))?;
            let to = match to {
                Some(to) => {
                    parse_since(&to, now).map_err(|e| Error::Usage(format!("--to: {e}")))?
                }
                None => now,
            };
            let mut body = json!({"from": from, "to": to});
            if let Some(overlap) = overlap {
                body["overlap"] = json!(overlap);
            }
            let done: Value = client.post(&route(&id, "/backfill"), &body).await?;
            if json_out {
                println!("{done}");
                return Ok(Exit::Success);
            }
            let started = done["started"].as_array().cloned().unwrap_or_default();
            println!(
                "backfill of {id} from {} to {}: {} runs started, {} ticks had run, {} skipped",
                from.to_rfc3339(),
                to.to_rfc3339(),
                started.len(),
                done["existing"],
                done["skipped"],
            );
            let mut table = Table::new(&["SCHEDULED FOR", "EXECUTION"]);
            for run in &started {
                table.row(vec![
                    local(&run["scheduled_for"]),
                    text(&run["execution"]).to_owned(),
                ]);
            }
            if !started.is_empty() {
                table.print();
            }
            Ok(Exit::Success)
        }
    }
}

/// `/v1/schedules/{id}{rest}`.
fn route(id: &str, rest: &str) -> String {
    format!("/v1/schedules/{}{rest}", path_id(id))
}

/// The body of `POST /v1/schedules` the file and flags describe.
fn spec(args: &CreateArgs) -> Result<Value, Error> {
    let mut spec = match &args.file {
        Some(path) => read_spec(path)?,
        None => Map::new(),
    };
    spec.insert("id".into(), json!(args.id));
    let mut set = |key: &str, value: Option<&String>| {
        if let Some(value) = value {
            spec.insert(key.into(), json!(value));
        }
    };
    set("cron", args.cron.as_ref());
    set("every", args.every.as_ref());
    set("time_zone", args.time_zone.as_ref());
    set("overlap", args.overlap.as_ref());
    set("catch_up", args.catch_up.as_ref());
    set("catch_up_window", args.catch_up_window.as_ref());
    set("jitter", args.jitter.as_ref());
    set("description", args.description.as_ref());
    for (key, value) in [("start_at", &args.start_at), ("end_at", &args.end_at)] {
        if let Some(value) = value {
            let t = DateTime::parse_from_rfc3339(value).map_err(|_| {
                Error::Usage(format!(
                    "--{} {value:?} is not a time: write it like 2026-12-24T06:00:00Z",
                    key.replace('_', "-")
                ))
            })?;
            spec.insert(key.into(), json!(t.with_timezone(&Utc)));
        }
    }
    // One of the two timings: a flag replaces the file's other one.
    if args.cron.is_some() {
        spec.remove("every");
    } else if args.every.is_some() {
        spec.remove("cron");
    }
    if args.paused {
        spec.insert("paused".into(), json!(true));
    }
    match (&args.kind, &args.workflow) {
        (Some(kind), _) => {
            spec.insert("task".into(), args.task.spec(kind)?);
            spec.remove("workflow");
        }
        (None, Some(name)) => {
            let mut workflow = json!({"name": name});
            if let Some(version) = args.workflow_version {
                workflow["version"] = json!(version);
            }
            if let Some(input) = args.task.workflow_input()? {
                workflow["input"] = input;
            }
            spec.insert("workflow".into(), workflow);
            spec.remove("task");
        }
        (None, None) if args.task.is_empty() => {}
        (None, None) => {
            return Err(Error::Usage(
                "task flags need the task's kind: runlog schedule create ID KIND [flags]".into(),
            ));
        }
    }
    if !spec.contains_key("cron") && !spec.contains_key("every") {
        return Err(Error::Usage(
            "say when it ticks: --cron EXPR or --every DURATION (or a spec file with -f)".into(),
        ));
    }
    if !spec.contains_key("task") && !spec.contains_key("workflow") {
        return Err(Error::Usage(
            "say what it runs: a task kind (`shell -- restic backup /srv`), --workflow NAME, \
             or a spec file with -f"
                .into(),
        ));
    }
    Ok(Value::Object(spec))
}

/// A spec file: YAML (JSON is YAML too), an object at the top.
fn read_spec(path: &Path) -> Result<Map<String, Value>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Local(format!("cannot read {}: {e}", path.display())))?;
    match serde_norway::from_str::<Value>(&text) {
        Ok(Value::Object(spec)) => Ok(spec),
        Ok(other) => Err(Error::Usage(format!(
            "{} holds {}, not a schedule spec (an object with cron or every, and task or \
             workflow)",
            path.display(),
            kind_of(&other)
        ))),
        Err(e) => Err(Error::Usage(format!(
            "{} is neither YAML nor JSON: {e}",
            path.display()
        ))),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

async fn ls(client: &Client, json_out: bool) -> Result<Exit, Error> {
    let body: Value = client.get("/v1/schedules", &[]).await?;
    if json_out {
        println!("{body}");
        return Ok(Exit::Success);
    }
    let now = Utc::now();
    let mut table = Table::new(&["ID", "STATUS", "WHEN", "RUNS", "NEXT", "LAST RUN"]);
    for s in body["schedules"].as_array().into_iter().flatten() {
        table.row(vec![
            text(&s["id"]).to_owned(),
            text(&s["status"]).to_owned(),
            format!("{} → {}", when(&s["spec"]), target(&s["spec"])),
            s["run_count"].to_string(),
            match time(&s["next_ticks"][0]) {
                Some(next) if next > now => format!("in {}", render::duration(next - now)),
                Some(_) => "now".to_owned(),
                None => "-".to_owned(),
            },
            last_run(&s["last_run"], now),
        ]);
    }
    table.print();
    Ok(Exit::Success)
}

async fn show(client: &Client, id: &str, runs: usize, json_out: bool) -> Result<Exit, Error> {
    let view: Value = client.get(&route(id, ""), &[]).await?;
    let limit = runs.clamp(1, 1000).to_string();
    let history: Value = client.get(&route(id, "/runs"), &[("limit", limit)]).await?;
    if json_out {
        println!("{}", json!({"schedule": view, "runs": history["runs"]}));
        return Ok(Exit::Success);
    }
    let now = Utc::now();
    let spec = &view["spec"];
    println!("{}: {}", text(&view["id"]), text(&view["status"]));
    if let Some(reason) = view["paused_reason"].as_str() {
        println!("  paused because: {reason}");
    }
    if let Some(description) = spec["description"].as_str() {
        println!("  {description}");
    }
    println!("  when:     {}", when(spec));
    println!("  runs:     {}", target(spec));
    println!(
        "  policies: overlap {}, catch-up {}{}",
        spec["overlap"].as_str().unwrap_or("skip"),
        spec["catch_up"].as_str().unwrap_or("last"),
        spec["jitter"]
            .as_str()
            .map(|j| format!(", jitter {j}"))
            .unwrap_or_default()
    );
    let rate = view["success_rate"]
        .as_f64()
        .map(|r| format!(", {:.0} % succeeded", r * 100.0))
        .unwrap_or_default();
    println!(
        "  counts:   {} runs, {} ticks skipped{rate}",
        view["run_count"], view["skipped_count"]
    );
    if let Some(buffered) = view["buffered"].as_str() {
        println!("  buffered: a tick of {buffered} waits for the running one");
    }
    print!("{}", next_ticks(&view));
    let mut table = Table::new(&["SCHEDULED FOR", "TRIGGER", "EXECUTION", "STATUS", "TOOK"]);
    for run in history["runs"].as_array().into_iter().flatten() {
        table.row(vec![
            local(&run["scheduled_for"]),
            text(&run["trigger"]).to_owned(),
            text(&run["execution"]).to_owned(),
            text(&run["status"]).to_owned(),
            render::span(time(&run["started_at"]), time(&run["finished_at"]), now),
        ]);
    }
    if history["runs"].as_array().is_some_and(|r| !r.is_empty()) {
        println!();
        table.print();
    }
    Ok(Exit::Success)
}

async fn show_events(client: &Client, id: &str, json_out: bool) -> Result<Exit, Error> {
    let body: Value = client.get(&route(id, "/events"), &[]).await?;
    let events = body["events"].as_array().cloned().unwrap_or_default();
    if json_out {
        for event in &events {
            println!("{event}");
        }
        return Ok(Exit::Success);
    }
    for event in &events {
        println!(
            "{:>5} {} {}",
            event["seq"].to_string(),
            local(&event["time"]),
            event_line(event)
        );
    }
    Ok(Exit::Success)
}

/// What a schedule event says, in a few words.
fn event_line(event: &Value) -> String {
    let ty = text(&event["type"]);
    match ty {
        "created" | "updated" => format!(
            "{ty}: {} → {}",
            when(&event["spec"]),
            target(&event["spec"])
        ),
        "paused" => match event["reason"].as_str() {
            Some(reason) => format!("paused: {reason}"),
            None => "paused".to_owned(),
        },
        "triggered" => format!(
            "tick {} ran as {} ({})",
            local(&event["tick"]),
            text(&event["execution"]),
            text(&event["trigger"])
        ),
        "skipped" => format!(
            "{} tick(s) from {} to {} skipped: {}",
            event["count"],
            local(&event["from"]),
            local(&event["to"]),
            text(&event["reason"])
        ),
        "buffered" => format!("tick {} waits for the running one", local(&event["tick"])),
        other => other.to_owned(),
    }
}

async fn run_now(client: &Client, id: &str, wait: bool, conn: &Conn) -> Result<Exit, Error> {
    let started: Value = client.post(&route(id, "/run-now"), &json!({})).await?;
    let execution = text(&started["execution"]).to_owned();
    if !wait {
        if conn.json() {
            println!("{started}");
        } else {
            // The id alone on stdout, for `id=$(runlog schedule run-now ...)`.
            println!("{execution}");
        }
        return Ok(Exit::Success);
    }
    if !conn.json() {
        eprintln!("started {execution}, a manual run of {id}");
    }
    let view: Value = client.get(&route(id, ""), &[]).await?;
    if view["spec"]["workflow"].is_object() {
        super::workflow::follow(client, &execution, conn.json()).await
    } else {
        super::submit::follow(client, &execution, conn).await
    }
}

/// Prints what a pause, resume or delete left.
fn changed(view: &Value, what: &str, json_out: bool) -> Result<Exit, Error> {
    if json_out {
        println!("{view}");
    } else {
        println!("{what} schedule {}", text(&view["id"]));
    }
    Ok(Exit::Success)
}

/// The next ticks, one a line, in this machine's time zone.
fn next_ticks(view: &Value) -> String {
    let ticks = view["next_ticks"].as_array().cloned().unwrap_or_default();
    if ticks.is_empty() {
        return "  next:     no tick to come\n".to_owned();
    }
    let ticks: Vec<String> = ticks.iter().take(3).map(local).collect();
    format!("  next:     {}\n", ticks.join(", "))
}

/// When a spec ticks: `cron 30 2 * * * (Europe/Berlin)` or `every 15m`.
fn when(spec: &Value) -> String {
    match (spec["cron"].as_str(), spec["every"].as_str()) {
        (Some(cron), _) => format!(
            "cron {cron} ({})",
            spec["time_zone"].as_str().unwrap_or("UTC")
        ),
        (None, Some(every)) => format!("every {every}"),
        _ => "?".to_owned(),
    }
}

/// What a spec runs: `shell on backups` or `workflow report`.
fn target(spec: &Value) -> String {
    if let Some(workflow) = spec["workflow"].as_object() {
        let version = workflow
            .get("version")
            .filter(|v| !v.is_null())
            .map(|v| format!(" v{v}"))
            .unwrap_or_default();
        return format!(
            "workflow {}{version}",
            workflow.get("name").and_then(Value::as_str).unwrap_or("?")
        );
    }
    let task = &spec["task"];
    format!(
        "{} on {}",
        task["kind"].as_str().unwrap_or("?"),
        task["queue"].as_str().unwrap_or("default")
    )
}

/// The last run: `succeeded 2h05m ago`.
fn last_run(run: &Value, now: DateTime<Utc>) -> String {
    if run.is_null() {
        return "-".to_owned();
    }
    let at = time(&run["finished_at"])
        .or_else(|| time(&run["started_at"]))
        .or_else(|| time(&run["scheduled_for"]));
    format!("{} {} ago", text(&run["status"]), render::age(at, now))
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("?")
}

fn time(value: &Value) -> Option<DateTime<Utc>> {
    value.as_str().and_then(|t| t.parse().ok())
}

/// An instant in this machine's time zone (`2026-12-03 02:30:00 +01:00`).
fn local(value: &Value) -> String {
    match time(value) {
        Some(t) => t
            .with_timezone(&Local)
            .format("%Y-%m-%d %H:%M:%S %:z")
            .to_string(),
        None => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    fn create(argv: &[&str]) -> Result<Value, Error> {
        let cli = Cli::try_parse_from(
            ["schedule", "create"]
                .into_iter()
                .chain(argv.iter().copied()),
        )
        .map_err(|e| Error::Usage(e.to_string()))?;
        match cli.command {
            Command::Create(args) => spec(&args),
            _ => unreachable!("parsed create"),
        }
    }

    #[test]
    fn a_task_schedule_is_built_from_flags() {
        let spec = create(&[
            "nightly",
            "shell",
            "--cron",
            "30 2 * * *",
            "--tz",
            "Europe/Berlin",
            "--overlap",
            "buffer_one",
            "--catch-up",
            "all",
            "--catch-up-window",
            "2d",
            "-q",
            "backups",
            "--retries",
            "0",
            "--",
            "restic",
            "backup",
            "/srv",
        ])
        .unwrap();
        assert_eq!(
            spec,
            json!({
                "id": "nightly",
                "cron": "30 2 * * *",
                "time_zone": "Europe/Berlin",
                "overlap": "buffer_one",
                "catch_up": "all",
                "catch_up_window": "2d",
                "task": {
                    "kind": "shell",
                    "input": {"argv": ["restic", "backup", "/srv"]},
                    "queue": "backups",
                    "retry": {"max_attempts": 1}
                }
            })
        );
    }

    #[test]
    fn a_workflow_schedule_takes_its_input() {
        let spec = create(&[
            "report",
            "--every",
            "1h",
            "--workflow",
            "report",
            "--workflow-version",
            "2",
            "--input",
            r#"{"since": "yesterday"}"#,
            "--paused",
        ])
        .unwrap();
        assert_eq!(
            spec["workflow"],
            json!({"name": "report", "version": 2, "input": {"since": "yesterday"}})
        );
        assert_eq!(spec["paused"], true);
        assert!(spec.get("task").is_none());
    }

    #[test]
    fn flags_replace_the_fields_of_a_spec_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.yaml");
        std::fs::write(
            &file,
            "every: 5m\noverlap: skip\ntask:\n  kind: echo\n  input: {hello: 1}\n",
        )
        .unwrap();
        let spec = create(&[
            "from-file",
            "-f",
            file.to_str().unwrap(),
            "--cron",
            "0 * * * *",
            "--overlap",
            "allow_all",
        ])
        .unwrap();
        assert_eq!(spec["cron"], "0 * * * *");
        assert!(
            spec.get("every").is_none(),
            "--cron replaces the file's every"
        );
        assert_eq!(spec["overlap"], "allow_all");
        assert_eq!(spec["task"], json!({"kind": "echo", "input": {"hello": 1}}));
    }

    #[test]
    fn what_is_missing_is_named() {
        let no_timing = create(&["x", "echo"]).unwrap_err().to_string();
        assert!(no_timing.contains("--cron"), "{no_timing}");
        let no_target = create(&["x", "--every", "1m"]).unwrap_err().to_string();
        assert!(no_target.contains("--workflow"), "{no_target}");
        let no_kind = create(&["x", "--every", "1m", "-q", "a"])
            .unwrap_err()
            .to_string();
        assert!(no_kind.contains("kind"), "{no_kind}");
        let both = create(&["x", "--cron", "* * * * *", "--every", "1m", "echo"]);
        assert!(both.is_err());
        let workflow_queue = create(&["x", "--every", "1m", "--workflow", "w", "-q", "a"])
            .unwrap_err()
            .to_string();
        assert!(workflow_queue.contains("--queue"), "{workflow_queue}");
        let bad_time = create(&["x", "--every", "1m", "echo", "--start-at", "tomorrow"])
            .unwrap_err()
            .to_string();
        assert!(bad_time.contains("--start-at"), "{bad_time}");
    }
}
