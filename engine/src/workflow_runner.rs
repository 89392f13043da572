//! The workflow runner: runs the graphs of workflow executions.
//!
//! Its state is the fold of the workflow log (`<p>.wf.>`), which it follows
//! from the start with an ordered consumer; nothing else is stored. It acts
//! on three things:
//!
//! - a node run's task execution ended: the projection tells it (only for
//!   executions linked to a workflow, `spec.workflow_execution`), with the
//!   outcome read from the folded task state;
//! - a workflow execution changed (its own appends, another replica's, an
//!   API command);
//! - a tick every second, which catches what a notification missed (a run
//!   whose end was folded before the runner knew its workflow, a `wait`
//!   node or a deadline that came due, a crash between two steps).
//!
//! Each action is load → `decide` → append with the expected sequence (see
//! `runlog_events::workflow::log`), then the effects the new state asks
//! for, each idempotent: a run's task execution is submitted under the id
//! the decision named (a second submission finds it), a run of an ended
//! workflow is cancelled, an error handler is started under its decided id.
//! So an engine killed at any point, or two replicas acting at once, run no
//! node twice.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use dashmap::DashMap;
use runlog_events::decider::Command;
use runlog_events::journal::{Journal, TransitionError};
use runlog_events::workflow::log::{
    WorkflowAppendError, WorkflowHistory, WorkflowLoadError, WorkflowLog,
};
use runlog_events::workflow::run::{
    self, RunOutcome, WorkflowCommand, WorkflowEnvelope, WorkflowRejection, WorkflowState,
    WorkflowStatus,
};
use runlog_events::workflow::{Definition, OnFailure};
use runlog_events::{ExecutionId, QueueName, Subjects, TaskSpec, TraceParent};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::follow::{self, Delivery, Follower};
use crate::intake::{Intake, IntakeError, Submission};
use crate::projection::{Projection, RunEnd};
use crate::workflows::{Workflows, WorkflowsError};

/// How often running executions are looked at without a notification.
pub const TICK: Duration = Duration::from_secs(1);
/// Re-folds after losing a race before a command gives up.
const MAX_CONFLICTS: usize = 16;

/// Why a workflow command failed.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The rules refuse it.
    #[error(transparent)]
    Rejected(#[from] WorkflowRejection),
    /// No such workflow, or no such version.
    #[error("no workflow {name:?}{}", .version.map(|v| format!(" version {v}")).unwrap_or_default())]
    UnknownWorkflow {
        /// The name.
        name: String,
        /// The version asked for.
        version: Option<u32>,
    },
    /// The input does not match the workflow's `inputs` schema.
    #[error("the input does not match the workflow's inputs schema: {}", .0.join("; "))]
    InvalidInput(Vec<String>),
    /// The definitions could not be read.
    #[error(transparent)]
    Definitions(#[from] WorkflowsError),
    /// The log could not be read.
    #[error(transparent)]
    Load(#[from] WorkflowLoadError),
    /// The log could not be written.
    #[error(transparent)]
    Append(#[from] WorkflowAppendError),
}

/// Runs workflow executions; cheap to clone.
#[derive(Debug, Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    log: WorkflowLog,
    subjects: Subjects,
    intake: Intake,
    journal: Journal,
    definitions: Workflows,
    executions: Arc<Projection>,
    /// Every workflow execution, folded.
    states: DashMap<ExecutionId, WorkflowHistory>,
    /// Executions being stepped; `true`: step again when done.
    active: DashMap<ExecutionId, bool>,
    /// Run ends not yet recorded, by workflow.
    ends: DashMap<ExecutionId, Vec<(ExecutionId, RunOutcome)>>,
    /// Task executions of runs known to exist.
    submitted: DashMap<ExecutionId, ()>,
    /// Task executions of runs asked to stop.
    stopping: DashMap<ExecutionId, ()>,
    /// Error handlers started.
    handlers: DashMap<ExecutionId, ()>,
    /// Workflow executions that changed (live feeds).
    changes: broadcast::Sender<ExecutionId>,
    /// One lock per execution: this engine's commands and steps on one
    /// execution take turns (other replicas are kept out by the expected
    /// sequence).
    locks: DashMap<ExecutionId, Arc<tokio::sync::Mutex<()>>>,
}

impl Runner {
    /// A runner appending through `log`, submitting runs through `intake`.
    pub fn new(
        log: WorkflowLog,
        intake: Intake,
        definitions: Workflows,
        executions: Arc<Projection>,
    ) -> Runner {
        let journal = intake.journal().clone();
        Runner {
            inner: Arc::new(Inner {
                subjects: journal.subjects().clone(),
                log,
                intake,
                journal,
                definitions,
                executions,
                states: DashMap::new(),
                active: DashMap::new(),
                ends: DashMap::new(),
                submitted: DashMap::new(),
                stopping: DashMap::new(),
                handlers: DashMap::new(),
                changes: broadcast::channel(1024).0,
                locks: DashMap::new(),
            }),
        }
    }

    /// The executions that change, one id per change (a slow reader lags).
    pub fn changes(&self) -> broadcast::Receiver<ExecutionId> {
        self.inner.changes.subscribe()
    }

    /// One workflow execution as folded, with the sequence of its newest
    /// event; read from the log when this engine has not folded it yet.
    pub async fn get(&self, id: &ExecutionId) -> Result<Option<WorkflowHistory>, RunnerError> {
        if let Some(history) = self.inner.states.get(id) {
            return Ok(Some(history.clone()));
        }
        let history = self.inner.log.load(id).await?;
        Ok((history.last_seq > 0).then_some(history))
    }

    /// Every workflow execution this engine has folded, newest first,
    /// optionally of one workflow only, as summaries.
    pub fn list(&self, workflow: Option<&str>, limit: usize) -> Vec<Value> {
        let mut all: Vec<(Option<chrono::DateTime<Utc>>, ExecutionId, Value)> = self
            .inner
            .states
            .iter()
            .filter(|h| {
                workflow.is_none_or(|w| h.state.definition.as_ref().is_some_and(|d| d.name == w))
            })
            .map(|h| {
                (
                    h.state.started_at,
                    h.key().clone(),
                    summary(h.key(), &h.state),
                )
            })
            .collect();
        all.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        all.into_iter().take(limit).map(|(_, _, s)| s).collect()
    }

    /// Starts `name` (its newest version, or `version`) with `input`,
    /// under the caller's trace context when it sent one.
    pub async fn start(
        &self,
        name: &str,
        version: Option<u32>,
        input: Value,
        traceparent: Option<TraceParent>,
    ) -> Result<(ExecutionId, WorkflowHistory), RunnerError> {
        let id = ExecutionId::generate();
        let history = self
            .start_under(id.clone(), name, version, input, traceparent)
            .await?;
        Ok((id, history))
    }

    /// Starts `name` as execution `id`; an execution of that id started
    /// before is returned as it is (a schedule's run submitted again).
    pub async fn start_as(
        &self,
        id: ExecutionId,
        name: &str,
        version: Option<u32>,
        input: Value,
    ) -> Result<WorkflowHistory, RunnerError> {
        self.start_under(id, name, version, input, None).await
    }

    async fn start_under(
        &self,
        id: ExecutionId,
        name: &str,
        version: Option<u32>,
        input: Value,
        traceparent: Option<TraceParent>,
    ) -> Result<WorkflowHistory, RunnerError> {
        if let Some(history) = self.inner.states.get(&id)
            && history.last_seq > 0
        {
            return Ok(history.clone());
        }
        let definition = self.definition(name, version).await?;
        check_input(&definition, &input)?;
        let command = WorkflowCommand::Start {
            id: id.clone(),
            definition: Box::new(definition),
            input,
            handles: None,
            parent: None,
            traceparent,
        };
        match self.command(&id, &command).await {
            Err(RunnerError::Rejected(WorkflowRejection::Exists)) => {
                self.reload(&id).await?;
                self.get(&id)
                    .await?
                    .ok_or(RunnerError::Rejected(WorkflowRejection::NotFound))
            }
            started => started,
        }
    }

    /// Whether workflow execution `id` ended (`None`: no such execution is
    /// known to this engine).
    pub fn has_ended(&self, id: &ExecutionId) -> Option<bool> {
        let history = self.inner.states.get(id)?;
        (history.last_seq > 0).then(|| history.state.status.is_terminal())
    }

    /// The status of workflow execution `id`, as JSON.
    pub fn status_of(&self, id: &ExecutionId) -> Option<Value> {
        let history = self.inner.states.get(id)?;
        (history.last_seq > 0).then(|| json!(history.state.status))
    }

    /// Cancels workflow execution `id` (an ended one is left as it is).
    pub async fn cancel(&self, id: &ExecutionId, reason: String) -> Result<(), RunnerError> {
        match self.command(id, &WorkflowCommand::Cancel { reason }).await {
            Ok(_) | Err(RunnerError::Rejected(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn definition(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Definition, RunnerError> {
        let unknown = || RunnerError::UnknownWorkflow {
            name: name.to_owned(),
            version,
        };
        let found = match version {
            Some(v) => self.inner.definitions.get(name, v).await?,
            None => self.inner.definitions.versions(name).await?.pop(),
        };
        found.ok_or_else(unknown)
    }

    /// Decides `command` on execution `id` and records it: load, decide,
    /// append, again on a lost race; then carries out what the new state
    /// asks for.
    pub async fn command(
        &self,
        id: &ExecutionId,
        command: &WorkflowCommand,
    ) -> Result<WorkflowHistory, RunnerError> {
        let lock = self.lock(id);
        let _turn = lock.lock().await;
        let starts = matches!(command, WorkflowCommand::Start { .. });
        for _ in 0..MAX_CONFLICTS {
            let (events, expected) = {
                if !starts && !self.inner.states.contains_key(id) {
                    let loaded = self.inner.log.load(id).await?;
                    if loaded.last_seq > 0 {
                        self.inner.states.entry(id.clone()).or_insert(loaded);
                    }
                }
                let empty = WorkflowHistory::default();
                let entry = self.inner.states.get(id);
                let history = entry.as_deref().unwrap_or(&empty);
                (
                    run::decide(command, &history.state, Utc::now())?,
                    history.last_seq,
                )
            };
            match self.record(id, expected, events).await {
                Ok(()) => {
                    self.effects(id).await;
                    let history = self.inner.states.get(id).map(|h| h.clone());
                    return Ok(history.unwrap_or_default());
                }
                Err(WorkflowAppendError::Conflict { .. }) => self.reload(id).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(WorkflowAppendError::Conflict {
            execution: id.clone(),
            expected: 0,
        }
        .into())
    }

    /// Appends `events` of `id` in order, the first expecting `expected`,
    /// and folds each as it is stored.
    async fn record(
        &self,
        id: &ExecutionId,
        mut expected: u64,
        events: Vec<run::WorkflowEvent>,
    ) -> Result<(), WorkflowAppendError> {
        if events.is_empty() {
            return Ok(());
        }
        // Only a traced engine looks: the workflow's span is exported once,
        // by the record that ends it.
        let was_over = self.inner.intake.traces().is_some()
            && self
                .inner
                .states
                .get(id)
                .is_some_and(|h| h.state.status.is_terminal());
        let mut ended_at = None;
        for event in events {
            let envelope =
                WorkflowEnvelope::new(id.clone(), Utc::now(), self.inner.log.source(), event);
            let seq = self.inner.log.append(expected, &envelope).await?;
            let mut entry = self.inner.states.entry(id.clone()).or_default();
            if seq > entry.last_seq {
                if let Err(e) = run::apply(&mut entry.state, &envelope) {
                    tracing::warn!(error = %e, %id, "a recorded workflow event does not apply");
                }
                entry.last_seq = seq;
            }
            expected = seq;
            ended_at = Some(envelope.time);
        }
        if let (Some(traces), Some(at), false) = (self.inner.intake.traces(), ended_at, was_over)
            && let Some(history) = self.inner.states.get(id)
            && history.state.status.is_terminal()
            && let Some(span) = workflow_span(id, &history.state, at)
        {
            traces.record(span);
        }
        let _no_listeners = self.inner.changes.send(id.clone());
        Ok(())
    }

    fn lock(&self, id: &ExecutionId) -> Arc<tokio::sync::Mutex<()>> {
        self.inner.locks.entry(id.clone()).or_default().clone()
    }

    async fn reload(&self, id: &ExecutionId) -> Result<(), RunnerError> {
        let history = self.inner.log.load(id).await?;
        self.inner.states.insert(id.clone(), history);
        Ok(())
    }

    /// Marks `id` for a step, and steps it unless a step runs already.
    fn wake(&self, id: ExecutionId) {
        use dashmap::mapref::entry::Entry;
        match self.inner.active.entry(id.clone()) {
            Entry::Occupied(mut again) => {
                *again.get_mut() = true;
            }
            Entry::Vacant(free) => {
                free.insert(false);
                let runner = self.clone();
                tokio::spawn(async move { runner.steps(id).await });
            }
        }
    }

    async fn steps(&self, id: ExecutionId) {
        use dashmap::mapref::entry::Entry;
        loop {
            self.step(&id).await;
            match self.inner.active.entry(id.clone()) {
                Entry::Occupied(mut again) if *again.get() => {
                    *again.get_mut() = false;
                }
                Entry::Occupied(done) => {
                    done.remove();
                    return;
                }
                Entry::Vacant(_) => return,
            }
        }
    }

    /// Records the run ends waiting for `id`, advances it, and carries out
    /// what follows. Failures are logged: the next tick tries again.
    async fn step(&self, id: &ExecutionId) {
        let lock = self.lock(id);
        let _turn = lock.lock().await;
        for _ in 0..MAX_CONFLICTS {
            let ends = self
                .inner
                .ends
                .remove(id)
                .map(|(_, ends)| ends)
                .unwrap_or_default();
            let decided = {
                let Some(history) = self.inner.states.get(id) else {
                    if !ends.is_empty() {
                        // Its workflow is not folded yet: keep them.
                        self.inner.ends.entry(id.clone()).or_default().extend(ends);
                    }
                    return;
                };
                decide_step(&history.state, &ends).map(|events| (events, history.last_seq))
            };
            let (events, expected) = match decided {
                Ok(decided) => decided,
                Err(e) => {
                    tracing::warn!(error = %e, workflow = %id, "a workflow step was refused");
                    return;
                }
            };
            match self.record(id, expected, events).await {
                Ok(()) => {
                    self.effects(id).await;
                    return;
                }
                Err(WorkflowAppendError::Conflict { .. }) => {
                    // Put the ends back: the fresh state decides on them.
                    if !ends.is_empty() {
                        self.inner.ends.entry(id.clone()).or_default().extend(ends);
                    }
                    if let Err(e) = self.reload(id).await {
                        tracing::warn!(error = %e, workflow = %id, "cannot reload a workflow");
                        return;
                    }
                }
                Err(e) => {
                    if !ends.is_empty() {
                        self.inner.ends.entry(id.clone()).or_default().extend(ends);
                    }
                    tracing::warn!(error = %e, workflow = %id, "cannot record a workflow step");
                    return;
                }
            }
        }
    }

    /// What the state of `id` asks for outside its log: its runs' task
    /// executions (or sub-workflows) started, or stopped once it ended; its
    /// error handler started; as a sub-workflow that ended, its parent told.
    async fn effects(&self, id: &ExecutionId) {
        let Some(todo) = self.todo(id) else {
            return;
        };
        for start in todo.starts {
            match start {
                Start::Task(execution, spec) => self.submit_run(id, execution, *spec).await,
                Start::Child {
                    execution,
                    workflow,
                    version,
                    input,
                } => {
                    self.start_child(id, execution, &workflow, version, input)
                        .await;
                }
            }
        }
        for (execution, child) in todo.stops {
            if self.inner.stopping.insert(execution.clone(), ()).is_some() {
                continue;
            }
            let stopped = if child {
                let command = WorkflowCommand::Cancel {
                    reason: todo.stop_reason.clone(),
                };
                match Box::pin(self.command(&execution, &command)).await {
                    Ok(_) | Err(RunnerError::Rejected(_)) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            } else {
                self.stop_task(id, &execution, &todo.stop_reason).await
            };
            if let Err(e) = stopped {
                self.inner.stopping.remove(&execution);
                tracing::warn!(error = %e, %execution, "cannot cancel a node run");
            }
        }
        if let Some((handler, workflow, input)) = todo.handler {
            self.start_handler(id, &handler, &workflow, input).await;
        }
        if let Some((parent, outcome)) = todo.parent_told {
            self.ended(parent, id.clone(), outcome);
        }
    }

    /// What [`effects`](Self::effects) must do for `id`, read under the
    /// entry's lock without copying the state.
    fn todo(&self, id: &ExecutionId) -> Option<Todo> {
        let history = self.inner.states.get(id)?;
        let state = &history.state;
        let definition = state.definition.as_deref()?;
        let stopping = state.status.is_terminal() || state.cancel_requested;
        let mut todo = Todo {
            stop_reason: match state.status {
                WorkflowStatus::Running => "the workflow execution was cancelled".to_owned(),
                status => format!(
                    "the workflow execution {}",
                    status.as_str().replace('_', " ")
                ),
            },
            ..Todo::default()
        };
        for (node, index, execution) in state.running_runs() {
            let child = definition.nodes[node].kind == "workflow";
            if !self.inner.submitted.contains_key(execution) {
                let input = state.nodes[node].runs[index as usize].input.clone();
                todo.starts.push(if child {
                    let (workflow, version) =
                        runlog_events::workflow::sub_workflow(&definition.nodes[node])
                            .unwrap_or_default();
                    Start::Child {
                        execution: execution.clone(),
                        workflow,
                        version,
                        input: input.get("input").cloned().unwrap_or(Value::Null),
                    }
                } else {
                    Start::Task(
                        execution.clone(),
                        Box::new(run_spec(id, definition, node, input)),
                    )
                });
            }
            if stopping && !self.inner.stopping.contains_key(execution) {
                todo.stops.push((execution.clone(), child));
            }
        }
        if let Some(handler) = &state.handler
            && !self.inner.handlers.contains_key(handler)
        {
            let on_failure = state
                .failed_node
                .as_ref()
                .and_then(|n| definition.nodes.get(n))
                .and_then(|n| n.on_failure.as_ref())
                .unwrap_or(&definition.on_failure);
            if let OnFailure::Handler { workflow } = on_failure {
                let input = json!({
                    "workflow": definition.name,
                    "version": definition.version,
                    "execution": id,
                    "node": state.failed_node,
                    "error": state.reason,
                    "input": state.input,
                });
                todo.handler = Some((handler.clone(), workflow.clone(), input));
            }
        }
        if let Some(parent) = &state.parent
            && state.status.is_terminal()
            && state.running_runs().next().is_none()
        {
            let reason = state.reason.clone().unwrap_or_default();
            let outcome = match state.status {
                WorkflowStatus::Succeeded => RunOutcome::Succeeded {
                    output: state.output.clone().unwrap_or_default(),
                },
                WorkflowStatus::Cancelled => RunOutcome::Cancelled { reason },
                status => RunOutcome::Failed {
                    error: format!("the sub-workflow {}: {reason}", status.as_str()),
                },
            };
            todo.parent_told = Some((parent.clone(), outcome));
        }
        Some(todo)
    }

    /// The trace context of workflow execution `id`: its span's, under
    /// the context it was started in (docs/traces.md).
    fn context_of(&self, id: &ExecutionId) -> TraceParent {
        let caller = self
            .inner
            .states
            .get(id)
            .and_then(|h| h.state.traceparent.clone());
        TraceParent::of_workflow_under(caller.as_ref(), id)
    }

    /// Submits a run's task under the id its decision named.
    async fn submit_run(&self, id: &ExecutionId, execution: ExecutionId, spec: TaskSpec) {
        let mut submission = Submission::new(spec);
        submission.execution = Some(execution.clone());
        submission.correlation_id = Some(id.to_string());
        // With traces exported, a node's run hangs under its workflow's span.
        if self.inner.intake.traces().is_some() {
            submission.traceparent = Some(self.context_of(id));
        }
        match self.inner.intake.submit(submission, Utc::now()).await {
            Ok(accepted) => {
                self.inner.submitted.insert(execution.clone(), ());
                // Found ended already (its end notice went by before this
                // engine knew the run): record it.
                if let Some(outcome) = run::outcome_of(&accepted.state) {
                    self.ended(id.clone(), execution, outcome);
                }
            }
            // The rules refuse the run's task (an input too large, a bad
            // secret name): the run fails, with the reason.
            Err(IntakeError::Rejected(refused)) => {
                self.inner.submitted.insert(execution.clone(), ());
                let error = format!("the node's task was refused: {refused}");
                self.ended(id.clone(), execution, RunOutcome::Failed { error });
            }
            Err(e) => {
                tracing::warn!(error = %e, workflow = %id, %execution, "cannot submit a node run");
            }
        }
    }

    /// Starts a `workflow` node's run: the named workflow as execution
    /// `execution`, whose end is reported back as the run's.
    async fn start_child(
        &self,
        id: &ExecutionId,
        execution: ExecutionId,
        workflow: &str,
        version: Option<u32>,
        input: Value,
    ) {
        let started = async {
            let definition = self.definition(workflow, version).await?;
            check_input(&definition, &input)?;
            let command = WorkflowCommand::Start {
                id: execution.clone(),
                definition: Box::new(definition),
                input,
                handles: None,
                parent: Some(id.clone()),
                traceparent: Some(self.context_of(id)),
            };
            match Box::pin(self.command(&execution, &command)).await {
                Ok(_) | Err(RunnerError::Rejected(WorkflowRejection::Exists)) => Ok(()),
                Err(e) => Err(e),
            }
        };
        match started.await {
            Ok(()) => {
                self.inner.submitted.insert(execution, ());
            }
            Err(e @ (RunnerError::UnknownWorkflow { .. } | RunnerError::InvalidInput(_))) => {
                self.inner.submitted.insert(execution.clone(), ());
                let error = format!("the sub-workflow cannot start: {e}");
                self.ended(id.clone(), execution, RunOutcome::Failed { error });
            }
            Err(e) => {
                tracing::warn!(error = %e, workflow = %id, %execution, "cannot start a sub-workflow");
            }
        }
    }

    /// Asks a run's task to stop.
    async fn stop_task(
        &self,
        id: &ExecutionId,
        execution: &ExecutionId,
        reason: &str,
    ) -> Result<(), String> {
        let command = Command::RequestCancel {
            reason: reason.to_owned(),
            operation: None,
        };
        match self
            .inner
            .journal
            .transition(execution, &command, Utc::now())
            .await
        {
            Ok(history) => {
                if let Some(outcome) = run::outcome_of(&history.state) {
                    self.ended(id.clone(), execution.clone(), outcome);
                }
                Ok(())
            }
            Err(TransitionError::Rejected(_)) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn start_handler(
        &self,
        id: &ExecutionId,
        handler: &ExecutionId,
        workflow: &str,
        input: Value,
    ) {
        let started = async {
            let handled = self.definition(workflow, None).await?;
            let command = WorkflowCommand::Start {
                id: handler.clone(),
                definition: Box::new(handled),
                input,
                handles: Some(id.clone()),
                parent: None,
                traceparent: Some(self.context_of(id)),
            };
            match Box::pin(self.command(handler, &command)).await {
                Ok(_) | Err(RunnerError::Rejected(WorkflowRejection::Exists)) => Ok(()),
                Err(e) => Err(e),
            }
        };
        match started.await {
            Ok(()) => {
                self.inner.handlers.insert(handler.clone(), ());
            }
            Err(e) => {
                tracing::warn!(error = %e, workflow = %id, %handler, "cannot start the error handler");
            }
        }
    }

    /// Notes that a run's task execution ended, and wakes its workflow.
    pub fn ended(&self, workflow: ExecutionId, execution: ExecutionId, outcome: RunOutcome) {
        self.inner
            .ends
            .entry(workflow.clone())
            .or_default()
            .push((execution, outcome));
        self.wake(workflow);
    }

    /// Runs until `shutdown`: takes run ends from `ends`, follows the
    /// workflow log, and ticks.
    pub async fn run(
        &self,
        js: jetstream::Context,
        mut ends: mpsc::UnboundedReceiver<RunEnd>,
        shutdown: CancellationToken,
    ) {
        let follower = {
            let runner = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let stream = runner.inner.subjects.exec_stream();
                follow::follow(&js, &stream, &runner, TICK, &stop).await
            })
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                end = ends.recv() => match end {
                    Some(end) => self.ended(end.workflow, end.execution, end.outcome),
                    None => break,
                },
                _ = tick.tick() => self.tick(),
            }
        }
        follower.abort();
    }

    /// Wakes every execution that has work or may have: running ones,
    /// ended ones with runs still going, ones with run ends waiting.
    fn tick(&self) {
        let mut due: Vec<ExecutionId> = self
            .inner
            .states
            .iter()
            .filter(|h| {
                h.state.status == WorkflowStatus::Running || h.state.running_runs().next().is_some()
            })
            .map(|h| h.key().clone())
            .collect();
        due.extend(self.inner.ends.iter().map(|e| e.key().clone()));
        // Runs whose task ended while no notice reached this engine.
        for history in self.inner.states.iter() {
            for (_, _, execution) in history.state.running_runs() {
                if let Some(entry) = self.inner.executions.get(execution)
                    && entry.state.status.is_terminal()
                {
                    self.recover_end(history.key().clone(), execution.clone());
                }
            }
        }
        for id in due {
            self.wake(id);
        }
    }

    /// Reads how a run's task execution ended from its history (the read
    /// model keeps no outputs) and records it.
    fn recover_end(&self, workflow: ExecutionId, execution: ExecutionId) {
        let runner = self.clone();
        tokio::spawn(async move {
            match runner.inner.journal.load(&execution).await {
                Ok(history) => {
                    if let Some(outcome) = run::outcome_of(&history.state) {
                        runner.ended(workflow, execution, outcome);
                    }
                }
                Err(e) => tracing::warn!(error = %e, %execution, "cannot read a node run"),
            }
        });
    }
}

/// The runner folds every workflow execution's log (`<p>.wf.<id>…`).
impl Follower for Runner {
    fn filter(&self) -> String {
        self.inner.subjects.all_workflow_events()
    }

    fn what(&self) -> &'static str {
        "workflow log"
    }

    fn deliver(&self, delivery: Delivery<'_>) {
        let Some(id) = self.inner.subjects.parse_workflow_events(delivery.subject) else {
            return;
        };
        let seq = delivery.seq;
        let folded = {
            let mut entry = self.inner.states.entry(id.clone()).or_default();
            let before = entry.last_seq;
            entry.fold(seq, delivery.payload);
            if let Some((at, reason)) = entry.skipped.last()
                && *at == seq
            {
                tracing::warn!(%id, seq, reason, "skipped a workflow event");
            }
            entry.last_seq > before
        };
        if folded {
            let _no_listeners = self.inner.changes.send(id.clone());
            self.wake(id);
        }
    }
}

/// What a state asks of the world, gathered under the entry's lock.
#[derive(Debug, Default)]
struct Todo {
    starts: Vec<Start>,
    /// Runs to stop, and whether each is a sub-workflow.
    stops: Vec<(ExecutionId, bool)>,
    stop_reason: String,
    /// The handler's id, workflow and input.
    handler: Option<(ExecutionId, String, Value)>,
    /// As an ended sub-workflow: the parent, and the outcome of its run.
    parent_told: Option<(ExecutionId, RunOutcome)>,
}

/// A run to start.
#[derive(Debug)]
enum Start {
    Task(ExecutionId, Box<TaskSpec>),
    Child {
        execution: ExecutionId,
        workflow: String,
        version: Option<u32>,
        input: Value,
    },
}

/// The events one step records: the waiting run ends, then whatever is
/// ready, then the deadline if it passed.
fn decide_step(
    state: &WorkflowState,
    ends: &[(ExecutionId, RunOutcome)],
) -> Result<Vec<run::WorkflowEvent>, WorkflowRejection> {
    let now = Utc::now();
    let mut working = state.clone();
    let mut events = Vec::new();
    let mut commands: Vec<WorkflowCommand> = ends
        .iter()
        .filter_map(|(execution, outcome)| {
            let (node, index, _) = working.running_runs().find(|(_, _, e)| *e == execution)?;
            Some(WorkflowCommand::EndRun {
                node: node.to_owned(),
                index,
                outcome: outcome.clone(),
            })
        })
        .collect();
    let deadline = working
        .definition
        .as_ref()
        .and_then(|d| d.timeout)
        .zip(working.started_at)
        .and_then(|(timeout, at)| chrono::TimeDelta::from_std(timeout).ok().map(|t| at + t));
    if deadline.is_some_and(|d| now >= d) {
        commands.push(WorkflowCommand::TimeOut);
    }
    commands.push(WorkflowCommand::Advance);
    for command in commands {
        // Each command decides on what the ones before it left.
        events.extend(run::decide_into(&command, &mut working, now)?);
    }
    Ok(events)
}

/// The span of workflow execution `id`, ended at `at` in `state`: the
/// parent of its node runs' spans, a child of the context it was started
/// under (a caller's span, a parent workflow's), or the root of a trace of
/// its own.
fn workflow_span(
    id: &ExecutionId,
    state: &run::WorkflowState,
    at: chrono::DateTime<Utc>,
) -> Option<runlog_telemetry::Span> {
    use runlog_telemetry::Span;
    let started = state.started_at?;
    let caller = state.traceparent.as_ref();
    let own = TraceParent::of_workflow_under(caller, id);
    let span = match caller {
        // A caller's span is another process's; a parent workflow's is ours.
        Some(caller) if state.parent.is_none() && state.handles.is_none() => {
            Span::child_of(caller, own.span_id(), "workflow")?.remote_parent()
        }
        Some(caller) => Span::child_of(caller, own.span_id(), "workflow")?,
        None => Span::root_of(&own, "workflow")?,
    }
    .between(started, at)
    .attr("runlog.workflow.execution.id", id.as_str().to_owned())
    .attr("runlog.status", state.status.as_str())
    .attr("runlog.workflow.runs", i64::from(state.runs_started));
    let span = match &state.definition {
        Some(d) => span
            .attr("runlog.workflow", d.name.clone())
            .attr("runlog.workflow.version", i64::from(d.version)),
        None => span,
    };
    Some(match state.status {
        run::WorkflowStatus::Succeeded => span.ok(),
        run::WorkflowStatus::Cancelled => span,
        status => span.error(status.as_str()),
    })
}

/// The task a run of `node` is: its kind, rendered input, queue, deadline,
/// retries and breaker, linked to its workflow execution.
fn run_spec(id: &ExecutionId, definition: &Definition, node: &str, input: Value) -> TaskSpec {
    let n = &definition.nodes[node];
    let mut spec = TaskSpec::new(n.kind.clone());
    spec.input = input;
    if let Some(queue) = n.queue.as_ref().and_then(|q| QueueName::new(q).ok()) {
        spec.queue = queue;
    }
    spec.attempt_timeout_ms = n
        .timeout
        .map(|t| t.as_millis().min(u64::MAX as u128) as u64);
    spec.retry = n.retry.clone().unwrap_or_default();
    spec.breaker.clone_from(&n.breaker);
    spec.secrets.clone_from(&n.secrets);
    spec.labels
        .insert("workflow".into(), definition.name.clone());
    spec.workflow_execution = Some(id.clone());
    spec.node = Some(node.to_owned());
    spec
}

/// Checks `input` against the definition's `inputs` schema, if it has one.
fn check_input(definition: &Definition, input: &Value) -> Result<(), RunnerError> {
    let Some(schema) = &definition.inputs else {
        return Ok(());
    };
    let validator = jsonschema::validator_for(schema).map_err(|e| {
        RunnerError::InvalidInput(vec![format!("the inputs schema itself is invalid: {e}")])
    })?;
    let errors: Vec<String> = validator
        .iter_errors(input)
        .map(|e| {
            let path = e.instance_path().to_string();
            if path.is_empty() {
                e.to_string()
            } else {
                format!("{path}: {e}")
            }
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(RunnerError::InvalidInput(errors))
    }
}

/// A workflow execution as listings show it.
pub fn summary(id: &ExecutionId, s: &WorkflowState) -> Value {
    let def = s.definition.as_deref();
    let count = |status: run::NodeStatus| s.nodes.values().filter(|n| n.status == status).count();
    json!({
        "id": id,
        "workflow": def.map(|d| &d.name),
        "version": def.map(|d| d.version),
        "status": s.status,
        "cancel_requested": s.cancel_requested,
        "round": s.round,
        "nodes": {
            "total": s.nodes.len(),
            "succeeded": count(run::NodeStatus::Succeeded),
            "running": count(run::NodeStatus::Running),
            "failed": count(run::NodeStatus::Failed),
            "skipped": count(run::NodeStatus::Skipped),
        },
        "reason": s.reason,
        "started_at": s.started_at,
        "finished_at": s.finished_at,
    })
}

/// A workflow execution whole: the summary, its input and output, and
/// every node with its runs (`GET /v1/workflow-executions/{id}`).
pub fn view(id: &ExecutionId, history: &WorkflowHistory) -> Value {
    let s = &history.state;
    let mut view = summary(id, s);
    let def = s.definition.as_deref();
    let nodes: serde_json::Map<String, Value> = s
        .nodes
        .iter()
        .map(|(name, node)| {
            let spec = def.and_then(|d| d.nodes.get(name));
            let mut value = serde_json::to_value(node).unwrap_or_default();
            if let Value::Object(map) = &mut value {
                map.insert("kind".into(), json!(spec.map(|n| &n.kind)));
                map.insert("depends_on".into(), json!(spec.map(|n| &n.depends_on)));
            }
            (name.clone(), value)
        })
        .collect();
    if let Value::Object(map) = &mut view {
        map.insert("nodes".into(), Value::Object(nodes));
        map.insert("input".into(), s.input.clone());
        map.insert("output".into(), json!(s.output));
        map.insert("failed_node".into(), json!(s.failed_node));
        map.insert("handler".into(), json!(s.handler));
        map.insert("handles".into(), json!(s.handles));
        map.insert("last_seq".into(), json!(history.last_seq));
    }
    view
}
