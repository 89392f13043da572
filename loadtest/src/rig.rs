//! A whole installation on this machine for one scenario: a fresh
//! nats-server, one `runlog engine` process and `W` `runlog worker`
//! processes, all killed when the rig is dropped.
//!
//! The processes are the real binaries (`runlog`, next to this one), so a
//! figure includes everything a deployment pays: separate connections,
//! separate runtimes, the engine's projection and API.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream;
use runlog_localnats::NatsServer;

/// The OTLP receiver the engine and the workers export traces to, once
/// `--traces` set one.
static TRACES: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Has every engine and worker started from now on export its traces to
/// the OTLP/HTTP receiver at `endpoint`.
pub fn export_traces_to(endpoint: &str) {
    let _set = TRACES.set(endpoint.to_owned());
}

/// `--otlp-endpoint` for a process, when traces are exported.
fn traced(command: &mut Command) -> &mut Command {
    if let Some(endpoint) = TRACES.get() {
        command.args(["--otlp-endpoint", endpoint]);
    }
    command
}

/// How long a process may take to become ready.
const READY: Duration = Duration::from_secs(30);

/// The server, the engine and the workers of one scenario.
pub struct Rig {
    server: NatsServer,
    engine: Child,
    http: String,
    workers: Vec<Child>,
    binary: std::path::PathBuf,
}

impl Rig {
    /// A server and an engine, ready to take submissions.
    pub async fn start() -> anyhow::Result<Self> {
        let server = NatsServer::start().context("cannot start nats-server")?;
        let binary = runlog_binary()?;
        let port = free_port()?;
        let engine = spawn(traced(
            Command::new(&binary)
                .args(["engine", "--nats-url", &server.url()])
                .args(["--listen", &format!("127.0.0.1:{port}")]),
        ))?;
        let mut rig = Rig {
            server,
            engine,
            http: format!("http://127.0.0.1:{port}"),
            workers: Vec::new(),
            binary,
        };
        rig.wait_ready().await?;
        Ok(rig)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + READY;
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", self.http)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Some(status) = self.engine.try_wait()? {
                bail!("the engine exited: {status}");
            }
            if Instant::now() > deadline {
                bail!("the engine was not ready within {READY:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The NATS URL.
    pub fn nats_url(&self) -> String {
        self.server.url()
    }

    /// The engine's HTTP base URL.
    pub fn http(&self) -> &str {
        &self.http
    }

    /// Starts `count` workers with `concurrency` slots each and waits until
    /// every one is registered.
    pub async fn start_workers(&mut self, count: usize, concurrency: usize) -> anyhow::Result<()> {
        let first = self.workers.len();
        for i in first..first + count {
            let worker = spawn(traced(
                Command::new(&self.binary)
                    .args(["worker", "--allow-root", "--nats-url", &self.server.url()])
                    .args(["--id", &format!("load-{i}")])
                    .args(["--concurrency", &concurrency.to_string()]),
            ))?;
            self.workers.push(worker);
        }
        let js = jetstream::new(async_nats::connect(self.server.url()).await?);
        let deadline = Instant::now() + READY;
        for i in first..first + count {
            loop {
                if let Ok(kv) = js.get_key_value("runlog-workers").await
                    && let Ok(Some(_)) = kv.get(format!("load-{i}")).await
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("worker load-{i} did not register within {READY:?}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// CPU seconds used so far by the server, the engine and the workers,
    /// and the messages the server has received and sent.
    pub async fn cpu(&self) -> Cpu {
        let (msgs_in, msgs_out) = messages(&self.server).await;
        Cpu {
            server: self.server.pid().map_or(0.0, cpu_seconds),
            engine: cpu_seconds(self.engine.id()),
            workers: self.workers.iter().map(|w| cpu_seconds(w.id())).sum(),
            load: cpu_seconds(std::process::id()),
            msgs_in,
            msgs_out,
        }
    }

    /// The engine's resident memory, in MiB.
    pub fn engine_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.engine.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for child in self.workers.iter_mut().chain([&mut self.engine]) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// CPU seconds per component.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub server: f64,
    pub engine: f64,
    pub workers: f64,
    /// This process: the load generator and its clients.
    pub load: f64,
    /// Messages the server received (publishes, acks, requests).
    pub msgs_in: f64,
    /// Messages the server delivered.
    pub msgs_out: f64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, rhs: Cpu) -> Cpu {
        Cpu {
            server: self.server - rhs.server,
            engine: self.engine - rhs.engine,
            workers: self.workers - rhs.workers,
            load: self.load - rhs.load,
            msgs_in: self.msgs_in - rhs.msgs_in,
            msgs_out: self.msgs_out - rhs.msgs_out,
        }
    }
}

impl Cpu {
    /// Microseconds of CPU per task, by component, as JSON.
    pub fn per_task_json(&self, tasks: usize) -> serde_json::Value {
        let us = |s: f64| (s * 1e6 / tasks as f64 * 10.0).round() / 10.0;
        serde_json::json!({
            "server": us(self.server),
            "engine": us(self.engine),
            "workers": us(self.workers),
            "load_generator": us(self.load),
            "server_msgs_in_per_task": (self.msgs_in / tasks as f64 * 10.0).round() / 10.0,
            "server_msgs_out_per_task": (self.msgs_out / tasks as f64 * 10.0).round() / 10.0,
        })
    }
}

/// The messages `server` has received and sent so far (`/varz`; zero when
/// it cannot be read).
pub async fn messages(server: &NatsServer) -> (f64, f64) {
    let varz: serde_json::Value = async {
        reqwest::get(format!("{}/varz", server.monitor_url()))
            .await?
            .json()
            .await
    }
    .await
    .unwrap_or_default();
    let count = |k: &str| varz[k].as_f64().unwrap_or(0.0);
    (count("in_msgs"), count("out_msgs"))
}

/// utime + stime of process `pid`, in seconds (Linux; 0 when unreadable).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which may hold spaces: state is field 3.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15: indexes 11 and 12 after the name.
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux this runs on.
    100.0
}

/// The `runlog` binary next to this one.
pub fn runlog_binary() -> anyhow::Result<std::path::PathBuf> {
    Ok(std::env::current_exe()?.with_file_name("runlog"))
}

/// Starts `command` (a `runlog` subcommand) quietly.
pub fn spawn(command: &mut Command) -> anyhow::Result<Child> {
    command
        .env("RUNLOG_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (build it: cargo build --release -p runlog)",
                command.get_program().to_string_lossy()
            )
        })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
