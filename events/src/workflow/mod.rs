//! Workflow definitions: a named, versioned graph of nodes, each a task
//! kind with its input, its dependencies and its conditions.
//!
//! A definition is written in JSON or YAML ([`Definition::from_json`],
//! [`Definition::from_yaml`]) and checked as a whole before it is stored
//! ([`Definition::check`]): every problem is listed, each with the JSON path
//! of its field (`nodes.report.depends_on[0]`). Inputs, `output`, `when` and
//! `for_each` read the workflow's context through jq expressions ([`expr`],
//! the `jaq` implementation), compiled at definition time.
//!
//! The context an expression sees: `.inputs` (the workflow's input),
//! `.nodes.<name>.output` (what an upstream node returned), and inside a
//! `for_each` node `.item` and `.index`.

pub mod expr;
pub mod log;
pub mod run;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::{FieldError, RetryPolicy};

/// The kinds the engine runs itself (no worker involved).
pub const ENGINE_KINDS: [&str; 4] = ["transform", "condition", "wait", "workflow"];
/// The kinds runlog's own workers run.
pub const WORKER_KINDS: [&str; 6] = ["shell", "http", "echo", "sql", "script", "ssh"];
/// Whether the engine runs `kind` itself.
pub fn is_engine_kind(kind: &str) -> bool {
    ENGINE_KINDS.contains(&kind)
}

/// How long a `wait` node waits (`input: {duration: 30s}`); `None` when it
/// waits for a signal.
pub fn wait_duration(node: &Node) -> Result<Option<Duration>, String> {
    match &node.input {
        Value::Null => Ok(None),
        Value::Object(map) => {
            if let Some(other) = map.keys().find(|k| *k != "duration") {
                return Err(format!(
                    "a wait node's input has only a duration, not {other:?}"
                ));
            }
            match map.get("duration") {
                None => Ok(None),
                Some(Value::String(text)) => humantime::parse_duration(text)
                    .map(Some)
                    .map_err(|e| format!("{text:?} is not a duration ({e}): write 30s, 5m or 1h")),
                Some(_) => Err("a wait node's duration is text such as 30s".into()),
            }
        }
        _ => Err("a wait node's input is {duration: 30s}, or nothing to wait for a signal".into()),
    }
}

/// The workflow a `workflow` node runs (`input: {workflow: name, version:
/// 3, input: …}`), by name and version (the newest when absent).
pub fn sub_workflow(node: &Node) -> Result<(String, Option<u32>), String> {
    let Value::Object(map) = &node.input else {
        return Err("a workflow node's input is {workflow: <name>, version: <n>, input: …}".into());
    };
    if let Some(other) = map
        .keys()
        .find(|k| !["workflow", "version", "input"].contains(&k.as_str()))
    {
        return Err(format!(
            "a workflow node's input has workflow, version and input, not {other:?}"
        ));
    }
    let name = match map.get("workflow") {
        Some(Value::String(name)) => name.clone(),
        _ => return Err("a workflow node names its workflow: {workflow: <name>}".into()),
    };
    crate::id::validate_token(&name).map_err(|e| format!("workflow {name:?}: {e}"))?;
    let version = match map.get("version") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0)
                .ok_or("a workflow node's version is a whole number from 1")?,
        ),
    };
    Ok((name, version))
}

/// The most nodes one definition may hold.
pub const MAX_NODES: usize = 1000;

/// One version of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// The workflow's name (1-64 of `A-Z a-z 0-9 _ -`).
    pub name: String,
    /// Its version: a definition is stored once per name and version, and an
    /// execution runs the version it started with.
    #[schemars(range(min = 1))]
    pub version: u32,
    /// What it does, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema the input of each execution must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Value>,
    /// The nodes, by name (1-64 of `A-Z a-z 0-9 _ -`).
    pub nodes: BTreeMap<String, Node>,
    /// The workflow's output: a template over the context (`${{ … }}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Deadline of a whole execution (`30m`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::humantime_opt"
    )]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Duration>,
    /// What a failed node does to the workflow, unless the node says
    /// otherwise.
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// One node of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// What it runs: a worker kind (`shell`, `http`, `sql`, `script`, a
    /// custom handler's kind) or an engine kind (`transform`, `condition`,
    /// `wait`, `workflow`).
    pub kind: String,
    /// Its input: any JSON, where a string `${{ expr }}` is replaced by the
    /// expression's value and `${{ … }}` inside a longer string by its text.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub input: Value,
    /// Nodes that must end before it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// A jq expression: the node runs only if it is true, else it is
    /// `skipped` (and so are the nodes that need it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// A jq expression yielding an array: the node runs once per element
    /// (`.item`, `.index`), its output the array of their outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// With `for_each`: runs of this node at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub concurrency: Option<u32>,
    /// Deadline of one attempt (`30s`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::humantime_opt"
    )]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Duration>,
    /// Its retries, as a task's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Its circuit-breaker key, as a task's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<String>,
    /// The queue its runs are dispatched on (worker kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Environment variables of its runs, by the names of the secrets the
    /// worker resolves (`{DB: reports-db}`), as a task's `secrets`: the
    /// log holds the names, never the values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// What its failure does, over the workflow's `on_failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
}

/// What a failed node does to its workflow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The workflow fails; running nodes are cancelled.
    #[default]
    Fail,
    /// The workflow goes on; the nodes that need this one are skipped.
    Continue,
    /// The workflow fails, and the named workflow starts with the failure
    /// as its input.
    Handler {
        /// The error-handler workflow's name.
        workflow: String,
    },
}

impl Definition {
    /// Reads a definition from JSON; shape errors name their field.
    pub fn from_json(text: &str) -> Result<Definition, Vec<FieldError>> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            vec![FieldError {
                field: String::new(),
                reason: format!("not JSON: {e}"),
            }]
        })?;
        Self::from_value(value)
    }

    /// Reads a definition from YAML; shape errors name their field.
    pub fn from_yaml(text: &str) -> Result<Definition, Vec<FieldError>> {
        let value: Value = serde_norway::from_str(text).map_err(|e| {
            vec![FieldError {
                field: String::new(),
                reason: format!("not YAML: {e}"),
            }]
        })?;
        Self::from_value(value)
    }

    /// Reads a definition from a JSON value.
    pub fn from_value(value: Value) -> Result<Definition, Vec<FieldError>> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            vec![FieldError {
                field: if path == "." { String::new() } else { path },
                reason: e.into_inner().to_string(),
            }]
        })
    }

    /// Every problem of the definition, each with its path; empty when it
    /// can be stored. `custom_kind` says whether a kind that is not
    /// runlog's own is known (a custom handler some worker runs).
    pub fn check(&self, custom_kind: impl Fn(&str) -> bool) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut fail = |field: String, reason: String| errors.push(FieldError { field, reason });
        if let Err(e) = crate::id::validate_token(&self.name) {
            fail("name".into(), e.to_string());
        }
        if self.version == 0 {
            fail("version".into(), "must be at least 1".into());
        }
        if self.nodes.is_empty() {
            fail("nodes".into(), "a workflow has at least one node".into());
        }
        if self.nodes.len() > MAX_NODES {
            fail(
                "nodes".into(),
                format!("at most {MAX_NODES} nodes, found {}", self.nodes.len()),
            );
        }
        if let OnFailure::Handler { workflow } = &self.on_failure
            && let Err(e) = crate::id::validate_token(workflow)
        {
            fail("on_failure.handler.workflow".into(), e.to_string());
        }
        if let Some(output) = &self.output {
            for e in expr::check_template(output, "output") {
                fail(e.field, e.reason);
            }
        }
        for (name, node) in &self.nodes {
            let at = |field: &str| format!("nodes.{name}.{field}");
            if let Err(e) = crate::id::validate_token(name) {
                fail(format!("nodes.{name}"), format!("node name: {e}"));
            }
            let kind = node.kind.as_str();
            if !ENGINE_KINDS.contains(&kind) && !WORKER_KINDS.contains(&kind) && !custom_kind(kind)
            {
                let mut known: Vec<&str> =
                    ENGINE_KINDS.iter().chain(&WORKER_KINDS).copied().collect();
                known.sort_unstable();
                fail(
                    at("kind"),
                    format!(
                        "unknown kind {kind:?}: runlog's kinds are {}, or a custom handler's kind \
                         that a live worker runs",
                        known.join(", ")
                    ),
                );
            }
            if kind == "wait"
                && let Err(reason) = wait_duration(node)
            {
                fail(at("input"), reason);
            }
            if kind == "workflow"
                && let Err(reason) = sub_workflow(node)
            {
                fail(at("input"), reason);
            }
            for (i, dep) in node.depends_on.iter().enumerate() {
                if !self.nodes.contains_key(dep) {
                    fail(
                        format!("nodes.{name}.depends_on[{i}]"),
                        format!("no node is named {dep:?}"),
                    );
                } else if dep == name {
                    fail(
                        format!("nodes.{name}.depends_on[{i}]"),
                        "a node cannot depend on itself".into(),
                    );
                }
            }
            for e in expr::check_template(&node.input, &at("input")) {
                fail(e.field, e.reason);
            }
            for (field, code) in [("when", &node.when), ("for_each", &node.for_each)] {
                if let Some(code) = code
                    && let Err(reason) = expr::Expr::compile(code)
                {
                    fail(at(field), reason);
                }
            }
            if node.concurrency.is_some() && node.for_each.is_none() {
                fail(
                    at("concurrency"),
                    "only a for_each node has a concurrency".into(),
                );
            }
            if node.concurrency == Some(0) {
                fail(at("concurrency"), "must be at least 1".into());
            }
            if let Some(OnFailure::Handler { workflow }) = &node.on_failure
                && let Err(e) = crate::id::validate_token(workflow)
            {
                fail(at("on_failure.handler.workflow"), e.to_string());
            }
            if let Some(queue) = &node.queue
                && let Err(e) = crate::id::QueueName::new(queue)
            {
                fail(at("queue"), e.to_string());
            }
        }
        if let Some(cycle) = self.cycle() {
            fail(
                format!("nodes.{}.depends_on", cycle[0]),
                format!("the dependencies form a cycle: {}", cycle.join(" → ")),
            );
        }
        errors
    }

    /// The nodes in an order where each comes after its dependencies
    /// (ties by name); `None` if the dependencies form a cycle.
    pub fn order(&self) -> Option<Vec<&str>> {
        let mut waiting: BTreeMap<&str, usize> = BTreeMap::new();
        let mut needed_by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, node) in &self.nodes {
            let deps: BTreeSet<&str> = node
                .depends_on
                .iter()
                .map(String::as_str)
                .filter(|d| self.nodes.contains_key(*d))
                .collect();
            waiting.insert(name, deps.len());
            for dep in deps {
                needed_by.entry(dep).or_default().push(name);
            }
        }
        let mut ready: BTreeSet<&str> = waiting
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(name, _)| *name)
            .collect();
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some(name) = ready.pop_first() {
            order.push(name);
            for next in needed_by.get(name).into_iter().flatten() {
                let n = waiting.get_mut(next).expect("every node waits");
                *n -= 1;
                if *n == 0 {
                    ready.insert(next);
                }
            }
        }
        (order.len() == self.nodes.len()).then_some(order)
    }

    /// One cycle of the dependencies, as the names along it (the first
    /// again at the end), if there is one.
    fn cycle(&self) -> Option<Vec<String>> {
        if self.order().is_some() {
            return None;
        }
        // Depth-first from every node, keeping the path, until a node on
        // the path comes round again.
        fn visit<'a>(
            def: &'a Definition,
            name: &'a str,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) -> Option<Vec<String>> {
            if let Some(start) = path.iter().position(|n| *n == name) {
                let mut cycle: Vec<String> =
                    path[start..].iter().map(|n| (*n).to_owned()).collect();
                cycle.push(name.to_owned());
                return Some(cycle);
            }
            if !done.insert(name) {
                return None;
            }
            path.push(name);
            for dep in &def.nodes.get(name)?.depends_on {
                if def.nodes.contains_key(dep)
                    && let Some(cycle) = visit(def, dep, path, done)
                {
                    return Some(cycle);
                }
            }
            path.pop();
            None
        }
        let mut done = BTreeSet::new();
        self.nodes
            .keys()
            .find_map(|name| visit(self, name, &mut Vec::new(), &mut done))
    }
}

#[cfg(test)]
mod tests;
