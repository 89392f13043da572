use chrono::TimeDelta;
use proptest::prelude::*;
use serde_json::json;

use super::*;

fn id() -> ExecutionId {
    ExecutionId::new("wf1").unwrap()
}

fn t0() -> DateTime<Utc> {
    "2026-12-01T10:00:00Z".parse().unwrap()
}

fn def(yaml: &str) -> Box<Definition> {
    let def = Definition::from_yaml(yaml).expect("reads");
    let errors = def.check(|_| false);
    assert!(errors.is_empty(), "{errors:?}");
    Box::new(def)
}

/// Decides `command`, folds what it decided, and returns the events.
fn step(
    state: &mut WorkflowState,
    command: WorkflowCommand,
    now: DateTime<Utc>,
) -> Vec<WorkflowEvent> {
    let events = decide(&command, state, now).expect("decides");
    for event in &events {
        let env = WorkflowEnvelope::new(id(), now, "/test", event.clone());
        apply(state, &env).expect("every decided event applies");
    }
    events
}

fn start(def: Box<Definition>, input: Value) -> (WorkflowState, Vec<WorkflowEvent>) {
    let mut state = WorkflowState::default();
    let events = step(
        &mut state,
        WorkflowCommand::Start {
            id: id(),
            definition: def,
            input,
            handles: None,
            parent: None,
            traceparent: None,
        },
        t0(),
    );
    (state, events)
}

fn succeed(state: &mut WorkflowState, node: &str, index: u32, output: Value) -> Vec<WorkflowEvent> {
    step(
        state,
        WorkflowCommand::EndRun {
            node: node.into(),
            index,
            outcome: RunOutcome::Succeeded { output },
        },
        t0(),
    )
}

fn fail(state: &mut WorkflowState, node: &str, index: u32) -> Vec<WorkflowEvent> {
    step(
        state,
        WorkflowCommand::EndRun {
            node: node.into(),
            index,
            outcome: RunOutcome::Failed {
                error: "boom".into(),
            },
        },
        t0(),
    )
}

fn status(state: &WorkflowState, node: &str) -> NodeStatus {
    state.nodes[node].status
}

const PIPELINE: &str = r#"
name: pipeline
version: 1
nodes:
  fetch:
    kind: http
    input: {url: "http://127.0.0.1/items?n=${{ .inputs.n }}"}
  count:
    kind: transform
    depends_on: [fetch]
    input: {n: "${{ .nodes.fetch.output.body.items | length }}"}
  big:
    kind: condition
    depends_on: [count]
    input: "${{ .nodes.count.output.n > 2 }}"
  query:
    kind: sql
    depends_on: [big]
    when: ".nodes.big.output.result"
    input: {query: "select 1"}
  script:
    kind: script
    depends_on: [big]
    when: ".nodes.big.output.result"
    input: {language: sh, code: "cat"}
  small:
    kind: echo
    depends_on: [big]
    when: ".nodes.big.output.result | not"
  join:
    kind: transform
    depends_on: [query, script, small]
    when: "true"
    input: {query: "${{ .nodes.query.output }}", script: "${{ .nodes.script.output }}"}
output: "${{ .nodes.join.output }}"
"#;

#[test]
fn a_graph_runs_in_order_with_parallel_branches_and_a_skipped_one() {
    let (mut state, events) = start(def(PIPELINE), json!({"n": 3}));
    assert_eq!(state.status, WorkflowStatus::Running);
    let [
        _,
        WorkflowEvent::NodeStarted { .. },
        WorkflowEvent::RunStarted {
            input, execution, ..
        },
    ] = events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert_eq!(input, &json!({"url": "http://127.0.0.1/items?n=3"}));
    assert_eq!(execution.as_str(), "wf1-1");

    // fetch's end computes count and big, and starts both true branches at once.
    let events = succeed(
        &mut state,
        "fetch",
        0,
        json!({"body": {"items": [1, 2, 3]}}),
    );
    assert_eq!(state.nodes["count"].output, Some(json!({"n": 3})));
    assert_eq!(state.nodes["big"].output, Some(json!({"result": true})));
    assert_eq!(status(&state, "small"), NodeStatus::Skipped);
    assert_eq!(status(&state, "query"), NodeStatus::Running);
    assert_eq!(status(&state, "script"), NodeStatus::Running);
    let started: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            WorkflowEvent::RunStarted { node, .. } => Some(node.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(started, ["query", "script"]);
    assert_eq!(status(&state, "join"), NodeStatus::Waiting);

    succeed(&mut state, "script", 0, json!({"s": 1}));
    assert_eq!(
        status(&state, "join"),
        NodeStatus::Waiting,
        "waits for query"
    );
    succeed(&mut state, "query", 0, json!({"rows": [[1]]}));
    assert_eq!(state.status, WorkflowStatus::Succeeded);
    assert_eq!(
        state.output,
        Some(json!({"query": {"rows": [[1]]}, "script": {"s": 1}}))
    );
}

#[test]
fn a_skipped_dependency_skips_a_node_without_when() {
    let (mut state, _) = start(
        def(r#"
name: w
version: 1
nodes:
  a: {kind: echo}
  b: {kind: echo, depends_on: [a], when: "false"}
  c: {kind: echo, depends_on: [b]}
"#),
        Value::Null,
    );
    succeed(&mut state, "a", 0, json!(1));
    assert_eq!(status(&state, "b"), NodeStatus::Skipped);
    assert_eq!(status(&state, "c"), NodeStatus::Skipped);
    assert_eq!(
        state.nodes["c"].reason.as_deref(),
        Some("it needs b, which is skipped")
    );
    assert_eq!(state.status, WorkflowStatus::Succeeded);
    assert_eq!(state.output, Some(json!({})), "no leaf has an output");
}

#[test]
fn for_each_keeps_to_its_concurrency_and_collects_outputs_in_order() {
    let (mut state, _) = start(
        def(r#"
name: fan
version: 1
nodes:
  each:
    kind: echo
    for_each: ".inputs.items"
    concurrency: 2
    input: {x: "${{ .item }}", i: "${{ .index }}"}
"#),
        json!({"items": ["a", "b", "c", "d", "e"]}),
    );
    assert_eq!(state.running_runs().count(), 2);
    for (index, last) in [(1, false), (0, false), (2, false), (4, false), (3, true)] {
        // Runs end in any order; at most two run at once.
        succeed(&mut state, "each", index, json!(index));
        assert!(state.running_runs().count() <= 2);
        assert_eq!(state.status == WorkflowStatus::Succeeded, last);
    }
    assert_eq!(state.nodes["each"].runs[4].input, json!({"x": "e", "i": 4}));
    assert_eq!(state.output, Some(json!({"each": [0, 1, 2, 3, 4]})));
    assert_eq!(state.runs_started, 5);
}

const FAILING: &str = r#"
name: f
version: 1
on_failure: {handler: {workflow: on-failure}}
nodes:
  a: {kind: echo}
  b: {kind: echo, depends_on: [a]}
  c: {kind: echo, depends_on: [b]}
  side: {kind: echo}
"#;

#[test]
fn a_failed_node_fails_the_workflow_and_names_its_handler() {
    let (mut state, _) = start(def(FAILING), Value::Null);
    succeed(&mut state, "a", 0, json!("a"));
    let events = fail(&mut state, "b", 0);
    assert!(matches!(
        events.last(),
        Some(WorkflowEvent::Failed { node: Some(n), handler: Some(h), .. })
            if n == "b" && h.as_str() == "wf1-handler-0"
    ));
    assert_eq!(state.status, WorkflowStatus::Failed);
    // `side` still runs: a retry must wait for it.
    assert_eq!(
        decide(&WorkflowCommand::Retry, &state, t0()),
        Err(WorkflowRejection::RunsEnding)
    );
    let events = step(
        &mut state,
        WorkflowCommand::EndRun {
            node: "side".into(),
            index: 0,
            outcome: RunOutcome::Cancelled {
                reason: "the workflow failed".into(),
            },
        },
        t0(),
    );
    assert_eq!(
        events.len(),
        1,
        "an ended workflow only records the run: {events:?}"
    );
    assert_eq!(state.nodes["side"].runs[0].status, NodeStatus::Cancelled);
}

#[test]
fn retry_reruns_the_failed_node_and_what_depends_on_it() {
    let (mut state, _) = start(def(FAILING), Value::Null);
    succeed(&mut state, "a", 0, json!("a"));
    succeed(&mut state, "side", 0, json!("side"));
    fail(&mut state, "b", 0);
    let events = step(&mut state, WorkflowCommand::Retry, t0());
    assert_eq!(
        events[0],
        WorkflowEvent::Retried {
            nodes: vec!["b".into(), "c".into()]
        }
    );
    assert_eq!(state.round, 1);
    assert_eq!(status(&state, "a"), NodeStatus::Succeeded);
    assert_eq!(status(&state, "b"), NodeStatus::Running);
    // The new run is a new execution.
    assert_eq!(state.nodes["b"].runs[0].execution.as_str(), "wf1-4");
    succeed(&mut state, "b", 0, json!("b"));
    succeed(&mut state, "c", 0, json!("c"));
    assert_eq!(state.status, WorkflowStatus::Succeeded);
    assert_eq!(state.output, Some(json!({"c": "c", "side": "side"})));
    assert_eq!(
        decide(&WorkflowCommand::Retry, &state, t0()),
        Err(WorkflowRejection::NotRetryable("succeeded"))
    );
}

#[test]
fn on_failure_continue_skips_only_the_dependents() {
    let (mut state, _) = start(
        def(r#"
name: c
version: 1
nodes:
  a: {kind: echo, on_failure: continue}
  b: {kind: echo, depends_on: [a]}
  c: {kind: echo}
"#),
        Value::Null,
    );
    fail(&mut state, "a", 0);
    assert_eq!(state.status, WorkflowStatus::Running);
    assert_eq!(status(&state, "b"), NodeStatus::Skipped);
    succeed(&mut state, "c", 0, json!(1));
    assert_eq!(state.status, WorkflowStatus::Succeeded);
}

#[test]
fn a_cancel_waits_for_the_running_runs() {
    let (mut state, _) = start(def(FAILING), Value::Null);
    let events = step(
        &mut state,
        WorkflowCommand::Cancel {
            reason: "operator".into(),
        },
        t0(),
    );
    assert_eq!(events.len(), 1);
    assert!(state.cancel_requested);
    assert_eq!(
        decide(&WorkflowCommand::Advance, &state, t0()).unwrap(),
        vec![],
        "no run is handed out after a cancel"
    );
    for node in ["a", "side"] {
        step(
            &mut state,
            WorkflowCommand::EndRun {
                node: node.into(),
                index: 0,
                outcome: RunOutcome::Cancelled {
                    reason: "operator".into(),
                },
            },
            t0(),
        );
    }
    assert_eq!(state.status, WorkflowStatus::Cancelled);
    assert_eq!(status(&state, "c"), NodeStatus::Cancelled);
    assert_eq!(
        decide(
            &WorkflowCommand::Cancel {
                reason: "again".into()
            },
            &state,
            t0()
        ),
        Err(WorkflowRejection::NotRunning("cancelled"))
    );
}

#[test]
fn a_wait_node_ends_after_its_duration_or_on_a_signal() {
    let (mut state, _) = start(
        def(r#"
name: w
version: 1
nodes:
  pause: {kind: wait, input: {duration: 5s}}
  approval: {kind: wait}
"#),
        Value::Null,
    );
    assert_eq!(status(&state, "pause"), NodeStatus::Running);
    assert!(
        decide(
            &WorkflowCommand::Advance,
            &state,
            t0() + TimeDelta::seconds(4)
        )
        .unwrap()
        .is_empty()
    );
    step(
        &mut state,
        WorkflowCommand::Advance,
        t0() + TimeDelta::seconds(5),
    );
    assert_eq!(status(&state, "pause"), NodeStatus::Succeeded);
    assert_eq!(
        decide(
            &WorkflowCommand::Signal {
                node: "pause".into(),
                payload: Value::Null
            },
            &state,
            t0()
        ),
        Err(WorkflowRejection::NotWaiting("pause".into()))
    );
    step(
        &mut state,
        WorkflowCommand::Signal {
            node: "approval".into(),
            payload: json!({"by": "ann"}),
        },
        t0(),
    );
    assert_eq!(state.status, WorkflowStatus::Succeeded);
    assert_eq!(state.nodes["approval"].output, Some(json!({"by": "ann"})));
}

#[test]
fn expression_failures_fail_the_node_with_the_reason() {
    let (state, _) = start(
        def(r#"
name: e
version: 1
nodes:
  each: {kind: echo, for_each: ".inputs.n"}
"#),
        json!({"n": 3}),
    );
    assert_eq!(state.status, WorkflowStatus::Failed);
    assert_eq!(
        state.nodes["each"].reason.as_deref(),
        Some("its for_each yields a number, not an array")
    );
}

#[test]
fn a_foreign_or_stale_event_is_refused() {
    let (mut state, _) = start(def(FAILING), Value::Null);
    let stale = WorkflowEnvelope::new(
        id(),
        t0(),
        "/test",
        WorkflowEvent::RunEnded {
            node: "c".into(),
            index: 0,
            outcome: RunOutcome::Succeeded { output: json!(1) },
        },
    );
    assert!(apply(&mut state, &stale).is_err());
    let foreign = WorkflowEnvelope::new(
        ExecutionId::new("other").unwrap(),
        t0(),
        "/test",
        WorkflowEvent::CancelRequested { reason: "x".into() },
    );
    assert!(apply(&mut state, &foreign).is_err());
    assert!(!state.cancel_requested);
}

/// A random graph of `n` echo nodes, each depending on some earlier ones,
/// some with a `for_each` of up to three items and a concurrency.
fn graph() -> impl Strategy<Value = Definition> {
    (1usize..8)
        .prop_flat_map(|n| {
            proptest::collection::vec(
                (
                    proptest::collection::vec(any::<bool>(), n),
                    0usize..4,
                    1u32..3,
                    any::<bool>(),
                ),
                n,
            )
        })
        .prop_map(|nodes| {
            let mut yaml = String::from("name: g\nversion: 1\nnodes:\n");
            for (i, (deps, items, concurrency, continues)) in nodes.iter().enumerate() {
                let deps: Vec<String> = (0..i)
                    .filter(|j| deps[*j])
                    .map(|j| format!("n{j}"))
                    .collect();
                yaml.push_str(&format!(
                    "  n{i}:\n    kind: echo\n    depends_on: [{}]\n",
                    deps.join(", ")
                ));
                if *items > 0 {
                    yaml.push_str(&format!(
                        "    for_each: \"[range({items})]\"\n    concurrency: {concurrency}\n"
                    ));
                }
                if *continues {
                    yaml.push_str("    on_failure: continue\n");
                }
            }
            *def(&yaml)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever order runs end in and however they end: every decided event
    /// applies, no run is handed out twice, a node starts only after its
    /// dependencies ended, a for_each keeps to its concurrency, and the
    /// execution ends; it succeeds exactly when no required node failed.
    #[test]
    fn any_graph_ends_and_keeps_the_rules(
        def in graph(),
        picks in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..10), 64),
    ) {
        let (mut state, _) = start(Box::new(def.clone()), Value::Null);
        let mut handed = BTreeSet::new();
        let mut picks = picks.into_iter().cycle();
        for _ in 0..200 {
            if state.status.is_terminal() { break; }
            let running: Vec<(String, u32, ExecutionId)> = state
                .running_runs()
                .map(|(n, i, e)| (n.to_owned(), i, e.clone()))
                .collect();
            prop_assert!(!running.is_empty(), "a running workflow has runs: {state:?}");
            for (_, _, e) in &running { handed.insert(e.clone()); }
            let (pick, roll) = picks.next().unwrap();
            let (node, index, _) = &running[pick.index(running.len())];
            let outcome = if roll == 0 {
                RunOutcome::Failed { error: "x".into() }
            } else {
                RunOutcome::Succeeded { output: json!(roll) }
            };
            let before: BTreeMap<String, NodeStatus> =
                state.nodes.iter().map(|(n, s)| (n.clone(), s.status)).collect();
            step(&mut state, WorkflowCommand::EndRun { node: node.clone(), index: *index, outcome }, t0());
            for (name, node) in &def.nodes {
                if before[name] == NodeStatus::Waiting && state.nodes[name].status != NodeStatus::Waiting {
                    for dep in &node.depends_on {
                        prop_assert!(state.nodes[dep].status.is_done(), "{name} started before {dep} ended");
                    }
                }
                let cap = node.concurrency.map_or(usize::MAX, |c| c as usize);
                prop_assert!(state.nodes[name].running_runs() <= cap);
            }
        }
        prop_assert!(state.status.is_terminal(), "ended: {state:?}");
        let ids: Vec<&ExecutionId> = state.nodes.values().flat_map(|n| n.runs.iter().map(|r| &r.execution)).collect();
        let unique: BTreeSet<&ExecutionId> = ids.iter().copied().collect();
        prop_assert_eq!(ids.len(), unique.len(), "a run was handed out twice");
        let required_failed = def.nodes.iter().any(|(name, node)| {
            state.nodes[name].status == NodeStatus::Failed
                && !matches!(node.on_failure, Some(OnFailure::Continue))
        });
        prop_assert_eq!(state.status == WorkflowStatus::Succeeded, !required_failed);
        if state.status == WorkflowStatus::Failed {
            // Let the runs still going end, then a retry finishes the work
            // with every node that succeeded kept as it was.
            let kept: Vec<String> = state.nodes.iter()
                .filter(|(_, n)| n.status == NodeStatus::Succeeded)
                .map(|(name, _)| name.clone()).collect();
            let running: Vec<(String, u32)> = state.running_runs().map(|(n, i, _)| (n.to_owned(), i)).collect();
            for (node, index) in running {
                step(&mut state, WorkflowCommand::EndRun { node, index, outcome: RunOutcome::Cancelled { reason: "x".into() } }, t0());
            }
            step(&mut state, WorkflowCommand::Retry, t0());
            for _ in 0..200 {
                let Some((node, index, _)) = state.running_runs().next().map(|(n, i, e)| (n.to_owned(), i, e.clone())) else { break };
                step(&mut state, WorkflowCommand::EndRun { node, index, outcome: RunOutcome::Succeeded { output: json!(0) } }, t0());
            }
            prop_assert_eq!(state.status, WorkflowStatus::Succeeded);
            for name in kept {
                prop_assert_eq!(state.nodes[&name].status, NodeStatus::Succeeded);
            }
        }
    }
}
