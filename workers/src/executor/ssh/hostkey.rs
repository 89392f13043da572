//! Which host keys a task trusts: keys pinned in the input, or a
//! `known_hosts` file (the worker user's by default), optionally learning
//! the key of a host it does not know yet.

use std::path::PathBuf;
use std::sync::Mutex;

use runlog_events::TaskError;
use russh::keys::known_hosts::{check_known_hosts_path, learn_known_hosts_path};
use russh::keys::{HashAlg, PublicKey};

use super::input::{SshInput, invalid};

/// One pinned key: the key itself, or its fingerprint.
#[derive(Debug, Clone)]
pub(super) enum Pin {
    Key(PublicKey),
    Fingerprint(String),
}

/// How a task decides whether to trust the key a host offers.
#[derive(Debug, Clone)]
pub(super) enum HostKeys {
    /// Only these keys.
    Pinned(Vec<Pin>),
    /// The keys a `known_hosts` file lists for the host.
    KnownHosts {
        path: PathBuf,
        /// Record the key of a host the file does not know.
        learn: bool,
    },
}

/// What checking an offered key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The key is trusted.
    Trusted,
    /// Refused, with a sentence saying why and what to do.
    Refused(String),
}

/// Learning writes to a file that other attempts read: one at a time.
static LEARNING: Mutex<()> = Mutex::new(());

impl HostKeys {
    /// The policy an input asks for.
    pub(super) fn from_input(input: &SshInput) -> Result<Self, TaskError> {
        if !input.host_key.is_empty() {
            if input.known_hosts.is_some() || input.trust_on_first_use {
                return Err(invalid(
                    "`host_key` pins the host's key: give it alone, without `known_hosts` \
                     or `trust_on_first_use`",
                ));
            }
            let pins = input
                .host_key
                .iter()
                .enumerate()
                .map(|(i, key)| {
                    Pin::parse(key).map_err(|e| invalid(format!("`host_key[{i}]`: {e}")))
                })
                .collect::<Result<_, _>>()?;
            return Ok(HostKeys::Pinned(pins));
        }
        let path = match &input.known_hosts {
            Some(path) => path.clone(),
            None => std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".ssh/known_hosts"))
                .ok_or_else(|| {
                    invalid(
                        "the worker has no HOME, so no ~/.ssh/known_hosts: give `host_key` \
                         or `known_hosts`",
                    )
                })?,
        };
        Ok(HostKeys::KnownHosts {
            path,
            learn: input.trust_on_first_use,
        })
    }

    /// What identifies this policy in a connection's pool key.
    pub(super) fn describe(&self) -> String {
        match self {
            HostKeys::Pinned(pins) => pins
                .iter()
                .map(|pin| match pin {
                    Pin::Key(key) => fingerprint(key),
                    Pin::Fingerprint(fp) => fp.clone(),
                })
                .collect::<Vec<_>>()
                .join(","),
            HostKeys::KnownHosts { path, learn } => {
                format!("{}{}", path.display(), if *learn { "+tofu" } else { "" })
            }
        }
    }

    /// Checks the key `host:port` offered.
    pub(super) fn check(&self, host: &str, port: u16, key: &PublicKey) -> Verdict {
        let offered = format!("{} {}", key.algorithm(), fingerprint(key));
        match self {
            HostKeys::Pinned(pins) => {
                if pins.iter().any(|pin| pin.matches(key)) {
                    Verdict::Trusted
                } else {
                    Verdict::Refused(format!(
                        "host key mismatch: {host}:{port} offered {offered}, which is not among \
                         the task's `host_key` ({}); if the host's key was changed on purpose, \
                         pin the new one",
                        self.describe()
                    ))
                }
            }
            HostKeys::KnownHosts { path, learn } => {
                match check_known_hosts_path(host, port, key, path) {
                    Ok(true) => Verdict::Trusted,
                    Ok(false) if *learn => {
                        let _one = LEARNING.lock().unwrap_or_else(|e| e.into_inner());
                        // Another attempt may have learned it meanwhile.
                        if check_known_hosts_path(host, port, key, path).unwrap_or(false) {
                            return Verdict::Trusted;
                        }
                        match learn_known_hosts_path(host, port, key, path) {
                            Ok(()) => {
                                tracing::info!(host, port, key = %offered, file = %path.display(),
                                    "trusted a new host key on first use");
                                Verdict::Trusted
                            }
                            Err(error) => Verdict::Refused(format!(
                                "cannot record the host key of {host}:{port} in {}: {error}",
                                path.display()
                            )),
                        }
                    }
                    Ok(false) => Verdict::Refused(format!(
                        "unknown host: {} has no key for {host}:{port} (it offered {offered}); \
                         add it there (`ssh-keyscan -p {port} {host}`), pin it with `host_key`, \
                         or set `trust_on_first_use`",
                        path.display()
                    )),
                    Err(russh::keys::Error::KeyChanged { line }) => Verdict::Refused(format!(
                        "host key mismatch: {host}:{port} offered {offered}, but line {line} of {} \
                         holds another key of that type for it; if the host's key was changed \
                         on purpose, replace that line",
                        path.display()
                    )),
                    Err(error) => Verdict::Refused(format!(
                        "cannot read the known hosts file {}: {error}",
                        path.display()
                    )),
                }
            }
        }
    }
}

impl Pin {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.starts_with("SHA256:") {
            return Ok(Pin::Fingerprint(text.to_owned()));
        }
        PublicKey::from_openssh(text).map(Pin::Key).map_err(|e| {
            format!("not a public key line (`ssh-ed25519 AAAA…`) or a `SHA256:` fingerprint: {e}")
        })
    }

    fn matches(&self, key: &PublicKey) -> bool {
        match self {
            Pin::Key(pinned) => pinned.key_data() == key.key_data(),
            Pin::Fingerprint(fp) => *fp == fingerprint(key),
        }
    }
}

/// `SHA256:…`, as `ssh-keygen -l` prints it.
pub(super) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";

    fn input(json: serde_json::Value) -> SshInput {
        let mut base = serde_json::json!({"host": "h", "user": "u", "key": "K", "argv": ["true"]});
        base.as_object_mut()
            .unwrap()
            .extend(json.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn a_pinned_key_or_its_fingerprint_is_trusted_and_nothing_else() {
        let key = PublicKey::from_openssh(KEY).unwrap();
        let by_key = HostKeys::from_input(&input(serde_json::json!({"host_key": KEY}))).unwrap();
        assert_eq!(by_key.check("h", 22, &key), Verdict::Trusted);
        let fp = fingerprint(&key);
        let by_fp = HostKeys::from_input(&input(serde_json::json!({"host_key": [fp]}))).unwrap();
        assert_eq!(by_fp.check("h", 22, &key), Verdict::Trusted);
        let other = HostKeys::from_input(&input(serde_json::json!({
            "host_key": "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        })))
        .unwrap();
        let Verdict::Refused(why) = other.check("h", 22, &key) else {
            panic!("a wrong pin was trusted");
        };
        assert!(why.contains("host key mismatch"), "{why}");
    }

    #[test]
    fn a_pin_with_known_hosts_or_garbage_is_refused() {
        for bad in [
            serde_json::json!({"host_key": KEY, "trust_on_first_use": true}),
            serde_json::json!({"host_key": "not a key"}),
        ] {
            let error = HostKeys::from_input(&input(bad.clone())).unwrap_err();
            assert_eq!(
                error.class,
                runlog_events::ErrorClass::InvalidInput,
                "{bad}"
            );
        }
    }

    #[test]
    fn known_hosts_learns_only_when_asked_and_refuses_a_changed_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let key = PublicKey::from_openssh(KEY).unwrap();
        let strict = HostKeys::KnownHosts {
            path: path.clone(),
            learn: false,
        };
        assert!(
            matches!(strict.check("h", 2222, &key), Verdict::Refused(why) if why.contains("unknown host"))
        );
        let tofu = HostKeys::KnownHosts {
            path: path.clone(),
            learn: true,
        };
        assert_eq!(tofu.check("h", 2222, &key), Verdict::Trusted);
        assert_eq!(
            strict.check("h", 2222, &key),
            Verdict::Trusted,
            "it was recorded"
        );
        let changed = PublicKey::from_openssh(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA6dV2fKbd0gIj1g5lFs1l6ho5cGbhPy9e7Y4jBu6Vw1",
        )
        .unwrap();
        assert!(
            matches!(tofu.check("h", 2222, &changed), Verdict::Refused(why) if why.contains("mismatch"))
        );
    }
}
