//! Named servers: the inventory an `ssh` task names (`"server": "web-1"`)
//! or selects by labels (`"servers": {"role": "web"}`) instead of spelling
//! out an address, a user and a key.
//!
//! A [`Server`] is configuration, kept in the `<p>-servers` key-value
//! bucket, not execution state. Intake resolves a task's `server` into the
//! `ssh` input the worker runs ([`Server::apply`]) before the task is
//! recorded, so the log says exactly where each attempt went even after
//! the inventory changes: the address, port, user and pinned host keys are
//! written into the input, the key travels as the *name* of a secret in the
//! spec's `secrets`, and the label `server=<name>` lets the executions of
//! one server be listed.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::id::validate_token;
use crate::spec::{FieldError, TaskSpec};

/// The task environment variable that carries a server's key to the worker.
pub const KEY_VARIABLE: &str = "RUNLOG_SERVER_KEY";
/// The one that carries the passphrase of an encrypted key.
pub const PASSPHRASE_VARIABLE: &str = "RUNLOG_SERVER_KEY_PASSPHRASE";
/// The label every execution resolved from a server carries.
pub const LABEL: &str = "server";
/// Input fields a server gives; a task naming a server may not give them.
const GIVEN_FIELDS: [&str; 6] = ["host", "port", "user", "key", "passphrase", "host_key"];

/// A named server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Its name: letters, digits, `-` and `_` (a subject token).
    pub name: String,
    /// Host name or address to connect to.
    pub address: String,
    /// SSH port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The user to log in as.
    pub user: String,
    /// The name of the secret holding the private key (a worker resolves
    /// it, `RUNLOG_SECRET_<NAME>`).
    pub key_secret: String,
    /// The name of the secret holding the key's passphrase, for an
    /// encrypted key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase_secret: Option<String>,
    /// Host keys to accept (public key lines or `SHA256:` fingerprints;
    /// one string or a list). Empty: the worker's `~/.ssh/known_hosts`
    /// decides.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "one_or_many"
    )]
    pub host_key: Vec<String>,
    /// Labels a task selects servers by (`role=web`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// What it is, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn default_port() -> u16 {
    22
}

/// Reads one string or a list of strings as a list: how host keys are
/// written, here and in the `ssh` input.
pub fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a host key string or a list of them")]
    enum Form {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Form::deserialize(d)? {
        Form::One(key) => vec![key],
        Form::Many(keys) => keys,
    })
}

/// How a task names its servers, read from an `ssh` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The input gives its own address: no inventory involved.
    Direct,
    /// One server by name.
    Named(String),
    /// Every server whose labels include all of these.
    Selected(BTreeMap<String, String>),
}

impl Target {
    /// What `spec` names: only `ssh` tasks name servers.
    pub fn of(spec: &TaskSpec) -> Result<Target, FieldError> {
        if spec.kind != "ssh" {
            return Ok(Target::Direct);
        }
        let (named, selected) = match spec.input.as_object() {
            // An input with an address was resolved already (a retry or a
            // replay copies the recorded input): `server` is its note.
            Some(input) if input.contains_key("host") => return Ok(Target::Direct),
            Some(input) => (input.get("server"), input.get("servers")),
            None => (None, None),
        };
        match (named, selected) {
            (None, None) => Ok(Target::Direct),
            (Some(_), Some(_)) => Err(field(
                "input.servers",
                "give `server` (one by name) or `servers` (a label selector), not both",
            )),
            (Some(Value::String(name)), None) => Ok(Target::Named(name.clone())),
            (Some(_), None) => Err(field("input.server", "must be a server's name")),
            (None, Some(selector)) => {
                let selector: BTreeMap<String, String> = serde_json::from_value(selector.clone())
                    .map_err(|_| {
                    field(
                        "input.servers",
                        "must be labels to match, like {\"role\": \"web\"}",
                    )
                })?;
                if selector.is_empty() {
                    return Err(field(
                        "input.servers",
                        "an empty selector would pick every server: name at least one label",
                    ));
                }
                Ok(Target::Selected(selector))
            }
        }
    }
}

impl Server {
    /// Every problem with this definition, by field.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Err(e) = validate_token(&self.name) {
            errors.push(field("name", &format!("is not a valid name: {e}")));
        }
        for (name, value) in [
            ("address", &self.address),
            ("user", &self.user),
            ("key_secret", &self.key_secret),
        ] {
            if value.trim().is_empty() {
                errors.push(field(name, "must not be empty"));
            }
        }
        if self.port == 0 {
            errors.push(field("port", "must be 1 to 65535"));
        }
        for (i, key) in self.host_key.iter().enumerate() {
            let looks_right = key.starts_with("SHA256:")
                || key.split_whitespace().count() >= 2 && !key.contains('\n');
            if !looks_right {
                errors.push(field(
                    &format!("host_key[{i}]"),
                    "must be a public key line (`ssh-ed25519 AAAA…`) or a `SHA256:` fingerprint",
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Whether every label of `selector` is one of this server's.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector
            .iter()
            .all(|(k, v)| self.labels.get(k).is_some_and(|mine| mine == v))
    }

    /// Rewrites the `ssh` task `spec`, which names this server (or selected
    /// it), into one that connects to it: the input gets `server`, `host`,
    /// `port`, `user`, `key`, and `passphrase` and `host_key` when the
    /// server has them; the spec's `secrets` get the key's secret; its
    /// labels `server=<name>`.
    pub fn apply(&self, spec: &mut TaskSpec) -> Result<(), FieldError> {
        let input = match &mut spec.input {
            Value::Object(input) => input,
            _ => return Err(field("input", "must be an object")),
        };
        if let Some(given) = GIVEN_FIELDS.iter().find(|f| input.contains_key(**f)) {
            return Err(field(
                &format!("input.{given}"),
                &format!("is given by server {:?}: leave it out", self.name),
            ));
        }
        for variable in [KEY_VARIABLE, PASSPHRASE_VARIABLE] {
            if spec.secrets.contains_key(variable) || spec.env.contains_key(variable) {
                return Err(field(
                    &format!("secrets.{variable}"),
                    "is where a server's key goes: use another name",
                ));
            }
        }
        input.remove("servers");
        let mut resolved = Map::new();
        resolved.insert("server".into(), self.name.clone().into());
        resolved.insert("host".into(), self.address.clone().into());
        resolved.insert("port".into(), self.port.into());
        resolved.insert("user".into(), self.user.clone().into());
        resolved.insert("key".into(), KEY_VARIABLE.into());
        if self.passphrase_secret.is_some() {
            resolved.insert("passphrase".into(), PASSPHRASE_VARIABLE.into());
        }
        if !self.host_key.is_empty() {
            resolved.insert("host_key".into(), self.host_key.clone().into());
        }
        input.extend(resolved);
        spec.secrets
            .insert(KEY_VARIABLE.into(), self.key_secret.clone());
        if let Some(passphrase) = &self.passphrase_secret {
            spec.secrets
                .insert(PASSPHRASE_VARIABLE.into(), passphrase.clone());
        }
        spec.labels.insert(LABEL.into(), self.name.clone());
        Ok(())
    }
}

fn field(field: &str, reason: &str) -> FieldError {
    FieldError {
        field: field.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn web() -> Server {
        serde_json::from_value(json!({
            "name": "web-1", "address": "10.0.0.5", "user": "deploy",
            "key_secret": "deploy-key", "host_key": ["SHA256:abc"],
            "labels": {"role": "web", "dc": "fra"},
        }))
        .unwrap()
    }

    fn ssh(input: Value) -> TaskSpec {
        let mut spec = TaskSpec::new("ssh");
        spec.input = input;
        spec
    }

    #[test]
    fn a_named_server_becomes_the_address_user_key_and_pins_of_the_input() {
        let mut spec = ssh(json!({"server": "web-1", "argv": ["uptime"]}));
        assert_eq!(Target::of(&spec).unwrap(), Target::Named("web-1".into()));
        web().apply(&mut spec).unwrap();
        assert_eq!(
            spec.input,
            json!({"server": "web-1", "host": "10.0.0.5", "port": 22, "user": "deploy",
                   "key": KEY_VARIABLE, "host_key": ["SHA256:abc"], "argv": ["uptime"]})
        );
        assert_eq!(spec.secrets[KEY_VARIABLE], "deploy-key");
        assert_eq!(spec.labels[LABEL], "web-1");
    }

    #[test]
    fn a_task_naming_a_server_may_not_give_its_fields() {
        let mut spec = ssh(json!({"server": "web-1", "user": "root", "argv": ["true"]}));
        let error = web().apply(&mut spec).unwrap_err();
        assert_eq!(error.field, "input.user");
        // Resolved once, the input is left alone: a retry copies it.
        let mut resolved = ssh(json!({"server": "web-1", "argv": ["true"]}));
        web().apply(&mut resolved).unwrap();
        assert_eq!(Target::of(&resolved).unwrap(), Target::Direct);
    }

    #[test]
    fn selectors_match_on_every_label_and_are_never_empty() {
        let spec = ssh(json!({"servers": {"role": "web"}, "argv": ["true"]}));
        let Target::Selected(selector) = Target::of(&spec).unwrap() else {
            panic!("not a selector");
        };
        assert!(web().matches(&selector));
        assert!(!web().matches(&BTreeMap::from([("role".into(), "db".into())])));
        assert!(Target::of(&ssh(json!({"servers": {}}))).is_err());
        assert!(Target::of(&ssh(json!({"server": "a", "servers": {"r": "w"}}))).is_err());
        assert_eq!(Target::of(&TaskSpec::new("shell")).unwrap(), Target::Direct);
    }

    #[test]
    fn a_definition_names_its_problems() {
        let mut bad = web();
        bad.name = "web 1".into();
        bad.user = String::new();
        bad.host_key = vec!["nonsense".into()];
        let fields: Vec<String> = bad
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["name", "user", "host_key[0]"]);
        assert!(web().validate().is_ok());
    }
}
