//! `runlog token`: the API's tokens (docs/security.md). Needs an `admin`
//! token itself, once auth is on.
//!
//! ```text
//! runlog token create ci --scope submit --queue builds
//! runlog token ls
//! runlog token revoke a1b2c3d4
//! ```

use clap::Subcommand;
use serde_json::{Value, json};

use super::render::Table;
use super::{Conn, Error, Exit, path_id};

/// Options of `runlog token`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

impl Args {
    /// The connection options (every subcommand takes them).
    pub fn conn(&self) -> &Conn {
        match &self.command {
            Command::Create { conn, .. } | Command::Ls { conn } | Command::Revoke { conn, .. } => {
                conn
            }
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a token; prints it once (only its hash is kept).
    Create {
        /// Who or what will hold it (`ci`, `alice`): the audit trail's actor.
        name: String,
        /// What it may do: read, submit, operate, admin (repeat, or
        /// comma-separated). `admin` includes every other; `submit` and
        /// `operate` include `read`.
        #[arg(long = "scope", value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Limit it to this queue (repeat, or comma-separated): it submits
        /// only there and reads and operates only on those executions.
        #[arg(long = "queue", value_delimiter = ',')]
        queues: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List the tokens: name, scopes, queues, made, revoked.
    Ls {
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke a token: it is refused from its next request.
    Revoke {
        /// The token's id (the part before the dot).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Runs `runlog token`.
pub async fn run(args: Args) -> Result<Exit, Error> {
    let conn = args.conn().clone();
    let client = conn.client()?;
    match args.command {
        Command::Create {
            name,
            scopes,
            queues,
            ..
        } => {
            let answer: Value = client
                .post(
                    "/v1/tokens",
                    &json!({"name": name, "scopes": scopes, "queues": queues}),
                )
                .await?;
            if conn.json() {
                println!("{answer}");
            } else {
                println!(
                    "token {} ({}):\n{}\n(shown only now: keep it in RUNLOG_TOKEN or a file for --token-file)",
                    answer["id"].as_str().unwrap_or("?"),
                    answer["name"].as_str().unwrap_or("?"),
                    answer["token"].as_str().unwrap_or("?"),
                );
            }
        }
        Command::Ls { .. } => {
            let body: Value = client.get("/v1/tokens", &[]).await?;
            if conn.json() {
                println!("{body}");
                return Ok(Exit::Success);
            }
            let list = |v: &Value| {
                let items: Vec<&str> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if items.is_empty() {
                    "-".to_owned()
                } else {
                    items.join(",")
                }
            };
            let mut table = Table::new(&["ID", "NAME", "SCOPES", "QUEUES", "CREATED", "REVOKED"]);
            for token in body["tokens"].as_array().into_iter().flatten() {
                table.row(vec![
                    token["id"].as_str().unwrap_or("?").into(),
                    token["name"].as_str().unwrap_or("?").into(),
                    list(&token["scopes"]),
                    list(&token["queues"]),
                    token["created_at"].as_str().unwrap_or("-").into(),
                    token["revoked_at"].as_str().unwrap_or("-").into(),
                ]);
            }
            table.print();
        }
        Command::Revoke { id, .. } => {
            let answer: Value = client
                .delete(&format!("/v1/tokens/{}", path_id(&id)))
                .await?;
            if conn.json() {
                println!("{answer}");
            } else {
                println!(
                    "revoked token {id} ({})",
                    answer["name"].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(Exit::Success)
}
