//! The runlog worker runtime.
//!
//! Workers hold no state that matters: everything they know about an
//! execution they read from the log, and everything they do they record
//! there. Today this crate owns [`attempt`]: claiming an attempt with an
//! optimistic append, reporting its progress, and recording its result.
//! Priority consumption, executors and liveness grow here next.
#![warn(missing_docs)]

pub mod attempt;
pub mod executor;
pub mod handler;
pub mod runtime;

pub use attempt::{Attempt, AttemptError, Claim};
pub use handler::{Context, Handler, HandlerResult, Registry};
