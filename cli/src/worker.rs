//! `runlog worker`: a worker process running the built-in executors.
//!
//! Settings come from flags or `RUNLOG_*` environment variables (flags
//! win). SIGINT or SIGTERM starts a graceful shutdown (stop fetching, let
//! running attempts finish within `--drain-timeout`, hand the rest back); a
//! second signal stops at once. `docs/workers.md` is the user guide.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use anyhow::Context;
use runlog_engine::NatsConfig;
use runlog_events::QueueName;
use runlog_worker::runtime::{BreakerConfig, CapacityRule, GuardConfig, Worker, WorkerConfig};
use runlog_worker::runtime::{ConcurrencyRule, LimitsConfig, RateRule};
use tokio_util::sync::CancellationToken;

use crate::nats_args::NatsArgs;

/// Options of `runlog worker`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    nats: NatsArgs,
    /// Subject and stream prefix of the installation.
    #[arg(long, env = "RUNLOG_PREFIX", default_value = "runlog")]
    prefix: String,
    /// Stream replicas, if this worker creates the streams (3 on a cluster).
    #[arg(long, env = "RUNLOG_REPLICAS", default_value_t = 1)]
    replicas: usize,
    /// A queue to take work from; repeat for several.
    #[arg(
        long = "queue",
        env = "RUNLOG_QUEUES",
        value_delimiter = ',',
        default_value = "default"
    )]
    queues: Vec<QueueName>,
    /// Attempts this worker runs at once.
    #[arg(long, env = "RUNLOG_CONCURRENCY", default_value = "4")]
    concurrency: NonZeroUsize,
    /// A label tasks may require, `key=value`; repeat for several.
    #[arg(long = "label", env = "RUNLOG_LABELS", value_delimiter = ',', value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// A capacity rule: `kind=N`, `kind=N,exclusive` or `kind=exclusive`;
    /// repeat for several (separate with `;` in the environment variable).
    #[arg(long = "capacity", env = "RUNLOG_CAPACITY", value_delimiter = ';')]
    capacity: Vec<CapacityRule>,
    /// The worker id (1-64 of A-Z a-z 0-9 _ -); default `<host>-<random>`.
    #[arg(long, env = "RUNLOG_WORKER_ID")]
    id: Option<String>,
    /// Registry entry refresh and heartbeat interval of running attempts.
    #[arg(long, env = "RUNLOG_HEARTBEAT", default_value = "5s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// ack_wait of the dispatch consumers this worker creates (an existing
    /// consumer keeps its own).
    #[arg(long, env = "RUNLOG_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    ack_wait: Duration,
    /// How long running attempts may finish after SIGTERM before they are
    /// stopped and handed back.
    #[arg(long, env = "RUNLOG_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// How long a cancelled handler may take to stop.
    #[arg(long, env = "RUNLOG_CANCEL_GRACE", default_value = "10s", value_parser = parse_duration)]
    cancel_grace: Duration,
    /// Stop fetching while host memory use is above this percentage.
    #[arg(long, env = "RUNLOG_MAX_MEMORY_PERCENT", default_value_t = 90.0)]
    max_memory_percent: f64,
    /// Stop fetching while the 1-minute load average is above this.
    #[arg(long, env = "RUNLOG_MAX_LOAD")]
    max_load: Option<f64>,
    /// Every k-th pick starts one priority level lower (anti-starvation).
    #[arg(long, env = "RUNLOG_AGING_EVERY", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(2..))]
    aging_every: u32,
    /// Base delay before an item this worker cannot take is redelivered.
    #[arg(long, env = "RUNLOG_NAK_DELAY", default_value = "1s", value_parser = parse_duration)]
    nak_delay: Duration,
    /// How long an idle worker's long poll waits at the server.
    #[arg(long, env = "RUNLOG_POLL_EXPIRES", default_value = "5s", value_parser = parse_duration)]
    poll_expires: Duration,
    #[command(flatten)]
    breakers: Box<BreakerArgs>,
    /// A rate limit, `key:N/PERIOD` (`provider=openai:5/s`, `*:100/m` for
    /// keys without their own); repeat (`;` in the environment variable).
    /// The `<p>-limits` bucket wins key by key.
    #[arg(long = "rate-limit", env = "RUNLOG_RATE_LIMITS", value_delimiter = ';')]
    rate_limits: Vec<RateRule>,
    /// A concurrency limit, `key:N` (`workspace=prod:1`, `*:4`); repeat
    /// (`;` in the environment variable). The `<p>-limits` bucket wins key
    /// by key.
    #[arg(
        long = "concurrency-limit",
        env = "RUNLOG_CONCURRENCY_LIMITS",
        value_delimiter = ';'
    )]
    concurrency_limits: Vec<ConcurrencyRule>,
    /// How long a concurrency lease outlives its worker's last renewal
    /// (whole seconds, at least 1s).
    #[arg(long, env = "RUNLOG_LEASE_TTL", default_value = "30s", value_parser = parse_duration)]
    lease_ttl: Duration,
}

/// Circuit-breaker options of `runlog worker` (boxed: they are many).
#[derive(Debug, clap::Args)]
struct BreakerArgs {
    /// Circuit breakers: consult and feed them (`false` ignores them).
    #[arg(long = "breakers", env = "RUNLOG_BREAKERS", default_value_t = true, action = clap::ArgAction::Set)]
    enabled: bool,
    /// The percentage of failed attempts of a target that opens its breaker.
    #[arg(long = "breaker-failure-percent", env = "RUNLOG_BREAKER_FAILURE_PERCENT", default_value_t = 50,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    failure_percent: u8,
    /// Attempts of a target that must have ended in the window before its
    /// breaker may open.
    #[arg(
        long = "breaker-min-calls",
        env = "RUNLOG_BREAKER_MIN_CALLS",
        default_value = "10"
    )]
    min_calls: NonZeroU32,
    /// How far back a breaker counts outcomes.
    #[arg(long = "breaker-window", env = "RUNLOG_BREAKER_WINDOW", default_value = "60s", value_parser = parse_duration)]
    window: Duration,
    /// How long an open breaker delays its target's attempts before probing.
    #[arg(long = "breaker-open", env = "RUNLOG_BREAKER_OPEN", default_value = "30s", value_parser = parse_duration)]
    open: Duration,
    /// Probe attempts of a half-open breaker that must succeed to close it.
    #[arg(
        long = "breaker-probes",
        env = "RUNLOG_BREAKER_PROBES",
        default_value = "1"
    )]
    probes: NonZeroU32,
}

impl BreakerArgs {
    fn config(&self) -> BreakerConfig {
        BreakerConfig {
            enabled: self.enabled,
            failure_percent: self.failure_percent,
            min_calls: self.min_calls,
            window: self.window,
            open_for: self.open,
            probes: self.probes,
        }
    }
}

impl Args {
    fn nats(&self) -> NatsConfig {
        let mut nats = NatsConfig {
            prefix: self.prefix.clone(),
            replicas: self.replicas,
            ..NatsConfig::default()
        };
        self.nats.clone().apply(&mut nats);
        nats
    }

    fn config(self) -> WorkerConfig {
        let defaults = WorkerConfig::default();
        WorkerConfig {
            nats_url: self.nats().urls.join(","),
            prefix: self.prefix,
            replicas: self.replicas,
            id: self.id.unwrap_or(defaults.id),
            queues: self.queues,
            concurrency: self.concurrency,
            labels: self.labels.into_iter().collect::<BTreeMap<_, _>>(),
            capacity: self.capacity,
            heartbeat: self.heartbeat,
            ack_wait: self.ack_wait,
            drain_timeout: self.drain_timeout,
            cancel_grace: self.cancel_grace,
            poll_expires: self.poll_expires,
            aging_every: self.aging_every,
            nak_delay: self.nak_delay,
            guard: GuardConfig {
                max_memory_percent: self.max_memory_percent,
                max_load: self.max_load,
                ..defaults.guard
            },
            telemetry: defaults.telemetry,
            breakers: self.breakers.config(),
            limits: LimitsConfig {
                rates: self.rate_limits,
                concurrency: self.concurrency_limits,
                lease_ttl: self.lease_ttl,
                ..defaults.limits
            },
        }
    }
}

/// Runs `runlog worker` until SIGINT or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let nats = args.nats();
    let config = args.config();
    config.validate()?;
    let client = nats
        .connect(&format!("runlog-worker-{}", config.id))
        .await?;
    let registry = runlog_worker::executor::builtin();
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
    let shutdown = CancellationToken::new();
    let worker = Worker::new(client, config, registry).run(shutdown.clone());
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

/// `250ms`, `5s`, `2m`, `1h`, or a number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: write 250ms, 5s, 2m or 1h"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}: use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_labels_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(parse_label("pool=eu"), Ok(("pool".into(), "eu".into())));
        assert!(parse_label("pool").is_err());
    }
}
