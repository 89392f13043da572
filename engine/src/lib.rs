//! The runlog engine: the only component that turns a caller's request into
//! the first events of an execution.
//!
//! - [`intake`]: a submission is checked by the core's `decide`, recorded as
//!   `submitted` with an expected sequence of 0 (so an execution is created
//!   exactly once), and queued for its first attempt.
//! - [`projection`]: the log folded into an in-memory read model that can be
//!   thrown away and rebuilt by replay.
//!
//! The reactor and the HTTP API grow here next, on the same journal.
#![warn(missing_docs)]

pub mod intake;
pub mod projection;

pub use intake::{Accepted, Intake, IntakeError, Submission};
pub use projection::Projection;
