//! The runlog engine: the component that turns requests into the first
//! events of an execution, reacts to every event, and serves the read side.
//!
//! - [`intake`]: a submission is checked by the core's `decide`, its
//!   environment sealed, its idempotency key claimed, and it is recorded
//!   queued for its first attempt in one event (created exactly once) with
//!   its work item published, one at a time or a batch at once. [`submit`]
//!   holds its NATS doors, the [`api`] its HTTP door.
//! - [`reactor`]: a durable consumer that turns events into consequences:
//!   direct-door submissions, retries and deadlines held as broker
//!   schedules, dead letters, cancel signals; [`deadlines`] arms attempt
//!   deadlines from the projection.
//! - [`projection`]: the log folded into an in-memory read model that can be
//!   thrown away and rebuilt by replay, and [`snapshot`]ted so a restart
//!   replays only the tail; [`live`] fans stored events out to SSE clients.
//! - [`api`]: HTTP JSON, problem+json errors, Server-Sent Events; the
//!   dashboard it serves at `/` reads them like any client.
//! - [`retry`]: a new execution with an ended one's spec, for the retry
//!   route and bulk replays.
//! - [`operations`]: bulk replays of dead letters and bulk cancels, by
//!   filter, rate-limited, audited, each dead letter replayed at most once.
//! - [`workflow_runner`] runs workflow executions' graphs, and
//!   [`scheduler`] turns schedules' ticks into executions.
//! - [`pools`]: agent pools and their tokens, and the answer to agents
//!   that ask to join.
//! - [`servers`]: the server inventory `ssh` tasks name, resolved by
//!   intake into the address each execution records.
//! - [`tokens`]: API tokens with scopes, and who a request comes from;
//!   the API's auth layer checks them.
//! - [`engine`] puts them together under one shutdown token; [`config`]
//!   describes it.
#![warn(missing_docs)]

pub mod api;
pub mod audit;
pub mod bucket;
pub mod config;
pub mod deadlines;
pub mod engine;
mod follow;
pub mod intake;
pub mod live;
pub mod log_search;
pub mod metrics;
pub mod operations;
pub mod pools;
pub mod projection;
pub mod reactor;
pub mod retry;
pub mod scheduler;
pub mod servers;
pub mod snapshot;
pub mod submit;
mod supervisor;
pub mod tokens;
pub mod workers;
pub mod workflow_runner;
pub mod workflows;

pub use config::{EngineConfig, NatsConfig};
pub use engine::{Engine, EngineError};
pub use intake::{Accepted, Intake, IntakeError, Submission};
pub use projection::Projection;
pub use reactor::Reactor;
