//! Server-Sent Events: a parser over the response's byte stream, and a
//! [`Feed`] that reconnects when the connection drops, resuming with
//! `Last-Event-ID` so no event is lost or seen twice (the engine's SSE ids
//! are stream sequences, see `docs/api.md`).

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;

use super::{Client, Error};

/// The engine sends a keep-alive comment every 15 s: this much silence
/// means the connection is dead even if TCP has not noticed.
const IDLE_LIMIT: Duration = Duration::from_secs(45);
/// How long a feed keeps trying to reconnect before it gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// The body of a feed, chunk by chunk.
type ByteStream = Pin<Box<dyn futures::Stream<Item = Result<Vec<u8>, reqwest::Error>> + Send>>;

/// One event of a feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id:` field (a stream sequence), when the event has one.
    pub id: Option<u64>,
    /// The `event:` field; `message` when absent.
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Splits a byte stream into events (the WHATWG `text/event-stream` rules:
/// lines end at `\n`, `\r\n` or `\r`; a blank line dispatches; `:` starts a
/// comment).
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    after_cr: bool,
    id: Option<u64>,
    event: String,
    data: Vec<String>,
    has_data: bool,
}

impl Parser {
    /// Feeds bytes; returns the events they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_done(&line) {
                        out.push(event);
                    }
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(b);
                }
            }
        }
        out
    }

    fn line_done(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            let had = std::mem::take(&mut self.has_data);
            let event = std::mem::take(&mut self.event);
            let data = std::mem::take(&mut self.data).join("\n");
            let id = self.id.take();
            return had.then(|| SseEvent {
                id,
                event: if event.is_empty() {
                    "message".to_owned()
                } else {
                    event
                },
                data,
            });
        }
        if line[0] == b':' {
            return None;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                self.data.push(value.to_owned());
                self.has_data = true;
            }
            "event" => self.event = value.to_owned(),
            "id" => self.id = value.trim().parse().ok(),
            _ => {}
        }
        None
    }
}

/// A live feed of the engine that survives dropped connections.
pub struct Feed {
    client: Client,
    path: String,
    query: Vec<(&'static str, String)>,
    last_id: Option<u64>,
    body: Option<ByteStream>,
    parser: Parser,
    ready: VecDeque<SseEvent>,
}

impl Feed {
    /// A feed of `path` (not connected until the first [`next`](Self::next)),
    /// starting after `last_id` when given.
    pub fn new(
        client: &Client,
        path: String,
        query: Vec<(&'static str, String)>,
        last_id: Option<u64>,
    ) -> Feed {
        Feed {
            client: client.clone(),
            path,
            query,
            last_id,
            body: None,
            parser: Parser::default(),
            ready: VecDeque::new(),
        }
    }

    /// Connects now (the first [`next`](Self::next) would otherwise), so
    /// that events from this moment on are kept for the reader.
    pub async fn open(&mut self) -> Result<(), Error> {
        if self.body.is_none() {
            self.body = Some(self.connect().await?);
            self.parser = Parser::default();
        }
        Ok(())
    }

    /// The next event. Reconnects (resuming after the last id) when the
    /// connection drops; fails when the engine stays unreachable for a
    /// minute or refuses the feed.
    pub async fn next(&mut self) -> Result<SseEvent, Error> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(event);
            }
            let body = match &mut self.body {
                Some(body) => body,
                None => {
                    let body = self.connect().await?;
                    self.parser = Parser::default();
                    self.body.insert(body)
                }
            };
            match tokio::time::timeout(IDLE_LIMIT, body.next()).await {
                Ok(Some(Ok(chunk))) => {
                    for event in self.parser.feed(&chunk) {
                        // Received counts: a reconnect resumes after it.
                        if event.id.is_some() {
                            self.last_id = event.id;
                        }
                        self.ready.push_back(event);
                    }
                }
                // Closed, broken or silent: reconnect and resume.
                Ok(Some(Err(_)) | None) | Err(_) => self.body = None,
            }
        }
    }

    async fn connect(&self) -> Result<ByteStream, Error> {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(200);
        loop {
            match self
                .client
                .open_stream(&self.path, &self.query, self.last_id)
                .await
            {
                Ok(response) => {
                    let stream = response
                        .bytes_stream()
                        .map(|chunk| chunk.map(|b| b.to_vec()));
                    return Ok(Box::pin(stream));
                }
                Err(e) if e.exit() == super::Exit::Unreachable => {
                    if started.elapsed() > RECONNECT_FOR {
                        return Err(e);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_line_endings() {
        let mut p = Parser::default();
        assert!(
            p.feed(b": keep-alive\n\nid: 7\r\nevent: started\r")
                .is_empty()
        );
        let events = p.feed(b"\ndata: {\"a\":1}\r\n\r\ndata: x\ndata: y\n\n");
        assert_eq!(
            events,
            [
                SseEvent {
                    id: Some(7),
                    event: "started".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    id: None,
                    event: "message".into(),
                    data: "x\ny".into()
                },
            ]
        );
    }

    /// Serves one connection: returns the request head, writes `body`, and
    /// closes unless `keep_open`.
    async fn serve(
        listener: &tokio::net::TcpListener,
        body: &str,
        keep_open: bool,
    ) -> (String, Option<tokio::net::TcpStream>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            socket.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n{body}"
        );
        socket.write_all(response.as_bytes()).await.unwrap();
        socket.flush().await.unwrap();
        (
            String::from_utf8_lossy(&head).to_lowercase(),
            keep_open.then_some(socket),
        )
    }

    #[tokio::test]
    async fn a_dropped_feed_resumes_after_the_last_event_it_received() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = Client::new(&listener.local_addr().unwrap().to_string()).unwrap();
        let server = async move {
            let (first, _) = serve(&listener, "id: 5\nevent: a\ndata: x\n\n", false).await;
            let (second, socket) =
                serve(&listener, ": hi\n\nid: 6\nevent: b\ndata: y\n\n", true).await;
            (first, second, socket)
        };
        let server = tokio::spawn(server);
        let mut feed = Feed::new(
            &client,
            "/v1/stream".into(),
            vec![("queue", "q".into())],
            None,
        );
        let a = feed.next().await.unwrap();
        let b = feed.next().await.unwrap();
        assert_eq!(
            (a.id, a.event.as_str(), b.id, b.event.as_str()),
            (Some(5), "a", Some(6), "b")
        );
        let (first, second, _socket) = server.await.unwrap();
        assert!(first.starts_with("get /v1/stream?queue=q "), "{first}");
        assert!(!first.contains("last-event-id"), "{first}");
        assert!(second.contains("last-event-id: 5\r\n"), "{second}");
    }

    #[test]
    fn a_blank_line_without_data_dispatches_nothing() {
        let mut p = Parser::default();
        assert!(p.feed(b"event: end\n\n").is_empty());
        assert_eq!(p.feed(b"event: end\ndata:\n\n")[0].data, "");
    }
}
