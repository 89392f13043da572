//! What a run leaves of its output: a bounded copy of each stream (head
//! and tail) and the split into lines.

use std::collections::VecDeque;

use runlog_events::event::LogStream;
use serde_json::Value;

use super::observe::Observer;

/// Longer lines are split: a program writing binary or one endless line
/// must not grow memory without limit.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// What the pumps of both streams write to.
#[derive(Debug)]
pub(in crate::executor) struct Shared {
    stdout: Capture,
    stderr: Capture,
    pub(in crate::executor) observer: Observer,
}

impl Shared {
    pub(in crate::executor) fn new(capture_bytes: usize, observer: Observer) -> Self {
        Shared {
            stdout: Capture::new(capture_bytes),
            stderr: Capture::new(capture_bytes),
            observer,
        }
    }

    pub(in crate::executor) fn capture(&mut self, stream: LogStream) -> &mut Capture {
        match stream {
            LogStream::Stdout => &mut self.stdout,
            LogStream::Stderr => &mut self.stderr,
        }
    }

    /// The output of a successful run.
    pub(in crate::executor) fn output(self) -> Value {
        let mut output = serde_json::Map::new();
        output.insert("exit_code".into(), 0.into());
        output.insert("stdout".into(), self.stdout.text().into());
        output.insert("stderr".into(), self.stderr.text().into());
        output.insert(
            "stdout_truncated_bytes".into(),
            self.stdout.truncated.into(),
        );
        output.insert(
            "stderr_truncated_bytes".into(),
            self.stderr.truncated.into(),
        );
        output.extend(self.observer.extracted);
        Value::Object(output)
    }
}

/// A bounded copy of a stream: its first and last bytes, and how many
/// were dropped between them.
#[derive(Debug)]
pub(in crate::executor) struct Capture {
    head_limit: usize,
    tail_limit: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    truncated: u64,
}

impl Capture {
    fn new(limit: usize) -> Self {
        Capture {
            head_limit: limit - limit / 2,
            tail_limit: limit / 2,
            head: Vec::new(),
            tail: VecDeque::new(),
            truncated: 0,
        }
    }

    pub(in crate::executor) fn push(&mut self, mut bytes: &[u8]) {
        let room = self.head_limit - self.head.len();
        if room > 0 {
            let taken = room.min(bytes.len());
            self.head.extend_from_slice(&bytes[..taken]);
            bytes = &bytes[taken..];
        }
        if bytes.len() > self.tail_limit {
            let skipped = bytes.len() - self.tail_limit;
            self.truncated += (self.tail.len() + skipped) as u64;
            self.tail.clear();
            bytes = &bytes[skipped..];
        }
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.tail_limit);
        self.tail.drain(..overflow);
        self.truncated += overflow as u64;
        self.tail.extend(bytes);
    }

    /// The kept bytes as text, with a marker where bytes were dropped.
    fn text(&self) -> String {
        let mut bytes = self.head.clone();
        if self.truncated > 0 {
            bytes.extend_from_slice(
                format!("\n[... {} bytes truncated ...]\n", self.truncated).as_bytes(),
            );
        }
        bytes.extend(self.tail.iter());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Splits a byte stream into lines. `\n`, `\r\n` and a lone `\r` end a
/// line (progress bars redraw with `\r`); lines longer than
/// [`MAX_LINE_BYTES`] are split.
#[derive(Debug, Default)]
pub(in crate::executor) struct Lines {
    line: Vec<u8>,
    after_cr: bool,
}

impl Lines {
    pub(in crate::executor) fn push(&mut self, bytes: &[u8], mut emit: impl FnMut(String)) {
        for &byte in bytes {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    emit(self.take());
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(byte);
                    if self.line.len() >= MAX_LINE_BYTES {
                        emit(self.take());
                    }
                }
            }
        }
    }

    /// Emits the last line when the stream ended without a newline.
    pub(in crate::executor) fn finish(&mut self, mut emit: impl FnMut(String)) {
        if !self.line.is_empty() {
            emit(self.take());
        }
    }

    fn take(&mut self) -> String {
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&[u8]]) -> Vec<String> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for chunk in chunks {
            lines.push(chunk, |l| out.push(l));
        }
        lines.finish(|l| out.push(l));
        out
    }

    #[test]
    fn lines_end_at_newline_crlf_and_carriage_return() {
        assert_eq!(
            lines_of(&[b"a\nb\r", b"\nc\r10%\r20%", b"\n\nlast"]),
            ["a", "b", "c", "10%", "20%", "", "last"]
        );
    }

    #[test]
    fn an_endless_line_is_split() {
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        let lines = lines_of(&[&long]);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert_eq!(lines[1].len(), 10);
    }

    #[test]
    fn capture_keeps_head_and_tail_and_counts_the_rest() {
        let mut capture = Capture::new(10);
        for chunk in [&b"0123"[..], b"456789abc", b"defghij", b"k"] {
            capture.push(chunk);
        }
        assert_eq!(capture.head, b"01234");
        assert_eq!(capture.tail.iter().copied().collect::<Vec<_>>(), b"ghijk");
        assert_eq!(capture.truncated, 11);
        assert_eq!(capture.text(), "01234\n[... 11 bytes truncated ...]\nghijk");
    }

    #[test]
    fn capture_under_the_limit_is_exact() {
        let mut capture = Capture::new(10);
        capture.push(b"hello");
        capture.push(b"!");
        assert_eq!(capture.text(), "hello!");
        assert_eq!(capture.truncated, 0);
        let mut none = Capture::new(0);
        none.push(b"abc");
        assert_eq!(
            (none.text().as_str(), none.truncated),
            ("\n[... 3 bytes truncated ...]\n", 3)
        );
    }
}
