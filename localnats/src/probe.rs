//! Readiness checks against a running server: its client port and its monitoring endpoint.
//!
//! A tiny HTTP/1.0 client over `std::net::TcpStream` is enough for the monitoring port and
//! keeps the crate free of an HTTP dependency.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// How often conditions are polled.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(20);

/// An HTTP response: status code and body.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: String,
}

pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
pub(crate) fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&loopback(port), CONNECT_TIMEOUT).is_ok()
}

/// `GET path` on `127.0.0.1:port`.
pub(crate) fn get(port: u16, path: &str) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&loopback(port), CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    // HTTP/1.0: the server closes the connection after the body.
    stream.read_to_end(&mut raw)?;
    parse(&String::from_utf8_lossy(&raw))
}

fn parse(raw: &str) -> std::io::Result<Response> {
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(invalid)?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(invalid)?;
    Ok(Response {
        status,
        body: body.to_owned(),
    })
}

/// Polls `check` every [`POLL_EVERY`] until it returns `Ok`, or until `deadline`, and then
/// returns the last `Err`. `check` may also stop early with `Err(Stop(e))`.
pub(crate) fn poll_until<T, E>(
    deadline: Instant,
    mut check: impl FnMut() -> Result<T, Poll<E>>,
) -> Result<T, Poll<E>> {
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(Poll::Stop(error)) => return Err(Poll::Stop(error)),
            Err(Poll::Pending(why)) if Instant::now() >= deadline => {
                return Err(Poll::Pending(why));
            }
            Err(Poll::Pending(_)) => std::thread::sleep(POLL_EVERY),
        }
    }
}

/// The outcome of one failed check in [`poll_until`].
#[derive(Debug)]
pub(crate) enum Poll<E> {
    /// Not yet; the string says what was seen.
    Pending(String),
    /// Give up now.
    Stop(E),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let response = parse(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\r\n{\"status\":\"unavailable\"}",
        )
        .unwrap();
        assert_eq!(response.status, 503);
        assert_eq!(response.body, "{\"status\":\"unavailable\"}");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("INFO {}\r\n").is_err());
    }

    #[test]
    fn poll_until_returns_the_last_reason_at_the_deadline() {
        let mut calls = 0;
        let outcome: Result<(), Poll<()>> =
            poll_until(Instant::now() + Duration::from_millis(50), || {
                calls += 1;
                Err(Poll::Pending(format!("call {calls}")))
            });
        assert!(matches!(outcome, Err(Poll::Pending(why)) if why == format!("call {calls}")));
        assert!(calls >= 2);
    }
}
