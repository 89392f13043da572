//! `runlog`: the one binary. Parses the command line and runs a command.

mod dev;
mod engine;
mod nats_args;
mod worker;

use clap::{Parser, Subcommand};

/// An event-sourced task execution engine on NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "runlog", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a local nats-server and run one execution through the engine's
    /// intake, a worker's claim and a replay of its log.
    Dev(dev::Args),
    /// Run the engine: intake, reactor, projections and the HTTP API.
    Engine(engine::Args),
    /// Run a worker: pull work by priority, run it, record the result.
    Worker(worker::Args),
    /// Write the JSON Schema of every event and command (for clients in
    /// other languages).
    Schema {
        /// The folder to write into.
        #[arg(long, default_value = "docs/protocol/schema")]
        out: std::path::PathBuf,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUNLOG_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Dev(args) => dev::run(args).await,
        Cmd::Engine(args) => engine::run(args).await,
        Cmd::Worker(args) => worker::run(args).await,
        Cmd::Schema { out } => write_schema(&out),
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
