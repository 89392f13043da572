use chrono::TimeDelta;
use serde_json::json;

use super::*;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn created(value: serde_json::Value, time: DateTime<Utc>) -> (ScheduleId, ScheduleState) {
    let mut value = value;
    value["task"] = json!({"kind": "echo"});
    let spec = ScheduleSpec::read(value).unwrap();
    let id = ScheduleId::new("s1").unwrap();
    let mut state = ScheduleState::default();
    apply(
        &mut state,
        &envelope(&id, time, ScheduleEvent::Created { spec }),
    )
    .unwrap();
    (id, state)
}

fn envelope(id: &ScheduleId, time: DateTime<Utc>, event: ScheduleEvent) -> ScheduleEnvelope {
    ScheduleEnvelope::new(id.clone(), time, "test", event)
}

fn record(id: &ScheduleId, state: &mut ScheduleState, plan: &Plan, time: DateTime<Utc>) {
    for event in &plan.events {
        apply(state, &envelope(id, time, event.clone())).unwrap();
    }
}

fn triggered(plan: &Plan) -> Vec<(DateTime<Utc>, Trigger)> {
    plan.events
        .iter()
        .filter_map(|e| match e {
            ScheduleEvent::Triggered { tick, trigger, .. } => Some((*tick, *trigger)),
            _ => None,
        })
        .collect()
}

fn now(now: DateTime<Utc>, engine_started: DateTime<Utc>) -> Now {
    Now {
        now,
        engine_started,
    }
}

#[test]
fn a_due_tick_runs_once() {
    let t0 = at("2026-01-01T00:00:00.500Z");
    let (id, mut state) = created(json!({"every": "1s"}), t0);
    let plan = due(&id, &state, now(at("2026-01-01T00:00:01.010Z"), t0), &[]);
    assert_eq!(
        triggered(&plan),
        vec![(at("2026-01-01T00:00:01Z"), Trigger::Tick)]
    );
    record(&id, &mut state, &plan, t0);
    // Deciding again (a second engine, a redelivered timer) finds it done.
    assert!(due(&id, &state, now(at("2026-01-01T00:00:01.500Z"), t0), &[]).is_empty());
}

#[test]
fn missed_ticks_follow_the_catch_up_policy() {
    let t0 = at("2026-01-01T00:00:00.500Z");
    let restart = at("2026-01-01T00:00:10.500Z");
    for (policy, expected) in [("none", 0), ("last", 1), ("all", 10)] {
        let (id, state) = created(
            json!({"every": "1s", "catch_up": policy, "overlap": "allow_all"}),
            t0,
        );
        let plan = due(&id, &state, now(restart, restart), &[]);
        let runs = triggered(&plan);
        assert_eq!(runs.len(), expected, "{policy}");
        assert!(runs.iter().all(|(_, t)| *t == Trigger::CatchUp));
        if policy == "last" {
            assert_eq!(runs[0].0, at("2026-01-01T00:00:10Z"));
        }
        let skipped: u32 = plan
            .events
            .iter()
            .map(|e| match e {
                ScheduleEvent::Skipped { count, .. } => *count,
                _ => 0,
            })
            .sum();
        assert_eq!(skipped as usize + runs.len(), 10, "{policy}");
    }
}

#[test]
fn a_late_tick_of_a_running_engine_is_not_missed() {
    let t0 = at("2026-01-01T00:00:00.500Z");
    let (id, state) = created(json!({"every": "1s", "catch_up": "none"}), t0);
    let plan = due(&id, &state, now(at("2026-01-01T00:00:05.500Z"), t0), &[]);
    assert_eq!(triggered(&plan).len(), 1, "overlap skip: the first runs");
    assert_eq!(
        plan.events.len(),
        2,
        "the other four are skipped as overlapping"
    );
}

#[test]
fn the_overlap_policies() {
    let t0 = at("2026-01-01T00:00:00.500Z");
    let tick = at("2026-01-01T00:00:01.000Z");
    let busy = [ExecutionId::new("previous").unwrap()];
    let at_tick = now(tick + TimeDelta::milliseconds(5), t0);
    let decide = |policy: &str| {
        let (id, state) = created(json!({"every": "1s", "overlap": policy}), t0);
        (id.clone(), state.clone(), due(&id, &state, at_tick, &busy))
    };
    let (_, _, skip) = decide("skip");
    assert!(triggered(&skip).is_empty());
    assert!(matches!(
        skip.events[0],
        ScheduleEvent::Skipped {
            reason: SkipReason::Overlap,
            ..
        }
    ));
    let (_, _, all) = decide("allow_all");
    assert_eq!(triggered(&all).len(), 1);
    assert!(all.cancel.is_empty());
    let (_, _, cancel) = decide("cancel_previous");
    assert_eq!(triggered(&cancel).len(), 1);
    assert_eq!(cancel.cancel, busy.to_vec());
    let (id, mut state, buffer) = decide("buffer_one");
    assert_eq!(buffer.events, vec![ScheduleEvent::Buffered { tick }]);
    record(&id, &mut state, &buffer, tick);
    // Still busy: it waits; done: it runs, with its own logical time.
    let later = now(tick + TimeDelta::milliseconds(300), t0);
    assert!(due(&id, &state, later, &busy).is_empty());
    let freed = due(&id, &state, later, &[]);
    assert_eq!(triggered(&freed), vec![(tick, Trigger::Buffered)]);
}

#[test]
fn a_paused_schedule_does_not_tick_and_resuming_does_not_run_the_pause() {
    let t0 = at("2026-01-01T00:00:00.500Z");
    let (id, mut state) = created(json!({"every": "1s", "catch_up": "all"}), t0);
    apply(
        &mut state,
        &envelope(&id, t0, ScheduleEvent::Paused { reason: None }),
    )
    .unwrap();
    assert!(due(&id, &state, now(at("2026-01-01T00:00:05Z"), t0), &[]).is_empty());
    let resumed = at("2026-01-01T00:00:05.200Z");
    apply(&mut state, &envelope(&id, resumed, ScheduleEvent::Resumed)).unwrap();
    let plan = due(&id, &state, now(at("2026-01-01T00:00:06.001Z"), t0), &[]);
    assert_eq!(
        triggered(&plan),
        vec![(at("2026-01-01T00:00:06Z"), Trigger::Tick)]
    );
}

#[test]
fn a_backfill_names_each_tick_by_its_time() {
    let id = ScheduleId::new("s1").unwrap();
    let ticks: Vec<_> = (0..60)
        .map(|m| at("2026-01-01T00:00:00Z") + TimeDelta::minutes(m))
        .collect();
    let plan = backfill(&id, &ticks, Overlap::AllowAll, &[]);
    let runs = triggered(&plan);
    assert_eq!(runs.len(), 60);
    assert!(runs.iter().all(|(_, t)| *t == Trigger::Backfill));
    let ScheduleEvent::Triggered { execution, .. } = &plan.events[7] else {
        panic!()
    };
    assert_eq!(*execution, spec::run_id(&id, ticks[7]));
}

#[test]
fn events_of_a_deleted_schedule_do_not_apply() {
    let t0 = at("2026-01-01T00:00:00Z");
    let (id, mut state) = created(json!({"every": "1s"}), t0);
    apply(&mut state, &envelope(&id, t0, ScheduleEvent::Deleted)).unwrap();
    assert!(apply(&mut state, &envelope(&id, t0, ScheduleEvent::Resumed)).is_err());
    assert!(due(&id, &state, now(at("2026-01-02T00:00:00Z"), t0), &[]).is_empty());
}
