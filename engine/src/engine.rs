//! The engine process: connects, sets up the streams, and runs intake,
//! reactor, projection, live feeds and the HTTP API under one shutdown token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use runlog_events::journal::Journal;
use runlog_events::stream::LayoutError;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::{ConfigError, EngineConfig};
use crate::intake::Intake;
use crate::live::Live;
use crate::operations::Executions;
use crate::projection::Projection;
use crate::reactor::Reactor;
use crate::retry::Retries;
use crate::supervisor::Supervisor;
use crate::workers::LiveWorkers;

/// Why the engine could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Configuration or connection.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The streams could not be set up (or belong to someone else).
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The HTTP listener could not bind.
    #[error(
        "cannot listen on {addr}: {source}; is another engine running there? choose another address with --listen"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The trace exporter could not be set up.
    #[error(transparent)]
    Traces(#[from] runlog_telemetry::TracesError),
    /// A NATS subscription failed.
    #[error("cannot subscribe to {what} ({source}); is the NATS server reachable?")]
    Subscribe {
        /// What the subscription is for (`the live feeds`).
        what: &'static str,
        /// The client's error, with its kind.
        #[source]
        source: async_nats::SubscribeError,
    },
    /// An API other hosts can reach, without auth, and not told to.
    #[error(
        "refusing to serve the API on {0} without auth: other hosts can reach it. Turn auth on \
         (--auth, engine.auth = true) or say --insecure-no-auth (engine.insecure-no-auth = true)"
    )]
    Unprotected(SocketAddr),
    /// Auth is on and no token could be made or found to let anyone in.
    #[error("{0}")]
    Auth(String),
    /// The secret key file cannot be used.
    #[error(transparent)]
    SecretKey(#[from] runlog_events::sealing::KeyringError),
}

/// A running engine.
#[derive(Debug)]
pub struct Engine {
    addr: SocketAddr,
    projection: Arc<Projection>,
    tasks: Supervisor,
    traces: Option<runlog_telemetry::Traces>,
}

/// How long a stopping process waits for its last spans to be exported.
const TRACES_FLUSH: Duration = Duration::from_secs(2);

impl Engine {
    /// Connects, sets up, and starts every part; returns once the HTTP API
    /// listens. Everything stops when `shutdown` is cancelled.
    pub async fn start(
        config: EngineConfig,
        shutdown: CancellationToken,
    ) -> Result<Engine, EngineError> {
        if !config.auth && !config.insecure_no_auth && !config.listen.ip().is_loopback() {
            return Err(EngineError::Unprotected(config.listen));
        }
        let ring = match &config.secret_key_file {
            Some(path) => Some(Arc::new(runlog_events::sealing::Keyring::load(path)?)),
            None => None,
        };
        let layout = config.nats.layout()?;
        let subjects = layout.subjects.clone();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "engine".to_owned());
        // Heavy publishing and consuming on separate connections (a busy
        // publisher's acks must not starve the consumers).
        let publisher = config.nats.connect("runlog-engine-publish").await?;
        let consumer = config.nats.connect("runlog-engine-consume").await?;
        let pub_js = async_nats::jetstream::new(publisher.clone());
        let sub_js = async_nats::jetstream::new(consumer.clone());
        // A cluster electing its leaders, or a server still starting, answers
        // with time-outs (and, while a peer has not joined yet, "no suitable
        // peers" for a new replicated bucket): wait for it, as the workers
        // do, instead of exiting. An incompatible stream is a real error and
        // ends the start. Every stream and bucket is set up here, so no
        // later step of the start meets a cluster that is not ready.
        let mut pause = Duration::from_millis(250);
        let owner = format!("{host}-{}", runlog_events::ExecutionId::generate());
        let (env, idempotency, servers, operations, pools, workflows, tokens, secrets) = loop {
            let attempt = async {
                layout.ensure(&pub_js).await?;
                Ok::<_, LayoutError>((
                    layout.env_bucket(&pub_js).await?,
                    layout.idempotency_bucket(&pub_js).await?,
                    layout.servers_bucket(&pub_js).await?,
                    crate::operations::Operations::open(&pub_js, &layout, owner.clone()).await?,
                    layout.pools_bucket(&pub_js).await?,
                    layout.workflows_bucket(&pub_js).await?,
                    layout.tokens_bucket(&pub_js).await?,
                    match ring {
                        Some(_) => Some(layout.secrets_bucket(&pub_js).await?),
                        None => None,
                    },
                ))
            };
            match attempt.await {
                Ok(stores) => break stores,
                Err(e @ LayoutError::Api { .. }) if !shutdown.is_cancelled() => {
                    tracing::warn!(error = %e, retry_in = ?pause, "JetStream is not answering yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(e.into()),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let traces = match &config.otlp_endpoint {
            Some(endpoint) => Some(runlog_telemetry::Traces::start(
                endpoint,
                "runlog-engine",
                &host,
            )?),
            None => None,
        };
        let mut journal = Journal::new(
            pub_js.clone(),
            subjects.clone(),
            format!("/runlog/engine/{host}"),
        );
        if let Some(traces) = &traces {
            journal = journal.on_ended(runlog_telemetry::spans::on_ended(traces.clone()));
        }
        let servers = crate::servers::Inventory::new(servers);
        let secrets = secrets
            .zip(ring.clone())
            .map(|(bucket, ring)| runlog_events::secrets::Secrets::new(bucket, env.clone(), ring));
        let mut intake = Intake::new(journal.clone(), env, idempotency).with_servers(servers);
        match &ring {
            Some(ring) => {
                tracing::info!(key = %ring.ids()[0], "task environments and secrets are sealed at rest");
                intake = intake.with_keyring(ring.clone());
            }
            None => tracing::warn!(
                "no secret key (--secret-key-file): tasks with env values and /v1/secrets are refused"
            ),
        }
        if let Some(traces) = &traces {
            intake = intake.with_traces(traces.clone());
        }
        let mut tasks = Supervisor::default();
        let projection = Arc::new(Projection::new());
        let metrics = Arc::new(crate::metrics::EngineMetrics::new(
            &config.metrics_task_labels,
        ));
        projection.count_into(metrics.clone());
        if let Some(traces) = &traces {
            metrics.count_spans_of(traces.clone());
        }
        // Set before the projection follows: its catch-up reports the runs
        // that ended while no runner listened.
        let (run_ends, run_ends_rx) = tokio::sync::mpsc::unbounded_channel();
        projection.send_run_ends_to(run_ends);
        if !config.snapshot_interval.is_zero() {
            match crate::snapshot::store(&pub_js, &subjects, layout.replicas).await {
                Ok(store) => {
                    match crate::snapshot::restore(&store, &projection).await {
                        Ok(Some(seq)) => tracing::info!(
                            seq,
                            executions = projection.len(),
                            "projection restored from a snapshot; replaying the tail"
                        ),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "replaying the whole log"),
                    }
                    let every = config.snapshot_interval;
                    tasks.once(
                        "snapshots",
                        crate::snapshot::run(store, projection.clone(), every, shutdown.clone()),
                    );
                }
                Err(e) => tracing::warn!(error = %e, "projection snapshots are off"),
            }
        }
        let live = Live::new();
        projection.publish_to(live.events_sender());

        live.start(&consumer, &subjects, shutdown.clone())
            .await
            .map_err(|source| EngineError::Subscribe {
                what: "the live feeds",
                source,
            })?;
        let workers = LiveWorkers::default();
        {
            let (view, js, subjects) = (workers.clone(), sub_js.clone(), subjects.clone());
            tasks.restart("worker view", shutdown.clone(), move |stop| {
                let (view, js, subjects) = (view.clone(), js.clone(), subjects.clone());
                async move { view.follow(&js, &subjects, stop).await }
            });
        }
        let (audit, audit_writer) =
            crate::audit::Audit::start(pub_js.clone(), &subjects, shutdown.clone());
        tasks.once("audit trail", audit_writer);
        let pools = crate::pools::Pools::new(pools);
        let tokens = crate::tokens::Tokens::new(tokens);
        if config.auth {
            bootstrap(&tokens, config.bootstrap_token_file.as_deref()).await?;
        } else {
            tracing::warn!(
                listen = %config.listen,
                "the HTTP API answers everyone who reaches it: auth is off"
            );
        }
        {
            let tokens = tokens.clone();
            tasks.restart("API tokens", shutdown.clone(), move |stop| {
                let tokens = tokens.clone();
                async move { tokens.follow(stop).await }
            });
        }
        {
            let (pools, client, subjects) = (pools.clone(), publisher.clone(), subjects.clone());
            tasks.restart("pool joins", shutdown.clone(), move |stop| {
                let (pools, client, subjects) = (pools.clone(), client.clone(), subjects.clone());
                async move { pools.serve(client, subjects, stop).await }
            });
        }
        crate::submit::serve(
            publisher.clone(),
            subjects.clone(),
            crate::submit::Doors {
                intake: intake.clone(),
                workers: workers.clone(),
                audit: audit.clone(),
            },
            shutdown.clone(),
        )
        .await
        .map_err(|source| EngineError::Subscribe {
            what: "the submit subjects",
            source,
        })?;

        {
            let (projection, js, subjects) = (projection.clone(), sub_js.clone(), subjects.clone());
            tasks.restart("projection", shutdown.clone(), move |stop| {
                let (projection, js, subjects) = (projection.clone(), js.clone(), subjects.clone());
                async move { projection.follow(&js, &subjects, stop).await }
            });
        }
        let reactor = Reactor::new(journal.clone());
        let reactor_stats = reactor.stats();
        if config.reactor {
            tasks.once(
                "deadlines",
                crate::deadlines::arm(
                    reactor.clone(),
                    projection.clone(),
                    live.clone(),
                    shutdown.clone(),
                ),
            );
            let (dead_letters, js, replicas) = (reactor.clone(), sub_js.clone(), layout.replicas);
            tasks.restart("dead-letter reactions", shutdown.clone(), move |stop| {
                let (reactor, js) = (dead_letters.clone(), js.clone());
                async move { reactor.run_dead_letters(&js, replicas, stop).await }
            });
            let (js, replicas) = (sub_js.clone(), layout.replicas);
            tasks.restart("reactor", shutdown.clone(), move |stop| {
                let (reactor, js) = (reactor.clone(), js.clone());
                async move { reactor.run(&js, replicas, stop).await }
            });
        }

        let workflows = crate::workflows::Workflows::new(workflows);
        let runner = crate::workflow_runner::Runner::new(
            runlog_events::workflow::log::WorkflowLog::new(
                pub_js.clone(),
                subjects.clone(),
                journal.source(),
            ),
            intake.clone(),
            workflows.clone(),
            projection.clone(),
        );
        {
            let (runner, js, stop) = (runner.clone(), sub_js.clone(), shutdown.clone());
            tasks.once("workflow runner", async move {
                runner.run(js, run_ends_rx, stop).await;
            });
        }
        let scheduler = crate::scheduler::Scheduler::new(
            runlog_events::schedule::log::ScheduleLog::new(
                pub_js.clone(),
                subjects.clone(),
                journal.source(),
            ),
            intake.clone(),
            runner.clone(),
            projection.clone(),
        );
        {
            let (scheduler, js, stop) = (scheduler.clone(), sub_js.clone(), shutdown.clone());
            let (replicas, ticks) = (layout.replicas, config.reactor);
            tasks.once("scheduler", async move {
                scheduler.run(js, replicas, ticks, stop).await;
            });
        }
        let retries = Retries::new(intake.clone(), journal.clone(), projection.clone());
        let executions = Executions {
            projection: projection.clone(),
            journal: journal.clone(),
            retries: retries.clone(),
        };
        let state = ApiState {
            intake,
            journal,
            retries,
            workflows,
            runner,
            scheduler,
            workers,
            pools,
            projection: projection.clone(),
            live,
            subjects,
            js: sub_js,
            shutdown: shutdown.clone(),
            operations: operations.clone(),
            reactor: reactor_stats,
            stuck_after: config.stuck_after,
            metrics,
            feeds: crate::metrics::FeedCount::default(),
            audit,
            prices: config.prices,
            tokens,
            secrets,
            auth: config.auth,
        };
        tasks.once(
            "bulk operations",
            operations.supervise(executions, shutdown.clone()),
        );
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| EngineError::Listen {
                addr: config.listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EngineError::Listen {
                addr: config.listen,
                source,
            })?;
        let app = api::router(state);
        let stop = shutdown.clone();
        tasks.once("HTTP API", async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "the HTTP API stopped");
            }
        });
        tracing::info!(%addr, "engine started");
        Ok(Engine {
            addr,
            projection,
            tasks,
            traces,
        })
    }

    /// Where the HTTP API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The read model.
    pub fn projection(&self) -> &Arc<Projection> {
        &self.projection
    }

    /// Waits until every part stopped (after the shutdown token was
    /// cancelled).
    pub async fn wait(self) {
        self.tasks.wait().await;
        if let Some(traces) = &self.traces {
            // The spans of the last executions, unless the receiver is down.
            let _late = tokio::time::timeout(TRACES_FLUSH, traces.flush()).await;
        }
    }
}

/// With auth on, makes sure someone can get in: when no admin token exists,
/// makes one and writes it to `file` (readable by its owner only).
async fn bootstrap(
    tokens: &crate::tokens::Tokens,
    file: Option<&std::path::Path>,
) -> Result<(), EngineError> {
    let failed =
        |e: &dyn std::fmt::Display| EngineError::Auth(format!("cannot check the API tokens: {e}"));
    if tokens.has_admin().await.map_err(|e| failed(&e))? {
        return Ok(());
    }
    let Some(file) = file else {
        return Err(EngineError::Auth(
            "auth is on and no admin token exists: set --bootstrap-token-file \
             (engine.bootstrap-token-file) and the engine writes one there"
                .to_owned(),
        ));
    };
    let new = crate::tokens::NewToken {
        name: "bootstrap".to_owned(),
        scopes: [crate::tokens::Scope::Admin].into(),
        queues: Vec::new(),
    };
    let issued = tokens.create(new, "engine").await.map_err(|e| failed(&e))?;
    write_private(file, &issued.token).map_err(|e| {
        EngineError::Auth(format!(
            "cannot write the bootstrap token to {}: {e}",
            file.display()
        ))
    })?;
    tracing::warn!(
        file = %file.display(),
        token = issued.id,
        "no admin token existed: one was written to the file; make your own with \
         `runlog token create` and revoke this one"
    );
    Ok(())
}

/// Writes `text` to `path`, readable and writable by its owner only.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{text}")
}
