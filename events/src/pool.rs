//! Joining an agent pool: what a worker started with `--pool NAME` asks the
//! engine on `<p>.pools.join.<NAME>` (request/reply, JSON) before it takes
//! any work, and again every [`REJOIN`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Subjects;

/// How often a pool worker asks again, so a revoked token stops it.
pub const REJOIN: Duration = Duration::from_secs(30);

/// The subject a worker asks to join `pool` on.
pub fn join_subject(subjects: &Subjects, pool: &str) -> String {
    format!("{}.pools.join.{pool}", subjects.prefix())
}

/// A worker's request to join a pool.
#[derive(Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The worker's id.
    pub worker: String,
    /// The pool token (`<id>.<secret>`).
    pub token: String,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("worker", &self.worker)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// The engine's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAnswer {
    /// Whether the worker may take the pool's work.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl JoinAnswer {
    /// Welcome.
    pub fn ok() -> Self {
        JoinAnswer {
            ok: true,
            reason: None,
        }
    }

    /// Refused, and why.
    pub fn refused(reason: String) -> Self {
        JoinAnswer {
            ok: false,
            reason: Some(reason),
        }
    }
}
