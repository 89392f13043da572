//! Schedules through the API, on a real nats-server: every change is an
//! event, bad input names its field, the view shows the next ticks.

mod common;

use anyhow::Result;
use common::start;
use serde_json::{Value, json};

async fn call(
    run: &common::Running,
    method: &str,
    path: &str,
    body: Value,
) -> Result<(u16, Value)> {
    let url = format!("{}{path}", run.base);
    let request = match method {
        "PUT" => run.http.put(url).json(&body),
        "DELETE" => run.http.delete(url),
        _ => run.http.post(url).json(&body),
    };
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

#[tokio::test]
async fn a_schedule_is_created_read_replaced_paused_resumed_and_deleted() -> Result<()> {
    let mut run = start().await?;
    let spec = json!({
        "id": "nightly",
        "cron": "0 30 2 * * *",
        "time_zone": "Europe/Berlin",
        "task": {"kind": "shell", "input": {"shell": "restic backup /srv"}, "queue": "backups"},
        "description": "the nightly backup",
    });
    let (status, body) = run.post("/v1/schedules", spec.clone()).await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "active");
    let next = body["next_ticks"].as_array().cloned().unwrap_or_default();
    assert_eq!(next.len(), 5, "{body}");
    // 02:30 in Berlin is 00:30 or 01:30 UTC.
    assert!(
        next.iter()
            .all(|t| t.as_str().is_some_and(|t| t.ends_with(":30:00Z"))),
        "{next:?}"
    );
    let (status, body) = run.post("/v1/schedules", spec.clone()).await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("exists")),
        "{body}"
    );

    let (status, body) = run.get("/v1/schedules").await?;
    assert_eq!(status, 200);
    assert_eq!(body["schedules"][0]["id"], "nightly");

    let mut changed = spec.clone();
    changed["cron"] = json!("0 0 3 * * *");
    let (status, body) = call(&run, "PUT", "/v1/schedules/nightly", changed).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["spec"]["cron"], "0 0 3 * * *");

    let (status, body) = run
        .post(
            "/v1/schedules/nightly/pause",
            json!({"reason": "maintenance"}),
        )
        .await?;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("paused")),
        "{body}"
    );
    assert_eq!(body["next_ticks"], json!([]));
    let (status, body) = run.post("/v1/schedules/nightly/resume", json!({})).await?;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("active")),
        "{body}"
    );

    let (status, _) = call(&run, "DELETE", "/v1/schedules/nightly", Value::Null).await?;
    assert_eq!(status, 200);
    let (status, body) = run.post("/v1/schedules/nightly/pause", json!({})).await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (_, body) = run.get("/v1/schedules").await?;
    assert_eq!(body["schedules"], json!([]));

    // Every change is in the schedule's own log.
    let (status, body) = run.get("/v1/schedules/nightly/events").await?;
    assert_eq!(status, 200);
    let types: Vec<&str> = body["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        types,
        ["created", "updated", "paused", "resumed", "deleted"]
    );
    run.stop().await;
    Ok(())
}

#[tokio::test]
async fn bad_schedules_are_refused_naming_the_field() -> Result<()> {
    let mut run = start().await?;
    let task = json!({"kind": "shell", "input": {"shell": "true"}});
    for (body, field) in [
        (json!({"cron": "* * *", "task": task}), "cron"),
        (json!({"cron": "61 * * * *", "task": task}), "cron"),
        (
            json!({"cron": "* * * * *", "time_zone": "Mars/Olympus", "task": task}),
            "time_zone",
        ),
        (
            json!({"every": "1m", "start_at": "2026-02-01T00:00:00Z", "end_at": "2026-01-01T00:00:00Z", "task": task}),
            "end_at",
        ),
        (json!({"every": "100ms", "task": task}), "every"),
        (json!({"every": "soon", "task": task}), "every"),
        (json!({"every": "1m"}), "task"),
        (
            json!({"every": "1m", "task": {"kind": "shell", "retyr": {}}}),
            "task.retyr",
        ),
        (
            json!({"every": "1m", "task": task, "overlap": "sometimes"}),
            "overlap",
        ),
        (json!({"id": "a.b", "every": "1m", "task": task}), "id"),
    ] {
        let (status, reply) = run.post("/v1/schedules", body.clone()).await?;
        assert_eq!(status, 422, "{body} → {reply}");
        assert_eq!(reply["code"], "invalid_schedule", "{reply}");
        assert_eq!(reply["field"], field, "{body} → {reply}");
    }
    let (status, reply) = run.post("/v1/schedules", json!("not an object")).await?;
    assert_eq!(status, 422, "{reply}");
    let response = run
        .http
        .post(format!("{}/v1/schedules", run.base))
        .body("{garbage")
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 400);
    let (status, _) = run.get("/v1/schedules/none-such").await?;
    assert_eq!(status, 404);
    run.stop().await;
    Ok(())
}
