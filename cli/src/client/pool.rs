//! `runlog pool`: agent pools and their tokens (docs/workers.md#agent-pools).
//!
//! ```text
//! runlog pool create tf
//! runlog pool ls
//! runlog pool token create tf
//! runlog pool token revoke tf a1b2c3d4
//! ```

use clap::Subcommand;
use serde_json::{Value, json};

use super::render::Table;
use super::{Conn, Error, Exit, path_id};

/// Options of `runlog pool`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

impl Args {
    /// The connection options (every subcommand takes them).
    pub fn conn(&self) -> &Conn {
        match &self.command {
            Command::Create { conn, .. } | Command::Ls { conn } => conn,
            Command::Token { command } => match command {
                TokenCommand::Create { conn, .. } | TokenCommand::Revoke { conn, .. } => conn,
            },
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a pool; prints its first token, the only time it is shown.
    Create {
        /// The pool's name, also its queue (1-64 of A-Z a-z 0-9 _ -).
        name: String,
        /// What the pool is, for people.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List the pools with their agents, capacity, load and tokens.
    Ls {
        #[command(flatten)]
        conn: Conn,
    },
    /// Make or revoke a pool's tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// A new token for the pool (printed once).
    Create {
        /// The pool.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke a token: its agents are refused at their next join.
    Revoke {
        /// The pool.
        name: String,
        /// The token's id (the part before the dot).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Runs `runlog pool`.
pub async fn run(args: Args) -> Result<Exit, Error> {
    let conn = args.conn().clone();
    let client = conn.client()?;
    let json_out = conn.json();
    let issued = |answer: &Value| {
        if json_out {
            println!("{answer}");
        } else {
            println!(
                "pool {} token {}:\n{}\n(shown only now: hand it to the pool's agents, \
                 runlog worker --pool {} --token-file FILE)",
                answer["pool"].as_str().unwrap_or("?"),
                answer["id"].as_str().unwrap_or("?"),
                answer["token"].as_str().unwrap_or("?"),
                answer["pool"].as_str().unwrap_or("?"),
            );
        }
    };
    match args.command {
        Command::Create {
            name, description, ..
        } => {
            let answer: Value = client
                .post(
                    "/v1/pools",
                    &json!({"name": name, "description": description}),
                )
                .await?;
            issued(&answer);
        }
        Command::Token {
            command: TokenCommand::Create { name, .. },
        } => {
            let path = format!("/v1/pools/{}/tokens", path_id(&name));
            let answer: Value = client.post(&path, &json!({})).await?;
            issued(&answer);
        }
        Command::Token {
            command: TokenCommand::Revoke { name, id, .. },
        } => {
            let path = format!("/v1/pools/{}/tokens/{}", path_id(&name), path_id(&id));
            let answer: Value = client.delete(&path).await?;
            if json_out {
                println!("{answer}");
            } else {
                println!("revoked token {id} of pool {name}");
            }
        }
        Command::Ls { .. } => {
            let body: Value = client.get("/v1/pools", &[]).await?;
            if json_out {
                println!("{body}");
                return Ok(Exit::Success);
            }
            let mut table = Table::new(&["POOL", "AGENT", "HOST", "RUNNING", "CAPACITY"]);
            for pool in body["pools"].as_array().into_iter().flatten() {
                let name = pool["name"].as_str().unwrap_or("?");
                let agents = pool["agents"].as_array().cloned().unwrap_or_default();
                if agents.is_empty() {
                    table.row(vec![
                        name.into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "no agent".into(),
                    ]);
                }
                for agent in agents {
                    table.row(vec![
                        name.into(),
                        agent["id"].as_str().unwrap_or("?").into(),
                        agent["host"].as_str().unwrap_or("?").into(),
                        format!("{}/{}", agent["running"], agent["slots"]),
                        agent["summary"]
                            .as_str()
                            .filter(|s| !s.is_empty())
                            .unwrap_or("-")
                            .into(),
                    ]);
                }
            }
            table.print();
            for pool in body["pools"].as_array().into_iter().flatten() {
                let tokens: Vec<String> = pool["tokens"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        let id = t["id"].as_str().unwrap_or("?");
                        if t["revoked_at"].is_null() {
                            id.to_owned()
                        } else {
                            format!("{id} (revoked)")
                        }
                    })
                    .collect();
                println!(
                    "{}: tokens {}",
                    pool["name"].as_str().unwrap_or("?"),
                    if tokens.is_empty() {
                        "-".to_owned()
                    } else {
                        tokens.join(", ")
                    }
                );
            }
        }
    }
    Ok(Exit::Success)
}
