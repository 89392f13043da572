//! The worker runtime: priority consumption, capacity rules, liveness and
//! graceful shutdown.
