//! Server-Sent Event feeds with exact resume.
//!
//! An SSE id is the event's stream sequence, so `Last-Event-ID` resumes a
//! feed right after the last event the client saw: the feed subscribes to
//! the live broadcast first, then catches up from the log (direct gets),
//! then follows the broadcast, dropping every sequence it already sent. No
//! gap, no duplicate, and the order of the log.
//!
//! Each client gets a bounded buffer. A client too slow to drain it stops
//! its feed task from reading the broadcast; the broadcast then reports the
//! feed lagged and the feed catches up from the log again, up to a limit,
//! after which the client gets a final `overflow` event and is closed. The
//! engine never waits for a client and never buffers without bound.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use runlog_events::codec::{self, Limits};
use runlog_events::decider::{self, Status};
use runlog_events::event::{Event, TimeoutScope};
use runlog_events::{Envelope, ExecutionId, QueueName, direct};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use super::executions::{event_json, folded, log_lines, read_logs};
use super::{ApiState, Problem};
use crate::live::Stored;

/// Events buffered per client.
const BUFFER: usize = 256;
/// Events one catch-up may replay before the client is told to reload.
const MAX_CATCH_UP: usize = 100_000;
/// Keep-alive comment interval.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

type Tx = mpsc::Sender<Result<SseEvent, Infallible>>;

/// The response of a feed; it ends when the engine shuts down.
/// (Also the workflow executions' feed.) The feed counts as open in
/// `runlog_sse_clients` until the client goes away.
pub(super) fn sse(state: &ApiState, rx: mpsc::Receiver<Result<SseEvent, Infallible>>) -> Response {
    let open = state.feeds.open();
    let stream = futures::stream::unfold((rx, open), |(mut rx, open)| async move {
        rx.recv().await.map(|item| (item, (rx, open)))
    })
    .take_until(state.shutdown.clone().cancelled_owned());
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// `Last-Event-ID` (or `?last_event_id=` for clients that cannot set it).
fn last_event_id(headers: &HeaderMap, query: Option<u64>) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .or(query)
}

fn event(seq: u64, envelope: &Envelope, state: Option<&serde_json::Value>) -> SseEvent {
    SseEvent::default()
        .id(seq.to_string())
        .event(envelope.event_type().as_str())
        .data(event_json(seq, envelope, state).to_string())
}

/// A live event: its JSON is made once for every client.
fn live_event(stored: &Stored) -> SseEvent {
    SseEvent::default()
        .id(stored.seq.to_string())
        .event(stored.envelope.event_type().as_str())
        .data(stored.json(|seq, envelope, state| event_json(seq, envelope, state).to_string()))
}

fn ends_execution(event: &Event) -> bool {
    match event {
        Event::TimedOut(t) => t.scope == TimeoutScope::Execution,
        Event::Succeeded(_) | Event::Cancelled(_) | Event::DeadLettered(_) | Event::Rejected(_) => {
            true
        }
        _ => false,
    }
}

/// Query of the SSE routes.
#[derive(Debug, Default, Deserialize)]
pub(super) struct StreamQuery {
    last_event_id: Option<u64>,
    /// `/v1/stream`: only this queue.
    queue: Option<String>,
    /// `/v1/stream`: only events leaving an execution in one of these
    /// states (comma-separated).
    status: Option<String>,
    /// `/v1/stream`: also progress reports (default true).
    progress: Option<bool>,
}

/// `GET /v1/executions/{id}/stream`: the execution's events, ending after
/// the terminal one.
pub(super) async fn execution(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Response {
    let Ok(execution) = ExecutionId::new(&id) else {
        return Problem::not_found(format!("execution {id:?}")).into_response();
    };
    let mut live = state.live.events();
    let mut last = last_event_id(&headers, q.last_event_id).unwrap_or(0);
    let history = match state.journal.load(&execution).await {
        Ok(h) if h.state.status != Status::New => h,
        Ok(_) => return Problem::not_found(format!("execution {execution}")).into_response(),
        Err(e) => return Problem::unavailable(e).into_response(),
    };
    let (tx, rx) = mpsc::channel(BUFFER);
    let response = sse(&state, rx);
    tokio::spawn(async move {
        let mut history = Some(history);
        loop {
            let recorded = match history.take() {
                Some(h) => h,
                None => match state.journal.load(&execution).await {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = tx.send(Ok(failure(e))).await;
                        return;
                    }
                },
            };
            let from = last;
            let events = folded(&execution, &recorded.events).filter(|(r, _)| r.seq > from);
            for (r, after) in events {
                if !send(&tx, event(r.seq, &r.envelope, Some(&after))).await {
                    return;
                }
                last = r.seq;
                if ends_execution(&r.envelope.event) {
                    let _ = send(&tx, end(recorded.state.status)).await;
                    return;
                }
            }
            loop {
                match live.recv().await {
                    Ok(stored) if stored.envelope.execution == execution && stored.seq > last => {
                        if !send(&tx, live_event(&stored)).await {
                            return;
                        }
                        last = stored.seq;
                        if ends_execution(&stored.envelope.event) {
                            let status = stored
                                .status()
                                .unwrap_or_else(|| decider::status_after(&stored.envelope.event));
                            let _ = send(&tx, end(status)).await;
                            return;
                        }
                    }
                    Ok(_) => {}
                    // Fell behind the broadcast: catch up from the log.
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    response
}

fn end(status: Status) -> SseEvent {
    SseEvent::default()
        .event("end")
        .data(json!({ "status": status }).to_string())
}

/// The `error` event that ends a stream, with what went wrong in words.
fn failure(reason: impl std::fmt::Display) -> SseEvent {
    SseEvent::default()
        .event("error")
        .data(json!({ "reason": reason.to_string() }).to_string())
}

async fn send(tx: &Tx, event: SseEvent) -> bool {
    tx.send(Ok(event)).await.is_ok()
}

/// `GET /v1/stream`: every execution's events (filters: `queue`,
/// `status`), and progress reports.
pub(super) async fn all(
    State(state): State<ApiState>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Response {
    let queue = match q.queue.as_deref().map(QueueName::new).transpose() {
        Ok(queue) => queue,
        Err(e) => {
            return Problem::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("queue: {e}"),
            )
            .field("queue")
            .into_response();
        }
    };
    let mut statuses = Vec::new();
    for s in q
        .status
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        match serde_json::from_value::<Status>(json!(s)) {
            Ok(status) => statuses.push(status),
            Err(_) => {
                return Problem::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!("unknown status {s:?}"),
                )
                .field("status")
                .into_response();
            }
        }
    }
    let with_progress = q.progress.unwrap_or(true);
    let mut live = state.live.events();
    let mut progress = state.live.progress();
    let mut last = last_event_id(&headers, q.last_event_id);
    let (tx, rx) = mpsc::channel(BUFFER);
    let response = sse(&state, rx);
    tokio::spawn(async move {
        // The status an event left its execution in: the fold's, where the
        // feed has it; the core's rule for the event alone otherwise.
        let wanted = |envelope: &Envelope, status: Option<Status>| -> bool {
            let status = status.unwrap_or_else(|| decider::status_after(&envelope.event));
            if !statuses.is_empty() && !statuses.contains(&status) {
                return false;
            }
            match &queue {
                None => true,
                Some(queue) => match &envelope.event {
                    Event::Submitted(s) => s.spec.queue == *queue,
                    Event::Queued(q) => q.queue == *queue,
                    _ => state
                        .projection
                        .get(&envelope.execution)
                        .and_then(|e| e.state.spec.map(|s| s.queue == *queue))
                        .unwrap_or(false),
                },
            }
        };
        let mut catch_up_from = last;
        loop {
            if let Some(from) = catch_up_from.take() {
                match catch_up(&state, from).await {
                    Ok(events) if events.len() < MAX_CATCH_UP => {
                        for (seq, envelope) in events {
                            last = Some(seq);
                            let after = state.projection.summary_at(&envelope.execution, seq);
                            let status = crate::live::status_of(after.as_ref());
                            if wanted(&envelope, status)
                                && !send(&tx, event(seq, &envelope, after.as_ref())).await
                            {
                                return;
                            }
                        }
                    }
                    Ok(_) => {
                        let _ = send(&tx, overflow()).await;
                        return;
                    }
                    Err(e) => {
                        let _ = send(&tx, failure(e)).await;
                        return;
                    }
                }
            }
            tokio::select! {
                next = live.recv() => match next {
                    Ok(stored) => {
                        if last.is_some_and(|l| stored.seq <= l) {
                            continue;
                        }
                        last = Some(stored.seq);
                        if wanted(&stored.envelope, stored.status())
                            && !send(&tx, live_event(&stored)).await
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => match last {
                        Some(l) => catch_up_from = Some(l),
                        None => {
                            let _ = send(&tx, overflow()).await;
                            return;
                        }
                    },
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                next = progress.recv(), if with_progress => match next {
                    Ok(report) => {
                        let in_queue = queue.as_ref().is_none_or(|queue| {
                            state
                                .projection
                                .get(&report.execution)
                                .and_then(|e| e.state.spec.map(|s| s.queue == *queue))
                                .unwrap_or(false)
                        });
                        if progress_wanted(in_queue, &statuses) {
                            let data = json!({
                                "execution": report.execution,
                                "attempt": report.attempt,
                                "percent": report.progress.percent,
                                "message": report.progress.message,
                                "counters": report.progress.counters,
                            });
                            let sse = SseEvent::default().event("progress").data(data.to_string());
                            // Progress is advisory: a full buffer drops it.
                            if tx.try_send(Ok(sse)).is_err() && tx.is_closed() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tx.closed() => return,
            }
        }
    });
    response
}

/// Whether a progress report passes a stream's filters: its execution is
/// in the queue asked for (or none was), and the statuses asked for, if
/// any, include `running` (progress comes only from running attempts).
fn progress_wanted(in_queue: bool, statuses: &[Status]) -> bool {
    in_queue && (statuses.is_empty() || statuses.contains(&Status::Running))
}

fn overflow() -> SseEvent {
    SseEvent::default().event("overflow").data(
        json!({
            "reason": "this client fell too far behind the live feed; reload the list and reconnect"
        })
        .to_string(),
    )
}

/// Every lifecycle event stored after `from`, at most [`MAX_CATCH_UP`].
async fn catch_up(
    state: &ApiState,
    from: u64,
) -> Result<Vec<(u64, Envelope)>, direct::DirectGetError> {
    let mut events = Vec::new();
    let limits = Limits::default();
    direct::read(
        &state.js.client(),
        &state.subjects.exec_stream(),
        &state.subjects.all_events(),
        from + 1,
        MAX_CATCH_UP,
        |stored| {
            if let Ok(envelope) = codec::decode(&stored.headers, &stored.payload, &limits) {
                events.push((stored.seq, envelope));
            }
        },
    )
    .await?;
    Ok(events)
}

/// `GET /v1/executions/{id}/logs/stream`: log batches as they are stored,
/// ending once the execution ended and its last lines were sent.
pub(super) async fn logs(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Response {
    let Ok(execution) = ExecutionId::new(&id) else {
        return Problem::not_found(format!("execution {id:?}")).into_response();
    };
    let client = state.js.client();
    let mut live_logs = match client.subscribe(state.subjects.live_log(&execution)).await {
        Ok(sub) => sub,
        Err(e) => return Problem::unavailable(e).into_response(),
    };
    let mut live = state.live.events();
    let history = match state.journal.load(&execution).await {
        Ok(h) if h.state.status != Status::New => h,
        Ok(_) => return Problem::not_found(format!("execution {execution}")).into_response(),
        Err(e) => return Problem::unavailable(e).into_response(),
    };
    let mut last = last_event_id(&headers, q.last_event_id).unwrap_or(0);
    let (tx, rx) = mpsc::channel(BUFFER);
    let response = sse(&state, rx);
    tokio::spawn(async move {
        let mut ended = history.state.status.is_terminal();
        let limits = Limits::default();
        loop {
            // Catch up from the stored batches.
            match read_logs(&state, &execution, last, 10_000).await {
                Ok((lines, upto, _)) => {
                    for (seq, batch) in group(lines) {
                        if !send(&tx, log_event(seq, batch)).await {
                            return;
                        }
                    }
                    last = last.max(upto);
                }
                Err(e) => {
                    let _ = send(&tx, failure(&e.detail)).await;
                    return;
                }
            }
            if ended {
                let _ = send(&tx, SseEvent::default().event("end").data("{}")).await;
                return;
            }
            loop {
                tokio::select! {
                    message = live_logs.next() => {
                        let Some(message) = message else { return };
                        let empty = async_nats::HeaderMap::new();
                        let headers = message.headers.as_ref().unwrap_or(&empty);
                        let seq: u64 = headers
                            .get(codec::header::SEQUENCE)
                            .and_then(|v| v.as_str().parse().ok())
                            .unwrap_or(0);
                        if seq <= last {
                            continue;
                        }
                        if let Ok(envelope) = codec::decode(headers, &message.payload, &limits)
                            && let Event::Log(batch) = &envelope.event
                        {
                            let lines = log_lines(seq, &envelope, batch);
                            if !send(&tx, log_event(seq, lines)).await {
                                return;
                            }
                        }
                        last = seq;
                    }
                    next = live.recv() => match next {
                        Ok(stored) if stored.envelope.execution == execution
                            && ends_execution(&stored.envelope.event) => {
                            ended = true;
                            break;
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        }
    });
    response
}

fn group(lines: Vec<serde_json::Value>) -> Vec<(u64, Vec<serde_json::Value>)> {
    let mut out: Vec<(u64, Vec<serde_json::Value>)> = Vec::new();
    for line in lines {
        let seq = line["seq"].as_u64().unwrap_or(0);
        match out.last_mut() {
            Some((s, batch)) if *s == seq => batch.push(line),
            _ => out.push((seq, vec![line])),
        }
    }
    out
}

fn log_event(seq: u64, lines: Vec<serde_json::Value>) -> SseEvent {
    SseEvent::default()
        .id(seq.to_string())
        .event("log")
        .data(json!({ "lines": lines }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_of_another_queue_stays_out_whatever_the_statuses() {
        // `?queue=nosuchqueue&status=running` once let every progress
        // report of other queues through.
        assert!(!progress_wanted(false, &[Status::Running]));
        assert!(!progress_wanted(false, &[]));
        assert!(progress_wanted(true, &[]));
        assert!(progress_wanted(true, &[Status::Queued, Status::Running]));
        assert!(!progress_wanted(true, &[Status::Succeeded]));
    }
}
