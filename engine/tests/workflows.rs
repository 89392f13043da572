//! Workflow definitions through the API, stored on a real nats-server.

mod common;

use anyhow::Result;
use common::start;
use serde_json::{Value, json};

const REPORT: &str = r#"
name: report
version: 1
nodes:
  fetch:
    kind: http
    input: {url: "http://127.0.0.1:9/items"}
  count:
    kind: transform
    depends_on: [fetch]
    input: {items: "${{ .nodes.fetch.output.body.items }}"}
"#;

async fn post_yaml(run: &common::Running, yaml: &str) -> Result<(u16, Value)> {
    let response = run
        .http
        .post(format!("{}/v1/workflows", run.base))
        .header("content-type", "application/yaml")
        .body(yaml.to_owned())
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

#[tokio::test]
async fn a_version_is_stored_once_and_every_problem_of_a_bad_one_is_named() -> Result<()> {
    let mut run = start().await?;
    let (status, body) = post_yaml(&run, REPORT).await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["nodes"], 2);
    // The same content again: nothing changes.
    let (status, body) = post_yaml(&run, REPORT).await?;
    assert_eq!((status, &body["existing"]), (200, &json!(true)), "{body}");
    // Other content under a stored version: refused, naming the next one.
    let changed = REPORT.replace("127.0.0.1:9", "127.0.0.1:10");
    let (status, body) = post_yaml(&run, &changed).await?;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "version_taken");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("define version 2")
    );
    let (status, _) = post_yaml(&run, &changed.replace("version: 1", "version: 2")).await?;
    assert_eq!(status, 201);

    let (status, body) = run.get("/v1/workflows/report/versions").await?;
    assert_eq!(status, 200);
    let versions: Vec<u64> = body["versions"]
        .as_array()
        .map(|v| v.iter().filter_map(|d| d["version"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(versions, [1, 2]);
    let (_, body) = run.get("/v1/workflows").await?;
    assert_eq!(
        body["workflows"][0],
        json!({"name": "report", "latest": 2, "versions": [1, 2]})
    );
    let (status, body) = run.get("/v1/workflows/report/versions/1").await?;
    assert_eq!(status, 200);
    assert_eq!(
        body["nodes"]["fetch"]["input"]["url"],
        "http://127.0.0.1:9/items"
    );

    // A cycle, a bad jq expression and an unknown kind, in JSON: one 422
    // listing each at its path.
    let bad = json!({
        "name": "broken", "version": 1,
        "nodes": {
            "a": {"kind": "shell", "depends_on": ["b"]},
            "b": {"kind": "shell", "depends_on": ["a"]},
            "c": {"kind": "plan", "input": {"x": "${{ .nodes. }}"}},
        }
    });
    let (status, body) = run.post("/v1/workflows", bad).await?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "invalid_workflow");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["field"].as_str()).collect())
        .unwrap_or_default();
    for want in ["nodes.a.depends_on", "nodes.c.input.x", "nodes.c.kind"] {
        assert!(fields.contains(&want), "{want} missing: {body}");
    }
    let (status, _) = run.get("/v1/workflows/broken/versions").await?;
    assert_eq!(status, 404, "nothing of it was stored");
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_graph_of_engine_kinds_runs_without_a_worker() -> Result<()> {
    let mut run = start().await?;
    let yaml = r#"
name: calc
version: 1
inputs: {type: object, required: [n]}
nodes:
  double:
    kind: transform
    input: {n: "${{ .inputs.n * 2 }}"}
  big:
    kind: condition
    depends_on: [double]
    input: "${{ .nodes.double.output.n > 5 }}"
  say:
    kind: transform
    depends_on: [big]
    when: ".nodes.big.output.result"
    input: "big: ${{ .nodes.double.output.n }}"
output: "${{ .nodes.say.output }}"
"#;
    let (status, body) = post_yaml(&run, yaml).await?;
    assert_eq!(status, 201, "{body}");
    let (status, body) = run
        .post("/v1/workflows/calc/executions", json!({"input": {"n": 4}}))
        .await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "succeeded", "{body}");
    assert_eq!(body["output"], "big: 8");
    assert_eq!(body["version"], 1);
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let (status, view) = run.get(&format!("/v1/workflow-executions/{id}")).await?;
    assert_eq!(
        (status, &view["nodes"]["say"]["status"]),
        (200, &json!("succeeded"))
    );

    // The input is checked against the `inputs` schema.
    let (status, body) = run
        .post("/v1/workflows/calc/executions", json!({"input": {}}))
        .await?;
    assert_eq!(
        (status, &body["code"]),
        (422, &json!("invalid_input")),
        "{body}"
    );
    let (status, body) = run
        .post("/v1/workflows/nothing/executions", json!({}))
        .await?;
    assert_eq!(
        (status, &body["code"]),
        (404, &json!("unknown_workflow")),
        "{body}"
    );
    let (status, _) = run.get("/v1/workflow-executions/nope").await?;
    assert_eq!(status, 404);
    let (status, list) = run.get("/v1/workflow-executions?workflow=calc").await?;
    assert_eq!(status, 200);
    assert_eq!(list["items"][0]["id"], id.as_str(), "{list}");
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_workflow_node_runs_a_sub_workflow_and_takes_its_output() -> Result<()> {
    let mut run = start().await?;
    let child = r#"
name: calc
version: 1
inputs: {type: object, required: [n], properties: {n: {type: number}}}
nodes:
  double: {kind: transform, input: {n: "${{ .inputs.n * 2 }}"}}
  fail:
    kind: transform
    depends_on: [double]
    when: ".inputs.n > 100"
    input: "${{ error(\"too big\") }}"
output: "${{ .nodes.double.output.n }}"
"#;
    let parent = r#"
name: outer
version: 1
nodes:
  inner:
    kind: workflow
    input: {workflow: calc, input: {n: "${{ .inputs.n }}"}}
  after:
    kind: transform
    depends_on: [inner]
    input: "got ${{ .nodes.inner.output }}"
output: "${{ .nodes.after.output }}"
"#;
    for yaml in [child, parent] {
        let (status, body) = post_yaml(&run, yaml).await?;
        assert_eq!(status, 201, "{body}");
    }
    let ended = |id: String| {
        let run = &run;
        async move {
            runlog_testkit::eventually(
                std::time::Duration::from_secs(20),
                "the workflow ends",
                || {
                    let id = id.clone();
                    async move {
                        let (_, view) = run.get(&format!("/v1/workflow-executions/{id}")).await?;
                        let done = !matches!(view["status"].as_str(), Some("running" | "new"));
                        Ok(done.then_some(view))
                    }
                },
            )
            .await
        }
    };
    let (_, started) = run
        .post("/v1/workflows/outer/executions", json!({"input": {"n": 4}}))
        .await?;
    let view = ended(started["id"].as_str().unwrap_or_default().to_owned()).await?;
    assert_eq!(view["status"], "succeeded", "{view}");
    assert_eq!(view["output"], "got 8");
    let child_id = view["nodes"]["inner"]["runs"][0]["execution"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (status, child_view) = run
        .get(&format!("/v1/workflow-executions/{child_id}"))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(child_view["workflow"], "calc");
    assert_eq!(child_view["input"], json!({"n": 4}));

    // A child that fails fails its node, and so the parent.
    let (_, started) = run
        .post(
            "/v1/workflows/outer/executions",
            json!({"input": {"n": 500}}),
        )
        .await?;
    let view = ended(started["id"].as_str().unwrap_or_default().to_owned()).await?;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["failed_node"], "inner");
    let reason = view["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("too big"), "{reason}");
    // A child refused at its start (the input misses `n`): the node fails
    // with the reason.
    let (_, started) = run
        .post("/v1/workflows/outer/executions", json!({"input": {}}))
        .await?;
    let view = ended(started["id"].as_str().unwrap_or_default().to_owned()).await?;
    assert_eq!(view["status"], "failed", "{view}");
    let reason = view["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("inputs schema"), "{reason}");

    // A cancel of the parent reaches the child, which waits for a signal.
    for yaml in [
        "name: hold\nversion: 1\nnodes:\n  approval: {kind: wait}\n",
        "name: holder\nversion: 1\nnodes:\n  inner: {kind: workflow, input: {workflow: hold}}\n",
    ] {
        let (status, body) = post_yaml(&run, yaml).await?;
        assert_eq!(status, 201, "{body}");
    }
    let (_, started) = run
        .post("/v1/workflows/holder/executions", json!({}))
        .await?;
    let id = started["id"].as_str().unwrap_or_default().to_owned();
    let child_id =
        runlog_testkit::eventually(std::time::Duration::from_secs(20), "the child runs", || {
            let id = id.clone();
            let run = &run;
            async move {
                let (_, view) = run.get(&format!("/v1/workflow-executions/{id}")).await?;
                Ok(view["nodes"]["inner"]["runs"][0]["execution"]
                    .as_str()
                    .map(str::to_owned))
            }
        })
        .await?;
    let (status, body) = run
        .post(&format!("/v1/workflow-executions/{id}/cancel"), json!({}))
        .await?;
    assert_eq!(status, 202, "{body}");
    let view = ended(id.clone()).await?;
    assert_eq!(view["status"], "cancelled", "{view}");
    let (_, child) = run
        .get(&format!("/v1/workflow-executions/{child_id}"))
        .await?;
    assert_eq!(child["status"], "cancelled", "{child}");
    assert_eq!(child["nodes"]["approval"]["status"], "cancelled", "{child}");
    run.stop().await;
    Ok(())
}
