//! `runlog workflow`: define versions, start executions, follow them as a
//! live tree of nodes, cancel and retry them (`docs/workflows.md`).
//!
//! ```text
//! runlog workflow apply report.yaml
//! runlog workflow ls
//! runlog workflow run report --input '{"since": "2026-12-01"}' --wait
//! runlog workflow status 01a2…
//! runlog workflow cancel 01a2…
//! runlog workflow retry 01a2… --wait
//! ```

use std::io::Write;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde_json::{Value, json};

use super::render::{self, Table};
use super::sse::Feed;
use super::{Client, Conn, Error, Exit, path_id, stdout_is_tty};

/// Options of `runlog workflow`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

impl Args {
    /// The connection options (every subcommand takes them).
    pub fn conn(&self) -> &Conn {
        match &self.command {
            Command::Apply { conn, .. }
            | Command::Ls { conn, .. }
            | Command::Run { conn, .. }
            | Command::Status { conn, .. }
            | Command::Cancel { conn, .. }
            | Command::Retry { conn, .. } => conn,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Define workflow versions from YAML or JSON files (a stored version
    /// never changes: the same content again is a no-op).
    Apply {
        /// The definition files.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List the workflows and their versions, or with --executions the
    /// executions, newest first.
    Ls {
        /// List executions instead (of this workflow only, with a name).
        #[arg(long)]
        executions: bool,
        /// With --executions: only this workflow's.
        name: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Start an execution; --wait follows it as a live tree of nodes and
    /// exits with its outcome.
    Run {
        /// The workflow's name.
        name: String,
        /// Its input, as JSON.
        #[arg(long, short, default_value = "{}")]
        input: String,
        /// A version (the newest when absent).
        #[arg(long)]
        version: Option<u32>,
        /// Follow it to its end.
        #[arg(long, short)]
        wait: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show an execution: every node with its state, timing and output.
    Status {
        /// The workflow execution id.
        id: String,
        /// Follow it to its end.
        #[arg(long, short)]
        wait: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Cancel an execution: its running nodes are stopped.
    Cancel {
        /// The workflow execution id.
        id: String,
        /// Why.
        #[arg(long, short)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Resume a failed, cancelled or timed-out execution from its failed
    /// nodes (nodes that succeeded are not run again).
    Retry {
        /// The workflow execution id.
        id: String,
        /// Follow it to its end.
        #[arg(long, short)]
        wait: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Runs `runlog workflow`.
pub async fn run(args: Args) -> Result<Exit, Error> {
    let client = args.conn().client()?;
    let json_out = args.conn().json();
    match args.command {
        Command::Apply { files, .. } => apply(&client, &files, json_out).await,
        Command::Ls {
            executions, name, ..
        } => ls(&client, executions, name, json_out).await,
        Command::Run {
            name,
            input,
            version,
            wait,
            ..
        } => {
            let input: Value = serde_json::from_str(&input)
                .map_err(|e| Error::Usage(format!("--input is not JSON: {e}")))?;
            let mut body = json!({"input": input});
            if let Some(version) = version {
                body["version"] = json!(version);
            }
            let view: Value = client
                .post(
                    &format!("/v1/workflows/{}/executions", path_id(&name)),
                    &body,
                )
                .await?;
            let id = view["id"].as_str().unwrap_or_default().to_owned();
            shown(&client, &id, view, wait, json_out).await
        }
        Command::Status { id, wait: true, .. } => follow(&client, &id, json_out).await,
        Command::Status { id, .. } => {
            let view: Value = client
                .get(&format!("/v1/workflow-executions/{}", path_id(&id)), &[])
                .await?;
            shown(&client, &id, view, false, json_out).await
        }
        Command::Cancel { id, reason, .. } => {
            let reason = reason.unwrap_or_else(|| "cancelled with `runlog workflow cancel`".into());
            let view: Value = client
                .post(
                    &format!("/v1/workflow-executions/{}/cancel", path_id(&id)),
                    &json!({"reason": reason}),
                )
                .await?;
            shown(&client, &id, view, false, json_out).await?;
            Ok(Exit::Success)
        }
        Command::Retry { id, wait, .. } => {
            let view: Value = client
                .post(
                    &format!("/v1/workflow-executions/{}/retry", path_id(&id)),
                    &json!({}),
                )
                .await?;
            shown(&client, &id, view, wait, json_out).await
        }
    }
}

async fn apply(
    client: &Client,
    files: &[std::path::PathBuf],
    json_out: bool,
) -> Result<Exit, Error> {
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| Error::Local(format!("cannot read {}: {e}", file.display())))?;
        let json_file = file.extension().is_some_and(|e| e == "json");
        let content_type = if json_file {
            "application/json"
        } else {
            "application/yaml"
        };
        let stored: Value = client
            .post_text("/v1/workflows", content_type, text)
            .await?;
        if json_out {
            println!("{stored}");
        } else {
            let what = if stored["existing"] == true {
                "unchanged"
            } else {
                "defined"
            };
            println!(
                "{} version {}: {what} ({} nodes)",
                stored["name"].as_str().unwrap_or("?"),
                stored["version"],
                stored["nodes"]
            );
        }
    }
    Ok(Exit::Success)
}

async fn ls(
    client: &Client,
    executions: bool,
    name: Option<String>,
    json_out: bool,
) -> Result<Exit, Error> {
    if !executions {
        let body: Value = client.get("/v1/workflows", &[]).await?;
        if json_out {
            println!("{body}");
            return Ok(Exit::Success);
        }
        let mut table = Table::new(&["NAME", "LATEST", "VERSIONS"]);
        for w in body["workflows"].as_array().into_iter().flatten() {
            let versions: Vec<String> = w["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(ToString::to_string)
                .collect();
            table.row(vec![
                w["name"].as_str().unwrap_or("?").to_owned(),
                w["latest"].to_string(),
                versions.join(","),
            ]);
        }
        table.print();
        return Ok(Exit::Success);
    }
    let mut query = vec![];
    if let Some(name) = name {
        query.push(("workflow", name));
    }
    let body: Value = client.get("/v1/workflow-executions", &query).await?;
    if json_out {
        println!("{body}");
        return Ok(Exit::Success);
    }
    let now = Utc::now();
    let mut table = Table::new(&["ID", "WORKFLOW", "STATUS", "NODES", "STARTED", "TOOK"]);
    for e in body["items"].as_array().into_iter().flatten() {
        let nodes = &e["nodes"];
        table.row(vec![
            e["id"].as_str().unwrap_or("?").to_owned(),
            format!(
                "{} v{}",
                e["workflow"].as_str().unwrap_or("?"),
                e["version"]
            ),
            e["status"].as_str().unwrap_or("?").to_owned(),
            format!("{}/{}", nodes["succeeded"], nodes["total"]),
            render::age(time(&e["started_at"]), now),
            took(e, now),
        ]);
    }
    table.print();
    Ok(Exit::Success)
}

/// Follows workflow execution `id` to its end (as `runlog workflow status
/// --wait`); the exit code says how it ended.
pub async fn follow(client: &Client, id: &str, json_out: bool) -> Result<Exit, Error> {
    let view: Value = client
        .get(&format!("/v1/workflow-executions/{}", path_id(id)), &[])
        .await?;
    shown(client, id, view, true, json_out).await
}

/// Prints `view` (and with `wait` follows it to its end); the exit code
/// says how it ended.
async fn shown(
    client: &Client,
    id: &str,
    view: Value,
    wait: bool,
    json_out: bool,
) -> Result<Exit, Error> {
    if !wait {
        if json_out {
            println!("{view}");
        } else {
            print!("{}", tree(&view, Utc::now()));
        }
        return Ok(exit_of(&view));
    }
    let mut feed = Feed::new(
        client,
        format!("/v1/workflow-executions/{}/stream", path_id(id)),
        vec![],
        None,
    );
    let redraw = !json_out && stdout_is_tty();
    let mut last = view;
    let mut drawn_lines = 0usize;
    loop {
        if json_out {
            println!("{last}");
        } else if redraw {
            let text = tree(&last, Utc::now());
            let mut out = std::io::stdout().lock();
            if drawn_lines > 0 {
                // Up to the first line of the last drawing, and clear below.
                let _ = write!(out, "\x1b[{drawn_lines}F\x1b[J");
            }
            let _ = write!(out, "{text}");
            let _ = out.flush();
            drawn_lines = text.lines().count();
        }
        if ended(&last) {
            if !json_out && !redraw {
                print!("{}", tree(&last, Utc::now()));
            }
            return Ok(exit_of(&last));
        }
        let event = tokio::select! {
            event = feed.next() => event?,
            _ = tokio::signal::ctrl_c() => return Ok(Exit::Interrupted),
        };
        if event.event == "workflow"
            && let Ok(view) = serde_json::from_str::<Value>(&event.data)
        {
            if !json_out && !redraw {
                changes(&last, &view);
            }
            last = view;
        }
    }
}

fn ended(view: &Value) -> bool {
    let status = view["status"].as_str().unwrap_or("running");
    let runs_going = view["nodes"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(_, n)| n["runs"].as_array().cloned().unwrap_or_default())
        .any(|r| r["status"] == "running");
    !matches!(status, "running" | "new") && !runs_going
}

fn exit_of(view: &Value) -> Exit {
    match view["status"].as_str() {
        Some("succeeded" | "running" | "new") => Exit::Success,
        Some("cancelled") => Exit::Cancelled,
        Some("timed_out") => Exit::TimedOut,
        _ => Exit::TaskFailed,
    }
}

/// One line per node whose state changed (for logs and pipes).
fn changes(before: &Value, after: &Value) {
    let now = Utc::now();
    for (name, node) in after["nodes"].as_object().into_iter().flatten() {
        if before["nodes"][name]["status"] != node["status"] {
            println!(
                "{} {name}: {}{}",
                now.format("%H:%M:%S%.3f"),
                node["status"].as_str().unwrap_or("?"),
                node["reason"]
                    .as_str()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            );
        }
    }
}

/// The execution as a tree of nodes in dependency order: each node under
/// its first dependency, with its state, timing and runs.
pub fn tree(view: &Value, now: DateTime<Utc>) -> String {
    let mut out = format!(
        "{} {} v{}: {}{}\n",
        view["id"].as_str().unwrap_or("?"),
        view["workflow"].as_str().unwrap_or("?"),
        view["version"],
        view["status"].as_str().unwrap_or("?"),
        view["reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
    );
    let Some(nodes) = view["nodes"].as_object() else {
        return out;
    };
    // Children of each node: the nodes whose first dependency it is.
    let mut children: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    let mut roots = Vec::new();
    for (name, node) in nodes {
        match node["depends_on"]
            .as_array()
            .and_then(|d| d.first())
            .and_then(Value::as_str)
        {
            Some(first) if nodes.contains_key(first) => {
                children.entry(first).or_default().push(name)
            }
            _ => roots.push(name.as_str()),
        }
    }
    fn line(
        out: &mut String,
        nodes: &serde_json::Map<String, Value>,
        name: &str,
        depth: usize,
        children: &std::collections::BTreeMap<&str, Vec<&str>>,
        now: DateTime<Utc>,
    ) {
        let node = &nodes[name];
        let status = node["status"].as_str().unwrap_or("?");
        let mark = match status {
            "succeeded" => "✓",
            "failed" => "✗",
            "running" => "▶",
            "skipped" => "–",
            "cancelled" => "■",
            _ => "·",
        };
        let items = node["items"].as_array().map(Vec::len);
        let fan = match items {
            Some(total) => {
                let done = node["runs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| r["status"] == "succeeded")
                    .count();
                format!(" [{done}/{total}]")
            }
            None => String::new(),
        };
        let extra = [
            node["depends_on"]
                .as_array()
                .filter(|d| d.len() > 1)
                .map(|d| {
                    let names: Vec<&str> = d.iter().filter_map(Value::as_str).collect();
                    format!("after {}", names.join(", "))
                }),
            node["reason"].as_str().map(str::to_owned),
        ];
        let extra: Vec<String> = extra.into_iter().flatten().collect();
        out.push_str(&format!(
            "{}{mark} {name} ({}) {status}{fan} {}{}\n",
            "  ".repeat(depth + 1),
            node["kind"].as_str().unwrap_or("?"),
            took(node, now),
            if extra.is_empty() {
                String::new()
            } else {
                format!(" — {}", extra.join("; "))
            },
        ));
        for child in children.get(name).into_iter().flatten() {
            line(out, nodes, child, depth + 1, children, now);
        }
    }
    for root in roots {
        line(&mut out, nodes, root, 0, &children, now);
    }
    if let Some(output) = view.get("output").filter(|o| !o.is_null()) {
        out.push_str(&format!("output: {output}\n"));
    }
    out
}

fn time(value: &Value) -> Option<DateTime<Utc>> {
    value.as_str().and_then(|t| t.parse().ok())
}

/// How long something with `started_at` / `finished_at` took (so far).
fn took(value: &Value, now: DateTime<Utc>) -> String {
    match time(&value["started_at"]) {
        Some(start) => render::duration(time(&value["finished_at"]).unwrap_or(now) - start),
        None => String::new(),
    }
}
