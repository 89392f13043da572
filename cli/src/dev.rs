//! `runlog dev`: a local installation on this machine.
//!
//! Starts the pinned nats-server with its store in a project-local data
//! folder (so history survives restarts), creates the streams, then runs one
//! execution end to end: the engine's intake records it, a worker claims it
//! and records its result, and the execution's log is replayed through the
//! core and compared with the live state.
//!
//! It reads no configuration file: the engine and the worker run with the
//! tree's built-in defaults (docs/operations.md), live events on, and the
//! flags below.

use std::path::PathBuf;

use anyhow::{Context, bail};
use async_nats::jetstream;
use runlog_engine::{Engine, EngineConfig};
use runlog_events::journal::Journal;
use runlog_events::{ExecutionId, Subjects};
use runlog_localnats::NatsServer;
use runlog_worker::runtime::{Worker, WorkerConfig};

use crate::client::views::Execution;
use crate::client::{self, Client, DEFAULT_ENGINE_URL, demo};

/// Options of `runlog dev`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the local nats-server keeps its store.
    #[arg(long, env = "RUNLOG_DATA_DIR", default_value = ".runlog/data")]
    data_dir: PathBuf,
    /// Client port of the local nats-server (0 picks a free one).
    #[arg(long, env = "RUNLOG_NATS_PORT", default_value_t = 4222)]
    nats_port: u16,
    /// Where the engine's HTTP API listens.
    #[arg(long, env = "RUNLOG_LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Run the demonstration and exit instead of keeping nats-server up.
    #[arg(long)]
    once: bool,
    /// The message the demonstration task echoes.
    #[arg(long, default_value = "hello from runlog dev")]
    message: String,
    /// Also submit a small mixed load (progress, HTTP, a retry, a dead
    /// letter, a timeout, a cancel) through the HTTP API; with --once, wait
    /// until all of it ended.
    #[arg(long)]
    demo: bool,
    /// Export the engine's and the worker's traces to this OTLP/HTTP
    /// receiver (`http://127.0.0.1:4318`, Jaeger's or a collector's).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
}

/// Runs `runlog dev`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let store = args.data_dir.join("nats");
    std::fs::create_dir_all(&store)
        .with_context(|| format!("cannot create the data folder {}", store.display()))?;
    let mut builder = NatsServer::builder().store_dir(&store);
    if args.nats_port != 0 {
        builder = builder.port(args.nats_port);
    }
    let mut server = builder.start().with_context(|| {
        format!(
            "cannot start nats-server on port {} (is another `runlog dev` running? \
             use --nats-port 0 for a free port)",
            args.nats_port
        )
    })?;
    println!("nats-server  {}  (store {})", server.url(), store.display());
    // One key ring for the engine and the worker, made on the first run.
    let key_file = args.data_dir.join("secret.key");
    let made = runlog_events::sealing::Keyring::create_file(&key_file)
        .with_context(|| format!("cannot write the secret key {}", key_file.display()))?;
    let ring = runlog_events::sealing::Keyring::load(&key_file)?;
    println!(
        "secrets      sealed with {} ({}key {})",
        key_file.display(),
        if made { "new " } else { "" },
        ring.ids()[0]
    );

    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut config = EngineConfig::default();
    config.nats.urls = vec![server.url()];
    // Clients trying the protocol (examples/python) follow live events.
    config.nats.live_events = true;
    config.listen = args.listen;
    config.otlp_endpoint.clone_from(&args.otlp_endpoint);
    config.secret_key_file = Some(key_file.clone());
    let engine = Engine::start(config, shutdown.clone()).await?;
    let subjects = Subjects::default();
    let projection = engine.projection().clone();
    wait_until(|| projection.is_caught_up()).await?;
    println!(
        "engine       http://{}  (streams {}, {}, {}); the log holds {} executions from earlier runs",
        engine.addr(),
        subjects.exec_stream(),
        subjects.logs_stream(),
        subjects.dlq_stream(),
        projection.len()
    );

    let client = async_nats::connect(server.url())
        .await
        .with_context(|| format!("cannot reach NATS at {}", server.url()))?;
    let registry = runlog_worker::executor::builtin();
    let worker_config = WorkerConfig {
        nats_url: server.url(),
        id: format!("dev-worker-{}", std::process::id()),
        concurrency: std::num::NonZeroUsize::new(8).expect("8 is not zero"),
        otlp_endpoint: args.otlp_endpoint.clone(),
        secret_key_file: Some(key_file.clone()),
        ..WorkerConfig::default()
    };
    if let Some(endpoint) = &args.otlp_endpoint {
        println!("traces       {endpoint} (OTLP/HTTP)");
    }
    println!(
        "worker       {} (kinds {})",
        worker_config.id,
        registry.kinds().join(", ")
    );
    let worker = Worker::new(client.clone(), worker_config, registry);
    let worker_stop = shutdown.clone();
    let worker_task = tokio::spawn(async move { worker.run(worker_stop).await });
    let js = jetstream::new(client.clone());
    let worker_journal = Journal::new(js, subjects.clone(), "/runlog/dev");

    let request = serde_json::json!({"kind": "echo", "input": {"message": args.message}});
    let reply = client
        .request(
            format!("{}.submit.default", subjects.prefix()),
            request.to_string().into(),
        )
        .await
        .context("the engine did not answer the submission")?;
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    let exec = ExecutionId::new(reply["id"].as_str().unwrap_or_default())
        .with_context(|| format!("the engine refused the submission: {reply}"))?;
    println!("submitted    {exec} (kind echo) → {}", reply["status"]);
    let live = loop {
        let history = worker_journal.load(&exec).await?;
        if history.state.status.is_terminal() {
            break history;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    if let Some(worker) = live.events.iter().find_map(|r| match &r.envelope.event {
        runlog_events::Event::Started(s) => Some((r.envelope.attempt, s.worker.clone())),
        _ => None,
    }) {
        println!("claimed      attempt {} by {}", worker.0, worker.1);
    }
    println!(
        "finished     {} with output {}",
        live.state.status,
        live.state.output.as_deref().cloned().unwrap_or_default()
    );

    let replayed = worker_journal.load(&exec).await?;
    println!(
        "replayed     {} events of {}:",
        replayed.events.len(),
        subjects.execution_events(&exec)
    );
    for recorded in &replayed.events {
        let e = &recorded.envelope;
        println!(
            "  seq {:>6}  {:<16} attempt {}  {}  {}",
            recorded.seq,
            e.event_type().as_str(),
            e.attempt,
            e.time.format("%H:%M:%S%.3f"),
            e.source
        );
    }
    if replayed.state != live.state {
        bail!(
            "the replayed state differs from the live state: {:?} vs {:?}",
            replayed.state,
            live.state
        );
    }
    println!(
        "state        {} (the fold of the replayed log equals the live state)",
        replayed.state.status
    );

    let engine_url = format!("http://{}", engine.addr());
    println!(
        "auth         OFF: the API and dashboard answer anyone on this machine (loopback only); \
         `runlog engine --auth` is the way to serve others"
    );
    print_welcome(&engine_url, &server.url());
    let scratch = args.data_dir.join("demo");
    let demo = if args.demo {
        let client = Client::new(&engine_url)?;
        let demo_stop = shutdown.child_token();
        let settle = args.once;
        let scratch = scratch.clone();
        Some(tokio::spawn(async move {
            let result = demo::run(&client, &scratch, settle, demo_stop).await;
            // With --once the caller reports it; otherwise nobody waits for it.
            if let (Err(e), false) = (&result, settle) {
                eprintln!("demo         stopped: {e}");
            }
            result
        }))
    } else {
        None
    };
    let mut outcome = Ok(());
    if args.once {
        if let Some(demo) = demo {
            outcome = check_demo(&engine_url, demo).await;
        }
    } else {
        println!(
            "\nnats-server keeps running at {}; press Ctrl-C to stop.",
            server.url()
        );
        tokio::signal::ctrl_c()
            .await
            .context("cannot wait for Ctrl-C")?;
        println!("stopping");
        if let Some(demo) = demo {
            demo.abort();
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    shutdown.cancel();
    match worker_task.await {
        Ok(Err(e)) => eprintln!("the worker stopped with an error: {e}"),
        Err(e) => eprintln!("the worker task failed: {e}"),
        Ok(Ok(())) => {}
    }
    engine.wait().await;
    // A graceful stop lets the server flush its store.
    server.stop();
    outcome
}

/// Where things are, and three commands to try.
fn print_welcome(engine_url: &str, nats_url: &str) {
    println!();
    println!("dashboard    {engine_url}/");
    println!("nats         {nats_url}");
    println!("\ntry, from another terminal:");
    if let Some(dir) = binary_dir_off_path() {
        println!("  export PATH={}:$PATH", dir.display());
    }
    if engine_url != DEFAULT_ENGINE_URL {
        println!("  export RUNLOG_ENGINE_URL={engine_url}");
    }
    println!("  runlog submit shell --wait -- sh -c 'for i in 1 2 3; do echo $i; sleep 1; done'");
    println!("  runlog ls");
    println!("  runlog watch");
}

/// The folder of this `runlog` binary when `runlog` on the `PATH` is not
/// this one (a fresh checkout runs it from `target/`).
fn binary_dir_off_path() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?.canonicalize().ok()?;
    let dir = exe.parent()?.to_path_buf();
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|p| {
            p.join("runlog")
                .canonicalize()
                .is_ok_and(|found| found == exe)
        })
    });
    (!on_path).then_some(dir)
}

/// Waits for the demo (which waits for its executions to end) and checks
/// that each ended as it should.
async fn check_demo(
    engine_url: &str,
    demo: tokio::task::JoinHandle<Result<Vec<demo::Submitted>, client::Error>>,
) -> anyhow::Result<()> {
    let submitted = demo.await.context("the demo task failed")??;
    let client = Client::new(engine_url)?;
    let mut wrong = Vec::new();
    for task in &submitted {
        let now: Execution = client
            .get(
                &format!("/v1/executions/{}", client::path_id(&task.id)),
                &[],
            )
            .await?;
        println!(
            "demo         {}  ended {} after {} attempt(s): {}",
            task.id, now.status, now.attempt, task.what
        );
        if now.status != task.expect {
            wrong.push(format!(
                "{} ({}) ended {}, not {}",
                task.id, task.what, now.status, task.expect
            ));
        }
    }
    if !wrong.is_empty() {
        bail!("the demo went wrong: {}", wrong.join("; "));
    }
    Ok(())
}

/// Waits (at most 30 s) for a condition the engine reaches by itself.
async fn wait_until(mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ready() {
        if tokio::time::Instant::now() > deadline {
            bail!("the engine did not catch up with the log within 30 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(())
}
