//! The `shell` executor: runs one program per attempt.
//!
//! The program runs in its own process group with its output on pipes.
//! Each output line goes to the attempt's log as it arrives, is matched
//! against the task's progress pattern and extractors, and lands in a
//! bounded capture (head and tail) that becomes part of the output. On
//! cancellation or deadline the whole group gets `SIGTERM`, then `SIGKILL`
//! after a grace period, so the grandchildren a script started die too.
//!
//! [`ShellInput`] is the input format; `docs/executors.md` describes it
//! for users.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::pin::pin;
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::FusedFuture;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use regex::Regex;
use runlog_events::event::{LogStream, Progress};
use runlog_events::{ErrorClass, TaskError};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};

use super::{StopReason, mask, stop_requested};
use crate::handler::{Context, Handler, HandlerResult};

/// Bytes of each stream kept in the output when the input does not say.
pub const DEFAULT_CAPTURE_BYTES: usize = 64 * 1024;
/// The largest `capture_bytes` accepted: the output travels in one event.
pub const MAX_CAPTURE_BYTES: usize = 256 * 1024;
/// Time between `SIGTERM` and `SIGKILL` when the input does not say.
pub const DEFAULT_KILL_GRACE_MS: u64 = 5_000;
/// Longer lines are split: a program writing binary or one endless line
/// must not grow memory without limit.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Stderr lines quoted in the error of a failed program.
const STDERR_TAIL_LINES: usize = 3;
/// Longest stderr line quoted in an error.
const STDERR_TAIL_LINE_CHARS: usize = 300;
/// How long to wait for the pipes or the leader after `SIGKILL`: only a
/// process that escaped the group (`setsid`) can hold them longer.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(2);
/// Output fields the executor writes; extractors may not use these names.
const RESERVED_FIELDS: [&str; 5] = [
    "exit_code",
    "stdout",
    "stderr",
    "stdout_truncated_bytes",
    "stderr_truncated_bytes",
];

/// The input of a `shell` task.
///
/// Exactly one of `argv` and `shell` must be given.
///
/// # Examples
/// ```
/// use runlog_worker::executor::ShellInput;
///
/// let input: ShellInput = serde_json::from_value(serde_json::json!({
///     "argv": ["restic", "backup", "--json", "/data"],
///     "progress": {"json": {"percent_field": "percent_done", "scale": 100}},
///     "extract": {"snapshot_id": {"json": "/snapshot_id"}},
///     "retryable_exit_codes": [1, 3],
/// }))
/// .unwrap();
/// assert_eq!(input.argv.unwrap()[0], "restic");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellInput {
    /// The program and its arguments, run directly (no shell, no word
    /// splitting, no globbing). The program is looked up on `PATH`.
    pub argv: Option<Vec<String>>,
    /// A script run with `sh -c`, for when you need pipes, loops or
    /// expansion.
    pub shell: Option<String>,
    /// Extra environment variables, on top of the worker's environment and
    /// the task's (sealed and secret) environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The working directory; the worker's when absent.
    pub cwd: Option<PathBuf>,
    /// Written to the program's standard input, which is then closed. When
    /// absent, standard input is `/dev/null`.
    pub stdin: Option<String>,
    /// Bytes of each stream kept in the output (half from the start, half
    /// from the end). Default [`DEFAULT_CAPTURE_BYTES`], at most
    /// [`MAX_CAPTURE_BYTES`].
    pub capture_bytes: Option<usize>,
    /// How to read progress from output lines.
    pub progress: Option<ProgressPattern>,
    /// Output fields read from output lines, by name.
    #[serde(default)]
    pub extract: BTreeMap<String, Extract>,
    /// Exit codes that mean retrying will not help.
    #[serde(default)]
    pub permanent_exit_codes: Vec<i32>,
    /// When not empty, the only non-zero exit codes that are retried.
    #[serde(default)]
    pub retryable_exit_codes: Vec<i32>,
    /// Milliseconds between `SIGTERM` and `SIGKILL` when the attempt is
    /// stopped. Default [`DEFAULT_KILL_GRACE_MS`].
    pub kill_grace_ms: Option<u64>,
}

/// How progress is read from output lines (both streams).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ProgressPattern {
    /// A regex with a named group `percent` (a number, 0 to 100) and
    /// optionally `message`. Any other named group whose match is an
    /// unsigned integer becomes a counter.
    Regex(String),
    /// Fields of JSON lines, like `restic backup --json` status lines.
    Json(JsonProgress),
}

/// Progress read from JSON output lines. A field is a top-level field name
/// (`percent_done`) or a JSON pointer (`/stats/percent`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonProgress {
    /// The numeric field holding the completion; lines without it are not
    /// progress lines.
    pub percent_field: String,
    /// Multiplies the field to get a percentage: `100` for a 0..1 fraction.
    #[serde(default = "unit_scale")]
    pub scale: f64,
    /// The field holding the status message.
    pub message_field: Option<String>,
    /// Counter name → field holding an unsigned integer.
    #[serde(default)]
    pub counters: BTreeMap<String, String>,
}

fn unit_scale() -> f64 {
    1.0
}

/// Where an output field comes from. The last line that matches wins.
///
/// In JSON: a string is a regex (`"snapshot (?P<value>[0-9a-f]+) saved"`);
/// `{"regex": ...}` says the same explicitly; `{"json": "/snapshot_id"}`
/// reads a field of JSON lines.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "ExtractForm")]
pub enum Extract {
    /// A regex; the value is the named group `value`, else the first
    /// group, else the whole match. Always a string.
    Regex(String),
    /// A field name or JSON pointer into JSON lines; the value keeps its
    /// JSON type.
    Json(String),
}

/// The forms [`Extract`] is written in.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a regex string, {\"regex\": \"...\"} or {\"json\": \"/pointer\"}"
)]
enum ExtractForm {
    Short(String),
    Tagged(TaggedExtract),
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum TaggedExtract {
    Regex(String),
    Json(String),
}

impl From<ExtractForm> for Extract {
    fn from(form: ExtractForm) -> Self {
        match form {
            ExtractForm::Short(regex) | ExtractForm::Tagged(TaggedExtract::Regex(regex)) => {
                Extract::Regex(regex)
            }
            ExtractForm::Tagged(TaggedExtract::Json(field)) => Extract::Json(field),
        }
    }
}

/// Runs `shell` tasks. Stateless: one value serves any number of attempts
/// at once.
#[derive(Debug, Clone, Default)]
pub struct ShellExecutor {
    _private: (),
}

impl ShellExecutor {
    /// The executor.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Handler for ShellExecutor {
    async fn run(&self, ctx: Context) -> HandlerResult {
        let plan = Plan::new(ctx.input())?;
        if let Some(reason) = StopReason::now(&ctx) {
            return Err(reason.error(format!(
                "{}: the attempt was stopped before {} started",
                reason_word(reason),
                plan.name
            )));
        }
        let child = plan.spawn(&ctx).await?;
        let shared = Mutex::new(Shared::new(plan.capture_bytes, plan.observer.clone()));
        let ended = supervise(child, &plan, &ctx, &shared).await;
        let shared = shared.into_inner().unwrap_or_else(PoisonError::into_inner);
        match ended {
            Ended::Stopped { reason, escalated } => Err(reason.error(format!(
                "{}: stopped {} and its process group with SIGTERM{}",
                reason_word(reason),
                plan.name,
                if escalated {
                    format!(", then SIGKILL after {} ms", plan.grace.as_millis())
                } else {
                    String::new()
                }
            ))),
            Ended::Lost(error) => Err(TaskError::new(
                ErrorClass::Unknown,
                format!("lost track of {}: {error}", plan.name),
            )),
            Ended::Exited(status) => plan.result(status, shared, ctx.env().values()),
        }
    }
}

fn reason_word(reason: StopReason) -> &'static str {
    match reason {
        StopReason::Cancelled => "cancelled",
        StopReason::Timeout => "ran past the attempt deadline",
    }
}

/// A validated input, ready to run.
#[derive(Debug)]
struct Plan {
    /// How errors name the program.
    name: String,
    program: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    stdin: Option<String>,
    capture_bytes: usize,
    grace: Duration,
    observer: Observer,
    exits: ExitPolicy,
}

fn invalid(message: impl Into<String>) -> TaskError {
    TaskError::new(
        ErrorClass::InvalidInput,
        format!("shell input: {} (see docs/executors.md)", message.into()),
    )
}

impl Plan {
    fn new(input: &Value) -> Result<Self, TaskError> {
        let input: ShellInput =
            serde_json::from_value(input.clone()).map_err(|e| invalid(e.to_string()))?;
        let (name, program, args) = match (input.argv, input.shell) {
            (Some(argv), None) => {
                let mut argv = argv.into_iter();
                let program = argv
                    .next()
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| invalid("`argv` must start with a program name"))?;
                (format!("`{program}`"), program, argv.collect())
            }
            (None, Some(script)) => (
                "the shell script".to_owned(),
                "sh".to_owned(),
                vec!["-c".to_owned(), script],
            ),
            _ => {
                return Err(invalid(
                    "give exactly one of `argv` (runs a program) and `shell` (runs `sh -c`)",
                ));
            }
        };
        if let Some(bad) = input
            .env
            .iter()
            .find(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
        {
            return Err(invalid(format!(
                "`env.{}`: names must be non-empty without `=` or NUL, values without NUL",
                bad.0
            )));
        }
        let capture_bytes = input.capture_bytes.unwrap_or(DEFAULT_CAPTURE_BYTES);
        if capture_bytes > MAX_CAPTURE_BYTES {
            return Err(invalid(format!(
                "`capture_bytes` is {capture_bytes}, at most {MAX_CAPTURE_BYTES} are kept: \
                 write large output to a file instead"
            )));
        }
        if let Some(code) = input
            .permanent_exit_codes
            .iter()
            .find(|c| input.retryable_exit_codes.contains(c))
        {
            return Err(invalid(format!(
                "exit code {code} is both in `permanent_exit_codes` and `retryable_exit_codes`"
            )));
        }
        Ok(Plan {
            name,
            program,
            args,
            env: input.env,
            cwd: input.cwd,
            stdin: input.stdin,
            capture_bytes,
            grace: Duration::from_millis(input.kill_grace_ms.unwrap_or(DEFAULT_KILL_GRACE_MS)),
            observer: Observer::new(input.progress.as_ref(), &input.extract)?,
            exits: ExitPolicy {
                permanent: input.permanent_exit_codes,
                retryable: input.retryable_exit_codes,
            },
        })
    }

    /// Starts the program as the leader of a new process group.
    async fn spawn(&self, ctx: &Context) -> Result<Child, TaskError> {
        if let Some(cwd) = &self.cwd
            && !tokio::fs::metadata(cwd).await.is_ok_and(|m| m.is_dir())
        {
            return Err(TaskError::new(
                ErrorClass::InvalidInput,
                format!(
                    "shell input: `cwd` {} is not a directory on this worker",
                    cwd.display()
                ),
            ));
        }
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(ctx.env())
            .envs(&self.env)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            // A last resort for when this future is dropped mid-run; the
            // group guard in `supervise` reaches the grandchildren.
            .kill_on_drop(true);
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        command.spawn().map_err(|error| {
            let class = match error.kind() {
                std::io::ErrorKind::NotFound => ErrorClass::NotFound,
                std::io::ErrorKind::PermissionDenied => ErrorClass::Permission,
                std::io::ErrorKind::OutOfMemory | std::io::ErrorKind::WouldBlock => {
                    ErrorClass::Resource
                }
                _ => ErrorClass::InvalidInput,
            };
            let hint = match class {
                ErrorClass::NotFound => ": is it installed and on the worker's PATH?",
                ErrorClass::Permission => ": is it executable by the worker's user?",
                _ => "",
            };
            TaskError::new(class, format!("cannot start {} ({error}){hint}", self.name))
        })
    }

    /// The attempt's result once the program exited on its own.
    fn result<'a>(
        &self,
        status: ExitStatus,
        shared: Shared,
        secrets: impl IntoIterator<Item = &'a String>,
    ) -> HandlerResult {
        let secrets: Vec<&str> = secrets.into_iter().map(String::as_str).collect();
        let stderr_tail = || {
            let lines: Vec<&str> = shared
                .observer
                .stderr_tail
                .iter()
                .map(|s| s.as_str())
                .collect();
            if lines.is_empty() {
                "no output on stderr".to_owned()
            } else {
                format!("stderr ends with: {}", lines.join(" | "))
            }
        };
        match (status.code(), status.signal()) {
            (Some(0), _) => Ok(shared.output()),
            (Some(code), _) => {
                let message = format!("{} exited with code {code}; {}", self.name, stderr_tail());
                let mut error = TaskError::new(self.exits.class(code), mask(&message, secrets));
                error.retryable = self.exits.retryable(code);
                Err(error)
            }
            (None, signal) => {
                let signal = signal.unwrap_or_default();
                let name = Signal::try_from(signal).map_or("an unknown signal", Signal::as_str);
                let message = format!(
                    "{} was killed by {name} ({signal}), perhaps by the out-of-memory killer \
                     or from outside the worker; {}",
                    self.name,
                    stderr_tail()
                );
                Err(TaskError::new(ErrorClass::Crashed, mask(&message, secrets)))
            }
        }
    }
}

/// Which non-zero exit codes are worth another attempt.
#[derive(Debug, Clone, Default)]
struct ExitPolicy {
    permanent: Vec<i32>,
    retryable: Vec<i32>,
}

impl ExitPolicy {
    /// The class of a failed exit: `permanent` for a code the task lists
    /// as such, `unknown` otherwise.
    fn class(&self, code: i32) -> ErrorClass {
        if self.permanent.contains(&code) {
            ErrorClass::Permanent
        } else {
            ErrorClass::Unknown
        }
    }

    fn retryable(&self, code: i32) -> bool {
        if self.permanent.contains(&code) {
            false
        } else if self.retryable.is_empty() {
            true
        } else {
            self.retryable.contains(&code)
        }
    }
}

/// How the program's run ended.
#[derive(Debug)]
enum Ended {
    /// It exited on its own.
    Exited(ExitStatus),
    /// The attempt was stopped and the group signalled.
    Stopped {
        reason: StopReason,
        /// Whether `SIGTERM` was not enough.
        escalated: bool,
    },
    /// Waiting for it failed.
    Lost(std::io::Error),
}

/// Runs the child to its end: pumps its pipes, stops its group when the
/// attempt must stop, and reaps it.
async fn supervise(mut child: Child, plan: &Plan, ctx: &Context, shared: &Mutex<Shared>) -> Ended {
    let Some(pid) = child.id() else {
        return Ended::Lost(std::io::Error::other("the child has no pid"));
    };
    let mut group = Group::new(pid);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let stdin = child.stdin.take();
    let io = async {
        tokio::join!(
            pump(stdout, LogStream::Stdout, ctx, shared),
            pump(stderr, LogStream::Stderr, ctx, shared),
            feed(stdin, plan.stdin.as_deref()),
        );
    };
    let mut io = pin!(io.fuse());
    let mut stop = pin!(stop_requested(ctx));

    let first = loop {
        tokio::select! {
            status = child.wait() => break Ok(status),
            reason = &mut stop => break Err(reason),
            () = &mut io, if !io.is_terminated() => {}
        }
    };
    let ended = match first {
        Ok(Ok(status)) => {
            // The program is done; whatever it left running in its group
            // is an orphan of the task. A live member keeps the group id
            // reserved, so signalling after the leader was reaped is safe.
            if group.signal(Signal::SIGTERM) {
                let _ = tokio::time::timeout(plan.grace, settle(&mut io)).await;
                group.signal(Signal::SIGKILL);
            }
            Ended::Exited(status)
        }
        Ok(Err(error)) => {
            group.signal(Signal::SIGKILL);
            Ended::Lost(error)
        }
        Err(reason) => {
            group.signal(Signal::SIGTERM);
            let ended = async {
                let _ = child.wait().await;
                settle(&mut io).await;
            };
            let escalated = tokio::time::timeout(plan.grace, ended).await.is_err();
            if escalated {
                group.signal(Signal::SIGKILL);
                let _ = tokio::time::timeout(DRAIN_AFTER_KILL, child.wait()).await;
            }
            Ended::Stopped { reason, escalated }
        }
    };
    let _ = tokio::time::timeout(DRAIN_AFTER_KILL, settle(&mut io)).await;
    group.disarm();
    ended
}

/// Waits for `io` unless it already ended.
async fn settle<F: FusedFuture<Output = ()> + Unpin>(io: &mut F) {
    if !io.is_terminated() {
        io.await;
    }
}

/// The child's process group; kills it when dropped while armed, so an
/// attempt future dropped mid-run leaves no grandchildren behind.
#[derive(Debug)]
struct Group {
    pgid: Pid,
    armed: bool,
}

impl Group {
    fn new(leader: u32) -> Self {
        Group {
            pgid: Pid::from_raw(leader as i32),
            armed: true,
        }
    }

    /// Sends `signal` to every member; whether the group had any.
    fn signal(&self, signal: Signal) -> bool {
        killpg(self.pgid, signal).is_ok()
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.armed {
            self.signal(Signal::SIGKILL);
        }
    }
}

/// Writes the input to the child's stdin, then closes it.
async fn feed(stdin: Option<ChildStdin>, data: Option<&str>) {
    if let (Some(mut pipe), Some(data)) = (stdin, data) {
        // A program that exits without reading its input is not an error.
        let _ = pipe.write_all(data.as_bytes()).await;
        let _ = pipe.shutdown().await;
    }
}

/// Reads one output stream to its end: captures it, and hands each line to
/// the log and the observer.
async fn pump<R: AsyncRead + Unpin>(
    reader: Option<R>,
    stream: LogStream,
    ctx: &Context,
    shared: &Mutex<Shared>,
) {
    let Some(mut reader) = reader else { return };
    let mut buf = vec![0; 8 * 1024];
    let mut lines = Lines::default();
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared.capture(stream).push(&buf[..n]);
        lines.push(&buf[..n], |line| shared.observer.line(ctx, stream, line));
    }
    let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
    lines.finish(|line| shared.observer.line(ctx, stream, line));
}

/// What the pumps of both streams write to.
#[derive(Debug)]
struct Shared {
    stdout: Capture,
    stderr: Capture,
    observer: Observer,
}

impl Shared {
    fn new(capture_bytes: usize, observer: Observer) -> Self {
        Shared {
            stdout: Capture::new(capture_bytes),
            stderr: Capture::new(capture_bytes),
            observer,
        }
    }

    fn capture(&mut self, stream: LogStream) -> &mut Capture {
        match stream {
            LogStream::Stdout => &mut self.stdout,
            LogStream::Stderr => &mut self.stderr,
        }
    }

    /// The output of a successful run.
    fn output(self) -> Value {
        let mut output = serde_json::Map::new();
        output.insert("exit_code".into(), 0.into());
        output.insert("stdout".into(), self.stdout.text().into());
        output.insert("stderr".into(), self.stderr.text().into());
        output.insert(
            "stdout_truncated_bytes".into(),
            self.stdout.truncated.into(),
        );
        output.insert(
            "stderr_truncated_bytes".into(),
            self.stderr.truncated.into(),
        );
        output.extend(self.observer.extracted);
        Value::Object(output)
    }
}

/// A bounded copy of a stream: its first and last bytes, and how many
/// were dropped between them.
#[derive(Debug)]
struct Capture {
    head_limit: usize,
    tail_limit: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    truncated: u64,
}

impl Capture {
    fn new(limit: usize) -> Self {
        Capture {
            head_limit: limit - limit / 2,
            tail_limit: limit / 2,
            head: Vec::new(),
            tail: VecDeque::new(),
            truncated: 0,
        }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        let room = self.head_limit - self.head.len();
        if room > 0 {
            let taken = room.min(bytes.len());
            self.head.extend_from_slice(&bytes[..taken]);
            bytes = &bytes[taken..];
        }
        if bytes.len() > self.tail_limit {
            let skipped = bytes.len() - self.tail_limit;
            self.truncated += (self.tail.len() + skipped) as u64;
            self.tail.clear();
            bytes = &bytes[skipped..];
        }
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.tail_limit);
        self.tail.drain(..overflow);
        self.truncated += overflow as u64;
        self.tail.extend(bytes);
    }

    /// The kept bytes as text, with a marker where bytes were dropped.
    fn text(&self) -> String {
        let mut bytes = self.head.clone();
        if self.truncated > 0 {
            bytes.extend_from_slice(
                format!("\n[... {} bytes truncated ...]\n", self.truncated).as_bytes(),
            );
        }
        bytes.extend(self.tail.iter());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Splits a byte stream into lines. `\n`, `\r\n` and a lone `\r` end a
/// line (progress bars redraw with `\r`); lines longer than
/// [`MAX_LINE_BYTES`] are split.
#[derive(Debug, Default)]
struct Lines {
    line: Vec<u8>,
    after_cr: bool,
}

impl Lines {
    fn push(&mut self, bytes: &[u8], mut emit: impl FnMut(String)) {
        for &byte in bytes {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    emit(self.take());
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(byte);
                    if self.line.len() >= MAX_LINE_BYTES {
                        emit(self.take());
                    }
                }
            }
        }
    }

    /// Emits the last line when the stream ended without a newline.
    fn finish(&mut self, mut emit: impl FnMut(String)) {
        if !self.line.is_empty() {
            emit(self.take());
        }
    }

    fn take(&mut self) -> String {
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        line
    }
}

/// A field of a JSON line: a JSON pointer.
#[derive(Debug, Clone)]
struct Field(String);

impl Field {
    /// `/a/b` is a pointer; anything else names a top-level field.
    fn new(spec: &str, what: &str) -> Result<Self, TaskError> {
        if spec.is_empty() {
            return Err(invalid(format!(
                "{what} must name a field (`percent_done`) or be a JSON pointer (`/stats/done`)"
            )));
        }
        if spec.starts_with('/') {
            Ok(Field(spec.to_owned()))
        } else {
            Ok(Field(format!(
                "/{}",
                spec.replace('~', "~0").replace('/', "~1")
            )))
        }
    }

    fn get<'v>(&self, json: &'v Value) -> Option<&'v Value> {
        json.pointer(&self.0)
    }
}

/// Compiled progress pattern.
#[derive(Debug, Clone)]
enum ProgressParser {
    Regex(Regex),
    Json {
        percent: Field,
        scale: f64,
        message: Option<Field>,
        counters: Vec<(String, Field)>,
    },
}

impl ProgressParser {
    fn new(pattern: &ProgressPattern) -> Result<Self, TaskError> {
        match pattern {
            ProgressPattern::Regex(source) => {
                let regex = compile(source, "`progress.regex`")?;
                if !regex.capture_names().any(|n| n == Some("percent")) {
                    return Err(invalid(
                        "`progress.regex` needs a named group `percent`, like `(?P<percent>[0-9.]+)%`",
                    ));
                }
                Ok(ProgressParser::Regex(regex))
            }
            ProgressPattern::Json(json) => {
                if !json.scale.is_finite() || json.scale <= 0.0 {
                    return Err(invalid("`progress.json.scale` must be a positive number"));
                }
                Ok(ProgressParser::Json {
                    percent: Field::new(&json.percent_field, "`progress.json.percent_field`")?,
                    scale: json.scale,
                    message: json
                        .message_field
                        .as_deref()
                        .map(|f| Field::new(f, "`progress.json.message_field`"))
                        .transpose()?,
                    counters: json
                        .counters
                        .iter()
                        .map(|(name, f)| {
                            Ok((
                                name.clone(),
                                Field::new(f, &format!("`progress.json.counters.{name}`"))?,
                            ))
                        })
                        .collect::<Result<_, TaskError>>()?,
                })
            }
        }
    }

    fn parse(&self, line: &str, json: Option<&Value>) -> Option<Progress> {
        match self {
            ProgressParser::Regex(regex) => {
                let captures = regex.captures(line)?;
                let percent: f32 = captures.name("percent")?.as_str().trim().parse().ok()?;
                let counters = regex
                    .capture_names()
                    .flatten()
                    .filter(|n| !matches!(*n, "percent" | "message"))
                    .filter_map(|n| Some((n.to_owned(), captures.name(n)?.as_str().parse().ok()?)))
                    .collect();
                Some(Progress {
                    percent: Some(clamp_percent(percent)?),
                    message: captures.name("message").map(|m| m.as_str().to_owned()),
                    counters,
                })
            }
            ProgressParser::Json {
                percent,
                scale,
                message,
                counters,
            } => {
                let json = json?;
                let percent = percent.get(json)?.as_f64()? * scale;
                let message = message.as_ref().and_then(|f| f.get(json)).map(|m| match m {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
                let counters = counters
                    .iter()
                    .filter_map(|(name, f)| Some((name.clone(), f.get(json)?.as_u64()?)))
                    .collect();
                Some(Progress {
                    percent: Some(clamp_percent(percent as f32)?),
                    message,
                    counters,
                })
            }
        }
    }
}

fn clamp_percent(percent: f32) -> Option<f32> {
    percent.is_finite().then(|| percent.clamp(0.0, 100.0))
}

fn compile(source: &str, what: &str) -> Result<Regex, TaskError> {
    Regex::new(source).map_err(|e| invalid(format!("{what} is not a valid regex: {e}")))
}

/// Compiled extractor.
#[derive(Debug, Clone)]
enum Extractor {
    Regex(Regex),
    Json(Field),
}

impl Extractor {
    fn extract(&self, line: &str, json: Option<&Value>) -> Option<Value> {
        match self {
            Extractor::Regex(regex) => {
                let captures = regex.captures(line)?;
                let value = captures
                    .name("value")
                    .or_else(|| captures.get(1))
                    .or_else(|| captures.get(0))?;
                Some(Value::String(value.as_str().to_owned()))
            }
            Extractor::Json(field) => field.get(json?).cloned(),
        }
    }
}

/// Reads progress and fields from output lines, and keeps the last lines
/// of stderr for the error message.
#[derive(Debug, Clone)]
struct Observer {
    progress: Option<ProgressParser>,
    extractors: Vec<(String, Extractor)>,
    extracted: serde_json::Map<String, Value>,
    reads_json: bool,
    stderr_tail: VecDeque<String>,
}

impl Observer {
    fn new(
        progress: Option<&ProgressPattern>,
        extract: &BTreeMap<String, Extract>,
    ) -> Result<Self, TaskError> {
        let progress = progress.map(ProgressParser::new).transpose()?;
        let extractors = extract
            .iter()
            .map(|(name, how)| {
                if RESERVED_FIELDS.contains(&name.as_str()) {
                    return Err(invalid(format!(
                        "`extract.{name}` would overwrite an output field of the executor: \
                         choose another name"
                    )));
                }
                let extractor = match how {
                    Extract::Regex(source) => {
                        Extractor::Regex(compile(source, &format!("`extract.{name}`"))?)
                    }
                    Extract::Json(field) => {
                        Extractor::Json(Field::new(field, &format!("`extract.{name}.json`"))?)
                    }
                };
                Ok((name.clone(), extractor))
            })
            .collect::<Result<Vec<_>, TaskError>>()?;
        let reads_json = matches!(progress, Some(ProgressParser::Json { .. }))
            || extractors
                .iter()
                .any(|(_, e)| matches!(e, Extractor::Json(_)));
        Ok(Observer {
            progress,
            extractors,
            extracted: serde_json::Map::new(),
            reads_json,
            stderr_tail: VecDeque::new(),
        })
    }

    /// Logs one line and reads it.
    fn line(&mut self, ctx: &Context, stream: LogStream, line: String) {
        if stream == LogStream::Stderr && !line.trim().is_empty() {
            if self.stderr_tail.len() == STDERR_TAIL_LINES {
                self.stderr_tail.pop_front();
            }
            self.stderr_tail
                .push_back(line.chars().take(STDERR_TAIL_LINE_CHARS).collect());
        }
        let json = if self.reads_json && line.trim_start().starts_with('{') {
            serde_json::from_str::<Value>(&line).ok()
        } else {
            None
        };
        if let Some(progress) = self
            .progress
            .as_ref()
            .and_then(|p| p.parse(&line, json.as_ref()))
        {
            ctx.report(progress);
        }
        for (name, extractor) in &self.extractors {
            if let Some(value) = extractor.extract(&line, json.as_ref()) {
                self.extracted.insert(name.clone(), value);
            }
        }
        ctx.log(stream, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines_of(chunks: &[&[u8]]) -> Vec<String> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for chunk in chunks {
            lines.push(chunk, |l| out.push(l));
        }
        lines.finish(|l| out.push(l));
        out
    }

    #[test]
    fn lines_end_at_newline_crlf_and_carriage_return() {
        assert_eq!(
            lines_of(&[b"a\nb\r", b"\nc\r10%\r20%", b"\n\nlast"]),
            ["a", "b", "c", "10%", "20%", "", "last"]
        );
    }

    #[test]
    fn an_endless_line_is_split() {
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        let lines = lines_of(&[&long]);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert_eq!(lines[1].len(), 10);
    }

    #[test]
    fn capture_keeps_head_and_tail_and_counts_the_rest() {
        let mut capture = Capture::new(10);
        for chunk in [&b"0123"[..], b"456789abc", b"defghij", b"k"] {
            capture.push(chunk);
        }
        assert_eq!(capture.head, b"01234");
        assert_eq!(capture.tail.iter().copied().collect::<Vec<_>>(), b"ghijk");
        assert_eq!(capture.truncated, 11);
        assert_eq!(capture.text(), "01234\n[... 11 bytes truncated ...]\nghijk");
    }

    #[test]
    fn capture_under_the_limit_is_exact() {
        let mut capture = Capture::new(10);
        capture.push(b"hello");
        capture.push(b"!");
        assert_eq!(capture.text(), "hello!");
        assert_eq!(capture.truncated, 0);
        let mut none = Capture::new(0);
        none.push(b"abc");
        assert_eq!(
            (none.text().as_str(), none.truncated),
            ("\n[... 3 bytes truncated ...]\n", 3)
        );
    }

    #[test]
    fn exactly_one_of_argv_and_shell_is_required() {
        for input in [
            json!({}),
            json!({"argv": ["true"], "shell": "true"}),
            json!({"argv": []}),
        ] {
            let error = Plan::new(&input).unwrap_err();
            assert_eq!(error.class, ErrorClass::InvalidInput, "{input}");
        }
        assert!(Plan::new(&json!({"shell": "true"})).is_ok());
    }

    #[test]
    fn a_progress_regex_without_percent_group_is_refused() {
        let error =
            Plan::new(&json!({"argv": ["true"], "progress": {"regex": "(\\d+)%"}})).unwrap_err();
        assert!(error.message.contains("percent"), "{}", error.message);
    }

    #[test]
    fn extract_accepts_the_short_and_tagged_forms() {
        let input: ShellInput = serde_json::from_value(json!({
            "argv": ["true"],
            "extract": {"a": "x(?P<value>\\d)", "b": {"regex": "y"}, "c": {"json": "/id"}},
        }))
        .unwrap();
        assert_eq!(input.extract["a"], Extract::Regex("x(?P<value>\\d)".into()));
        assert_eq!(input.extract["b"], Extract::Regex("y".into()));
        assert_eq!(input.extract["c"], Extract::Json("/id".into()));
        let error = Plan::new(&json!({"argv": ["true"], "extract": {"stdout": "x"}})).unwrap_err();
        assert_eq!(error.class, ErrorClass::InvalidInput);
    }

    #[test]
    fn regex_progress_reads_percent_message_and_counters() {
        let parser = ProgressParser::new(&ProgressPattern::Regex(
            r"(?P<percent>[0-9.]+)% (?P<files>\d+) files (?P<message>.*)".into(),
        ))
        .unwrap();
        let progress = parser.parse("42.5% 7 files copying a.txt", None).unwrap();
        assert_eq!(progress.percent, Some(42.5));
        assert_eq!(progress.message.as_deref(), Some("copying a.txt"));
        assert_eq!(progress.counters["files"], 7);
        assert!(parser.parse("no progress here", None).is_none());
        let over = parser.parse("250% 1 files x", None).unwrap();
        assert_eq!(over.percent, Some(100.0));
    }

    #[test]
    fn json_progress_scales_and_reads_fields() {
        let parser = ProgressParser::new(&ProgressPattern::Json(JsonProgress {
            percent_field: "percent_done".into(),
            scale: 100.0,
            message_field: Some("message_type".into()),
            counters: [("files".to_owned(), "/files_done".to_owned())].into(),
        }))
        .unwrap();
        let line = json!({"message_type": "status", "percent_done": 0.25, "files_done": 3});
        let progress = parser.parse("", Some(&line)).unwrap();
        assert_eq!(progress.percent, Some(25.0));
        assert_eq!(progress.message.as_deref(), Some("status"));
        assert_eq!(progress.counters["files"], 3);
        assert!(
            parser
                .parse("", Some(&json!({"message_type": "summary"})))
                .is_none()
        );
    }

    #[test]
    fn exit_policy_lists_override_the_retryable_default() {
        let default = ExitPolicy::default();
        assert!(default.retryable(1));
        let permanent = ExitPolicy {
            permanent: vec![2],
            retryable: vec![],
        };
        assert!(!permanent.retryable(2));
        assert!(permanent.retryable(1));
        // A listed code is the task saying so: class `permanent`, not `unknown`.
        assert_eq!(permanent.class(2), ErrorClass::Permanent);
        assert_eq!(permanent.class(1), ErrorClass::Unknown);
        let only = ExitPolicy {
            permanent: vec![],
            retryable: vec![75],
        };
        assert!(only.retryable(75));
        assert!(!only.retryable(1));
    }
}
