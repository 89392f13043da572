//! The NATS intake door: request/reply on `<p>.submit.<queue>`.
//!
//! The request body is the same as `POST /v1/executions` (a task spec plus
//! optional `id` and `correlation_id`), as JSON or, with
//! `Content-Type: application/msgpack`, MessagePack; the queue comes from
//! the subject. The reply is JSON: `{"id", "status", "existing"}`, or an
//! error `{"error": {"code", "detail", "field"}}`. Engine replicas share
//! the subscription through a queue group.

use chrono::Utc;
use futures::StreamExt;
use runlog_events::{ExecutionId, QueueName, Subjects, codec};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::api::problem::Problem;
use crate::intake::{Intake, Submission};

/// Requests handled at once.
const CONCURRENCY: usize = 64;

/// Serves `<p>.submit.*` on `client` until `shutdown`.
pub async fn serve(
    client: async_nats::Client,
    subjects: Subjects,
    intake: Intake,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let subject = format!("{}.submit.*", subjects.prefix());
    let group = format!("{}-intake", subjects.prefix());
    let requests = client.queue_subscribe(subject, group).await?;
    tokio::spawn(async move {
        requests
            .take_until(shutdown.cancelled())
            .for_each_concurrent(CONCURRENCY, |message| {
                let (client, intake) = (client.clone(), intake.clone());
                async move {
                    let Some(reply) = message.reply.clone() else {
                        return;
                    };
                    let answer = handle(&intake, &message).await;
                    if let Err(e) = client.publish(reply, answer.to_string().into()).await {
                        tracing::warn!(error = %e, "cannot answer a submission");
                    }
                }
            })
            .await;
    });
    Ok(())
}

async fn handle(intake: &Intake, message: &async_nats::Message) -> serde_json::Value {
    let queue = message
        .subject
        .rsplit('.')
        .next()
        .and_then(|q| QueueName::new(q).ok());
    let msgpack = message
        .headers
        .as_ref()
        .and_then(|h| h.get(codec::header::CONTENT_TYPE))
        .is_some_and(|v| v.as_str() == codec::MSGPACK);
    if message.payload.len() > crate::api::MAX_BODY {
        return error(
            "payload_too_large",
            "the submission is larger than 1 MiB",
            None,
        );
    }
    let body: Result<crate::api::SubmitBody, String> = if msgpack {
        rmp_serde::from_slice(&message.payload).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice(&message.payload).map_err(|e| e.to_string())
    };
    let mut body = match body {
        Ok(body) => body,
        Err(e) => return error("invalid_body", &e, None),
    };
    if let Some(queue) = queue {
        body.spec.queue = queue;
    }
    let execution = match body.id.map(ExecutionId::new).transpose() {
        Ok(id) => id,
        Err(e) => return error("invalid_task", &format!("id: {e}"), Some("id")),
    };
    let submission = Submission {
        spec: body.spec,
        execution,
        correlation_id: body.correlation_id,
        traceparent: None,
    };
    match intake.submit(submission, Utc::now()).await {
        Ok(accepted) => json!({
            "id": accepted.execution,
            "status": accepted.state.status,
            "existing": accepted.existing,
        }),
        Err(e) => {
            let problem = Problem::from(e);
            json!({"error": {"code": problem.code, "detail": problem.detail, "field": problem.field}})
        }
    }
}

fn error(code: &str, detail: &str, field: Option<&str>) -> serde_json::Value {
    json!({"error": {"code": code, "detail": detail, "field": field}})
}
