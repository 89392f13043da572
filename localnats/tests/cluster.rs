//! A real three-node JetStream cluster: replication and losing the stream leader.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, stream};
use runlog_localnats::Cluster;

/// Elections after a SIGKILL take a few seconds; give them a generous deadline.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(20);

async fn stream_info(js: &jetstream::Context, name: &str) -> Result<stream::Info> {
    Ok(js.get_stream(name).await?.info().await?.clone())
}

/// Publishes with a Msg-Id, retrying (with the same id) until acknowledged or the deadline.
async fn publish_until_acked(
    js: &jetstream::Context,
    subject: &str,
    id: &str,
    deadline: Instant,
) -> Result<u64> {
    loop {
        let attempt = async {
            let ack = js
                .send_publish(
                    subject.to_owned(),
                    jetstream::message::PublishMessage::build()
                        .payload(id.to_owned().into())
                        .message_id(id),
                )
                .await?
                .await?;
            anyhow::Ok(ack.sequence)
        };
        match attempt.await {
            Ok(sequence) => return Ok(sequence),
            Err(error) if Instant::now() < deadline => {
                eprintln!("publish {id}: {error}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => return Err(error.context(format!("publish {id} before the deadline"))),
        }
    }
}

#[tokio::test]
async fn a_cluster_of_three_serves_an_r3_stream_and_survives_losing_a_node() -> Result<()> {
    let started = Instant::now();
    let mut cluster = Cluster::start(3)?;
    eprintln!("cluster ready after {:?}", started.elapsed());
    assert_eq!(cluster.len(), 3);
    assert_eq!(
        (0..3).map(|i| cluster.node_name(i)).collect::<Vec<_>>(),
        ["n1", "n2", "n3"]
    );

    let client = async_nats::connect(cluster.urls()).await?;
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(1));
    // Right after `start`: no retry needed to create an R3 stream.
    js.create_stream(stream::Config {
        name: "orders".to_owned(),
        subjects: vec!["orders.>".to_owned()],
        num_replicas: 3,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .context("create an R3 stream right after Cluster::start")?;
    let deadline = Instant::now() + FAILOVER_DEADLINE;
    assert_eq!(
        publish_until_acked(&js, "orders.new", "m-1", deadline).await?,
        1
    );

    let info = stream_info(&js, "orders").await?;
    let leader = info
        .cluster
        .and_then(|cluster| cluster.leader)
        .context("an R3 stream has a leader")?;
    let leader = cluster
        .node_index(&leader)
        .with_context(|| format!("the leader {leader} is a node of the cluster"))?;

    let killed = Instant::now();
    cluster.kill_node(leader);
    assert!(!cluster.is_running(leader));
    let deadline = Instant::now() + FAILOVER_DEADLINE;
    assert_eq!(
        publish_until_acked(&js, "orders.new", "m-2", deadline).await?,
        2
    );
    eprintln!(
        "publishing again {:?} after killing the stream leader",
        killed.elapsed()
    );

    let restarted = Instant::now();
    cluster.restart_node(leader)?;
    eprintln!("node restarted and ready after {:?}", restarted.elapsed());
    let deadline = Instant::now() + FAILOVER_DEADLINE;
    loop {
        let info = stream_info(&js, "orders").await;
        let current = match &info {
            Ok(info) => info.cluster.as_ref().map(|cluster| {
                usize::from(cluster.leader.is_some())
                    + cluster.replicas.iter().filter(|peer| peer.current).count()
            }),
            Err(_) => None,
        };
        if current == Some(3) {
            assert_eq!(info?.state.messages, 2);
            break;
        }
        if Instant::now() >= deadline {
            bail!("the stream did not report 3 current replicas in time: {info:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "3 current replicas {:?} after the restart",
        restarted.elapsed()
    );
    Ok(())
}
