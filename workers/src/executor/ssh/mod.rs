//! The `ssh` executor: one command per attempt on a remote host, over a
//! connection kept open across tasks.
//!
//! The command runs as `exec sh -c '…'` whatever the user's login shell,
//! and first writes its shell's pid to stderr (a line the executor takes
//! out of the output). sshd makes that shell the leader of a new session
//! and process group, so the pid names the command's whole process group:
//! on cancellation or deadline the executor opens a second session on the
//! same connection and runs `kill -TERM -- -<pgid>` there, then
//! `kill -KILL` after the grace period, and the grandchildren of a script
//! die too. Output is streamed line by line to the attempt's log and read
//! for progress and extracted fields exactly as `shell` does.
//!
//! [`SshInput`] is the input format; `docs/executors.md` describes it for
//! users, and `docs/decisions.md` says why this is built on `russh` rather
//! than on the system's OpenSSH client.
//!
//! - `input`: the format as users write it;
//! - `hostkey`: which host keys a task trusts;
//! - `pool`: the connections, their caps, and how connecting fails;
//! - `remote`: the command line sent, and the pid line read back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use runlog_events::event::LogStream;
use runlog_events::{ErrorClass, TaskError};
use russh::ChannelMsg;
use russh::keys::{PrivateKey, decode_secret_key};

use crate::executor::mask::mask;
use crate::executor::shell::{DEFAULT_KILL_GRACE_MS, output_rules};
use crate::executor::shell::{Exit, ExitPolicy, Lines, Observer, Shared, exit_result};
use crate::executor::stop::{StopReason, stop_requested};
use crate::handler::{Context, Handler, HandlerResult};

mod hostkey;
mod input;
mod pool;
mod remote;

pub use input::SshInput;
pub use pool::PoolLimits;

use hostkey::HostKeys;
use input::invalid;
use pool::{Lease, Pool, Target, connect_within, network};
use remote::PidLine;

/// Connecting, the key exchange and authentication, when the input does
/// not say.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// How long the executor waits for the remote side to close the session
/// after `SIGKILL`.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(2);
/// Decoded keys kept, so an encrypted key is not decrypted per attempt.
const KEY_CACHE: usize = 64;

/// Runs `ssh` tasks. Holds the connections it keeps open; clones share
/// them.
#[derive(Debug, Clone)]
pub struct SshExecutor {
    pool: Pool,
    keys: Arc<Mutex<KeyCache>>,
}

/// Decoded keys by (key text, passphrase).
type KeyCache = HashMap<(String, Option<String>), Arc<PrivateKey>>;

impl Default for SshExecutor {
    fn default() -> Self {
        Self::new()
    }
}

impl SshExecutor {
    /// The executor, with the default [`PoolLimits`].
    pub fn new() -> Self {
        Self::with_limits(PoolLimits::default())
    }

    /// The executor, keeping connections within `limits`.
    pub fn with_limits(limits: PoolLimits) -> Self {
        SshExecutor {
            pool: Pool::new(limits),
            keys: Arc::default(),
        }
    }

    /// The private key named by the input, decoded (and decrypted) once.
    fn key(&self, input: &SshInput, ctx: &Context) -> Result<Arc<PrivateKey>, TaskError> {
        let missing = |field: &str, name: &str| {
            invalid(format!(
                "`{field}` names {name:?}, which the task does not have: give the task the \
                 key as a secret or sealed env value of that name"
            ))
        };
        let text = ctx
            .env()
            .get(&input.key)
            .ok_or_else(|| missing("key", &input.key))?;
        let passphrase = match &input.passphrase {
            Some(name) => Some(
                ctx.env()
                    .get(name)
                    .ok_or_else(|| missing("passphrase", name))?
                    .clone(),
            ),
            None => None,
        };
        let cache_key = (text.clone(), passphrase.clone());
        let mut cache = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = cache.get(&cache_key) {
            return Ok(key.clone());
        }
        let secrets: Vec<&str> = ctx.env().values().map(String::as_str).collect();
        let key = decode_secret_key(text, passphrase.as_deref()).map_err(|error| {
            let error = mask(&error.to_string(), secrets.iter().copied());
            match &input.passphrase {
                Some(name) => TaskError::new(
                    ErrorClass::Permission,
                    format!(
                        "cannot decrypt the key in `{}` with the passphrase in `{name}` \
                         (wrong passphrase?): {error}",
                        input.key
                    ),
                ),
                None => invalid(format!(
                    "cannot read the private key in `{}` (OpenSSH or PEM, ed25519, ECDSA or \
                     RSA; an encrypted key needs `passphrase`): {error}",
                    input.key
                )),
            }
        })?;
        let key = Arc::new(key);
        if cache.len() >= KEY_CACHE {
            cache.clear();
        }
        cache.insert(cache_key, key.clone());
        Ok(key)
    }

    /// A session on a connection to the target: a pooled connection whose
    /// session fails is dropped from the pool and one fresh connection is
    /// tried.
    async fn session(
        &self,
        target: &Target,
    ) -> Result<(Lease, russh::Channel<russh::client::Msg>), TaskError> {
        let mut last = None;
        for _ in 0..2 {
            let lease = self.pool.lease(target).await?;
            match lease.connection().handle().channel_open_session().await {
                Ok(channel) => return Ok((lease, channel)),
                Err(error) => {
                    lease.discard();
                    last = Some(error);
                }
            }
        }
        Err(network(format!(
            "cannot open a session on the connection to {}: {}",
            target.name(),
            last.map_or_else(String::new, |e| e.to_string())
        )))
    }
}

impl Handler for SshExecutor {
    async fn run(&self, ctx: Context) -> HandlerResult {
        let input: SshInput =
            serde_json::from_value(ctx.input().clone()).map_err(|e| invalid(e.to_string()))?;
        Plan::check_target(&input)?;
        let plan = Plan::new(&input, self.key(&input, &ctx)?)?;
        if input.probe {
            return tokio::select! {
                probed = plan.probe() => probed.map_err(|e| masked(e, &ctx)),
                reason = stop_requested(&ctx) => Err(reason.error(format!(
                    "{}: the attempt was stopped while probing {}",
                    reason_word(reason),
                    plan.target.name()
                ))),
            };
        }
        if let Some(reason) = StopReason::now(&ctx) {
            return Err(reason.error(format!(
                "{}: the attempt was stopped before connecting to {}",
                reason_word(reason),
                plan.target.name()
            )));
        }
        let opened = tokio::select! {
            opened = self.session(&plan.target) => opened,
            reason = stop_requested(&ctx) => {
                return Err(reason.error(format!(
                    "{}: the attempt was stopped while connecting to {}",
                    reason_word(reason),
                    plan.target.name()
                )));
            }
        };
        let (lease, channel) = opened.map_err(|e| masked(e, &ctx))?;
        plan.run(&ctx, &lease, channel)
            .await
            .map_err(|e| masked(e, &ctx))
    }
}

fn masked(mut error: TaskError, ctx: &Context) -> TaskError {
    error.message = mask(&error.message, ctx.env().values().map(String::as_str));
    error
}

fn reason_word(reason: StopReason) -> &'static str {
    match reason {
        StopReason::Cancelled => "cancelled",
        StopReason::Timeout => "ran past the attempt deadline",
    }
}

/// A validated input, ready to run.
struct Plan {
    target: Target,
    command: String,
    name: String,
    stdin: Option<String>,
    capture_bytes: usize,
    observer: Observer,
    exits: ExitPolicy,
    grace: Duration,
    command_timeout: Option<Duration>,
}

impl Plan {
    /// Refuses an input without an address before anything is looked up.
    fn check_target(input: &SshInput) -> Result<(), TaskError> {
        if input.host.is_empty()
            && let Some(server) = &input.server
        {
            return Err(invalid(format!(
                "the input names server {server:?} but holds no address: the engine's intake \
                 (the HTTP and NATS doors) resolves servers; a task appended to the log \
                 directly gives `host`, `user` and `key` itself"
            )));
        }
        for (field, value) in [
            ("host", &input.host),
            ("user", &input.user),
            ("key", &input.key),
        ] {
            if value.is_empty() {
                return Err(invalid(format!(
                    "`{field}` is required (or name a `server`)"
                )));
            }
        }
        Ok(())
    }

    fn new(input: &SshInput, key: Arc<PrivateKey>) -> Result<Self, TaskError> {
        let (name, command) = if input.probe {
            if input.argv.is_some() || input.shell.is_some() {
                return Err(invalid(
                    "`probe` runs its own command: leave out `argv` and `shell`",
                ));
            }
            let mut probe = input.clone();
            probe.argv = Some(vec!["uname".into(), "-a".into()]);
            remote::command(&probe)?
        } else {
            remote::command(input)?
        };
        let (capture_bytes, exits) = output_rules(
            input.capture_bytes,
            &input.permanent_exit_codes,
            &input.retryable_exit_codes,
        )
        .map_err(invalid)?;
        let observer = Observer::new(input.progress.as_ref(), &input.extract)
            .map_err(|e| invalid(e.message.trim_start_matches("shell input: ")))?;
        Ok(Plan {
            target: Target {
                host: input.host.clone(),
                port: input.port,
                user: input.user.clone(),
                key,
                host_keys: Arc::new(HostKeys::from_input(input)?),
                connect_timeout: Duration::from_millis(
                    input
                        .connect_timeout_ms
                        .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS)
                        .max(1),
                ),
            },
            name,
            command,
            stdin: input.stdin.clone(),
            capture_bytes,
            observer,
            exits,
            grace: Duration::from_millis(input.kill_grace_ms.unwrap_or(DEFAULT_KILL_GRACE_MS)),
            command_timeout: input.command_timeout_ms.map(Duration::from_millis),
        })
    }

    /// Runs the command on `channel` to its end.
    async fn run(
        &self,
        ctx: &Context,
        lease: &Lease,
        mut channel: russh::Channel<russh::client::Msg>,
    ) -> HandlerResult {
        let lost = |what: &str, error: russh::Error| {
            lease.discard();
            network(format!(
                "the connection to {} failed {what}: {error}",
                self.target.name()
            ))
        };
        channel
            .exec(true, self.command.as_bytes())
            .await
            .map_err(|e| lost("starting the command", e))?;
        if let Some(stdin) = &self.stdin {
            // A command that exits without reading its input is not an error.
            let _ = channel.data_bytes(stdin.clone().into_bytes()).await;
        }
        let _ = channel.eof().await;

        let mut output = Output::new(self.capture_bytes, self.observer.clone());
        let mut exit = None;
        let stop = stop_requested(ctx);
        tokio::pin!(stop);
        let command_timeout = async {
            match self.command_timeout {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(command_timeout);
        let mut stopping: Option<Stopping> = None;
        loop {
            let deadline = stopping.as_ref().map(|s| s.next);
            let step = tokio::select! {
                message = channel.wait() => Step::Message(message),
                reason = &mut stop, if stopping.is_none() => Step::Stop(reason),
                () = &mut command_timeout, if stopping.is_none() => Step::Stop(StopReason::Timeout),
                () = sleep_until(deadline), if deadline.is_some() => Step::Escalate,
            };
            match step {
                Step::Message(None | Some(ChannelMsg::Close)) => break,
                Step::Message(Some(message)) => {
                    if let Some(pgid) = output.message(ctx, message, &mut exit)
                        && let Some(stopping) = &mut stopping
                        && !stopping.termed
                    {
                        // The stop came before the pid line did.
                        stopping.termed = self.signal(lease, pgid, "TERM").await;
                    }
                }
                Step::Stop(reason) => {
                    let termed = match output.pgid {
                        Some(pgid) => self.signal(lease, pgid, "TERM").await,
                        None => false,
                    };
                    stopping = Some(Stopping {
                        reason,
                        termed,
                        killed: false,
                        next: tokio::time::Instant::now() + self.grace,
                    });
                }
                Step::Escalate => {
                    let Some(stopping) = &mut stopping else { break };
                    if stopping.killed {
                        break;
                    }
                    if let Some(pgid) = output.pgid {
                        self.signal(lease, pgid, "KILL").await;
                    }
                    stopping.killed = true;
                    stopping.next = tokio::time::Instant::now() + DRAIN_AFTER_KILL;
                }
            }
        }
        output.finish(ctx);
        if let Some(stopping) = stopping {
            return Err(self.stopped(&stopping, output.pgid));
        }
        match exit {
            Some(exit) => exit_result(
                &self.name,
                exit,
                output.shared,
                &self.exits,
                ctx.env().values(),
            ),
            None => {
                lease.discard();
                Err(network(format!(
                    "the connection to {} was lost while {} ran; it may have run in part",
                    self.target.name(),
                    self.name
                )))
            }
        }
    }

    /// Checks the connection on one of its own: the time to connect (TCP,
    /// key exchange, authentication), then to run `uname -a`.
    async fn probe(&self) -> HandlerResult {
        let began = tokio::time::Instant::now();
        let (handle, host_key) = connect_within(&self.target).await?;
        let connect_ms = began.elapsed().as_secs_f64() * 1000.0;
        let began = tokio::time::Instant::now();
        let failed = |e: russh::Error| {
            network(format!(
                "the probe's session on {} failed: {e}",
                self.target.name()
            ))
        };
        let mut channel = handle.channel_open_session().await.map_err(failed)?;
        channel.exec(true, "uname -a").await.map_err(failed)?;
        let (mut stdout, mut status) = (Vec::new(), None);
        while let Some(message) = channel.wait().await {
            match message {
                ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                _ => {}
            }
        }
        let latency_ms = began.elapsed().as_secs_f64() * 1000.0;
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, "probe done", "en")
            .await;
        let uname = String::from_utf8_lossy(&stdout).trim().to_owned();
        Ok(serde_json::json!({
            "reachable": true,
            "authenticated": true,
            "host_key": host_key,
            "connect_ms": (connect_ms * 10.0).round() / 10.0,
            "latency_ms": (latency_ms * 10.0).round() / 10.0,
            "uname": uname,
            "uname_exit_code": status,
        }))
    }

    /// Sends `SIGNAL` to the remote process group over a second session.
    /// Whether it was delivered.
    async fn signal(&self, lease: &Lease, pgid: u32, signal: &str) -> bool {
        let send = async {
            let channel = lease
                .connection()
                .handle()
                .channel_open_session()
                .await
                .ok()?;
            channel.exec(true, remote::kill(pgid, signal)).await.ok()?;
            let mut channel = channel;
            let mut status = None;
            while let Some(message) = channel.wait().await {
                if let ChannelMsg::ExitStatus { exit_status } = message {
                    status = Some(exit_status);
                }
            }
            status
        };
        match tokio::time::timeout(DRAIN_AFTER_KILL, send).await {
            Ok(Some(0)) => true,
            Ok(status) => {
                tracing::warn!(host = %self.target.name(), pgid, signal, ?status,
                    "the remote kill did not succeed");
                false
            }
            Err(_) => false,
        }
    }

    fn stopped(&self, stopping: &Stopping, pgid: Option<u32>) -> TaskError {
        let how = match (pgid, stopping.termed, stopping.killed) {
            (None, _, _) => format!(
                "{} never reported its process group, so nothing was signalled on the host",
                self.name
            ),
            (Some(pgid), _, false) => {
                format!("stopped {} (process group {pgid}) with SIGTERM", self.name)
            }
            (Some(pgid), _, true) => format!(
                "stopped {} (process group {pgid}) with SIGTERM, then SIGKILL after {} ms",
                self.name,
                self.grace.as_millis()
            ),
        };
        stopping.reason.error(format!(
            "{} on {}: {how}",
            reason_word(stopping.reason),
            self.target.name()
        ))
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

enum Step {
    Message(Option<ChannelMsg>),
    Stop(StopReason),
    Escalate,
}

/// An attempt being stopped: what was sent, and when to go on.
struct Stopping {
    reason: StopReason,
    termed: bool,
    killed: bool,
    next: tokio::time::Instant,
}

/// The command's output as it arrives: both streams captured, split into
/// lines, logged and observed, with the pid line taken out of stderr.
struct Output {
    shared: Shared,
    stdout: Lines,
    stderr: Lines,
    pid_line: PidLine,
    pgid: Option<u32>,
}

impl Output {
    fn new(capture_bytes: usize, observer: Observer) -> Self {
        Output {
            shared: Shared::new(capture_bytes, observer),
            stdout: Lines::default(),
            stderr: Lines::default(),
            pid_line: PidLine::default(),
            pgid: None,
        }
    }

    /// Takes one message of the session; the process group when this
    /// message revealed it.
    fn message(
        &mut self,
        ctx: &Context,
        message: ChannelMsg,
        exit: &mut Option<Exit>,
    ) -> Option<u32> {
        match message {
            ChannelMsg::Data { data } => {
                self.push(ctx, LogStream::Stdout, &data);
                None
            }
            ChannelMsg::ExtendedData { data, ext: 1 } => {
                let mut passed = Vec::new();
                let found = self
                    .pid_line
                    .push(&data, |bytes| passed.extend_from_slice(bytes));
                self.push(ctx, LogStream::Stderr, &passed);
                if found.is_some() {
                    self.pgid = found;
                }
                found
            }
            ChannelMsg::ExitStatus { exit_status } => {
                *exit = Some(Exit::Code(exit_status as i32));
                None
            }
            ChannelMsg::ExitSignal { signal_name, .. } => {
                *exit = Some(Exit::Signal(format!("SIG{signal_name:?}")));
                None
            }
            _ => None,
        }
    }

    fn push(&mut self, ctx: &Context, stream: LogStream, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.shared.capture(stream).push(bytes);
        let lines = match stream {
            LogStream::Stdout => &mut self.stdout,
            LogStream::Stderr => &mut self.stderr,
        };
        let observer = &mut self.shared.observer;
        lines.push(bytes, |line| observer.line(ctx, stream, line));
    }

    fn finish(&mut self, ctx: &Context) {
        let mut rest = Vec::new();
        self.pid_line.finish(|bytes| rest.extend_from_slice(bytes));
        self.push(ctx, LogStream::Stderr, &rest);
        let observer = &mut self.shared.observer;
        self.stdout
            .finish(|line| observer.line(ctx, LogStream::Stdout, line));
        self.stderr
            .finish(|line| observer.line(ctx, LogStream::Stderr, line));
    }
}
