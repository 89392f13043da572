//! One nats-server process: spawn it from a config file, wait until it is ready, signal it.
//!
//! Shared by [`NatsServer`](crate::NatsServer) and [`Cluster`](crate::Cluster) nodes. It is
//! synchronous (`std::process`) so that `Drop` can kill and reap without an async runtime.

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;
use crate::config::ServerConfig;
use crate::probe::{self, Poll};

/// How long a server may take to become ready, by default.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a graceful stop may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Set it to keep the temporary directories (configs, logs, stores) after drop.
pub(crate) const KEEP_ENV: &str = "RUNLOG_TESTKIT_KEEP";

/// How many lines of the server's log an error shows.
const LOG_TAIL_LINES: usize = 20;

/// How many times a start is tried with fresh ports: ports picked by binding port 0 can be taken
/// by someone else before the server binds them.
pub(crate) const START_ATTEMPTS: usize = 5;

#[derive(Debug)]
pub(crate) struct Process {
    binary: PathBuf,
    /// Where the config file and the log live.
    dir: PathBuf,
    config: ServerConfig,
    child: Option<Child>,
}

impl Process {
    /// Writes the config file into `dir`; does not start anything yet.
    pub(crate) fn new(binary: PathBuf, dir: PathBuf, config: ServerConfig) -> Result<Self, Error> {
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
        let process = Process {
            binary,
            dir,
            config,
            child: None,
        };
        let path = process.config_path();
        std::fs::write(&path, process.config.render())
            .map_err(Error::io(format!("write {}", path.display())))?;
        Ok(process)
    }

    pub(crate) fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.join("nats-server.conf")
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.join("nats-server.log")
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.config.port)
    }

    pub(crate) fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.config.http_port)
    }

    /// How errors and logs name this server.
    pub(crate) fn label(&self) -> String {
        match &self.config.server_name {
            Some(name) => format!("nats-server {name} at {}", self.url()),
            None => format!("nats-server at {}", self.url()),
        }
    }

    /// Starts the process (killing a previous one first). Does not wait for readiness.
    pub(crate) fn spawn(&mut self) -> Result<(), Error> {
        self.kill();
        let log = self.log_path();
        let open_log =
            || -> std::io::Result<File> { OpenOptions::new().create(true).append(true).open(&log) };
        let stdout = open_log().map_err(Error::io(format!("open {}", log.display())))?;
        let stderr = stdout
            .try_clone()
            .map_err(Error::io(format!("open {}", log.display())))?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|source| Error::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        tracing::debug!(server = %self.label(), pid = child.id(), "started nats-server");
        self.child = Some(child);
        Ok(())
    }

    /// One readiness check: still running, client port open, `GET /healthz` is 200.
    ///
    /// Plain `/healthz` rather than `?js-enabled-only=true`: the latter is 200 as soon as
    /// JetStream is configured, while plain `/healthz` also waits for the meta leader
    /// (clusters) and for the streams on this server to be recovered and current.
    pub(crate) fn check_ready(&mut self) -> Result<(), Poll<Error>> {
        if let Some(error) = self.exited() {
            return Err(Poll::Stop(error));
        }
        if !probe::accepts(self.config.port) {
            return Err(Poll::Pending(format!(
                "client port {} does not accept connections",
                self.config.port
            )));
        }
        match probe::get(self.config.http_port, "/healthz") {
            Ok(response) if response.status == 200 => Ok(()),
            Ok(response) => Err(Poll::Pending(format!(
                "GET {}/healthz: {} {}",
                self.monitor_url(),
                response.status,
                response.body.trim()
            ))),
            Err(error) => Err(Poll::Pending(format!(
                "GET {}/healthz: {error}",
                self.monitor_url()
            ))),
        }
    }

    /// Waits for [`Process::check_ready`] until `deadline`.
    pub(crate) fn wait_ready(&mut self, started: Instant, deadline: Instant) -> Result<(), Error> {
        let outcome = probe::poll_until(deadline, || self.check_ready());
        self.settle(outcome, started)
    }

    /// Turns a polling outcome into this crate's error.
    pub(crate) fn settle<T>(
        &mut self,
        outcome: Result<T, Poll<Error>>,
        started: Instant,
    ) -> Result<T, Error> {
        match outcome {
            Ok(value) => {
                tracing::debug!(server = %self.label(), after = ?started.elapsed(), "nats-server ready");
                Ok(value)
            }
            Err(Poll::Stop(error)) => Err(error),
            Err(Poll::Pending(last_check)) => Err(self.not_ready(started.elapsed(), last_check)),
        }
    }

    pub(crate) fn not_ready(&self, waited: Duration, last_check: String) -> Error {
        Error::NotReady {
            server: self.label(),
            waited,
            last_check,
            log: self.log_path(),
            log_tail: self.log_tail(),
        }
    }

    /// `Some(Error::Exited)` if the process has exited (and reaps it).
    fn exited(&mut self) -> Option<Error> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().ok()??;
        self.child = None;
        Some(Error::Exited {
            server: self.label(),
            status,
            log: self.log_path(),
            log_tail: self.log_tail(),
        })
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub(crate) fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends SIGKILL without waiting; [`Process::reap`] waits. Killing several processes
    /// first and reaping them afterwards lets them die in parallel.
    pub(crate) fn signal_kill(&mut self) {
        if let Some(child) = &mut self.child {
            // Fails only if the process was already reaped, which `child` being set rules out.
            let _ = child.kill();
        }
    }

    /// Waits for the process to exit, after a signal.
    pub(crate) fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
            tracing::debug!(server = %self.label(), "nats-server exited");
        }
    }

    /// SIGKILL, then wait for the exit.
    pub(crate) fn kill(&mut self) {
        self.signal_kill();
        self.reap();
    }

    /// SIGTERM (nats-server then shuts down cleanly), wait with a deadline, SIGKILL if it
    /// does not exit in time.
    pub(crate) fn stop(&mut self) {
        let Some(pid) = self.pid() else { return };
        let terminated = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if terminated {
            let deadline = Instant::now() + STOP_TIMEOUT;
            let _ = probe::poll_until(deadline, || {
                if self.is_running() {
                    Err(Poll::<()>::Pending(String::new()))
                } else {
                    Ok(())
                }
            });
        }
        self.kill();
    }

    /// The last lines of the server's log.
    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.log_path(), LOG_TAIL_LINES)
    }
}

/// The last lines of a log, without the warnings our own `/healthz` polls cause.
fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text
                .lines()
                .filter(|line| !line.contains("Healthcheck failed"))
                .collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(cannot read the log: {error})"),
    }
}

/// Unless `RUNLOG_TESTKIT_KEEP` is set, in which case the directory is kept for a post-mortem
/// and its path printed.
pub(crate) fn keep_if_asked(dir: &mut tempfile::TempDir) {
    if std::env::var_os(KEEP_ENV).is_some_and(|value| !value.is_empty()) {
        dir.disable_cleanup(true);
        eprintln!(
            "runlog-localnats: kept {} ({KEEP_ENV} is set)",
            dir.path().display()
        );
    }
}

/// `n` distinct ports that were free a moment ago. All listeners are held until every port is
/// picked, so the ports differ from one another.
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>, Error> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind(probe::loopback(0)))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(Error::io("bind a free port on 127.0.0.1"))?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|addr| addr.port()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(Error::io("read the port of a listener"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "a\nb\n[1] [WRN] Healthcheck failed: \"x\"\nc\n").unwrap();
        assert_eq!(log_tail(&path, 2), "b\nc");
        assert_eq!(log_tail(&path, 10), "a\nb\nc");
    }

    #[test]
    fn free_ports_are_distinct() {
        let mut ports = free_ports(9).unwrap();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 9);
    }
}
