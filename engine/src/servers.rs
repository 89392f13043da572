//! The server inventory: named servers in the `<p>-servers` key-value
//! bucket (one key per name, the definition's JSON), and the step of
//! intake that turns a task's `server` or `servers` into the `ssh` input of
//! each server ([`runlog_events::server`] has the rules).
//!
//! Servers are configuration, not execution state: an execution records
//! the address it was resolved to, so changing or deleting a server
//! changes only the tasks submitted after.

use async_nats::jetstream::kv;
use futures::StreamExt;
use runlog_events::TaskSpec;
use runlog_events::server::{Server, Target};
use runlog_events::spec::FieldError;

use crate::bucket::{BucketError, failed};

/// Why a server was not stored, read or resolved.
#[derive(Debug, thiserror::Error)]
pub enum ServersError {
    /// The definition breaks the rules: every problem, with its path.
    #[error("the server is invalid: {}", FieldError::join(.0))]
    Invalid(Vec<FieldError>),
    /// A server of that name exists (create only).
    #[error("a server named {0:?} exists already: PUT /v1/servers/{0} replaces it")]
    Exists(String),
    /// No server of that name.
    #[error("no server named {0:?}: GET /v1/servers lists them")]
    Unknown(String),
    /// The bucket failed.
    #[error(transparent)]
    Store(#[from] BucketError),
}

fn store_error(
    action: &'static str,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> ServersError {
    ServersError::Store(failed(action, source))
}

/// The servers, stored.
#[derive(Debug, Clone)]
pub struct Inventory {
    bucket: kv::Store,
}

impl Inventory {
    /// The inventory in `bucket`.
    pub fn new(bucket: kv::Store) -> Self {
        Inventory { bucket }
    }

    /// Stores a new server; refuses a name that is taken.
    pub async fn create(&self, server: Server) -> Result<Server, ServersError> {
        server.validate().map_err(ServersError::Invalid)?;
        let value = serde_json::to_vec(&server).expect("a server always serialises");
        match self.bucket.create(&server.name, value.into()).await {
            Ok(_) => Ok(server),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                Err(ServersError::Exists(server.name))
            }
            Err(e) => Err(store_error("store the server", e)),
        }
    }

    /// Stores `server`, replacing one of the same name. Whether it is new.
    pub async fn put(&self, server: Server) -> Result<bool, ServersError> {
        server.validate().map_err(ServersError::Invalid)?;
        let existed = self.get(&server.name).await?.is_some();
        let value = serde_json::to_vec(&server).expect("a server always serialises");
        self.bucket
            .put(&server.name, value.into())
            .await
            .map_err(|e| store_error("store the server", e))?;
        Ok(!existed)
    }

    /// The server named `name`.
    pub async fn get(&self, name: &str) -> Result<Option<Server>, ServersError> {
        if runlog_events::id::validate_token(name).is_err() {
            return Ok(None);
        }
        let entry = self
            .bucket
            .get(name)
            .await
            .map_err(|e| store_error("read the server", e))?;
        entry
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| store_error("read the server", e))
            })
            .transpose()
    }

    /// Every server, by name.
    pub async fn list(&self) -> Result<Vec<Server>, ServersError> {
        let mut keys = match self.bucket.keys().await {
            Ok(keys) => keys.boxed(),
            Err(e) => return Err(store_error("list the servers", e)),
        };
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key.map_err(|e| store_error("list the servers", e))?);
        }
        names.sort();
        let mut servers = Vec::with_capacity(names.len());
        for name in names {
            if let Some(server) = self.get(&name).await? {
                servers.push(server);
            }
        }
        Ok(servers)
    }

    /// Removes the server named `name`. Whether there was one.
    pub async fn delete(&self, name: &str) -> Result<bool, ServersError> {
        if self.get(name).await?.is_none() {
            return Ok(false);
        }
        self.bucket
            .delete(name)
            .await
            .map_err(|e| store_error("delete the server", e))?;
        Ok(true)
    }

    /// Resolves the server `spec` names, if it names one. A selector is
    /// refused here: it stands for several executions, which only a door
    /// that answers with several can start ([`fan_out`](Self::fan_out)).
    pub async fn resolve(&self, spec: &mut TaskSpec) -> Result<(), ServersError> {
        match Target::of(spec).map_err(|e| ServersError::Invalid(vec![e]))? {
            Target::Direct => Ok(()),
            Target::Named(name) => {
                let server = self.get(&name).await?.ok_or(ServersError::Unknown(name))?;
                server
                    .apply(spec)
                    .map_err(|e| ServersError::Invalid(vec![e]))
            }
            Target::Selected(_) => Err(ServersError::Invalid(vec![FieldError {
                field: "input.servers".into(),
                reason: "a selector starts one execution per server: submit it on its own \
                         (POST /v1/executions or <p>.submit.<queue>), not in a batch"
                    .into(),
            }])),
        }
    }

    /// The specs a selector stands for, one per matching server by name, each
    /// resolved; `None` when `spec` has no selector. No match is an error:
    /// a task that runs nowhere is almost always a mistyped label.
    pub async fn fan_out(
        &self,
        spec: &TaskSpec,
    ) -> Result<Option<Vec<(String, TaskSpec)>>, ServersError> {
        let Target::Selected(selector) =
            Target::of(spec).map_err(|e| ServersError::Invalid(vec![e]))?
        else {
            return Ok(None);
        };
        let mut specs = Vec::new();
        for server in self.list().await? {
            if server.matches(&selector) {
                let mut one = spec.clone();
                server
                    .apply(&mut one)
                    .map_err(|e| ServersError::Invalid(vec![e]))?;
                specs.push((server.name, one));
            }
        }
        if specs.is_empty() {
            let wanted: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return Err(ServersError::Invalid(vec![FieldError {
                field: "input.servers".into(),
                reason: format!("no server has the labels {}", wanted.join(", ")),
            }]));
        }
        Ok(Some(specs))
    }
}
