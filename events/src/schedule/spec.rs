//! What a schedule is: when it ticks (a cron expression in a time zone, or
//! an interval), what each tick runs (a task spec or a workflow), and what
//! happens when ticks overlap or were missed.
//!
//! Tick times are computed here, purely, so the engine, the API's "next
//! five ticks", catch-up and backfill all agree.
//!
//! Daylight-saving changes in the schedule's zone: a local time that does
//! not exist (the hour skipped when clocks go forward) is skipped, and a
//! local time that happens twice (the hour repeated when they go back)
//! ticks once, at its first occurrence. So `0 30 2 * * *` in
//! `Europe/Berlin` does not run on the day clocks go forward and runs once
//! on the day they go back, and `*/2 * * * * *` has no ticks in the
//! skipped hour and none in the second pass of the repeated one.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, LocalResult, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::{ExecutionId, ScheduleId};
pub use crate::spec::Trigger;
use crate::spec::{FieldError, TaskSpec};

/// The shortest interval between two ticks.
pub const MIN_EVERY: Duration = Duration::from_secs(1);
/// How far back a catch-up looks when the schedule does not say.
pub const DEFAULT_CATCH_UP_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// The most ticks one backfill or catch-up may create.
pub const MAX_TICKS_AT_ONCE: usize = 10_000;

/// A schedule as created or replaced through the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// A cron expression: 5 fields (minute first) or 6 (second first), or a
    /// nickname (`@hourly`, `@daily`). Exactly one of `cron` and `every`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// An interval (`2s`, `15m`, `6h`): ticks at `start_at` plus every
    /// multiple of it, or at its multiples since the Unix epoch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::humantime_opt"
    )]
    #[schemars(with = "Option<String>")]
    pub every: Option<Duration>,
    /// The IANA time zone the cron expression reads in (`Europe/Berlin`).
    #[serde(default = "utc")]
    pub time_zone: String,
    /// The task each tick runs. Exactly one of `task` and `workflow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskSpec>,
    /// The workflow each tick runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<WorkflowTemplate>,
    /// What a tick does while an earlier run is still going.
    #[serde(default)]
    pub overlap: Overlap,
    /// What happens to ticks missed while no engine ran.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// With `catch_up: all`: how far back missed ticks are run (`1d` when
    /// absent).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::humantime_opt"
    )]
    #[schemars(with = "Option<String>")]
    pub catch_up_window: Option<Duration>,
    /// Each tick starts up to this much later than its time, by an amount
    /// fixed per tick (spreads schedules that share a time).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::humantime_opt"
    )]
    #[schemars(with = "Option<String>")]
    pub jitter: Option<Duration>,
    /// No tick before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<DateTime<Utc>>,
    /// No tick after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at: Option<DateTime<Utc>>,
    /// Created paused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// What it is for, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// A workflow a schedule runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowTemplate {
    /// The workflow's name.
    pub name: String,
    /// Its version; the newest when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The input of each execution.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub input: Value,
}

/// What a tick does while an earlier run of its schedule is still going.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// The tick is skipped (recorded as skipped).
    #[default]
    Skip,
    /// The tick waits until the earlier run ends; of several waiting ticks
    /// only the newest is kept.
    BufferOne,
    /// The tick runs beside the earlier run.
    AllowAll,
    /// The earlier run is cancelled and the tick runs.
    CancelPrevious,
}

/// What happens to ticks missed while no engine ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Missed ticks are skipped.
    None,
    /// The newest missed tick runs, the others are skipped.
    #[default]
    Last,
    /// Every missed tick within `catch_up_window` runs, oldest first.
    All,
}

/// When a schedule ticks, parsed and checked.
#[derive(Debug, Clone)]
pub struct Timing {
    rule: Rule,
    start_at: Option<DateTime<Utc>>,
    end_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
enum Rule {
    Cron { cron: Box<Cron>, zone: Tz },
    Every { every_ms: i64, anchor_ms: i64 },
}

impl ScheduleSpec {
    /// Reads a spec a caller sent, strictly: an unknown field is refused,
    /// and every error names its JSON path (`task.retry.max_attempts`).
    pub fn read(value: Value) -> Result<ScheduleSpec, FieldError> {
        let mut value = value;
        let task = match &mut value {
            Value::Object(object) => object.remove("task"),
            other => {
                return Err(FieldError {
                    field: String::new(),
                    reason: format!("a schedule is a JSON object, not {other}"),
                });
            }
        };
        let mut spec: ScheduleSpec = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let reason = e.into_inner().to_string();
            let field = match reason.strip_prefix("unknown field `") {
                Some(rest) => rest.split('`').next().unwrap_or_default().to_owned(),
                None if path == "." => String::new(),
                None => path,
            };
            FieldError { field, reason }
        })?;
        if let Some(task) = task.filter(|t| !t.is_null()) {
            let task = crate::submission::read_spec(task, &[]).map_err(|e| FieldError {
                field: if e.field.is_empty() {
                    "task".to_owned()
                } else {
                    format!("task.{}", e.field)
                },
                reason: e.reason,
            })?;
            spec.task = Some(task);
        }
        Ok(spec)
    }

    /// Every rule the spec breaks, each with its field.
    pub fn check(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut fail = |field: &str, reason: String| {
            errors.push(FieldError {
                field: field.to_owned(),
                reason,
            })
        };
        match (&self.cron, self.every) {
            (Some(_), Some(_)) => fail("every", "give either cron or every, not both".into()),
            (None, None) => fail(
                "cron",
                "a schedule needs a cron expression (cron) or an interval (every)".into(),
            ),
            (Some(cron), None) => {
                if let Err(e) = parse_cron(cron) {
                    fail("cron", e);
                }
            }
            (None, Some(every)) if every < MIN_EVERY => fail(
                "every",
                format!(
                    "the shortest interval is {}",
                    humantime::format_duration(MIN_EVERY)
                ),
            ),
            (None, Some(_)) => {}
        }
        if let Err(e) = zone(&self.time_zone) {
            fail("time_zone", e);
        }
        match (&self.task, &self.workflow) {
            (Some(_), Some(_)) => fail("workflow", "give either task or workflow, not both".into()),
            (None, None) => fail(
                "task",
                "a schedule runs a task (task) or a workflow (workflow)".into(),
            ),
            (Some(task), None) => {
                if let Err(e) = task.validate() {
                    fail(&format!("task.{}", e.field), e.reason);
                }
                if !task.env.is_empty() {
                    fail(
                        "task.env",
                        "a schedule keeps no environment values: name secrets (task.secrets) \
                         instead"
                            .into(),
                    );
                }
                if task.idempotency_key.is_some() {
                    fail(
                        "task.idempotency_key",
                        "each run of a schedule has its own id (schedule and tick); a key \
                         would make every run the same execution"
                            .into(),
                    );
                }
            }
            (None, Some(workflow)) => {
                if let Err(e) = crate::id::validate_token(&workflow.name) {
                    fail("workflow.name", e.to_string());
                }
            }
        }
        if let (Some(start), Some(end)) = (self.start_at, self.end_at)
            && end <= start
        {
            fail(
                "end_at",
                format!("ends at {end}, not after it starts ({start})"),
            );
        }
        if let Some(window) = self.catch_up_window
            && window.is_zero()
        {
            fail("catch_up_window", "must be longer than zero".into());
        }
        errors
    }

    /// Its timing; `Err` with the first problem when [`check`](Self::check)
    /// would refuse it.
    pub fn timing(&self) -> Result<Timing, FieldError> {
        let bad = |field: &str, reason: String| FieldError {
            field: field.to_owned(),
            reason,
        };
        let rule = match (&self.cron, self.every) {
            (Some(cron), None) => Rule::Cron {
                cron: Box::new(parse_cron(cron).map_err(|e| bad("cron", e))?),
                zone: zone(&self.time_zone).map_err(|e| bad("time_zone", e))?,
            },
            (None, Some(every)) if every >= MIN_EVERY => Rule::Every {
                every_ms: i64::try_from(every.as_millis()).unwrap_or(i64::MAX),
                anchor_ms: self.start_at.map_or(0, |t| t.timestamp_millis()),
            },
            _ => return Err(bad("cron", "a schedule needs either cron or every".into())),
        };
        Ok(Timing {
            rule,
            start_at: self.start_at,
            end_at: self.end_at,
        })
    }

    /// How far back `catch_up: all` reaches.
    pub fn catch_up_window(&self) -> Duration {
        self.catch_up_window.unwrap_or(DEFAULT_CATCH_UP_WINDOW)
    }
}

fn parse_cron(text: &str) -> Result<Cron, String> {
    let text = text.trim();
    let fields = text.split_whitespace().count();
    if !text.starts_with('@') && !(5..=6).contains(&fields) {
        return Err(format!(
            "{text:?} has {fields} fields; a cron expression has 5 (minute hour day month \
             weekday) or 6 (second first)"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(text)
        .map_err(|e| format!("{text:?} is not a cron expression: {e}"))
}

fn zone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| {
        format!("{name:?} is not an IANA time zone; write one such as UTC or Europe/Berlin")
    })
}

impl Timing {
    /// The first tick strictly after `after`, or `None` when the schedule
    /// has ended by then.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let after = match self.start_at {
            // A tick at `start_at` itself counts.
            Some(start) if start > after => start - chrono::TimeDelta::milliseconds(1),
            _ => after,
        };
        let next = match &self.rule {
            Rule::Cron { cron, zone } => next_cron(cron, *zone, after)?,
            Rule::Every {
                every_ms,
                anchor_ms,
            } => {
                let since = after.timestamp_millis() - anchor_ms;
                let n = since.div_euclid(*every_ms) + 1;
                DateTime::from_timestamp_millis(anchor_ms.checked_add(n.checked_mul(*every_ms)?)?)?
            }
        };
        match self.end_at {
            Some(end) if next > end => None,
            _ => Some(next),
        }
    }

    /// The ticks in `(after, until]`, oldest first, at most `limit`.
    pub fn between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut ticks = Vec::new();
        let mut cursor = after;
        while ticks.len() < limit {
            match self.next_after(cursor) {
                Some(tick) if tick <= until => {
                    ticks.push(tick);
                    cursor = tick;
                }
                _ => break,
            }
        }
        ticks
    }

    /// The newest tick at or before `at` and after `after`.
    pub fn last_between(&self, after: DateTime<Utc>, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut last = None;
        let mut cursor = after;
        // Walk forward: cron searches backwards are not needed and the
        // distance is bounded by the catch-up window.
        while let Some(tick) = self.next_after(cursor).filter(|t| *t <= at) {
            last = Some(tick);
            cursor = tick;
        }
        last
    }

    /// The schedule ends before any tick after `after`.
    pub fn ended_after(&self, after: DateTime<Utc>) -> bool {
        self.next_after(after).is_none()
    }
}

/// The next cron tick after `after` whose local time exists and is the
/// first occurrence of that local time (see the module's notes on
/// daylight-saving changes).
fn next_cron(cron: &Cron, zone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let mut cursor = after.with_timezone(&zone);
    // A gap or a repeated hour holds at most a few thousand candidates.
    for _ in 0..10_000 {
        let tick = cron.find_next_occurrence(&cursor, false).ok()?;
        cursor = tick;
        let local = tick.naive_local();
        let first = match zone.from_local_datetime(&local) {
            LocalResult::Single(only) => only == tick,
            LocalResult::Ambiguous(earlier, _) => earlier == tick,
            LocalResult::None => false,
        };
        // A time moved past a gap no longer matches the pattern.
        if first && cron.is_time_matching(&tick).unwrap_or(false) {
            return Some(tick.with_timezone(&Utc));
        }
    }
    None
}

/// The id of the run of `schedule` for its tick at `tick`: a UUID derived
/// from both (v5), so every engine and every retry of a tick, a catch-up
/// or a backfill names the same execution and a tick never runs twice.
pub fn run_id(schedule: &ScheduleId, tick: DateTime<Utc>) -> ExecutionId {
    let text = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("runlog:schedule/{schedule}/{}", tick.timestamp_millis()).as_bytes(),
    )
    .to_string();
    ExecutionId::new(text).expect("a UUID is a subject token")
}

/// How much later than `tick` its run starts: fixed per tick, below
/// `jitter`.
pub fn jitter_of(schedule: &ScheduleId, tick: DateTime<Utc>, jitter: Option<Duration>) -> Duration {
    let Some(jitter) = jitter.filter(|j| !j.is_zero()) else {
        return Duration::ZERO;
    };
    let id = run_id(schedule, tick);
    let bytes = uuid::Uuid::parse_str(id.as_str())
        .expect("a run id is a UUID")
        .into_bytes();
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("eight bytes"));
    let span = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(n % span)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn spec(value: Value) -> ScheduleSpec {
        let mut value = value;
        value["task"] = json!({"kind": "echo"});
        ScheduleSpec::read(value).unwrap()
    }

    #[test]
    fn six_fields_tick_every_two_seconds_in_a_zone() {
        let s = spec(json!({"cron": "*/2 * * * * *", "time_zone": "Europe/Berlin"}));
        assert!(s.check().is_empty(), "{:?}", s.check());
        let t = s.timing().unwrap();
        let ticks = t.between(at("2026-06-01T10:00:00Z"), at("2026-06-01T10:00:10Z"), 100);
        assert_eq!(ticks.len(), 5);
        assert_eq!(ticks[0], at("2026-06-01T10:00:02Z"));
    }

    #[test]
    fn five_fields_read_minute_first() {
        let s = spec(json!({"cron": "30 2 * * *", "time_zone": "Europe/Berlin"}));
        let t = s.timing().unwrap();
        // 02:30 in Berlin in summer is 00:30 UTC.
        assert_eq!(
            t.next_after(at("2026-06-01T00:00:00Z")),
            Some(at("2026-06-01T00:30:00Z"))
        );
    }

    #[test]
    fn a_skipped_local_hour_is_skipped_and_a_repeated_one_ticks_once() {
        let s = spec(json!({"cron": "0 30 2 * * *", "time_zone": "Europe/Berlin"}));
        let t = s.timing().unwrap();
        // Clocks go forward at 02:00 on 2026-03-29: no 02:30 that day.
        let spring = t.between(at("2026-03-28T12:00:00Z"), at("2026-03-30T12:00:00Z"), 10);
        assert_eq!(spring, vec![at("2026-03-30T00:30:00Z")]);
        // Clocks go back at 03:00 on 2026-10-25: 02:30 happens twice, runs once.
        let autumn = t.between(at("2026-10-24T12:00:00Z"), at("2026-10-25T12:00:00Z"), 10);
        assert_eq!(autumn, vec![at("2026-10-25T00:30:00Z")]);
        // An every-ten-minutes cron: nothing in the second pass of 02:xx.
        let s = spec(json!({"cron": "*/10 * * * *", "time_zone": "Europe/Berlin"}));
        let t = s.timing().unwrap();
        let ticks = t.between(at("2026-10-24T23:55:00Z"), at("2026-10-25T02:05:00Z"), 100);
        // 01:00..02:50 local first pass (00:00..00:50 UTC is 02:xx CEST), then
        // 02:xx CET (01:xx UTC) skipped, then 03:00 CET = 02:00 UTC.
        assert!(ticks.contains(&at("2026-10-25T00:50:00Z")));
        assert!(
            !ticks
                .iter()
                .any(|t| *t > at("2026-10-25T00:50:00Z") && *t < at("2026-10-25T02:00:00Z"))
        );
        assert!(ticks.contains(&at("2026-10-25T02:00:00Z")));
    }

    #[test]
    fn an_interval_is_aligned_to_its_start() {
        let s = spec(json!({"every": "15m", "start_at": "2026-01-01T00:05:00Z"}));
        let t = s.timing().unwrap();
        assert_eq!(
            t.next_after(at("2025-01-01T00:00:00Z")),
            Some(at("2026-01-01T00:05:00Z"))
        );
        assert_eq!(
            t.next_after(at("2026-01-01T00:05:00Z")),
            Some(at("2026-01-01T00:20:00Z"))
        );
    }

    #[test]
    fn no_tick_after_the_end() {
        let s = spec(json!({"every": "1m", "end_at": "2026-01-01T00:03:00Z"}));
        let t = s.timing().unwrap();
        let ticks = t.between(at("2026-01-01T00:00:00Z"), at("2026-01-02T00:00:00Z"), 100);
        assert_eq!(ticks.len(), 3);
        assert!(t.ended_after(at("2026-01-01T00:03:00Z")));
    }

    #[test]
    fn bad_input_names_its_field() {
        let field = |value: Value| {
            let s = ScheduleSpec::read(value.clone());
            match s {
                Err(e) => e.field,
                Ok(s) => s
                    .check()
                    .first()
                    .map(|e| e.field.clone())
                    .unwrap_or_default(),
            }
        };
        let task = json!({"kind": "echo"});
        assert_eq!(field(json!({"cron": "* * *", "task": task})), "cron");
        assert_eq!(field(json!({"cron": "61 * * * *", "task": task})), "cron");
        assert_eq!(
            field(json!({"cron": "* * * * *", "time_zone": "Mars/Olympus", "task": task})),
            "time_zone"
        );
        assert_eq!(
            field(json!({"every": "1m", "start_at": "2026-01-02T00:00:00Z",
                "end_at": "2026-01-01T00:00:00Z", "task": task})),
            "end_at"
        );
        assert_eq!(
            field(json!({"every": "1m", "task": {"kind": "echo", "retyr": {}}})),
            "task.retyr"
        );
        assert_eq!(
            field(json!({"every": "1m", "task": task, "overlpa": "skip"})),
            "overlpa"
        );
        assert_eq!(field(json!({"every": "soon", "task": task})), "every");
        assert_eq!(field(json!({"every": "1m"})), "task");
    }

    #[test]
    fn run_ids_are_the_same_for_the_same_tick_and_jitter_stays_below_its_bound() {
        let id = ScheduleId::new("nightly").unwrap();
        let t = at("2026-01-01T00:00:00Z");
        assert_eq!(run_id(&id, t), run_id(&id, t));
        assert_ne!(
            run_id(&id, t),
            run_id(&id, t + chrono::TimeDelta::seconds(1))
        );
        let j = jitter_of(&id, t, Some(Duration::from_secs(30)));
        assert!(j < Duration::from_secs(30));
        assert_eq!(j, jitter_of(&id, t, Some(Duration::from_secs(30))));
        assert_eq!(jitter_of(&id, t, None), Duration::ZERO);
    }
}
