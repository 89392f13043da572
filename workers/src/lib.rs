//! The runlog worker: takes work items from the queues, runs them, and
//! records what happened.
//!
//! Workers hold no state that matters: everything they know about an
//! execution they read from the log, and everything they do they record
//! there, through the rules of `runlog_events::decider`.
//!
//! - [`handler`] is the contract with the code that runs a task: a
//!   [`Handler`] per kind, in a [`Registry`], called with a [`Context`].
//! - [`executor`] holds the built-in handlers: `shell`, `http`, `echo`.
//! - [`policy`] is what a worker lets tasks do (kinds, programs, root),
//!   and [`identity`] the user child processes run as (`--run-as`).
//! - [`meters`] is what a handler measured of its attempt (CPU, memory,
//!   network and log bytes), recorded with its result.
//! - [`attempt`] is one attempt as the log sees it: the claim (an
//!   optimistic append of `started`), its telemetry, and its end
//!   ([`Attempt::finish`], one command the core resolves).
//! - [`runtime`] is the worker itself: priority fetching, capacity, limits
//!   and circuit breakers, cancel signals, liveness and shutdown. It uses
//!   `handler` and `attempt`; none of the modules above uses it.
#![warn(missing_docs)]

pub mod attempt;
pub mod executor;
pub mod handler;
pub mod identity;
pub mod meters;
pub mod policy;
pub mod runtime;

pub use attempt::{Attempt, AttemptError, Claim};
pub use handler::{Context, Handler, HandlerResult, Registry};
