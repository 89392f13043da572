//! What a handler measured of its attempt: the CPU time and memory of the
//! processes it ran, the network bytes it moved, the log bytes it wrote.
//! The handler adds to it through its [`Context`](crate::handler::Context);
//! the runtime reads it when the attempt ends and records it, with the
//! wall time and the size of the result, on the attempt's terminal event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use runlog_events::resources::Resources;

/// One attempt's meters. Cheap to add to from any thread.
#[derive(Debug, Default)]
pub struct Meters {
    log_bytes: AtomicU64,
    measured: Mutex<Measured>,
}

/// What only some executors measure: absent until one does.
#[derive(Debug, Default)]
struct Measured {
    cpu_user: Option<Duration>,
    cpu_system: Option<Duration>,
    peak_rss_bytes: Option<u64>,
    sent: Option<u64>,
    received: Option<u64>,
}

impl Meters {
    /// Counts a log line of `len` bytes (and its newline).
    pub(crate) fn logged(&self, len: usize) {
        self.log_bytes.fetch_add(len as u64 + 1, Ordering::Relaxed);
    }

    /// Adds a process's CPU times; its peak memory counts if it is the
    /// largest so far.
    pub(crate) fn process(&self, user: Duration, system: Duration, peak_rss_bytes: u64) {
        let mut m = self.lock();
        m.cpu_user = Some(m.cpu_user.unwrap_or_default() + user);
        m.cpu_system = Some(m.cpu_system.unwrap_or_default() + system);
        m.peak_rss_bytes = m.peak_rss_bytes.max(Some(peak_rss_bytes));
    }

    /// Adds bytes sent and received over the network.
    pub(crate) fn network(&self, sent: u64, received: u64) {
        let mut m = self.lock();
        m.sent = Some(m.sent.unwrap_or(0).saturating_add(sent));
        m.received = Some(m.received.unwrap_or(0).saturating_add(received));
    }

    /// What the attempt used, given its wall time and the size of its
    /// result.
    pub fn resources(&self, wall: Duration, output_bytes: u64) -> Resources {
        let m = self.lock();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Resources {
            wall_ms: ms(wall),
            cpu_user_ms: m.cpu_user.map(ms),
            cpu_system_ms: m.cpu_system.map(ms),
            peak_rss_bytes: m.peak_rss_bytes,
            output_bytes,
            log_bytes: self.log_bytes.load(Ordering::Relaxed),
            network_sent_bytes: m.sent,
            network_received_bytes: m.received,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Measured> {
        self.measured.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The length of `value` as JSON, without keeping the text.
pub(crate) fn json_len(value: &impl serde::Serialize) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail; a value that cannot be encoded
    // is refused when the event is, and counts what was written.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_was_measured_is_reported() {
        let m = Meters::default();
        m.logged(9);
        let r = m.resources(Duration::from_millis(1500), 12);
        assert_eq!(r.wall_ms, 1500);
        assert_eq!(r.log_bytes, 10);
        assert_eq!(r.output_bytes, 12);
        assert_eq!(
            (r.cpu_user_ms, r.peak_rss_bytes, r.network_sent_bytes),
            (None, None, None)
        );

        m.process(Duration::from_millis(700), Duration::from_millis(50), 100);
        m.process(Duration::from_millis(300), Duration::from_millis(50), 300);
        m.network(10, 20);
        let r = m.resources(Duration::ZERO, 0);
        assert_eq!(r.cpu_user_ms, Some(1000));
        assert_eq!(r.cpu_system_ms, Some(100));
        assert_eq!(r.peak_rss_bytes, Some(300));
        assert_eq!(
            (r.network_sent_bytes, r.network_received_bytes),
            (Some(10), Some(20))
        );
    }

    #[test]
    fn json_len_is_the_encoded_length() {
        let v = serde_json::json!({"a": [1, 2, "three"]});
        assert_eq!(json_len(&v), serde_json::to_vec(&v).unwrap().len() as u64);
    }
}
