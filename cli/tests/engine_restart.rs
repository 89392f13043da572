//! Kill -9 the engine with 1,000 executions spread over every state, start
//! it again: every projected state equals a fresh fold of its events, none
//! is lost or dispatched twice, and pending retries and deadlines still fire.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use futures::StreamExt;
use runlog_events::decider::Command as Cmd;
use runlog_events::journal::Journal;
use runlog_events::{ErrorClass, ExecutionId, Status, Subjects, TaskError, direct};
use runlog_testkit::{NatsServer, eventually};
use serde_json::{Value, json};

struct EngineProcess {
    child: Child,
    base: String,
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn engine(nats: &str) -> Result<EngineProcess> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runlog"))
        .args(["engine", "--nats-url", nats, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("engine stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let base = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http://"))
        .with_context(|| format!("unexpected first line {line:?}"))?
        .to_owned();
    Ok(EngineProcess { child, base })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_engine_restarts_with_every_execution_intact() -> Result<()> {
    let server = NatsServer::start()?;
    let first = engine(&server.url())?;
    let client = async_nats::connect(server.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    let journal = Journal::new(js.clone(), Subjects::default(), "/test/worker");

    // 1,000 submissions through the NATS door.
    let ids: Vec<(usize, ExecutionId)> = futures::stream::iter(0..1000)
        .map(|i| {
            let client = client.clone();
            async move {
                let body = match i % 5 {
                    // Will be running with a short attempt deadline.
                    0 => json!({"kind": "shell", "attempt_timeout_ms": 2500, "retry": {"max_attempts": 1}}),
                    // Will fail and wait for a retry.
                    1 => json!({"kind": "shell", "retry": {"max_attempts": 2, "backoff_base_ms": 2000, "backoff_max_ms": 2500}}),
                    _ => json!({"kind": "shell"}),
                };
                let reply = client.request("runlog.submit.default", body.to_string().into()).await?;
                let reply: Value = serde_json::from_slice(&reply.payload)?;
                anyhow::Ok((i, ExecutionId::new(reply["id"].as_str().unwrap_or_default())?))
            }
        })
        .buffer_unordered(50)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let mut kinds = BTreeMap::new();
    for (i, id) in ids {
        kinds.insert(id, i % 5);
    }
    // Play the workers: wait until queued, then leave each in its state.
    futures::stream::iter(kinds.clone())
        .map(|(id, kind)| {
            let journal = journal.clone();
            async move {
                eventually(Duration::from_secs(60), "queued", || async {
                    let h = journal.load(&id).await?;
                    Ok((h.state.status == Status::Queued).then_some(()))
                })
                .await?;
                let claim = Cmd::Claim {
                    worker: "w1".into(),
                    redelivered: false,
                };
                let now = Utc::now();
                match kind {
                    0 => {
                        journal.transition(&id, &claim, now).await?;
                    }
                    1 => {
                        journal.transition(&id, &claim, now).await?;
                        let fail = Cmd::Fail {
                            attempt: 1,
                            error: TaskError::new(ErrorClass::Network, "down"),
                        };
                        journal.transition(&id, &fail, now).await?;
                    }
                    2 => {
                        journal.transition(&id, &claim, now).await?;
                        let done = Cmd::Succeed {
                            attempt: 1,
                            output: json!("ok"),
                        };
                        journal.transition(&id, &done, now).await?;
                    }
                    3 => {
                        let cancel = Cmd::RequestCancel {
                            reason: "test".into(),
                            operation: None,
                        };
                        journal.transition(&id, &cancel, now).await?;
                    }
                    _ => {}
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(50)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;

    // Kill -9 while retries and deadlines are pending.
    drop(first);
    let second = engine(&server.url())?;
    let http = reqwest::Client::new();

    // Pending retries fire (attempt 2 queued), deadlines fire (dead-lettered).
    for (id, kind) in &kinds {
        let want = match kind {
            0 => Some(Status::DeadLettered),
            1 => Some(Status::Queued),
            2 => Some(Status::Succeeded),
            3 => Some(Status::Cancelled),
            _ => Some(Status::Queued),
        };
        let reached = eventually(
            Duration::from_secs(60),
            &format!("{id} reaches {want:?}"),
            || async {
                let h = journal.load(id).await?;
                Ok(
                    (Some(h.state.status) == want && (*kind != 1 || h.state.attempt == 2))
                        .then_some(()),
                )
            },
        )
        .await;
        if let Err(e) = reached {
            let h = journal.load(id).await?;
            let types: Vec<_> = h
                .events
                .iter()
                .map(|r| (r.seq, r.envelope.event_type().as_str(), r.envelope.time))
                .collect();
            bail!("{e}: {types:?} now {}", Utc::now());
        }
    }

    // The projection of the restarted engine equals a fresh fold.
    let projected: BTreeMap<String, Value> = eventually(
        Duration::from_secs(30),
        "the projection holds all",
        || async {
            let mut all = BTreeMap::new();
            let mut cursor: Option<u64> = None;
            loop {
                let mut url = format!("{}/v1/executions?limit=1000", second.base);
                if let Some(c) = cursor {
                    url.push_str(&format!("&cursor={c}"));
                }
                let page: Value = http.get(url).send().await?.json().await?;
                for e in page["executions"].as_array().context("no executions")? {
                    let id = e["id"].as_str().context("an execution without an id")?;
                    all.insert(id.to_owned(), e.clone());
                }
                match page["next_cursor"].as_u64() {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            let settled = kinds.iter().all(|(id, kind)| {
                let status = all
                    .get(id.as_str())
                    .and_then(|e| e["status"].as_str())
                    .unwrap_or("");
                match kind {
                    0 => status == "dead_lettered",
                    1 => status == "queued",
                    2 => status == "succeeded",
                    3 => status == "cancelled",
                    _ => status == "queued",
                }
            });
            Ok((all.len() == 1000 && settled).then_some(all))
        },
    )
    .await?;
    for id in kinds.keys() {
        let folded = journal.load(id).await?;
        let view = &projected[id.as_str()];
        assert_eq!(view["status"], json!(folded.state.status), "{id}");
        assert_eq!(view["attempt"], json!(folded.state.attempt), "{id}");
        assert_eq!(view["last_seq"], json!(folded.last_seq), "{id}");
    }

    // Exactly one work item (`queued` event) per queued attempt: none
    // lost, none twice.
    let mut items: BTreeMap<(String, u32), usize> = BTreeMap::new();
    let limits = runlog_events::codec::Limits::default();
    direct::read(
        &client,
        "RUNLOG_EXEC",
        "runlog.ev.*.queued.>",
        1,
        usize::MAX,
        |m| {
            if let Ok(queued) = runlog_events::codec::decode(&m.headers, &m.payload, &limits) {
                *items
                    .entry((queued.execution.to_string(), queued.attempt))
                    .or_default() += 1;
            }
        },
    )
    .await?;
    let twice: Vec<_> = items.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "dispatched twice: {twice:?}");
    let mut expected = BTreeSet::new();
    for (id, kind) in &kinds {
        expected.insert((id.to_string(), 1));
        if *kind == 1 {
            expected.insert((id.to_string(), 2));
        }
    }
    let got: BTreeSet<_> = items.keys().cloned().collect();
    assert_eq!(got, expected, "one work item for every queued attempt");
    drop(second);
    Ok(())
}
