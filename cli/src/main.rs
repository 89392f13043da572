//! `runlog`: the one binary. Parses the command line and runs a command.

mod client;
mod config_args;
mod dev;
mod dlq;
mod engine;
mod worker;

use clap::{Parser, Subcommand};

/// An event-sourced task execution engine on NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "runlog", version, about)]
struct Cli {
    /// How log lines go to stderr: `text`, or `json` (an object per line;
    /// lines about an attempt carry its execution, attempt, queue and trace
    /// id in `span`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "RUNLOG_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

/// The `--log-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run everything on this machine: nats-server, the engine (HTTP API and
    /// dashboard) and a worker; `--demo` adds a small mixed load.
    Dev(dev::Args),
    /// Run the engine: intake, reactor, projections and the HTTP API.
    Engine(engine::Args),
    /// Run a worker: pull work by priority, run it, record the result.
    Worker(Box<worker::Args>),
    /// Submit a task: `runlog submit shell --wait -- sh -c 'echo hi'`.
    #[command(after_help = client::EXIT_CODES)]
    Submit(client::submit::Args),
    /// Show one execution: state, attempts, progress, output or error.
    #[command(after_help = client::EXIT_CODES)]
    Status(client::status::Args),
    /// List executions, newest first (filters: --status, --queue, --kind,
    /// --label, --since).
    #[command(name = "ls", alias = "list", after_help = client::EXIT_CODES)]
    Ls(client::list::Args),
    /// A live table of executions, refreshed as events arrive (one line per
    /// event when not on a terminal).
    #[command(after_help = client::EXIT_CODES)]
    Watch(client::watch::Args),
    /// Print the lines an execution wrote; -f follows until it ends.
    #[command(after_help = client::EXIT_CODES)]
    Logs(client::logs::Args),
    /// Cancel an execution: a waiting one at once, a running one is stopped.
    #[command(after_help = client::EXIT_CODES)]
    Cancel(client::control::CancelArgs),
    /// Run an ended, unsuccessful execution again as a new execution.
    #[command(after_help = client::EXIT_CODES)]
    Retry(client::control::RetryArgs),
    /// List the live workers: queues, labels, slots in use.
    #[command(after_help = client::EXIT_CODES)]
    Workers(client::cluster::Args),
    /// Show every queue: attempts waiting per priority, running, retrying.
    #[command(after_help = client::EXIT_CODES)]
    Queues(client::cluster::Args),
    /// Dead letters: list, show, replay in bulk, follow bulk operations.
    Dlq(dlq::Args),
    /// Workflows: apply definitions, run, follow as a live tree of nodes,
    /// cancel, retry from the failed nodes.
    #[command(after_help = client::EXIT_CODES)]
    Workflow(client::workflow::Args),
    /// Schedules: create (cron in a time zone, or an interval), list, show
    /// with their runs, pause, resume, delete, run now, backfill.
    #[command(after_help = client::EXIT_CODES)]
    Schedule(client::schedule::Args),
    /// Servers that ssh tasks name: add, list, show with their runs, test
    /// the connection, remove.
    #[command(after_help = client::EXIT_CODES)]
    Server(client::server::Args),
    /// Agent pools: create one (prints its token), list them with their
    /// agents and load, make and revoke tokens.
    #[command(after_help = client::EXIT_CODES)]
    Pool(client::pool::Args),
    /// API tokens: make one with scopes (and queues), list them, revoke
    /// one (needs an admin token once auth is on).
    #[command(after_help = client::EXIT_CODES)]
    Token(client::token::Args),
    /// Secrets, sealed at rest: make a key file, set one (from stdin or a
    /// file; never printed), list, remove, seal everything again under a
    /// new key (needs an admin token once auth is on).
    #[command(after_help = client::EXIT_CODES)]
    Secret(client::secret::Args),
    /// The audit trail, newest first: who changed what, from where, and
    /// the answer (filters: --actor, --route, --method, --target, --since).
    #[command(after_help = client::EXIT_CODES)]
    Audit(client::audit::Args),
    /// What executions used (CPU, memory, bytes) and cost, summed by queue,
    /// kind, label or day; with an id, one execution attempt by attempt.
    #[command(after_help = client::EXIT_CODES)]
    Costs(client::costs::Args),
    /// Write the JSON Schema of every event and command (for clients in
    /// other languages).
    Schema {
        /// The folder to write into.
        #[arg(long, default_value = "docs/protocol/schema")]
        out: std::path::PathBuf,
    },
}

// Engine and worker allocate per message (headers, bodies, envelopes); the
// system allocator's malloc and free were a sixth of a worker's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Logs to stderr at the level `RUNLOG_LOG` names (`warn` by default).
fn init_logs(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUNLOG_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let result = match cli.command {
        Cmd::Dev(args) => dev::run(args).await,
        Cmd::Engine(args) => engine::run(args).await,
        Cmd::Worker(args) => worker::run(*args).await,
        Cmd::Schema { out } => write_schema(&out),
        Cmd::Dlq(args) => dlq::run(args).await,
        Cmd::Submit(args) => {
            return client::execute(args.conn().clone(), client::submit::run(args)).await;
        }
        Cmd::Status(args) => {
            return client::execute(args.conn().clone(), client::status::run(args)).await;
        }
        Cmd::Ls(args) => {
            return client::execute(args.conn().clone(), client::list::run(args)).await;
        }
        Cmd::Watch(args) => {
            return client::execute(args.conn().clone(), client::watch::run(args)).await;
        }
        Cmd::Logs(args) => {
            return client::execute(args.conn().clone(), client::logs::run(args)).await;
        }
        Cmd::Cancel(args) => {
            return client::execute(args.conn().clone(), client::control::cancel(args)).await;
        }
        Cmd::Retry(args) => {
            return client::execute(args.conn().clone(), client::control::retry(args)).await;
        }
        Cmd::Workers(args) => {
            return client::execute(args.conn().clone(), client::cluster::workers(args)).await;
        }
        Cmd::Queues(args) => {
            return client::execute(args.conn().clone(), client::cluster::queues(args)).await;
        }
        Cmd::Workflow(args) => {
            return client::execute(args.conn().clone(), client::workflow::run(args)).await;
        }
        Cmd::Schedule(args) => {
            return client::execute(args.conn().clone(), client::schedule::run(args)).await;
        }
        Cmd::Server(args) => {
            return client::execute(args.conn().clone(), client::server::run(args)).await;
        }
        Cmd::Pool(args) => {
            return client::execute(args.conn().clone(), client::pool::run(args)).await;
        }
        Cmd::Token(args) => {
            return client::execute(args.conn().clone(), client::token::run(args)).await;
        }
        Cmd::Secret(args) => {
            return client::execute(args.conn().clone(), client::secret::run(args)).await;
        }
        Cmd::Audit(args) => {
            return client::execute(args.conn().clone(), client::audit::run(args)).await;
        }
        Cmd::Costs(args) => {
            return client::execute(args.conn().clone(), client::costs::run(args)).await;
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn write_schema(out: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let written = runlog_events::schema::write_all(out)
        .with_context(|| format!("cannot write the schema to {}", out.display()))?;
    println!("wrote {} schema files to {}", written.len(), out.display());
    Ok(())
}

/// Every setting of the tree has its row in the operations guide.
#[cfg(test)]
mod settings_documented {
    use runlog_config::NATS;

    use crate::engine::ENGINE;
    use crate::worker::table::WORKER;

    #[test]
    fn every_setting_is_documented_with_its_variable_and_flag() {
        let doc = include_str!("../../docs/operations.md");
        for setting in NATS.iter().chain(&ENGINE).chain(&WORKER) {
            let (_, key) = setting.key.split_once('.').expect("a key is in a table");
            let row = format!("| `{key}` | `{}`", setting.env);
            let line = doc.lines().find(|line| line.starts_with(&row));
            let line = line.unwrap_or_else(|| panic!("docs/operations.md has no row {row}"));
            assert!(line.contains(&format!("`{}", setting.flag)), "{line}");
        }
    }
}
