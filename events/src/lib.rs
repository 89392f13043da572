//! The contract every runlog component and every client language shares.
//!
//! - [`event`], [`spec`] and [`envelope`] define what is recorded: the event
//!   types of an execution's life, the task specification, and the
//!   CloudEvents envelope around each event.
//! - [`codec`] turns envelopes into NATS messages (headers + JSON or
//!   MessagePack body) and back, with typed errors for untrusted input.
//! - [`decider`] holds the rules: the pure `decide`/`evolve` pair that the
//!   engine, the workers, the projections and the tests all call.
//! - [`subject`] and [`stream`] name every subject and define every stream
//!   and consumer, so engine and workers agree on one layout.
//! - [`journal`] appends events with optimistic concurrency and replays an
//!   execution's history: the only way components write the log.
//! - [`work`] is a worker's view of a delivered `queued` event, and
//!   [`timer`] the broker-held timers (retries, starts, deadlines).
//! - [`schema`] exports the JSON Schema of every event body, the envelope,
//!   the commands and the task spec, for clients in other languages.

#![warn(missing_docs)]

pub mod codec;
pub mod decider;
pub mod direct;
pub mod envelope;
pub mod event;
mod humantime_opt;
pub mod id;
pub mod journal;
pub mod occ;
pub mod pool;
pub mod resources;
pub mod schedule;
pub mod schema;
pub mod sealing;
pub mod secrets;
pub mod server;
pub mod spec;
pub mod stream;
pub mod subject;
pub mod submission;
pub mod timer;
pub mod work;
pub mod workflow;

pub use decider::{Command, ExecutionState, Rejection, Status, decide, evolve};
pub use envelope::{Envelope, TraceParent};
pub use event::{Event, EventType};
pub use id::{ExecutionId, QueueName, ScheduleId};
pub use spec::{ErrorClass, Priority, RetryPolicy, TaskError, TaskSpec};
pub use subject::Subjects;
pub use work::WorkItem;
