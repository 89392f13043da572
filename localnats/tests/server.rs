//! A single real nats-server: start, JetStream, crash and restart, cleanup.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, stream};
use runlog_localnats::NatsServer;

async fn create_stream(server: &NatsServer, name: &str) -> Result<jetstream::Context> {
    let client = async_nats::connect(server.url()).await?;
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{name}.>")],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    Ok(js)
}

/// Whether a process with this id exists (`kill -0` sends no signal, it only checks).
fn process_exists(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[tokio::test]
async fn a_server_starts_with_jetstream_and_is_cleaned_on_drop() -> Result<()> {
    let server = NatsServer::start()?;
    let js = create_stream(&server, "orders").await?;
    let ack = js.publish("orders.created", "o-1".into()).await?.await?;
    assert_eq!((ack.stream.as_str(), ack.sequence), ("orders", 1));

    let pid = server.pid().context("a started server has a pid")?;
    let store = server.store_dir().to_owned();
    let log = server.log_path();
    assert!(
        store.join("jetstream").is_dir(),
        "JetStream writes below the store dir"
    );
    assert!(process_exists(pid));

    drop(server);
    assert!(
        !process_exists(pid),
        "the server process is gone after drop"
    );
    assert!(!store.exists(), "the temporary store is deleted on drop");
    assert!(!log.exists(), "the log is deleted on drop");
    Ok(())
}

#[tokio::test]
async fn restart_keeps_the_store() -> Result<()> {
    const N: u64 = 50;
    let mut server = NatsServer::start()?;
    let port = server.port();
    let js = create_stream(&server, "events").await?;
    for i in 0..N {
        js.publish("events.x", format!("{i}").into()).await?.await?;
    }

    server.kill();
    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    server.restart()?;
    assert_eq!(server.port(), port, "a restart keeps the port");

    let js = jetstream::new(async_nats::connect(server.url()).await?);
    let info = js.get_stream("events").await?.info().await?.clone();
    assert_eq!(
        info.state.messages, N,
        "acknowledged messages survive SIGKILL"
    );
    Ok(())
}

#[test]
fn two_servers_get_different_ports() -> Result<()> {
    let a = NatsServer::start()?;
    let b = NatsServer::start()?;
    assert_ne!(a.port(), b.port());
    assert_ne!(a.url(), b.url());
    assert_ne!(a.monitor_url(), b.monitor_url());
    assert_ne!(a.store_dir(), b.store_dir());
    Ok(())
}

#[tokio::test]
async fn a_caller_owned_store_outlives_the_server_and_serves_the_next_one() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("nats");
    {
        let server = NatsServer::builder().store_dir(&store).start()?;
        let js = create_stream(&server, "kept").await?;
        js.publish("kept.a", "1".into()).await?.await?;
    }
    assert!(
        store.join("jetstream").is_dir(),
        "a caller-owned store is not deleted"
    );

    let server = NatsServer::builder().store_dir(&store).start()?;
    let js = jetstream::new(async_nats::connect(server.url()).await?);
    let info = js.get_stream("kept").await?.info().await?.clone();
    assert_eq!(info.state.messages, 1);
    Ok(())
}

#[test]
fn stop_is_graceful_and_restart_brings_the_server_back() -> Result<()> {
    let mut server = NatsServer::builder()
        .max_payload(8 << 20)
        .config_line("max_connections: 100")
        .ready_timeout(Duration::from_secs(10))
        .start()?;
    server.stop();
    assert!(!server.is_running());
    let log = std::fs::read_to_string(server.log_path())?;
    assert!(
        log.contains("Server Exiting"),
        "SIGTERM shuts down cleanly:\n{log}"
    );

    server.restart()?;
    assert!(server.is_running());
    let varz = get(&server.monitor_url(), "/varz")?;
    assert!(varz.contains("\"max_payload\": 8388608"), "{varz}");
    assert!(varz.contains("\"max_connections\": 100"), "{varz}");
    Ok(())
}

#[test]
fn a_taken_port_is_a_readable_error() -> Result<()> {
    let server = NatsServer::start()?;
    let error = NatsServer::builder()
        .port(server.port())
        .start()
        .expect_err("the port is taken");
    let message = error.to_string();
    assert!(
        matches!(error, runlog_localnats::Error::Exited { .. }),
        "{message}"
    );
    assert!(message.contains("address already in use"), "{message}");
    Ok(())
}

/// `GET path` on the monitoring port, which speaks plain HTTP.
fn get(monitor_url: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let addr = monitor_url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr)?;
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body)
}
