//! The `script` executor against real python3, node and sh processes.

use std::collections::BTreeMap;
use std::time::Duration;

use runlog_events::{ErrorClass, ExecutionId};
use runlog_worker::executor::ScriptExecutor;
use runlog_worker::handler::{Context, Handler, HandlerResult};
use serde_json::{Value, json};

async fn run_with(input: Value, env: BTreeMap<String, String>) -> HandlerResult {
    let (ctx, _telemetry) =
        Context::builder(ExecutionId::new("script-test").unwrap(), 1, "script", input)
            .env(env)
            .build();
    tokio::time::timeout(Duration::from_secs(30), ScriptExecutor.run(ctx))
        .await
        .expect("the script ended in time")
}

async fn run(input: Value) -> HandlerResult {
    run_with(input, BTreeMap::new()).await
}

#[tokio::test]
async fn each_language_reads_json_on_stdin_and_prints_json() {
    let input = json!({"items": [1, 2, 3]});
    let scripts = [
        (
            "python3",
            "import json,sys; d=json.load(sys.stdin); print(json.dumps({'n': len(d['items'])}))",
        ),
        (
            "node",
            "let s='';process.stdin.on('data',c=>s+=c).on('end',()=>console.log(JSON.stringify({n: JSON.parse(s).items.length})))",
        ),
        (
            "sh",
            r#"read line; echo "{\"n\": $(echo "$line" | tr -cd ',' | wc -c)}""#,
        ),
    ];
    for (language, code) in scripts {
        let output = run(json!({"language": language, "code": code, "input": input}))
            .await
            .unwrap_or_else(|e| panic!("{language}: {e:?}"));
        let expected = if language == "sh" { 2 } else { 3 };
        assert_eq!(output, json!({"n": expected}), "{language}");
    }
    // Nothing printed: the output is null.
    assert_eq!(
        run(json!({"language": "sh", "code": "true"}))
            .await
            .unwrap(),
        Value::Null
    );
}

#[tokio::test]
async fn a_script_sees_only_the_environment_it_names() {
    let env = BTreeMap::from([
        ("API_TOKEN".to_owned(), "s3cret".to_owned()),
        ("OTHER_SECRET".to_owned(), "hidden".to_owned()),
    ]);
    let code = r#"import json,os; print(json.dumps({k: os.environ.get(k) for k in ["API_TOKEN", "OTHER_SECRET", "HOME"]}))"#;
    let output = run_with(
        json!({"language": "python3", "code": code, "env": ["API_TOKEN"]}),
        env.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        output,
        json!({"API_TOKEN": "s3cret", "OTHER_SECRET": null, "HOME": null})
    );
    let error = run_with(
        json!({"language": "sh", "code": "true", "env": ["NOPE"]}),
        env,
    )
    .await
    .unwrap_err();
    assert_eq!(error.class, ErrorClass::InvalidInput);
    assert!(error.message.contains("\"NOPE\""), "{}", error.message);
}

#[tokio::test]
async fn limits_and_failures_are_typed_errors() {
    // Over its memory limit: python3 cannot allocate 512 MiB in 64.
    let error = run(json!({
        "language": "python3",
        "code": "x = bytearray(512 * 1024 * 1024)",
        "memory_mb": 64,
    }))
    .await
    .unwrap_err();
    assert!(error.message.contains("MemoryError"), "{}", error.message);

    let error = run(json!({"language": "sh", "code": "echo not json"}))
        .await
        .unwrap_err();
    assert_eq!(error.class, ErrorClass::Permanent);
    assert!(
        error.message.contains("did not print JSON"),
        "{}",
        error.message
    );

    let error = run(json!({"language": "sh", "code": "echo oops >&2; exit 3"}))
        .await
        .unwrap_err();
    assert!(
        error.message.contains("exited with code 3"),
        "{}",
        error.message
    );
    assert!(error.message.contains("oops"), "{}", error.message);

    for bad in [
        json!({"language": "ruby", "code": "1"}),
        json!({"language": "sh"}),
        json!({"language": "sh", "code": "true", "memory_mb": 0}),
        json!({"language": "sh", "code": "true", "extra": 1}),
    ] {
        let error = run(bad.clone()).await.unwrap_err();
        assert_eq!(
            error.class,
            ErrorClass::InvalidInput,
            "{bad}: {}",
            error.message
        );
        assert!(
            error.message.starts_with("script input"),
            "{}",
            error.message
        );
    }
}
