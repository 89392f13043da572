//! `runlog engine` and `runlog worker` read one configuration tree: the
//! same runlog.toml, layered defaults < file < `RUNLOG_*` environment <
//! flags. `--print-config` shows the merged tree without connecting, so
//! these tests need no nats-server: nothing listens at the URLs they give.

use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};

/// One file for both commands.
const RUNLOG_TOML: &str = r#"
[nats]
urls = ["nats://nats-1.invalid:4222", "nats://nats-2.invalid:4222"]
prefix = "fromfile"
replicas = 3
user = "ops"
password = "file-password-1"

[engine]
listen = "0.0.0.0:9000"
snapshot-interval = "30s"
stuck-after = "1m"

[worker]
queues = ["fromfile"]
concurrency = 2
heartbeat = "2s"
drain-timeout = "1m30s"
labels = { pool = "eu" }
capacity = ["plan=3"]

[worker.breakers]
window = "2m"
probes = 2
"#;

/// `runlog ARGS` with `vars` as its only `RUNLOG_*` variables.
fn runlog(args: &[&str], vars: &[(&str, &str)]) -> Result<Output> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_runlog"));
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("RUNLOG_") {
            command.env_remove(name);
        }
    }
    command.envs(vars.iter().copied());
    command.output().context("cannot run runlog")
}

/// `runlog ARGS --print-config`, parsed; fails unless it exits 0.
fn print_config(args: &[&str], vars: &[(&str, &str)]) -> Result<toml::Table> {
    let mut all = args.to_vec();
    all.push("--print-config");
    let out = runlog(&all, vars)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "runlog {all:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .parse()
        .with_context(|| format!("not TOML:\n{stdout}"))
}

fn file() -> Result<tempfile::NamedTempFile> {
    let file = tempfile::Builder::new().suffix(".toml").tempfile()?;
    std::fs::write(file.path(), RUNLOG_TOML)?;
    Ok(file)
}

fn at<'a>(tree: &'a toml::Table, path: &str) -> &'a toml::Value {
    let mut keys = path.split('.');
    let first = keys.next().expect("a path has a key");
    keys.fold(&tree[first], |value, key| &value[key])
}

fn duration(tree: &toml::Table, path: &str) -> std::time::Duration {
    let text = at(tree, path).as_str().expect("a duration is text");
    humantime::parse_duration(text).expect("a humantime duration")
}

#[test]
fn engine_settings_layer_file_then_environment_then_flags() -> Result<()> {
    let file = file()?;
    let path = file.path().to_str().context("a UTF-8 path")?;
    let tree = print_config(
        &[
            "engine",
            "--config",
            path,
            "--replicas",
            "5",
            "--snapshot-interval",
            "90s",
        ],
        &[
            ("RUNLOG_STUCK_AFTER", "2m"),
            ("RUNLOG_SNAPSHOT_INTERVAL", "45s"),
            ("RUNLOG_PREFIX", "fromenv"),
            ("RUNLOG_REPLICAS", "4"),
            ("RUNLOG_NO_REACTOR", "true"),
        ],
    )?;
    // The file over the defaults.
    assert_eq!(at(&tree, "engine.listen").as_str(), Some("0.0.0.0:9000"));
    assert_eq!(
        at(&tree, "nats.urls").as_array().map(Vec::len),
        Some(2),
        "{tree}"
    );
    assert_eq!(at(&tree, "nats.live-events").as_bool(), Some(false));
    // The environment over the file.
    assert_eq!(duration(&tree, "engine.stuck-after").as_secs(), 120);
    assert_eq!(at(&tree, "nats.prefix").as_str(), Some("fromenv"));
    assert_eq!(at(&tree, "engine.reactor").as_bool(), Some(false));
    // Flags over the environment and the file.
    assert_eq!(at(&tree, "nats.replicas").as_integer(), Some(5));
    assert_eq!(duration(&tree, "engine.snapshot-interval").as_secs(), 90);
    // The worker's table is the worker's.
    assert!(!tree.contains_key("worker"), "{tree}");
    Ok(())
}

#[test]
fn worker_settings_layer_file_then_environment_then_flags() -> Result<()> {
    let file = file()?;
    let path = file.path().to_str().context("a UTF-8 path")?;
    let tree = print_config(
        &[
            "worker",
            "--config",
            path,
            "--concurrency",
            "8",
            "--breaker-window",
            "3m",
            "--label",
            "gpu=a100",
        ],
        &[
            ("RUNLOG_CONCURRENCY", "6"),
            ("RUNLOG_HEARTBEAT", "3s"),
            ("RUNLOG_QUEUES", "env-a,env-b"),
            ("RUNLOG_BREAKER_WINDOW", "4m"),
            ("RUNLOG_CAPACITY", "plan=1;apply=1,exclusive"),
            ("RUNLOG_REPLICAS", "4"),
        ],
    )?;
    let texts = |path| -> Vec<String> {
        at(&tree, path)
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    // The shared [nats] table and the file's worker settings.
    assert_eq!(at(&tree, "nats.prefix").as_str(), Some("fromfile"));
    assert_eq!(duration(&tree, "worker.drain-timeout").as_secs(), 90);
    assert_eq!(at(&tree, "worker.breakers.probes").as_integer(), Some(2));
    // Defaults where nobody said otherwise.
    assert_eq!(duration(&tree, "worker.ack-wait").as_secs(), 30);
    assert_eq!(at(&tree, "worker.aging-every").as_integer(), Some(8));
    // The environment over the file.
    assert_eq!(duration(&tree, "worker.heartbeat").as_secs(), 3);
    assert_eq!(texts("worker.queues"), ["env-a", "env-b"]);
    assert_eq!(texts("worker.capacity"), ["plan=1", "apply=1,exclusive"]);
    assert_eq!(at(&tree, "nats.replicas").as_integer(), Some(4));
    // Flags over the environment and the file; labels merge key by key.
    assert_eq!(at(&tree, "worker.concurrency").as_integer(), Some(8));
    assert_eq!(duration(&tree, "worker.breakers.window").as_secs(), 180);
    assert_eq!(at(&tree, "worker.labels.pool").as_str(), Some("eu"));
    assert_eq!(at(&tree, "worker.labels.gpu").as_str(), Some("a100"));
    assert!(!tree.contains_key("engine"), "{tree}");
    Ok(())
}

#[test]
fn print_config_redacts_nats_secrets_from_every_layer() -> Result<()> {
    let file = file()?;
    let path = file.path().to_str().context("a UTF-8 path")?;
    for command in ["engine", "worker"] {
        for (args, vars) in [
            (
                vec![command, "--config", path],
                vec![("RUNLOG_NATS_TOKEN", "env-token-2")],
            ),
            (
                vec![
                    command,
                    "--nats-password",
                    "flag-password-3",
                    "--nats-token",
                    "flag-token-4",
                ],
                vec![],
            ),
        ] {
            let mut all = args.clone();
            all.push("--print-config");
            let out = runlog(&all, &vars)?;
            let printed = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            ensure!(out.status.success(), "runlog {all:?} failed: {printed}");
            for secret in [
                "file-password-1",
                "env-token-2",
                "flag-password-3",
                "flag-token-4",
            ] {
                ensure!(
                    !printed.contains(secret),
                    "{all:?} printed {secret}:\n{printed}"
                );
            }
            let tree: toml::Table = String::from_utf8_lossy(&out.stdout).parse()?;
            assert_eq!(
                at(&tree, "nats.password").as_str(),
                Some("<redacted>"),
                "{all:?}"
            );
            assert_eq!(
                at(&tree, "nats.token").as_str(),
                Some("<redacted>"),
                "{all:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn a_wrong_setting_is_refused_naming_its_key_variable_or_flag() -> Result<()> {
    /// A command, its file, its variables, and what its error must name.
    type Case = (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
    );
    let dir = tempfile::tempdir()?;
    let cases: [Case; 5] = [
        // Keys the tree does not have, in a table and at the top.
        (
            "engine",
            "[engine]\nsnapshot_interval_secs = 60\n",
            &[],
            "snapshot_interval_secs",
        ),
        ("engine", "listen = \"0.0.0.0:9000\"\n", &[], "listen"),
        (
            "worker",
            "[worker.breakers]\nwindows = \"1m\"\n",
            &[],
            "windows",
        ),
        // Durations name their unit, in variables too.
        (
            "engine",
            "",
            &[("RUNLOG_STUCK_AFTER", "300")],
            "RUNLOG_STUCK_AFTER",
        ),
        (
            "worker",
            "",
            &[("RUNLOG_CONCURRENCY", "0")],
            "RUNLOG_CONCURRENCY",
        ),
    ];
    for (i, (command, text, vars, named)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("{i}.toml"));
        std::fs::write(&path, text)?;
        let path = path.to_str().context("a UTF-8 path")?;
        let out = runlog(&[command, "--config", path, "--print-config"], vars)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success(),
            "{command} accepted {text:?} {vars:?}"
        );
        ensure!(
            stderr.contains(named),
            "{command}: {stderr} does not name {named}"
        );
    }
    Ok(())
}
