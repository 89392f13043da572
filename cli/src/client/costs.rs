//! `runlog costs`: what executions used and cost, summed per queue, kind,
//! label or day (`GET /v1/costs`); with an execution id, that one
//! execution attempt by attempt (`GET /v1/executions/{id}/cost`).
//!
//! ```text
//! runlog costs --since 24h
//! runlog costs --by label:team --queue backups
//! runlog costs --by day --since 7d -o json
//! runlog costs 01a23b25-…
//! ```

use runlog_events::resources::{Cost, ResourceTotals, Resources};
use serde_json::Value;

use super::render::{self, Table};
use super::{Conn, Error, Exit, path_id, push_since};

/// Options of `runlog costs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// One execution, attempt by attempt, instead of the sums.
    id: Option<String>,
    /// Group by `queue`, `kind`, `day` (of submission, UTC) or
    /// `label:<name>`.
    #[arg(long = "by", default_value = "queue")]
    group_by: String,
    /// Only executions submitted since this time, or this long ago (`24h`, `7d`).
    #[arg(long)]
    since: Option<String>,
    /// Only this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only executions with this label (`key=value`); repeat for several.
    #[arg(long = "label", value_parser = render::parse_pair)]
    labels: Vec<(String, String)>,
    #[command(flatten)]
    conn: Conn,
}

impl Args {
    /// The connection options.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }
}

/// Runs `runlog costs`.
pub async fn run(args: Args) -> Result<Exit, Error> {
    let client = args.conn.client()?;
    if let Some(id) = &args.id {
        let raw: Value = client
            .get(&format!("/v1/executions/{}/cost", path_id(id)), &[])
            .await?;
        if args.conn.json() {
            println!("{raw}");
        } else {
            print_execution(&raw)?;
        }
        return Ok(Exit::Success);
    }
    let mut query: Vec<(&str, String)> = vec![("group_by", args.group_by.clone())];
    for (key, value) in [("queue", &args.queue), ("kind", &args.kind)] {
        if let Some(value) = value {
            query.push((key, value.clone()));
        }
    }
    if !args.labels.is_empty() {
        let labels: Vec<String> = args
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        query.push(("label", labels.join(",")));
    }
    push_since(&mut query, args.since.as_deref())?;
    let raw: Value = client.get("/v1/costs", &query).await?;
    if args.conn.json() {
        println!("{raw}");
        return Ok(Exit::Success);
    }
    let groups = raw["groups"].as_array().cloned().unwrap_or_default();
    if groups.is_empty() {
        eprintln!("no execution matches");
        return Ok(Exit::Success);
    }
    let mut table = Table::new(&[
        &args.group_by.to_uppercase(),
        "EXECUTIONS",
        "ATTEMPTS",
        "WALL",
        "CPU",
        "PEAK RSS",
        "GB·H",
        "OUTPUT+LOGS",
        "COST",
    ]);
    let rows = groups
        .iter()
        .map(|g| (g["key"].as_str().unwrap_or("(none)").to_owned(), g))
        .chain([("(all)".to_owned(), &raw["total"])]);
    for (key, g) in rows {
        let totals: ResourceTotals = read(&g["resources"], "resources")?;
        let cost: Option<Cost> = read(&g["cost"], "cost")?;
        table.row(
            [key, g["executions"].to_string()]
                .into_iter()
                .chain(columns(&totals, cost.as_ref()))
                .collect(),
        );
    }
    table.print();
    Ok(Exit::Success)
}

/// ATTEMPTS … COST of one row.
fn columns(t: &ResourceTotals, cost: Option<&Cost>) -> Vec<String> {
    vec![
        t.attempts.to_string(),
        render::millis(t.wall_ms),
        t.cpu_ms().map_or_else(|| "-".into(), render::millis),
        t.peak_rss_bytes.map_or_else(|| "-".into(), render::bytes),
        format!("{:.6}", t.memory_gb_hours),
        render::bytes(t.output_bytes.saturating_add(t.log_bytes)),
        cost.map_or_else(|| "-".into(), |c| format!("{:.6}", c.total)),
    ]
}

fn print_execution(raw: &Value) -> Result<(), Error> {
    let mut table = Table::new(&[
        "#",
        "OUTCOME",
        "WALL",
        "CPU",
        "PEAK RSS",
        "GB·H",
        "OUTPUT+LOGS",
        "COST",
    ]);
    for a in raw["attempts"].as_array().into_iter().flatten() {
        let used: Option<Resources> = read(&a["resources"], "resources")?;
        let mut one = ResourceTotals::default();
        if let Some(r) = &used {
            one.add(r);
        }
        let cost: Option<Cost> = read(&a["cost"], "cost")?;
        let outcome = a["outcome"].as_str().unwrap_or("running").to_owned();
        let mut row = vec![a["attempt"].to_string(), outcome];
        if used.is_some() {
            row.extend(columns(&one, cost.as_ref()).into_iter().skip(1));
        } else {
            row.extend(std::iter::repeat_n("-".to_owned(), 6));
        }
        table.row(row);
    }
    table.print();
    let totals: ResourceTotals = read(&raw["total"], "total")?;
    println!("used: {}", super::status::used(&totals));
    if let Some(cost) = read::<Option<Cost>>(&raw["cost"], "cost")? {
        println!(
            "cost: {:.6} (cpu {:.6}, memory {:.6}, output {:.6})",
            cost.total, cost.cpu, cost.memory, cost.output
        );
    }
    Ok(())
}

fn read<T: serde::de::DeserializeOwned>(value: &Value, what: &str) -> Result<T, Error> {
    serde_json::from_value(value.clone())
        .map_err(|e| Error::Protocol(format!("cannot read the {what} in the answer: {e}")))
}
