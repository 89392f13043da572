//! Workflow definitions, stored by name and version.
//!
//! A version is a create-only key `<name>.v<version>` of the `<p>-workflows`
//! key-value bucket, holding the definition's JSON. Definitions are not
//! execution state, so they are not in the execution log: an execution of a
//! workflow pins the version it started with, and a stored version never
//! changes (defining it again with the same content is a no-op, with other
//! content a conflict). The bucket is itself a JetStream stream, replicated
//! like the log.

use async_nats::jetstream::kv;
use futures::StreamExt;
use runlog_events::spec::FieldError;
use runlog_events::workflow::Definition;

use crate::bucket::{BucketError, failed};

/// Why a definition was not stored or read.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowsError {
    /// The definition breaks the rules: every problem, with its path.
    #[error("the definition is invalid: {}", FieldError::join(.0))]
    Invalid(Vec<FieldError>),
    /// This name and version is stored with other content.
    #[error(
        "{name} version {version} is defined already, differently: a stored version never \
         changes; define version {next}"
    )]
    Conflict {
        /// The name.
        name: String,
        /// The version.
        version: u32,
        /// A version that is free.
        next: u32,
    },
    /// The bucket failed.
    #[error(transparent)]
    Store(#[from] BucketError),
}

fn store_error(
    action: &'static str,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> WorkflowsError {
    WorkflowsError::Store(failed(action, source))
}

/// A definition as stored.
#[derive(Debug, Clone)]
pub struct Defined {
    /// The definition.
    pub definition: Definition,
    /// It was stored before, with the same content.
    pub existing: bool,
}

/// The stored workflow definitions.
#[derive(Debug, Clone)]
pub struct Workflows {
    store: kv::Store,
}

impl Workflows {
    /// Definitions in `store` (`Layout::workflows_bucket`).
    pub fn new(store: kv::Store) -> Self {
        Workflows { store }
    }

    /// Stores `definition` once checked; `custom_kind` says whether a kind
    /// that is not runlog's own is run by some worker.
    pub async fn define(
        &self,
        definition: Definition,
        custom_kind: impl Fn(&str) -> bool,
    ) -> Result<Defined, WorkflowsError> {
        let errors = definition.check(custom_kind);
        if !errors.is_empty() {
            return Err(WorkflowsError::Invalid(errors));
        }
        let key = key(&definition.name, definition.version);
        let body = serde_json::to_vec(&definition).expect("a definition always serialises");
        match self.store.create(&key, body.into()).await {
            Ok(_) => Ok(Defined {
                definition,
                existing: false,
            }),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                match self.get(&definition.name, definition.version).await? {
                    Some(stored) if stored == definition => Ok(Defined {
                        definition,
                        existing: true,
                    }),
                    _ => {
                        let next = self
                            .versions(&definition.name)
                            .await?
                            .last()
                            .map_or(1, |d| d.version + 1);
                        Err(WorkflowsError::Conflict {
                            name: definition.name,
                            version: definition.version,
                            next,
                        })
                    }
                }
            }
            Err(e) => Err(store_error("store the definition", e)),
        }
    }

    /// One version.
    pub async fn get(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Option<Definition>, WorkflowsError> {
        if runlog_events::id::validate_token(name).is_err() {
            return Ok(None);
        }
        let value = self
            .store
            .get(key(name, version))
            .await
            .map_err(|e| store_error("read a definition", e))?;
        Ok(value.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Every version of `name`, oldest first.
    pub async fn versions(&self, name: &str) -> Result<Vec<Definition>, WorkflowsError> {
        let mut versions = Vec::new();
        for (workflow, version) in self.keys().await? {
            if workflow == name
                && let Some(definition) = self.get(name, version).await?
            {
                versions.push(definition);
            }
        }
        versions.sort_by_key(|d| d.version);
        Ok(versions)
    }

    /// Every workflow's name with its versions, by name.
    pub async fn names(&self) -> Result<Vec<(String, Vec<u32>)>, WorkflowsError> {
        let mut names: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
        for (name, version) in self.keys().await? {
            names.entry(name).or_default().push(version);
        }
        Ok(names
            .into_iter()
            .map(|(name, mut versions)| {
                versions.sort_unstable();
                (name, versions)
            })
            .collect())
    }

    async fn keys(&self) -> Result<Vec<(String, u32)>, WorkflowsError> {
        let keys = match self.store.keys().await {
            Ok(keys) => {
                keys.filter_map(|k| async move { k.ok() })
                    .collect::<Vec<_>>()
                    .await
            }
            Err(e) => return Err(store_error("list definitions", e)),
        };
        Ok(keys
            .iter()
            .filter_map(|k| {
                let (name, version) = k.rsplit_once(".v")?;
                Some((name.to_owned(), version.parse().ok()?))
            })
            .collect())
    }
}

fn key(name: &str, version: u32) -> String {
    format!("{name}.v{version}")
}
