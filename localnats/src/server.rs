//! A single nats-server with JetStream, owned by the caller and killed when dropped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::config::ServerConfig;
use crate::process::{self, Process, READY_TIMEOUT, START_ATTEMPTS};
use crate::{Error, nats_server_binary};

/// JetStream limits large enough for tests and benchmarks, small enough for a laptop.
pub(crate) const MAX_FILE_STORE: u64 = 4 << 30;
pub(crate) const MAX_MEMORY_STORE: u64 = 512 << 20;

/// A running nats-server with JetStream on `127.0.0.1`.
///
/// Its configuration file and log live in a temporary directory; so does its JetStream store
/// unless [`NatsServerBuilder::store_dir`] names one. Dropping the server kills the process,
/// waits for it to exit and deletes the temporary directory (set `RUNLOG_TESTKIT_KEEP=1` to
/// keep it for a post-mortem).
#[derive(Debug)]
pub struct NatsServer {
    process: Process,
    store_dir: PathBuf,
    ready_timeout: Duration,
    /// Holds the config, the log and the default store; deleted on drop.
    temp: TempDir,
}

impl NatsServer {
    /// Starts a server with JetStream on a free port and a temporary store, and returns once
    /// it is ready: it accepts clients and its `/healthz` is ok.
    ///
    /// # Errors
    ///
    /// When no nats-server binary is found ([`Error::NotFound`]), it cannot be executed, or it
    /// does not become ready within 10 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::{BufRead, BufReader};
    /// use std::net::TcpStream;
    ///
    /// let server = runlog_localnats::NatsServer::start()?;
    /// assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
    ///
    /// // A NATS server greets every client with an INFO line.
    /// let mut greeting = String::new();
    /// BufReader::new(TcpStream::connect(("127.0.0.1", server.port()))?).read_line(&mut greeting)?;
    /// assert!(greeting.starts_with("INFO "));
    /// assert!(greeting.contains(r#""jetstream":true"#));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn start() -> Result<NatsServer, Error> {
        NatsServer::builder().start()
    }

    /// A builder to choose the port, the store directory and more.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.process.url()
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.process.config().port
    }

    /// The monitoring URL, `http://127.0.0.1:PORT` (`/varz`, `/jsz`, `/healthz`, ...).
    pub fn monitor_url(&self) -> String {
        self.process.monitor_url()
    }

    /// The JetStream store directory (nats-server keeps its data in `jetstream/` below it).
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The server's log (stdout and stderr of every run), deleted on drop.
    pub fn log_path(&self) -> PathBuf {
        self.process.log_path()
    }

    /// The process id, or `None` after [`kill`](Self::kill) or [`stop`](Self::stop).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Kills the server with SIGKILL, as a crash would, and waits for it to exit. The store
    /// keeps whatever the server had written.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Stops the server gracefully with SIGTERM and waits for it to exit; kills it if it has
    /// not exited after 10 s.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Kills the server if it runs, then starts it again on the same port with the same store,
    /// and returns once it is ready.
    ///
    /// # Errors
    ///
    /// When the server cannot be started again or does not become ready within the timeout;
    /// for example when another process took its port in the meantime.
    pub fn restart(&mut self) -> Result<(), Error> {
        let started = Instant::now();
        self.process.spawn()?;
        self.process
            .wait_ready(started, started + self.ready_timeout)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.process.kill();
        process::keep_if_asked(&mut self.temp);
        // The `TempDir` is deleted when the fields drop, after the process is gone.
    }
}

/// Options for [`NatsServer`]; start with [`NatsServer::builder`].
#[derive(Debug, Clone)]
pub struct NatsServerBuilder {
    port: Option<u16>,
    store_dir: Option<PathBuf>,
    max_payload: Option<u32>,
    max_file_store: u64,
    max_memory_store: u64,
    config_lines: Vec<String>,
    ready_timeout: Duration,
}

impl Default for NatsServerBuilder {
    fn default() -> Self {
        NatsServerBuilder {
            port: None,
            store_dir: None,
            max_payload: None,
            max_file_store: MAX_FILE_STORE,
            max_memory_store: MAX_MEMORY_STORE,
            config_lines: Vec::new(),
            ready_timeout: READY_TIMEOUT,
        }
    }
}

impl NatsServerBuilder {
    /// The client port; a free one by default.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Keep the JetStream store in this directory, which the caller owns: it is created if
    /// missing and not deleted on drop. By default the store is in a temporary directory.
    pub fn store_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.store_dir = Some(dir.into());
        self
    }

    /// The largest message the server accepts, in bytes (nats-server's default is 1 MiB).
    pub fn max_payload(mut self, bytes: u32) -> Self {
        self.max_payload = Some(bytes);
        self
    }

    /// The JetStream file storage limit in bytes (4 GiB by default).
    pub fn max_file_store(mut self, bytes: u64) -> Self {
        self.max_file_store = bytes;
        self
    }

    /// The JetStream memory storage limit in bytes (512 MiB by default).
    pub fn max_memory_store(mut self, bytes: u64) -> Self {
        self.max_memory_store = bytes;
        self
    }

    /// Appends a line to the configuration file, e.g. `"max_connections: 100"` or
    /// `"accounts { ... }"`.
    pub fn config_line(mut self, line: impl Into<String>) -> Self {
        self.config_lines.push(line.into());
        self
    }

    /// How long [`start`](Self::start) waits for the server to become ready (10 s by default).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts the server and returns once it is ready.
    ///
    /// # Errors
    ///
    /// As [`NatsServer::start`]; also when a chosen port is taken.
    pub fn start(self) -> Result<NatsServer, Error> {
        let binary = nats_server_binary()?;
        let mut attempt = 1;
        loop {
            match self.try_start(&binary) {
                // Our free ports can be taken before the server binds them: try others.
                Err(Error::Exited { .. }) if self.port.is_none() && attempt < START_ATTEMPTS => {
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    fn try_start(&self, binary: &Path) -> Result<NatsServer, Error> {
        let dir = tempfile::Builder::new()
            .prefix("runlog-nats-")
            .tempdir()
            .map_err(Error::io("create a temporary directory"))?;
        let store_dir = match &self.store_dir {
            Some(store_dir) => store_dir.clone(),
            None => dir.path().join("store"),
        };
        std::fs::create_dir_all(&store_dir)
            .map_err(Error::io(format!("create {}", store_dir.display())))?;
        let ports = process::free_ports(2)?;
        let config = ServerConfig {
            server_name: None,
            port: self.port.unwrap_or(ports[0]),
            http_port: ports[1],
            store_dir: store_dir.clone(),
            max_file_store: self.max_file_store,
            max_memory_store: self.max_memory_store,
            max_payload: self.max_payload,
            cluster: None,
            extra: self.config_lines.clone(),
        };
        let process = Process::new(binary.to_owned(), dir.path().to_owned(), config)?;
        let mut server = NatsServer {
            process,
            store_dir,
            ready_timeout: self.ready_timeout,
            temp: dir,
        };
        let started = Instant::now();
        server.process.spawn()?;
        server
            .process
            .wait_ready(started, started + self.ready_timeout)?;
        Ok(server)
    }
}
