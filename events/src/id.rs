//! Identifiers that appear inside NATS subjects.
//!
//! Every id that becomes a subject token (execution ids, queue names, event
//! type names) is validated once, at the edge, so that no subject can ever be
//! built with a `.`, a wildcard or whitespace in it.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest token we accept, in bytes. Subjects stay short enough to keep
/// the server's subject index small.
pub const MAX_TOKEN_LEN: usize = 64;

/// Why a string cannot be used as a subject token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The string is empty.
    #[error("must not be empty")]
    Empty,
    /// The string is longer than [`MAX_TOKEN_LEN`] bytes.
    #[error("must be at most {MAX_TOKEN_LEN} bytes, got {0}")]
    TooLong(usize),
    /// The string holds a character outside `[A-Za-z0-9_-]`.
    #[error("may only hold letters, digits, '-' and '_' (found {0:?})")]
    BadChar(char),
}

/// Checks that `s` is a safe NATS subject token: 1..=64 bytes of `[A-Za-z0-9_-]`.
pub fn validate_token(s: &str) -> Result<(), TokenError> {
    if s.is_empty() {
        return Err(TokenError::Empty);
    }
    if s.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong(s.len()));
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        Some(c) => Err(TokenError::BadChar(c)),
        None => Ok(()),
    }
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        // Shared, not copied: a clone costs a reference count, and the read
        // models that hold an id in several indexes hold its bytes once.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
        #[schemars(transparent)]
        pub struct $name(
            #[schemars(with = "String", length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
            Arc<str>,
        );

        impl $name {
            /// Validates `s` as a subject token.
            pub fn new(s: impl Into<String>) -> Result<Self, TokenError> {
                let s: String = s.into();
                validate_token(&s)?;
                Ok(Self(s.into()))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        // Hash and Eq are those of the string, so maps keyed by the id can
        // be read with a `&str` (a subject token, say).
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = TokenError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

token_id!(
    /// The id of one execution: a UUIDv7 when runlog makes it, or any
    /// caller-chosen subject-safe token.
    ///
    /// # Examples
    /// ```
    /// use runlog_events::ExecutionId;
    /// let id = ExecutionId::generate();
    /// assert_eq!(id.as_str().len(), 36);
    /// assert!(ExecutionId::new("nightly-backup-2026-11-23").is_ok());
    /// assert!(ExecutionId::new("a.b").is_err());
    /// ```
    ExecutionId
);

token_id!(
    /// The name of a queue (`default`, `backups`, ...). Workers subscribe to
    /// queues; every queue has one dispatch subject per priority.
    QueueName
);

token_id!(
    /// The id of a schedule (`nightly-backup`): caller-chosen, or a UUIDv7.
    ScheduleId
);

impl ScheduleId {
    /// A new, time-ordered (UUIDv7) schedule id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().hyphenated().to_string().into())
    }
}

impl ExecutionId {
    /// A new, time-ordered (UUIDv7) execution id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().hyphenated().to_string().into())
    }
}

impl Default for QueueName {
    fn default() -> Self {
        Self("default".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_reject_subject_syntax() {
        for bad in ["", "a.b", "a*", ">", "a b", "é", &"x".repeat(65)] {
            assert!(validate_token(bad).is_err(), "{bad:?} should be rejected");
        }
        for good in ["a", "default", "0195-abc_DEF", &"x".repeat(64)] {
            assert!(validate_token(good).is_ok(), "{good:?} should be accepted");
        }
    }

    #[test]
    fn deserialising_validates() {
        let err = serde_json::from_str::<ExecutionId>("\"a.b\"").unwrap_err();
        assert!(err.to_string().contains("letters, digits"));
    }
}
