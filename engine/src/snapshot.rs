//! Projection snapshots: the read model and the stream sequence it reflects,
//! kept in a JetStream object store, so a restarted engine replays only the
//! tail of the log.
//!
//! A snapshot is taken while the projection keeps folding. It records the
//! applied sequence *before* it copies the executions, so every event at or
//! below that sequence is in it; an execution copied a moment later may also
//! hold newer events, which the replay after a restore skips (each
//! execution keeps the sequence of its newest folded event). A snapshot is
//! only a cache: a missing, stale or unreadable one costs a full replay.

use std::time::Duration;

use async_nats::jetstream::{self, object_store};
use runlog_events::decider::ExecutionState;
use runlog_events::{ExecutionId, Subjects};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::projection::{Entry, Projection};

/// The object holding the newest snapshot.
const OBJECT: &str = "projection";
/// Format version; a snapshot of another version is ignored.
const VERSION: u32 = 2;

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    applied_seq: u64,
    executions: Vec<(ExecutionId, u64, u64, ExecutionState)>,
}

/// Why a snapshot could not be written or read. A snapshot is a cache:
/// each of these costs a full replay, nothing else.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The object store could not be created.
    #[error(
        "cannot create the projection snapshot bucket {bucket} ({source}); is JetStream enabled on the server?"
    )]
    Bucket {
        /// The bucket.
        bucket: String,
        /// The client's error, with its kind.
        #[source]
        source: jetstream::context::CreateObjectStoreError,
    },
    /// The snapshot could not be stored.
    #[error("cannot store the projection snapshot ({0}); is the NATS server reachable?")]
    Put(#[source] object_store::PutError),
    /// The snapshot could not be fetched.
    #[error("cannot fetch the projection snapshot ({0}); is the NATS server reachable?")]
    Get(#[source] object_store::GetError),
    /// The snapshot's bytes could not be read.
    #[error("cannot read the projection snapshot ({0})")]
    Read(#[source] std::io::Error),
    /// The snapshot could not be encoded.
    #[error("cannot encode the projection snapshot ({0})")]
    Encode(#[source] rmp_serde::encode::Error),
    /// The task that encodes or decodes it ended early.
    #[error("the projection snapshot task ended early ({0})")]
    Task(#[source] tokio::task::JoinError),
}

/// The object store of snapshots, created if missing.
pub async fn store(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<object_store::ObjectStore, SnapshotError> {
    let bucket = format!("{}-snapshots", subjects.prefix());
    if let Ok(store) = js.get_object_store(&bucket).await {
        return Ok(store);
    }
    js.create_object_store(object_store::Config {
        bucket: bucket.clone(),
        description: Some("runlog projection snapshots".to_owned()),
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|source| SnapshotError::Bucket { bucket, source })
}

/// Writes a snapshot of `projection`; returns the sequence it reflects and
/// its size in bytes.
pub async fn save(
    store: &object_store::ObjectStore,
    projection: &Projection,
) -> Result<(u64, usize), SnapshotError> {
    let applied_seq = projection.applied_seq();
    let executions = projection
        .entries()
        .into_iter()
        .map(|(id, e)| (id, e.first_seq, e.last_seq, e.state))
        .collect();
    let file = File {
        version: VERSION,
        applied_seq,
        executions,
    };
    let bytes = tokio::task::spawn_blocking(move || rmp_serde::to_vec_named(&file))
        .await
        .map_err(SnapshotError::Task)?
        .map_err(SnapshotError::Encode)?;
    let size = bytes.len();
    store
        .put(OBJECT, &mut bytes.as_slice())
        .await
        .map_err(SnapshotError::Put)?;
    Ok((applied_seq, size))
}

/// Loads the newest snapshot into `projection` (which must be empty);
/// returns the sequence it reflects, or `None` without a usable snapshot.
pub async fn restore(
    store: &object_store::ObjectStore,
    projection: &Projection,
) -> Result<Option<u64>, SnapshotError> {
    let mut object = match store.get(OBJECT).await {
        Ok(object) => object,
        Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SnapshotError::Get(e)),
    };
    let mut bytes = Vec::new();
    object
        .read_to_end(&mut bytes)
        .await
        .map_err(SnapshotError::Read)?;
    let file: File = match tokio::task::spawn_blocking(move || rmp_serde::from_slice(&bytes))
        .await
        .map_err(SnapshotError::Task)?
    {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an unreadable projection snapshot");
            return Ok(None);
        }
    };
    if file.version != VERSION {
        return Ok(None);
    }
    for (id, first_seq, last_seq, state) in file.executions {
        projection.restore(
            id,
            Entry {
                state,
                first_seq,
                last_seq,
            },
        );
    }
    projection.restored(file.applied_seq);
    Ok(Some(file.applied_seq))
}

/// Snapshots `projection` every `every` while it moved on, until `shutdown`.
pub async fn run(
    store: object_store::ObjectStore,
    projection: std::sync::Arc<Projection>,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut saved = projection.applied_seq();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !projection.is_caught_up() || projection.applied_seq() == saved {
            continue;
        }
        match save(&store, &projection).await {
            Ok((seq, size)) => {
                saved = seq;
                tracing::info!(seq, bytes = size, "projection snapshot saved");
            }
            Err(e) => tracing::warn!(error = %e, "cannot save a projection snapshot"),
        }
    }
}
