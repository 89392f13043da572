//! The NATS intake doors: request/reply on `<p>.submit.<queue>` (one
//! submission) and `<p>.submit-batch.<queue>` (a batch).
//!
//! A request to `<p>.submit.<queue>` holds the same body as
//! `POST /v1/executions` (a task spec plus optional `id` and
//! `correlation_id`); one to `<p>.submit-batch.<queue>` the same as
//! `POST /v1/executions/batch` (`{"executions": [<spec>, ...]}`, at most
//! [`MAX_BATCH`](crate::api::MAX_BATCH)). Either as JSON or, with
//! `Content-Type: application/msgpack`, MessagePack; the queue comes from
//! the subject. The reply is JSON: `{"id", "status", "existing"}`, or an
//! error `{"error": {"code", "detail", "field"}}`; for a batch
//! `{"results": [...]}` with one of those per spec, in order. Engine
//! replicas share each subscription through a queue group.

use std::future::Future;

use chrono::Utc;
use futures::StreamExt;
use runlog_events::{QueueName, Subjects, codec};
use tokio_util::sync::CancellationToken;

use crate::api::batch;
use crate::api::problem::Problem;
use crate::intake::Intake;
use crate::workers::LiveWorkers;

/// Requests handled at once.
const CONCURRENCY: usize = 64;
/// Batches handled at once; their submissions share the intake's window
/// ([`BATCH_IN_FLIGHT`](crate::intake::BATCH_IN_FLIGHT)).
const BATCH_CONCURRENCY: usize = 8;

/// What a door hands its submissions to.
#[derive(Debug, Clone)]
pub struct Doors {
    /// Records them.
    pub intake: Intake,
    /// Warns about tasks no live worker would take.
    pub workers: LiveWorkers,
    /// Records every submission.
    pub audit: crate::audit::Audit,
}

/// Serves `<p>.submit.*` and `<p>.submit-batch.*` on `client` until
/// `shutdown`.
pub async fn serve(
    client: async_nats::Client,
    subjects: Subjects,
    intake: Doors,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let p = subjects.prefix();
    let group = format!("{p}-intake");
    door(
        &client,
        format!("{p}.submit.*"),
        group.clone(),
        CONCURRENCY,
        &intake,
        &shutdown,
        handle,
    )
    .await?;
    // Batches have a subject of their own rather than a token after the
    // queue or a header on `<p>.submit.<queue>`: a permission or a
    // subscription on `<p>.submit.*` (or `.>`) keeps meaning one submission,
    // and an engine without batches answers "no responders" instead of
    // reading a batch as one spec.
    door(
        &client,
        format!("{p}.submit-batch.*"),
        group,
        BATCH_CONCURRENCY,
        &intake,
        &shutdown,
        handle_batch,
    )
    .await?;
    // The server has the subscriptions once it answers a ping: a request
    // sent right after the engine started finds its responders.
    client.flush().await.map_err(|e| {
        async_nats::SubscribeError::with_source(async_nats::SubscribeErrorKind::Other, e)
    })
}

/// Answers each request on `subject` with what `handle` makes of it.
async fn door<F, Fut>(
    client: &async_nats::Client,
    subject: String,
    group: String,
    concurrency: usize,
    intake: &Doors,
    shutdown: &CancellationToken,
    handle: F,
) -> Result<(), async_nats::SubscribeError>
where
    F: Fn(Doors, async_nats::Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = serde_json::Value> + Send,
{
    let requests = client.queue_subscribe(subject.clone(), group).await?;
    let tally = crate::audit::DoorTally::start(intake.audit.clone(), subject, shutdown.clone());
    let (client, intake, shutdown) = (client.clone(), intake.clone(), shutdown.clone());
    tokio::spawn(async move {
        requests
            .take_until(shutdown.cancelled())
            .for_each_concurrent(concurrency, |message| {
                let (client, intake) = (client.clone(), intake.clone());
                let tally = tally.clone();
                let handled = message
                    .reply
                    .clone()
                    .map(|reply| (reply, handle(intake, message)));
                async move {
                    let Some((reply, answer)) = handled else {
                        return;
                    };
                    let answer = answer.await;
                    if let Err(e) = client.publish(reply, answer.to_string().into()).await {
                        tracing::warn!(error = %e, "cannot answer a submission");
                    }
                    tally.count(refused(&answer));
                }
            })
            .await;
    });
    Ok(())
}

/// Whether a door refused a request: its answer (or every result of a
/// batch) is an error.
fn refused(answer: &serde_json::Value) -> bool {
    answer.get("error").is_some()
        || answer["results"]
            .as_array()
            .is_some_and(|r| !r.is_empty() && r.iter().all(|r| r.get("error").is_some()))
}

/// The queue a door's subject names (its last token).
fn queue_of(message: &async_nats::Message) -> Option<QueueName> {
    message
        .subject
        .rsplit('.')
        .next()
        .and_then(|q| QueueName::new(q).ok())
}

fn is_msgpack(message: &async_nats::Message) -> bool {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(codec::header::CONTENT_TYPE))
        .is_some_and(|v| v.as_str() == codec::MSGPACK)
}

async fn handle_batch(doors: Doors, message: async_nats::Message) -> serde_json::Value {
    if message.payload.len() > crate::api::MAX_BATCH_BODY {
        return error(
            "payload_too_large",
            "the batch is larger than 16 MiB: send smaller batches",
            None,
        );
    }
    match batch::read(&message.payload, is_msgpack(&message)) {
        Ok(specs) => {
            batch::submit_all(&doors.intake, &doors.workers, specs, queue_of(&message)).await
        }
        Err(problem) => problem.as_answer(),
    }
}

async fn handle(doors: Doors, message: async_nats::Message) -> serde_json::Value {
    let queue = queue_of(&message);
    let msgpack = is_msgpack(&message);
    if message.payload.len() > crate::api::MAX_BODY {
        return error(
            "payload_too_large",
            "the submission is larger than 1 MiB",
            None,
        );
    }
    let value: Result<serde_json::Value, String> = if msgpack {
        rmp_serde::from_slice(&message.payload).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice(&message.payload).map_err(|e| e.to_string())
    };
    let mut body = match value.map_err(|e| error("invalid_body", &e, None)) {
        Ok(value) => match crate::api::SubmitBody::read(value) {
            Ok(body) => body,
            Err(problem) => return problem.as_answer(),
        },
        Err(answer) => return answer,
    };
    if let Some(queue) = queue {
        body.spec.queue = queue;
    }
    let submission = match body.into_submission() {
        Ok(submission) => submission,
        Err(problem) => return problem.as_answer(),
    };
    if let Some(fanned) =
        crate::api::servers::fan_out(&doors.intake, &doors.workers, &submission).await
    {
        return fanned.unwrap_or_else(|problem| problem.as_answer());
    }
    let warning = doors.workers.warning(&submission.spec);
    let accepted = doors.intake.submit(submission, Utc::now()).await;
    crate::api::executions::answer(accepted.map_err(Problem::from), warning)
}

fn error(code: &str, detail: &str, field: Option<&str>) -> serde_json::Value {
    serde_json::json!({"error": {"code": code, "detail": detail, "field": field}})
}
