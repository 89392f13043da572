//! The program as a process: started as the leader of its own group, its
//! pipes pumped into the capture and the observer, its group stopped with
//! `SIGTERM`, then `SIGKILL`, when the attempt must stop; what it used
//! (CPU time, peak memory: see `usage`) counted on the context.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::pin;
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::FusedFuture;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use runlog_events::event::LogStream;
use runlog_events::{ErrorClass, TaskError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};

use super::capture::{Lines, Shared};
use super::usage::Meter;
use crate::executor::stop::{StopReason, stop_requested};
use crate::handler::Context;

/// How long to wait for the pipes or the leader after `SIGKILL`: only a
/// process that escaped the group (`setsid`) can hold them longer.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(2);

/// What to start, and how long it gets to stop.
#[derive(Debug)]
pub(super) struct Program {
    /// How errors name the program.
    pub(super) name: String,
    pub(super) executable: String,
    pub(super) args: Vec<String>,
    pub(super) env: BTreeMap<String, String>,
    pub(super) cwd: Option<PathBuf>,
    pub(super) stdin: Option<String>,
    /// Whether the program gets the worker's environment and the task's
    /// (sealed values and secrets); without, it gets `env` only.
    pub(super) task_env: bool,
    /// Between `SIGTERM` and `SIGKILL`.
    pub(super) grace: Duration,
}

/// Starts the program as the leader of a new process group.
pub(super) async fn spawn(program: &Program, ctx: &Context) -> Result<Child, TaskError> {
    if let Some(cwd) = &program.cwd
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
    let mut command = Command::new(&program.executable);
    if !program.task_env {
        command.env_clear();
    }
    if let Some(user) = ctx.run_as() {
        user.apply(&mut command);
    }
    if program.task_env {
        command.envs(ctx.env());
    }
    // The process joins the execution's trace (the `TRACEPARENT`
    // convention of OpenTelemetry's environment carriers).
    if let Some(traceparent) = ctx.traceparent() {
        command.env("TRACEPARENT", traceparent.as_str());
    }
    command
        .args(&program.args)
        .envs(&program.env)
        .stdin(if program.stdin.is_some() {
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
    if let Some(cwd) = &program.cwd {
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
        TaskError::new(
            class,
            format!("cannot start {} ({error}){hint}", program.name),
        )
    })
}

/// How the program's run ended.
#[derive(Debug)]
pub(super) enum Ended {
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
pub(super) async fn supervise(
    mut child: Child,
    program: &Program,
    ctx: &Context,
    shared: &Mutex<Shared>,
) -> Ended {
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
            feed(stdin, program.stdin.as_deref()),
        );
    };
    let mut io = pin!(io.fuse());
    let mut stop = pin!(stop_requested(ctx));
    // Exited: what it used, read before it is reaped, then its status.
    let meter = Meter::start(pid);
    let exited = async {
        let usage = meter.exited().await;
        (usage, child.wait().await)
    };
    let mut exited = pin!(exited.fuse());
    let mut usage = None;

    let first = loop {
        tokio::select! {
            (measured, status) = &mut exited => {
                usage = measured;
                break Ok(status);
            }
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
                let _ = tokio::time::timeout(program.grace, settle(&mut io)).await;
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
                usage = (&mut exited).await.0;
                settle(&mut io).await;
            };
            let escalated = tokio::time::timeout(program.grace, ended).await.is_err();
            if escalated {
                group.signal(Signal::SIGKILL);
                if !exited.is_terminated()
                    && let Ok((measured, _)) =
                        tokio::time::timeout(DRAIN_AFTER_KILL, &mut exited).await
                {
                    usage = measured;
                }
            }
            Ended::Stopped { reason, escalated }
        }
    };
    let _ = tokio::time::timeout(DRAIN_AFTER_KILL, settle(&mut io)).await;
    group.disarm();
    if let Some(u) = usage {
        ctx.used_process(u.user, u.system, u.peak_rss_bytes);
    }
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
