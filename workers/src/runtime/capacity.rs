//! Slots and capacity rules: how many attempts one worker runs at once, how
//! many of each kind, and which kinds run alone.
//!
//! A rule is written `kind=N` (at most N attempts of `kind` at once),
//! `kind=N,exclusive` or `kind=exclusive` (an attempt of `kind` runs alone
//! on the worker: it starts only when nothing else runs, and nothing starts
//! while it runs; `exclusive` alone means a limit of 1).
//!
//! [`Capacity`] only counts; the dispatcher decides what to do with an item
//! that cannot start (see `docs/workers.md`).
//!
//! # Examples
//! ```
//! use runlog_worker::runtime::capacity::{Blocked, Capacity, CapacityRule};
//!
//! let rules: Vec<CapacityRule> = ["plan=2".parse().unwrap(), "apply=exclusive".parse().unwrap()].into();
//! let mut capacity = Capacity::new(8, rules).unwrap();
//! capacity.start("plan");
//! assert_eq!(capacity.check("apply"), Err(Blocked::Exclusive));
//! capacity.start("plan");
//! assert_eq!(capacity.check("plan"), Err(Blocked::KindLimit));
//! assert_eq!(capacity.check("echo"), Ok(()));
//! ```

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A limit on one task kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityRule {
    /// The task kind.
    pub kind: String,
    /// At most this many attempts of the kind run at once on the worker.
    pub limit: NonZeroUsize,
    /// An attempt of this kind runs alone on the worker.
    #[serde(default)]
    pub exclusive: bool,
}

/// A capacity rule that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid capacity rule {rule:?}: {reason}; write kind=N, kind=N,exclusive or kind=exclusive"
)]
pub struct CapacityRuleError {
    /// The rule as written.
    pub rule: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl FromStr for CapacityRule {
    type Err = CapacityRuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| CapacityRuleError {
            rule: s.to_owned(),
            reason,
        };
        let (kind, rest) = s.split_once('=').ok_or_else(|| bad("missing '='"))?;
        let kind = kind.trim();
        if kind.is_empty() {
            return Err(bad("the kind is empty"));
        }
        let mut limit = None;
        let mut exclusive = false;
        for part in rest.split(',').map(str::trim) {
            match part {
                "exclusive" if !exclusive => exclusive = true,
                "exclusive" => return Err(bad("exclusive is given twice")),
                n if limit.is_none() => {
                    let n: usize = n.parse().map_err(|_| bad("the limit is not a number"))?;
                    limit =
                        Some(NonZeroUsize::new(n).ok_or_else(|| bad("the limit must be >= 1"))?);
                }
                _ => return Err(bad("more than one limit")),
            }
        }
        Ok(CapacityRule {
            kind: kind.to_owned(),
            limit: limit.unwrap_or(NonZeroUsize::MIN),
            exclusive,
        })
    }
}

impl fmt::Display for CapacityRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.kind, self.limit)?;
        if self.exclusive {
            f.write_str(",exclusive")?;
        }
        Ok(())
    }
}

/// Why an attempt cannot start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// Every slot is taken.
    Full,
    /// The kind is at its limit.
    KindLimit,
    /// An exclusive attempt runs, or this one is exclusive and others run.
    Exclusive,
}

/// Two rules name the same kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("two capacity rules name the kind {0:?}; give each kind one rule")]
pub struct DuplicateRule(pub String);

/// What runs on one worker, counted against its slots and rules.
#[derive(Debug, Clone)]
pub struct Capacity {
    concurrency: usize,
    rules: HashMap<String, CapacityRule>,
    running: HashMap<String, usize>,
    total: usize,
    exclusive_running: usize,
}

impl Capacity {
    /// `concurrency` slots under `rules`.
    pub fn new(
        concurrency: usize,
        rules: impl IntoIterator<Item = CapacityRule>,
    ) -> Result<Self, DuplicateRule> {
        let mut by_kind = HashMap::new();
        for rule in rules {
            let kind = rule.kind.clone();
            if by_kind.insert(kind.clone(), rule).is_some() {
                return Err(DuplicateRule(kind));
            }
        }
        Ok(Capacity {
            concurrency,
            rules: by_kind,
            running: HashMap::new(),
            total: 0,
            exclusive_running: 0,
        })
    }

    /// Whether an attempt of `kind` may start now.
    pub fn check(&self, kind: &str) -> Result<(), Blocked> {
        if self.total >= self.concurrency {
            return Err(Blocked::Full);
        }
        if self.exclusive_running > 0 || (self.is_exclusive(kind) && self.total > 0) {
            return Err(Blocked::Exclusive);
        }
        if let Some(rule) = self.rules.get(kind)
            && self.running.get(kind).copied().unwrap_or(0) >= rule.limit.get()
        {
            return Err(Blocked::KindLimit);
        }
        Ok(())
    }

    /// Counts an attempt of `kind` as running (after [`check`](Self::check)).
    pub fn start(&mut self, kind: &str) {
        *self.running.entry(kind.to_owned()).or_default() += 1;
        self.total += 1;
        if self.is_exclusive(kind) {
            self.exclusive_running += 1;
        }
    }

    /// Counts an attempt of `kind` as finished.
    pub fn finish(&mut self, kind: &str) {
        if let Some(n) = self.running.get_mut(kind) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running.remove(kind);
            }
            self.total = self.total.saturating_sub(1);
            if self.is_exclusive(kind) {
                self.exclusive_running = self.exclusive_running.saturating_sub(1);
            }
        }
    }

    /// Whether attempts of `kind` run alone.
    pub fn is_exclusive(&self, kind: &str) -> bool {
        self.rules.get(kind).is_some_and(|r| r.exclusive)
    }

    /// Attempts running.
    pub fn running(&self) -> usize {
        self.total
    }

    /// Whether an exclusive attempt runs.
    pub fn exclusive_running(&self) -> bool {
        self.exclusive_running > 0
    }

    /// The total number of slots.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> CapacityRule {
        s.parse().unwrap()
    }

    #[test]
    fn rules_parse_and_print_back() {
        for (text, limit, exclusive, printed) in [
            ("plan=3", 3, false, "plan=3"),
            ("apply=1,exclusive", 1, true, "apply=1,exclusive"),
            ("apply=exclusive", 1, true, "apply=1,exclusive"),
            ("db = exclusive , 2", 2, true, "db=2,exclusive"),
        ] {
            let r = rule(text);
            assert_eq!((r.limit.get(), r.exclusive), (limit, exclusive), "{text}");
            assert_eq!(r.to_string(), printed);
        }
        for bad in [
            "plan",
            "=3",
            "plan=0",
            "plan=x",
            "plan=1,2",
            "p=exclusive,exclusive",
        ] {
            assert!(bad.parse::<CapacityRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_exclusive_kind_runs_alone() {
        let mut c = Capacity::new(4, [rule("apply=exclusive")]).unwrap();
        c.start("echo");
        assert_eq!(c.check("apply"), Err(Blocked::Exclusive));
        c.finish("echo");
        assert_eq!(c.check("apply"), Ok(()));
        c.start("apply");
        assert!(c.exclusive_running());
        assert_eq!(c.check("echo"), Err(Blocked::Exclusive));
        c.finish("apply");
        assert_eq!(c.check("echo"), Ok(()));
    }

    #[test]
    fn limits_and_slots_are_counted() {
        let mut c = Capacity::new(2, [rule("plan=1")]).unwrap();
        c.start("plan");
        assert_eq!(c.check("plan"), Err(Blocked::KindLimit));
        c.start("echo");
        assert_eq!(c.check("echo"), Err(Blocked::Full));
        c.finish("plan");
        c.finish("unknown");
        assert_eq!(c.running(), 1);
        assert!(Capacity::new(2, [rule("a=1"), rule("a=2")]).is_err());
    }
}
