//! `runlog worker`: a worker process running the built-in executors.
//!
//! It reads the `[nats]` and `[worker]` tables of the configuration tree
//! ([`table`]), layered, later wins: built-in defaults < `--config` file
//! (TOML) < `RUNLOG_*` environment < flags. SIGINT or SIGTERM starts a
//! graceful shutdown (stop fetching, let running attempts finish within
//! `drain-timeout`, hand the rest back); a second signal stops at once.
//! `docs/workers.md` is the user guide.

pub mod table;

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};

use anyhow::Context;
use runlog_config::{NATS, NatsConfig, Setting, Values};
use runlog_events::QueueName;
use runlog_worker::executor::HostPattern;
use runlog_worker::runtime::{CapacityRule, ConcurrencyRule, RateRule, Worker};
use tokio_util::sync::CancellationToken;

use crate::config_args::{SharedArgs, as_text, duration, print_config};
use table::{WORKER, WorkerTable};

/// Options of `runlog worker`. Each flag's variable and default are in
/// docs/operations.md.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    shared: SharedArgs,
    /// A queue to take work from; repeat for several [default: default;
    /// env: RUNLOG_QUEUES, comma-separated].
    #[arg(long = "queue", value_delimiter = ',')]
    queues: Vec<QueueName>,
    /// Attempts this worker runs at once [default: 4; env:
    /// RUNLOG_CONCURRENCY].
    #[arg(long)]
    concurrency: Option<NonZeroUsize>,
    /// A label tasks may require, `key=value`; repeat for several [env:
    /// RUNLOG_LABELS, comma-separated].
    #[arg(long = "label", value_delimiter = ',', value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// A capacity rule: `kind=N`, `kind=N,exclusive` or `kind=exclusive`;
    /// repeat for several [env: RUNLOG_CAPACITY, `;`-separated].
    #[arg(long = "capacity")]
    capacity: Vec<CapacityRule>,
    /// The worker id (1-64 of A-Z a-z 0-9 _ -) [default: `<host>-<random>`;
    /// env: RUNLOG_WORKER_ID].
    #[arg(long)]
    id: Option<String>,
    /// Join this agent pool: serve only its queue, once the engine accepts
    /// the token of --token-file [env: RUNLOG_POOL].
    #[arg(long)]
    pool: Option<String>,
    /// The file holding the pool token [env: RUNLOG_POOL_TOKEN_FILE].
    #[arg(long, value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Registry entry refresh and heartbeat interval of running attempts
    /// [default: 5s; env: RUNLOG_HEARTBEAT].
    #[arg(long, value_parser = duration)]
    heartbeat: Option<humantime::Duration>,
    /// ack_wait of the dispatch consumers this worker creates (an existing
    /// consumer keeps its own) [default: 30s; env: RUNLOG_ACK_WAIT].
    #[arg(long, value_parser = duration)]
    ack_wait: Option<humantime::Duration>,
    /// How long running attempts may finish after SIGTERM before they are
    /// stopped and handed back [default: 30s; env: RUNLOG_DRAIN_TIMEOUT].
    #[arg(long, value_parser = duration)]
    drain_timeout: Option<humantime::Duration>,
    /// How long a cancelled handler may take to stop [default: 10s; env:
    /// RUNLOG_CANCEL_GRACE].
    #[arg(long, value_parser = duration)]
    cancel_grace: Option<humantime::Duration>,
    /// Stop fetching while host memory use is above this percentage
    /// [default: 90; env: RUNLOG_MAX_MEMORY_PERCENT].
    #[arg(long)]
    max_memory_percent: Option<f64>,
    /// Stop fetching while the 1-minute load average is above this [env:
    /// RUNLOG_MAX_LOAD].
    #[arg(long)]
    max_load: Option<f64>,
    /// Every k-th pick starts one priority level lower (anti-starvation)
    /// [default: 8; env: RUNLOG_AGING_EVERY].
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..))]
    aging_every: Option<u32>,
    /// Base delay before an item this worker cannot take is redelivered
    /// [default: 1s; env: RUNLOG_NAK_DELAY].
    #[arg(long, value_parser = duration)]
    nak_delay: Option<humantime::Duration>,
    /// How long an idle worker's long poll waits at the server [default:
    /// 5s; env: RUNLOG_POLL_EXPIRES].
    #[arg(long, value_parser = duration)]
    poll_expires: Option<humantime::Duration>,
    #[command(flatten)]
    breakers: Box<BreakerArgs>,
    /// A rate limit, `key:N/PERIOD` (`provider=openai:5/s`, `*:100/m` for
    /// keys without their own); repeat. The `<p>-limits` bucket wins key by
    /// key [env: RUNLOG_RATE_LIMITS, `;`-separated].
    #[arg(long = "rate-limit")]
    rate_limits: Vec<RateRule>,
    /// A concurrency limit, `key:N` (`workspace=prod:1`, `*:4`); repeat.
    /// The `<p>-limits` bucket wins key by key [env:
    /// RUNLOG_CONCURRENCY_LIMITS, `;`-separated].
    #[arg(long = "concurrency-limit")]
    concurrency_limits: Vec<ConcurrencyRule>,
    /// How long a concurrency lease outlives its worker's last renewal
    /// (whole seconds, at least 1s) [default: 30s; env: RUNLOG_LEASE_TTL].
    #[arg(long, value_parser = duration)]
    lease_ttl: Option<humantime::Duration>,
    /// Serve this worker's Prometheus metrics on `http://ADDR/metrics`
    /// [env: RUNLOG_METRICS_ADDR].
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Export this worker's spans to this OTLP/HTTP receiver
    /// (`http://collector:4318`) [default: none; env:
    /// OTEL_EXPORTER_OTLP_ENDPOINT].
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    #[command(flatten)]
    executors: Box<ExecutorArgs>,
}

/// What tasks may do on this worker (boxed: they are many).
#[derive(Debug, clap::Args)]
struct ExecutorArgs {
    /// Start `shell` and `script` programs as this user (a root worker
    /// only) [env: RUNLOG_RUN_AS].
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
    /// Let `shell` and `script` programs run as root; without it a worker
    /// running as root with no --run-as fails such tasks `permission`
    /// [env: RUNLOG_ALLOW_ROOT].
    #[arg(long)]
    allow_root: bool,
    /// The engine's key ring (mode 0600), to open sealed task environments
    /// and stored secrets with [env: RUNLOG_SECRET_KEY_FILE].
    #[arg(long, value_name = "FILE")]
    secret_key_file: Option<std::path::PathBuf>,
    /// A kind this worker refuses on every queue; repeat [env:
    /// RUNLOG_DISABLED_KINDS, comma-separated].
    #[arg(long = "disable-kind", value_delimiter = ',', value_name = "KIND")]
    disabled: Vec<String>,
    /// A program `shell`, `script` and `ssh` tasks may start (a name on
    /// the worker's PATH, or a path); once given, no other [env:
    /// RUNLOG_ALLOWED_PROGRAMS, comma-separated].
    #[arg(long = "allow-program", value_delimiter = ',', value_name = "PROGRAM")]
    programs: Vec<String>,
    /// A host `http` tasks may reach (`api.example.com`, `*.example.com`,
    /// `10.0.0.0/8`); once given, no other [env: RUNLOG_HTTP_ALLOW_HOSTS,
    /// comma-separated].
    #[arg(long = "allow-host", value_delimiter = ',', value_name = "HOST")]
    allow_hosts: Vec<HostPattern>,
    /// A host `http` tasks may never reach [env: RUNLOG_HTTP_DENY_HOSTS,
    /// comma-separated].
    #[arg(long = "deny-host", value_delimiter = ',', value_name = "HOST")]
    deny_hosts: Vec<HostPattern>,
    /// Let `http` tasks reach link-local and cloud metadata addresses
    /// (169.254.169.254) [env: RUNLOG_HTTP_ALLOW_LINK_LOCAL].
    #[arg(long)]
    allow_link_local: bool,
}

/// Circuit-breaker options of `runlog worker` (boxed: they are many).
#[derive(Debug, clap::Args)]
struct BreakerArgs {
    /// Circuit breakers: consult and feed them (`false` ignores them)
    /// [default: true; env: RUNLOG_BREAKERS].
    #[arg(long = "breakers", action = clap::ArgAction::Set)]
    enabled: Option<bool>,
    /// The percentage of failed attempts of a target that opens its breaker
    /// [default: 50; env: RUNLOG_BREAKER_FAILURE_PERCENT].
    #[arg(long = "breaker-failure-percent", value_parser = clap::value_parser!(u8).range(1..=100))]
    failure_percent: Option<u8>,
    /// Attempts of a target that must have ended in the window before its
    /// breaker may open [default: 10; env: RUNLOG_BREAKER_MIN_CALLS].
    #[arg(long = "breaker-min-calls")]
    min_calls: Option<NonZeroU32>,
    /// How far back a breaker counts outcomes [default: 1m; env:
    /// RUNLOG_BREAKER_WINDOW].
    #[arg(long = "breaker-window", value_parser = duration)]
    window: Option<humantime::Duration>,
    /// How long an open breaker delays its target's attempts before probing
    /// [default: 30s; env: RUNLOG_BREAKER_OPEN].
    #[arg(long = "breaker-open", value_parser = duration)]
    open: Option<humantime::Duration>,
    /// Probe attempts of a half-open breaker that must succeed to close it
    /// [default: 1; env: RUNLOG_BREAKER_PROBES].
    #[arg(long = "breaker-probes")]
    probes: Option<NonZeroU32>,
}

impl Args {
    /// The layered `[nats]` and `[worker]` tables.
    fn tables(&self) -> anyhow::Result<(NatsConfig, WorkerTable)> {
        let settings: Vec<Setting> = NATS.iter().chain(&WORKER).copied().collect();
        let defaults = Values::new().set("worker", WorkerTable::default());
        let texts = |rules: Vec<String>| Some(rules).filter(|r| !r.is_empty());
        let b = &self.breakers;
        let e = &self.executors;
        let flags = Values::new()
            .set_some("worker.id", self.id.clone())
            .set_some("worker.pool", self.pool.clone())
            .set_some(
                "worker.pool-token-file",
                self.token_file.as_ref().map(|f| f.display().to_string()),
            )
            .set_some(
                "worker.queues",
                Some(self.queues.clone()).filter(|q| !q.is_empty()),
            )
            .set_some("worker.concurrency", self.concurrency)
            .set_some(
                "worker.labels",
                Some(self.labels.iter().cloned().collect::<BTreeMap<_, _>>())
                    .filter(|l| !l.is_empty()),
            )
            .set_some("worker.capacity", texts(strings(&self.capacity)))
            .set_some("worker.heartbeat", as_text(self.heartbeat))
            .set_some("worker.ack-wait", as_text(self.ack_wait))
            .set_some("worker.drain-timeout", as_text(self.drain_timeout))
            .set_some("worker.cancel-grace", as_text(self.cancel_grace))
            .set_some("worker.poll-expires", as_text(self.poll_expires))
            .set_some("worker.aging-every", self.aging_every)
            .set_some("worker.nak-delay", as_text(self.nak_delay))
            .set_some("worker.guard.max-memory-percent", self.max_memory_percent)
            .set_some("worker.guard.max-load", self.max_load)
            .set_some("worker.breakers.enabled", b.enabled)
            .set_some("worker.breakers.failure-percent", b.failure_percent)
            .set_some("worker.breakers.min-calls", b.min_calls)
            .set_some("worker.breakers.window", as_text(b.window))
            .set_some("worker.breakers.open", as_text(b.open))
            .set_some("worker.breakers.probes", b.probes)
            .set_some("worker.limits.rate", texts(strings(&self.rate_limits)))
            .set_some(
                "worker.limits.concurrency",
                texts(strings(&self.concurrency_limits)),
            )
            .set_some("worker.limits.lease-ttl", as_text(self.lease_ttl))
            .set_some("worker.metrics-addr", self.metrics_addr)
            .set_some("worker.otlp-endpoint", self.otlp_endpoint.clone())
            .set_some("worker.run-as", e.run_as.clone())
            .set_some("worker.allow-root", e.allow_root.then_some(true))
            .set_some("worker.secret-key-file", e.secret_key_file.clone())
            .set_some("worker.executors.disabled", texts(e.disabled.clone()))
            .set_some("worker.executors.programs", texts(e.programs.clone()))
            .set_some("worker.http.allow-hosts", texts(strings(&e.allow_hosts)))
            .set_some("worker.http.deny-hosts", texts(strings(&e.deny_hosts)))
            .set_some(
                "worker.http.allow-link-local",
                e.allow_link_local.then_some(true),
            );
        let tree = self.shared.tree(&settings, defaults, flags)?;
        Ok((tree.table("nats")?, tree.table("worker")?))
    }
}

/// Rules as their flags' text.
fn strings<T: ToString>(rules: &[T]) -> Vec<String> {
    rules.iter().map(ToString::to_string).collect()
}

/// Runs `runlog worker` until SIGINT or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let (nats, table) = args.tables()?;
    if args.shared.print_config {
        return print_config(&nats, "worker", &table);
    }
    let pool = table.pool_membership()?;
    let metrics_addr = table.metrics_addr;
    let run_as = table.run_as()?;
    let hosts = table.hosts();
    let mut config = table.into_config(&nats);
    config.run_as = run_as;
    if let Some(pool) = pool {
        if config.queues == [QueueName::default()] {
            config.queues =
                vec![QueueName::new(&pool.name).map_err(|e| {
                    anyhow::anyhow!("pool {:?} is not a valid name: {e}", pool.name)
                })?];
        }
        config.pool = Some(pool);
    }
    config.validate()?;
    let client = nats
        .connect(&format!("runlog-worker-{}", config.id))
        .await?;
    let registry = runlog_worker::executor::builtin_with(hosts);
    println!(
        "runlog worker {} on {} (queues {}, concurrency {}, kinds {})",
        config.id,
        nats.urls.join(","),
        config
            .queues
            .iter()
            .map(|q| q.as_str())
            .collect::<Vec<_>>()
            .join(","),
        config.concurrency,
        registry.kinds().join(","),
    );
    match &config.run_as {
        Some(user) => println!("shell and script programs run as {}", user.name),
        None if runlog_worker::identity::children_run_as_root(None)
            && !config.executors.allow_root =>
        {
            println!(
                "this worker runs as root: shell and script tasks fail `permission` \
                 (give --run-as USER, or --allow-root if programs should run as root)"
            )
        }
        None => {}
    }
    let shutdown = CancellationToken::new();
    match &config.secret_key_file {
        // Read here too, so a bad file is said before connecting.
        Some(path) => println!(
            "sealed environments and stored secrets open with key {}",
            runlog_events::sealing::Keyring::load(path)?.ids()[0]
        ),
        None => println!(
            "no secret key (--secret-key-file): tasks with sealed env or stored secrets fail `permission`"
        ),
    }
    let worker = Worker::new(client, config, registry);
    if let Some(addr) = metrics_addr {
        let addr = serve_metrics(addr, worker.metrics(), shutdown.clone()).await?;
        println!("metrics on http://{addr}/metrics");
    }
    let worker = worker.run(shutdown.clone());
    tokio::pin!(worker);
    tokio::select! {
        result = &mut worker => return Ok(result?),
        signal = wait_for_signal() => signal.context("cannot wait for a signal")?,
    }
    eprintln!("stopping: finishing running attempts (a second signal stops at once)");
    shutdown.cancel();
    tokio::select! {
        result = &mut worker => Ok(result?),
        signal = wait_for_signal() => {
            signal.context("cannot wait for a signal")?;
            eprintln!("stopped at once: unfinished work items return after their ack_wait");
            Ok(())
        }
    }
}

/// Serves `GET /metrics` of `metrics` on `addr` until `shutdown`; returns
/// the address bound (a port 0 is chosen by the system).
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: runlog_worker::runtime::WorkerMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for /metrics; choose another --metrics-addr")
    })?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        runlog_metrics::CONTENT_TYPE,
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(bound)
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

/// `key=value`.
fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("label {s:?} must look like key=value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_labels_parse() {
        let parse = |text| duration(text).map(std::time::Duration::from);
        assert_eq!(parse("250ms"), Ok(std::time::Duration::from_millis(250)));
        assert_eq!(parse("5s"), Ok(std::time::Duration::from_secs(5)));
        assert_eq!(parse("1m30s"), Ok(std::time::Duration::from_secs(90)));
        assert!(parse("5 parsecs").is_err());
        assert!(parse("1.5").is_err(), "a duration names its unit");
        assert_eq!(parse_label("pool=eu"), Ok(("pool".into(), "eu".into())));
        assert!(parse_label("pool").is_err());
    }
}
