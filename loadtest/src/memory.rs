//! `memory`: the engine's resident memory per finished execution held in
//! the projection, at a scale where the per-execution cost dominates.
//!
//! Folds `executions` finished executions (`submitted`, `queued`, `started`,
//! `succeeded`, the same ~100-byte `echo` input and output as the end-to-end
//! scenarios) straight into a [`Projection`], with no NATS, one execution at
//! a time so nothing else stays in memory, and reports how much this
//! process's resident set grew per execution.

use std::time::Instant;

use chrono::Utc;
use runlog_engine::Projection;
use runlog_events::event::{Queued, Started, Succeeded};
use runlog_events::{Envelope, Event, ExecutionId, QueueName, TaskSpec};

/// What `memory` measured.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub executions: usize,
    pub bytes_per_execution: f64,
    pub seconds: f64,
}

/// Events of an execution that ran once, as [`finished`] records it.
pub const EVENTS: usize = 3;

/// The events of an execution submitted through an engine door that ran
/// once and succeeded with `output` (`queued` with the spec, `started`,
/// `succeeded`), each with its attempt.
pub fn finished(spec: &TaskSpec, output: serde_json::Value) -> [(u32, Event); EVENTS] {
    [
        (
            1,
            Event::Queued(Queued {
                queue: QueueName::default(),
                priority: spec.priority,
                kind: spec.kind.clone(),
                worker_labels: Default::default(),
                capacity: None,
                spec: Some(Box::new(spec.clone())),
            }),
        ),
        (
            1,
            Event::Started(Started {
                worker: "load-0".into(),
                deadline: None,
            }),
        ),
        // What a worker records of an echo task's attempt.
        (
            1,
            Event::Succeeded(Succeeded {
                output,
                resources: Some(runlog_events::resources::Resources {
                    wall_ms: 1,
                    output_bytes: 2,
                    ..Default::default()
                }),
            }),
        ),
    ]
}

pub fn run(executions: usize) -> anyhow::Result<Memory> {
    let mut spec = TaskSpec::new("echo");
    let input = serde_json::json!({ "payload": "x".repeat(80) });
    spec.input = input.clone();
    let now = Utc::now();
    let before = crate::resident_bytes();
    let started = Instant::now();
    let projection = Projection::new();
    let mut seq = 0;
    for _ in 0..executions {
        let exec = ExecutionId::generate();
        let events = finished(&spec, input.clone());
        for (attempt, event) in events {
            seq += 1;
            let envelope = Envelope::new(exec.clone(), attempt, now, "/loadtest", event);
            projection.apply(seq, &envelope);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        projection.len() == executions && projection.skipped() == 0,
        "folded {} executions ({} skipped events), expected {executions}",
        projection.len(),
        projection.skipped()
    );
    let grown = crate::resident_bytes() - before;
    drop(projection);
    Ok(Memory {
        executions,
        bytes_per_execution: grown / executions as f64,
        seconds,
    })
}
