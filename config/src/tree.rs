//! The layering of one configuration tree, later wins: built-in defaults <
//! a TOML file (`--config runlog.toml`) < `RUNLOG_*` environment <
//! command-line flags. [figment] merges the layers table by table; this
//! module gives each layer its source and names a wrong value by what the
//! user wrote: the file's key, the variable or the flag.

use std::path::Path;
use std::sync::Arc;

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ConfigError;

/// The tables of runlog.toml. Each command reads `[nats]` and its own
/// table and leaves the other command's table to it.
pub const TABLES: [&str; 3] = ["nats", "engine", "worker"];

/// One setting: its key in the tree, its variable and its flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Its key path in the tree (`engine.stuck-after`).
    pub key: &'static str,
    /// Its environment variable (`RUNLOG_STUCK_AFTER`).
    pub env: &'static str,
    /// Its command-line flag (`--stuck-after`).
    pub flag: &'static str,
    /// How the variable's text becomes a value.
    pub form: Form,
}

/// How an environment variable's text becomes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The text as written; numbers and booleans are read from it.
    Text,
    /// A list, its items separated by the character.
    List(char),
    /// A table of `key=value` pairs separated by the character.
    Pairs(char),
    /// A boolean that sets the key to its opposite (`RUNLOG_NO_REACTOR`).
    Not,
}

/// The `[nats]` settings both commands read (`live-events` is the
/// engine's own).
pub const NATS: [Setting; 11] = [
    setting(
        "nats.urls",
        "RUNLOG_NATS_URL",
        "--nats-url",
        Form::List(','),
    ),
    setting(
        "nats.credentials",
        "RUNLOG_NATS_CREDS",
        "--nats-creds",
        Form::Text,
    ),
    setting("nats.user", "RUNLOG_NATS_USER", "--nats-user", Form::Text),
    setting(
        "nats.password",
        "RUNLOG_NATS_PASSWORD",
        "--nats-password",
        Form::Text,
    ),
    setting(
        "nats.token",
        "RUNLOG_NATS_TOKEN",
        "--nats-token",
        Form::Text,
    ),
    setting("nats.tls", "RUNLOG_NATS_TLS", "--nats-tls", Form::Text),
    setting(
        "nats.tls-ca",
        "RUNLOG_NATS_TLS_CA",
        "--nats-tls-ca",
        Form::Text,
    ),
    setting(
        "nats.tls-cert",
        "RUNLOG_NATS_TLS_CERT",
        "--nats-tls-cert",
        Form::Text,
    ),
    setting(
        "nats.tls-key",
        "RUNLOG_NATS_TLS_KEY",
        "--nats-tls-key",
        Form::Text,
    ),
    setting("nats.prefix", "RUNLOG_PREFIX", "--prefix", Form::Text),
    setting("nats.replicas", "RUNLOG_REPLICAS", "--replicas", Form::Text),
];

/// A [`Setting`], shorter to write in a table.
pub const fn setting(
    key: &'static str,
    env: &'static str,
    flag: &'static str,
    form: Form,
) -> Setting {
    Setting {
        key,
        env,
        flag,
        form,
    }
}

/// Values by key path, for the defaults and the flags layers.
///
/// # Examples
/// ```
/// use runlog_config::Values;
///
/// let flags = Values::new()
///     .set("engine.listen", "0.0.0.0:8080")
///     .set_some("engine.reactor", None::<bool>);
/// assert!(!flags.is_empty());
/// ```
#[derive(Debug, Default)]
pub struct Values {
    dict: Dict,
    error: Option<String>,
}

impl Values {
    /// No values.
    pub fn new() -> Self {
        Values::default()
    }

    /// Sets `key` (a path: `worker.breakers.window`).
    pub fn set(mut self, key: &str, value: impl Serialize) -> Self {
        match Value::serialize(value) {
            Ok(value) => insert(&mut self.dict, key, value),
            Err(e) => self.error = Some(format!("{key}: {e}")),
        }
        self
    }

    /// Sets `key` if `value` is given (a flag that was passed).
    pub fn set_some<T: Serialize>(self, key: &str, value: Option<T>) -> Self {
        match value {
            Some(value) => self.set(key, value),
            None => self,
        }
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.dict.is_empty()
    }
}

/// The layers of one command's configuration, lowest first.
#[derive(Debug)]
pub struct Layers<'a> {
    /// Every setting the command has a variable and a flag for.
    pub settings: &'a [Setting],
    /// Built-in defaults.
    pub defaults: Values,
    /// The TOML file, if one is given.
    pub file: Option<&'a Path>,
    /// The environment (`std::env::vars()` in the binaries); variables
    /// not in `settings` and empty ones are ignored.
    pub env: Vec<(String, String)>,
    /// The flags that were passed.
    pub flags: Values,
}

impl Layers<'_> {
    /// Merges the layers, later wins: lists and values are replaced,
    /// tables merged key by key.
    pub fn merge(self) -> Result<Tree, ConfigError> {
        let settings: Arc<[Setting]> = self.settings.into();
        for values in [&self.defaults, &self.flags] {
            if let Some(reason) = &values.error {
                return Err(ConfigError::Layered {
                    reason: reason.clone(),
                });
            }
        }
        let mut figment = Figment::new().merge(Layer {
            name: "built-in defaults",
            dict: self.defaults.dict,
            settings: settings.clone(),
            shown: |s| s.key,
        });
        if let Some(path) = self.file {
            figment = figment.merge(File::read(path)?);
        }
        figment = figment
            .merge(Layer {
                name: "the environment",
                dict: env_values(&settings, self.env),
                settings: settings.clone(),
                shown: |s| s.env,
            })
            .merge(Layer {
                name: "the command line",
                dict: self.flags.dict,
                settings,
                shown: |s| s.flag,
            });
        Ok(Tree { figment })
    }
}

/// The merged layers.
#[derive(Debug)]
pub struct Tree {
    figment: Figment,
}

impl Tree {
    /// One table (`nats`, `engine`, `worker`) as `T`. Numbers and booleans
    /// may be written as text (variables are text).
    pub fn table<T: DeserializeOwned>(&self, name: &str) -> Result<T, ConfigError> {
        self.figment.extract_inner_lossy(name).map_err(|e| {
            // figment appends the table's path to the key's; the user wrote
            // it in front.
            let reasons: Vec<String> = e
                .into_iter()
                .map(|mut e| {
                    let inner = e.path.len().saturating_sub(name.split('.').count());
                    e.path.rotate_left(inner);
                    e.to_string()
                })
                .collect();
            ConfigError::Layered {
                reason: reasons.join("; "),
            }
        })
    }
}

/// `value` as the TOML table `[name]`.
///
/// # Examples
/// ```
/// use runlog_config::{NatsConfig, Secret, to_toml};
///
/// let nats = NatsConfig { token: Some(Secret::new("s3cr3t")), ..NatsConfig::default() };
/// let text = to_toml("nats", &nats).unwrap();
/// assert!(text.starts_with("[nats]\n"));
/// assert!(text.contains("token = \"<redacted>\""));
/// assert!(!text.contains("s3cr3t"));
/// ```
pub fn to_toml<T: Serialize>(name: &str, value: &T) -> Result<String, ConfigError> {
    let table = std::collections::BTreeMap::from([(name, value)]);
    toml::to_string(&table).map_err(|e| ConfigError::Layered {
        reason: format!("cannot write [{name}] as TOML: {e}"),
    })
}

/// One layer of values, naming its keys as its source spells them.
struct Layer {
    name: &'static str,
    dict: Dict,
    settings: Arc<[Setting]>,
    shown: fn(&Setting) -> &'static str,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        let (settings, shown) = (self.settings.clone(), self.shown);
        Metadata::named(self.name).interpolater(move |_, keys| {
            let path = keys.join(".");
            settings
                .iter()
                .find(|s| {
                    path == s.key
                        || path
                            .strip_prefix(s.key)
                            .is_some_and(|rest| rest.starts_with('.'))
                })
                .map_or(path.clone(), |s| shown(s).to_owned())
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// The TOML file.
struct File {
    path: std::path::PathBuf,
    dict: Dict,
}

impl File {
    fn read(path: &Path) -> Result<File, ConfigError> {
        let bad = |reason: String| ConfigError::File {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let dict: Dict = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        for (key, value) in &dict {
            if !TABLES.contains(&key.as_str()) || value.as_dict().is_none() {
                return Err(bad(format!(
                    "unknown key `{key}`: the file holds the tables [nats], [engine] \
                     and [worker] (docs/operations.md lists their keys)"
                )));
            }
        }
        Ok(File {
            path: path.to_owned(),
            dict,
        })
    }
}

impl Provider for File {
    fn metadata(&self) -> Metadata {
        Metadata::from("(TOML)", Source::File(self.path.clone()))
            .interpolater(|_, keys| keys.join("."))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// The variables of `settings` found in `vars`, by key path.
fn env_values(settings: &[Setting], vars: Vec<(String, String)>) -> Dict {
    let mut dict = Dict::new();
    for (name, text) in vars {
        let Some(setting) = settings.iter().find(|s| s.env == name) else {
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        let items = |sep: char| {
            text.split(sep)
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let value = match setting.form {
            Form::Text => Value::from(text.clone()),
            Form::List(sep) => Value::from(items(sep)),
            Form::Pairs(sep) => {
                let pairs: Option<Dict> = items(sep)
                    .iter()
                    .map(|item| {
                        let (k, v) = item.split_once('=')?;
                        Some((k.trim().to_owned(), Value::from(v.trim())))
                    })
                    .collect();
                pairs.map_or_else(|| Value::from(text.clone()), Value::from)
            }
            Form::Not => {
                let given = Value::from(text.clone());
                given.to_bool_lossy().map_or(given, |b| Value::from(!b))
            }
        };
        insert(&mut dict, setting.key, value);
    }
    dict
}

/// Puts `value` at the key path `path` of `dict`.
fn insert(dict: &mut Dict, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            dict.insert(path.to_owned(), value);
        }
        Some((head, rest)) => {
            let slot = dict
                .entry(head.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if slot.as_dict().is_none() {
                *slot = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = slot {
                insert(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;
    use crate::{NatsConfig, Secret};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
    struct Section {
        #[serde(with = "crate::duration")]
        every: Duration,
        on: bool,
        count: u32,
        labels: std::collections::BTreeMap<String, String>,
    }

    impl Default for Section {
        fn default() -> Self {
            Section {
                every: Duration::from_secs(60),
                on: true,
                count: 1,
                labels: Default::default(),
            }
        }
    }

    const SETTINGS: [Setting; 4] = [
        setting("engine.every", "RUNLOG_EVERY", "--every", Form::Text),
        setting("engine.on", "RUNLOG_NO_ON", "--no-on", Form::Not),
        setting("engine.count", "RUNLOG_COUNT", "--count", Form::Text),
        setting(
            "engine.labels",
            "RUNLOG_LABELS",
            "--label",
            Form::Pairs(','),
        ),
    ];

    fn settings() -> Vec<Setting> {
        NATS.iter().chain(&SETTINGS).copied().collect()
    }

    fn defaults() -> Values {
        Values::new()
            .set("nats", NatsConfig::default())
            .set("engine", Section::default())
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_file_beats_defaults_the_environment_beats_the_file_and_flags_beat_both() {
        let file = file(
            "[nats]\nurls = [\"nats://a:4222\", \"nats://b:4222\"]\nreplicas = 3\n\
             [engine]\nevery = \"1m30s\"\ncount = 2\nlabels = { pool = \"eu\" }\n\
             [worker]\nwhatever = 1\n",
        );
        let tree = Layers {
            settings: &settings(),
            defaults: defaults(),
            file: Some(file.path()),
            env: env(&[
                ("RUNLOG_COUNT", "3"),
                ("RUNLOG_NO_ON", "yes"),
                ("RUNLOG_REPLICAS", "5"),
                ("RUNLOG_LABELS", "gpu=a100, zone=b"),
                ("RUNLOG_NATS_PASSWORD", "0123"),
                ("RUNLOG_UNRELATED", "x"),
                ("RUNLOG_NATS_USER", ""),
            ]),
            flags: Values::new()
                .set("engine.count", 4)
                .set_some("nats.replicas", None::<usize>),
        }
        .merge()
        .unwrap();
        let nats: NatsConfig = tree.table("nats").unwrap();
        let engine: Section = tree.table("engine").unwrap();
        assert_eq!(nats.urls, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(nats.replicas, 5);
        assert_eq!(nats.password, Some(Secret::new("0123")));
        assert_eq!(nats.user, None);
        assert_eq!(nats.prefix, "runlog");
        assert_eq!(engine.every, Duration::from_secs(90));
        assert_eq!(engine.count, 4);
        assert!(!engine.on);
        let labels: Vec<_> = engine.labels.keys().map(String::as_str).collect();
        assert_eq!(labels, ["gpu", "pool", "zone"], "tables merge key by key");
    }

    #[test]
    fn a_wrong_value_is_named_as_its_layer_spells_it() {
        let wrong = |env_vars: &[(&str, &str)], flags: Values, text: &str| {
            let file = file(text);
            Layers {
                settings: &settings(),
                defaults: defaults(),
                file: Some(file.path()),
                env: env(env_vars),
                flags,
            }
            .merge()
            .and_then(|tree| tree.table::<Section>("engine"))
            .unwrap_err()
            .to_string()
        };
        let err = wrong(&[("RUNLOG_EVERY", "5 parsecs")], Values::new(), "");
        assert!(
            err.contains("RUNLOG_EVERY") && err.contains("environment"),
            "{err}"
        );
        let err = wrong(&[], Values::new().set("engine.count", "many"), "");
        assert!(
            err.contains("--count") && err.contains("command line"),
            "{err}"
        );
        let err = wrong(&[], Values::new(), "[engine]\nevery = 60\n");
        assert!(err.contains("engine.every"), "{err}");
        let err = wrong(&[], Values::new(), "[engine]\nevry = \"60s\"\n");
        assert!(err.contains("evry"), "{err}");
    }

    #[test]
    fn the_file_is_refused_naming_an_unknown_key() {
        for (text, key) in [
            ("[nats]\nurl = \"x\"\n", "url"),
            ("listen = \"0.0.0.0:9000\"\n", "listen"),
            ("[engines]\nlisten = \"0.0.0.0:9000\"\n", "engines"),
        ] {
            let file = file(text);
            let err = Layers {
                settings: &settings(),
                defaults: defaults(),
                file: Some(file.path()),
                env: Vec::new(),
                flags: Values::new(),
            }
            .merge()
            .and_then(|tree| tree.table::<NatsConfig>("nats"))
            .unwrap_err()
            .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let nats = NatsConfig {
            user: Some("ops".into()),
            password: Some(Secret::new("hunter2")),
            token: Some(Secret::new("t0ken")),
            ..NatsConfig::default()
        };
        let text = to_toml("nats", &nats).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("t0ken"),
            "{text}"
        );
        assert!(text.contains("password = \"<redacted>\""), "{text}");
        assert!(!format!("{nats:?}").contains("hunter2"));
    }
}
