//! The rules of limits, as pure functions of their inputs: rates and
//! rules as written, the layered table, the sliding-log admission of a
//! start and the order in which concurrency slots are tried.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use runlog_events::TaskSpec;
use runlog_events::spec::limit_key_error;

/// The most starts a rate may allow per period (the sliding log holds one
/// entry per start).
pub const MAX_RATE: u32 = 1000;
/// The most attempts a concurrency limit may allow (one lease key each).
pub const MAX_CONCURRENCY: u32 = 1000;

/// At most `starts` attempts start in any interval of length `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Starts allowed per period.
    pub starts: NonZeroU32,
    /// The period (at least 1 ms).
    pub per: Duration,
}

/// A rate or rule that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid limit {text:?}: {reason}; write KEY:N/PERIOD for a rate (5/s, 100/m, 1000/h, 10/30s), \
     KEY:N for a concurrency limit, and * as KEY for the default of keys without their own"
)]
pub struct LimitError {
    /// The text as written.
    pub text: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl FromStr for Rate {
    type Err = LimitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| LimitError {
            text: s.to_owned(),
            reason,
        };
        let (n, per) = s.trim().split_once('/').ok_or_else(|| bad("missing '/'"))?;
        let n: u32 = n
            .trim()
            .parse()
            .map_err(|_| bad("the count is not a number"))?;
        if n > MAX_RATE {
            return Err(bad("the count must be at most 1000 per period"));
        }
        let starts = NonZeroU32::new(n).ok_or_else(|| bad("the count must be at least 1"))?;
        let per = match per.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => parse_period(other).ok_or_else(|| bad("the period is not a duration"))?,
        };
        if per < Duration::from_millis(1) {
            return Err(bad("the period must be at least 1ms"));
        }
        Ok(Rate { starts, per })
    }
}

/// `250ms`, `10s`, `2m`, `1h`.
fn parse_period(s: &str) -> Option<Duration> {
    let digits = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        _ => None,
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.per.as_millis() {
            1_000 => write!(f, "{}/s", self.starts),
            60_000 => write!(f, "{}/m", self.starts),
            3_600_000 => write!(f, "{}/h", self.starts),
            ms if ms % 1000 == 0 => write!(f, "{}/{}s", self.starts, ms / 1000),
            ms => write!(f, "{}/{ms}ms", self.starts),
        }
    }
}

/// A rate rule from the command line: `provider=openai:5/s`, `*:10/s`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateRule {
    /// The rate key; `None` for the default (`*`).
    pub key: Option<String>,
    /// Its rate.
    pub rate: Rate,
}

/// A concurrency rule from the command line: `workspace=prod:1`, `*:4`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyRule {
    /// The concurrency key; `None` for the default (`*`).
    pub key: Option<String>,
    /// Attempts of the key running at once, cluster-wide.
    pub limit: NonZeroU32,
}

/// Splits `key:value` at the last `:` and checks the key.
fn split_rule(s: &str) -> Result<(Option<String>, &str), LimitError> {
    let bad = |reason| LimitError {
        text: s.to_owned(),
        reason,
    };
    let (key, value) = s.rsplit_once(':').ok_or_else(|| bad("missing ':'"))?;
    let key = key.trim();
    if key == "*" {
        return Ok((None, value));
    }
    if let Some(reason) = limit_key_error(key) {
        return Err(bad(reason));
    }
    Ok((Some(key.to_owned()), value))
}

fn parse_concurrency(s: &str) -> Result<NonZeroU32, &'static str> {
    let n: u32 = s.trim().parse().map_err(|_| "the limit is not a number")?;
    if n > MAX_CONCURRENCY {
        return Err("the limit must be at most 1000");
    }
    NonZeroU32::new(n).ok_or("the limit must be at least 1")
}

impl FromStr for RateRule {
    type Err = LimitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, rate) = split_rule(s)?;
        let rate = rate.parse().map_err(|e: LimitError| LimitError {
            text: s.to_owned(),
            reason: e.reason,
        })?;
        Ok(RateRule { key, rate })
    }
}

impl FromStr for ConcurrencyRule {
    type Err = LimitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, limit) = split_rule(s)?;
        let limit = parse_concurrency(limit).map_err(|reason| LimitError {
            text: s.to_owned(),
            reason,
        })?;
        Ok(ConcurrencyRule { key, limit })
    }
}

impl fmt::Display for RateRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key.as_deref().unwrap_or("*"), self.rate)
    }
}

impl fmt::Display for ConcurrencyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key.as_deref().unwrap_or("*"), self.limit)
    }
}

/// One source of limits: the worker's flags, or the `<p>-limits` bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitsTable {
    rates: HashMap<String, Rate>,
    default_rate: Option<Rate>,
    concurrency: HashMap<String, NonZeroU32>,
    default_concurrency: Option<NonZeroU32>,
}

impl LimitsTable {
    /// The table of a worker's rules; a key given twice is refused.
    pub fn from_rules(
        rates: &[RateRule],
        concurrency: &[ConcurrencyRule],
    ) -> Result<Self, LimitError> {
        let twice = |rule: String| LimitError {
            text: rule,
            reason: "the key has two rules of this kind",
        };
        let mut table = LimitsTable::default();
        for rule in rates {
            let previous = match &rule.key {
                Some(key) => table.rates.insert(key.clone(), rule.rate),
                None => table.default_rate.replace(rule.rate),
            };
            if previous.is_some() {
                return Err(twice(rule.to_string()));
            }
        }
        for rule in concurrency {
            let previous = match &rule.key {
                Some(key) => table.concurrency.insert(key.clone(), rule.limit),
                None => table.default_concurrency.replace(rule.limit),
            };
            if previous.is_some() {
                return Err(twice(rule.to_string()));
            }
        }
        Ok(table)
    }

    /// Whether the table limits nothing.
    pub fn is_empty(&self) -> bool {
        self.rates.is_empty()
            && self.concurrency.is_empty()
            && self.default_rate.is_none()
            && self.default_concurrency.is_none()
    }

    /// Applies one entry of the `<p>-limits` bucket: `value` `None` removes
    /// it. Keys: `rate.<key>` (value `5/s`), `concurrency.<key>` (value
    /// `1`), `default.rate`, `default.concurrency`.
    pub fn apply_entry(&mut self, entry: &str, value: Option<&str>) -> Result<(), LimitError> {
        let bad = |reason| LimitError {
            text: format!("{entry} = {}", value.unwrap_or("")),
            reason,
        };
        let not_ours = "the bucket key is not rate.<key>, concurrency.<key> or default.<kind>";
        let (family, key) = entry.split_once('.').ok_or_else(|| bad(not_ours))?;
        let parse_rate = |v: &str| v.parse::<Rate>().map_err(|e| bad(e.reason));
        let parse_limit = |v: &str| parse_concurrency(v).map_err(bad);
        match (family, key) {
            ("default", "rate") => self.default_rate = value.map(parse_rate).transpose()?,
            ("default", "concurrency") => {
                self.default_concurrency = value.map(parse_limit).transpose()?;
            }
            ("rate" | "concurrency", key) if limit_key_error(key).is_some() => {
                return Err(bad("the key is not a valid limit key"));
            }
            ("rate", key) => match value.map(parse_rate).transpose()? {
                Some(rate) => {
                    self.rates.insert(key.to_owned(), rate);
                }
                None => {
                    self.rates.remove(key);
                }
            },
            ("concurrency", key) => match value.map(parse_limit).transpose()? {
                Some(limit) => {
                    self.concurrency.insert(key.to_owned(), limit);
                }
                None => {
                    self.concurrency.remove(key);
                }
            },
            _ => return Err(bad(not_ours)),
        }
        Ok(())
    }

    /// The rate of `key` with this table under `shared`: the shared entry,
    /// this table's entry, the shared default, then this table's default.
    pub fn rate_over(&self, shared: &LimitsTable, key: &str) -> Option<Rate> {
        shared
            .rates
            .get(key)
            .or_else(|| self.rates.get(key))
            .copied()
            .or(shared.default_rate)
            .or(self.default_rate)
    }

    /// The concurrency limit of `key`, layered as [`rate_over`](Self::rate_over).
    pub fn concurrency_over(&self, shared: &LimitsTable, key: &str) -> Option<NonZeroU32> {
        shared
            .concurrency
            .get(key)
            .or_else(|| self.concurrency.get(key))
            .copied()
            .or(shared.default_concurrency)
            .or(self.default_concurrency)
    }
}

/// The sliding log of one rate key after admitting a start at `now` (unix
/// ms), or the earliest time a start may be admitted.
///
/// Starts `a` and `b` share an interval of one period when `|a − b| <
/// per`; a start is admitted only if no such interval then holds more than
/// `rate.starts`. Entries a period or more before `now` are dropped.
pub fn admit_start(starts: &[i64], now: i64, rate: Rate) -> Result<Vec<i64>, i64> {
    let per = i64::try_from(rate.per.as_millis()).unwrap_or(i64::MAX);
    let limit = rate.starts.get() as usize;
    let mut log: Vec<i64> = starts
        .iter()
        .copied()
        .filter(|t| now.saturating_sub(*t) < per)
        .collect();
    log.sort_unstable();
    let before = log.iter().filter(|t| **t <= now).count();
    let mut candidate = log.clone();
    candidate.insert(before, now);
    // Only intervals holding `now` can overflow: those starting in
    // (now − per, now].
    let mut end = 0;
    for (i, start) in candidate.iter().enumerate() {
        while end < candidate.len() && candidate[end] - start < per {
            end += 1;
        }
        if end - i > limit && *start <= now && now - start < per {
            let retry = log
                .len()
                .checked_sub(limit)
                .map_or(now + 1, |k| log[k].saturating_add(per));
            return Err(retry.max(now + 1));
        }
    }
    Ok(candidate)
}

/// The slots a lease acquisition tries: from `hint` (modulo the slots) up,
/// then from 0.
///
/// # Examples
/// ```
/// use runlog_worker::runtime::limits::slot_order;
///
/// assert_eq!(slot_order(2, 4).collect::<Vec<_>>(), [2, 3, 0, 1]);
/// assert_eq!(slot_order(7, 3).collect::<Vec<_>>(), [1, 2, 0]);
/// ```
pub fn slot_order(hint: u32, slots: u32) -> impl Iterator<Item = u32> {
    let first = hint.checked_rem(slots).unwrap_or(0);
    (first..slots).chain(0..first)
}

/// The limit keys of a task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitKeys {
    /// Its `rate_key`.
    pub rate: Option<String>,
    /// Its `concurrency_key`.
    pub concurrency: Option<String>,
}

impl LimitKeys {
    /// The keys `spec` names.
    pub fn of(spec: &TaskSpec) -> Self {
        LimitKeys {
            rate: spec.rate_key.clone(),
            concurrency: spec.concurrency_key.clone(),
        }
    }
}

/// How a worker applies limits.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Rate rules given to this worker (the bucket wins key by key).
    pub rates: Vec<RateRule>,
    /// Concurrency rules given to this worker (the bucket wins key by key).
    pub concurrency: Vec<ConcurrencyRule>,
    /// How long a concurrency lease outlives its last renewal: the longest
    /// a dead worker's slot stays taken. Whole seconds, at least 1 s.
    pub lease_ttl: Duration,
    /// How often a worker tries again a concurrency key that is full on
    /// other workers (its own releases wake its held items at once).
    pub poll: Duration,
    /// Items a worker holds at most while their key is at its limit; beyond
    /// that it hands them back with a delayed NAK.
    pub hold: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            rates: Vec::new(),
            concurrency: Vec::new(),
            lease_ttl: Duration::from_secs(30),
            poll: Duration::from_millis(250),
            hold: 1000,
        }
    }
}

impl LimitsConfig {
    /// Checks the settings and builds the worker's own table.
    pub fn validate(&self) -> Result<LimitsTable, String> {
        if self.lease_ttl < Duration::from_secs(1) {
            return Err("lease_ttl must be at least 1s (a key-value TTL has whole seconds)".into());
        }
        if self.poll < Duration::from_millis(10) {
            return Err("the limit poll interval must be at least 10ms".into());
        }
        LimitsTable::from_rules(&self.rates, &self.concurrency).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> Rate {
        s.parse().unwrap()
    }

    #[test]
    fn rates_and_rules_parse_and_print_back() {
        for (text, printed) in [
            ("5/s", "5/s"),
            ("100/m", "100/m"),
            ("1/h", "1/h"),
            ("10/30s", "10/30s"),
            ("3/250ms", "3/250ms"),
            ("2/60s", "2/m"),
        ] {
            assert_eq!(rate(text).to_string(), printed, "{text}");
        }
        for bad in ["5", "0/s", "x/s", "5/x", "5/0ms", "1001/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        let rule: RateRule = "provider=openai:5/s".parse().unwrap();
        assert_eq!(rule.key.as_deref(), Some("provider=openai"));
        assert_eq!(rule.to_string(), "provider=openai:5/s");
        let rule: ConcurrencyRule = "*:4".parse().unwrap();
        assert_eq!((rule.key, rule.limit.get()), (None, 4));
        for bad in ["workspace=prod", "a b:1", "k:0", ":1", "k:x"] {
            assert!(bad.parse::<ConcurrencyRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_bucket_wins_key_by_key_and_own_entries_win_over_defaults() {
        let local = LimitsTable::from_rules(
            &["a:5/s".parse().unwrap(), "*:1/s".parse().unwrap()],
            &["w:2".parse().unwrap()],
        )
        .unwrap();
        let mut shared = LimitsTable::default();
        assert_eq!(local.rate_over(&shared, "a"), Some(rate("5/s")));
        assert_eq!(local.rate_over(&shared, "z"), Some(rate("1/s")));
        assert_eq!(local.concurrency_over(&shared, "z"), None);
        shared.apply_entry("rate.a", Some("2/m")).unwrap();
        shared.apply_entry("default.rate", Some("9/s")).unwrap();
        shared
            .apply_entry("default.concurrency", Some("3"))
            .unwrap();
        assert_eq!(local.rate_over(&shared, "a"), Some(rate("2/m")));
        assert_eq!(local.rate_over(&shared, "z"), Some(rate("9/s")));
        let limit = |key| local.concurrency_over(&shared, key).map(NonZeroU32::get);
        assert_eq!((limit("w"), limit("z")), (Some(2), Some(3)));
        shared.apply_entry("rate.a", None).unwrap();
        assert_eq!(local.rate_over(&shared, "a"), Some(rate("5/s")));
        for (key, value) in [
            ("rate", "1/s"),
            ("rate.a b", "1/s"),
            ("concurrency.w", "0"),
            ("other.w", "1"),
        ] {
            assert!(shared.apply_entry(key, Some(value)).is_err(), "{key}");
        }
        let twice = ["a:1/s".parse().unwrap(), "a:2/s".parse().unwrap()];
        assert!(LimitsTable::from_rules(&twice, &[]).is_err());
    }

    #[test]
    fn the_sliding_log_never_holds_more_than_the_rate_in_one_period() {
        // A start asked every 7 ms for 5 s at 5/s: no 1000 ms interval
        // holds more than 5 admitted starts, and the rate is used up.
        let r = rate("5/s");
        let mut log = Vec::new();
        let mut admitted = Vec::new();
        for t in (0..5_000).step_by(7) {
            match admit_start(&log, t, r) {
                Ok(next) => {
                    log = next;
                    admitted.push(t);
                }
                Err(retry) => assert!(retry > t),
            }
        }
        for (i, a) in admitted.iter().enumerate() {
            let within = admitted[i..].iter().take_while(|b| **b - a < 1000).count();
            assert!(within <= 5, "{within} starts from {a}");
        }
        assert!(admitted.len() >= 24, "{}", admitted.len());
        assert!(log.len() <= 5);
    }

    #[test]
    fn the_retry_time_is_when_the_oldest_start_in_the_way_leaves_the_period() {
        let r = rate("2/s");
        assert_eq!(admit_start(&[100, 600], 900, r), Err(1100));
        assert_eq!(admit_start(&[100, 600], 1100, r), Ok(vec![600, 1100]));
        // Starts stamped ahead of this clock (another worker's) count too.
        assert_eq!(admit_start(&[950, 1000], 900, r), Err(1950));
        assert!(admit_start(&[1000], 900, r).is_ok());
    }

    #[test]
    fn slots_are_tried_from_the_hint_round() {
        assert_eq!(slot_order(0, 1).collect::<Vec<_>>(), [0]);
        assert_eq!(slot_order(5, 2).collect::<Vec<_>>(), [1, 0]);
        assert_eq!(slot_order(3, 0).count(), 0);
    }
}
