//! SSH connections kept open across tasks: per (user, host, port, key,
//! host-key policy), up to [`PoolLimits::connections`] connections, each
//! carrying up to [`PoolLimits::sessions`] commands at once. An attempt
//! leases a session slot on a connection; a connection idle for
//! [`PoolLimits::idle`] is closed.
//!
//! Connecting is: TCP, the key exchange with the host key checked against
//! the task's [`HostKeys`], then public-key authentication. Each failure
//! is classified here: a refused host key or key is permanent
//! (`permission`), a refused, reset or slow connection is worth another
//! attempt (`network`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use runlog_events::{ErrorClass, TaskError};
use russh::client::{self, AuthResult};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::hostkey::{HostKeys, Verdict, fingerprint};

/// How many connections the pool keeps and how busy each may be.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Connections at most per (user, host, port, key) (4).
    pub connections: usize,
    /// Commands at once on one connection (8; OpenSSH's `MaxSessions`
    /// defaults to 10).
    pub sessions: usize,
    /// A connection without a command for this long is closed (60 s).
    pub idle: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            connections: 4,
            sessions: 8,
            idle: Duration::from_secs(60),
        }
    }
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) user: String,
    pub(super) key: Arc<PrivateKey>,
    pub(super) host_keys: Arc<HostKeys>,
    pub(super) connect_timeout: Duration,
}

impl Target {
    /// `user@host:port`, for messages.
    pub(super) fn name(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }

    /// Connections are shared only by tasks that agree on all of these.
    fn pool_key(&self) -> String {
        format!(
            "{} {} {}",
            self.name(),
            fingerprint(self.key.public_key()),
            self.host_keys.describe()
        )
    }
}

/// One open, authenticated connection.
pub(super) struct Connection {
    handle: client::Handle<Verifier>,
    busy: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Connection {
    pub(super) fn handle(&self) -> &client::Handle<Verifier> {
        &self.handle
    }
}

/// A session slot on a connection, given back on drop.
pub(super) struct Lease {
    pool: Arc<Shared>,
    connection: Arc<Connection>,
}

impl Lease {
    pub(super) fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Takes the connection out of the pool: it failed under this lease.
    pub(super) fn discard(&self) {
        let mut slots = self.pool.lock();
        for slot in slots.values_mut() {
            slot.connections
                .retain(|c| !Arc::ptr_eq(c, &self.connection));
        }
        drop(slots);
        self.pool.changed.notify_waiters();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        *self
            .connection
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.connection.busy.fetch_sub(1, Ordering::AcqRel);
        self.pool.changed.notify_waiters();
    }
}

#[derive(Default)]
struct Slot {
    connections: Vec<Arc<Connection>>,
    connecting: usize,
}

struct Shared {
    limits: PoolLimits,
    slots: Mutex<HashMap<String, Slot>>,
    changed: Notify,
    reaper: Mutex<bool>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The connections of one executor.
#[derive(Clone)]
pub(super) struct Pool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

/// Undoes a reserved connecting slot if connecting is abandoned.
struct Connecting<'a> {
    shared: &'a Shared,
    key: &'a str,
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.shared.lock().get_mut(self.key) {
            slot.connecting -= 1;
        }
        self.shared.changed.notify_waiters();
    }
}

impl Pool {
    pub(super) fn new(limits: PoolLimits) -> Self {
        Pool {
            shared: Arc::new(Shared {
                limits: PoolLimits {
                    connections: limits.connections.max(1),
                    sessions: limits.sessions.max(1),
                    idle: limits.idle,
                },
                slots: Mutex::new(HashMap::new()),
                changed: Notify::new(),
                reaper: Mutex::new(false),
            }),
        }
    }

    /// A session slot on a connection to `target`: on an open connection
    /// with room, else on a new one if the cap allows, else on the first
    /// that frees up.
    pub(super) async fn lease(&self, target: &Target) -> Result<Lease, TaskError> {
        let key = target.pool_key();
        let limits = self.shared.limits;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut slots = self.shared.lock();
                let slot = slots.entry(key.clone()).or_default();
                slot.connections.retain(|c| !c.handle.is_closed());
                let free = slot
                    .connections
                    .iter()
                    .filter(|c| c.busy.load(Ordering::Acquire) < limits.sessions)
                    .min_by_key(|c| c.busy.load(Ordering::Acquire));
                if let Some(connection) = free {
                    connection.busy.fetch_add(1, Ordering::AcqRel);
                    return Ok(Lease {
                        pool: self.shared.clone(),
                        connection: connection.clone(),
                    });
                }
                if slot.connections.len() + slot.connecting < limits.connections {
                    slot.connecting += 1;
                    break;
                }
            }
            changed.await;
        }
        let reserved = Connecting {
            shared: &self.shared,
            key: &key,
        };
        let (handle, _) = connect_within(target).await?;
        let connection = Arc::new(Connection {
            handle,
            busy: AtomicUsize::new(1),
            idle_since: Mutex::new(Instant::now()),
        });
        {
            let mut slots = self.shared.lock();
            slots
                .entry(key.clone())
                .or_default()
                .connections
                .push(connection.clone());
        }
        drop(reserved);
        self.start_reaper();
        Ok(Lease {
            pool: self.shared.clone(),
            connection,
        })
    }

    /// Closes idle connections from time to time, while the pool lives.
    fn start_reaper(&self) {
        let mut started = self
            .shared
            .reaper
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *started {
            return;
        }
        *started = true;
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        let every = (self.shared.limits.idle / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(shared) = weak.upgrade() else { return };
                let idle = shared.limits.idle;
                let mut closing = Vec::new();
                for slot in shared.lock().values_mut() {
                    slot.connections.retain(|c| {
                        let unused = c.busy.load(Ordering::Acquire) == 0
                            && c.idle_since
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .elapsed()
                                >= idle;
                        if unused || c.handle.is_closed() {
                            closing.push(c.clone());
                        }
                        !(unused || c.handle.is_closed())
                    });
                }
                drop(shared);
                for connection in closing {
                    let _ = connection
                        .handle
                        .disconnect(russh::Disconnect::ByApplication, "idle", "en")
                        .await;
                }
            }
        });
    }
}

/// Checks the host key during the key exchange and remembers why it
/// refused one.
pub(super) struct Verifier {
    host: String,
    port: u16,
    host_keys: Arc<HostKeys>,
    refused: Arc<Mutex<Option<String>>>,
    offered: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let verdict = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                *self.offered.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(format!("{} {}", key.algorithm(), fingerprint(key)));
                self.host_keys.check(&self.host, self.port, key)
            }
            PublicKeyOrCertificate::Certificate(_) => Verdict::Refused(format!(
                "{}:{} offered a host certificate; runlog checks plain host keys: \
                 pin the host's key with `host_key`",
                self.host, self.port
            )),
        };
        match verdict {
            Verdict::Trusted => Ok(true),
            Verdict::Refused(why) => {
                *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
                Ok(false)
            }
        }
    }
}

/// [`connect`] within the target's connect timeout.
pub(super) async fn connect_within(
    target: &Target,
) -> Result<(client::Handle<Verifier>, String), TaskError> {
    tokio::time::timeout(target.connect_timeout, connect(target))
        .await
        .map_err(|_| {
            network(format!(
                "timed out connecting to {} after {} ms (TCP, key exchange and \
                 authentication)",
                target.name(),
                target.connect_timeout.as_millis()
            ))
        })?
}

/// Connects, checks the host key and authenticates: the connection, and
/// the host key it offered (`ssh-ed25519 SHA256:…`).
async fn connect(target: &Target) -> Result<(client::Handle<Verifier>, String), TaskError> {
    let config = Arc::new(client::Config {
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    });
    let refused = Arc::new(Mutex::new(None));
    let offered = Arc::new(Mutex::new(None));
    let verifier = Verifier {
        host: target.host.clone(),
        port: target.port,
        host_keys: target.host_keys.clone(),
        refused: refused.clone(),
        offered: offered.clone(),
    };
    let connected = client::connect(config, (target.host.as_str(), target.port), verifier).await;
    let mut handle = match connected {
        Ok(handle) => handle,
        Err(error) => {
            if let Some(why) = refused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                return Err(TaskError::new(ErrorClass::Permission, why));
            }
            return Err(connect_error(target, &error));
        }
    };
    let hash = if target.key.algorithm().is_rsa() {
        handle
            .best_supported_rsa_hash()
            .await
            .map_err(|e| connect_error(target, &e))?
            .flatten()
    } else {
        None
    };
    let auth = handle
        .authenticate_publickey(
            target.user.clone(),
            PrivateKeyWithHashAlg::new(target.key.clone(), hash),
        )
        .await
        .map_err(|e| connect_error(target, &e))?;
    let offered = offered
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .unwrap_or_default();
    match auth {
        AuthResult::Success => Ok((handle, offered)),
        AuthResult::Failure { .. } => Err(TaskError::new(
            ErrorClass::Permission,
            format!(
                "authentication failed: {} refused the key {} for user `{}`; add its public \
                 key to the user's authorized_keys on the host",
                target.name(),
                fingerprint(target.key.public_key()),
                target.user
            ),
        )),
    }
}

/// A failure to connect or to speak SSH, classified.
fn connect_error(target: &Target, error: &russh::Error) -> TaskError {
    use std::io::ErrorKind;
    match error {
        russh::Error::IO(io) => {
            let what = match io.kind() {
                ErrorKind::ConnectionRefused => "the connection was refused",
                ErrorKind::ConnectionReset => "the connection was reset",
                ErrorKind::ConnectionAborted => "the connection was aborted",
                ErrorKind::TimedOut => "the connection timed out",
                ErrorKind::UnexpectedEof => "the host closed the connection",
                _ => "the connection failed",
            };
            network(format!(
                "cannot connect to {}: {what} ({io})",
                target.name()
            ))
        }
        russh::Error::NoCommonAlgo { .. } | russh::Error::Version => TaskError::new(
            ErrorClass::Permanent,
            format!("cannot speak SSH with {}: {error}", target.name()),
        ),
        _ => network(format!(
            "the SSH connection to {} failed: {error}",
            target.name()
        )),
    }
}

/// A retryable network error.
pub(super) fn network(message: String) -> TaskError {
    TaskError::new(ErrorClass::Network, message)
}
