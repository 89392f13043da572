//! Waiting on a condition with a deadline, shared by the CLI's test files.

use std::time::Duration;

use anyhow::{Result, bail};
use tokio::time::Instant;

/// Polls `check` every 25 ms until it yields a value or `limit` passes.
pub async fn wait<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
