//! `runlog cancel ID` and `runlog retry ID`.

use std::io::IsTerminal;

use serde_json::{Value, json};

use super::views::Accepted;
use super::{Conn, Error, Exit, path_id, submit};

/// Options of `runlog cancel`.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The execution id.
    id: String,
    /// Why, recorded in the execution's history.
    #[arg(long, short)]
    reason: Option<String>,
    /// Wait until the execution has stopped (a running attempt is stopped
    /// after its kill grace); exit 3 once it is cancelled.
    #[arg(long, short)]
    wait: bool,
    #[command(flatten)]
    conn: Conn,
}

impl CancelArgs {
    /// The connection options.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }
}

/// Runs `runlog cancel`.
pub async fn cancel(args: CancelArgs) -> Result<Exit, Error> {
    let client = args.conn.client()?;
    let body = match &args.reason {
        Some(reason) => json!({"reason": reason}),
        None => json!({"reason": "cancelled with `runlog cancel`"}),
    };
    let raw: Value = client
        .post(
            &format!("/v1/executions/{}/cancel", path_id(&args.id)),
            &body,
        )
        .await?;
    if args.wait {
        return submit::follow(&client, &args.id, &args.conn).await;
    }
    if args.conn.json() {
        println!("{raw}");
    } else {
        let status = raw["status"].as_str().unwrap_or("unknown");
        if raw["cancel_requested"].as_bool() == Some(true) && status != "cancelled" {
            println!(
                "{}: cancel requested; its worker stops the running attempt \
                 (`runlog status {}` shows when it ended)",
                args.id, args.id
            );
        } else {
            println!("{}: {status}", args.id);
        }
    }
    Ok(Exit::Success)
}

/// Options of `runlog retry`.
#[derive(Debug, clap::Args)]
pub struct RetryArgs {
    /// The id of an ended, unsuccessful execution (dead-lettered, timed out
    /// or cancelled).
    id: String,
    /// Follow the new execution to its end and exit with its outcome.
    #[arg(long, short)]
    wait: bool,
    #[command(flatten)]
    conn: Conn,
}

impl RetryArgs {
    /// The connection options.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }
}

/// Runs `runlog retry`: a new execution with the same spec (and sealed
/// environment), linked to the original.
pub async fn retry(args: RetryArgs) -> Result<Exit, Error> {
    let client = args.conn.client()?;
    let raw: Value = client
        .post(
            &format!("/v1/executions/{}/retry", path_id(&args.id)),
            &json!({}),
        )
        .await?;
    let accepted: Accepted = serde_json::from_value(raw.clone())
        .map_err(|e| Error::Protocol(format!("cannot read the engine's answer: {e}")))?;
    if args.wait {
        if !args.conn.json() {
            eprintln!("retrying {} as {}", args.id, accepted.id);
        }
        return submit::follow(&client, &accepted.id, &args.conn).await;
    }
    if args.conn.json() {
        println!("{raw}");
    } else {
        println!("{}", accepted.id);
        if std::io::stderr().is_terminal() {
            eprintln!(
                "retrying {} as {} ({}); `runlog logs -f {}` follows it",
                args.id, accepted.id, accepted.status, accepted.id
            );
        }
    }
    Ok(Exit::Success)
}
