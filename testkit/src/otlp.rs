//! An OTLP/HTTP trace receiver: what a collector is to runlog, started on
//! a random port of 127.0.0.1 and stopped on drop. It decodes every
//! `POST /v1/traces` (protobuf, as `opentelemetry-otlp` sends it) with the
//! `opentelemetry-proto` types and keeps the spans.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tokio::task::JoinHandle;

/// One span as the receiver got it; ids in lowercase hex.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, empty for a root span.
    pub parent_span_id: String,
    /// The span's name.
    pub name: String,
    /// OTLP span kind (1 internal, 2 server, 3 client).
    pub kind: i32,
    /// Start, nanoseconds since the Unix epoch.
    pub start_ns: u64,
    /// End, nanoseconds since the Unix epoch.
    pub end_ns: u64,
    /// OTLP status code (0 unset, 1 ok, 2 error).
    pub status: i32,
    /// String, integer and boolean attributes, as text.
    pub attributes: BTreeMap<String, String>,
}

/// A running receiver; stops on drop.
#[derive(Debug)]
pub struct OtlpReceiver {
    endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    requests: Arc<Mutex<u64>>,
    counted: Arc<Mutex<u64>>,
    server: JoinHandle<()>,
}

impl OtlpReceiver {
    /// Starts a receiver on a random port that keeps every span.
    pub async fn start() -> anyhow::Result<OtlpReceiver> {
        OtlpReceiver::start_keeping(true).await
    }

    /// Starts a receiver that decodes and counts spans without keeping
    /// them (a benchmark's: its memory stays flat).
    pub async fn start_counting() -> anyhow::Result<OtlpReceiver> {
        OtlpReceiver::start_keeping(false).await
    }

    async fn start_keeping(keep: bool) -> anyhow::Result<OtlpReceiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let requests: Arc<Mutex<u64>> = Arc::default();
        let counted: Arc<Mutex<u64>> = Arc::default();
        let (kept, asked, seen) = (spans.clone(), requests.clone(), counted.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let (kept, asked, seen) = (kept.clone(), asked.clone(), seen.clone());
                async move {
                    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                        return (StatusCode::BAD_REQUEST, Vec::new());
                    };
                    *asked.lock().expect("never poisoned") += 1;
                    let spans = flatten(request);
                    *seen.lock().expect("never poisoned") += spans.len() as u64;
                    if keep {
                        kept.lock().expect("never poisoned").extend(spans);
                    }
                    (
                        StatusCode::OK,
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            })
            .layer(axum::middleware::map_response(
                |mut response: axum::response::Response| async move {
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/x-protobuf"),
                    );
                    response
                },
            )),
        );
        let server = tokio::spawn(async move {
            let _stopped = axum::serve(listener, app).await;
        });
        Ok(OtlpReceiver {
            endpoint,
            spans,
            requests,
            counted,
            server,
        })
    }

    /// The base URL to export to (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("never poisoned").clone()
    }

    /// Spans received so far (kept or not).
    pub fn span_count(&self) -> u64 {
        *self.counted.lock().expect("never poisoned")
    }

    /// Export requests received so far.
    pub fn requests(&self) -> u64 {
        *self.requests.lock().expect("never poisoned")
    }

    /// Waits until `holds` is true of the spans received, for at most
    /// `within`; returns them.
    pub async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        holds: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> anyhow::Result<Vec<ReceivedSpan>> {
        crate::eventually(within, what, || async {
            let spans = self.spans();
            anyhow::ensure!(
                holds(&spans),
                "{} spans so far: {:?}",
                spans.len(),
                spans.iter().map(|s| s.name.as_str()).collect::<Vec<_>>()
            );
            Ok(Some(spans))
        })
        .await
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| text(v.value.as_ref()))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                    status: span.status.map_or(0, |s| s.code),
                    attributes: span
                        .attributes
                        .into_iter()
                        .filter_map(|kv| {
                            let value = text(kv.value.as_ref()?.value.as_ref())?;
                            Some((kv.key, value))
                        })
                        .collect(),
                });
            }
        }
    }
    out
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
