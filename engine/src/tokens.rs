//! API tokens: who may call the HTTP API, and what they may do there.
//!
//! A token is `<id>.<secret>`: 8 hex digits naming it and 64 of a 256-bit
//! random secret. The `<p>-tokens` key-value bucket keeps, per id, the
//! token's name (the identity the audit trail records), its scopes, the
//! queues it is limited to, and the SHA-256 of its secret — never the
//! secret. SHA-256 and not argon2: argon2 is for secrets people choose,
//! which a dictionary can guess; a 256-bit random secret has no dictionary
//! and no brute force within reach, and checking it costs a request a
//! microsecond instead of the tens of milliseconds a slow hash would.
//!
//! Every engine keeps the tokens in memory, loaded and kept current by a
//! watch of the bucket, so checking one reads no bucket. A token an engine
//! has not seen yet (made a moment ago on another replica) is read from
//! the bucket; a revocation is applied to the engine that made it before
//! the API answers, and reaches the other replicas with the watch (a few
//! milliseconds).
//!
//! Scopes: `read` (every `GET`), `submit` (new executions, workflow
//! starts), `operate` (cancel, retry, replay, signals, schedules) and
//! `admin` (tokens, servers, pools, workflow definitions, the audit trail).
//! `admin` includes every other scope; `submit` and `operate` include
//! `read`. A token limited to queues may submit only to them and read or
//! operate only on their executions ([`Caller::may_use_queue`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use runlog_events::envelope::hex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::bucket::{BucketError, failed};

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every `GET`.
    Read,
    /// New executions and workflow starts (and `read`).
    Submit,
    /// Cancel, retry, replay, signals, schedules (and `read`).
    Operate,
    /// Tokens, servers, pools, workflow definitions, the audit trail, and
    /// everything else.
    Admin,
}

impl Scope {
    /// Every scope, in order.
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Submit, Scope::Operate, Scope::Admin];

    /// Its name (`operate`).
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Operate => "operate",
            Scope::Admin => "admin",
        }
    }

    /// Whether holding `self` grants `needed`.
    pub fn grants(self, needed: Scope) -> bool {
        self == needed || self == Scope::Admin || needed == Scope::Read
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.name() == s)
            .ok_or_else(|| format!("{s:?} is not a scope: read, submit, operate or admin"))
    }
}

/// A token as stored: only the hash of its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Its id, the first part of the token.
    pub id: String,
    /// Who or what holds it (`ci`, `alice`): the audit trail's actor.
    pub name: String,
    /// What it may do.
    pub scopes: BTreeSet<Scope>,
    /// The queues it is limited to; empty: every queue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<String>,
    /// SHA-256 of the secret, hex.
    pub sha256: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// Who made it (the maker's name; `engine` for the bootstrap token).
    pub created_by: String,
    /// When it was revoked; a revoked token is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiToken {
    /// The token as the API lists it: everything but the hash.
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "scopes": self.scopes,
            "queues": self.queues,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "revoked_at": self.revoked_at,
        })
    }
}

/// A token just made: the only time its secret is seen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Issued {
    /// The token's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The token to hand out: `<id>.<secret>`.
    pub token: String,
}

/// A new secret token: its id, the whole token, and the hash to store.
pub(crate) struct Minted {
    /// 8 hex digits.
    pub id: String,
    /// `<id>.<secret>`.
    pub token: String,
    /// SHA-256 of the secret, hex.
    pub sha256: String,
}

/// Mints a token of a 256-bit random secret (API tokens, pool tokens).
pub(crate) fn mint() -> Minted {
    use rand::RngCore;
    let mut id = [0u8; 4];
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut id);
    rand::rng().fill_bytes(&mut secret);
    let (id, secret) = (hex(&id), hex(&secret));
    Minted {
        token: format!("{id}.{secret}"),
        sha256: hash(&secret),
        id,
    }
}

/// The stored form of a secret.
pub(crate) fn hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Who is calling, and what they may do.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    /// The audit trail's actor: the token's name, `anonymous` without auth.
    pub actor: String,
    /// The token's id (none without auth).
    pub token: Option<String>,
    scopes: BTreeSet<Scope>,
    queues: Vec<String>,
}

impl Caller {
    /// The caller of an engine without auth: everything is allowed.
    pub fn anonymous() -> Caller {
        Caller {
            actor: "anonymous".to_owned(),
            token: None,
            scopes: [Scope::Admin].into(),
            queues: Vec::new(),
        }
    }

    /// The caller of a route that needs no token, with auth on: it may do
    /// nothing else.
    pub fn nobody() -> Caller {
        Caller {
            actor: "anonymous".to_owned(),
            token: None,
            scopes: BTreeSet::new(),
            queues: Vec::new(),
        }
    }

    fn of(token: &ApiToken) -> Caller {
        Caller {
            actor: token.name.clone(),
            token: Some(token.id.clone()),
            scopes: token.scopes.clone(),
            queues: token.queues.clone(),
        }
    }

    /// Whether one of its scopes grants `needed`.
    pub fn may(&self, needed: Scope) -> bool {
        self.scopes.iter().any(|s| s.grants(needed))
    }

    /// Its scopes.
    pub fn scopes(&self) -> &BTreeSet<Scope> {
        &self.scopes
    }

    /// Whether it is limited to some queues.
    pub fn is_queue_limited(&self) -> bool {
        !self.queues.is_empty()
    }

    /// The queues it is limited to (empty: none).
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// `Err` with the reason when it may not touch queue `queue`.
    pub fn may_use_queue(&self, queue: &str) -> Result<(), String> {
        if self.queues.is_empty() || self.queues.iter().any(|q| q == queue) {
            Ok(())
        } else {
            Err(format!(
                "token {:?} is limited to the queues {}; queue {queue:?} is not one of them",
                self.actor,
                self.queues.join(", ")
            ))
        }
    }
}

/// Why a presented token was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    /// Not `<id>.<secret>`, or no such token, or a wrong secret.
    #[error(
        "the token is not valid: check RUNLOG_TOKEN (`<id>.<secret>`, as `runlog token create` printed it)"
    )]
    Unknown,
    /// It was revoked.
    #[error("the token {id} ({name}) was revoked at {at}: ask an admin for a new one")]
    Revoked {
        /// Its id.
        id: String,
        /// Its name.
        name: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The bucket could not be read.
    #[error("cannot check the token now: {0}")]
    Unavailable(String),
}

/// Why a token was not made or changed.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// A bad name, no scope, a bad queue name.
    #[error("{0}")]
    Invalid(String),
    /// No token of that id.
    #[error("no token {0:?}: `runlog token ls` lists them")]
    Unknown(String),
    /// The bucket failed.
    #[error(transparent)]
    Store(#[from] BucketError),
}

/// What a new token is for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Who or what will hold it.
    pub name: String,
    /// What it may do (at least one).
    pub scopes: BTreeSet<Scope>,
    /// The queues it is limited to; empty: every queue.
    #[serde(default)]
    pub queues: Vec<String>,
}

/// The API tokens: the bucket, and what this engine knows of it.
#[derive(Debug, Clone)]
pub struct Tokens {
    bucket: kv::Store,
    known: Arc<RwLock<HashMap<String, ApiToken>>>,
}

impl Tokens {
    /// The tokens in `bucket` (call [`follow`](Tokens::follow) to keep
    /// them current).
    pub fn new(bucket: kv::Store) -> Self {
        Tokens {
            bucket,
            known: Arc::default(),
        }
    }

    /// Makes a token for `new`, made by `by`.
    pub async fn create(&self, new: NewToken, by: &str) -> Result<Issued, TokensError> {
        let name = new.name.trim();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(TokensError::Invalid(
                "name: 1-64 printable characters (who or what holds the token)".to_owned(),
            ));
        }
        if new.scopes.is_empty() {
            return Err(TokensError::Invalid(
                "scopes: at least one of read, submit, operate, admin".to_owned(),
            ));
        }
        for queue in &new.queues {
            if runlog_events::id::validate_token(queue).is_err() {
                return Err(TokensError::Invalid(format!(
                    "queues: {queue:?} is not a queue name"
                )));
            }
        }
        let minted = mint();
        let token = ApiToken {
            id: minted.id.clone(),
            name: name.to_owned(),
            scopes: new.scopes,
            queues: new.queues,
            sha256: minted.sha256,
            created_at: Utc::now(),
            created_by: by.to_owned(),
            revoked_at: None,
        };
        self.store(&token).await?;
        Ok(Issued {
            id: minted.id,
            name: token.name,
            token: minted.token,
        })
    }

    /// Stores a new token.
    async fn store(&self, token: &ApiToken) -> Result<(), TokensError> {
        let value = serde_json::to_vec(token).expect("a token always serialises");
        self.bucket
            .create(&token.id, value.into())
            .await
            .map_err(|e| failed("store the token", e))?;
        self.remember(token.clone());
        Ok(())
    }

    fn remember(&self, token: ApiToken) {
        self.known
            .write()
            .expect("the token map is never poisoned")
            .insert(token.id.clone(), token);
    }

    /// Every token, oldest first.
    pub async fn list(&self) -> Result<Vec<ApiToken>, TokensError> {
        let mut keys = match self.bucket.keys().await {
            Ok(keys) => keys.boxed(),
            Err(e) => return Err(failed("list the tokens", e).into()),
        };
        let mut tokens = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| failed("list the tokens", e))?;
            if let Some((token, _)) = self.entry(&key).await? {
                tokens.push(token);
            }
        }
        tokens.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(tokens)
    }

    async fn entry(&self, id: &str) -> Result<Option<(ApiToken, u64)>, TokensError> {
        if runlog_events::id::validate_token(id).is_err() {
            return Ok(None);
        }
        let entry = self
            .bucket
            .entry(id)
            .await
            .map_err(|e| failed("read the token", e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let token =
            serde_json::from_slice(&entry.value).map_err(|e| failed("read the token", e))?;
        Ok(Some((token, entry.revision)))
    }

    /// Revokes token `id`: it is refused from now on (on this engine
    /// before this returns, on the others once their watch saw it).
    pub async fn revoke(&self, id: &str) -> Result<ApiToken, TokensError> {
        loop {
            let (mut token, revision) = self
                .entry(id)
                .await?
                .ok_or_else(|| TokensError::Unknown(id.to_owned()))?;
            if token.revoked_at.is_some() {
                return Ok(token);
            }
            token.revoked_at = Some(Utc::now());
            let value = serde_json::to_vec(&token).expect("a token always serialises");
            match self.bucket.update(id, value.into(), revision).await {
                Ok(_) => {
                    self.remember(token.clone());
                    return Ok(token);
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(failed("store the token", e).into()),
            }
        }
    }

    /// Whether any token that is not revoked holds `admin`.
    pub async fn has_admin(&self) -> Result<bool, TokensError> {
        Ok(self
            .list()
            .await?
            .iter()
            .any(|t| t.revoked_at.is_none() && t.scopes.contains(&Scope::Admin)))
    }

    /// The caller `presented` (the token as sent) stands for.
    pub async fn authenticate(&self, presented: &str) -> Result<Caller, Refused> {
        let Some((id, secret)) = presented.trim().split_once('.') else {
            return Err(Refused::Unknown);
        };
        let known = self
            .known
            .read()
            .expect("the token map is never poisoned")
            .get(id)
            .cloned();
        let token = match known {
            Some(token) => token,
            None => match self.entry(id).await {
                Ok(Some((token, _))) => {
                    self.remember(token.clone());
                    token
                }
                Ok(None) => return Err(Refused::Unknown),
                Err(e) => return Err(Refused::Unavailable(e.to_string())),
            },
        };
        if token.sha256 != hash(secret) {
            return Err(Refused::Unknown);
        }
        if let Some(at) = token.revoked_at {
            return Err(Refused::Revoked {
                id: token.id,
                name: token.name,
                at,
            });
        }
        Ok(Caller::of(&token))
    }

    /// Keeps this engine's copy of the tokens current until `stop`: every
    /// token at the start, then every change.
    pub async fn follow(self, stop: CancellationToken) -> Result<(), kv::WatchError> {
        let mut changes = self.bucket.watch_with_history(">").await?;
        loop {
            let change = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                change = changes.next() => change,
            };
            let Some(change) = change else {
                return Ok(());
            };
            let Ok(entry) = change else { continue };
            let mut known = self.known.write().expect("the token map is never poisoned");
            match entry.operation {
                kv::Operation::Put => match serde_json::from_slice::<ApiToken>(&entry.value) {
                    Ok(token) => {
                        known.insert(entry.key, token);
                    }
                    Err(e) => {
                        tracing::warn!(key = entry.key, error = %e, "a token entry cannot be read; it is refused");
                        known.remove(&entry.key);
                    }
                },
                kv::Operation::Delete | kv::Operation::Purge => {
                    known.remove(&entry.key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_grants_everything_and_every_scope_grants_read() {
        for scope in Scope::ALL {
            assert!(Scope::Admin.grants(scope));
            assert!(scope.grants(Scope::Read));
        }
        assert!(!Scope::Read.grants(Scope::Submit));
        assert!(!Scope::Submit.grants(Scope::Operate));
        assert!(!Scope::Operate.grants(Scope::Submit));
        assert!(!Scope::Operate.grants(Scope::Admin));
    }

    #[test]
    fn a_queue_limited_caller_may_use_only_its_queues() {
        let token = ApiToken {
            id: "0a0b0c0d".into(),
            name: "ci".into(),
            scopes: [Scope::Submit].into(),
            queues: vec!["x".into()],
            sha256: String::new(),
            created_at: Utc::now(),
            created_by: "test".into(),
            revoked_at: None,
        };
        let caller = Caller::of(&token);
        assert!(caller.may_use_queue("x").is_ok());
        let refused = caller.may_use_queue("y").unwrap_err();
        assert!(refused.contains("limited to the queues x"), "{refused}");
        assert!(Caller::anonymous().may_use_queue("y").is_ok());
        assert!(
            caller.may(Scope::Read) && caller.may(Scope::Submit) && !caller.may(Scope::Operate)
        );
    }

    #[test]
    fn a_minted_token_checks_against_its_hash_only() {
        let minted = mint();
        let (id, secret) = minted.token.split_once('.').unwrap();
        assert_eq!(id, minted.id);
        assert_eq!(secret.len(), 64);
        assert_eq!(hash(secret), minted.sha256);
        assert_ne!(hash("0".repeat(64).as_str()), minted.sha256);
        assert!(!minted.sha256.contains(secret));
    }

    #[test]
    fn scopes_parse_by_name() {
        assert_eq!("operate".parse::<Scope>(), Ok(Scope::Operate));
        assert!(
            "root"
                .parse::<Scope>()
                .unwrap_err()
                .contains("read, submit")
        );
    }
}
