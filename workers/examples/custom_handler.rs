//! A custom task kind next to the built-in `shell` and `http`.
//!
//! `primes` counts the primes below `limit`, reports progress as it goes,
//! and stops when the attempt is cancelled. Run it with
//! `cargo run -p runlog-worker --example custom_handler`.

use runlog_events::event::Progress;
use runlog_events::{ErrorClass, ExecutionId, TaskError};
use runlog_worker::executor;
use runlog_worker::handler::{Context, Handler, HandlerResult};
use serde_json::json;

/// Counts primes below `input.limit`.
struct Primes;

/// Numbers checked between two progress reports and cancellation checks.
const BATCH: u64 = 10_000;

impl Handler for Primes {
    async fn run(&self, ctx: Context) -> HandlerResult {
        let limit = ctx
            .input()
            .get("limit")
            .and_then(|l| l.as_u64())
            .filter(|l| *l >= 2)
            .ok_or_else(|| {
                TaskError::new(
                    ErrorClass::InvalidInput,
                    "primes input: `limit` must be an integer >= 2, like {\"limit\": 100000}",
                )
            })?;
        let mut found = 0_u64;
        for start in (2..limit).step_by(BATCH as usize) {
            if ctx.is_cancelled() {
                return Err(TaskError::new(
                    ErrorClass::Cancelled,
                    format!("cancelled after checking numbers below {start}"),
                ));
            }
            found += (start..(start + BATCH).min(limit))
                .filter(|n| is_prime(*n))
                .count() as u64;
            let done = (start + BATCH).min(limit);
            ctx.report(Progress {
                percent: Some(done as f32 * 100.0 / limit as f32),
                message: Some(format!("checked numbers below {done}")),
                counters: [("primes".to_owned(), found)].into(),
            });
            // CPU-bound work: give the runtime a chance to run other tasks.
            tokio::task::yield_now().await;
        }
        Ok(json!({"limit": limit, "primes": found}))
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut registry = executor::builtin();
    registry.register("primes", Primes);
    println!("kinds: {:?}", registry.kinds());

    let (ctx, telemetry) = Context::builder(
        ExecutionId::generate(),
        1,
        "primes",
        json!({"limit": 100_000}),
    )
    .build();
    let handler = registry
        .get(ctx.kind())
        .ok_or_else(|| anyhow::anyhow!("no handler for {}", ctx.kind()))?;
    match handler.run_boxed(ctx).await {
        Ok(output) => println!("output: {output}"),
        Err(error) => println!("failed ({:?}): {}", error.class, error.message),
    }
    if let Some(progress) = telemetry.progress.borrow().as_ref() {
        println!("last progress: {progress:?}");
    }
    Ok(())
}
