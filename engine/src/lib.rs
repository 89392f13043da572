//! The runlog engine: the only component that turns a caller's request into
//! the first events of an execution.
//!
//! Today it owns [`intake`]: a submission is checked by the core's `decide`,
//! recorded as `submitted` with an expected sequence of 0 (so an execution
//! is created exactly once), and queued for its first attempt. The reactor,
//! projections and HTTP API grow here next, each on the same journal.
#![warn(missing_docs)]

pub mod intake;

pub use intake::{Accepted, Intake, IntakeError, Submission};
