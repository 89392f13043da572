//! Who may call the API: the layer that checks a request's token against
//! the scope its route needs, and the routes of tokens and of the
//! dashboard's session (docs/security.md).
//!
//! A request carries its token as `Authorization: Bearer <token>` or, from
//! the dashboard, in the `runlog_token` cookie `POST /v1/session` sets
//! (`HttpOnly`, `SameSite=Strict`, gone when the browser closes). With auth
//! off every request is the `anonymous` caller, allowed everything. With
//! it on, a request without a valid token is answered 401 and one whose
//! token lacks the scope (or the queue) 403, both as problem+json, both
//! recorded in the audit trail with the caller's name.
//!
//! | route | scope |
//! |---|---|
//! | `/healthz`, `/readyz`, `/metrics`, the dashboard's files, `/v1/session` | none |
//! | `/v1/tokens…`, `/v1/secrets…`, `GET /v1/audit` | `admin` |
//! | every other `GET` | `read` |
//! | `POST /v1/executions`, `…/batch`, `/v1/workflows/{name}/executions` | `submit` |
//! | workflow definitions, pools, servers | `admin` |
//! | every other change (cancel, retry, replay, signals, schedules) | `operate` |

use axum::Json;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiState, Problem};
use crate::tokens::{Caller, NewToken, Refused, Scope, TokensError};

/// The dashboard's session cookie.
pub const COOKIE: &str = "runlog_token";

/// The scope `route` needs for `method`; `None`: anyone may call it.
pub fn needed(method: &Method, route: Option<&str>) -> Option<Scope> {
    let route = route?;
    match route {
        "/healthz" | "/readyz" | "/metrics" | "/" | "/assets/{file}" | "/v1/session" => None,
        "/v1/tokens" | "/v1/tokens/{id}" | "/v1/audit" | "/v1/secrets" | "/v1/secrets/{name}"
        | "/v1/secrets/rotate" => Some(Scope::Admin),
        _ if matches!(*method, Method::GET | Method::HEAD) => Some(Scope::Read),
        "/v1/executions" | "/v1/executions/batch" | "/v1/workflows/{name}/executions" => {
            Some(Scope::Submit)
        }
        r if ["/v1/workflows", "/v1/pools", "/v1/servers"]
            .iter()
            .any(|p| r.starts_with(p)) =>
        {
            Some(Scope::Admin)
        }
        _ => Some(Scope::Operate),
    }
}

/// The layer: finds the caller, refuses what it may not do, and hands the
/// caller to the route (and to the audit trail, on the response).
pub async fn layer(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let caller = if state.auth {
        let (method, uri) = (request.method().clone(), request.uri().clone());
        match admit(&state, &method, &uri, request.headers(), route.as_deref()).await {
            Ok(caller) => caller,
            Err((caller, problem)) => {
                let mut response = problem.into_response();
                if response.status() == StatusCode::UNAUTHORIZED {
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"runlog\""),
                    );
                }
                response.extensions_mut().insert(caller);
                return response;
            }
        }
    } else {
        Caller::anonymous()
    };
    request.extensions_mut().insert(caller.clone());
    let mut response = next.run(request).await;
    response.extensions_mut().insert(caller);
    response
}

/// The caller of `request`, or who it was and why it is refused.
async fn admit(
    state: &ApiState,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    route: Option<&str>,
) -> Result<Caller, (Caller, Problem)> {
    let Some(scope) = needed(method, route) else {
        return Ok(Caller::nobody());
    };
    let refused = |problem| (Caller::nobody(), problem);
    let Some((token, from_cookie)) = presented(headers) else {
        return Err(refused(unauthorized(
            "this API needs a token: send `Authorization: Bearer <token>` \
             (the CLI reads RUNLOG_TOKEN); an admin makes one with `runlog token create`",
        )));
    };
    if from_cookie && !same_origin(method, headers) {
        return Err(refused(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a change sent with the dashboard's cookie from another origin is refused",
        )));
    }
    let caller = match state.tokens.authenticate(&token).await {
        Ok(caller) => caller,
        Err(Refused::Unavailable(e)) => return Err(refused(Problem::unavailable(e))),
        Err(e @ Refused::Revoked { .. }) => {
            let mut caller = Caller::nobody();
            if let Refused::Revoked { name, .. } = &e {
                caller.actor.clone_from(name);
            }
            return Err((caller, unauthorized(e.to_string())));
        }
        Err(e) => return Err(refused(unauthorized(e.to_string()))),
    };
    if !caller.may(scope) {
        let problem = forbidden(format!(
            "token {:?} may not do this: it needs the `{scope}` scope",
            caller.actor
        ));
        return Err((caller, problem));
    }
    if let Err(reason) = queue_allowed(state, &caller, method, uri, route.unwrap_or_default()) {
        return Err((caller, forbidden(reason)));
    }
    Ok(caller)
}

/// The token a request carries, and whether it came in the cookie.
fn presented(headers: &HeaderMap) -> Option<(String, bool)> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?;
        return Some((token.trim().to_owned(), false));
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then(|| (value.to_owned(), true))
        })
}

/// Whether a request that came with the cookie may change state: a change
/// from a page of another origin is refused (on top of `SameSite=Strict`).
fn same_origin(method: &Method, headers: &HeaderMap) -> bool {
    if matches!(*method, Method::GET | Method::HEAD) {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    host.is_some_and(|host| host == origin_host)
}

/// `Err` with the reason when a queue-limited caller reaches past its
/// queues: an execution of another queue, a listing not narrowed to one of
/// its queues, or a route that spans every queue. Submissions are checked
/// by their routes, once the body is read.
fn queue_allowed(
    state: &ApiState,
    caller: &Caller,
    method: &Method,
    uri: &axum::http::Uri,
    route: &str,
) -> Result<(), String> {
    if !caller.is_queue_limited() {
        return Ok(());
    }
    let of_one = ["/v1/executions/{id}", "/v1/dead-letters/{id}"]
        .iter()
        .any(|r| route.starts_with(r))
        && route != "/v1/executions/batch";
    if of_one {
        let id = uri.path().split('/').nth(3).unwrap_or_default();
        let Ok(id) = runlog_events::ExecutionId::new(id) else {
            return Ok(());
        };
        return match state.projection.queue_and_kind(&id) {
            Some((queue, _)) => caller.may_use_queue(queue.as_str()),
            // The route answers 404.
            None => Ok(()),
        };
    }
    let narrowed = [
        "/v1/executions",
        "/v1/stream",
        "/v1/costs",
        "/v1/dead-letters",
        "/v1/logs/search",
    ];
    if narrowed.contains(&route) && *method == Method::GET {
        let query =
            axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(uri);
        let queue = query.ok().and_then(|q| q.0.get("queue").cloned());
        return match queue {
            Some(queue) => caller.may_use_queue(&queue),
            None => Err(format!(
                "token {:?} is limited to the queues {}: add queue=<one of them> to the query",
                caller.actor,
                caller.queues().join(", ")
            )),
        };
    }
    let everywhere_ok = [
        "/v1/executions",
        "/v1/executions/batch",
        "/v1/queues",
        "/v1/stats",
        "/v1/workers",
        "/v1/breakers",
    ];
    if everywhere_ok.contains(&route) {
        return Ok(());
    }
    Err(format!(
        "token {:?} is limited to the queues {}; this route is not about one queue",
        caller.actor,
        caller.queues().join(", ")
    ))
}

fn unauthorized(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
}

fn forbidden(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", detail)
}

/// `Err` with a 403 when `caller` may not submit to `queue` (the submit
/// routes, once they read the body).
pub(crate) fn may_submit_to(caller: &Caller, queue: &str) -> Result<(), Problem> {
    caller.may_use_queue(queue).map_err(forbidden)
}

/// `Err` with a 403 when `caller` is limited to queues (routes whose work
/// may reach any queue, as a workflow's nodes do).
pub(crate) fn not_queue_limited(caller: &Caller, what: &str) -> Result<(), Problem> {
    if caller.is_queue_limited() {
        return Err(forbidden(format!(
            "token {:?} is limited to the queues {}: it cannot {what}, whose work may reach any queue",
            caller.actor,
            caller.queues().join(", ")
        )));
    }
    Ok(())
}

fn tokens_problem(e: TokensError) -> Problem {
    match e {
        TokensError::Invalid(detail) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", detail)
        }
        TokensError::Unknown(_) => Problem::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
        TokensError::Store(e) => Problem::unavailable(e),
    }
}

/// `POST /v1/tokens`: a new token, its secret shown this once.
pub(super) async fn create(
    State(state): State<ApiState>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Result<Json<NewToken>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(new) = match body {
        Ok(body) => body,
        Err(e) => return super::problem::invalid_body(e).into_response(),
    };
    let (scopes, queues) = (new.scopes.clone(), new.queues.clone());
    match state.tokens.create(new, &caller.actor).await {
        Ok(issued) => (
            StatusCode::CREATED,
            Json(json!({
                "id": issued.id,
                "name": issued.name,
                "token": issued.token,
                "scopes": scopes,
                "queues": queues,
            })),
        )
            .into_response(),
        Err(e) => tokens_problem(e).into_response(),
    }
}

/// `GET /v1/tokens`: every token, without secrets or hashes.
pub(super) async fn list(State(state): State<ApiState>) -> Response {
    match state.tokens.list().await {
        Ok(tokens) => {
            let tokens: Vec<_> = tokens.iter().map(crate::tokens::ApiToken::view).collect();
            Json(json!({ "tokens": tokens })).into_response()
        }
        Err(e) => tokens_problem(e).into_response(),
    }
}

/// `DELETE /v1/tokens/{id}`: revokes the token at once.
pub(super) async fn revoke(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match state.tokens.revoke(&id).await {
        Ok(token) => Json(token.view()).into_response(),
        Err(e) => tokens_problem(e).into_response(),
    }
}

/// Body of `POST /v1/session`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct Login {
    token: String,
}

/// `GET /v1/session`: whether the API needs a token, and who the request's
/// token stands for.
pub(super) async fn session(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if !state.auth {
        return Json(
            json!({"auth": false, "name": "anonymous", "scopes": ["admin"], "queues": []}),
        )
        .into_response();
    }
    let caller = match presented(&headers) {
        Some((token, _)) => state.tokens.authenticate(&token).await.ok(),
        None => None,
    };
    Json(match caller {
        Some(caller) => json!({
            "auth": true, "name": caller.actor, "scopes": caller.scopes(), "queues": caller.queues(),
        }),
        None => json!({"auth": true, "name": null}),
    })
    .into_response()
}

/// `POST /v1/session`: checks a token and keeps it in the dashboard's
/// session cookie.
pub(super) async fn login(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<Login>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(login) = match body {
        Ok(body) => body,
        Err(e) => return super::problem::invalid_body(e).into_response(),
    };
    let token = login.token.trim().to_owned();
    let caller = if state.auth {
        match state.tokens.authenticate(&token).await {
            Ok(caller) => caller,
            Err(Refused::Unavailable(e)) => return Problem::unavailable(e).into_response(),
            Err(e) => return unauthorized(e.to_string()).into_response(),
        }
    } else {
        Caller::anonymous()
    };
    // `Secure` where the engine sits behind TLS (a proxy says so); a
    // browser keeps no `Secure` cookie from plain http.
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    );
    let mut response = Json(json!({
        "auth": state.auth, "name": caller.actor, "scopes": caller.scopes(), "queues": caller.queues(),
    }))
    .into_response();
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response.extensions_mut().insert(caller);
    response
}

/// `DELETE /v1/session`: forgets the dashboard's token.
pub(super) async fn logout() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("runlog_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_needs_its_scope() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(needed(&get, Some("/healthz")), None);
        assert_eq!(needed(&get, Some("/metrics")), None);
        assert_eq!(needed(&get, None), None);
        assert_eq!(needed(&get, Some("/v1/executions")), Some(Scope::Read));
        assert_eq!(needed(&post, Some("/v1/executions")), Some(Scope::Submit));
        assert_eq!(
            needed(&post, Some("/v1/executions/{id}/cancel")),
            Some(Scope::Operate)
        );
        assert_eq!(needed(&post, Some("/v1/schedules")), Some(Scope::Operate));
        assert_eq!(needed(&post, Some("/v1/workflows")), Some(Scope::Admin));
        assert_eq!(
            needed(&post, Some("/v1/workflows/{name}/executions")),
            Some(Scope::Submit)
        );
        assert_eq!(
            needed(&Method::DELETE, Some("/v1/servers/{name}")),
            Some(Scope::Admin)
        );
        assert_eq!(needed(&get, Some("/v1/tokens")), Some(Scope::Admin));
        assert_eq!(needed(&get, Some("/v1/audit")), Some(Scope::Admin));
        assert_eq!(needed(&get, Some("/v1/secrets")), Some(Scope::Admin));
        assert_eq!(
            needed(&Method::PUT, Some("/v1/secrets/{name}")),
            Some(Scope::Admin)
        );
        assert_eq!(
            needed(&post, Some("/v1/secrets/rotate")),
            Some(Scope::Admin)
        );
    }

    #[test]
    fn the_token_comes_from_the_header_or_the_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented(&headers), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; runlog_token=abc.def"),
        );
        assert_eq!(presented(&headers), Some(("abc.def".to_owned(), true)));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer x.y"),
        );
        assert_eq!(presented(&headers), Some(("x.y".to_owned(), false)));
    }

    #[test]
    fn a_change_with_the_cookie_from_another_origin_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&Method::POST, &headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&Method::POST, &headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&Method::POST, &headers));
        assert!(same_origin(&Method::GET, &headers));
    }
}
