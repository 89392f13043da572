//! The failure of a key-value bucket that holds configuration (workflow
//! definitions, servers, pools), shared by the stores over them.

/// A bucket operation failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} ({source}); is the NATS server reachable?")]
pub struct BucketError {
    /// What was being done (`store the server`).
    pub action: &'static str,
    /// The client's error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// `action` failed with `source`.
pub(crate) fn failed(
    action: &'static str,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> BucketError {
    BucketError {
        action,
        source: source.into(),
    }
}
