//! What an attempt used, as its worker measured it, and what that costs.
//!
//! A worker records [`Resources`] on the event that ends an attempt it ran
//! (`succeeded`, `failed`, and the `timed_out` or `cancelled` it records
//! itself). The fold sums them into the execution's [`ResourceTotals`];
//! the engine's API adds those up per queue, kind, label or day and prices
//! them with a [`Prices`] table.
//!
//! Every figure is optional beyond wall time and bytes: only executors that
//! run processes (`shell`) know CPU time and memory, only `http` counts
//! network bytes. A figure a worker could not measure is absent, never 0.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What one attempt used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Resources {
    /// The attempt's time on its worker, from the claim to the result, in
    /// milliseconds.
    pub wall_ms: u64,
    /// CPU time in user mode of the executor's processes (the program and
    /// every descendant it waited for), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_user_ms: Option<u64>,
    /// CPU time the kernel spent on their behalf, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_system_ms: Option<u64>,
    /// The largest resident set of any one of its processes, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// Bytes of the attempt's result: its output (or error) as JSON.
    #[serde(default)]
    pub output_bytes: u64,
    /// Bytes of the log lines the task wrote (each line and its newline).
    #[serde(default)]
    pub log_bytes: u64,
    /// Bytes sent over the network (`http`: request line, headers, body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_sent_bytes: Option<u64>,
    /// Bytes received over the network (`http`: status line, headers, body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_received_bytes: Option<u64>,
}

impl Resources {
    /// CPU time, user and system, in milliseconds, when measured.
    pub fn cpu_ms(&self) -> Option<u64> {
        add(self.cpu_user_ms, self.cpu_system_ms)
    }
}

/// What every measured attempt of an execution (or of a group of them)
/// used, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceTotals {
    /// Attempts whose resources are counted.
    pub attempts: u32,
    /// Their wall time, in milliseconds.
    pub wall_ms: u64,
    /// Their CPU time in user mode, in milliseconds (absent: none measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_user_ms: Option<u64>,
    /// Their CPU time in the kernel, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_system_ms: Option<u64>,
    /// The largest peak resident set of any attempt, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// Memory held over time: each attempt's peak resident set times its
    /// wall time, summed, in GB-hours (GB = 10⁹ bytes). What a price per
    /// GB-hour of memory applies to.
    #[serde(default)]
    pub memory_gb_hours: f64,
    /// Bytes of results.
    #[serde(default)]
    pub output_bytes: u64,
    /// Bytes of log lines.
    #[serde(default)]
    pub log_bytes: u64,
    /// Bytes sent over the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_sent_bytes: Option<u64>,
    /// Bytes received over the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_received_bytes: Option<u64>,
}

const GB: f64 = 1e9;
const HOUR_MS: f64 = 3_600_000.0;

impl ResourceTotals {
    /// Counts one attempt.
    pub fn add(&mut self, r: &Resources) {
        self.attempts = self.attempts.saturating_add(1);
        self.wall_ms = self.wall_ms.saturating_add(r.wall_ms);
        self.cpu_user_ms = add(self.cpu_user_ms, r.cpu_user_ms);
        self.cpu_system_ms = add(self.cpu_system_ms, r.cpu_system_ms);
        self.peak_rss_bytes = self.peak_rss_bytes.max(r.peak_rss_bytes);
        if let Some(rss) = r.peak_rss_bytes {
            self.memory_gb_hours += rss as f64 / GB * (r.wall_ms as f64 / HOUR_MS);
        }
        self.output_bytes = self.output_bytes.saturating_add(r.output_bytes);
        self.log_bytes = self.log_bytes.saturating_add(r.log_bytes);
        self.network_sent_bytes = add(self.network_sent_bytes, r.network_sent_bytes);
        self.network_received_bytes = add(self.network_received_bytes, r.network_received_bytes);
    }

    /// Counts every attempt of `other` (another execution, in a group).
    pub fn merge(&mut self, other: &ResourceTotals) {
        self.attempts = self.attempts.saturating_add(other.attempts);
        self.wall_ms = self.wall_ms.saturating_add(other.wall_ms);
        self.cpu_user_ms = add(self.cpu_user_ms, other.cpu_user_ms);
        self.cpu_system_ms = add(self.cpu_system_ms, other.cpu_system_ms);
        self.peak_rss_bytes = self.peak_rss_bytes.max(other.peak_rss_bytes);
        self.memory_gb_hours += other.memory_gb_hours;
        self.output_bytes = self.output_bytes.saturating_add(other.output_bytes);
        self.log_bytes = self.log_bytes.saturating_add(other.log_bytes);
        self.network_sent_bytes = add(self.network_sent_bytes, other.network_sent_bytes);
        self.network_received_bytes =
            add(self.network_received_bytes, other.network_received_bytes);
    }

    /// CPU time, user and system, in milliseconds, when measured.
    pub fn cpu_ms(&self) -> Option<u64> {
        add(self.cpu_user_ms, self.cpu_system_ms)
    }
}

/// A sum of two optional figures: absent only when both are.
fn add(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    }
}

/// What resources cost, in one currency (the table does not name it).
/// Each price is optional; an unpriced resource costs nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// Per second of CPU time (user and system).
    #[serde(default, rename = "cpu-second", alias = "cpu_second")]
    pub cpu_second: Option<f64>,
    /// Per GB-hour of memory ([`ResourceTotals::memory_gb_hours`]).
    #[serde(default, rename = "gb-hour", alias = "gb_hour")]
    pub gb_hour: Option<f64>,
    /// Per GB of output: results and log lines.
    #[serde(default, rename = "gb-output", alias = "gb_output")]
    pub gb_output: Option<f64>,
}

/// A priced total: what each resource cost and their sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Cost {
    /// CPU time's share.
    pub cpu: f64,
    /// Memory's share.
    pub memory: f64,
    /// Output's share.
    pub output: f64,
    /// The sum.
    pub total: f64,
}

impl Prices {
    /// Whether any price is set.
    pub fn is_empty(&self) -> bool {
        self.cpu_second.is_none() && self.gb_hour.is_none() && self.gb_output.is_none()
    }

    /// What `totals` cost; `None` when no price is set.
    pub fn cost(&self, totals: &ResourceTotals) -> Option<Cost> {
        if self.is_empty() {
            return None;
        }
        let cpu = self.cpu_second.unwrap_or(0.0) * totals.cpu_ms().unwrap_or(0) as f64 / 1000.0;
        let memory = self.gb_hour.unwrap_or(0.0) * totals.memory_gb_hours;
        let output = self.gb_output.unwrap_or(0.0)
            * (totals.output_bytes.saturating_add(totals.log_bytes)) as f64
            / GB;
        Some(Cost {
            cpu,
            memory,
            output,
            total: cpu + memory + output,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(wall_ms: u64, cpu: u64, rss: u64) -> Resources {
        Resources {
            wall_ms,
            cpu_user_ms: Some(cpu),
            cpu_system_ms: Some(0),
            peak_rss_bytes: Some(rss),
            output_bytes: 10,
            log_bytes: 90,
            ..Resources::default()
        }
    }

    #[test]
    fn totals_sum_attempts_and_keep_the_largest_peak() {
        let mut t = ResourceTotals::default();
        t.add(&shell(3_600_000, 1000, 2_000_000_000));
        t.add(&shell(1_800_000, 500, 1_000_000_000));
        assert_eq!(t.attempts, 2);
        assert_eq!(t.wall_ms, 5_400_000);
        assert_eq!(t.cpu_ms(), Some(1500));
        assert_eq!(t.peak_rss_bytes, Some(2_000_000_000));
        // 2 GB for an hour and 1 GB for half an hour.
        assert!((t.memory_gb_hours - 2.5).abs() < 1e-9);
        assert_eq!(t.output_bytes + t.log_bytes, 200);
        assert_eq!(t.network_sent_bytes, None, "never measured stays absent");
    }

    #[test]
    fn a_price_table_prices_cpu_memory_and_output() {
        let mut t = ResourceTotals::default();
        t.add(&shell(3_600_000, 2000, 2_000_000_000));
        let prices = Prices {
            cpu_second: Some(0.5),
            gb_hour: Some(0.1),
            gb_output: Some(1e9 / 100.0),
        };
        let cost = prices.cost(&t).unwrap();
        assert!((cost.cpu - 1.0).abs() < 1e-9);
        assert!((cost.memory - 0.2).abs() < 1e-9);
        assert!((cost.output - 1.0).abs() < 1e-9);
        assert!((cost.total - 2.2).abs() < 1e-9);
        assert_eq!(Prices::default().cost(&t), None);
    }

    #[test]
    fn the_price_table_reads_from_toml_keys() {
        let prices: Prices =
            serde_json::from_str(r#"{"cpu-second": 0.01, "gb-hour": 0.005}"#).unwrap();
        assert_eq!(prices.cpu_second, Some(0.01));
        assert_eq!(prices.gb_output, None);
        assert!(serde_json::from_str::<Prices>(r#"{"cpu": 1}"#).is_err());
    }
}
