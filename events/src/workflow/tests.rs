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

/// A workflow expression runs inside the engine: nothing in it may read
/// the engine's environment, write to its standard streams, or end it.
#[test]
fn expressions_cannot_reach_the_engine_process() {
    for (code, named) in [
        ("env.HOME", "`env`"),
        ("env | keys", "`env`"),
        (". | debug", "`debug`"),
        ("debug(\"x\")", "`debug`"),
        ("stderr", "`stderr`"),
        ("input", "`input`"),
        ("[inputs]", "`inputs`"),
        ("halt", "`halt`"),
        ("\"bye\" | halt_error", "`halt_error`"),
        ("halt_error(1)", "`halt_error`"),
    ] {
        let reason = Expr::compile(code).expect_err(code);
        assert!(
            reason.contains(named) && reason.contains("not available in workflow expressions"),
            "{code}: {reason}"
        );
    }
    let reason = Expr::compile("$ENV.HOME").expect_err("$ENV");
    assert!(reason.contains("ENV"), "{reason}");
    // A definition that uses one is refused when it is stored.
    let def = Definition::from_yaml(
        "name: w\nversion: 1\nnodes:\n  a: {kind: transform, input: {home: '${{ env.HOME }}'}}\n",
    )
    .unwrap();
    let errors = def.check(|_| false);
    assert!(
        errors
            .iter()
            .any(|e| e.field == "nodes.a.input.home" && e.reason.contains("`env`")),
        "{errors:?}"
    );
}

/// jaq recurses to parse, compile and run, and a stack overflow aborts the
/// engine: expressions are held to a size and a depth that fit a 2 MiB
/// thread with room to spare.
#[test]
fn expressions_are_held_to_a_size_and_depth_that_fit_the_stack() {
    use crate::workflow::expr::{MAX_EXPR_BYTES, MAX_EXPR_DEPTH};
    let chain = |item: &str, sep: &str, len: usize| {
        let n = (len + sep.len()) / (item.len() + sep.len());
        vec![item; n].join(sep)
    };
    let nested = |open: &str, close: &str, depth: usize| {
        format!("{}1{}", open.repeat(depth), close.repeat(depth))
    };
    // The largest of each shape compiles and runs. A debug build's frames
    // are about four times a release build's (measured), hence its stack.
    let stack = if cfg!(debug_assertions) {
        8 << 20
    } else {
        2 << 20
    };
    let largest = [
        chain("1", ",", MAX_EXPR_BYTES),
        chain(".", "|", MAX_EXPR_BYTES),
        chain("1", "+", MAX_EXPR_BYTES),
        format!("{} | 1", chain(". as $x", " | ", MAX_EXPR_BYTES - 4)),
        format!("{}1", "-".repeat(MAX_EXPR_BYTES - 1)),
        nested("(", ")", MAX_EXPR_DEPTH),
        nested("[", "]", MAX_EXPR_DEPTH),
        nested("{a:", "}", MAX_EXPR_DEPTH),
        nested("\"\\(", ")\"", MAX_EXPR_DEPTH),
    ];
    for code in largest {
        assert!(code.len() <= MAX_EXPR_BYTES, "{} bytes", code.len());
        let ran = std::thread::Builder::new()
            .stack_size(stack)
            .spawn(move || {
                Expr::compile(&code)
                    .and_then(|e| e.eval(&json!({})))
                    .map(|_| ())
            })
            .unwrap()
            .join()
            .expect("no panic");
        assert!(ran.is_ok(), "{ran:?}");
    }
    // One byte or one level more is refused with the limit it broke.
    let long = format!("{} ", chain("1", ",", MAX_EXPR_BYTES));
    let too_long = format!("{long}{}", " ".repeat(MAX_EXPR_BYTES + 1 - long.len()));
    let reason = Expr::compile(&too_long).map(|_| ()).expect_err("too long");
    assert!(reason.contains("at most 1024 bytes"), "{reason}");
    let reason = Expr::compile(&nested("(", ")", MAX_EXPR_DEPTH + 1))
        .map(|_| ())
        .expect_err("too deep");
    assert!(reason.contains("at most 64 deep, this one 65"), "{reason}");
    // A definition with such an expression is refused when it is stored.
    let def = Definition::from_json(&format!(
        r#"{{"name": "w", "version": 1, "nodes": {{"a": {{"kind": "condition", "when": "{}"}}}}}}"#,
        "(".repeat(2000) + &")".repeat(2000)
    ))
    .unwrap();
    let errors = def.check(|_| false);
    assert!(
        errors
            .iter()
            .any(|e| e.field == "nodes.a.when" && e.reason.contains("bytes")),
        "{errors:?}"
    );
}
