//! What runlog's tests share, and nothing the shipped binaries need.
//!
//! It re-exports the launcher of real nats-servers, [`runlog_localnats`] ([`NatsServer`],
//! [`Cluster`]), so a test names one crate, and adds [`eventually`]: waiting on a condition
//! with a deadline, the one way a test synchronises with the system it drives, and
//! [`Postgres`] and [`Sshd`], a throwaway PostgreSQL server and OpenSSH server.

#![warn(missing_docs)]

mod otlp;
mod postgres;
mod process;
mod secret_key;
mod sshd;
mod wait;

pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use postgres::Postgres;
pub use process::KilledOnDrop;
pub use runlog_localnats::*;
pub use secret_key::SecretKey;
pub use sshd::{KeyType, PASSPHRASE, Sshd};
pub use wait::eventually;
