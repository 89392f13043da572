//! A worker's guard rails against a real server: programs outside the
//! allow-list, disabled kinds and root children are refused `permission`
//! without running; `http` tasks cannot reach cloud metadata addresses or
//! denied hosts, by name or by address; `run_as` starts programs as
//! another user.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use common::{Harness, spec};
use runlog_events::journal::History;
use runlog_events::{ErrorClass, ExecutionId, QueueName, Status};
use runlog_worker::executor::{HostPolicy, builtin_with};
use runlog_worker::identity::RunAs;
use runlog_worker::policy::QueueRulePatch;
use runlog_worker::runtime::{Worker, WorkerConfig};
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(20);

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn start(
    h: &Harness,
    config: WorkerConfig,
    hosts: HostPolicy,
) -> Result<common::RunningWorker> {
    Ok(h.spawn(Worker::connect(config, builtin_with(hosts)).await?))
}

async fn refusal(h: &Harness, exec: &ExecutionId) -> Result<(ErrorClass, String, History)> {
    let history = h.wait_status(exec, Status::Failed, WITHIN).await?;
    let error = &history.state.errors[0].error;
    Ok((error.class, error.message.clone(), history))
}

#[tokio::test]
async fn a_program_outside_the_allow_list_fails_permission_without_running() -> Result<()> {
    let h = Harness::start().await?;
    let dir = tempfile::tempdir()?;
    let mut config = h.config("w1");
    config.executors.default.programs = Some(set(&["echo"]));
    config.executors.queues.insert(
        QueueName::new("no-scripts")?,
        QueueRulePatch {
            disabled: Some(set(&["script"])),
            programs: None,
        },
    );
    let worker = start(&h, config, HostPolicy::default()).await?;

    let marker = dir.path().join("ran");
    let outside = h
        .submit(spec("shell", json!({"argv": ["touch", marker]})))
        .await?;
    let (class, message, history) = refusal(&h, &outside).await?;
    assert_eq!(class, ErrorClass::Permission, "{message}");
    assert!(message.contains("`touch` is not among"), "{message}");
    assert!(!marker.exists(), "the refused program ran");
    assert!(!history.state.errors[0].error.retryable);

    // A script through `sh -c` is the program `sh`, which is not allowed.
    let script = h
        .submit(spec(
            "shell",
            json!({"shell": format!("touch {}", marker.display())}),
        ))
        .await?;
    assert_eq!(refusal(&h, &script).await?.0, ErrorClass::Permission);
    assert!(!marker.exists());

    let allowed = h
        .submit(spec("shell", json!({"argv": ["echo", "hi"]})))
        .await?;
    let done = h.wait_status(&allowed, Status::Succeeded, WITHIN).await?;
    assert_eq!(done.state.output.as_deref().unwrap()["stdout"], "hi\n");

    let mut disabled = spec("script", json!({"language": "sh", "code": "echo 1"}));
    disabled.queue = QueueName::new("no-scripts")?;
    let mut config = h.config("w2");
    config.queues = vec![QueueName::new("no-scripts")?];
    config.executors = {
        let mut policy = runlog_worker::policy::ExecutorPolicy::default();
        policy.queues.insert(
            QueueName::new("no-scripts")?,
            QueueRulePatch {
                disabled: Some(set(&["script"])),
                programs: None,
            },
        );
        policy
    };
    let other = start(&h, config, HostPolicy::default()).await?;
    let disabled = h.submit(disabled).await?;
    let (class, message, _) = refusal(&h, &disabled).await?;
    assert_eq!(class, ErrorClass::Permission);
    assert!(
        message.contains("does not run `script` tasks on queue no-scripts"),
        "{message}"
    );
    other.stop().await?;
    worker.stop().await
}

#[tokio::test]
async fn http_tasks_cannot_reach_metadata_addresses_or_denied_hosts() -> Result<()> {
    let h = Harness::start().await?;
    // A local server that would answer, to show refusals are the policy's.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let worker = start(&h, h.config("w1"), HostPolicy::default()).await?;
    for url in [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
    ] {
        let exec = h.submit(spec("http", json!({"url": url}))).await?;
        let (class, message, _) = refusal(&h, &exec).await?;
        assert_eq!(class, ErrorClass::Permission, "{url}: {message}");
        assert!(message.contains("cloud metadata"), "{url}: {message}");
    }
    let local = h
        .submit(spec(
            "http",
            json!({"url": format!("http://127.0.0.1:{port}/")}),
        ))
        .await?;
    h.wait_status(&local, Status::Succeeded, WITHIN).await?;
    worker.stop().await?;

    // A denied network is refused by name too: `localhost` resolves into
    // it, and the resolver drops the address.
    let hosts = HostPolicy {
        deny: vec!["127.0.0.0/8".parse()?, "::1".parse()?],
        ..HostPolicy::default()
    };
    let worker = start(&h, h.config("w2"), hosts).await?;
    let by_name = h
        .submit(spec(
            "http",
            json!({"url": format!("http://localhost:{port}/")}),
        ))
        .await?;
    let (class, message, _) = refusal(&h, &by_name).await?;
    assert_eq!(class, ErrorClass::Permission, "{message}");
    assert!(message.contains("deny-hosts"), "{message}");
    worker.stop().await
}

#[tokio::test]
async fn root_children_need_run_as_or_consent() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: run as root to test --run-as");
        return Ok(());
    }
    let h = Harness::start().await?;
    let mut config = h.config("w1");
    config.executors.allow_root = false;
    let worker = start(&h, config, HostPolicy::default()).await?;
    let as_root = h
        .submit(spec("shell", json!({"argv": ["id", "-u"]})))
        .await?;
    let (class, message, _) = refusal(&h, &as_root).await?;
    assert_eq!(class, ErrorClass::Permission);
    assert!(message.contains("--run-as USER"), "{message}");
    // Tasks that start no program here still run.
    let echo = h.submit(spec("echo", json!({"x": 1}))).await?;
    h.wait_status(&echo, Status::Succeeded, WITHIN).await?;
    worker.stop().await?;

    let mut config = h.config("w2");
    config.executors.allow_root = false;
    config.run_as = Some(RunAs::lookup("nobody")?);
    let nobody = config.run_as.clone().unwrap();
    let worker = start(&h, config, HostPolicy::default()).await?;
    let exec = h
        .submit(spec("shell", json!({"shell": "id -u; id -g; echo $HOME"})))
        .await?;
    let done = h.wait_status(&exec, Status::Succeeded, WITHIN).await?;
    let stdout = done.state.output.as_deref().unwrap()["stdout"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        stdout,
        format!("{}\n{}\n{}\n", nobody.uid, nobody.gid, nobody.home),
        "the program ran as nobody"
    );
    worker.stop().await
}
