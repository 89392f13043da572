//! `/v1/secrets` against a real nats-server: values go in sealed and never
//! come back out; rotation seals everything again under a new key.

mod common;

use std::io::Write;

use anyhow::Result;
use common::start_with;
use runlog_events::sealing::Keyring;
use runlog_testkit::NatsServer;
use serde_json::json;

const VALUE: &str = "correct-horse-battery-staple";

async fn put(run: &common::Running, name: &str, body: serde_json::Value) -> Result<(u16, String)> {
    let response = run
        .http
        .put(format!("{}/v1/secrets/{name}", run.base))
        .json(&body)
        .send()
        .await?;
    Ok((response.status().as_u16(), response.text().await?))
}

async fn delete(run: &common::Running, name: &str) -> Result<u16> {
    let response = run
        .http
        .delete(format!("{}/v1/secrets/{name}", run.base))
        .send()
        .await?;
    Ok(response.status().as_u16())
}

/// Every byte of a bucket's stream, as text.
async fn bucket_bytes(run: &common::Running, bucket: &str) -> Result<String> {
    let mut stream = run.js.get_stream(format!("KV_{bucket}")).await?;
    let last = stream.info().await?.state.last_sequence;
    let mut all = String::new();
    for seq in 1..=last {
        if let Ok(message) = stream.get_raw_message(seq).await {
            all.push_str(&String::from_utf8_lossy(&message.payload));
        }
    }
    Ok(all)
}

#[tokio::test]
async fn secrets_are_set_listed_without_values_and_removed() -> Result<()> {
    let mut run = start_with(NatsServer::start()?, |_| {}).await?;
    let (status, body) = put(&run, "db-password", json!({"value": VALUE})).await?;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(VALUE), "{body}");
    let key = Keyring::load(run.key.path())?.ids()[0].clone();
    assert!(body.contains(&key), "{body}");

    let (status, list) = run.get("/v1/secrets").await?;
    assert_eq!(status, 200);
    assert_eq!(list["secrets"][0]["name"], "db-password");
    assert_eq!(list["secrets"][0]["key"], key.as_str());
    assert!(list["secrets"][0]["updated_at"].is_string());
    assert!(!list.to_string().contains(VALUE));
    // At rest: sealed.
    assert!(!bucket_bytes(&run, "runlog-secrets").await?.contains(VALUE));

    // Bad input is refused without echoing the value.
    let (status, body) = put(&run, "a%2Fb", json!({"value": VALUE})).await?;
    assert_eq!(status, 422, "{body}");
    let (status, body) = put(&run, "x", json!({"value": VALUE, "extra": 1})).await?;
    assert_eq!(status, 422, "{body}");
    assert!(!body.contains(VALUE), "{body}");
    let (status, body) = put(&run, "x", json!({"value": "v".repeat(70_000)})).await?;
    assert_eq!(status, 422, "{body}");

    assert_eq!(delete(&run, "db-password").await?, 200);
    assert_eq!(delete(&run, "db-password").await?, 404);
    let (_, list) = run.get("/v1/secrets").await?;
    assert_eq!(list["secrets"], json!([]));
    // Changes are audited by name, never by value.
    let (_, audit) = run.get("/v1/audit").await?;
    let audit = audit.to_string();
    assert!(audit.contains("/v1/secrets/{name}"), "{audit}");
    assert!(!audit.contains(VALUE));
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_engine_without_a_key_refuses_secrets_and_environment_values() -> Result<()> {
    let mut run = start_with(NatsServer::start()?, |c| c.secret_key_file = None).await?;
    let (status, body) = put(&run, "db-password", json!({"value": VALUE})).await?;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("no_secret_key"), "{body}");
    let (status, body) = run
        .post(
            "/v1/executions",
            json!({"kind": "shell", "env": {"TOKEN": VALUE}}),
        )
        .await?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "env");
    assert!(!body.to_string().contains(VALUE));
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn rotation_seals_secrets_and_environments_again_under_the_new_key() -> Result<()> {
    let mut first = start_with(NatsServer::start()?, |_| {}).await?;
    let (status, _) = put(&first, "api-token", json!({"value": VALUE})).await?;
    assert_eq!(status, 200);
    let (status, body) = first
        .post(
            "/v1/executions",
            json!({"kind": "shell", "env": {"TOKEN": "env-value-1234"}}),
        )
        .await?;
    assert_eq!(status, 201, "{body}");
    let sealed_id = body["id"].as_str().unwrap().to_owned();
    // An environment an engine wrote before environments were sealed.
    let env = first.js.get_key_value("runlog-env").await?;
    env.put(
        "legacy-exec",
        br#"{"OLD":"plain-value-5678"}"#.to_vec().into(),
    )
    .await?;
    let old_key = std::fs::read_to_string(first.key.path())?;
    first.stop().await;
    let common::Running { server, .. } = first;

    // The new key goes first; the old one stays below until rotated.
    let new_key = Keyring::generate_line();
    let dir = tempfile::tempdir()?;
    let ring_file = dir.path().join("secret.key");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&ring_file)?;
        write!(file, "{new_key}\n# retired\n{old_key}")?;
    }
    let ring_file_for_engine = ring_file.clone();
    let mut second = start_with(server, move |c| {
        c.secret_key_file = Some(ring_file_for_engine)
    })
    .await?;
    let (_, list) = second.get("/v1/secrets").await?;
    let new_id = Keyring::parse(&new_key)?.ids()[0].clone();
    assert_ne!(list["secrets"][0]["key"], new_id.as_str());

    let (status, rotation) = second.post("/v1/secrets/rotate", json!({})).await?;
    assert_eq!(status, 200, "{rotation}");
    assert_eq!(rotation["key"], new_id.as_str());
    assert_eq!(rotation["secrets"], 1);
    assert_eq!(rotation["environments"], 1);
    assert_eq!(rotation["plain_environments"], 1);
    assert_eq!(rotation["unreadable"], json!([]));
    let (_, list) = second.get("/v1/secrets").await?;
    assert_eq!(list["secrets"][0]["key"], new_id.as_str());

    // The new key alone now opens everything.
    let only_new = Keyring::parse(&new_key)?;
    let secrets = second.js.get_key_value("runlog-secrets").await?;
    let value = runlog_events::secrets::read(&secrets, &only_new, "api-token").await?;
    assert_eq!(value.as_deref().map(String::as_str), Some(VALUE));
    let env = second.js.get_key_value("runlog-env").await?;
    for (id, name, value) in [
        (sealed_id.as_str(), "TOKEN", "env-value-1234"),
        ("legacy-exec", "OLD", "plain-value-5678"),
    ] {
        let sealed = env.get(id).await?.unwrap();
        let exec = runlog_events::ExecutionId::new(id)?;
        let opened = runlog_events::secrets::open_env(&only_new, &exec, &sealed)?;
        assert_eq!(opened[name], value);
    }
    // A second rotation has nothing left to do.
    let (_, again) = second.post("/v1/secrets/rotate", json!({})).await?;
    assert_eq!(again["secrets"], 0);
    assert_eq!(again["environments"], 0);
    second.stop().await;
    Ok(())
}
