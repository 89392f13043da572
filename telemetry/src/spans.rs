//! The spans of an execution, from its recorded facts.
//!
//! | span | parent | from → to | exported by |
//! |---|---|---|---|
//! | `submit` | the caller's span, if any | request → recorded | the engine door |
//! | `execution` | `submit` (or the caller's span) | submitted → terminal event | whoever records the terminal event |
//! | `queue wait` | `execution` | queued → claimed | the worker that claims |
//! | `attempt` | `execution` | claimed → result | that worker |
//! | the kind (`shell`, `http`) | `attempt` | handler start → end | that worker |
//!
//! Every event of the execution carries the parent of the `execution`
//! span as its `traceparent`; the `execution` and `attempt` span ids are
//! derived from it ([`TraceParent::execution_span_id`]).

use std::sync::Arc;

use runlog_events::decider::{ExecutionState, Status};
use runlog_events::journal::OnEnded;
use runlog_events::{Envelope, ExecutionId, TraceParent};

use crate::{Span, Traces};

/// The context of `execution`'s span, in the trace of `parent`.
pub fn execution_context(parent: &TraceParent, execution: &ExecutionId) -> TraceParent {
    parent.with_span(&parent.execution_span_id(execution))
}

/// The context of attempt `attempt`'s span of `execution`.
pub fn attempt_context(parent: &TraceParent, execution: &ExecutionId, attempt: u32) -> TraceParent {
    parent.with_span(&parent.attempt_span_id(execution, attempt))
}

/// The span of an execution that `ended` (its terminal event) ended, in
/// state `state` (after the event); `None` without a trace or a known
/// submission time.
pub fn execution_span(state: &ExecutionState, ended: &Envelope) -> Option<Span> {
    let parent = state.traceparent.as_ref()?;
    let submitted = state.submitted_at?;
    let execution = &ended.execution;
    let mut span = Span::child_of(parent, &parent.execution_span_id(execution), "execution")?
        .between(submitted, ended.time)
        .attr("runlog.execution.id", execution.as_str().to_owned())
        .attr("runlog.status", state.status.as_str())
        .attr("runlog.attempts", i64::from(state.attempt));
    if let Some(spec) = &state.spec {
        span = span
            .attr("runlog.kind", spec.kind.clone())
            .attr("runlog.queue", spec.queue.as_str().to_owned());
    }
    Some(match state.status {
        Status::Succeeded => span.ok(),
        Status::Cancelled => span,
        status => span.error(status.as_str()),
    })
}

/// What a journal calls when it ends an execution: export its span.
pub fn on_ended(traces: Traces) -> OnEnded {
    Arc::new(move |state, ended| {
        if let Some(span) = execution_span(state, ended) {
            traces.record(span);
        }
    })
}
