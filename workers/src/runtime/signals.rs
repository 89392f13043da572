//! Cancel signals: one subscription per worker on `<p>.cancel.*`, routed by
//! execution id to the attempts this worker runs.
//!
//! An attempt registers its execution before it claims (so a signal sent
//! right after the claim is not missed) and is told through a
//! [`CancellationToken`]. A signal for an execution this worker does not run
//! is dropped. Signals are core NATS and may be missed; the log is what
//! counts: a result reported after a recorded cancel ends the attempt
//! `cancelled` (the core decides so), and the attempt's deadline stops a
//! task that never heard.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use runlog_events::{ExecutionId, Subjects};
use tokio_util::sync::CancellationToken;

/// The executions waiting for a cancel signal, each with its token and the
/// number of attempts holding it.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    waiting: Mutex<HashMap<ExecutionId, (CancellationToken, usize)>>,
}

impl Signals {
    /// Subscribes `client` to every cancel signal of the installation and
    /// routes them until `stop`.
    pub async fn start(
        client: &async_nats::Client,
        subjects: &Subjects,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, async_nats::SubscribeError> {
        let subscriber = client.subscribe(subjects.all_cancels()).await?;
        let signals = Arc::new(Signals::default());
        let prefix = subjects.cancel_prefix();
        tokio::spawn({
            let signals = signals.clone();
            let mut subscriber = subscriber;
            async move {
                loop {
                    let message = tokio::select! {
                        _ = stop.cancelled() => return,
                        message = subscriber.next() => match message {
                            Some(message) => message,
                            None => return,
                        },
                    };
                    if let Some(id) = message.subject.strip_prefix(prefix.as_str()) {
                        signals.signal(id);
                    }
                }
            }
        });
        Ok(signals)
    }

    /// Starts listening for `execution`'s cancel signal; stops when the
    /// returned watch is dropped.
    pub fn watch(self: &Arc<Self>, execution: &ExecutionId) -> Watch {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let entry = waiting
            .entry(execution.clone())
            .or_insert_with(|| (CancellationToken::new(), 0));
        entry.1 += 1;
        Watch {
            signals: self.clone(),
            execution: execution.clone(),
            token: entry.0.clone(),
        }
    }

    fn signal(&self, id: &str) {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, _)) = waiting.get(id) {
            token.cancel();
        }
    }
}

/// One attempt's interest in its execution's cancel signal.
#[derive(Debug)]
pub(crate) struct Watch {
    signals: Arc<Signals>,
    execution: ExecutionId,
    token: CancellationToken,
}

impl Watch {
    /// Resolves once the signal came.
    pub async fn signalled(&self) {
        self.token.cancelled().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut waiting = self
            .signals
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = waiting.get_mut(&self.execution) {
            entry.1 -= 1;
            if entry.1 == 0 {
                waiting.remove(&self.execution);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_reaches_every_watch_of_its_execution_and_no_other() {
        let signals = Arc::new(Signals::default());
        let (e1, e2) = (
            ExecutionId::new("e1").unwrap(),
            ExecutionId::new("e2").unwrap(),
        );
        let (a, b, other) = (signals.watch(&e1), signals.watch(&e1), signals.watch(&e2));
        signals.signal("e1");
        assert!(a.token.is_cancelled() && b.token.is_cancelled());
        assert!(!other.token.is_cancelled());
        drop((a, b));
        assert!(!signals.waiting.lock().unwrap().contains_key("e1"));
        signals.signal("nobody");
        drop(other);
        assert!(signals.waiting.lock().unwrap().is_empty());
    }
}
