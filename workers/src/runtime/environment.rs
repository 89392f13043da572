//! An attempt's environment: sealed values and secrets, resolved when the
//! attempt starts and handed only to its handler.
//!
//! - **Sealed values**: a spec lists names in `sealed_env`; intake stored
//!   their values in the KV bucket `<p>-env` under the execution id, a JSON
//!   object of name → value sealed with the key ring
//!   ([`runlog_events::secrets::open_env`]). A worker without the key ring
//!   fails such an attempt `permission`.
//! - **Secrets**: a spec maps a variable to a secret *name*; the worker
//!   resolves the name through its [`SecretSource`] first, then in the
//!   `<p>-secrets` bucket (when it has the key ring). The default source,
//!   [`EnvSecrets`], reads `RUNLOG_SECRET_<NAME>` from the worker's own
//!   environment (the name upper-cased, other characters than letters and
//!   digits turned into `_`). A secret found nowhere fails the attempt with
//!   class `permission`; errors name secrets, never values.

use std::collections::BTreeMap;

use async_nats::jetstream::kv;
use runlog_events::sealing::{Keyring, OpenError};
use runlog_events::{ErrorClass, ExecutionId, TaskError, TaskSpec};

/// Where a worker finds secret values by name.
pub trait SecretSource: Send + Sync + 'static {
    /// The value of secret `name`, if this worker has it.
    fn secret(&self, name: &str) -> Option<String>;

    /// Says to an operator where secret `name` is expected (no value).
    fn hint(&self, name: &str) -> String {
        format!("secret {name:?} is not available on this worker")
    }
}

/// Secrets from the worker's environment: `RUNLOG_SECRET_<NAME>`.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvSecrets;

impl EnvSecrets {
    /// The variable that holds secret `name`.
    ///
    /// # Examples
    /// ```
    /// use runlog_worker::runtime::environment::EnvSecrets;
    ///
    /// assert_eq!(EnvSecrets::variable("db-password"), "RUNLOG_SECRET_DB_PASSWORD");
    /// ```
    pub fn variable(name: &str) -> String {
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("RUNLOG_SECRET_{name}")
    }
}

impl SecretSource for EnvSecrets {
    fn secret(&self, name: &str) -> Option<String> {
        std::env::var(Self::variable(name)).ok()
    }

    fn hint(&self, name: &str) -> String {
        format!(
            "secret {name:?} is not available on this worker: set {} in the worker's environment",
            Self::variable(name)
        )
    }
}

/// Secrets from a map (tests, or a program that loads them itself).
impl SecretSource for BTreeMap<String, String> {
    fn secret(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Where an attempt's sealed values and stored secrets are.
#[derive(Clone, Copy, Default)]
pub(crate) struct Vault<'a> {
    /// The worker's key ring; without it nothing sealed opens.
    pub ring: Option<&'a Keyring>,
    /// The `<p>-env` bucket, `None` when it does not exist.
    pub sealed: Option<&'a kv::Store>,
    /// The `<p>-secrets` bucket, `None` when it does not exist.
    pub stored: Option<&'a kv::Store>,
}

/// Resolves the environment of an attempt of `execution` under `spec`.
pub(crate) async fn resolve(
    spec: &TaskSpec,
    execution: &ExecutionId,
    vault: Vault<'_>,
    secrets: &dyn SecretSource,
) -> Result<BTreeMap<String, String>, TaskError> {
    let mut env = spec.env.clone();
    if !spec.sealed_env.is_empty() {
        let values = read_sealed(spec, execution, vault).await?;
        for name in &spec.sealed_env {
            let value = values.get(name).ok_or_else(|| {
                permanent(
                    ErrorClass::InvalidInput,
                    format!("the sealed environment has no value for {name}"),
                )
            })?;
            env.insert(name.clone(), value.clone());
        }
    }
    for (variable, secret) in &spec.secrets {
        let value = match secrets.secret(secret) {
            Some(value) => value,
            None => stored(secret, vault).await?.ok_or_else(|| {
                permanent(ErrorClass::Permission, missing_hint(secrets, secret, vault))
            })?,
        };
        env.insert(variable.clone(), value);
    }
    Ok(env)
}

fn missing_hint(secrets: &dyn SecretSource, name: &str, vault: Vault<'_>) -> String {
    let hint = secrets.hint(name);
    if vault.ring.is_some() {
        format!("{hint}, and it is not in the secrets store (`runlog secret set {name}`)")
    } else {
        format!("{hint} (this worker has no secret key, so it does not read the secrets store)")
    }
}

/// Secret `name` from the secrets store, when this worker can read it.
async fn stored(name: &str, vault: Vault<'_>) -> Result<Option<String>, TaskError> {
    let (Some(ring), Some(bucket)) = (vault.ring, vault.stored) else {
        return Ok(None);
    };
    match runlog_events::secrets::read(bucket, ring, name).await {
        Ok(value) => Ok(value.map(|v| v.as_str().to_owned())),
        Err(e @ runlog_events::secrets::SecretError::Store { .. }) => {
            Err(TaskError::new(ErrorClass::Network, e.to_string()))
        }
        Err(e) => Err(permanent(ErrorClass::Permission, e.to_string())),
    }
}

async fn read_sealed(
    spec: &TaskSpec,
    execution: &ExecutionId,
    vault: Vault<'_>,
) -> Result<BTreeMap<String, String>, TaskError> {
    let missing = || {
        permanent(
            ErrorClass::InvalidInput,
            format!(
                "the sealed environment of this execution is missing (names: {}); \
                 it was never stored or has expired",
                spec.sealed_env.join(", ")
            ),
        )
    };
    let store = vault.sealed.ok_or_else(missing)?;
    let bytes = store
        .get(execution.as_str())
        .await
        .map_err(|e| {
            TaskError::new(
                ErrorClass::Network,
                format!("cannot read the sealed environment: {e}"),
            )
        })?
        .ok_or_else(missing)?;
    let Some(ring) = vault.ring else {
        return Err(permanent(
            ErrorClass::Permission,
            "this worker has no secret key to open the sealed environment with: start it \
             with --secret-key-file (the engine's key ring)",
        ));
    };
    runlog_events::secrets::open_env(ring, execution, &bytes).map_err(|e| {
        let class = match e {
            OpenError::UnknownKey(_) => ErrorClass::Permission,
            OpenError::NotSealed | OpenError::Corrupt => ErrorClass::InvalidInput,
        };
        permanent(
            class,
            format!("the sealed environment cannot be opened: {e}"),
        )
    })
}

fn permanent(class: ErrorClass, message: impl Into<String>) -> TaskError {
    let mut error = TaskError::new(class, message);
    error.retryable = false;
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_secret_fails_with_permission_and_names_only_the_secret() {
        let mut spec = TaskSpec::new("shell");
        spec.secrets.insert("TOKEN".into(), "api-token".into());
        spec.secrets.insert("DB".into(), "db-password".into());
        let have: BTreeMap<String, String> = [("db-password".into(), "hunter22".into())].into();
        let exec = ExecutionId::new("e1").unwrap();
        let err = resolve(&spec, &exec, Vault::default(), &have)
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Permission);
        assert!(!err.retryable);
        assert!(err.message.contains("api-token"), "{}", err.message);
        assert!(!err.message.contains("hunter22"));

        spec.secrets.remove("TOKEN");
        let env = resolve(&spec, &exec, Vault::default(), &have)
            .await
            .unwrap();
        assert_eq!(env.get("DB").map(String::as_str), Some("hunter22"));
    }

    #[tokio::test]
    async fn sealed_names_without_a_bucket_fail_as_invalid_input() {
        let mut spec = TaskSpec::new("shell");
        spec.sealed_env.push("A".into());
        let exec = ExecutionId::new("e1").unwrap();
        let err = resolve(&spec, &exec, Vault::default(), &EnvSecrets)
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::InvalidInput);
        assert!(err.message.contains("names: A"));
    }
}
