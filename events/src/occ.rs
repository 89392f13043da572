//! Optimistic appends to one subject: a JSON event is stored only if the
//! subject's newest sequence is still the one its writer decided on
//! (`Nats-Expected-Last-Subject-Sequence`). Workflow and schedule logs
//! append this way; two writers deciding on the same state cannot both
//! record their decision.

use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};

use crate::codec::header;

/// Why an expected-sequence append did not store its event.
#[derive(Debug)]
pub enum AppendFailure {
    /// The subject moved on since `expected`: reload and decide again.
    Conflict,
    /// The publish failed.
    Publish(PublishError),
}

/// Appends the JSON `body` to `subject`, expecting `expected` to be the
/// subject's newest sequence (0: no message yet). Returns its sequence.
pub async fn append_json(
    js: &Context,
    subject: &str,
    expected: u64,
    body: Vec<u8>,
) -> Result<u64, AppendFailure> {
    let mut headers = HeaderMap::new();
    headers.insert(header::EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string());
    headers.insert(header::CONTENT_TYPE, "application/json");
    let published = async {
        js.publish_with_headers(subject.to_owned(), headers, body.into())
            .await?
            .await
    };
    match published.await {
        Ok(ack) => Ok(ack.sequence),
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(AppendFailure::Conflict),
        Err(e) => Err(AppendFailure::Publish(e)),
    }
}
