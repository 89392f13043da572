//! The rules of a workflow execution, as pure functions beside the task
//! rules: [`evolve`] folds one recorded [`WorkflowEvent`] into a
//! [`WorkflowState`], [`decide`] turns a [`WorkflowCommand`] into the events
//! that follow. Neither does I/O or reads a clock.
//!
//! ```text
//! New ─started→ Running ─succeeded→ Succeeded
//!                  │ ├──failed→ Failed ─retried→ Running
//!                  │ ├──timed_out→ TimedOut ─retried→ Running
//!                  │ └──cancel_requested→ (runs end) ─cancelled→ Cancelled ─retried→ Running
//! ```
//!
//! A node waits until every node it depends on has ended; then its `when`
//! decides whether it runs, and its `for_each` how many runs it has. A run
//! of a worker kind is a task execution of its own, recorded here as
//! `run_started` (with the execution's id, decided here so that a replayed
//! decision names the same execution) and `run_ended`; an engine kind
//! (`transform`, `condition`) is computed inside [`decide`] and recorded as
//! `node_started` + `node_succeeded`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Definition, Node, OnFailure, expr};
use crate::envelope::TraceParent;
use crate::id::ExecutionId;

/// The longest id a workflow execution may have: its runs are named
/// `<id>-<n>` and its error handler `<id>-handler-<round>`, which must stay
/// subject tokens of at most 64 bytes.
pub const MAX_ID_LEN: usize = 40;

/// Where a workflow execution is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    /// Nothing recorded yet.
    #[default]
    New,
    /// Nodes run or wait.
    Running,
    /// Every node ended well or was skipped. Terminal.
    Succeeded,
    /// A required node failed. Ends the execution, but `retry` can resume it.
    Failed,
    /// Stopped on request.
    Cancelled,
    /// Its deadline passed.
    TimedOut,
}

impl WorkflowStatus {
    /// Whether it has ended (a `retry` may still resume a failed,
    /// cancelled or timed-out one).
    pub fn is_terminal(self) -> bool {
        !matches!(self, WorkflowStatus::New | WorkflowStatus::Running)
    }

    /// The state's name as used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowStatus::New => "new",
            WorkflowStatus::Running => "running",
            WorkflowStatus::Succeeded => "succeeded",
            WorkflowStatus::Failed => "failed",
            WorkflowStatus::Cancelled => "cancelled",
            WorkflowStatus::TimedOut => "timed_out",
        }
    }
}

/// Where a node, or one run of it, is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Its dependencies have not all ended.
    #[default]
    Waiting,
    /// It runs.
    Running,
    /// It ended well.
    Succeeded,
    /// It failed.
    Failed,
    /// It did not run: its `when` was false, or a node it needs did not
    /// succeed.
    Skipped,
    /// It was stopped by a cancel of the workflow.
    Cancelled,
}

impl NodeStatus {
    /// Whether it has ended.
    pub fn is_done(self) -> bool {
        !matches!(self, NodeStatus::Waiting | NodeStatus::Running)
    }

    /// The state's name as used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Waiting => "waiting",
            NodeStatus::Running => "running",
            NodeStatus::Succeeded => "succeeded",
            NodeStatus::Failed => "failed",
            NodeStatus::Skipped => "skipped",
            NodeStatus::Cancelled => "cancelled",
        }
    }
}

/// How one run ended, as its task execution did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RunOutcome {
    /// The execution succeeded with this output.
    Succeeded {
        /// Its output.
        output: Value,
    },
    /// The execution ended without an output (dead-lettered, timed out,
    /// rejected).
    Failed {
        /// What went wrong, in words.
        error: String,
    },
    /// The execution was cancelled.
    Cancelled {
        /// Why.
        reason: String,
    },
}

/// The events of a workflow execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum WorkflowEvent {
    /// The execution started with this definition (pinned) and input.
    Started {
        /// The definition it runs, whole: a later version never changes it.
        definition: Box<Definition>,
        /// The input (`.inputs` of every expression).
        input: Value,
        /// When it is an error handler: the execution whose failure it
        /// handles (a handler does not start a handler of its own).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handles: Option<ExecutionId>,
        /// When it is a sub-workflow: the execution whose node runs it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<ExecutionId>,
        /// The trace context it was started under (a caller's
        /// `traceparent`, or its parent workflow's): its span hangs there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<TraceParent>,
    },
    /// A node's dependencies ended and its `when` held: it runs.
    NodeStarted {
        /// The node.
        node: String,
        /// With `for_each`: the elements, one run each.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        items: Option<Vec<Value>>,
    },
    /// One run of a node was handed to a task execution.
    RunStarted {
        /// The node.
        node: String,
        /// The run's place among the node's runs (the `for_each` index).
        index: u32,
        /// The task execution that runs it.
        execution: ExecutionId,
        /// Its input, rendered.
        input: Value,
    },
    /// One run's task execution ended.
    RunEnded {
        /// The node.
        node: String,
        /// The run.
        index: u32,
        /// How it ended.
        outcome: RunOutcome,
    },
    /// A node ended well.
    NodeSucceeded {
        /// The node.
        node: String,
        /// Its output (`.nodes.<node>.output`).
        output: Value,
    },
    /// A node failed.
    NodeFailed {
        /// The node.
        node: String,
        /// What went wrong.
        error: String,
    },
    /// A node did not run.
    NodeSkipped {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// Someone asked the execution to stop; its running runs are cancelled.
    CancelRequested {
        /// Why.
        reason: String,
    },
    /// Every node ended well or was skipped.
    Succeeded {
        /// The workflow's output.
        output: Value,
    },
    /// A required node failed (or the output could not be rendered).
    Failed {
        /// The node that failed, if one did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        /// What went wrong.
        error: String,
        /// The error-handler execution that starts with the failure as its
        /// input, when the definition names one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handler: Option<ExecutionId>,
    },
    /// The execution stopped on request, its runs ended.
    Cancelled {
        /// Why.
        reason: String,
    },
    /// The workflow's deadline passed.
    TimedOut {},
    /// A failed, cancelled or timed-out execution resumes: these nodes run
    /// again (the failed ones and what depends on them); the others keep
    /// their outputs.
    Retried {
        /// The nodes reset to waiting.
        nodes: Vec<String>,
    },
}

impl WorkflowEvent {
    /// The event's type name (`run_started`).
    pub fn type_name(&self) -> &'static str {
        match self {
            WorkflowEvent::Started { .. } => "started",
            WorkflowEvent::NodeStarted { .. } => "node_started",
            WorkflowEvent::RunStarted { .. } => "run_started",
            WorkflowEvent::RunEnded { .. } => "run_ended",
            WorkflowEvent::NodeSucceeded { .. } => "node_succeeded",
            WorkflowEvent::NodeFailed { .. } => "node_failed",
            WorkflowEvent::NodeSkipped { .. } => "node_skipped",
            WorkflowEvent::CancelRequested { .. } => "cancel_requested",
            WorkflowEvent::Succeeded { .. } => "succeeded",
            WorkflowEvent::Failed { .. } => "failed",
            WorkflowEvent::Cancelled { .. } => "cancelled",
            WorkflowEvent::TimedOut {} => "timed_out",
            WorkflowEvent::Retried { .. } => "retried",
        }
    }

    /// The node it concerns, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            WorkflowEvent::NodeStarted { node, .. }
            | WorkflowEvent::RunStarted { node, .. }
            | WorkflowEvent::RunEnded { node, .. }
            | WorkflowEvent::NodeSucceeded { node, .. }
            | WorkflowEvent::NodeFailed { node, .. }
            | WorkflowEvent::NodeSkipped { node, .. } => Some(node),
            _ => None,
        }
    }
}

/// One event of one workflow execution, with its metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowEnvelope {
    /// Unique event id (UUIDv7).
    pub id: uuid::Uuid,
    /// The workflow execution.
    pub workflow_execution: ExecutionId,
    /// When it was recorded.
    pub time: DateTime<Utc>,
    /// The component that recorded it.
    pub source: String,
    /// The event.
    #[serde(flatten)]
    pub event: WorkflowEvent,
}

impl WorkflowEnvelope {
    /// Wraps `event` with a fresh id.
    pub fn new(
        workflow_execution: ExecutionId,
        time: DateTime<Utc>,
        source: impl Into<String>,
        event: WorkflowEvent,
    ) -> Self {
        WorkflowEnvelope {
            id: uuid::Uuid::now_v7(),
            workflow_execution,
            time,
            source: source.into(),
            event,
        }
    }
}

/// One run of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Run {
    /// The task execution that runs it.
    pub execution: ExecutionId,
    /// Where it is (`running`, `succeeded`, `failed`, `cancelled`).
    pub status: NodeStatus,
    /// Its input.
    pub input: Value,
    /// Its output, once it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// What went wrong, once it failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was handed to its execution.
    pub started_at: DateTime<Utc>,
    /// When its execution ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

/// One node of an execution.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeState {
    /// Where it is.
    pub status: NodeStatus,
    /// With `for_each`: the elements it runs over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<Value>>,
    /// Its runs (one, or one per element), of the current round.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<Run>,
    /// Its output, once it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// What went wrong, or why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

impl NodeState {
    fn running_runs(&self) -> usize {
        self.runs
            .iter()
            .filter(|r| r.status == NodeStatus::Running)
            .count()
    }
}

/// The state of one workflow execution, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowState {
    /// The execution, once started.
    pub id: Option<ExecutionId>,
    /// Where it is.
    pub status: WorkflowStatus,
    /// The definition it runs.
    pub definition: Option<Box<Definition>>,
    /// Its input.
    pub input: Value,
    /// Every node, by name.
    pub nodes: BTreeMap<String, NodeState>,
    /// Its output, once it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The node that failed it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_node: Option<String>,
    /// Why it failed, was cancelled or timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A cancel was asked for and waits for the running runs to end.
    pub cancel_requested: bool,
    /// Resumptions so far (`retry`).
    pub round: u32,
    /// Runs handed to task executions so far, over every round: the
    /// number of the next run's execution id.
    pub runs_started: u32,
    /// The error handler started by its failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<ExecutionId>,
    /// When it is an error handler: the execution it handles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handles: Option<ExecutionId>,
    /// When it is a sub-workflow: the execution whose node runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ExecutionId>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The trace context it was started under, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<TraceParent>,
}

impl WorkflowState {
    /// The runs whose task executions are running, as (node, index,
    /// execution).
    pub fn running_runs(&self) -> impl Iterator<Item = (&str, u32, &ExecutionId)> {
        self.nodes.iter().flat_map(|(name, node)| {
            node.runs
                .iter()
                .enumerate()
                .filter(|(_, r)| r.status == NodeStatus::Running)
                .map(move |(i, r)| (name.as_str(), i as u32, &r.execution))
        })
    }

    /// The context expressions see: `.inputs`, `.nodes.<name>.output` and
    /// `.status`, `.workflow.id`.
    pub fn context(&self) -> Value {
        let nodes: Map<String, Value> = self
            .nodes
            .iter()
            .map(|(name, node)| {
                let mut view = Map::new();
                view.insert("status".into(), node.status.as_str().into());
                view.insert("output".into(), node.output.clone().unwrap_or(Value::Null));
                (name.clone(), Value::Object(view))
            })
            .collect();
        let mut workflow = Map::new();
        if let Some(id) = &self.id {
            workflow.insert("id".into(), id.as_str().into());
        }
        let mut context = Map::new();
        context.insert("inputs".into(), self.input.clone());
        context.insert("nodes".into(), Value::Object(nodes));
        context.insert("workflow".into(), Value::Object(workflow));
        Value::Object(context)
    }
}

/// Why [`check`] refuses an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event} cannot follow here: {reason}")]
pub struct InvalidWorkflowEvent {
    /// The event's type.
    pub event: &'static str,
    /// Why not.
    pub reason: String,
}

/// Says whether [`evolve`] would apply `env` to `state`, and if not, why.
pub fn check(state: &WorkflowState, env: &WorkflowEnvelope) -> Result<(), InvalidWorkflowEvent> {
    use WorkflowEvent as E;
    use WorkflowStatus as S;
    let refuse = |reason: String| {
        Err(InvalidWorkflowEvent {
            event: env.event.type_name(),
            reason,
        })
    };
    if let Some(id) = &state.id
        && *id != env.workflow_execution
    {
        return refuse(format!(
            "it belongs to {}, not {id}",
            env.workflow_execution
        ));
    }
    let running = state.status == S::Running;
    let node = |name: &str| state.nodes.get(name);
    let ok = match &env.event {
        E::Started { definition, .. } => {
            if state.status != S::New {
                return refuse("the execution has started".into());
            }
            if definition.order().is_none() {
                return refuse("the definition's dependencies form a cycle".into());
            }
            true
        }
        E::NodeStarted { node: name, items } => {
            running
                && node(name).is_some_and(|n| n.status == NodeStatus::Waiting)
                && items.as_ref().is_none_or(|i| i.len() <= u32::MAX as usize)
        }
        E::RunStarted {
            node: name, index, ..
        } => {
            running
                && !state.cancel_requested
                && node(name).is_some_and(|n| {
                    n.status == NodeStatus::Running
                        && *index as usize == n.runs.len()
                        && (*index as usize) < n.items.as_ref().map_or(1, Vec::len)
                })
        }
        // A run may end after its workflow did (a cancel, a failure of
        // another node): the view then shows how it ended.
        E::RunEnded {
            node: name, index, ..
        } => node(name).is_some_and(|n| {
            n.runs
                .get(*index as usize)
                .is_some_and(|r| r.status == NodeStatus::Running)
        }),
        E::NodeSucceeded { node: name, .. } | E::NodeFailed { node: name, .. } => {
            running
                && node(name).is_some_and(|n| {
                    matches!(n.status, NodeStatus::Waiting | NodeStatus::Running)
                        && n.running_runs() == 0
                })
        }
        E::NodeSkipped { node: name, .. } => {
            running && node(name).is_some_and(|n| n.status == NodeStatus::Waiting)
        }
        E::CancelRequested { .. } => running && !state.cancel_requested,
        E::Succeeded { .. } => {
            running && !state.cancel_requested && state.nodes.values().all(|n| n.status.is_done())
        }
        E::Failed { .. } | E::TimedOut {} => running,
        E::Cancelled { .. } => running && state.running_runs().next().is_none(),
        E::Retried { nodes } => {
            matches!(state.status, S::Failed | S::Cancelled | S::TimedOut)
                && state.running_runs().next().is_none()
                && nodes.iter().all(|n| state.nodes.contains_key(n))
        }
    };
    if ok {
        Ok(())
    } else {
        refuse(format!("the execution is {}", state.status.as_str()))
    }
}

/// Folds one event into `state` in place; an impossible event leaves it
/// unchanged and says why.
pub fn apply(
    state: &mut WorkflowState,
    env: &WorkflowEnvelope,
) -> Result<(), InvalidWorkflowEvent> {
    check(state, env)?;
    transition(state, env);
    Ok(())
}

/// Folds one event into the state; impossible events leave it unchanged.
pub fn evolve(mut state: WorkflowState, env: &WorkflowEnvelope) -> WorkflowState {
    let _ignored = apply(&mut state, env);
    state
}

fn transition(s: &mut WorkflowState, env: &WorkflowEnvelope) {
    use WorkflowEvent as E;
    let at = env.time;
    match &env.event {
        E::Started {
            definition,
            input,
            handles,
            parent,
            traceparent,
        } => {
            s.id = Some(env.workflow_execution.clone());
            s.parent.clone_from(parent);
            s.traceparent.clone_from(traceparent);
            s.status = WorkflowStatus::Running;
            s.nodes = definition
                .nodes
                .keys()
                .map(|name| (name.clone(), NodeState::default()))
                .collect();
            s.definition = Some(definition.clone());
            s.input = input.clone();
            s.handles.clone_from(handles);
            s.started_at = Some(at);
        }
        E::NodeStarted { node, items } => {
            let n = s.nodes.get_mut(node).expect("checked");
            n.status = NodeStatus::Running;
            n.items.clone_from(items);
            n.started_at = Some(at);
        }
        E::RunStarted {
            node,
            execution,
            input,
            ..
        } => {
            s.runs_started = s.runs_started.saturating_add(1);
            s.nodes.get_mut(node).expect("checked").runs.push(Run {
                execution: execution.clone(),
                status: NodeStatus::Running,
                input: input.clone(),
                output: None,
                error: None,
                started_at: at,
                finished_at: None,
            });
        }
        E::RunEnded {
            node,
            index,
            outcome,
        } => {
            let run = &mut s.nodes.get_mut(node).expect("checked").runs[*index as usize];
            run.finished_at = Some(at);
            match outcome {
                RunOutcome::Succeeded { output } => {
                    run.status = NodeStatus::Succeeded;
                    run.output = Some(output.clone());
                }
                RunOutcome::Failed { error } => {
                    run.status = NodeStatus::Failed;
                    run.error = Some(error.clone());
                }
                RunOutcome::Cancelled { reason } => {
                    run.status = NodeStatus::Cancelled;
                    run.error = Some(reason.clone());
                }
            }
        }
        E::NodeSucceeded { node, output } => {
            let n = s.nodes.get_mut(node).expect("checked");
            n.status = NodeStatus::Succeeded;
            n.output = Some(output.clone());
            n.started_at.get_or_insert(at);
            n.finished_at = Some(at);
        }
        E::NodeFailed { node, error } => {
            let n = s.nodes.get_mut(node).expect("checked");
            n.status = NodeStatus::Failed;
            n.reason = Some(error.clone());
            n.started_at.get_or_insert(at);
            n.finished_at = Some(at);
        }
        E::NodeSkipped { node, reason } => {
            let n = s.nodes.get_mut(node).expect("checked");
            n.status = NodeStatus::Skipped;
            n.reason = Some(reason.clone());
            n.finished_at = Some(at);
        }
        E::CancelRequested { reason } => {
            s.cancel_requested = true;
            s.reason = Some(reason.clone());
        }
        E::Succeeded { output } => {
            s.status = WorkflowStatus::Succeeded;
            s.output = Some(output.clone());
            s.finished_at = Some(at);
        }
        E::Failed {
            node,
            error,
            handler,
        } => {
            s.status = WorkflowStatus::Failed;
            s.failed_node.clone_from(node);
            s.reason = Some(error.clone());
            s.handler.clone_from(handler);
            s.finished_at = Some(at);
        }
        E::Cancelled { reason } => {
            s.status = WorkflowStatus::Cancelled;
            s.reason = Some(reason.clone());
            s.finished_at = Some(at);
            for node in s.nodes.values_mut() {
                if !node.status.is_done() {
                    node.status = NodeStatus::Cancelled;
                    node.finished_at = Some(at);
                }
            }
        }
        E::TimedOut {} => {
            s.status = WorkflowStatus::TimedOut;
            s.reason = Some("the workflow ran past its deadline".into());
            s.finished_at = Some(at);
        }
        E::Retried { nodes } => {
            for name in nodes {
                if let Some(node) = s.nodes.get_mut(name) {
                    *node = NodeState::default();
                }
            }
            s.status = WorkflowStatus::Running;
            s.round = s.round.saturating_add(1);
            s.cancel_requested = false;
            s.output = None;
            s.failed_node = None;
            s.reason = None;
            s.handler = None;
            s.finished_at = None;
        }
    }
}

/// What can be asked of a workflow execution.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkflowCommand {
    /// Start `definition` with `input` as execution `id`.
    Start {
        /// The execution's id (at most [`MAX_ID_LEN`] bytes).
        id: ExecutionId,
        /// The definition, checked.
        definition: Box<Definition>,
        /// The input.
        input: Value,
        /// When it is an error handler: the execution it handles.
        handles: Option<ExecutionId>,
        /// When it is a sub-workflow: the execution whose node runs it.
        parent: Option<ExecutionId>,
        /// The trace context it is started under, if any.
        traceparent: Option<TraceParent>,
    },
    /// Record what is ready now: nodes to start or skip, runs to hand out,
    /// the workflow's end.
    Advance,
    /// Record how a run's task execution ended, then advance.
    EndRun {
        /// The node.
        node: String,
        /// The run.
        index: u32,
        /// How it ended.
        outcome: RunOutcome,
    },
    /// Stop the execution.
    Cancel {
        /// Why.
        reason: String,
    },
    /// A signal for a waiting node: it ends with `payload` as its output.
    Signal {
        /// The `wait` node.
        node: String,
        /// Its output.
        payload: Value,
    },
    /// The workflow's deadline passed.
    TimeOut,
    /// Resume a failed, cancelled or timed-out execution from its failed
    /// nodes.
    Retry,
}

/// Why [`decide`] refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowRejection {
    /// The execution has started already.
    #[error("the workflow execution exists")]
    Exists,
    /// The execution has not started.
    #[error("no such workflow execution")]
    NotFound,
    /// The command needs a running execution.
    #[error("the workflow execution is {0}, not running")]
    NotRunning(&'static str),
    /// A retry needs a failed, cancelled or timed-out execution.
    #[error(
        "the workflow execution is {0}; only a failed, cancelled or timed-out one can be retried"
    )]
    NotRetryable(&'static str),
    /// A cancel was asked for already.
    #[error("a cancel was requested already")]
    CancelRequested,
    /// A signal names a node that is not a running `wait`.
    #[error("node {0:?} is not a wait node that runs")]
    NotWaiting(String),
    /// Runs of the ended execution are still being stopped.
    #[error("runs of the workflow execution are still being stopped; retry once they ended")]
    RunsEnding,
}

impl WorkflowRejection {
    /// A stable code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            WorkflowRejection::Exists => "exists",
            WorkflowRejection::NotFound => "not_found",
            WorkflowRejection::NotRunning(_) => "not_running",
            WorkflowRejection::NotRetryable(_) => "not_retryable",
            WorkflowRejection::CancelRequested => "cancel_requested",
            WorkflowRejection::RunsEnding => "runs_ending",
            WorkflowRejection::NotWaiting(_) => "not_waiting",
        }
    }
}

/// The events that follow `command` in `state`, in order. Each passes
/// [`check`] when applied in order.
pub fn decide(
    command: &WorkflowCommand,
    state: &WorkflowState,
    now: DateTime<Utc>,
) -> Result<Vec<WorkflowEvent>, WorkflowRejection> {
    let mut working = state.clone();
    decide_into(command, &mut working, now)
}

/// [`decide`] on a working copy: `state` is left as the decided events
/// make it (on a refusal, as it was). A caller that folds the events it
/// decides anyway saves the copy.
pub fn decide_into(
    command: &WorkflowCommand,
    state: &mut WorkflowState,
    now: DateTime<Utc>,
) -> Result<Vec<WorkflowEvent>, WorkflowRejection> {
    // The definition never changes within an execution: out of the state
    // while deciding, so that it can be read while the state changes.
    let definition = state.definition.take();
    let decided = decide_with(command, state, definition.as_deref(), now);
    if state.definition.is_none() {
        state.definition = definition;
    }
    decided
}

fn decide_with(
    command: &WorkflowCommand,
    state: &mut WorkflowState,
    definition: Option<&Definition>,
    now: DateTime<Utc>,
) -> Result<Vec<WorkflowEvent>, WorkflowRejection> {
    use WorkflowCommand as C;
    let id = match (command, &state.id) {
        (C::Start { id, .. }, _) | (_, Some(id)) => id.clone(),
        (C::Cancel { .. } | C::Retry | C::Signal { .. }, None) => {
            return Err(WorkflowRejection::NotFound);
        }
        (_, None) => return Ok(Vec::new()),
    };
    // Refusals first, before anything is pushed.
    match command {
        C::Start { .. } if state.status != WorkflowStatus::New => {
            return Err(WorkflowRejection::Exists);
        }
        C::Cancel { .. } => match state.status {
            WorkflowStatus::New => return Err(WorkflowRejection::NotFound),
            WorkflowStatus::Running if state.cancel_requested => {
                return Err(WorkflowRejection::CancelRequested);
            }
            WorkflowStatus::Running => {}
            other => return Err(WorkflowRejection::NotRunning(other.as_str())),
        },
        C::Signal { node, .. } => {
            let def = definition.ok_or(WorkflowRejection::NotFound)?;
            let waits = state.status == WorkflowStatus::Running
                && !state.cancel_requested
                && def.nodes.get(node).is_some_and(|n| n.kind == "wait")
                && state
                    .nodes
                    .get(node)
                    .is_some_and(|n| n.status == NodeStatus::Running);
            if !waits {
                return Err(WorkflowRejection::NotWaiting(node.clone()));
            }
        }
        C::Retry => {
            match state.status {
                WorkflowStatus::New => return Err(WorkflowRejection::NotFound),
                WorkflowStatus::Failed | WorkflowStatus::Cancelled | WorkflowStatus::TimedOut => {}
                other => return Err(WorkflowRejection::NotRetryable(other.as_str())),
            }
            if state.running_runs().next().is_some() {
                return Err(WorkflowRejection::RunsEnding);
            }
            if definition.is_none() {
                return Err(WorkflowRejection::NotFound);
            }
        }
        _ => {}
    }
    let rerun = match (command, definition) {
        (C::Retry, Some(def)) => to_rerun(def, state),
        _ => Vec::new(),
    };
    let mut d = Decision {
        id,
        state,
        events: Vec::new(),
        now,
    };
    match command {
        C::Start {
            definition,
            input,
            handles,
            parent,
            traceparent,
            ..
        } => {
            d.push(WorkflowEvent::Started {
                definition: definition.clone(),
                input: input.clone(),
                handles: handles.clone(),
                parent: parent.clone(),
                traceparent: traceparent.clone(),
            });
            d.advance(definition);
        }
        C::Advance => {
            if let Some(def) = definition {
                d.advance(def);
            }
        }
        C::EndRun {
            node,
            index,
            outcome,
        } => {
            let running = d
                .state
                .nodes
                .get(node)
                .and_then(|n| n.runs.get(*index as usize))
                .is_some_and(|r| r.status == NodeStatus::Running);
            if running {
                d.push(WorkflowEvent::RunEnded {
                    node: node.clone(),
                    index: *index,
                    outcome: outcome.clone(),
                });
                if let Some(def) = definition {
                    d.advance(def);
                }
            }
        }
        C::Cancel { reason } => {
            d.push(WorkflowEvent::CancelRequested {
                reason: reason.clone(),
            });
            if let Some(def) = definition {
                d.advance(def);
            }
        }
        C::Signal { node, payload } => {
            d.push(WorkflowEvent::NodeSucceeded {
                node: node.clone(),
                output: payload.clone(),
            });
            if let Some(def) = definition {
                d.advance(def);
            }
        }
        C::TimeOut => {
            if d.state.status == WorkflowStatus::Running {
                d.push(WorkflowEvent::TimedOut {});
            }
        }
        C::Retry => {
            d.push(WorkflowEvent::Retried { nodes: rerun });
            if let Some(def) = definition {
                d.advance(def);
            }
        }
    }
    Ok(d.events)
}

/// The nodes a retry resets: every node that did not end well (failed,
/// cancelled, never reached), and every skipped node downstream of one.
/// Nodes that succeeded keep their outputs.
fn to_rerun(def: &Definition, state: &WorkflowState) -> Vec<String> {
    let mut reset: BTreeSet<&str> = BTreeSet::new();
    for name in def.order().unwrap_or_default() {
        let Some(node) = state.nodes.get(name) else {
            continue;
        };
        let again = match node.status {
            NodeStatus::Succeeded => false,
            NodeStatus::Skipped => def.nodes[name]
                .depends_on
                .iter()
                .any(|d| reset.contains(d.as_str())),
            _ => true,
        };
        if again {
            reset.insert(name);
        }
    }
    reset.into_iter().map(str::to_owned).collect()
}

/// A decision in the making: the events so far, and the state they lead to.
struct Decision<'a> {
    id: ExecutionId,
    state: &'a mut WorkflowState,
    events: Vec<WorkflowEvent>,
    now: DateTime<Utc>,
}

impl Decision<'_> {
    fn push(&mut self, event: WorkflowEvent) {
        let env = WorkflowEnvelope {
            id: uuid::Uuid::nil(),
            workflow_execution: self.id.clone(),
            time: self.now,
            source: String::new(),
            event,
        };
        debug_assert!(
            check(self.state, &env).is_ok(),
            "{:?}",
            check(self.state, &env)
        );
        transition(self.state, &env);
        self.events.push(env.event);
    }

    /// Starts, skips, hands out and ends what it can, until nothing moves.
    fn advance(&mut self, def: &Definition) {
        if self.state.status != WorkflowStatus::Running {
            return;
        }
        if self.state.cancel_requested {
            if self.state.running_runs().next().is_none() {
                let reason = self.state.reason.clone().unwrap_or_default();
                self.push(WorkflowEvent::Cancelled { reason });
            }
            return;
        }
        let Some(order) = def.order() else {
            return;
        };
        loop {
            let mut moved = false;
            for name in &order {
                let node = &def.nodes[*name];
                match self.state.nodes[*name].status {
                    NodeStatus::Waiting => moved |= self.try_start(name, node),
                    NodeStatus::Running if node.kind == "wait" => {
                        moved |= self.wait_ends(name, node)
                    }
                    NodeStatus::Running => moved |= self.hand_out(name, node),
                    _ => {}
                }
                if let Some((failed, error)) = self.failure(name, node) {
                    self.fail(def, Some(failed), error);
                    return;
                }
            }
            if !moved {
                break;
            }
        }
        if self.state.nodes.values().all(|n| n.status.is_done()) {
            let context = self.state.context();
            let output = match &def.output {
                Some(template) => expr::render(template, &context),
                None => Ok(leaf_outputs(def, self.state)),
            };
            match output {
                Ok(output) => self.push(WorkflowEvent::Succeeded { output }),
                Err(e) => self.fail(def, None, format!("the output cannot be rendered: {e}")),
            }
        }
    }

    /// A node that just failed and fails the workflow (its `on_failure`
    /// is not `continue`).
    fn failure(&self, name: &str, node: &Node) -> Option<(String, String)> {
        let state = &self.state.nodes[name];
        let just_failed = state.status == NodeStatus::Failed
            && matches!(self.events.last(), Some(WorkflowEvent::NodeFailed { node, .. }) if node == name);
        let continues = matches!(node.on_failure, Some(OnFailure::Continue));
        (just_failed && !continues)
            .then(|| (name.to_owned(), state.reason.clone().unwrap_or_default()))
    }

    fn fail(&mut self, def: &Definition, node: Option<String>, error: String) {
        let handler = match &self.state.handles {
            // A handler's failure starts no handler of its own.
            Some(_) => None,
            None => {
                let id = &self.id;
                let handled = node
                    .as_ref()
                    .and_then(|n| def.nodes[n].on_failure.as_ref())
                    .unwrap_or(&def.on_failure);
                match handled {
                    OnFailure::Handler { .. } => {
                        ExecutionId::new(format!("{id}-handler-{}", self.state.round)).ok()
                    }
                    _ => None,
                }
            }
        };
        self.push(WorkflowEvent::Failed {
            node,
            error,
            handler,
        });
    }

    /// A waiting node whose dependencies have ended: skipped, failed,
    /// computed (engine kinds) or started. False if it must wait on.
    fn try_start(&mut self, name: &str, node: &Node) -> bool {
        let deps: Vec<(&str, NodeStatus)> = node
            .depends_on
            .iter()
            .map(|d| (d.as_str(), self.state.nodes[d.as_str()].status))
            .collect();
        if deps.iter().any(|(_, s)| !s.is_done()) {
            return false;
        }
        let context = self.state.context();
        let blocked = deps.iter().find(|(_, s)| *s != NodeStatus::Succeeded);
        match (&node.when, blocked) {
            (Some(when), _) => match expr::Expr::eval_cached(when, &context) {
                Ok(v) if truthy(&v) => {}
                Ok(_) => {
                    self.skip(name, format!("its when ({when}) is false"));
                    return true;
                }
                Err(e) => {
                    self.push(WorkflowEvent::NodeFailed {
                        node: name.to_owned(),
                        error: format!("its when cannot be evaluated: {e}"),
                    });
                    return true;
                }
            },
            (None, Some((dep, status))) => {
                self.skip(
                    name,
                    format!("it needs {dep}, which is {}", status.as_str()),
                );
                return true;
            }
            (None, None) => {}
        }
        let items = match &node.for_each {
            None => None,
            Some(code) => match expr::Expr::eval_cached(code, &context) {
                Ok(Value::Array(items)) => Some(items),
                Ok(other) => {
                    self.push(WorkflowEvent::NodeFailed {
                        node: name.to_owned(),
                        error: format!(
                            "its for_each yields {}, not an array",
                            crate::submission::kind_of_value(&other)
                        ),
                    });
                    return true;
                }
                Err(e) => {
                    self.push(WorkflowEvent::NodeFailed {
                        node: name.to_owned(),
                        error: format!("its for_each cannot be evaluated: {e}"),
                    });
                    return true;
                }
            },
        };
        self.push(WorkflowEvent::NodeStarted {
            node: name.to_owned(),
            items: items.clone(),
        });
        if node.kind == "wait" {
            self.wait_ends(name, node);
        } else if node.kind != "workflow" && super::is_engine_kind(&node.kind) {
            let outcome = match &items {
                None => compute(node, &context),
                Some(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| compute(node, &with_item(&context, item, i)))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array),
            };
            self.push(match outcome {
                Ok(output) => WorkflowEvent::NodeSucceeded {
                    node: name.to_owned(),
                    output,
                },
                Err(error) => WorkflowEvent::NodeFailed {
                    node: name.to_owned(),
                    error,
                },
            });
        } else {
            self.hand_out(name, node);
        }
        true
    }

    /// A running node of a worker kind: hands out runs up to its
    /// concurrency, and ends it once every run has ended.
    fn hand_out(&mut self, name: &str, node: &Node) -> bool {
        let state = &self.state.nodes[name];
        let total = state.items.as_ref().map_or(1, Vec::len);
        let cap = node.concurrency.map_or(usize::MAX, |c| c as usize);
        let mut started = state.runs.len();
        let mut running = state.running_runs();
        let mut moved = false;
        if started < total && running < cap {
            let context = self.state.context();
            while started < total && running < cap {
                let input = match &self.state.nodes[name].items {
                    None => expr::render(&node.input, &context),
                    Some(items) => {
                        let item = items[started].clone();
                        expr::render(&node.input, &with_item(&context, &item, started))
                    }
                };
                let input = match input {
                    Ok(input) => input,
                    Err(e) => {
                        if running == 0 {
                            self.push(WorkflowEvent::NodeFailed {
                                node: name.to_owned(),
                                error: format!("its input cannot be rendered: {e}"),
                            });
                            return true;
                        }
                        break;
                    }
                };
                let execution = run_id(&self.id, &node.kind, self.state.runs_started + 1);
                self.push(WorkflowEvent::RunStarted {
                    node: name.to_owned(),
                    index: started as u32,
                    execution,
                    input,
                });
                started += 1;
                running += 1;
                moved = true;
            }
        }
        let state = &self.state.nodes[name];
        if state.runs.len() == total && state.running_runs() == 0 {
            let failed = state
                .runs
                .iter()
                .enumerate()
                .find(|(_, r)| r.status != NodeStatus::Succeeded);
            let event = match failed {
                None => {
                    let outputs = state
                        .runs
                        .iter()
                        .map(|r| r.output.clone().unwrap_or_default());
                    WorkflowEvent::NodeSucceeded {
                        node: name.to_owned(),
                        output: match state.items {
                            Some(_) => Value::Array(outputs.collect()),
                            None => outputs.into_iter().next().unwrap_or_default(),
                        },
                    }
                }
                Some((i, run)) => {
                    let error = run.error.clone().unwrap_or_default();
                    WorkflowEvent::NodeFailed {
                        node: name.to_owned(),
                        error: match state.items {
                            Some(_) => format!("run {i} {}: {error}", run.status.as_str()),
                            None => error,
                        },
                    }
                }
            };
            self.push(event);
            moved = true;
        }
        moved
    }

    /// A running `wait` node whose duration has passed ends.
    fn wait_ends(&mut self, name: &str, node: &Node) -> bool {
        let started = self.state.nodes[name].started_at.unwrap_or(self.now);
        let Ok(Some(duration)) = super::wait_duration(node) else {
            return false; // it waits for a signal
        };
        let due = started + chrono::TimeDelta::from_std(duration).unwrap_or(chrono::TimeDelta::MAX);
        if self.now < due {
            return false;
        }
        self.push(WorkflowEvent::NodeSucceeded {
            node: name.to_owned(),
            output: serde_json::json!({ "waited": humantime::format_duration(duration).to_string() }),
        });
        true
    }

    fn skip(&mut self, name: &str, reason: String) {
        self.push(WorkflowEvent::NodeSkipped {
            node: name.to_owned(),
            reason,
        });
    }
}

/// The id of run number `n` of workflow execution `id`: `<id>-<n>` for a
/// task; for a sub-workflow a UUID derived from both (v5), so that the
/// child's own runs and children still fit a subject token.
fn run_id(id: &ExecutionId, kind: &str, n: u32) -> ExecutionId {
    let text = if kind == "workflow" {
        uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            format!("runlog:{id}/{n}").as_bytes(),
        )
        .to_string()
    } else {
        format!("{id}-{n}")
    };
    ExecutionId::new(text).expect("a workflow id leaves room for its runs' numbers")
}

/// What an engine kind returns: a `transform` its rendered input, a
/// `condition` `{"result": <its input is true>}`.
fn compute(node: &Node, context: &Value) -> Result<Value, String> {
    let value = expr::render(&node.input, context)
        .map_err(|e| format!("its input cannot be rendered: {e}"))?;
    Ok(match node.kind.as_str() {
        "condition" => serde_json::json!({ "result": truthy(&value) }),
        _ => value,
    })
}

fn with_item(context: &Value, item: &Value, index: usize) -> Value {
    let mut context = context.clone();
    if let Value::Object(map) = &mut context {
        map.insert("item".into(), item.clone());
        map.insert("index".into(), index.into());
    }
    context
}

/// jq's truth: everything but `false` and `null`.
pub fn truthy(value: &Value) -> bool {
    !matches!(value, Value::Null | Value::Bool(false))
}

/// Without an `output` template, the output of a workflow is that of its
/// last nodes (those no node depends on), by name.
fn leaf_outputs(def: &Definition, state: &WorkflowState) -> Value {
    let needed: BTreeSet<&str> = def
        .nodes
        .values()
        .flat_map(|n| n.depends_on.iter().map(String::as_str))
        .collect();
    Value::Object(
        def.nodes
            .keys()
            .filter(|name| !needed.contains(name.as_str()))
            .filter_map(|name| {
                let output = state.nodes.get(name)?.output.clone()?;
                Some((name.clone(), output))
            })
            .collect(),
    )
}

/// How a node run ended, read from its task execution's state; `None`
/// while the execution is live.
pub fn outcome_of(task: &crate::decider::ExecutionState) -> Option<RunOutcome> {
    use crate::decider::Status;
    let reason = || {
        task.reason
            .clone()
            .unwrap_or_else(|| task.status.to_string())
    };
    Some(match task.status {
        Status::Succeeded => RunOutcome::Succeeded {
            output: task.output.as_deref().cloned().unwrap_or_default(),
        },
        Status::Cancelled => RunOutcome::Cancelled { reason: reason() },
        status if status.is_terminal() => {
            let error = match task.errors.last() {
                Some(last) => format!("{}: {}", reason(), last.error.message),
                None => reason(),
            };
            RunOutcome::Failed { error }
        }
        _ => return None,
    })
}

/// Folds a sequence of events from the empty state.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a WorkflowEnvelope>) -> WorkflowState {
    events.into_iter().fold(WorkflowState::default(), evolve)
}

#[cfg(test)]
mod tests;
