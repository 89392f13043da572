//! A value that must never be printed: NATS passwords and tokens.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// What a [`Secret`] shows instead of itself.
pub const REDACTED: &str = "<redacted>";

/// A password or token. `Debug` and `Serialize` write [`REDACTED`], so no
/// printed configuration (`--print-config`, logs) can leak it; only
/// [`Secret::expose`] reads it, where it is sent.
///
/// # Examples
/// ```
/// use runlog_config::Secret;
///
/// let token = Secret::new("s3cr3t");
/// assert_eq!(token.expose(), "s3cr3t");
/// assert_eq!(format!("{token:?}"), "<redacted>");
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}
