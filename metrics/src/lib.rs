//! What the engine's and the workers' `/metrics` share: label values with
//! a bound on how many there may be, the duration buckets, and the
//! Prometheus text encoding (format 0.0.4).
//!
//! Every process keeps its own [`Registry`] instead of a global recorder:
//! tests run several engines and workers in one process, and each must
//! report only its own figures.
//!
//! Label values come from users (queue names, kinds, the task labels an
//! operator allow-listed). A [`Bounded`] set admits the first
//! [`MAX_VALUES`] distinct values of a label and reports every later one as
//! [`OTHER`], so a loop that submits a new kind each time cannot blow up the
//! time-series database. `docs/metrics.md` lists every name.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

pub use prometheus_client;
use prometheus_client::encoding::{EncodeLabelKey, LabelKeyEncoder};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`encode`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The value a label takes once its [`Bounded`] set is full.
pub const OTHER: &str = "_other";

/// Distinct values a label keeps before later ones become [`OTHER`].
pub const MAX_VALUES: usize = 100;

/// Bucket bounds of every duration histogram, in seconds: from a
/// millisecond (a claim on an idle queue) to an hour (a backup).
pub const SECONDS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];

/// A histogram over [`SECONDS`].
pub fn seconds() -> Histogram {
    Histogram::new(SECONDS)
}

/// Builds a family's histograms over [`SECONDS`]:
/// `Family::<Labels, Histogram, Seconds>::new_with_constructor(Seconds)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seconds;

impl prometheus_client::metrics::family::MetricConstructor<Histogram> for Seconds {
    fn new_metric(&self) -> Histogram {
        seconds()
    }
}

/// `registry` in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail; a metric that fails to encode
    // itself would be a bug of this crate's label types.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, registry) {
        text.push_str(&format!("# encoding stopped: {e}\n"));
    }
    text
}

/// The name of a label: one of the fixed ones (`queue`, `kind`), or a task
/// label an operator allow-listed, shown as `label_<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LabelKey {
    /// A label every series of the metric carries.
    Fixed(&'static str),
    /// `label_<name>` for the task label `<name>`, its characters reduced
    /// to what Prometheus allows in a label name.
    Task(Arc<str>),
}

impl LabelKey {
    /// The key of the task label `name`.
    ///
    /// # Examples
    /// ```
    /// use runlog_metrics::LabelKey;
    /// assert_eq!(LabelKey::task("team").to_string(), "label_team");
    /// assert_eq!(LabelKey::task("app.kubernetes/name").to_string(), "label_app_kubernetes_name");
    /// ```
    pub fn task(name: &str) -> LabelKey {
        let name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        LabelKey::Task(format!("label_{name}").into())
    }
}

impl std::fmt::Display for LabelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LabelKey::Fixed(name) => f.write_str(name),
            LabelKey::Task(name) => f.write_str(name),
        }
    }
}

impl EncodeLabelKey for LabelKey {
    fn encode(&self, encoder: &mut LabelKeyEncoder) -> std::fmt::Result {
        use std::fmt::Write;
        write!(encoder, "{self}")
    }
}

/// The labels of one series.
pub type Labels = Vec<(LabelKey, String)>;

/// The values one label has taken, at most `max` of them: every value
/// after those is [`OTHER`].
#[derive(Debug)]
pub struct Bounded {
    seen: Mutex<HashSet<String>>,
    max: usize,
}

impl Default for Bounded {
    fn default() -> Self {
        Bounded::new(MAX_VALUES)
    }
}

impl Bounded {
    /// A set that admits `max` distinct values.
    pub fn new(max: usize) -> Self {
        Bounded {
            seen: Mutex::new(HashSet::new()),
            max,
        }
    }

    /// `value` if it was seen before or there is room for it, else
    /// [`OTHER`].
    ///
    /// # Examples
    /// ```
    /// let kinds = runlog_metrics::Bounded::new(2);
    /// assert_eq!(kinds.admit("shell"), "shell");
    /// assert_eq!(kinds.admit("http"), "http");
    /// assert_eq!(kinds.admit("ssh"), runlog_metrics::OTHER);
    /// assert_eq!(kinds.admit("shell"), "shell");
    /// ```
    pub fn admit(&self, value: &str) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() < self.max {
            seen.insert(value.to_owned());
            return value.to_owned();
        }
        OTHER.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;

    #[test]
    fn series_with_task_labels_encode_in_the_text_format() {
        let mut registry = Registry::default();
        let runs: Family<Labels, Counter> = Family::default();
        registry.register("runlog_runs", "Runs", runs.clone());
        runs.get_or_create(&vec![
            (LabelKey::Fixed("queue"), "default".to_owned()),
            (LabelKey::task("team"), "a\"b".to_owned()),
        ])
        .inc();
        let text = encode(&registry);
        assert!(
            text.contains("# TYPE runlog_runs_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains(r#"runlog_runs_total{queue="default",label_team="a\"b"} 1"#),
            "{text}"
        );
    }
}

/// Spans a process handed to its trace exporter, by outcome (`exported`,
/// `dropped` because the export queue was full, `failed` with their export
/// request): a counter family whose three series exist from the start, set
/// from the exporter's own totals when scraped.
#[derive(Debug, Clone)]
pub struct SpanCounts(
    prometheus_client::metrics::family::Family<
        Labels,
        prometheus_client::metrics::counter::Counter,
    >,
);

impl SpanCounts {
    /// The outcomes, in the order [`set`](Self::set) takes them.
    pub const OUTCOMES: [&'static str; 3] = ["exported", "dropped", "failed"];

    /// The family, every outcome at 0.
    pub fn new() -> Self {
        let family = prometheus_client::metrics::family::Family::default();
        for outcome in Self::OUTCOMES {
            let _created = family.get_or_create(&Self::labels(outcome));
        }
        SpanCounts(family)
    }

    fn labels(outcome: &str) -> Labels {
        vec![(LabelKey::Fixed("outcome"), outcome.to_owned())]
    }

    /// The family, to register.
    pub fn family(
        &self,
    ) -> prometheus_client::metrics::family::Family<
        Labels,
        prometheus_client::metrics::counter::Counter,
    > {
        self.0.clone()
    }

    /// Brings the counters up to the exporter's totals.
    pub fn set(&self, totals: [u64; 3]) {
        for (outcome, total) in Self::OUTCOMES.into_iter().zip(totals) {
            let counter = self.0.get_or_create(&Self::labels(outcome));
            let now = counter.get();
            if total > now {
                counter.inc_by(total - now);
            }
        }
    }
}

impl Default for SpanCounts {
    fn default() -> Self {
        SpanCounts::new()
    }
}
