//! What the API reads from request bodies, without the state the routes
//! act on: [`read`] runs the same functions a route runs on its body, up to
//! the point where the route would act on what it read (append, store).
//!
//! This is the entry of the `request_body` fuzz target (`fuzz/`), so that
//! untrusted bytes are tried on exactly the code that reads them. Whatever
//! the bytes, a body is either read or refused with a 4xx problem.

use axum::Json;
use serde_json::Value;

use super::Problem;
use super::problem::invalid_body;

/// A route that reads a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/executions`.
    Submit,
    /// `POST /v1/executions/batch`, JSON.
    Batch,
    /// `POST /v1/executions/batch`, MessagePack.
    BatchMsgpack,
    /// `POST /v1/schedules`.
    Schedule,
    /// `POST /v1/servers`.
    Server,
    /// `POST /v1/workflows`, JSON.
    Workflow,
    /// `POST /v1/workflows`, YAML.
    WorkflowYaml,
}

impl Route {
    /// Every route, in a fixed order (the fuzz target picks by index).
    pub const ALL: [Route; 7] = [
        Route::Submit,
        Route::Batch,
        Route::BatchMsgpack,
        Route::Schedule,
        Route::Server,
        Route::Workflow,
        Route::WorkflowYaml,
    ];
}

/// Reads `body` as `route` does: `Ok` when the route would go on to act on
/// it, the problem it would answer otherwise. A batch is read element by
/// element; the first refused element's problem is returned.
pub fn read(route: Route, body: &[u8]) -> Result<(), Problem> {
    match route {
        Route::Submit => {
            let Json(value) = Json::<Value>::from_bytes(body).map_err(invalid_body)?;
            super::executions::SubmitBody::read(value)?.into_submission()?;
        }
        Route::Batch | Route::BatchMsgpack => {
            for spec in super::batch::read(body, route == Route::BatchMsgpack)? {
                spec?.into_submission()?;
            }
        }
        Route::Schedule => {
            super::schedules::read_new(body)?;
        }
        Route::Server => {
            let Json(value) = Json::<Value>::from_bytes(body).map_err(invalid_body)?;
            let server = super::servers::read(value)?;
            server.validate().map_err(|errors| {
                super::servers::problem(crate::servers::ServersError::Invalid(errors))
            })?;
        }
        Route::Workflow | Route::WorkflowYaml => {
            let definition = super::workflows::read(body, route == Route::WorkflowYaml)?;
            // Any kind a worker might run: the route asks the live workers.
            let errors = definition.check(|_| true);
            if !errors.is_empty() {
                return Err(super::workflows::invalid(errors));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_bodies_read_and_bad_ones_get_a_client_error() {
        let good: [(Route, &[u8]); 4] = [
            (Route::Submit, br#"{"kind": "echo", "input": {"n": 1}}"#),
            (Route::Batch, br#"{"executions": [{"kind": "echo"}]}"#),
            (
                Route::Schedule,
                br#"{"cron": "0 3 * * *", "task": {"kind": "shell", "input": {"shell": "true"}}}"#,
            ),
            (
                Route::WorkflowYaml,
                b"name: w\nversion: 1\nnodes:\n  a: {kind: echo}\n",
            ),
        ];
        for (route, body) in good {
            assert!(
                read(route, body).is_ok(),
                "{route:?}: {:?}",
                read(route, body)
            );
        }
        for route in Route::ALL {
            for body in [
                &b""[..],
                b"\xff\xfe",
                b"{",
                b"[]",
                b"null",
                b"{\"kind\": 7}",
            ] {
                let problem = read(route, body).expect_err("refused");
                assert!(
                    (400..500).contains(&problem.status),
                    "{route:?} {body:?}: {problem:?}"
                );
            }
        }
    }
}
