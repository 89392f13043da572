//! A real nats-server and a real engine for the engine's integration tests.
#![allow(dead_code)]

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use async_nats::jetstream;
use runlog_engine::{Engine, EngineConfig};
use runlog_events::journal::Journal;
use runlog_events::{ExecutionId, Status, Subjects};
use runlog_testkit::{NatsServer, SecretKey, eventually};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub struct Running {
    pub server: NatsServer,
    pub engine: Option<Engine>,
    pub shutdown: CancellationToken,
    pub http: reqwest::Client,
    pub base: String,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub journal: Journal,
    pub subjects: Subjects,
    /// The engine's secret key file.
    pub key: SecretKey,
}

pub async fn start() -> Result<Running> {
    let server = NatsServer::start()?;
    start_on(server).await
}

pub async fn start_on(server: NatsServer) -> Result<Running> {
    start_with(server, |_| {}).await
}

pub async fn start_with(
    server: NatsServer,
    tune: impl FnOnce(&mut EngineConfig),
) -> Result<Running> {
    let key = SecretKey::new()?;
    let mut config = EngineConfig::local(&server.url());
    config.secret_key_file = key.file();
    tune(&mut config);
    let shutdown = CancellationToken::new();
    let engine = Engine::start(config, shutdown.clone()).await?;
    let base = format!("http://{}", engine.addr());
    let client = async_nats::connect(server.url()).await?;
    let js = jetstream::new(client.clone());
    let journal = Journal::new(js.clone(), Subjects::default(), "/test/worker");
    Ok(Running {
        server,
        engine: Some(engine),
        shutdown,
        http: reqwest::Client::new(),
        base,
        client,
        js,
        journal,
        subjects: Subjects::default(),
        key,
    })
}

impl Running {
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(engine) = self.engine.take() {
            engine.wait().await;
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<(u16, Value)> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let response = self.http.get(format!("{}{path}", self.base)).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// Submits over HTTP; returns the id.
    pub async fn submit(&self, body: Value) -> Result<ExecutionId> {
        let (status, reply) = self.post("/v1/executions", body).await?;
        if status != 201 && status != 200 {
            bail!("submit answered {status}: {reply}");
        }
        Ok(ExecutionId::new(reply["id"].as_str().unwrap_or_default())?)
    }

    /// Waits until the log says `exec` is in `status` (at `attempt`, if
    /// given).
    pub async fn wait_status(
        &self,
        exec: &ExecutionId,
        status: Status,
        attempt: Option<u32>,
    ) -> Result<runlog_events::journal::History> {
        let what = format!("{exec} to reach {status}");
        eventually(Duration::from_secs(15), &what, || async {
            let history = self.journal.load(exec).await?;
            let state = &history.state;
            ensure!(
                state.status == status && attempt.is_none_or(|a| state.attempt == a),
                "it is {} at attempt {}",
                state.status,
                state.attempt
            );
            Ok(Some(history))
        })
        .await
    }
}

/// One parsed Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct Sse {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// Reads SSE events from a response until `until` says stop (or the
/// stream ends, or `limit` passes).
pub async fn read_sse(
    response: &mut reqwest::Response,
    limit: Duration,
    mut until: impl FnMut(&[Sse]) -> bool,
) -> Result<Vec<Sse>> {
    let mut events = Vec::new();
    let mut buffer = String::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if until(&events) {
            return Ok(events);
        }
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .map_err(|_| anyhow::anyhow!("SSE: no event within {limit:?}; got {events:?}"))??;
        let Some(chunk) = chunk else {
            return Ok(events);
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = Sse {
                id: None,
                event: "message".into(),
                data: Value::Null,
            };
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    event.id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event.event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            event.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
            events.push(event);
        }
    }
}
