//! Agent pools: named groups of workers that join with a pool token and
//! take only their pool's work (the queue of the pool's name).
//!
//! A pool and its tokens live in the `<p>-pools` key-value bucket (key: the
//! pool's name). A token is `<id>.<secret>`: 8 hex digits naming it and 64
//! of a 256-bit random secret; the bucket keeps only the SHA-256 of the
//! secret. A fast hash is enough here, where a password would need a slow
//! one: the secret is random and 256 bits long, so there is no dictionary
//! to try and no brute force within reach, and checking it costs a join a
//! microsecond.
//!
//! A worker started with `--pool NAME --token-file F` asks
//! `<p>.pools.join.<NAME>` before it takes any work, and again every
//! [`REJOIN`](runlog_events::pool::REJOIN); an answer other than `ok` (no
//! such pool, a wrong or revoked token) stops it with the reason. What the
//! check does not do yet is stop a client that skips it: until the NATS
//! accounts of the security work map each pool token to credentials
//! allowed only that pool's subjects, any client of the NATS account can
//! consume any queue (docs/decisions.md, "Agent pools").

use std::collections::BTreeMap;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use runlog_events::Subjects;
use runlog_events::pool::{JoinAnswer, JoinRequest};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::bucket::{BucketError, failed};

/// Why a pool was not stored or read.
#[derive(Debug, thiserror::Error)]
pub enum PoolsError {
    /// The name is not a subject token.
    #[error("{0:?} is not a pool name: 1-64 of A-Z a-z 0-9 _ -")]
    BadName(String),
    /// A pool of that name exists (create only).
    #[error("pool {0:?} exists already: POST /v1/pools/{0}/tokens adds a token")]
    Exists(String),
    /// No pool of that name, or no token of that id.
    #[error("no {0}")]
    Unknown(String),
    /// The bucket failed.
    #[error(transparent)]
    Store(#[from] BucketError),
}

fn store_error(
    action: &'static str,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> PoolsError {
    PoolsError::Store(failed(action, source))
}

/// A pool as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    /// Its name, also the queue its agents serve.
    pub name: String,
    /// For people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Its tokens, by id.
    pub tokens: BTreeMap<String, Token>,
}

/// One token of a pool: only the hash of its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    /// SHA-256 of the secret, hex.
    pub sha256: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was revoked; a revoked token lets no agent join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A token just made: the only time its secret is seen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Issued {
    /// The pool.
    pub pool: String,
    /// The token's id.
    pub id: String,
    /// The token to hand to agents: `<id>.<secret>`.
    pub token: String,
}

/// The pools, stored.
#[derive(Debug, Clone)]
pub struct Pools {
    bucket: kv::Store,
}

impl Pools {
    /// The pools in `bucket`.
    pub fn new(bucket: kv::Store) -> Self {
        Pools { bucket }
    }

    /// Creates pool `name` with a first token.
    pub async fn create(
        &self,
        name: &str,
        description: Option<String>,
    ) -> Result<Issued, PoolsError> {
        if runlog_events::id::validate_token(name).is_err() {
            return Err(PoolsError::BadName(name.to_owned()));
        }
        let (id, token, hashed) = make_token();
        let pool = Pool {
            name: name.to_owned(),
            description,
            created_at: Utc::now(),
            tokens: [(id.clone(), hashed)].into(),
        };
        let value = serde_json::to_vec(&pool).expect("a pool always serialises");
        match self.bucket.create(name, value.into()).await {
            Ok(_) => Ok(Issued {
                pool: name.to_owned(),
                id,
                token,
            }),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                Err(PoolsError::Exists(name.to_owned()))
            }
            Err(e) => Err(store_error("store the pool", e)),
        }
    }

    /// The pool `name`, with the revision it was read at.
    async fn entry(&self, name: &str) -> Result<Option<(Pool, u64)>, PoolsError> {
        if runlog_events::id::validate_token(name).is_err() {
            return Ok(None);
        }
        let entry = self
            .bucket
            .entry(name)
            .await
            .map_err(|e| store_error("read the pool", e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let pool =
            serde_json::from_slice(&entry.value).map_err(|e| store_error("read the pool", e))?;
        Ok(Some((pool, entry.revision)))
    }

    /// The pool `name`.
    pub async fn get(&self, name: &str) -> Result<Option<Pool>, PoolsError> {
        Ok(self.entry(name).await?.map(|(pool, _)| pool))
    }

    /// Every pool, by name.
    pub async fn list(&self) -> Result<Vec<Pool>, PoolsError> {
        let mut keys = match self.bucket.keys().await {
            Ok(keys) => keys.boxed(),
            Err(e) => return Err(store_error("list the pools", e)),
        };
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key.map_err(|e| store_error("list the pools", e))?);
        }
        names.sort();
        let mut pools = Vec::new();
        for name in names {
            if let Some(pool) = self.get(&name).await? {
                pools.push(pool);
            }
        }
        Ok(pools)
    }

    /// Changes pool `name` with `change`, under the revision it was read at
    /// (a concurrent change makes it read and try again).
    async fn update<T>(
        &self,
        name: &str,
        mut change: impl FnMut(&mut Pool) -> Result<T, PoolsError>,
    ) -> Result<T, PoolsError> {
        loop {
            let (mut pool, revision) = self
                .entry(name)
                .await?
                .ok_or_else(|| PoolsError::Unknown(format!("pool {name:?}")))?;
            let out = change(&mut pool)?;
            let value = serde_json::to_vec(&pool).expect("a pool always serialises");
            match self.bucket.update(name, value.into(), revision).await {
                Ok(_) => return Ok(out),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(store_error("store the pool", e)),
            }
        }
    }

    /// A new token for pool `name`.
    pub async fn issue(&self, name: &str) -> Result<Issued, PoolsError> {
        let (id, token, hashed) = make_token();
        self.update(name, |pool| {
            pool.tokens.insert(id.clone(), hashed.clone());
            Ok(())
        })
        .await?;
        Ok(Issued {
            pool: name.to_owned(),
            id,
            token,
        })
    }

    /// Revokes token `id` of pool `name`: agents holding it are refused at
    /// their next join.
    pub async fn revoke(&self, name: &str, id: &str) -> Result<(), PoolsError> {
        self.update(name, |pool| {
            let token = pool
                .tokens
                .get_mut(id)
                .ok_or_else(|| PoolsError::Unknown(format!("token {id:?} of pool {name:?}")))?;
            token.revoked_at.get_or_insert_with(Utc::now);
            Ok(())
        })
        .await
    }

    /// Whether `token` lets an agent join pool `name`: `Err` with the reason
    /// to tell it.
    pub async fn check(&self, name: &str, token: &str) -> Result<(), String> {
        let pool = match self.get(name).await {
            Ok(Some(pool)) => pool,
            Ok(None) => {
                return Err(format!(
                    "there is no pool {name:?}: create it with `runlog pool create {name}`"
                ));
            }
            Err(e) => return Err(e.to_string()),
        };
        let Some((id, secret)) = token.trim().split_once('.') else {
            return Err(format!(
                "that is not a token of pool {name:?} (`<id>.<secret>`)"
            ));
        };
        let Some(known) = pool.tokens.get(id) else {
            return Err(format!("the token is not one of pool {name:?}'s"));
        };
        if known.sha256 != crate::tokens::hash(secret) {
            return Err(format!("the token is not one of pool {name:?}'s"));
        }
        if let Some(at) = known.revoked_at {
            return Err(format!(
                "the token {id} of pool {name:?} was revoked at {at}: ask for a new one \
                 (`runlog pool token create {name}`)"
            ));
        }
        Ok(())
    }

    /// Answers agents' join requests on `<p>.pools.join.*` until `stop`.
    pub async fn serve(
        self,
        client: async_nats::Client,
        subjects: Subjects,
        stop: CancellationToken,
    ) -> Result<(), async_nats::SubscribeError> {
        let p = subjects.prefix().to_owned();
        let mut requests = client
            .queue_subscribe(format!("{p}.pools.join.*"), format!("{p}-pools"))
            .await?;
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                message = requests.next() => match message {
                    Some(message) => message,
                    None => return Ok(()),
                },
            };
            let Some(reply) = message.reply.clone() else {
                continue;
            };
            let pool = message
                .subject
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_owned();
            let answer = match serde_json::from_slice::<JoinRequest>(&message.payload) {
                Ok(request) => match self.check(&pool, &request.token).await {
                    Ok(()) => {
                        tracing::info!(pool, worker = %request.worker, "an agent joined");
                        JoinAnswer::ok()
                    }
                    Err(reason) => {
                        tracing::warn!(pool, worker = %request.worker, %reason, "an agent was refused");
                        JoinAnswer::refused(reason)
                    }
                },
                Err(e) => JoinAnswer::refused(format!("not a join request: {e}")),
            };
            let body = serde_json::to_vec(&answer).expect("an answer always serialises");
            if let Err(e) = client.publish(reply, body.into()).await {
                tracing::warn!(error = %e, "cannot answer a join request");
            }
        }
    }
}

/// A new token: its id, the token to hand out, and what is stored.
fn make_token() -> (String, String, Token) {
    let minted = crate::tokens::mint();
    let stored = Token {
        sha256: minted.sha256,
        created_at: Utc::now(),
        revoked_at: None,
    };
    (minted.id, minted.token, stored)
}
