//! `runlog submit`: builds a task spec from flags, posts it, and with
//! `--wait` follows the execution to its end — events from its SSE feed,
//! log lines from its log feed, progress in a bar — and exits with its
//! outcome. With `--from-file` it submits a file of specs, one JSON spec a
//! line, through the batch route, with the same bar for the file's progress.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use runlog_events::{Envelope, Event, Priority, Status};
use serde_json::{Value, json};

use super::render::{self, parse_duration, parse_pair};
use super::sse::{Feed, SseEvent};
use super::views::{Accepted, Execution, Logs};
use super::{Client, Conn, Error, Exit, path_id};

/// How often the bar asks for the running attempt's progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How long to wait for the last log lines once the execution ended.
const LOG_GRACE: Duration = Duration::from_secs(5);
/// Specs per batch request: the engine's limit.
const BATCH: usize = 1000;
/// Bytes of specs per batch request, under the engine's 16 MiB batch body.
const BATCH_BYTES: usize = 15 * 1024 * 1024;

/// Options of `runlog submit`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task kind: `shell`, `http`, `echo`, or a custom handler's kind.
    #[arg(required_unless_present = "from_file")]
    kind: Option<String>,
    /// Submit every task spec in FILE instead, one JSON spec a line as
    /// `POST /v1/executions` takes it (`-`: standard input), in batches of
    /// up to 1,000. Prints the ids, then a summary with each failed line;
    /// exits 2 if any line failed.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = [
            "kind", "input", "args", "queue", "priority", "timeout", "deadline",
            "retries", "not_before", "labels", "require", "env", "secrets",
            "idempotency_key", "id", "wait",
        ]
    )]
    from_file: Option<PathBuf>,
    #[command(flatten)]
    task: TaskFlags,
    /// Deadline of the whole execution, retries included: a duration from
    /// now (`2h`) or a time (`2026-11-24T06:00:00Z`).
    #[arg(long, value_name = "DURATION|TIME")]
    deadline: Option<String>,
    /// Do not start before this time, or before this long from now (`10m`).
    #[arg(long, value_name = "TIME|DURATION")]
    not_before: Option<String>,
    /// An environment variable for the task; `NAME` alone takes the value
    /// from your environment. Values are sealed by the engine, never logged
    /// or printed. Repeat for more.
    #[arg(long = "env", short = 'e', value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    /// An environment variable the worker fills from a stored secret
    /// (`runlog secret set NAME`) or its own `RUNLOG_SECRET_<NAME>`; only
    /// the name travels. Repeat for more.
    #[arg(long = "secret", value_name = "VARIABLE=SECRET")]
    secrets: Vec<String>,
    /// Submissions with the same key get the same execution (kept 30 days).
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// The execution id to use (1-64 of A-Z a-z 0-9 _ -); generated when
    /// absent.
    #[arg(long)]
    id: Option<String>,
    /// Follow the execution to its end: progress, log lines, output; exit
    /// with its outcome.
    #[arg(long, short)]
    wait: bool,
    #[command(flatten)]
    conn: Conn,
}

/// The flags that describe a task: its kind's input, where it runs and how
/// it is retried. `runlog submit` and `runlog schedule create` share them.
#[derive(Debug, Clone, clap::Args)]
pub struct TaskFlags {
    /// The task's input as JSON; `@FILE` reads it from a file, `-` from
    /// standard input. See docs/executors.md for each kind's input.
    #[arg(long, short, value_name = "JSON")]
    input: Option<String>,
    /// For `shell`: the program and its arguments, after `--`, run without
    /// a shell (`-- restic backup /srv`). One argument holding spaces is
    /// run as a `sh -c` script (`-- 'make && make test'`). For `runlog
    /// submit`, a final `--wait` is taken as runlog's flag.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
    /// The queue to dispatch on (default: `default`).
    #[arg(long, short)]
    queue: Option<String>,
    /// Dispatch priority: high, normal or low.
    #[arg(long, short, value_parser = str::parse::<Priority>)]
    priority: Option<Priority>,
    /// Deadline of each attempt (`30s`, `5m`, `1h30m`).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    timeout: Option<Duration>,
    /// Retries after a failed first attempt (`--retries 0`: one attempt only;
    /// default 2).
    #[arg(long, value_name = "N")]
    retries: Option<u32>,
    /// A label for filtering (`team=infra`); repeat for more.
    #[arg(long = "label", short = 'l', value_parser = parse_pair, value_name = "KEY=VALUE")]
    labels: Vec<(String, String)>,
    /// A label a worker must carry to take the task (`pool=backup`); repeat
    /// for more.
    #[arg(long = "require", value_parser = parse_pair, value_name = "KEY=VALUE")]
    require: Vec<(String, String)>,
    /// The capacity class worker rules match instead of the kind (`plan`,
    /// `apply`).
    #[arg(long, value_name = "CLASS")]
    capacity: Option<String>,
    /// A concurrency key (`workspace=prod`): across the cluster, at most the
    /// configured number of its attempts run at once.
    #[arg(long, value_name = "KEY")]
    concurrency_key: Option<String>,
}

impl TaskFlags {
    /// Whether no flag was given.
    pub fn is_empty(&self) -> bool {
        self.input.is_none()
            && self.args.is_empty()
            && self.queue.is_none()
            && self.priority.is_none()
            && self.timeout.is_none()
            && self.retries.is_none()
            && self.labels.is_empty()
            && self.require.is_empty()
            && self.capacity.is_none()
            && self.concurrency_key.is_none()
    }

    /// `--input` as a workflow's input: the other flags describe a task and
    /// do not apply.
    pub fn workflow_input(&self) -> Result<Option<Value>, Error> {
        let task_only = [
            ("arguments after --", !self.args.is_empty()),
            ("--queue", self.queue.is_some()),
            ("--priority", self.priority.is_some()),
            ("--timeout", self.timeout.is_some()),
            ("--retries", self.retries.is_some()),
            ("--label", !self.labels.is_empty()),
            ("--require", !self.require.is_empty()),
            ("--capacity", self.capacity.is_some()),
            ("--concurrency-key", self.concurrency_key.is_some()),
        ];
        if let Some((flag, _)) = task_only.iter().find(|(_, given)| *given) {
            return Err(Error::Usage(format!(
                "{flag} describes a task; a workflow's nodes say where and how they run \
                 (docs/workflows.md)"
            )));
        }
        self.input.as_deref().map(read_input).transpose()
    }

    /// The spec of a `kind` task these flags describe (`POST /v1/executions`).
    pub fn spec(&self, kind: &str) -> Result<Value, Error> {
        let input = match (&self.input, self.args.as_slice()) {
            (Some(_), [_, ..]) => {
                return Err(Error::Usage(
                    "give the input either with --input or as arguments after --, not both".into(),
                ));
            }
            (Some(input), []) => read_input(input)?,
            (None, []) => Value::Null,
            (None, args_) if kind != "shell" => {
                return Err(Error::Usage(format!(
                    "arguments after -- are the program of a shell task ({args_:?}); \
                     give a {kind} task its input with --input JSON"
                )));
            }
            (None, [script]) if script.contains(char::is_whitespace) => json!({"shell": script}),
            (None, argv) => json!({"argv": argv}),
        };
        let mut body = json!({"kind": kind, "input": input});
        if let Some(queue) = &self.queue {
            body["queue"] = json!(queue);
        }
        if let Some(priority) = self.priority {
            body["priority"] = json!(priority);
        }
        if let Some(timeout) = self.timeout {
            body["attempt_timeout_ms"] = json!(millis(timeout)?);
        }
        if let Some(retries) = self.retries {
            let attempts = retries
                .checked_add(1)
                .ok_or_else(|| Error::Usage(format!("--retries {retries} is too many")))?;
            body["retry"] = json!({"max_attempts": attempts});
        }
        if !self.labels.is_empty() {
            body["labels"] = json!(self.labels.iter().cloned().collect::<BTreeMap<_, _>>());
        }
        if !self.require.is_empty() {
            body["worker_labels"] = json!(self.require.iter().cloned().collect::<BTreeMap<_, _>>());
        }
        if let Some(class) = &self.capacity {
            body["capacity"] = json!(class);
        }
        if let Some(key) = &self.concurrency_key {
            body["concurrency_key"] = json!(key);
        }
        Ok(body)
    }
}

impl Args {
    /// The connection options.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }
}

/// Runs `runlog submit`.
pub async fn run(mut args: Args) -> Result<Exit, Error> {
    if let Some(path) = &args.from_file {
        return from_file(path, &args.conn).await;
    }
    // `runlog submit shell -- prog args --wait`: the final --wait is ours.
    if args.task.args.last().is_some_and(|a| a == "--wait") {
        args.task.args.pop();
        args.wait = true;
    }
    let body = body(&args, Utc::now())?;
    let client = args.conn.client()?;
    let raw: Value = client.post("/v1/executions", &body).await?;
    let accepted: Accepted = serde_json::from_value(raw.clone())
        .map_err(|e| Error::Protocol(format!("cannot read the engine's answer: {e}")))?;
    if let Some(warning) = accepted.warning.as_deref().filter(|_| !args.conn.json()) {
        eprintln!("warning: {warning}");
    }
    if args.wait {
        if !args.conn.json() {
            eprintln!("{}", accepted_line(&accepted));
        }
        return follow(&client, &accepted.id, &args.conn).await;
    }
    if args.conn.json() {
        println!("{raw}");
    } else {
        // The id alone on stdout, for `id=$(runlog submit ...)`.
        println!("{}", accepted.id);
        if std::io::stderr().is_terminal() {
            eprintln!(
                "{}; follow it with `runlog logs -f {id}` or `runlog status {id}`",
                accepted_line(&accepted),
                id = accepted.id
            );
        }
    }
    Ok(Exit::Success)
}

fn accepted_line(accepted: &Accepted) -> String {
    if accepted.existing {
        format!(
            "{} was submitted before (same id or idempotency key); it is {}",
            accepted.id, accepted.status
        )
    } else {
        format!("submitted {} ({})", accepted.id, accepted.status)
    }
}

/// The body of `POST /v1/executions` the flags describe.
fn body(args: &Args, now: DateTime<Utc>) -> Result<Value, Error> {
    let kind = args
        .kind
        .as_deref()
        .ok_or_else(|| Error::Usage("give the task kind, or --from-file FILE".into()))?;
    let mut body = args.task.spec(kind)?;
    if let Some(deadline) = &args.deadline {
        body["timeout_ms"] = json!(until(deadline, now, "--deadline")?);
    }
    if let Some(not_before) = &args.not_before {
        let ms = until(not_before, now, "--not-before")?;
        body["not_before"] = json!(now + chrono::TimeDelta::milliseconds(ms as i64));
    }
    let mut env = BTreeMap::new();
    for entry in &args.env {
        let (name, value) = match entry.split_once('=') {
            Some((name, value)) => (name.to_owned(), value.to_owned()),
            None => {
                let value = std::env::var(entry).map_err(|_| {
                    Error::Usage(format!(
                        "--env {entry}: {entry} is not set in your environment; \
                         write --env {entry}=VALUE"
                    ))
                })?;
                (entry.clone(), value)
            }
        };
        env.insert(name, value);
    }
    if !env.is_empty() {
        body["env"] = json!(env);
    }
    let mut secrets = BTreeMap::new();
    for entry in &args.secrets {
        let (variable, name) = entry.split_once('=').ok_or_else(|| {
            Error::Usage(format!(
                "--secret {entry}: write --secret VARIABLE=SECRET (the variable the task \
                 sees, the secret's name)"
            ))
        })?;
        secrets.insert(variable.to_owned(), name.to_owned());
    }
    if !secrets.is_empty() {
        body["secrets"] = json!(secrets);
    }
    if let Some(key) = &args.idempotency_key {
        body["idempotency_key"] = json!(key);
    }
    if let Some(id) = &args.id {
        body["id"] = json!(id);
    }
    Ok(body)
}

fn millis(d: Duration) -> Result<u64, Error> {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Err(Error::Usage("a timeout must be at least 1ms".into()));
    }
    Ok(ms)
}

/// Milliseconds from `now` to a time or after a duration.
fn until(s: &str, now: DateTime<Utc>, flag: &str) -> Result<u64, Error> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        let ms = (t.with_timezone(&Utc) - now).num_milliseconds();
        if ms <= 0 {
            return Err(Error::Usage(format!("{flag} {s} is in the past")));
        }
        return Ok(ms as u64);
    }
    let d = parse_duration(s).map_err(|e| Error::Usage(format!("{flag}: {e}, or a time")))?;
    millis(d)
}

pub(super) fn read_input(input: &str) -> Result<Value, Error> {
    let (text, from) = if input == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Error::Local(format!("cannot read the input from standard input: {e}")))?;
        (text, "standard input".to_owned())
    } else if let Some(path) = input.strip_prefix('@') {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Local(format!("cannot read the input file {path}: {e}")))?;
        (text, path.to_owned())
    } else {
        (input.to_owned(), "--input".to_owned())
    };
    serde_json::from_str(&text)
        .map_err(|e| Error::Usage(format!("the input in {from} is not JSON: {e}")))
}

/// Follows execution `id` to its end and returns the exit its outcome
/// stands for. With `--output text`: event lines on stderr, the task's log
/// lines on stdout and stderr as it wrote them, a progress bar on a
/// terminal, and the output at the end when no log line was shown. With
/// `--output json`: the final state as `GET /v1/executions/{id}` gives it.
pub async fn follow(client: &Client, id: &str, conn: &Conn) -> Result<Exit, Error> {
    let mut view = Follower::new(id, !conn.json());
    let path = format!("/v1/executions/{}", path_id(id));
    let mut events = Feed::new(client, format!("{path}/stream"), Vec::new(), None);
    let mut logs = Feed::new(client, format!("{path}/logs/stream"), Vec::new(), None);
    let mut logs_done = !view.text;
    let mut ended: Option<Status> = None;
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    let grace = tokio::time::sleep(Duration::MAX);
    tokio::pin!(grace);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    while ended.is_none() || !logs_done {
        tokio::select! {
            event = events.next(), if ended.is_none() => {
                ended = view.event(event?)?;
                if ended.is_some() {
                    grace.as_mut().reset(tokio::time::Instant::now() + LOG_GRACE);
                }
            }
            event = logs.next(), if !logs_done => match event {
                Ok(event) if event.event == "log" => view.log(&event.data),
                Ok(event) => logs_done = event.event == "end" || event.event == "error",
                // The log is a convenience: the outcome still counts.
                Err(_) => logs_done = true,
            },
            _ = tick.tick(), if view.tty && view.running => {
                if let Ok(now) = client.get::<Execution>(&path, &[]).await {
                    view.progress(now);
                }
            }
            _ = &mut grace => logs_done = true,
            _ = &mut ctrl_c => {
                view.bar.finish_and_clear();
                eprintln!(
                    "stopped waiting; {id} goes on: `runlog logs -f {id}` follows it, \
                     `runlog cancel {id}` stops it"
                );
                return Ok(Exit::Interrupted);
            }
        }
    }
    view.bar.finish_and_clear();
    let raw: Value = client.get(&path, &[]).await?;
    let execution: Execution = serde_json::from_value(raw.clone())
        .map_err(|e| Error::Protocol(format!("cannot read the state of {id}: {e}")))?;
    let status = if execution.status.is_terminal() {
        execution.status
    } else {
        ended.unwrap_or(execution.status)
    };
    if !view.text {
        println!("{raw}");
        return Ok(Exit::of_status(status));
    }
    if status == Status::Succeeded && view.lines_shown == 0 {
        print_output(execution.output.as_ref());
    }
    eprintln!("{}", outcome_line(&execution, status));
    Ok(Exit::of_status(status))
}

/// What `follow` shows while an execution runs.
struct Follower {
    /// Print events and log lines (not `--output json`).
    text: bool,
    /// Stdout and stderr are a terminal: draw the bar.
    tty: bool,
    bar: ProgressBar,
    /// An attempt is running (progress is worth asking for).
    running: bool,
    lines_shown: u64,
}

impl Follower {
    fn new(id: &str, text: bool) -> Follower {
        let tty = text && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let bar = bar(tty);
        bar.set_prefix("waiting");
        bar.set_message(format!("{id} waits for a worker"));
        Follower {
            text,
            tty,
            bar,
            running: false,
            lines_shown: 0,
        }
    }

    /// An event of the execution's feed; the status it ended in, after `end`.
    fn event(&mut self, event: SseEvent) -> Result<Option<Status>, Error> {
        match event.event.as_str() {
            "end" => {
                let status = serde_json::from_str::<Value>(&event.data)
                    .ok()
                    .and_then(|v| serde_json::from_value::<Status>(v["status"].clone()).ok())
                    .unwrap_or(Status::Failed);
                return Ok(Some(status));
            }
            "error" => {
                self.bar.finish_and_clear();
                return Err(Error::Protocol(format!(
                    "the engine stopped the execution's feed: {}",
                    event.data
                )));
            }
            _ => {}
        }
        let Ok(envelope) = serde_json::from_str::<Envelope>(&event.data) else {
            return Ok(None);
        };
        self.running = matches!(
            envelope.event,
            Event::Started(_) | Event::Heartbeat(_) | Event::CancelRequested(_)
        );
        if let Event::Started(_) = envelope.event {
            self.bar.set_position(0);
            self.bar.set_prefix(format!("attempt {}", envelope.attempt));
            self.bar.set_message("");
        }
        // `submitted` was said already.
        if self.text && !matches!(envelope.event, Event::Submitted(_)) {
            let time = envelope
                .time
                .with_timezone(&chrono::Local)
                .format("%H:%M:%S");
            let line = render::event(&envelope, Utc::now());
            self.bar.suspend(|| eprintln!("[{time}] {line}"));
        }
        Ok(None)
    }

    /// A `log` event: its lines, on the stream the task wrote them to.
    fn log(&mut self, data: &str) {
        let Ok(batch) = serde_json::from_str::<Logs>(data) else {
            return;
        };
        self.bar.suspend(|| {
            for line in &batch.lines {
                if line.stream == "stderr" {
                    eprintln!("{}", line.line);
                } else {
                    println!("{}", line.line);
                }
            }
        });
        self.lines_shown += batch.lines.len() as u64;
    }

    /// The running attempt's latest progress, in the bar.
    fn progress(&self, now: Execution) {
        let Some(progress) = now.progress else { return };
        if let Some(percent) = progress.percent {
            self.bar.set_position(percent.clamp(0.0, 100.0) as u64);
        }
        self.bar.set_message(progress.message.unwrap_or_default());
    }
}

/// The bar `submit` draws on standard error, in percent, when `shown`
/// (hidden otherwise): one execution's progress, or a file's.
fn bar(shown: bool) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let target = ProgressDrawTarget::term_like_with_hz(Box::new(ShortOfTheEdge::default()), 20);
    let bar = ProgressBar::with_draw_target(Some(100), target);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix:.bold} [{bar:30}] {pos:>3}% {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Standard error for the bar, a few columns narrower than it is: indicatif
/// pads its line to the full width, and the `^C` the terminal echoes would
/// then wrap to a new line and leave the bar behind when it clears itself.
#[derive(Debug)]
struct ShortOfTheEdge(console::Term);

impl Default for ShortOfTheEdge {
    fn default() -> Self {
        ShortOfTheEdge(console::Term::stderr())
    }
}

impl indicatif::TermLike for ShortOfTheEdge {
    fn width(&self) -> u16 {
        self.0.size().1.saturating_sub(3).max(20)
    }
    fn height(&self) -> u16 {
        self.0.size().0
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_up(n)
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_down(n)
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_right(n)
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_left(n)
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.0.write_line(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.0.write_str(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        self.0.clear_line()
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// What became of one line of a `--from-file` file.
#[derive(Debug)]
struct LineResult {
    /// Its line number, from 1.
    line: usize,
    /// The engine's result: `{"id", "status", "existing"}` or
    /// `{"error": {"code", "detail", "field"}}`.
    result: Value,
}

impl LineResult {
    fn failed(&self) -> bool {
        self.result.get("error").is_some()
    }
}

/// `runlog submit --from-file FILE`: every spec of the file through
/// `POST /v1/executions/batch`, in order; a line that is not JSON fails
/// alone.
async fn from_file(path: &Path, conn: &Conn) -> Result<Exit, Error> {
    let (text, name) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Error::Local(format!("cannot read tasks from standard input: {e}")))?;
        (text, "standard input".to_owned())
    } else {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Local(format!("cannot read {}: {e}", path.display())))?;
        (text, path.display().to_string())
    };
    let client = conn.client()?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty())
        .collect();
    let bar = bar(!conn.json() && std::io::stderr().is_terminal());
    bar.set_prefix("submitting");
    let mut results: Vec<LineResult> = Vec::with_capacity(lines.len());
    let mut batch: Vec<(usize, Value)> = Vec::new();
    let mut batch_bytes = 0;
    let show = |done: usize| {
        bar.set_position((done * 100).checked_div(lines.len()).unwrap_or(100) as u64);
        bar.set_message(format!("{done} of {} tasks", lines.len()));
    };
    for (at, &(line, text)) in lines.iter().enumerate() {
        match serde_json::from_str::<Value>(text) {
            Ok(spec) => {
                if batch.len() == BATCH || batch_bytes + text.len() > BATCH_BYTES {
                    let first = batch.first().map(|(line, _)| *line);
                    let full = std::mem::take(&mut batch);
                    if let Err(e) = submit_batch(&client, full, &mut results).await {
                        bar.finish_and_clear();
                        return stopped(e, first, results, &name, conn);
                    }
                    batch_bytes = 0;
                    show(at);
                }
                batch_bytes += text.len();
                batch.push((line, spec));
            }
            Err(e) => results.push(LineResult {
                line,
                result: json!({"error": {
                    "code": "invalid_json",
                    "detail": format!("not a JSON task spec: {e}"),
                    "field": null,
                }}),
            }),
        }
    }
    let last = batch.first().map(|(line, _)| *line);
    if let Err(e) = submit_batch(&client, batch, &mut results).await {
        bar.finish_and_clear();
        return stopped(e, last, results, &name, conn);
    }
    show(lines.len());
    bar.finish_and_clear();
    results.sort_by_key(|r| r.line);
    summarise(&results, &name, conn);
    Ok(outcome(&results))
}

/// Posts one batch of `(line, spec)` and records each spec's result.
async fn submit_batch(
    client: &Client,
    batch: Vec<(usize, Value)>,
    results: &mut Vec<LineResult>,
) -> Result<(), Error> {
    if batch.is_empty() {
        return Ok(());
    }
    let (lines, specs): (Vec<usize>, Vec<Value>) = batch.into_iter().unzip();
    let answer: Value = client
        .post("/v1/executions/batch", &json!({ "executions": specs }))
        .await?;
    let answers = answer["results"]
        .as_array()
        .filter(|a| a.len() == lines.len());
    let Some(answers) = answers else {
        return Err(Error::Protocol(format!(
            "the engine answered a batch of {} without one result per spec: \
             is it of the same version as this CLI?",
            lines.len()
        )));
    };
    results.extend(
        lines
            .into_iter()
            .zip(answers)
            .map(|(line, result)| LineResult {
                line,
                result: result.clone(),
            }),
    );
    Ok(())
}

/// A batch request failed: what was done so far, then the error.
fn stopped(
    e: Error,
    from_line: Option<usize>,
    mut results: Vec<LineResult>,
    name: &str,
    conn: &Conn,
) -> Result<Exit, Error> {
    results.sort_by_key(|r| r.line);
    summarise(&results, name, conn);
    if !conn.json() {
        eprintln!(
            "stopped at line {}: it and the lines after it were not submitted",
            from_line.unwrap_or_default()
        );
    }
    Err(e)
}

/// Prints the ids (text) or every result (JSON), and the summary.
fn summarise(results: &[LineResult], name: &str, conn: &Conn) {
    let existing = results
        .iter()
        .filter(|r| r.result["existing"] == true)
        .count();
    let failed: Vec<&LineResult> = results.iter().filter(|r| r.failed()).collect();
    let submitted = results.len() - failed.len() - existing;
    if conn.json() {
        let lines: Vec<Value> = results
            .iter()
            .map(|r| {
                let mut line = r.result.clone();
                line["line"] = json!(r.line);
                line
            })
            .collect();
        println!(
            "{}",
            json!({
                "submitted": submitted,
                "existing": existing,
                "failed": failed.len(),
                "results": lines,
            })
        );
        return;
    }
    for r in results.iter().filter(|r| !r.failed()) {
        if let Some(id) = r.result["id"].as_str() {
            println!("{id}");
        }
    }
    eprintln!(
        "{name}: {submitted} submitted, {existing} existing (same id or idempotency key), {} failed",
        failed.len()
    );
    // Each distinct warning once, with the lines it applies to.
    let mut warnings: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for r in results {
        if let Some(warning) = r.result["warning"].as_str() {
            warnings.entry(warning).or_default().push(r.line);
        }
    }
    for (warning, lines) in warnings {
        let shown: Vec<String> = lines.iter().take(5).map(usize::to_string).collect();
        let more = if lines.len() > 5 { ", ..." } else { "" };
        eprintln!("warning: {warning} (lines {}{more})", shown.join(", "));
    }
    for r in failed {
        let error = &r.result["error"];
        let field = match error["field"].as_str() {
            Some(field) => format!(", field {field}"),
            None => String::new(),
        };
        eprintln!(
            "  line {}: {} ({}{field})",
            r.line,
            error["detail"].as_str().unwrap_or_default(),
            error["code"].as_str().unwrap_or("error"),
        );
    }
}

/// Success when every line was accepted; otherwise the exit of the worst
/// failure (the engine unavailable for a spec, else an invalid one).
fn outcome(results: &[LineResult]) -> Exit {
    let codes: Vec<&str> = results
        .iter()
        .filter_map(|r| r.result["error"]["code"].as_str())
        .collect();
    if codes.is_empty() && results.iter().all(|r| !r.failed()) {
        Exit::Success
    } else if codes.contains(&"unavailable") {
        Exit::Unreachable
    } else {
        Exit::Usage
    }
}

/// The output of a task that showed no log line: a shell task's captured
/// streams as they were, anything else as JSON.
fn print_output(output: Option<&Value>) {
    let Some(output) = output else { return };
    match (output.get("stdout"), output.get("stderr")) {
        (Some(Value::String(stdout)), stderr) => {
            print!("{stdout}");
            if let Some(Value::String(stderr)) = stderr {
                eprint!("{stderr}");
            }
        }
        _ => println!(
            "{}",
            serde_json::to_string_pretty(output).unwrap_or_default()
        ),
    }
}

fn outcome_line(e: &Execution, status: Status) -> String {
    let took = match (e.submitted_at, e.finished_at) {
        (Some(start), Some(end)) => format!(" in {}", render::duration(end - start)),
        _ => String::new(),
    };
    let attempts = match e.attempt {
        1 => "1 attempt".to_owned(),
        n => format!("{n} attempts"),
    };
    let mut line = format!("{} {}{took} ({attempts})", e.id, render::status(status));
    if status != Status::Succeeded {
        if let Some(error) = &e.error {
            line.push_str(&format!(": {}", error.message));
        } else if let Some(reason) = &e.reason {
            line.push_str(&format!(": {reason}"));
        }
        line.push_str(&format!(
            "\n`runlog status {id}` shows every attempt; `runlog retry {id}` runs it again",
            id = e.id
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Args {
        Cli::try_parse_from(std::iter::once("submit").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn arguments_after_the_separator_become_the_argv() {
        let args = parse(&["shell", "--retries", "0", "--", "sh", "-c", "echo $1", "x"]);
        let body = body(&args, Utc::now()).unwrap();
        assert_eq!(body["input"], json!({"argv": ["sh", "-c", "echo $1", "x"]}));
        assert_eq!(body["retry"], json!({"max_attempts": 1}));
    }

    #[test]
    fn one_argument_with_spaces_is_a_script() {
        let args = parse(&["shell", "--", "echo a && echo b"]);
        assert_eq!(
            body(&args, Utc::now()).unwrap()["input"],
            json!({"shell": "echo a && echo b"})
        );
    }

    #[test]
    fn flags_fill_the_spec() {
        let now = Utc::now();
        let args = parse(&[
            "http",
            "--input",
            r#"{"url": "http://x"}"#,
            "--priority",
            "high",
            "--timeout",
            "30s",
            "--deadline",
            "2m",
            "--label",
            "team=infra",
            "--require",
            "pool=a",
            "--env",
            "TOKEN=s3cret",
        ]);
        let body = body(&args, now).unwrap();
        assert_eq!(body["priority"], "high");
        assert_eq!(body["attempt_timeout_ms"], 30_000);
        assert_eq!(body["timeout_ms"], 120_000);
        assert_eq!(body["labels"], json!({"team": "infra"}));
        assert_eq!(body["worker_labels"], json!({"pool": "a"}));
        assert_eq!(body["env"], json!({"TOKEN": "s3cret"}));
    }

    #[test]
    fn arguments_for_other_kinds_are_refused() {
        let args = parse(&["http", "--", "curl", "x"]);
        assert!(matches!(body(&args, Utc::now()), Err(Error::Usage(_))));
    }
}
