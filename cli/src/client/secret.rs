//! `runlog secret`: named secrets, sealed at rest in the engine's secrets
//! store (docs/security.md). A value goes in from stdin or a file and is
//! never printed back; tasks and servers name secrets, and the worker that
//! runs an attempt resolves them.
//!
//! ```text
//! runlog secret keygen /etc/runlog/secret.key
//! printf %s "$PASSWORD" | runlog secret set restic-password
//! runlog secret set deploy-key --from-file ~/.ssh/id_ed25519
//! runlog secret ls
//! runlog secret rm restic-password
//! runlog secret rotate
//! ```

use std::io::Read;
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::render::Table;
use super::{Conn, Error, Exit, path_id};

/// Options of `runlog secret`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

impl Args {
    /// The connection options (every subcommand takes them).
    pub fn conn(&self) -> &Conn {
        match &self.command {
            Command::Set { conn, .. }
            | Command::Ls { conn }
            | Command::Rm { conn, .. }
            | Command::Rotate { conn }
            | Command::Keygen { conn, .. } => conn,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set a secret; its value is read from stdin (one trailing newline
    /// dropped) or from --from-file, and never printed.
    Set {
        /// Its name (`restic-password`): 1 to 128 of A-Z a-z 0-9 _ . -.
        name: String,
        /// Read the value from this file (whole, as it is).
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List the secrets: name, when set, the key that sealed it. Never values.
    Ls {
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a secret.
    Rm {
        /// Its name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Seal every secret and task environment again under the current key
    /// (the first line of the engine's key file); then the old keys' lines
    /// can go.
    Rotate {
        #[command(flatten)]
        conn: Conn,
    },
    /// Write a new key file (mode 0600) for --secret-key-file; to rotate,
    /// put a new key's line first in the engine's and workers' key file.
    Keygen {
        /// The file to create; an existing one is never overwritten.
        file: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Runs `runlog secret`.
pub async fn run(args: Args) -> Result<Exit, Error> {
    let conn = args.conn().clone();
    if let Command::Keygen { file, .. } = &args.command {
        return keygen(file);
    }
    let client = conn.client()?;
    match args.command {
        Command::Set {
            name, from_file, ..
        } => {
            let value = read_value(from_file.as_deref())?;
            let answer: Value = client
                .put(
                    &format!("/v1/secrets/{}", path_id(&name)),
                    &json!({ "value": value.as_str() }),
                )
                .await?;
            if conn.json() {
                println!("{answer}");
            } else {
                println!(
                    "secret {name} set ({} bytes, sealed under key {})",
                    value.len(),
                    answer["key"].as_str().unwrap_or("?")
                );
            }
        }
        Command::Ls { .. } => {
            let body: Value = client.get("/v1/secrets", &[]).await?;
            if conn.json() {
                println!("{body}");
                return Ok(Exit::Success);
            }
            let mut table = Table::new(&["NAME", "UPDATED", "KEY"]);
            for secret in body["secrets"].as_array().into_iter().flatten() {
                table.row(vec![
                    secret["name"].as_str().unwrap_or("?").into(),
                    secret["updated_at"].as_str().unwrap_or("-").into(),
                    secret["key"].as_str().unwrap_or("?").into(),
                ]);
            }
            table.print();
        }
        Command::Rm { name, .. } => {
            let answer: Value = client
                .delete(&format!("/v1/secrets/{}", path_id(&name)))
                .await?;
            if conn.json() {
                println!("{answer}");
            } else {
                println!("removed secret {name}");
            }
        }
        Command::Rotate { .. } => {
            let answer: Value = client.post("/v1/secrets/rotate", &json!({})).await?;
            if conn.json() {
                println!("{answer}");
            } else {
                let count = |k: &str| answer[k].as_u64().unwrap_or(0);
                println!(
                    "sealed again under key {}: {} secrets, {} task environments ({} were plain)",
                    answer["key"].as_str().unwrap_or("?"),
                    count("secrets"),
                    count("environments") + count("plain_environments"),
                    count("plain_environments"),
                );
                let unreadable: Vec<&str> = answer["unreadable"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if !unreadable.is_empty() {
                    println!(
                        "no key of the ring opens these, left as they are: {}",
                        unreadable.join(", ")
                    );
                    return Ok(Exit::Other);
                }
            }
        }
        Command::Keygen { .. } => unreachable!("handled before connecting"),
    }
    Ok(Exit::Success)
}

fn keygen(file: &std::path::Path) -> Result<Exit, Error> {
    match runlog_events::sealing::Keyring::create_file(file) {
        Ok(true) => {
            println!(
                "wrote a new secret key to {} (mode 0600): give it to the engine and the \
                 workers with --secret-key-file, and keep a copy safe: without it nothing \
                 sealed opens",
                file.display()
            );
            Ok(Exit::Success)
        }
        Ok(false) => Err(Error::Usage(format!(
            "{} exists already; it was left as it is",
            file.display()
        ))),
        Err(e) => Err(Error::Local(format!(
            "cannot write {}: {e}",
            file.display()
        ))),
    }
}

/// The value from `file`, or from stdin without one trailing newline.
fn read_value(file: Option<&std::path::Path>) -> Result<Zeroizing<String>, Error> {
    let mut value = Zeroizing::new(String::new());
    match file {
        Some(path) => {
            let mut f = std::fs::File::open(path)
                .map_err(|e| Error::Local(format!("cannot read {}: {e}", path.display())))?;
            f.read_to_string(&mut value)
                .map_err(|e| Error::Local(format!("cannot read {}: {e}", path.display())))?;
        }
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("the value (it is read to the end of input: Ctrl-D):");
            }
            std::io::stdin()
                .read_to_string(&mut value)
                .map_err(|e| Error::Local(format!("cannot read stdin: {e}")))?;
            if value.ends_with('\n') {
                value.pop();
                if value.ends_with('\r') {
                    value.pop();
                }
            }
        }
    }
    if value.is_empty() {
        return Err(Error::Usage("the secret's value is empty".to_owned()));
    }
    Ok(value)
}
