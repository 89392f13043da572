//! The commands that talk to a running engine over its HTTP API (`docs/api.md`):
//! `submit`, `status`, `ls`, `watch`, `logs`, `cancel`, `retry`, `workers`, `queues`,
//! `workflow`, `schedule`, `server`, `pool`.
//!
//! [`Client`] is a small typed client over reqwest that turns connection
//! failures and `application/problem+json` answers into an [`Error`] that
//! says what to do; [`sse`] reads the live feeds and resumes them with
//! `Last-Event-ID`; [`views`] holds the shapes of the API's answers and
//! [`render`] turns them into aligned tables and short durations. Every
//! command ends in an [`Exit`], whose codes `--help` and `docs/cli.md` list.

pub mod audit;
pub mod cluster;
pub mod control;
pub mod costs;
pub mod demo;
pub mod list;
pub mod logs;
pub mod pool;
pub mod render;
pub mod schedule;
pub mod secret;
pub mod server;
pub mod sse;
pub mod status;
pub mod submit;
pub mod token;
pub mod views;
pub mod watch;
pub mod workflow;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Where the engine listens unless told otherwise: the `runlog dev` address.
pub const DEFAULT_ENGINE_URL: &str = "http://127.0.0.1:8080";

/// How long a request (not a live feed) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The exit codes, listed in every client command's `--help`.
pub const EXIT_CODES: &str = "Exit codes:
  0    success (with --wait: the task succeeded)
  1    the task failed: dead-lettered or rejected
  2    usage: a bad flag or argument, or the engine refused the request as invalid
  3    the task was cancelled
  4    the task timed out
  5    no such execution
  6    the command does not apply in the execution's state (already ended, not retryable)
  7    cannot reach the engine, or it is unavailable
  8    any other error (an answer the CLI cannot read, a local I/O error)
  9    the engine refused the token: none sent, a wrong or revoked one, or one without the scope
  130  interrupted (Ctrl-C) while waiting; the execution keeps running";

/// How a command ended, as the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command did what was asked; with `--wait`, the task succeeded.
    Success,
    /// The task ended dead-lettered, rejected or failed.
    TaskFailed,
    /// A bad flag or argument, or a request the engine refused as invalid.
    Usage,
    /// The task was cancelled.
    Cancelled,
    /// The task (or its last attempt) ran out of time.
    TimedOut,
    /// No such execution.
    NotFound,
    /// The command does not apply in the execution's state.
    Conflict,
    /// The engine cannot be reached or is unavailable.
    Unreachable,
    /// Anything else.
    Other,
    /// The engine refused the token (401, 403).
    Denied,
    /// Ctrl-C while waiting.
    Interrupted,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::TaskFailed => 1,
            Exit::Usage => 2,
            Exit::Cancelled => 3,
            Exit::TimedOut => 4,
            Exit::NotFound => 5,
            Exit::Conflict => 6,
            Exit::Unreachable => 7,
            Exit::Other => 8,
            Exit::Denied => 9,
            Exit::Interrupted => 130,
        }
    }

    /// The exit of a task that ended in `status`.
    pub fn of_status(status: runlog_events::Status) -> Exit {
        use runlog_events::Status;
        match status {
            Status::Succeeded => Exit::Success,
            Status::Cancelled => Exit::Cancelled,
            Status::TimedOut => Exit::TimedOut,
            _ => Exit::TaskFailed,
        }
    }
}

/// Options every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// The engine's HTTP address.
    #[arg(
        long,
        env = "RUNLOG_ENGINE_URL",
        default_value = DEFAULT_ENGINE_URL,
        value_name = "URL"
    )]
    pub engine_url: String,
    /// `text` for people, `json` for scripts (the API's own JSON; one object
    /// per line for feeds).
    #[arg(long, short, value_enum, env = "RUNLOG_OUTPUT", default_value_t = Output::Text)]
    pub output: Output,
    /// A file holding the API token, for an engine with auth on (the
    /// variable RUNLOG_TOKEN holds the token itself, and wins).
    #[arg(long, env = "RUNLOG_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
}

impl Conn {
    /// Whether to print JSON.
    pub fn json(&self) -> bool {
        self.output == Output::Json
    }

    /// A client for the engine at `--engine-url`, with the token of
    /// `RUNLOG_TOKEN` or `--token-file`.
    pub fn client(&self) -> Result<Client, Error> {
        Client::authorized(&self.engine_url, self.token()?.as_deref())
    }

    /// The API token: `RUNLOG_TOKEN`, else the first line of `--token-file`.
    fn token(&self) -> Result<Option<String>, Error> {
        if let Ok(token) = std::env::var("RUNLOG_TOKEN")
            && !token.trim().is_empty()
        {
            return Ok(Some(token.trim().to_owned()));
        }
        let Some(file) = &self.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(file).map_err(|e| {
            Error::Local(format!(
                "cannot read the token file {}: {e}",
                file.display()
            ))
        })?;
        match text.lines().next().map(str::trim).filter(|t| !t.is_empty()) {
            Some(token) => Ok(Some(token.to_owned())),
            None => Err(Error::Usage(format!(
                "the token file {} is empty",
                file.display()
            ))),
        }
    }
}

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Tables and sentences.
    Text,
    /// JSON.
    Json,
}

/// Whether standard output is a terminal a person watches.
pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}

/// An API error as `application/problem+json` carries it.
#[derive(Debug, Clone, Deserialize)]
pub struct Problem {
    /// The HTTP status.
    pub status: u16,
    /// The stable code (`not_found`).
    pub code: String,
    /// What happened and what to do.
    pub detail: String,
    /// The offending field, for validation errors.
    #[serde(default)]
    pub field: Option<String>,
}

/// Why a client command could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing answers at the engine URL.
    #[error(
        "cannot reach the engine at {url} ({reason}): is `runlog dev` running? \
         set --engine-url or RUNLOG_ENGINE_URL"
    )]
    Unreachable {
        /// The engine URL.
        url: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// The engine answered with a problem.
    #[error("{} ({}{})", .0.detail, .0.code, .0.field.as_ref().map(|f| format!(", field {f}")).unwrap_or_default())]
    Api(Problem),
    /// The engine's answer could not be read.
    #[error("{0}")]
    Protocol(String),
    /// A bad argument the parser could not catch.
    #[error("{0}")]
    Usage(String),
    /// A local failure (a file, the terminal).
    #[error("{0}")]
    Local(String),
}

impl Error {
    /// The exit code this error ends the command with.
    pub fn exit(&self) -> Exit {
        match self {
            Error::Unreachable { .. } => Exit::Unreachable,
            Error::Api(p) => match (p.status, p.code.as_str()) {
                (_, "not_found") => Exit::NotFound,
                (401 | 403, _) => Exit::Denied,
                (_, "unavailable" | "not_ready") | (502..=504, _) => Exit::Unreachable,
                (409, _) => Exit::Conflict,
                (400 | 413 | 415 | 422, _) => Exit::Usage,
                _ => Exit::Other,
            },
            Error::Usage(_) => Exit::Usage,
            Error::Protocol(_) | Error::Local(_) => Exit::Other,
        }
    }

    /// The machine-readable code of this error (`--output json`).
    pub fn code(&self) -> &str {
        match self {
            Error::Unreachable { .. } => "unreachable",
            Error::Api(p) => &p.code,
            Error::Protocol(_) => "bad_answer",
            Error::Usage(_) => "usage",
            Error::Local(_) => "local",
        }
    }
}

/// Runs a client command and turns its end into the exit code.
pub async fn execute(
    conn: Conn,
    command: impl std::future::Future<Output = Result<Exit, Error>>,
) -> ExitCode {
    finish(command.await, &conn)
}

/// Prints what a command ended with and turns it into the exit code.
fn finish(result: Result<Exit, Error>, conn: &Conn) -> ExitCode {
    match result {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) => {
            if conn.json() {
                let mut body =
                    serde_json::json!({"error": {"code": e.code(), "message": e.to_string()}});
                if let Error::Api(p) = &e {
                    body["error"]["status"] = p.status.into();
                    body["error"]["field"] = p.field.clone().into();
                }
                eprintln!("{body}");
            } else {
                eprintln!("error: {e}");
                if e.exit() == Exit::NotFound {
                    eprintln!("`runlog ls` lists the executions the engine knows");
                }
            }
            ExitCode::from(e.exit().code())
        }
    }
}

/// A typed client of the engine's HTTP API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for the engine at `url` (`http://host:port`; the scheme may
    /// be left out), sending no token.
    pub fn new(url: &str) -> Result<Client, Error> {
        Client::authorized(url, None)
    }

    /// A client for the engine at `url` that sends `token` with every
    /// request (`Authorization: Bearer`).
    pub fn authorized(url: &str, token: Option<&str>) -> Result<Client, Error> {
        let url = url.trim().trim_end_matches('/');
        if url.is_empty() {
            return Err(Error::Usage(
                "the engine URL is empty: set --engine-url or RUNLOG_ENGINE_URL".to_owned(),
            ));
        }
        let base = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        reqwest::Url::parse(&base).map_err(|e| {
            Error::Usage(format!(
                "the engine URL {base:?} is not a URL ({e}): use http://host:port"
            ))
        })?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    Error::Usage("the API token holds characters a header cannot".to_owned())
                })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("runlog-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Local(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client { base, http })
    }

    /// The engine's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path?query` as `T`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, Error> {
        let request = self
            .http
            .get(self.url(path))
            .query(query)
            .timeout(REQUEST_TIMEOUT);
        self.answer(request).await
    }

    /// `POST path` with a JSON body, as `T`.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, Error> {
        let request = self
            .http
            .post(self.url(path))
            .json(body)
            .timeout(REQUEST_TIMEOUT);
        self.answer(request).await
    }

    /// `PUT path` with a JSON body, as `T`.
    pub async fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, Error> {
        let request = self
            .http
            .put(self.url(path))
            .json(body)
            .timeout(REQUEST_TIMEOUT);
        self.answer(request).await
    }

    /// `DELETE path`, as `T`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let request = self.http.delete(self.url(path)).timeout(REQUEST_TIMEOUT);
        self.answer(request).await
    }

    /// `POST path` with a body of `content_type` (a YAML definition), as `T`.
    pub async fn post_text<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: String,
    ) -> Result<T, Error> {
        let request = self
            .http
            .post(self.url(path))
            .header(CONTENT_TYPE, content_type)
            .body(body)
            .timeout(REQUEST_TIMEOUT);
        self.answer(request).await
    }

    /// Opens a live feed (no overall timeout), resuming after `last_event_id`.
    pub(crate) async fn open_stream(
        &self,
        path: &str,
        query: &[(&str, String)],
        last_event_id: Option<u64>,
    ) -> Result<reqwest::Response, Error> {
        let mut request = self
            .http
            .get(self.url(path))
            .query(query)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(self.problem(response).await)
        }
    }

    async fn answer<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, Error> {
        let response = request.send().await.map_err(|e| self.transport(e))?;
        if !response.status().is_success() {
            return Err(self.problem(response).await);
        }
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::Protocol(format!(
                "the engine at {} answered {status} with a body the CLI cannot read ({e}): \
                 is this the runlog engine, and of the same version as this CLI?",
                self.base
            ))
        })
    }

    /// A failure before an answer arrived.
    pub(crate) fn transport(&self, e: reqwest::Error) -> Error {
        if e.is_connect() || e.is_timeout() || e.is_request() {
            let reason = if e.is_timeout() {
                "no answer in time".to_owned()
            } else {
                root_cause(&e)
            };
            Error::Unreachable {
                url: self.base.clone(),
                reason,
            }
        } else {
            Error::Protocol(format!(
                "the connection to the engine at {} failed: {}",
                self.base,
                root_cause(&e)
            ))
        }
    }

    /// The error an unsuccessful answer stands for.
    async fn problem(&self, response: reqwest::Response) -> Error {
        let status = response.status();
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let body = response.bytes().await.unwrap_or_default();
        if is_json && let Ok(problem) = serde_json::from_slice::<Problem>(&body) {
            return Error::Api(problem);
        }
        let text = String::from_utf8_lossy(&body);
        let text: String = text.trim().chars().take(200).collect();
        Error::Api(Problem {
            status: status.as_u16(),
            code: format!("http_{}", status.as_u16()),
            detail: format!(
                "the server at {} answered {status}{}{text}: is --engine-url the runlog engine?",
                self.base,
                if text.is_empty() { "" } else { ": " }
            ),
            field: None,
        })
    }
}

/// The innermost cause of an error, which says the most ("Connection refused").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Percent-encodes an execution id for a path (ids are tokens already; this
/// keeps a mistyped one from changing the route).
pub fn path_id(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Adds `since` to an API query: the time `--since` names (`2026-12-01`,
/// or `10m`, `2h` ago) in RFC 3339.
pub(crate) fn push_since(
    query: &mut Vec<(&str, String)>,
    since: Option<&str>,
) -> Result<(), Error> {
    if let Some(since) = since {
        let since = render::parse_since(since, chrono::Utc::now())
            .map_err(|e| Error::Usage(format!("--since: {e}")))?;
        query.push((
            "since",
            since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_without_scheme_gets_http() {
        let client = Client::new("127.0.0.1:9000/").unwrap();
        assert_eq!(client.base(), "http://127.0.0.1:9000");
    }

    #[test]
    fn problems_map_to_exit_codes() {
        let problem = |status, code: &str| {
            Error::Api(Problem {
                status,
                code: code.to_owned(),
                detail: String::new(),
                field: None,
            })
        };
        assert_eq!(problem(404, "not_found").exit(), Exit::NotFound);
        assert_eq!(problem(409, "already_ended").exit(), Exit::Conflict);
        assert_eq!(problem(422, "invalid_task").exit(), Exit::Usage);
        assert_eq!(problem(413, "payload_too_large").exit(), Exit::Usage);
        assert_eq!(problem(503, "unavailable").exit(), Exit::Unreachable);
        assert_eq!(problem(500, "http_500").exit(), Exit::Other);
    }

    #[test]
    fn path_ids_are_escaped() {
        assert_eq!(path_id("a-b_c"), "a-b_c");
        assert_eq!(path_id("../x"), "..%2Fx");
    }
}
