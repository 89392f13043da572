//! `runlog server`: the inventory `ssh` tasks name (`docs/servers.md`):
//! add, list, show with the newest runs, test the connection, remove.
//!
//! ```text
//! runlog server add web-1 --address 10.0.0.5 --user deploy --key-secret deploy-key \
//!     --host-key 'ssh-ed25519 AAAA…' -l role=web
//! runlog server ls
//! runlog server test web-1
//! runlog submit ssh -i '{"server": "web-1", "argv": ["uptime"]}'
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde_json::{Value, json};

use super::render::{self, Table, parse_duration, parse_pair};
use super::{Conn, Error, Exit, path_id};

/// Options of `runlog server`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

impl Args {
    /// The connection options (every subcommand takes them).
    pub fn conn(&self) -> &Conn {
        match &self.command {
            Command::Add(add) => &add.conn,
            Command::Ls { conn }
            | Command::Show { conn, .. }
            | Command::Test { conn, .. }
            | Command::Rm { conn, .. } => conn,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Add a server (or, with --replace, replace one of the same name).
    Add(Box<AddArgs>),
    /// List the servers with their last run.
    Ls {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a server and its newest runs.
    Show {
        /// The server's name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Test the connection: a worker connects afresh, checks the host key
    /// and the key, and runs `uname -a`. Exits 0 when it worked, 1 when not.
    Test {
        /// The server's name.
        name: String,
        /// The queue whose workers hold the server's key.
        #[arg(long, short)]
        queue: Option<String>,
        /// How long to wait for a worker to finish the test.
        #[arg(long, value_parser = parse_duration, value_name = "DURATION", default_value = "30s")]
        timeout: Duration,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a server; the executions that ran on it stay.
    Rm {
        /// The server's name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Options of `runlog server add`.
#[derive(Debug, clap::Args)]
struct AddArgs {
    /// The server's name (letters, digits, `-`, `_`).
    name: String,
    /// Host name or address.
    #[arg(long)]
    address: String,
    /// SSH port.
    #[arg(long, default_value_t = 22)]
    port: u16,
    /// The user to log in as.
    #[arg(long)]
    user: String,
    /// The secret holding the private key (workers read it from
    /// RUNLOG_SECRET_<NAME>).
    #[arg(long, value_name = "SECRET")]
    key_secret: String,
    /// The secret holding the key's passphrase.
    #[arg(long, value_name = "SECRET")]
    passphrase_secret: Option<String>,
    /// A host key to accept: a public key line or a SHA256: fingerprint
    /// (repeatable). Without it, the workers' ~/.ssh/known_hosts decides.
    #[arg(long = "host-key", value_name = "KEY")]
    host_keys: Vec<String>,
    /// A label tasks select servers by (repeatable).
    #[arg(long = "label", short = 'l', value_parser = parse_pair, value_name = "KEY=VALUE")]
    labels: Vec<(String, String)>,
    /// What the server is, for people.
    #[arg(long)]
    description: Option<String>,
    /// Replace a server of the same name instead of refusing.
    #[arg(long)]
    replace: bool,
    #[command(flatten)]
    conn: Conn,
}

/// Runs `runlog server`.
pub async fn run(args: Args) -> Result<Exit, Error> {
    let conn = args.conn().clone();
    let client = conn.client()?;
    let json_out = conn.json();
    match args.command {
        Command::Add(add) => {
            let labels: BTreeMap<String, String> = add.labels.iter().cloned().collect();
            let body = json!({
                "name": add.name,
                "address": add.address,
                "port": add.port,
                "user": add.user,
                "key_secret": add.key_secret,
                "passphrase_secret": add.passphrase_secret,
                "host_key": add.host_keys,
                "labels": labels,
                "description": add.description,
            });
            let view: Value = if add.replace {
                client.put(&route(&add.name, ""), &body).await?
            } else {
                client.post("/v1/servers", &body).await?
            };
            if json_out {
                println!("{view}");
            } else {
                println!(
                    "{} server {} ({})",
                    if add.replace { "stored" } else { "added" },
                    text(&view["name"]),
                    address(&view)
                );
            }
            Ok(Exit::Success)
        }
        Command::Ls { .. } => {
            let body: Value = client.get("/v1/servers", &[]).await?;
            if json_out {
                println!("{body}");
                return Ok(Exit::Success);
            }
            let now = Utc::now();
            let mut table = Table::new(&["NAME", "ADDRESS", "LABELS", "LAST RUN"]);
            for server in body["servers"].as_array().into_iter().flatten() {
                table.row(vec![
                    text(&server["name"]).to_owned(),
                    address(server),
                    labels(server),
                    last_run(&server["history"]["last_run"], now),
                ]);
            }
            table.print();
            Ok(Exit::Success)
        }
        Command::Show { name, .. } => {
            let view: Value = client.get(&route(&name, ""), &[]).await?;
            if json_out {
                println!("{view}");
                return Ok(Exit::Success);
            }
            let now = Utc::now();
            println!("{}: {}", text(&view["name"]), address(&view));
            if let Some(description) = view["description"].as_str() {
                println!("  {description}");
            }
            println!("  key:       secret {}", text(&view["key_secret"]));
            let pins: Vec<&str> = view["host_key"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            println!(
                "  host keys: {}",
                if pins.is_empty() {
                    "the workers' known_hosts".to_owned()
                } else {
                    pins.join(", ")
                }
            );
            println!("  labels:    {}", labels(&view));
            let runs = view["history"]["runs"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if runs.is_empty() {
                println!("no runs yet");
            } else {
                let mut table = Table::new(&["RUN", "STATUS", "WHEN"]);
                for run in &runs {
                    table.row(vec![
                        text(&run["id"]).to_owned(),
                        text(&run["status"]).to_owned(),
                        ago(&run["submitted_at"], now),
                    ]);
                }
                table.print();
            }
            Ok(Exit::Success)
        }
        Command::Test {
            name,
            queue,
            timeout,
            ..
        } => {
            let mut body = json!({"timeout_ms": timeout.as_millis() as u64});
            if let Some(queue) = queue {
                body["queue"] = json!(queue);
            }
            let answer: Value = client.post(&route(&name, "/test"), &body).await?;
            if json_out {
                println!("{answer}");
            } else if answer["ok"] == true {
                println!(
                    "{name}: ok in {} ms (connect {} ms, command {} ms)",
                    answer["elapsed_ms"], answer["connect_ms"], answer["latency_ms"]
                );
                println!("  host key: {}", text(&answer["host_key"]));
                println!("  uname:    {}", text(&answer["uname"]));
            } else {
                println!(
                    "{name}: failed ({}): {}",
                    text(&answer["error"]["class"]),
                    text(&answer["error"]["message"])
                );
            }
            Ok(if answer["ok"] == true {
                Exit::Success
            } else {
                Exit::TaskFailed
            })
        }
        Command::Rm { name, .. } => {
            let answer: Value = client.delete(&route(&name, "")).await?;
            if json_out {
                println!("{answer}");
            } else {
                println!("removed server {name}");
            }
            Ok(Exit::Success)
        }
    }
}

fn route(name: &str, rest: &str) -> String {
    format!("/v1/servers/{}{rest}", path_id(name))
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

fn address(server: &Value) -> String {
    format!(
        "{}@{}:{}",
        text(&server["user"]),
        text(&server["address"]),
        server["port"]
    )
}

fn labels(server: &Value) -> String {
    let labels: Vec<String> = server["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    if labels.is_empty() {
        "-".to_owned()
    } else {
        labels.join(",")
    }
}

fn ago(at: &Value, now: DateTime<Utc>) -> String {
    at.as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(
            || "-".to_owned(),
            |t| format!("{} ago", render::duration(now - t.with_timezone(&Utc))),
        )
}

fn last_run(run: &Value, now: DateTime<Utc>) -> String {
    if run.is_null() {
        return "-".to_owned();
    }
    format!(
        "{} {}",
        text(&run["status"]),
        ago(&run["submitted_at"], now)
    )
}
