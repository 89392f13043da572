use serde_json::json;

use super::expr::{Expr, render};
use super::*;

fn builtin(_: &str) -> bool {
    false
}

fn errors(text: &str) -> Vec<(String, String)> {
    let def = Definition::from_yaml(text).expect("reads");
    def.check(builtin)
        .into_iter()
        .map(|e| (e.field, e.reason))
        .collect()
}

const GOOD: &str = r#"
name: report
version: 2
nodes:
  fetch:
    kind: http
    input: {url: "https://example.com/items"}
    timeout: 30s
  count:
    kind: transform
    depends_on: [fetch]
    input:
      items: "${{ .nodes.fetch.output.body.items }}"
      title: "found ${{ .nodes.fetch.output.body.items | length }} items"
  big:
    kind: condition
    depends_on: [count]
    when: ".nodes.count.output.items | length > 10"
  each:
    kind: script
    depends_on: [count]
    for_each: ".nodes.count.output.items"
    concurrency: 50
output: "${{ .nodes.each.output }}"
"#;

#[test]
fn a_good_definition_reads_from_yaml_and_json_alike_and_checks_clean() {
    let def = Definition::from_yaml(GOOD).unwrap();
    assert_eq!(def.check(builtin), vec![]);
    assert_eq!(def.nodes["fetch"].timeout, Some(Duration::from_secs(30)));
    let json = serde_json::to_string(&def).unwrap();
    assert_eq!(Definition::from_json(&json).unwrap(), def);
    assert_eq!(def.order().unwrap(), ["fetch", "count", "big", "each"]);
}

#[test]
fn every_problem_is_listed_with_its_path() {
    let found = errors(
        r#"
name: "bad name"
version: 0
nodes:
  a: {kind: shell, depends_on: [b]}
  b: {kind: shell, depends_on: [a]}
  c: {kind: plan, depends_on: [nowhere], input: {x: "${{ .nodes. }}"}}
  d: {kind: transform, when: "nosuchfn(1)", concurrency: 2}
"#,
    );
    let fields: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
    for want in [
        "name",
        "version",
        "nodes.c.kind",
        "nodes.c.depends_on[0]",
        "nodes.c.input.x",
        "nodes.d.when",
        "nodes.d.concurrency",
        "nodes.a.depends_on",
    ] {
        assert!(fields.contains(&want), "{want} missing from {found:#?}");
    }
    let reason = |field: &str| &found.iter().find(|(f, _)| f == field).unwrap().1;
    assert!(
        reason("nodes.a.depends_on").contains("a → b → a"),
        "{found:#?}"
    );
    assert!(reason("nodes.c.kind").contains("unknown kind \"plan\""));
    assert!(reason("nodes.d.when").contains("undefined filter `nosuchfn`"));
    assert!(reason("nodes.c.input.x").contains("cannot parse"));
}

#[test]
fn a_custom_kind_is_known_when_a_worker_runs_it() {
    let def = Definition::from_yaml("name: w\nversion: 1\nnodes:\n  p: {kind: plan}\n").unwrap();
    assert_eq!(def.check(builtin).len(), 1);
    assert_eq!(def.check(|k| k == "plan"), vec![]);
}

#[test]
fn shape_errors_name_their_field() {
    let e =
        Definition::from_yaml("name: w\nversion: 1\nnodes:\n  a: {kind: shell, timeout: soon}\n")
            .unwrap_err();
    assert_eq!(e[0].field, "nodes.a.timeout");
    let e = Definition::from_yaml("name: w\nversion: 1\nnodes:\n  a: {knd: shell}\n").unwrap_err();
    assert_eq!(e[0].field, "nodes.a.knd");
    assert!(
        e[0].reason.contains("unknown field `knd`"),
        "{}",
        e[0].reason
    );
}

#[test]
fn templates_render_values_and_text() {
    let context =
        json!({"nodes": {"fetch": {"output": {"items": [1, 2, 3]}}}, "inputs": {"who": "ops"}});
    let template = json!({
        "items": "${{ .nodes.fetch.output.items }}",
        "n": "${{ .nodes.fetch.output.items | length }}",
        "text": "for ${{ .inputs.who }}: ${{ .nodes.fetch.output.items }}",
        "plain": 7,
    });
    assert_eq!(
        render(&template, &context).unwrap(),
        json!({"items": [1, 2, 3], "n": 3, "text": "for ops: [1,2,3]", "plain": 7})
    );
    assert_eq!(
        Expr::compile(".x | not")
            .unwrap()
            .eval(&json!({"x": false}))
            .unwrap(),
        json!(true)
    );
    assert!(
        Expr::compile("error(\"boom\")")
            .unwrap()
            .eval(&json!(null))
            .is_err()
    );
}
