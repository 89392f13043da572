//! Fuzzes the workflow definition reader (`Definition::from_json`,
//! `from_yaml`, `check`) and the decider that runs what it accepts.
//!
//! The input is the text of a definition, JSON or YAML, as `POST
//! /v1/workflows` receives it; seeds are in `fuzz/seeds/workflow/`.
//! Properties checked:
//!
//! 1. Reading and checking never panic; every problem names a reason.
//! 2. A definition that passes `check` has an order of its nodes, and
//!    survives the store's round trip (JSON out, JSON in) unchanged, as
//!    `Workflows::define` expects.
//! 3. Started with an input, every event the decider decides applies, and
//!    a run that succeeds every task ends within a bounded number of steps.
//!
//! Run with `scripts/fuzz.sh SECONDS workflow`.

#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use runlog_events::ExecutionId;
use runlog_events::workflow::Definition;
use runlog_events::workflow::run::{
    RunOutcome, WorkflowCommand, WorkflowEnvelope, WorkflowState, apply, decide,
};
use serde_json::json;

/// Steps a run may take: every node of the largest workflow, several
/// times over (`for_each` runs, retries of the decider's own commands).
const MAX_STEPS: usize = 2_000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for read in [Definition::from_json(text), Definition::from_yaml(text)] {
        match read {
            Ok(definition) => checked(definition),
            Err(errors) => {
                assert!(!errors.is_empty(), "a refusal names a problem");
                for e in errors {
                    assert!(!e.reason.is_empty(), "a problem has a reason");
                }
            }
        }
    }
});

fn checked(definition: Definition) {
    let errors = definition.check(|_| true);
    if !errors.is_empty() {
        for e in errors {
            assert!(!e.reason.is_empty(), "a problem has a reason");
        }
        return;
    }
    assert!(
        definition.order().is_some(),
        "a checked definition has no cycle"
    );
    let stored = serde_json::to_vec(&definition).expect("a definition always serialises");
    let read: Definition = serde_json::from_slice(&stored).expect("a stored definition reads");
    assert_eq!(
        read, definition,
        "the store's round trip keeps a definition"
    );
    run(definition);
}

/// Starts the definition and succeeds every task it hands out until it
/// ends.
fn run(definition: Definition) {
    let id = ExecutionId::new("fuzz").unwrap();
    let now: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
    let mut state = WorkflowState::default();
    let start = WorkflowCommand::Start {
        id: id.clone(),
        definition: Box::new(definition),
        input: json!({"items": [1, 2, 3], "name": "fuzz", "flag": true}),
        handles: None,
        parent: None,
        traceparent: None,
    };
    let mut command = Some(start);
    for _ in 0..MAX_STEPS {
        let Some(next) = command.take() else {
            return;
        };
        let Ok(events) = decide(&next, &state, now) else {
            return;
        };
        for event in events {
            let envelope = WorkflowEnvelope::new(id.clone(), now, "/fuzz", event);
            apply(&mut state, &envelope).expect("every decided event applies");
        }
        if state.status.is_terminal() {
            return;
        }
        command = state
            .running_runs()
            .next()
            .map(|(node, index, _)| WorkflowCommand::EndRun {
                node: node.to_owned(),
                index,
                outcome: RunOutcome::Succeeded {
                    output: json!({"ok": true, "n": index}),
                },
            });
    }
    panic!("the workflow did not end within {MAX_STEPS} steps");
}
