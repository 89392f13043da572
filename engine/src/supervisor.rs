//! The engine's long-running parts, each under a name: one that fails or
//! panics is logged with that name and started again after a backoff, until
//! the engine's shutdown token is cancelled.

use std::future::Future;
use std::time::Duration;

use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

/// The first pause before a failed part starts again (NATS restarting, say).
const FIRST_PAUSE: Duration = Duration::from_millis(500);
/// The longest pause between restarts of a part that keeps failing: short,
/// because a part that waits for a restarted NATS server holds up recovery
/// by as much.
const MAX_PAUSE: Duration = Duration::from_secs(2);
/// A part that ran this long before failing starts again after the first
/// pause, not after the grown one.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// The engine's parts, stopped together when the set is dropped.
#[derive(Debug, Default)]
pub(crate) struct Supervisor {
    parts: JoinSet<()>,
}

impl Supervisor {
    /// Runs `part` until `shutdown`: each run gets the token; a run that
    /// returns an error or panics is logged as `name` and started again
    /// after a pause that doubles (up to [`MAX_PAUSE`]) while it keeps
    /// failing. A run that returns `Ok` before the shutdown is started again
    /// too: every part runs as long as the engine does.
    pub(crate) fn restart<F, Fut, E>(
        &mut self,
        name: &'static str,
        shutdown: CancellationToken,
        mut part: F,
    ) where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.parts.spawn(async move {
            let mut pause = FIRST_PAUSE;
            while !shutdown.is_cancelled() {
                let started = tokio::time::Instant::now();
                let run = Run(tokio::spawn(part(shutdown.clone())));
                match run.finish().await {
                    Ok(Ok(())) if shutdown.is_cancelled() => break,
                    Ok(Ok(())) => tracing::warn!(part = name, "ended early; starting it again"),
                    Ok(Err(e)) => {
                        tracing::warn!(part = name, error = %e, "failed; starting it again")
                    }
                    Err(e) if e.is_panic() => tracing::error!(
                        part = name,
                        panic = panic_message(e),
                        "panicked; starting it again"
                    ),
                    Err(_) => break, // the runtime is shutting down
                }
                if started.elapsed() >= HEALTHY_AFTER {
                    pause = FIRST_PAUSE;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(MAX_PAUSE);
            }
        });
    }

    /// Runs `part` once; a panic is logged as `name` (a part that cannot be
    /// started twice, or one that is restarted by its own loop).
    pub(crate) fn once<Fut>(&mut self, name: &'static str, part: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.parts.spawn(async move {
            if let Err(e) = Run(tokio::spawn(part)).finish().await
                && e.is_panic()
            {
                tracing::error!(part = name, panic = panic_message(e), "panicked");
            }
        });
    }

    /// Waits until every part stopped.
    pub(crate) async fn wait(mut self) {
        while self.parts.join_next().await.is_some() {}
    }
}

/// One run of a part, aborted if the supervisor is dropped while it runs.
struct Run<T>(tokio::task::JoinHandle<T>);

impl<T> Run<T> {
    async fn finish(mut self) -> Result<T, JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for Run<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_message(e: JoinError) -> String {
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_part_that_panics_or_fails_is_started_again_until_shutdown() {
        let runs = Arc::new(AtomicU32::new(0));
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::default();
        let (counter, stop) = (runs.clone(), shutdown.clone());
        supervisor.restart("test", shutdown.clone(), move |_| {
            let counter = counter.clone();
            let stop = stop.clone();
            async move {
                match counter.fetch_add(1, Ordering::SeqCst) {
                    0 => panic!("the first run panics"),
                    1 => Err("the second fails"),
                    _ => {
                        stop.cancel();
                        Ok(())
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), supervisor.wait())
            .await
            .expect("the supervisor stops at shutdown");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn dropping_the_supervisor_stops_its_parts() {
        let shutdown = CancellationToken::new();
        let (started_tx, started) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (guard_tx, guard) = tokio::sync::oneshot::channel::<()>();
        let mut supervisor = Supervisor::default();
        let mut guard_tx = Some(guard_tx);
        supervisor.restart("test", shutdown, move |_| {
            let held = guard_tx.take();
            let started_tx = started_tx.clone();
            async move {
                let _held = held; // dropped only when the run ends
                let _ = started_tx.send(());
                std::future::pending::<Result<(), String>>().await
            }
        });
        let mut started = started;
        tokio::time::timeout(Duration::from_secs(10), started.recv())
            .await
            .expect("the part starts");
        drop(supervisor);
        tokio::time::timeout(Duration::from_secs(10), guard)
            .await
            .expect("the running part was aborted")
            .expect_err("its guard was dropped, never sent");
    }
}
