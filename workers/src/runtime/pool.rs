//! Joining an agent pool: before a pool worker takes any work it asks the
//! engine on `<p>.pools.join.<pool>` whether its token belongs to the pool,
//! and asks again every [`REJOIN`]. A refusal is final: at start the worker
//! exits with the engine's reason; later it stops taking work, lets its
//! running attempts finish, and exits the same way. An engine that does not
//! answer is waited for at start (it may be starting too) and ignored
//! later (the worker keeps working while the engine restarts).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use runlog_events::Subjects;
use runlog_events::pool::{JoinAnswer, JoinRequest, REJOIN, join_subject};
use tokio_util::sync::CancellationToken;

use super::{PoolMembership, WorkerError};

/// How long one join request waits for the engine.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// What one join request found.
enum Asked {
    Welcome,
    Refused(String),
    /// No engine answered (none running, or it is starting).
    Unanswered(String),
}

async fn ask(
    client: &async_nats::Client,
    subjects: &Subjects,
    pool: &PoolMembership,
    worker: &str,
) -> Asked {
    let request = JoinRequest {
        worker: worker.to_owned(),
        token: pool.token.trim().to_owned(),
    };
    let body = serde_json::to_vec(&request).expect("a join request always serialises");
    let asked = tokio::time::timeout(
        ASK_TIMEOUT,
        client.request(join_subject(subjects, &pool.name), body.into()),
    )
    .await;
    match asked {
        Err(_) => Asked::Unanswered("no answer within 5 s".to_owned()),
        Ok(Err(e)) => Asked::Unanswered(e.to_string()),
        Ok(Ok(reply)) => match serde_json::from_slice::<JoinAnswer>(&reply.payload) {
            Ok(answer) if answer.ok => Asked::Welcome,
            Ok(answer) => Asked::Refused(
                answer
                    .reason
                    .unwrap_or_else(|| "the engine gave no reason".to_owned()),
            ),
            Err(e) => Asked::Unanswered(format!("an answer that is not a join answer: {e}")),
        },
    }
}

/// Joins at start: `Ok(true)` once welcome, `Ok(false)` when `shutdown`
/// came first, the refusal as an error.
pub(super) async fn join_until_answered(
    client: &async_nats::Client,
    subjects: &Subjects,
    pool: &PoolMembership,
    worker: &str,
    shutdown: &CancellationToken,
) -> Result<bool, WorkerError> {
    let mut pause = Duration::from_millis(250);
    loop {
        match ask(client, subjects, pool, worker).await {
            Asked::Welcome => {
                tracing::info!(pool = %pool.name, "joined the pool");
                return Ok(true);
            }
            Asked::Refused(reason) => {
                return Err(WorkerError::PoolRefused {
                    pool: pool.name.clone(),
                    reason,
                });
            }
            Asked::Unanswered(why) => {
                tracing::warn!(pool = %pool.name, %why, retry_in = ?pause,
                    "no engine answered the pool join; is `runlog engine` running?");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Asks again every [`REJOIN`] until `until`; a refusal is stored in
/// `refused` and cancels `stop` (the dispatcher drains).
pub(super) async fn keep_joined(
    client: async_nats::Client,
    subjects: Subjects,
    pool: PoolMembership,
    worker: String,
    stop: CancellationToken,
    refused: Arc<Mutex<Option<WorkerError>>>,
    until: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = until.cancelled() => return,
            _ = tokio::time::sleep(REJOIN) => {}
        }
        match ask(&client, &subjects, &pool, &worker).await {
            Asked::Welcome => {}
            Asked::Unanswered(why) => {
                tracing::warn!(pool = %pool.name, %why, "the pool join was not answered; working on");
            }
            Asked::Refused(reason) => {
                tracing::error!(pool = %pool.name, %reason, "the pool refused this worker; stopping");
                *refused.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(WorkerError::PoolRefused {
                        pool: pool.name.clone(),
                        reason,
                    });
                stop.cancel();
                return;
            }
        }
    }
}
