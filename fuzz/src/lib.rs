//! The input format of the `decode` fuzz target, shared with the seed
//! generator (`events/tests/fuzz_seeds.rs`, which includes this file as a module).
//!
//! A fuzz input is a NATS message written as text, so that seeds and crash
//! artifacts can be read and edited by hand:
//!
//! ```text
//! ce-specversion: 1.0
//! ce-type: runlog.execution.started
//! Content-Type: application/json
//!
//! {"worker":"w1"}
//! ```
//!
//! - The header block ends at the first empty line; everything after it is
//!   the body, byte for byte. An input that starts with an empty line has no
//!   headers; an input without any empty line is all body (the raw-body path
//!   still gets it).
//! - Each header line is `name:value`, one optional space after the colon
//!   is dropped. Repeated names append values, as NATS allows.
//! - Lines that async-nats itself would refuse (no colon, an invalid name,
//!   a `\r` in the value, invalid UTF-8) are skipped: the client panics on
//!   such names and values when they are inserted, which is its contract and
//!   not the decoder's, and a message read off the wire can never hold them.

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};

/// Splits a fuzz input into the message headers and body.
pub fn parse_input(data: &[u8]) -> (HeaderMap, &[u8]) {
    let (block, body) = if let Some(rest) = data.strip_prefix(b"\n") {
        (&data[..0], rest)
    } else if let Some(i) = data.windows(2).position(|w| w == b"\n\n") {
        (&data[..i], &data[i + 2..])
    } else {
        (&data[..0], data)
    };
    let mut headers = HeaderMap::new();
    for line in block.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        let (Ok(name), Ok(value)) = (HeaderName::from_str(name), HeaderValue::from_str(value))
        else {
            continue;
        };
        headers.append(name, value);
    }
    (headers, body)
}

/// Writes headers and body in the format [`parse_input`] reads, headers
/// sorted by name (values of one name keep their order) so that the output
/// is deterministic.
pub fn format_input(headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    let mut names: Vec<(&str, &Vec<HeaderValue>)> = headers
        .iter()
        .map(|(name, values)| (name.as_ref(), values))
        .collect();
    names.sort_by_key(|(name, _)| *name);
    let mut out = Vec::new();
    for (name, values) in names {
        for value in values {
            out.extend_from_slice(format!("{name}: {}\n", value.as_str()).as_bytes());
        }
    }
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}
