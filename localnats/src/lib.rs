//! Local nats-server processes: the server `runlog dev` runs, and the real servers (no mocks)
//! of the tests and the benchmarks.
//!
//! [`NatsServer`] is one server with JetStream on `127.0.0.1`, a free port and a temporary
//! store; [`Cluster`] is three or more of them routed into one JetStream cluster. Both return
//! from `start` only once the servers are ready, can be killed with SIGKILL and restarted on
//! the same ports and stores for fault tests, and kill their processes and delete their
//! temporary directories when dropped. The API is synchronous (`std::process`), so it works
//! in and out of an async runtime and `Drop` needs none.
//!
//! Modules: [`binary`](nats_server_binary) finds the pinned nats-server
//! (`./scripts/setup.sh` installs it), `config` renders a server's configuration file,
//! `process` spawns, probes and signals one server, `probe` holds the readiness checks
//! (client port, `GET /healthz`), and `server` and `cluster` build the public types on top.

#![warn(missing_docs)]

mod binary;
mod cluster;
mod config;
mod error;
mod probe;
mod process;
mod server;

pub use binary::{BinarySearch, NATS_SERVER_ENV, NATS_SERVER_VERSION, nats_server_binary};
pub use cluster::Cluster;
pub use error::Error;
pub use server::{NatsServer, NatsServerBuilder};
