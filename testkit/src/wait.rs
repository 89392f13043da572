//! Waiting on a condition with a deadline.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The first pause between two checks; it doubles up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(5);

/// The longest pause between two checks: a condition that holds is seen within this.
const LONGEST_PAUSE: Duration = Duration::from_millis(50);

/// Runs `check` until it yields a value, for at most `within`, and returns the value.
///
/// `check` answers `Ok(Some(value))` once the condition holds and `Ok(None)` while it does
/// not. An error is "not yet" too (what a test drives may still be starting), and says why:
/// return one, with `ensure!` or `bail!`, to have the failure show what the check saw. What
/// must hold on every check, not just eventually, is an `assert!`: it fails at once. The
/// pause between checks starts short and grows; the last check runs at the deadline.
///
/// # Errors
///
/// Past the deadline: `"{what}: not within {within:?}"`, caused by the last check's error if
/// it answered one.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> anyhow::Result<()> {
/// use std::time::Duration;
///
/// let start = tokio::time::Instant::now();
/// let waited = runlog_testkit::eventually(Duration::from_secs(5), "50 ms to pass", || async {
///     let elapsed = start.elapsed();
///     anyhow::ensure!(elapsed >= Duration::from_millis(50), "only {elapsed:?} passed");
///     Ok(Some(elapsed))
/// })
/// .await?;
/// assert!(waited >= Duration::from_millis(50));
///
/// let never = runlog_testkit::eventually(Duration::from_millis(20), "never", || async {
///     anyhow::Ok(None::<()>)
/// });
/// assert_eq!(never.await.unwrap_err().to_string(), "never: not within 20ms");
/// # Ok(())
/// # }
/// ```
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    let mut pause = FIRST_PAUSE;
    loop {
        let last = match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => None,
            Err(error) => Some(error),
        };
        let now = Instant::now();
        if now >= deadline {
            let timed_out = format!("{what}: not within {within:?}");
            return Err(match last {
                Some(error) => error.context(timed_out),
                None => anyhow::anyhow!(timed_out),
            });
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checks_run_until_the_deadline_with_growing_pauses() {
        let start = Instant::now();
        let mut checks = Vec::new();
        let outcome = eventually(Duration::from_millis(250), "nothing", || {
            checks.push(start.elapsed());
            async { Ok(None::<()>) }
        })
        .await;
        assert!(outcome.is_err());
        let last = *checks.last().unwrap();
        assert!(
            last >= Duration::from_millis(250),
            "the last check ran at {last:?}"
        );
        // Pauses of 5, 10, 20, 40, 50, 50, 50 and 25 ms (cut at the deadline) make nine
        // checks; a slow machine makes fewer.
        assert!((3..=9).contains(&checks.len()), "{checks:?}");
    }

    #[tokio::test]
    async fn a_timeout_names_what_and_the_last_error() {
        let mut n = 0;
        let error = eventually(Duration::from_millis(50), "three", || {
            n += 1;
            let seen = n;
            async move { Err::<Option<()>, _>(anyhow::anyhow!("saw {seen}")) }
        })
        .await
        .unwrap_err();
        assert_eq!(error.to_string(), "three: not within 50ms");
        assert_eq!(error.root_cause().to_string(), format!("saw {n}"));
    }

    #[tokio::test]
    async fn an_error_is_not_yet() {
        let mut n = 0;
        let value = eventually(Duration::from_secs(1), "the third check", || {
            n += 1;
            let seen = n;
            async move {
                anyhow::ensure!(seen >= 3, "check {seen}");
                Ok(Some(seen))
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);
    }
}
