//! The rules of a breaker, as pure functions with time passed in: when
//! a window of outcomes trips it, what an attempt may do in each state,
//! and how a probe's outcome moves it on.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use chrono::{DateTime, Utc};
use runlog_events::ErrorClass;
use serde::{Deserialize, Serialize};

/// How the breakers of one worker judge their targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Breakers are consulted and fed at all.
    pub enabled: bool,
    /// The share of failed attempts (1–100 %) that opens a breaker.
    pub failure_percent: u8,
    /// Attempts that must have ended in the window before it may open.
    pub min_calls: NonZeroU32,
    /// How far back outcomes count.
    pub window: Duration,
    /// How long an open breaker delays attempts before it probes.
    pub open_for: Duration,
    /// Probe attempts of a half-open breaker that must all succeed.
    pub probes: NonZeroU32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            failure_percent: 50,
            min_calls: NonZeroU32::new(10).expect("10 is not zero"),
            window: Duration::from_secs(60),
            open_for: Duration::from_secs(30),
            probes: NonZeroU32::MIN,
        }
    }
}

impl BreakerConfig {
    /// Why the settings are unusable, if they are.
    pub fn problem(&self) -> Option<String> {
        if !(1..=100).contains(&self.failure_percent) {
            return Some("breaker failure percentage must be 1 to 100".into());
        }
        for (name, d) in [
            ("breaker window", self.window),
            ("breaker open duration", self.open_for),
        ] {
            if d < Duration::from_millis(10) {
                return Some(format!("{name} must be at least 10ms"));
            }
        }
        None
    }

    /// How long an item waits while the probes of a half-open breaker are
    /// out: a quarter of the open duration, so that it runs soon after the
    /// breaker closes.
    pub fn probe_wait(&self) -> Duration {
        self.open_for / 4
    }
}

/// The state of one breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Attempts run; failures are counted.
    Closed,
    /// Attempts are delayed.
    Open,
    /// A few probe attempts run; the rest are delayed.
    HalfOpen,
}

impl State {
    /// The JSON token (`half_open`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an attempt's outcome says about its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The target answered.
    Success,
    /// The target failed (unreachable, slow, overloaded, broken).
    Failure,
    /// Nothing is known about the target.
    Ignored,
}

/// The verdict of a failure of `class`.
pub fn verdict_of(class: ErrorClass) -> Verdict {
    match class {
        ErrorClass::Network
        | ErrorClass::Timeout
        | ErrorClass::RateLimited
        | ErrorClass::Crashed
        | ErrorClass::Unknown => Verdict::Failure,
        ErrorClass::Cancelled
        | ErrorClass::InvalidInput
        | ErrorClass::Resource
        | ErrorClass::Permanent => Verdict::Ignored,
        ErrorClass::Permission | ErrorClass::NotFound => Verdict::Success,
    }
}

/// The shared state of one key, as the `<p>-breakers` bucket holds it
/// (JSON, bucket key = the breaker key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The breaker key.
    pub key: String,
    /// Its state.
    pub state: State,
    /// When it entered the state.
    pub since: DateTime<Utc>,
    /// Open: when probing may start. Half-open: when the probes granted so
    /// far are given up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// Half-open: probes granted.
    #[serde(default)]
    pub probes: u32,
    /// Half-open: probes that succeeded.
    #[serde(default)]
    pub successes: u32,
    /// The failed attempts the last transition was based on.
    #[serde(default)]
    pub failures: u32,
    /// The attempts the last transition was based on.
    #[serde(default)]
    pub calls: u32,
    /// The worker that wrote the last transition.
    pub worker: String,
    /// How many times the breaker opened.
    #[serde(default)]
    pub opened: u64,
}

impl Record {
    /// The announcement of this record, entered from `from`.
    pub fn transition(&self, from: State) -> Transition {
        Transition {
            key: self.key.clone(),
            from,
            to: self.state,
            at: self.since,
            failures: self.failures,
            calls: self.calls,
            worker: self.worker.clone(),
        }
    }

    /// Whether attempts of the key may run without asking (`closed`).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }
}

/// A state change, published on `<p>.breaker.<key>` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The breaker key.
    pub key: String,
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// When.
    pub at: DateTime<Utc>,
    /// Failed attempts behind the decision.
    pub failures: u32,
    /// Attempts behind the decision.
    pub calls: u32,
    /// The worker that decided.
    pub worker: String,
}

/// What to do with an item of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Run it.
    Run,
    /// Run it as a probe, once this record is written.
    Probe(Record),
    /// Hand it back until then.
    Delay(DateTime<Utc>),
}

fn later(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// What a worker may do with an item whose key has `record`.
pub fn admit(
    config: &BreakerConfig,
    record: Option<&Record>,
    now: DateTime<Utc>,
    worker: &str,
) -> Admission {
    let Some(record) = record else {
        return Admission::Run;
    };
    let retry_at = record.retry_at.unwrap_or(now);
    let lease = later(now, config.open_for);
    match record.state {
        State::Closed => Admission::Run,
        State::Open if now < retry_at => Admission::Delay(retry_at),
        State::Open => Admission::Probe(Record {
            state: State::HalfOpen,
            since: now,
            retry_at: Some(lease),
            probes: 1,
            successes: 0,
            failures: 0,
            calls: 0,
            worker: worker.to_owned(),
            ..record.clone()
        }),
        // The probes out were given up: start over.
        State::HalfOpen if now >= retry_at => Admission::Probe(Record {
            retry_at: Some(lease),
            probes: 1,
            successes: 0,
            ..record.clone()
        }),
        State::HalfOpen if record.probes < config.probes.get() => Admission::Probe(Record {
            probes: record.probes + 1,
            ..record.clone()
        }),
        State::HalfOpen => Admission::Delay(retry_at.min(later(now, config.probe_wait()))),
    }
}

/// The record after a probe of the half-open `record` ended with
/// `verdict`: closed once every probe succeeded, open again on a failure,
/// the probe given back when its outcome says nothing.
pub fn settle_probe(
    config: &BreakerConfig,
    record: &Record,
    verdict: Verdict,
    now: DateTime<Utc>,
    worker: &str,
) -> Option<Record> {
    if record.state != State::HalfOpen {
        return None;
    }
    Some(match verdict {
        Verdict::Success if record.successes + 1 >= config.probes.get() => Record {
            state: State::Closed,
            since: now,
            retry_at: None,
            probes: 0,
            successes: 0,
            failures: 0,
            calls: record.successes + 1,
            worker: worker.to_owned(),
            ..record.clone()
        },
        Verdict::Success => Record {
            successes: record.successes + 1,
            ..record.clone()
        },
        Verdict::Failure => Record {
            state: State::Open,
            since: now,
            retry_at: Some(later(now, config.open_for)),
            probes: 0,
            successes: 0,
            failures: 1,
            calls: record.successes + 1,
            worker: worker.to_owned(),
            opened: record.opened + 1,
            ..record.clone()
        },
        Verdict::Ignored => Record {
            probes: record.probes.saturating_sub(1),
            ..record.clone()
        },
    })
}

/// The open record of `key` (closed as `record` says) after `failures` of
/// `calls` attempts failed.
pub fn trip(
    config: &BreakerConfig,
    record: Option<&Record>,
    key: &str,
    calls: u32,
    failures: u32,
    now: DateTime<Utc>,
    worker: &str,
) -> Record {
    Record {
        key: key.to_owned(),
        state: State::Open,
        since: now,
        retry_at: Some(later(now, config.open_for)),
        probes: 0,
        successes: 0,
        failures,
        calls,
        worker: worker.to_owned(),
        opened: record.map_or(0, |r| r.opened) + 1,
    }
}

/// Buckets of a [`Window`]: outcomes count for between 9/10 of the window
/// and all of it.
const SLOTS: usize = 10;

/// One worker's outcomes of one key over the last `window`, in buckets.
#[derive(Debug, Clone)]
pub struct Window {
    width_ms: i64,
    /// (bucket number, calls, failures)
    slots: [(i64, u32, u32); SLOTS],
}

impl Window {
    /// An empty window of `window`.
    pub fn new(window: Duration) -> Self {
        let width_ms = (window.as_millis() / SLOTS as u128).max(1);
        Window {
            width_ms: i64::try_from(width_ms).unwrap_or(i64::MAX),
            slots: [(i64::MIN, 0, 0); SLOTS],
        }
    }

    fn bucket(&self, now: DateTime<Utc>) -> i64 {
        now.timestamp_millis().div_euclid(self.width_ms)
    }

    /// Counts an outcome (ignored verdicts are not counted).
    pub fn record(&mut self, now: DateTime<Utc>, verdict: Verdict) {
        if verdict == Verdict::Ignored {
            return;
        }
        let bucket = self.bucket(now);
        let slot = &mut self.slots[bucket.rem_euclid(SLOTS as i64) as usize];
        if slot.0 != bucket {
            *slot = (bucket, 0, 0);
        }
        slot.1 = slot.1.saturating_add(1);
        if verdict == Verdict::Failure {
            slot.2 = slot.2.saturating_add(1);
        }
    }

    /// (calls, failures) in the window at `now`.
    pub fn totals(&self, now: DateTime<Utc>) -> (u32, u32) {
        let bucket = self.bucket(now);
        self.slots
            .iter()
            .filter(|(b, _, _)| *b <= bucket && *b > bucket - SLOTS as i64)
            .fold((0u32, 0u32), |(c, f), (_, calls, failures)| {
                (c.saturating_add(*calls), f.saturating_add(*failures))
            })
    }

    /// (calls, failures) when they open the breaker under `config`.
    pub fn tripped(&self, config: &BreakerConfig, now: DateTime<Utc>) -> Option<(u32, u32)> {
        let (calls, failures) = self.totals(now);
        let over =
            u64::from(failures) * 100 >= u64::from(calls) * u64::from(config.failure_percent);
        (calls >= config.min_calls.get() && over).then_some((calls, failures))
    }

    /// Forgets every outcome.
    pub fn clear(&mut self) {
        self.slots = [(i64::MIN, 0, 0); SLOTS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn config() -> BreakerConfig {
        BreakerConfig {
            min_calls: NonZeroU32::new(4).unwrap(),
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            probes: NonZeroU32::new(2).unwrap(),
            ..BreakerConfig::default()
        }
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap()
    }

    #[test]
    fn the_window_needs_min_calls_and_the_rate_and_forgets_old_outcomes() {
        let c = config();
        let mut w = Window::new(c.window);
        for _ in 0..3 {
            w.record(at(0), Verdict::Failure);
        }
        assert_eq!(w.tripped(&c, at(0)), None, "3 calls < min_calls");
        w.record(at(100), Verdict::Success);
        assert_eq!(w.tripped(&c, at(100)), Some((4, 3)));
        w.record(at(100), Verdict::Ignored);
        assert_eq!(w.totals(at(100)), (4, 3));
        // Half and half is the threshold at 50 %.
        let mut w = Window::new(c.window);
        for v in [Verdict::Failure, Verdict::Success].repeat(2) {
            w.record(at(0), v);
        }
        assert_eq!(w.tripped(&c, at(0)), Some((4, 2)));
        // Ten seconds later the outcomes are gone.
        assert_eq!(w.totals(at(10_500)), (0, 0));
        w.clear();
        assert_eq!(w.totals(at(0)), (0, 0));
    }

    #[test]
    fn classes_split_into_failures_successes_and_silence() {
        assert_eq!(verdict_of(ErrorClass::Network), Verdict::Failure);
        assert_eq!(verdict_of(ErrorClass::RateLimited), Verdict::Failure);
        assert_eq!(verdict_of(ErrorClass::Crashed), Verdict::Failure);
        assert_eq!(verdict_of(ErrorClass::NotFound), Verdict::Success);
        assert_eq!(verdict_of(ErrorClass::InvalidInput), Verdict::Ignored);
        assert_eq!(verdict_of(ErrorClass::Cancelled), Verdict::Ignored);
    }

    #[test]
    fn open_half_open_closed_and_back() {
        let c = config();
        let open = trip(&c, None, "k", 4, 3, at(0), "w1");
        assert_eq!((open.state, open.opened), (State::Open, 1));
        assert_eq!(
            admit(&c, Some(&open), at(4_999), "w2"),
            Admission::Delay(at(5_000))
        );
        let Admission::Probe(half) = admit(&c, Some(&open), at(5_000), "w2") else {
            panic!("no probe");
        };
        assert_eq!(
            (half.state, half.probes, half.retry_at),
            (State::HalfOpen, 1, Some(at(10_000)))
        );
        let Admission::Probe(half2) = admit(&c, Some(&half), at(5_100), "w3") else {
            panic!("no second probe");
        };
        assert_eq!(half2.probes, 2);
        // Both probes are out: others wait a quarter of open_for.
        assert_eq!(
            admit(&c, Some(&half2), at(5_200), "w4"),
            Admission::Delay(at(6_450))
        );
        let one = settle_probe(&c, &half2, Verdict::Success, at(5_300), "w2").unwrap();
        assert_eq!((one.state, one.successes), (State::HalfOpen, 1));
        let closed = settle_probe(&c, &one, Verdict::Success, at(5_400), "w3").unwrap();
        assert_eq!(
            (closed.state, closed.calls, closed.worker.as_str()),
            (State::Closed, 2, "w3")
        );
        assert_eq!(admit(&c, Some(&closed), at(5_500), "w4"), Admission::Run);
        // A failed probe opens it again, counted.
        let reopened = settle_probe(&c, &half, Verdict::Failure, at(6_000), "w2").unwrap();
        assert_eq!(
            (reopened.state, reopened.opened, reopened.retry_at),
            (State::Open, 2, Some(at(11_000)))
        );
        // A lapsed lease grants a fresh probe.
        let Admission::Probe(again) = admit(&c, Some(&half2), at(10_000), "w5") else {
            panic!("no fresh probe");
        };
        assert_eq!((again.probes, again.retry_at), (1, Some(at(15_000))));
        // An ignored probe is given back.
        assert_eq!(
            settle_probe(&c, &half, Verdict::Ignored, at(5_500), "w2")
                .unwrap()
                .probes,
            0
        );
        assert_eq!(
            settle_probe(&c, &closed, Verdict::Failure, at(0), "w2"),
            None
        );
        let json = serde_json::to_value(reopened.transition(State::HalfOpen)).unwrap();
        assert_eq!(json["from"], "half_open");
        assert_eq!(json["to"], "open");
    }

    /// Random admissions and outcomes over time against one shared record,
    /// as several workers would play them.
    #[test]
    fn random_play_keeps_the_rules() {
        let c = config();
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut record: Option<Record> = None;
            let mut window = Window::new(c.window);
            let mut now = 0i64;
            // Probes out in the current lease.
            let mut out = 0u32;
            for _ in 0..300 {
                now += rng.random_range(0..800);
                let worker = format!("w{}", rng.random_range(0..3));
                let before = record.clone();
                match admit(&c, record.as_ref(), at(now), &worker) {
                    Admission::Run => {
                        assert!(before.as_ref().is_none_or(Record::is_closed));
                        let verdict = if rng.random_bool(0.6) {
                            Verdict::Failure
                        } else {
                            Verdict::Success
                        };
                        window.record(at(now), verdict);
                        if let Some((calls, failures)) = window.tripped(&c, at(now)) {
                            assert!(calls >= c.min_calls.get() && failures * 2 >= calls);
                            record = Some(trip(
                                &c,
                                before.as_ref(),
                                "k",
                                calls,
                                failures,
                                at(now),
                                &worker,
                            ));
                            window.clear();
                        }
                    }
                    Admission::Delay(until) => {
                        let r = before.unwrap();
                        assert_ne!(r.state, State::Closed);
                        assert!(until > at(now));
                        if r.state == State::Open {
                            assert_eq!(Some(until), r.retry_at);
                        }
                    }
                    Admission::Probe(next) => {
                        let r = before.unwrap();
                        assert_ne!(r.state, State::Closed);
                        assert_eq!(next.state, State::HalfOpen);
                        assert!(next.probes <= c.probes.get());
                        if r.state == State::Open || at(now) >= r.retry_at.unwrap() {
                            out = 0;
                        }
                        out += 1;
                        assert_eq!(out, next.probes);
                        let verdict = match rng.random_range(0..3) {
                            0 => Verdict::Failure,
                            1 => Verdict::Ignored,
                            _ => Verdict::Success,
                        };
                        let settled = settle_probe(&c, &next, verdict, at(now), &worker).unwrap();
                        if verdict == Verdict::Ignored {
                            out -= 1;
                        }
                        match settled.state {
                            State::Closed => assert_eq!(settled.calls, c.probes.get()),
                            State::Open => assert_eq!(settled.opened, next.opened + 1),
                            State::HalfOpen => assert!(settled.probes <= c.probes.get()),
                        }
                        record = Some(settled);
                    }
                }
            }
        }
    }
}
