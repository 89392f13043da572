//! The `http` executor: one HTTP request per attempt.
//!
//! The answer's status decides the result: an expected status is the
//! output; anything else is a [`TaskError`] classified so the retry policy
//! does the right thing (429 honours `Retry-After`, 5xx is retried, other
//! 4xx are permanent). Secrets reach the request through `${NAME}`
//! references to the task's environment, and never appear in errors or
//! output.
//!
//! Every request and redirect hop is held to the worker's [`HostPolicy`]
//! (link-local and cloud metadata addresses are refused by default); a
//! refused host fails the attempt with a `permission` error.
//!
//! [`HttpInput`] is the input format; `docs/executors.md` describes it for
//! users.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{
    CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER, USER_AGENT,
};
use reqwest::{Method, StatusCode, Url};
use runlog_events::{ErrorClass, TaskError};
use serde::Deserialize;
use serde_json::{Value, json};

use super::hosts::{GuardedResolver, HostPolicy, Refused};
use super::mask::mask;
use super::stop::{StopReason, stop_requested};
use crate::handler::{Context, Handler, HandlerResult};

/// Request timeout when the input does not say.
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
/// Bytes of the response body kept when the input does not say.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// The largest `max_body_bytes` accepted: the output travels in one event.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 10;

/// Bytes of an unexpected answer's body quoted in the error.
const ERROR_BODY_CHARS: usize = 200;

/// The input of an `http` task.
///
/// `${NAME}` in `url`, header values and body strings is replaced by the
/// variable `NAME` of the task's environment (sealed env or secret), so
/// tokens stay out of the recorded input; `$${` writes a literal `${`.
///
/// # Examples
/// ```
/// use runlog_worker::executor::HttpInput;
///
/// let input: HttpInput = serde_json::from_value(serde_json::json!({
///     "method": "POST",
///     "url": "https://api.example.com/v1/deploys",
///     "headers": {"authorization": "Bearer ${DEPLOY_TOKEN}"},
///     "body": {"service": "billing"},
///     "expect_status": [201],
/// }))
/// .unwrap();
/// assert_eq!(input.method, "POST");
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpInput {
    /// The method; `GET` when absent.
    #[serde(default = "get")]
    pub method: String,
    /// An `http` or `https` URL.
    pub url: String,
    /// Request headers. Their values never appear in errors or output.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body: a string is sent as is; any other JSON value is sent as
    /// JSON (with `content-type: application/json` unless a header says
    /// otherwise).
    #[serde(default)]
    pub body: Option<Value>,
    /// Milliseconds for the whole exchange, body included. Default
    /// [`DEFAULT_TIMEOUT_MS`]; the attempt deadline applies too.
    pub timeout_ms: Option<u64>,
    /// The statuses that mean success; any 2xx when absent.
    pub expect_status: Option<Vec<u16>>,
    /// Bytes of the response body kept in the output. Default
    /// [`DEFAULT_MAX_BODY_BYTES`], at most [`MAX_BODY_BYTES`].
    pub max_body_bytes: Option<usize>,
}

fn get() -> String {
    "GET".to_owned()
}

/// Runs `http` tasks with one shared connection pool.
#[derive(Debug, Clone)]
pub struct HttpExecutor {
    client: reqwest::Client,
    hosts: Arc<HostPolicy>,
}

impl Default for HttpExecutor {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpExecutor {
    /// An executor with a default client (rustls, system proxies) and the
    /// default [`HostPolicy`]: every host but link-local and cloud
    /// metadata addresses.
    ///
    /// # Panics
    /// When the TLS backend cannot be initialised, as
    /// [`reqwest::Client::new`] does.
    pub fn new() -> Self {
        Self::guarded(HostPolicy::default())
    }

    /// An executor whose tasks reach only the hosts `hosts` lets them: its
    /// client resolves names through the policy, so a name that resolves
    /// to a refused address is refused too.
    ///
    /// # Panics
    /// As [`HttpExecutor::new`].
    pub fn guarded(hosts: HostPolicy) -> Self {
        let hosts = Arc::new(hosts);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver {
                policy: hosts.clone(),
            }))
            .build()
            .expect("the TLS backend initialises");
        HttpExecutor { client, hosts }
    }

    /// An executor sending through `client` (proxies, custom roots, ...).
    /// Build it with `redirect(Policy::none())`: the executor follows
    /// redirects itself, so that request headers never reach another
    /// origin. Per-request timeouts come from the input. The hosts of
    /// URLs are checked against the default [`HostPolicy`], but names are
    /// resolved by `client`'s own resolver, unchecked.
    pub fn with_client(client: reqwest::Client) -> Self {
        HttpExecutor {
            client,
            hosts: Arc::new(HostPolicy::default()),
        }
    }
}

impl Handler for HttpExecutor {
    async fn run(&self, ctx: Context) -> HandlerResult {
        let mut request = Request::new(ctx.input(), ctx.env())?;
        // The server joins the execution's trace, unless the task sets its
        // own `traceparent`.
        if let Some(traceparent) = ctx.traceparent()
            && !request.headers.contains_key("traceparent")
            && let Ok(value) = HeaderValue::from_str(traceparent.as_str())
        {
            request.headers.insert("traceparent", value);
        }
        if let Some(reason) = StopReason::now(&ctx) {
            return Err(reason.error(format!(
                "{} was not sent: the attempt was stopped",
                request.shown
            )));
        }
        let traffic = Traffic::default();
        let result = tokio::select! {
            result = request.send(&self.client, &self.hosts, &traffic) => result,
            reason = stop_requested(&ctx) => Err(reason.error(match reason {
                StopReason::Cancelled => format!("cancelled: {} was abandoned", request.shown),
                StopReason::Timeout => format!(
                    "ran past the attempt deadline: {} was abandoned",
                    request.shown
                ),
            })),
        };
        ctx.used_network(traffic.sent.into_inner(), traffic.received.into_inner());
        result
    }
}

/// The HTTP messages' bytes an attempt sent and received: request and
/// status lines, headers and bodies, as HTTP/1.1 spells them (not the
/// TLS or TCP framing, nor headers the client adds on its own).
#[derive(Debug, Default)]
struct Traffic {
    sent: AtomicU64,
    received: AtomicU64,
}

impl Traffic {
    fn sent(&self, method: &Method, url: &Url, headers: &HeaderMap, body: Option<&[u8]>) {
        // `METHOD url HTTP/1.1\r\n`, headers, a blank line, the body.
        let line = method.as_str().len() + url.as_str().len() + 11;
        let bytes = line + header_bytes(headers) + 2 + body.map_or(0, <[u8]>::len);
        self.sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn received(&self, bytes: usize) {
        self.received.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// `name: value\r\n` for each header.
fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

fn invalid(message: impl Into<String>) -> TaskError {
    TaskError::new(
        ErrorClass::InvalidInput,
        format!("http input: {} (see docs/executors.md)", message.into()),
    )
}

/// A validated request, secrets substituted.
#[derive(Debug)]
struct Request {
    method: Method,
    url: Url,
    /// `METHOD url` as the input wrote it (before substitution), for messages.
    shown: String,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
    timeout: Duration,
    expect: Option<Vec<u16>>,
    max_body: usize,
    /// Values masked in every message.
    secrets: Vec<String>,
}

impl Request {
    fn new(input: &Value, env: &BTreeMap<String, String>) -> Result<Self, TaskError> {
        let input: HttpInput =
            serde_json::from_value(input.clone()).map_err(|e| invalid(e.to_string()))?;
        let method = Method::from_bytes(input.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| invalid(format!("`method` {:?} is not an HTTP method", input.method)))?;
        let shown = format!("{method} {}", input.url);
        let mut secrets = Vec::new();

        let url = expand(&input.url, env, &mut secrets, "`url`")?;
        let url = Url::parse(&url).map_err(|e| invalid(format!("`url` is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("`url` must start with http:// or https://"));
        }

        let mut headers = HeaderMap::new();
        for (name, value) in &input.headers {
            let what = format!("`headers.{name}`");
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("{what} is not a valid header name")))?;
            let value = expand(value, env, &mut secrets, &what)?;
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                invalid(format!(
                    "the value of {what} has characters a header cannot hold"
                ))
            })?;
            value.set_sensitive(true);
            secrets.push(String::from_utf8_lossy(value.as_bytes()).into_owned());
            headers.append(header, value);
        }
        if !headers.contains_key(USER_AGENT) {
            headers.insert(
                USER_AGENT,
                HeaderValue::from_static(concat!("runlog-worker/", env!("CARGO_PKG_VERSION"))),
            );
        }

        let body = match input.body {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => {
                Some(expand(&text, env, &mut secrets, "`body`")?.into_bytes())
            }
            Some(mut value) => {
                expand_json(&mut value, env, &mut secrets)?;
                if !headers.contains_key(CONTENT_TYPE) {
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                Some(serde_json::to_vec(&value).map_err(|e| invalid(format!("`body`: {e}")))?)
            }
        };

        let max_body = input.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body > MAX_BODY_BYTES {
            return Err(invalid(format!(
                "`max_body_bytes` is {max_body}, at most {MAX_BODY_BYTES} are kept"
            )));
        }
        if let Some(bad) = input
            .expect_status
            .iter()
            .flatten()
            .find(|s| !(100..=599).contains(*s))
        {
            return Err(invalid(format!(
                "`expect_status` {bad} is not an HTTP status"
            )));
        }
        Ok(Request {
            method,
            url,
            shown,
            headers,
            body,
            timeout: Duration::from_millis(input.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
            expect: input.expect_status,
            max_body,
            secrets,
        })
    }

    fn mask(&self, message: &str) -> String {
        mask(message, self.secrets.iter().map(String::as_str))
    }

    /// Whether `expect_status` names `status` explicitly.
    fn expect_lists(&self, status: StatusCode) -> bool {
        self.expect
            .as_ref()
            .is_some_and(|expect| expect.contains(&status.as_u16()))
    }

    fn expected(&self, status: StatusCode) -> bool {
        match &self.expect {
            Some(expect) => expect.contains(&status.as_u16()),
            None => status.is_success(),
        }
    }

    /// Sends the request, following redirects: the input's headers never
    /// go to another origin, and a status listed in `expect_status` is
    /// never followed.
    async fn exchange(
        &self,
        client: &reqwest::Client,
        hosts: &HostPolicy,
        traffic: &Traffic,
    ) -> Result<reqwest::Response, TaskError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut url = self.url.clone();
        let mut method = self.method.clone();
        let mut headers = self.headers.clone();
        let mut body = self.body.clone();
        let mut hops = 0;
        loop {
            self.admit(hosts, &url)?;
            let mut request = client
                .request(method.clone(), url.clone())
                .headers(headers.clone())
                .timeout(deadline.saturating_duration_since(tokio::time::Instant::now()));
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            traffic.sent(&method, &url, &headers, body.as_deref());
            let response = request.send().await.map_err(|e| self.transport_error(e))?;
            let status = response.status();
            // `HTTP/1.1 200 OK\r\n`, the headers, a blank line.
            let reason = status.canonical_reason().map_or(0, str::len);
            traffic.received(15 + reason + header_bytes(response.headers()) + 2);
            let next = response
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .filter(|_| status.is_redirection() && !self.expect_lists(status));
            let Some(next) = next else {
                return Ok(response);
            };
            hops += 1;
            if hops > MAX_REDIRECTS {
                return Err(TaskError::new(
                    ErrorClass::InvalidInput,
                    format!(
                        "{} was redirected more than {MAX_REDIRECTS} times: \
                         is there a redirect loop?",
                        self.shown
                    ),
                ));
            }
            if next.origin() != url.origin() {
                headers = [USER_AGENT, CONTENT_TYPE]
                    .into_iter()
                    .filter_map(|name| {
                        let value = headers.get(&name)?.clone();
                        Some((name, value))
                    })
                    .collect();
            }
            let becomes_get = status == StatusCode::SEE_OTHER
                || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                    && method == Method::POST);
            if becomes_get {
                method = Method::GET;
                body = None;
                headers.remove(CONTENT_TYPE);
            }
            url = next;
        }
    }

    /// Refuses a URL whose host the worker's policy refuses (addresses
    /// a name resolves to are checked by the client's resolver).
    fn admit(&self, hosts: &HostPolicy, url: &Url) -> Result<(), TaskError> {
        let Some(host) = url.host_str() else {
            return Ok(());
        };
        let checked = match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            Ok(addr) => hosts.check_addr(None, addr),
            Err(_) => hosts.check_name(host),
        };
        checked.map_err(|refused| self.refused(&refused))
    }

    fn refused(&self, refused: &Refused) -> TaskError {
        let mut error = TaskError::new(
            ErrorClass::Permission,
            format!("{} was not sent: {refused}", self.shown),
        );
        error.retryable = false;
        error
    }

    async fn send(
        &self,
        client: &reqwest::Client,
        hosts: &HostPolicy,
        traffic: &Traffic,
    ) -> HandlerResult {
        let mut response = self.exchange(client, hosts, traffic).await?;
        let status = response.status();
        let expected = self.expected(status);
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after_ms(v, Utc::now()));
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_type);
        let headers = visible_headers(response.headers());

        // An unexpected answer only needs enough body for the message (a
        // character is at most 4 bytes).
        let keep = if expected {
            self.max_body
        } else {
            ERROR_BODY_CHARS * 4
        };
        let mut body = Vec::new();
        let mut truncated: u64 = 0;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(e))?
        {
            traffic.received(chunk.len());
            let room = keep.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..room.min(chunk.len())]);
            truncated += chunk.len().saturating_sub(room) as u64;
            if !expected && truncated > 0 {
                break;
            }
        }

        if !expected {
            return Err(self.status_error(status, retry_after, &body));
        }
        let body = (is_json && truncated == 0)
            .then(|| serde_json::from_slice(&body).ok())
            .flatten()
            .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok(json!({
            "status": status.as_u16(),
            "headers": headers,
            "body": body,
            "body_truncated_bytes": truncated,
        }))
    }

    /// The error for a request that got no (complete) answer.
    fn transport_error(&self, error: reqwest::Error) -> TaskError {
        let error = error.without_url();
        let mut cause = String::new();
        let mut source = std::error::Error::source(&error);
        while let Some(inner) = source {
            if let Some(refused) = inner.downcast_ref::<Refused>() {
                return self.refused(refused);
            }
            cause = inner.to_string();
            source = inner.source();
        }
        let cause = if cause.is_empty() {
            error.to_string()
        } else {
            cause
        };
        let (class, message) = if error.is_timeout() {
            (
                ErrorClass::Timeout,
                format!(
                    "{} timed out after {} ms: raise `timeout_ms` if the server is just slow",
                    self.shown,
                    self.timeout.as_millis()
                ),
            )
        } else if error.is_connect() {
            (
                ErrorClass::Network,
                format!(
                    "cannot connect for {} ({cause}): is the server up and the host name right?",
                    self.shown
                ),
            )
        } else if error.is_builder() {
            (
                ErrorClass::InvalidInput,
                format!("cannot build {} ({cause})", self.shown),
            )
        } else if error.is_request() || error.is_body() || error.is_decode() {
            (
                ErrorClass::Network,
                format!("the connection failed during {} ({cause})", self.shown),
            )
        } else {
            (
                ErrorClass::Unknown,
                format!("{} failed ({cause})", self.shown),
            )
        };
        TaskError::new(class, self.mask(&message))
    }

    /// The error for an answer whose status was not expected.
    fn status_error(&self, status: StatusCode, retry_after: Option<u64>, body: &[u8]) -> TaskError {
        let class = match status.as_u16() {
            429 => ErrorClass::RateLimited,
            408 => ErrorClass::Timeout,
            401 | 403 => ErrorClass::Permission,
            404 | 410 => ErrorClass::NotFound,
            500..=599 => ErrorClass::Unknown,
            _ => ErrorClass::InvalidInput,
        };
        let snippet: String = String::from_utf8_lossy(body)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(ERROR_BODY_CHARS)
            .collect();
        let hint = match class {
            ErrorClass::InvalidInput if status.as_u16() < 400 => {
                " (not in `expect_status`: add it there if it means success)"
            }
            _ => "",
        };
        let mut message = format!("{} answered {status}{hint}", self.shown);
        if !snippet.is_empty() {
            message.push_str(": ");
            message.push_str(&snippet);
        }
        let mut error = TaskError::new(class, self.mask(&message));
        if matches!(class, ErrorClass::RateLimited | ErrorClass::Unknown) {
            error.retry_after_ms = retry_after;
        }
        error
    }
}

/// `template` with `${NAME}` replaced from `env`; the values used are
/// added to `secrets`.
fn expand(
    template: &str,
    env: &BTreeMap<String, String>,
    secrets: &mut Vec<String>,
    what: &str,
) -> Result<String, TaskError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| invalid(format!("{what} has a `${{` without its `}}`")))?;
            let name = &after[..end];
            let value = env.get(name).ok_or_else(|| {
                invalid(format!(
                    "{what} uses ${{{name}}}, which is not in the task's environment: \
                     set it in the task's env or secrets (write $${{ for a literal ${{)"
                ))
            })?;
            out.push_str(value);
            secrets.push(value.clone());
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// [`expand`] on every string of a JSON body.
fn expand_json(
    value: &mut Value,
    env: &BTreeMap<String, String>,
    secrets: &mut Vec<String>,
) -> Result<(), TaskError> {
    match value {
        Value::String(text) => *text = expand(text, env, secrets, "`body`")?,
        Value::Array(items) => {
            for item in items {
                expand_json(item, env, secrets)?;
            }
        }
        Value::Object(fields) => {
            for item in fields.values_mut() {
                expand_json(item, env, secrets)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn is_json_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// Whether a response header may carry credentials, and so is left out of
/// the output.
fn is_sensitive_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains("cookie")
        || name.contains("auth")
        || name.contains("token")
        || name.contains("secret")
        || name.contains("key")
}

/// The response headers the output shows; repeated ones joined by `, `.
fn visible_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut visible: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        if is_sensitive_header(name.as_str()) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        visible
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    visible
}

/// The delay a `Retry-After` value asks for, in milliseconds: delay
/// seconds, or an HTTP date (in the past means now).
pub fn retry_after_ms(value: &str, now: DateTime<Utc>) -> Option<u64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(seconds.saturating_mul(1_000));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .num_milliseconds()
            .max(0)
            .try_into()
            .unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [("TOKEN".to_owned(), "t0ken-value".to_owned())].into()
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(retry_after_ms("120", now), Some(120_000));
        assert_eq!(
            retry_after_ms("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(30_000)
        );
        assert_eq!(
            retry_after_ms("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(0)
        );
        assert_eq!(retry_after_ms("soon", now), None);
    }

    #[test]
    fn references_expand_from_the_task_environment() {
        let mut secrets = Vec::new();
        let out = expand("Bearer ${TOKEN} costs $5 $${X}", &env(), &mut secrets, "h").unwrap();
        assert_eq!(out, "Bearer t0ken-value costs $5 ${X}");
        assert_eq!(secrets, ["t0ken-value"]);
        let error = expand("${MISSING}", &env(), &mut secrets, "`url`").unwrap_err();
        assert_eq!(error.class, ErrorClass::InvalidInput);
        assert!(error.message.contains("MISSING"));
    }

    #[test]
    fn header_values_are_masked_in_messages() {
        let input = json!({
            "url": "http://example.invalid/${TOKEN}",
            "headers": {"x-api-key": "literal-key-123", "authorization": "Bearer ${TOKEN}"},
        });
        let request = Request::new(&input, &env()).unwrap();
        let error = request.status_error(
            StatusCode::UNAUTHORIZED,
            None,
            b"bad key literal-key-123 for t0ken-value",
        );
        assert_eq!(error.class, ErrorClass::Permission);
        assert!(
            !error.message.contains("literal-key-123"),
            "{}",
            error.message
        );
        assert!(!error.message.contains("t0ken-value"), "{}", error.message);
        assert!(error.message.contains("${TOKEN}"), "{}", error.message);
    }

    #[test]
    fn statuses_map_to_classes() {
        let request = Request::new(&json!({"url": "http://x.invalid"}), &env()).unwrap();
        let class = |code| {
            let error = request.status_error(StatusCode::from_u16(code).unwrap(), Some(5), b"");
            (error.class, error.retryable, error.retry_after_ms)
        };
        assert_eq!(class(429), (ErrorClass::RateLimited, true, Some(5)));
        assert_eq!(class(503), (ErrorClass::Unknown, true, Some(5)));
        assert_eq!(class(404), (ErrorClass::NotFound, false, None));
        assert_eq!(class(403), (ErrorClass::Permission, false, None));
        assert_eq!(class(422), (ErrorClass::InvalidInput, false, None));
        assert_eq!(class(204), (ErrorClass::InvalidInput, false, None));
    }

    #[test]
    fn credential_headers_are_left_out() {
        let mut headers = HeaderMap::new();
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("x-auth-token", HeaderValue::from_static("t"));
        headers.append("x-request-id", HeaderValue::from_static("r1"));
        headers.append("vary", HeaderValue::from_static("a"));
        headers.append("vary", HeaderValue::from_static("b"));
        let visible = visible_headers(&headers);
        assert_eq!(
            visible,
            BTreeMap::from([
                ("vary".to_owned(), "a, b".to_owned()),
                ("x-request-id".to_owned(), "r1".to_owned()),
            ])
        );
    }

    #[test]
    fn bad_input_is_invalid_input() {
        for input in [
            json!({}),
            json!({"url": "ftp://x"}),
            json!({"url": "http://x", "method": "GE T"}),
            json!({"url": "http://x", "max_body_bytes": 10_000_000}),
            json!({"url": "http://x", "headers": {"bad name": "v"}}),
        ] {
            let error = Request::new(&input, &env()).unwrap_err();
            assert_eq!(error.class, ErrorClass::InvalidInput, "{input}");
        }
    }
}
