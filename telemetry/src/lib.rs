//! Traces: the spans of executions, exported over OTLP/HTTP (protobuf)
//! through `opentelemetry-otlp`.
//!
//! runlog's spans are built from recorded facts, not timed around code: an
//! execution's span runs from its submission to its terminal event, an
//! attempt's from its claim to its result, and their ids are derived from
//! the events (see [`TraceParent::execution_span_id`]), so the component
//! that ends an execution exports its span, and a worker's spans hang under
//! it without anyone passing ids around. A [`Span`] is therefore a plain
//! value with explicit ids and times, handed to [`Traces::record`].
//!
//! Export never blocks the hot path: `record` puts the span in a bounded
//! queue ([`QUEUE`] spans) and returns; one task drains it in batches of up
//! to [`BATCH`] (or what gathered in [`FLUSH_EVERY`]). When the queue is
//! full or the receiver is down, spans are dropped and counted, never
//! waited for.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use runlog_events::TraceParent;
use tokio::sync::{mpsc, oneshot};

pub mod spans;

/// Spans waiting for export, at most; more are dropped.
pub const QUEUE: usize = 8192;
/// Spans in one export request, at most.
pub const BATCH: usize = 512;
/// The longest a recorded span waits for a batch to fill.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// The longest one export request may take.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why traces cannot be exported.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to {endpoint}: {reason}")]
pub struct TracesError {
    endpoint: String,
    reason: String,
}

/// A handle on the exporter of one process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Traces {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    queue: mpsc::Sender<Message>,
    dropped: AtomicU64,
    exported: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug)]
enum Message {
    Span(Box<SpanData>),
    Flush(oneshot::Sender<()>),
}

impl Traces {
    /// Exports to the OTLP/HTTP receiver at `endpoint` (a base URL such as
    /// `http://collector:4318`; `/v1/traces` is appended unless it is
    /// there), as `service` (`runlog-engine`) instance `instance`. Must be
    /// called within a Tokio runtime, whose task does the exporting.
    pub fn start(endpoint: &str, service: &str, instance: &str) -> Result<Traces, TracesError> {
        let url = traces_url(endpoint);
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| TracesError {
                endpoint: url.clone(),
                reason: e.to_string(),
            })?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(service.to_owned())
                .with_attribute(KeyValue::new("service.instance.id", instance.to_owned()))
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        let (queue, spans) = mpsc::channel(QUEUE);
        let inner = Arc::new(Inner {
            queue,
            dropped: AtomicU64::new(0),
            exported: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        tokio::spawn(export(exporter, spans, Arc::downgrade(&inner), url));
        Ok(Traces { inner })
    }

    /// Queues `span` for export, or drops it when the queue is full; never
    /// waits. A span of an unsampled trace is not recorded.
    pub fn record(&self, span: Span) {
        if !span.sampled {
            return;
        }
        if self
            .inner
            .queue
            .try_send(Message::Span(Box::new(span.into_data())))
            .is_err()
        {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until every span recorded before the call was handed to the
    /// receiver (or dropped): for a shutdown, and for tests.
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.inner.queue.send(Message::Flush(done)).await.is_ok() {
            let _gone = flushed.await;
        }
    }

    /// Spans dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Spans the receiver accepted.
    pub fn exported(&self) -> u64 {
        self.inner.exported.load(Ordering::Relaxed)
    }

    /// Spans lost to failed export requests.
    pub fn failed(&self) -> u64 {
        self.inner.failed.load(Ordering::Relaxed)
    }
}

/// The OTLP/HTTP traces URL of a receiver's base URL.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Drains the queue in batches until every handle is gone.
async fn export(
    exporter: opentelemetry_otlp::SpanExporter,
    mut queue: mpsc::Receiver<Message>,
    counters: std::sync::Weak<Inner>,
    url: String,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH);
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let mut failing = false;
    while let Some(first) = queue.recv().await {
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        let mut next = Some(first);
        loop {
            match next.take() {
                Some(Message::Span(span)) => batch.push(*span),
                Some(Message::Flush(done)) => {
                    flushes.push(done);
                    break;
                }
                None => {}
            }
            if batch.len() >= BATCH {
                break;
            }
            next = match queue.try_recv() {
                Ok(message) => Some(message),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, queue.recv()).await {
                        Ok(Some(message)) => Some(message),
                        Ok(None) | Err(_) => break,
                    }
                }
            };
        }
        if !batch.is_empty() {
            let spans = batch.len() as u64;
            let result = exporter.export(std::mem::take(&mut batch)).await;
            let Some(counters) = counters.upgrade() else {
                return;
            };
            match result {
                Ok(()) => {
                    counters.exported.fetch_add(spans, Ordering::Relaxed);
                    if failing {
                        tracing::info!(%url, "trace export works again");
                        failing = false;
                    }
                }
                Err(e) => {
                    counters.failed.fetch_add(spans, Ordering::Relaxed);
                    if !failing {
                        tracing::warn!(%url, error = %e, "trace export failed; spans are dropped until it works");
                        failing = true;
                    }
                }
            }
        }
        for done in flushes.drain(..) {
            let _gone = done.send(());
        }
    }
}

/// One span: explicit ids and times, a name, a kind, attributes and, for a
/// failure, an error status.
#[derive(Debug, Clone)]
pub struct Span {
    name: Cow<'static, str>,
    kind: SpanKind,
    trace_id: TraceId,
    span_id: SpanId,
    parent: SpanId,
    remote_parent: bool,
    sampled: bool,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
    status: Status,
}

impl Span {
    /// The span `span_id` (16 hex digits) of the trace of `parent`, a child
    /// of its parent id; `None` when `span_id` is not a span id.
    pub fn child_of(
        parent: &TraceParent,
        span_id: &str,
        name: impl Into<Cow<'static, str>>,
    ) -> Option<Span> {
        let span_id = span_id_of(span_id)?;
        let now = SystemTime::now();
        Some(Span {
            name: name.into(),
            kind: SpanKind::Internal,
            trace_id: TraceId::from_hex(parent.trace_id()).ok()?,
            span_id,
            parent: span_id_of(parent.span_id())?,
            remote_parent: false,
            sampled: parent.sampled(),
            start: now,
            end: now,
            attributes: Vec::new(),
            status: Status::Unset,
        })
    }

    /// The span whose id is the parent id of `context`, with no parent: the
    /// first span of a trace that starts here.
    pub fn root_of(context: &TraceParent, name: impl Into<Cow<'static, str>>) -> Option<Span> {
        let mut span = Span::child_of(context, context.span_id(), name)?;
        span.parent = SpanId::INVALID;
        Some(span)
    }

    /// Marks the parent as another process's span (a caller's).
    pub fn remote_parent(mut self) -> Self {
        self.remote_parent = true;
        self
    }

    /// The span's kind (`Server` for a door, `Client` for an outgoing
    /// request); `Internal` unless set.
    pub fn kind(mut self, kind: SpanKind) -> Self {
        self.kind = kind;
        self
    }

    /// From `start` to `end` (an end before the start is the start).
    pub fn between(mut self, start: DateTime<Utc>, end: DateTime<Utc>) -> Self {
        self.start = start.into();
        self.end = end.max(start).into();
        self
    }

    /// From `start` to `end`, as system times.
    pub fn between_times(mut self, start: SystemTime, end: SystemTime) -> Self {
        self.start = start;
        self.end = end.max(start);
        self
    }

    /// Adds the attribute `key` = `value`.
    pub fn attr(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.attributes.push(KeyValue::new(key, value));
        self
    }

    /// Marks the span failed with `message`.
    pub fn error(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.status = Status::error(message);
        self
    }

    /// Marks the span succeeded.
    pub fn ok(mut self) -> Self {
        self.status = Status::Ok;
        self
    }

    fn into_data(self) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                self.trace_id,
                self.span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: self.parent,
            parent_span_is_remote: self.remote_parent,
            span_kind: self.kind,
            name: self.name,
            start_time: self.start,
            end_time: self.end,
            attributes: self.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: self.status,
            instrumentation_scope: InstrumentationScope::builder("runlog")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }
    }
}

fn span_id_of(hex: &str) -> Option<SpanId> {
    SpanId::from_hex(hex)
        .ok()
        .filter(|id| *id != SpanId::INVALID)
}

pub use opentelemetry::trace::SpanKind as Kind;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_url_ends_in_v1_traces_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }

    #[test]
    fn a_span_keeps_its_ids_and_parent() {
        let caller: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap();
        let span = Span::child_of(&caller, "1111111111111111", "x").unwrap();
        let data = span.into_data();
        assert_eq!(
            data.span_context.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(
            data.parent_span_id,
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        let root = Span::root_of(&caller, "r").unwrap().into_data();
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert_eq!(
            root.span_context.span_id(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        assert!(Span::child_of(&caller, "0000000000000000", "x").is_none());
        assert!(Span::child_of(&caller, "nothex", "x").is_none());
    }
}
