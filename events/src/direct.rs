//! Batched direct gets: read every stored message of a subject filter
//! without creating a consumer (`$JS.API.DIRECT.GET.<stream>` with
//! `next_by_subj` and `batch`; async-nats has no API for it).
//!
//! Used to load an execution's history, its log lines and its progress.
//! Needs `allow_direct` on the stream. A replica may answer, so a read is
//! not guaranteed to include a write that was acknowledged a moment ago.

use std::time::Duration;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;

use crate::codec::header;

/// Messages per direct-get batch.
pub const BATCH: usize = 1_000;
/// How long one batch may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A stored message.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its stream sequence.
    pub seq: u64,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub payload: Bytes,
}

/// Why a direct get failed. Each variant names the stream; those that
/// come from the client keep its error, with its kind.
#[derive(Debug, thiserror::Error)]
pub enum DirectGetError {
    /// The reply inbox could not be subscribed to.
    #[error(
        "cannot read stream {stream}: the reply subscription failed ({source}); is the NATS server reachable?"
    )]
    Subscribe {
        /// The stream.
        stream: String,
        /// The client's error.
        #[source]
        source: async_nats::SubscribeError,
    },
    /// The request could not be sent.
    #[error(
        "cannot read stream {stream}: the request was not sent ({source}); is the NATS server reachable?"
    )]
    Request {
        /// The stream.
        stream: String,
        /// The client's error.
        #[source]
        source: async_nats::PublishError,
    },
    /// No reply within [`TIMEOUT`].
    #[error(
        "cannot read stream {stream}: the server did not answer within {TIMEOUT:?}; is the NATS server reachable?"
    )]
    TimedOut {
        /// The stream.
        stream: String,
    },
    /// The connection closed before the batch ended.
    #[error("cannot read stream {stream}: the connection closed during the read")]
    Closed {
        /// The stream.
        stream: String,
    },
    /// The server refused the request.
    #[error(
        "cannot read stream {stream}: the server answered {code} {description}; the stream needs allow_direct"
    )]
    Refused {
        /// The stream.
        stream: String,
        /// The status code.
        code: u16,
        /// The status description.
        description: String,
    },
    /// The server answered out of order.
    #[error("cannot read stream {stream}: the server returned sequence {seq}, expected >= {next}")]
    OutOfOrder {
        /// The stream.
        stream: String,
        /// The sequence returned.
        seq: u64,
        /// The lowest sequence expected.
        next: u64,
    },
    /// The stream could not be looked up.
    #[error("cannot open stream {stream} ({source}); is JetStream enabled on the server?")]
    Stream {
        /// The stream.
        stream: String,
        /// The client's error.
        #[source]
        source: async_nats::jetstream::context::GetStreamError,
    },
    /// The stream's state could not be read.
    #[error("cannot read the state of stream {stream} ({source})")]
    Info {
        /// The stream.
        stream: String,
        /// The client's error.
        #[source]
        source: async_nats::jetstream::context::RequestError,
    },
    /// The newest message of a subject could not be read.
    #[error("cannot read the newest message on {subject} in stream {stream} ({source})")]
    Last {
        /// The stream.
        stream: String,
        /// The subject.
        subject: String,
        /// The client's error.
        #[source]
        source: async_nats::jetstream::stream::DirectGetError,
    },
}

/// Reads the messages of `stream` matching `filter` with sequence ≥ `from`,
/// at most `max` of them, in stream order; calls `each` for every one.
pub async fn read(
    client: &Client,
    stream: &str,
    filter: &str,
    from: u64,
    max: usize,
    mut each: impl FnMut(Stored),
) -> Result<(), DirectGetError> {
    let api = format!("$JS.API.DIRECT.GET.{stream}");
    let mut next = from.max(1);
    let mut left = max;
    while left > 0 {
        let inbox = client.new_inbox();
        let mut replies =
            client
                .subscribe(inbox.clone())
                .await
                .map_err(|source| DirectGetError::Subscribe {
                    stream: stream.to_owned(),
                    source,
                })?;
        let request = serde_json::json!({
            "seq": next,
            "next_by_subj": filter,
            "batch": left.min(BATCH),
        });
        client
            .publish_with_reply(api.clone(), inbox, request.to_string().into())
            .await
            .map_err(|source| DirectGetError::Request {
                stream: stream.to_owned(),
                source,
            })?;
        let mut more = false;
        loop {
            let reply = tokio::time::timeout(TIMEOUT, replies.next())
                .await
                .map_err(|_| DirectGetError::TimedOut {
                    stream: stream.to_owned(),
                })?
                .ok_or_else(|| DirectGetError::Closed {
                    stream: stream.to_owned(),
                })?;
            match reply.status.map(|s| s.as_u16()) {
                // End of batch: more may follow.
                Some(204) => {
                    more = header_u64(reply.headers.as_ref(), header::NUM_PENDING) > 0;
                    break;
                }
                // Nothing (more) matches.
                Some(404) => break,
                Some(code) if code >= 300 => {
                    return Err(DirectGetError::Refused {
                        stream: stream.to_owned(),
                        code,
                        description: reply.description.unwrap_or_default(),
                    });
                }
                _ => {}
            }
            let headers = reply.headers.unwrap_or_default();
            let seq = header_u64(Some(&headers), header::SEQUENCE);
            if seq < next {
                return Err(DirectGetError::OutOfOrder {
                    stream: stream.to_owned(),
                    seq,
                    next,
                });
            }
            next = seq + 1;
            left -= 1;
            each(Stored {
                seq,
                headers,
                payload: reply.payload,
            });
            if left == 0 {
                break;
            }
        }
        if !more {
            break;
        }
    }
    Ok(())
}

/// The first and last sequence of `stream`, and how many messages it
/// holds now.
pub async fn bounds(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Result<(u64, u64, u64), DirectGetError> {
    let mut handle = js
        .get_stream(stream)
        .await
        .map_err(|source| DirectGetError::Stream {
            stream: stream.to_owned(),
            source,
        })?;
    let info = handle.info().await.map_err(|source| DirectGetError::Info {
        stream: stream.to_owned(),
        source,
    })?;
    let state = &info.state;
    Ok((state.first_sequence, state.last_sequence, state.messages))
}

/// Sequence ranges `(lo, hi)` from `last` down to `first`, newest first:
/// the first `first_chunk` sequences wide, each next one twice as wide up
/// to `max_chunk`. What a search that reads a stream backwards with
/// [`read`] walks, so a recent answer comes back after a small read.
///
/// # Examples
/// ```
/// let ranges: Vec<_> = runlog_events::direct::backwards(1, 100, 10, 40).collect();
/// assert_eq!(ranges, [(91, 100), (71, 90), (31, 70), (1, 30)]);
/// ```
pub fn backwards(
    first: u64,
    last: u64,
    first_chunk: u64,
    max_chunk: u64,
) -> impl Iterator<Item = (u64, u64)> {
    let first = first.max(1);
    let mut next = (last >= first).then_some(last);
    let mut chunk = first_chunk.max(1);
    std::iter::from_fn(move || {
        let hi = next?;
        let lo = hi.saturating_sub(chunk - 1).max(first);
        next = (lo > first).then(|| lo - 1);
        chunk = (chunk * 2).min(max_chunk.max(1));
        Some((lo, hi))
    })
}

/// The oldest message of `stream` on the literal `subject`, if any (the
/// server finds it through its per-subject index, without a scan).
pub async fn first(
    client: &Client,
    stream: &str,
    subject: &str,
) -> Result<Option<Stored>, DirectGetError> {
    let mut found = None;
    read(client, stream, subject, 1, 1, |stored| found = Some(stored)).await?;
    Ok(found)
}

/// Every message of `stream` on the literal `subject`, oldest first, from
/// its first (found through the per-subject index: no scan of the stream).
pub async fn all(
    client: &Client,
    stream: &str,
    subject: &str,
    each: impl FnMut(Stored),
) -> Result<(), DirectGetError> {
    match first(client, stream, subject).await? {
        Some(first) => read(client, stream, subject, first.seq, usize::MAX, each).await,
        None => Ok(()),
    }
}

/// The newest message of `stream` on `subject`, if any.
pub async fn last(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subject: &str,
) -> Result<Option<Stored>, DirectGetError> {
    let handle = js
        .get_stream_no_info(stream)
        .await
        .map_err(|source| DirectGetError::Stream {
            stream: stream.to_owned(),
            source,
        })?;
    match handle.direct_get_last_for_subject(subject).await {
        Ok(message) => Ok(Some(Stored {
            seq: message.sequence,
            headers: message.headers,
            payload: message.payload,
        })),
        Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => {
            Ok(None)
        }
        Err(source) => Err(DirectGetError::Last {
            stream: stream.to_owned(),
            subject: subject.to_owned(),
            source,
        }),
    }
}

pub(crate) fn header_u64(headers: Option<&HeaderMap>, name: &str) -> u64 {
    headers
        .and_then(|h| h.get(name))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0)
}
