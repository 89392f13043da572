//! The audit trail: every state-changing command, who sent it, from where,
//! when, and how it was answered, in the `<P>_AUDIT` stream.
//!
//! The HTTP API records every `POST`, `PUT`, `PATCH` and `DELETE` (a layer
//! around the router, so no route can forget it), one record each; the
//! NATS doors record how many submissions they accepted and refused, once
//! a second ([`DoorTally`]), since each submission is in the log anyway. Records go through a channel to one writer, which appends
//! whatever is waiting as one message (`{"records": [...]}`): a busy intake
//! costs one audit append per batch, not one per submission. Reads
//! (`GET /v1/audit`) walk the stream backwards, newest first, like the log
//! search.
//!
//! The actor is the name of the request's API token (`anonymous` with auth
//! off, and for a request that carried no valid token); `from` is the peer
//! address, with `X-Forwarded-For` kept beside it (a proxy's word, not
//! proof). Records never hold bodies, so no secret reaches the trail.

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream;
use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use runlog_events::Subjects;
use runlog_events::direct::{self, DirectGetError};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Records waiting for the writer at most; a full channel makes commands
/// wait for the trail instead of leaving it.
const WAITING: usize = 10_000;
/// Records per appended message at most.
const PER_MESSAGE: usize = 500;

/// One state-changing command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When it was answered.
    pub time: DateTime<Utc>,
    /// Who sent it: the API token's name (`anonymous` without one).
    pub actor: String,
    /// `http` or `nats`.
    pub door: String,
    /// The peer address (HTTP) or the subject's client (`nats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// `X-Forwarded-For`, as a proxy sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_for: Option<String>,
    /// `User-Agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// `POST`, `PUT`, `DELETE`, ... (`PUB` on NATS).
    pub method: String,
    /// The route (`/v1/executions/{id}/cancel`) or the subject pattern.
    pub route: String,
    /// The path or subject as sent.
    pub path: String,
    /// The answer: an HTTP status (NATS: 200 accepted, 400 refused).
    pub status: u16,
    /// The execution, schedule, server, ... the command created or named,
    /// when the answer or the path says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// How many requests the record stands for: the NATS doors are
    /// summarised, one record per door, answer and second (absent: one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// The requests a NATS door answered, recorded once a second as two
/// records (accepted, refused): a door that takes thousands of
/// submissions a second would otherwise write as much to the trail as to
/// the log, where each submission is recorded anyway.
#[derive(Debug, Clone)]
pub struct DoorTally {
    counts: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>,
}

impl DoorTally {
    /// A tally of the door on `subject`, recorded into `audit` every second
    /// until `shutdown` (and once more then).
    pub fn start(audit: Audit, subject: String, shutdown: CancellationToken) -> DoorTally {
        let tally = DoorTally {
            counts: Default::default(),
        };
        let counts = tally.counts.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                let stop = tokio::select! {
                    _ = every.tick() => false,
                    _ = shutdown.cancelled() => true,
                };
                for (i, status) in [(0, 200), (1, 400)] {
                    let n = counts[i].swap(0, std::sync::atomic::Ordering::Relaxed);
                    if n > 0 {
                        audit.record(Record::door(&subject, status, n)).await;
                    }
                }
                if stop {
                    return;
                }
            }
        });
        tally
    }

    /// One request answered.
    pub fn count(&self, refused: bool) {
        self.counts[usize::from(refused)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Record {
    /// The summary of `count` requests of a NATS door answered with
    /// `status`.
    fn door(subject: &str, status: u16, count: u64) -> Record {
        Record {
            time: Utc::now(),
            actor: "anonymous".to_owned(),
            door: "nats".to_owned(),
            from: None,
            forwarded_for: None,
            user_agent: None,
            method: "PUB".to_owned(),
            route: subject.to_owned(),
            path: subject.to_owned(),
            status,
            target: None,
            count: Some(count),
        }
    }
}

/// What the trail's records are sent to.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: mpsc::Sender<Record>,
}

impl Audit {
    /// A trail and its writer, which appends to `<P>_AUDIT` through `js`
    /// until `shutdown` (and what is waiting then).
    pub fn start(
        js: jetstream::Context,
        subjects: &Subjects,
        shutdown: CancellationToken,
    ) -> (Audit, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(WAITING);
        let writer = write(js, subjects.audit(), rx, shutdown);
        (Audit { tx }, writer)
    }

    /// Records `record` (waits while the writer is behind).
    pub async fn record(&self, record: Record) {
        if self.tx.send(record).await.is_err() {
            tracing::warn!("the audit writer stopped; a record is lost");
        }
    }
}

async fn write(
    js: jetstream::Context,
    subject: String,
    mut rx: mpsc::Receiver<Record>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(PER_MESSAGE);
    loop {
        let first = tokio::select! {
            first = rx.recv() => first,
            _ = shutdown.cancelled() => {
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { return };
        batch.push(first);
        while batch.len() < PER_MESSAGE {
            match rx.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        let body = serde_json::json!({ "records": batch }).to_string();
        let mut pause = Duration::from_millis(100);
        loop {
            let appended = async {
                js.publish(subject.clone(), body.clone().into())
                    .await?
                    .await
                    .map_err(async_nats::Error::from)
            };
            match appended.await {
                Ok(_) => break,
                Err(e) if !shutdown.is_cancelled() || pause < Duration::from_secs(2) => {
                    tracing::warn!(error = %e, records = batch.len(), "cannot append to the audit trail; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(error = %e, records = batch.len(), "stopping with audit records not appended");
                    return;
                }
            }
        }
        batch.clear();
    }
}

/// The layer of the HTTP API: records every request that changes state,
/// and every request refused for its token (401, 403), reads too.
pub async fn layer(State(audit): State<Audit>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let reads = matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let path = request.uri().path().to_owned();
    let from = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string());
    let headers = request.headers();
    let forwarded_for = header(headers, "x-forwarded-for");
    let user_agent = header(headers, "user-agent");
    let response = next.run(request).await;
    let status = response.status().as_u16();
    if reads && !matches!(status, 401 | 403) {
        return response;
    }
    let actor = response
        .extensions()
        .get::<crate::tokens::Caller>()
        .map_or_else(|| "anonymous".to_owned(), |c| c.actor.clone());
    let (response, created) = created_id(response).await;
    let target = created.or_else(|| named_in(route.as_deref(), &path));
    audit
        .record(Record {
            time: Utc::now(),
            actor,
            door: "http".to_owned(),
            from,
            forwarded_for,
            user_agent,
            method: method.to_string(),
            route: route.unwrap_or_else(|| path.clone()),
            path,
            status,
            target,
            count: None,
        })
        .await;
    response
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(256).collect())
}

/// The `id` (or `name`) a JSON answer names at its top level, with the
/// response rebuilt around the body read.
async fn created_id(response: Response) -> (Response, Option<String>) {
    let json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return (response, None);
    }
    let (parts, body) = response.into_parts();
    // A JSON answer is already whole in memory: reading it costs no wait.
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return (Response::from_parts(parts, Body::empty()), None);
    };
    let id = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            ["id", "name"]
                .iter()
                .find_map(|k| v.get(k).and_then(|x| x.as_str()).map(str::to_owned))
        });
    (Response::from_parts(parts, Body::from(bytes)), id)
}

/// The first path parameter of `route` (`/v1/servers/{name}` → the name).
fn named_in(route: Option<&str>, path: &str) -> Option<String> {
    let route = route?;
    route
        .split('/')
        .zip(path.split('/'))
        .find(|(r, _)| r.starts_with('{'))
        .map(|(_, p)| p.to_owned())
}

/// Filters of [`read`].
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only routes containing this (`/cancel`, `/v1/schedules`).
    pub route: Option<String>,
    /// Only this method.
    pub method: Option<String>,
    /// Only this target.
    pub target: Option<String>,
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
}

impl AuditFilter {
    fn matches(&self, r: &Record) -> bool {
        self.actor.as_ref().is_none_or(|a| *a == r.actor)
            && self
                .route
                .as_ref()
                .is_none_or(|x| r.route.contains(x.as_str()))
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.eq_ignore_ascii_case(&r.method))
            && self
                .target
                .as_ref()
                .is_none_or(|t| r.target.as_ref() == Some(t))
            && self.since.is_none_or(|t| r.time >= t)
            && self.until.is_none_or(|t| r.time < t)
    }
}

/// The newest `limit` records matching `filter`, newest first.
pub async fn read(
    js: &jetstream::Context,
    subjects: &Subjects,
    filter: &AuditFilter,
    limit: usize,
) -> Result<Vec<Record>, DirectGetError> {
    let stream = subjects.audit_stream();
    let (first, last, held) = direct::bounds(js, &stream).await?;
    let mut found = Vec::new();
    if held == 0 {
        return Ok(found);
    }
    let subject = subjects.audit();
    for (lo, hi) in direct::backwards(first, last, 64, 1024) {
        let mut chunk = Vec::new();
        let mut older = false;
        direct::read(
            &js.client(),
            &stream,
            &subject,
            lo,
            (hi - lo + 1) as usize,
            |stored| {
                if stored.seq > hi {
                    return;
                }
                #[derive(Deserialize)]
                struct Batch {
                    records: Vec<Record>,
                }
                if let Ok(batch) = serde_json::from_slice::<Batch>(&stored.payload) {
                    for record in batch.records {
                        older |= filter.since.is_some_and(|t| record.time < t);
                        if filter.matches(&record) {
                            chunk.push(record);
                        }
                    }
                }
            },
        )
        .await?;
        found.extend(chunk.into_iter().rev().take(limit - found.len().min(limit)));
        if found.len() >= limit || older {
            break;
        }
    }
    found.truncate(limit);
    Ok(found)
}
