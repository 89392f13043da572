//! Named secrets and sealed task environments, encrypted at rest.
//!
//! - **Secrets** live in the `<p>-secrets` bucket, one value per name,
//!   sealed for `secret:<name>` ([`Secrets`]). The engine writes them
//!   (`runlog secret set`); the worker that runs an attempt reads the ones
//!   its spec names. No API returns a value.
//! - **Task environments** live in the `<p>-env` bucket under the
//!   execution id, a JSON object of name → value sealed for
//!   `env:<execution>` ([`seal_env`], [`open_env`]).
//!
//! [`Secrets::rotate`] seals every value of both buckets again under the
//! ring's current key, and seals the plain environments an engine wrote
//! before environments were sealed.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::ExecutionId;
use crate::sealing::{Keyring, OpenError};

/// The largest secret value, in bytes.
pub const MAX_SECRET_LEN: usize = 64 * 1024;

pub use crate::spec::{MAX_SECRET_NAME_LEN, is_secret_name};

/// Why a secret cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Not a name a secret may have.
    #[error("{0:?} is not a secret name: use 1 to 128 of A-Z a-z 0-9 _ . - (not starting with .)")]
    BadName(String),
    /// The value is too large.
    #[error("a secret value may hold at most {MAX_SECRET_LEN} bytes")]
    TooLarge,
    /// The value is not UTF-8 text.
    #[error("a secret value must be UTF-8 text")]
    NotText,
    /// The stored value does not open.
    #[error("secret {name:?} cannot be opened: {source}")]
    Open {
        /// The secret.
        name: String,
        /// Why.
        source: OpenError,
    },
    /// The bucket did not answer.
    #[error("cannot {what}: {message}")]
    Store {
        /// What was being done.
        what: &'static str,
        /// What the server said.
        message: String,
    },
}

impl SecretError {
    fn store(what: &'static str, e: impl std::fmt::Display) -> SecretError {
        SecretError::Store {
            what,
            message: e.to_string(),
        }
    }
}

/// What [`Secrets::list`] says of a secret: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretInfo {
    /// Its name.
    pub name: String,
    /// When its value was last set.
    pub updated_at: DateTime<Utc>,
    /// The id of the key that sealed it.
    pub key: String,
}

/// What [`Secrets::rotate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rotation {
    /// The key everything is now sealed under.
    pub key: String,
    /// Secrets sealed again under it.
    pub secrets: usize,
    /// Task environments sealed again under it.
    pub environments: usize,
    /// Plain task environments (written before environments were sealed)
    /// sealed for the first time.
    pub plain_environments: usize,
    /// Values no key of the ring opens, left as they are (names or
    /// execution ids).
    pub unreadable: Vec<String>,
}

/// The `<p>-secrets` bucket, sealing with a key ring, and the `<p>-env`
/// bucket its rotation seals again.
#[derive(Debug, Clone)]
pub struct Secrets {
    bucket: kv::Store,
    environments: kv::Store,
    ring: Arc<Keyring>,
}

impl Secrets {
    /// Secrets in `bucket` and task environments in `environments`, sealed
    /// and opened with `ring`.
    pub fn new(bucket: kv::Store, environments: kv::Store, ring: Arc<Keyring>) -> Self {
        Secrets {
            bucket,
            environments,
            ring,
        }
    }

    /// The key ring.
    pub fn ring(&self) -> &Arc<Keyring> {
        &self.ring
    }

    /// Sets secret `name` to `value`.
    pub async fn set(&self, name: &str, value: &[u8]) -> Result<(), SecretError> {
        check_name(name)?;
        if value.len() > MAX_SECRET_LEN {
            return Err(SecretError::TooLarge);
        }
        if std::str::from_utf8(value).is_err() {
            return Err(SecretError::NotText);
        }
        let sealed = self.ring.seal(&secret_context(name), value);
        self.bucket
            .put(name, sealed.into())
            .await
            .map_err(|e| SecretError::store("store the secret", e))?;
        Ok(())
    }

    /// The value of secret `name`, if it is set.
    pub async fn get(&self, name: &str) -> Result<Option<Zeroizing<String>>, SecretError> {
        read(&self.bucket, &self.ring, name).await
    }

    /// Every secret's name, when it was set and its key; sorted by name.
    pub async fn list(&self) -> Result<Vec<SecretInfo>, SecretError> {
        let names: Vec<String> = match self.bucket.keys().await {
            Ok(keys) => keys
                .try_collect()
                .await
                .map_err(|e| SecretError::store("list the secrets", e))?,
            Err(e) => return Err(SecretError::store("list the secrets", e)),
        };
        let mut infos = Vec::with_capacity(names.len());
        for name in names {
            let Some(entry) = self
                .bucket
                .entry(&name)
                .await
                .map_err(|e| SecretError::store("read the secret", e))?
            else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let nanos = entry.created.unix_timestamp_nanos();
            let updated_at = DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap_or(0));
            infos.push(SecretInfo {
                name,
                updated_at,
                key: key_id(&entry.value),
            });
        }
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(infos)
    }

    /// Removes secret `name`; whether it was set.
    pub async fn remove(&self, name: &str) -> Result<bool, SecretError> {
        check_name(name)?;
        let existed = self
            .bucket
            .get(name)
            .await
            .map_err(|e| SecretError::store("read the secret", e))?
            .is_some();
        if existed {
            self.bucket
                .purge(name)
                .await
                .map_err(|e| SecretError::store("remove the secret", e))?;
        }
        Ok(existed)
    }

    /// Seals every secret and every task environment again under the
    /// ring's current key; a value written meanwhile is left as its writer
    /// sealed it (under the current key too).
    pub async fn rotate(&self) -> Result<Rotation, SecretError> {
        let environments = &self.environments;
        let mut rotation = Rotation {
            key: self.ring.ids()[0].clone(),
            ..Rotation::default()
        };
        for (name, revision, sealed) in entries(&self.bucket).await? {
            if self.ring.is_current(&sealed) {
                continue;
            }
            match self.ring.open(&secret_context(&name), &sealed) {
                Ok(plain) => {
                    let again = self.ring.seal(&secret_context(&name), &plain);
                    if update(&self.bucket, &name, again, revision).await? {
                        rotation.secrets += 1;
                    }
                }
                Err(_) => rotation.unreadable.push(name),
            }
        }
        for (key, revision, sealed) in entries(environments).await? {
            if self.ring.is_current(&sealed) {
                continue;
            }
            let context = env_context_of(&key);
            let (plain, counter) = match self.ring.open(&context, &sealed) {
                Ok(plain) => (plain, &mut rotation.environments),
                // Written before environments were sealed: a JSON object.
                Err(OpenError::NotSealed)
                    if serde_json::from_slice::<BTreeMap<String, String>>(&sealed).is_ok() =>
                {
                    (
                        Zeroizing::new(sealed.to_vec()),
                        &mut rotation.plain_environments,
                    )
                }
                Err(_) => {
                    rotation.unreadable.push(key);
                    continue;
                }
            };
            let again = self.ring.seal(&context, &plain);
            if update(environments, &key, again, revision).await? {
                *counter += 1;
            }
        }
        Ok(rotation)
    }
}

/// The value of secret `name` in `bucket` (a `<p>-secrets` bucket), if it
/// is set: what a worker reads for the attempt it runs.
pub async fn read(
    bucket: &kv::Store,
    ring: &Keyring,
    name: &str,
) -> Result<Option<Zeroizing<String>>, SecretError> {
    check_name(name)?;
    let Some(sealed) = bucket
        .get(name)
        .await
        .map_err(|e| SecretError::store("read the secret", e))?
    else {
        return Ok(None);
    };
    let open = |source| SecretError::Open {
        name: name.to_owned(),
        source,
    };
    let plain = ring.open(&secret_context(name), &sealed).map_err(open)?;
    let text = String::from_utf8(plain.to_vec()).map_err(|_| open(OpenError::Corrupt))?;
    Ok(Some(Zeroizing::new(text)))
}

/// A task environment sealed for `execution`.
pub fn seal_env(
    ring: &Keyring,
    execution: &ExecutionId,
    env: &BTreeMap<String, String>,
) -> Vec<u8> {
    let plain = Zeroizing::new(serde_json::to_vec(env).expect("a string map always serialises"));
    ring.seal(&env_context_of(execution.as_str()), &plain)
}

/// The task environment sealed for `execution` in `sealed`.
pub fn open_env(
    ring: &Keyring,
    execution: &ExecutionId,
    sealed: &[u8],
) -> Result<BTreeMap<String, String>, OpenError> {
    let plain = ring.open(&env_context_of(execution.as_str()), sealed)?;
    serde_json::from_slice(&plain).map_err(|_| OpenError::Corrupt)
}

fn secret_context(name: &str) -> String {
    format!("secret:{name}")
}

fn env_context_of(execution: &str) -> String {
    format!("env:{execution}")
}

fn check_name(name: &str) -> Result<(), SecretError> {
    if is_secret_name(name) {
        Ok(())
    } else {
        Err(SecretError::BadName(name.to_owned()))
    }
}

/// The id of the key that sealed `value` (`plain` for a value that is not
/// sealed).
fn key_id(value: &[u8]) -> String {
    if crate::sealing::is_sealed(value) && value.len() >= 12 {
        crate::envelope::hex(&value[4..12])
    } else {
        "plain".to_owned()
    }
}

async fn entries(bucket: &kv::Store) -> Result<Vec<(String, u64, bytes::Bytes)>, SecretError> {
    let keys: Vec<String> = match bucket.keys().await {
        Ok(keys) => keys
            .try_collect()
            .await
            .map_err(|e| SecretError::store("list a bucket", e))?,
        Err(e) => return Err(SecretError::store("list a bucket", e)),
    };
    let mut entries = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(entry) = bucket
            .entry(&key)
            .await
            .map_err(|e| SecretError::store("read a bucket entry", e))?
            && entry.operation == kv::Operation::Put
        {
            entries.push((key, entry.revision, entry.value));
        }
    }
    Ok(entries)
}

/// Writes `value` if `key` is still at `revision`; false when another
/// writer got there first.
async fn update(
    bucket: &kv::Store,
    key: &str,
    value: Vec<u8>,
    revision: u64,
) -> Result<bool, SecretError> {
    match bucket.update(key, value.into(), revision).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
        Err(e) => Err(SecretError::store("seal a value again", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environments_open_only_for_their_execution() {
        let ring = Keyring::parse(&Keyring::generate_line()).unwrap();
        let (e1, e2) = (
            ExecutionId::new("e1").unwrap(),
            ExecutionId::new("e2").unwrap(),
        );
        let env: BTreeMap<String, String> = [("TOKEN".into(), "s3cr3t-value".into())].into();
        let sealed = seal_env(&ring, &e1, &env);
        assert!(!String::from_utf8_lossy(&sealed).contains("s3cr3t"));
        assert_eq!(open_env(&ring, &e1, &sealed).unwrap(), env);
        assert_eq!(open_env(&ring, &e2, &sealed), Err(OpenError::Corrupt));
        assert_eq!(key_id(&sealed), ring.ids()[0]);
        assert_eq!(key_id(b"{}"), "plain");
    }
}
