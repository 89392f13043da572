//! A JetStream cluster of nats-server processes on loopback, for replication and fault tests.

use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::config::{ClusterConfig, ServerConfig};
use crate::probe::{self, Poll};
use crate::process::{self, Process, START_ATTEMPTS};
use crate::server::{MAX_FILE_STORE, MAX_MEMORY_STORE};
use crate::{Error, nats_server_binary};

/// The cluster name in every node's configuration.
const CLUSTER_NAME: &str = "runlog";

/// Elections take a few rounds on a loaded machine; a cluster gets more time than one server.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A JetStream cluster of `n >= 3` nats-servers on `127.0.0.1`, fully routed, each with its
/// own temporary store.
///
/// Nodes are addressed by index `0..n`; node `i` has the server name `n{i+1}` (`"n1"`, `"n2"`,
/// ...), which is what JetStream reports as a stream's leader or replica. Dropping the cluster
/// kills every node and deletes the stores (set `RUNLOG_TESTKIT_KEEP=1` to keep them, with
/// the configs and logs, for a post-mortem).
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Process>,
    names: Vec<String>,
    /// Holds every node's config, log and store; deleted on drop.
    temp: TempDir,
}

impl Cluster {
    /// Starts `nodes` servers and returns once the cluster can host replicated streams: every
    /// node's `/healthz` is ok and every node agrees on a JetStream meta leader, which sees
    /// all its peers as current.
    ///
    /// # Panics
    ///
    /// If `nodes < 3`: JetStream needs three nodes to survive losing one.
    ///
    /// # Errors
    ///
    /// When no nats-server binary is found, or the cluster is not ready within 20 s.
    ///
    /// # Examples
    ///
    /// ```
    /// let cluster = runlog_localnats::Cluster::start(3)?;
    /// // Clients take every URL, e.g. `async_nats::connect(cluster.urls())`.
    /// assert_eq!(cluster.urls().len(), 3);
    /// assert_eq!(cluster.node_name(0), "n1");
    /// assert_eq!(cluster.node_index("n3"), Some(2));
    /// # Ok::<(), runlog_localnats::Error>(())
    /// ```
    pub fn start(nodes: usize) -> Result<Cluster, Error> {
        assert!(
            nodes >= 3,
            "a JetStream cluster needs at least 3 nodes, not {nodes}"
        );
        let binary = nats_server_binary()?;
        let mut attempt = 1;
        loop {
            match Cluster::try_start(&binary, nodes) {
                // Our free ports can be taken before the servers bind them: try others.
                Err(Error::Exited { .. }) if attempt < START_ATTEMPTS => attempt += 1,
                outcome => return outcome,
            }
        }
    }

    fn try_start(binary: &std::path::Path, n: usize) -> Result<Cluster, Error> {
        let temp = tempfile::Builder::new()
            .prefix("runlog-cluster-")
            .tempdir()
            .map_err(Error::io("create a temporary directory"))?;
        let ports = process::free_ports(3 * n)?;
        let (client_ports, rest) = ports.split_at(n);
        let (http_ports, route_ports) = rest.split_at(n);
        let names: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let mut nodes = Vec::with_capacity(n);
        for (i, name) in names.iter().enumerate() {
            let dir = temp.path().join(name);
            let config = ServerConfig {
                server_name: Some(name.clone()),
                port: client_ports[i],
                http_port: http_ports[i],
                store_dir: dir.join("store"),
                max_file_store: MAX_FILE_STORE,
                max_memory_store: MAX_MEMORY_STORE,
                max_payload: None,
                cluster: Some(ClusterConfig {
                    name: CLUSTER_NAME.to_owned(),
                    port: route_ports[i],
                    routes: route_ports.to_vec(),
                }),
                extra: Vec::new(),
            };
            nodes.push(Process::new(binary.to_owned(), dir, config)?);
        }
        let mut cluster = Cluster { nodes, names, temp };
        let started = Instant::now();
        // All at once: the meta leader is elected within a fraction of a second when every
        // peer is up, but a node that waits alone for its peers can take seconds longer.
        for node in &mut cluster.nodes {
            node.spawn()?;
        }
        cluster.wait_ready(None, started)?;
        Ok(cluster)
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always `false`: a cluster has at least three nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's client URL, for `async_nats::connect(urls.as_slice())`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Process::url).collect()
    }

    /// The client URL of node `node`, `nats://127.0.0.1:PORT`.
    ///
    /// # Panics
    ///
    /// If `node >= self.len()`, as do all methods that take a node index.
    pub fn url(&self, node: usize) -> String {
        self.nodes[node].url()
    }

    /// The monitoring URL of node `node`, `http://127.0.0.1:PORT`.
    pub fn monitor_url(&self, node: usize) -> String {
        self.nodes[node].monitor_url()
    }

    /// The server name of node `node`: `"n1"` for node 0.
    pub fn node_name(&self, node: usize) -> &str {
        &self.names[node]
    }

    /// The index of the node with this server name, e.g. the leader a stream info reports.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|candidate| candidate == name)
    }

    /// The process id of node `node`, or `None` while it is killed.
    pub fn pid(&self, node: usize) -> Option<u32> {
        self.nodes[node].pid()
    }

    /// Whether node `node` is running.
    pub fn is_running(&mut self, node: usize) -> bool {
        self.nodes[node].is_running()
    }

    /// Kills node `node` with SIGKILL, as a crash would, and waits for it to exit.
    pub fn kill_node(&mut self, node: usize) {
        self.nodes[node].kill();
    }

    /// Stops node `node` gracefully (SIGTERM, then SIGKILL after 10 s).
    pub fn stop_node(&mut self, node: usize) {
        self.nodes[node].stop();
    }

    /// Kills node `node` if it runs, starts it again with the same ports and store, and
    /// returns once it is healthy, the meta leader sees it as current, and the leader of every
    /// stream and consumer it replicates sees it as caught up.
    ///
    /// The last condition matters: the node's own `/healthz` turns ok seconds before the
    /// stream leaders count it as current again, and a fault test that kills another node in
    /// between would lose quorum.
    ///
    /// # Errors
    ///
    /// When the node cannot be started again or is not ready within 20 s.
    pub fn restart_node(&mut self, node: usize) -> Result<(), Error> {
        let started = Instant::now();
        self.nodes[node].spawn()?;
        self.wait_ready(Some(node), started)
    }

    /// Waits until `first` (if any) and then every other running node is healthy, all agree
    /// on a meta leader that sees them as current, and every replicated stream and consumer
    /// has caught up on them. Killed nodes are left out.
    fn wait_ready(&mut self, first: Option<usize>, started: Instant) -> Result<(), Error> {
        let deadline = started + READY_TIMEOUT;
        // The node whose check failed last, for the error.
        let mut failing = first.unwrap_or(0);
        let names = &self.names;
        let nodes = &mut self.nodes;
        let outcome = probe::poll_until(deadline, || {
            let live: Vec<usize> = first
                .into_iter()
                .chain((0..nodes.len()).filter(|&i| Some(i) != first))
                .filter(|&i| nodes[i].pid().is_some())
                .collect();
            // Every node, even after one is found pending: a node that exited (say, its port
            // was taken) must end the wait now rather than at the deadline.
            let mut pending = None;
            for &i in &live {
                match nodes[i].check_ready() {
                    Ok(()) => {}
                    Err(Poll::Pending(why)) => {
                        pending = pending.or(Some((i, format!("{}: {why}", names[i]))));
                    }
                    Err(stop) => {
                        failing = i;
                        return Err(stop);
                    }
                }
            }
            if let Some((i, why)) = pending {
                failing = i;
                return Err(Poll::Pending(why));
            }
            check_jetstream(nodes, names, &live).map_err(|(i, why)| {
                failing = i;
                Poll::Pending(why)
            })
        });
        self.nodes[failing].settle(outcome, started)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Signal all, then reap all, so that the nodes die in parallel.
        for node in &mut self.nodes {
            node.signal_kill();
        }
        for node in &mut self.nodes {
            node.reap();
        }
        process::keep_if_asked(&mut self.temp);
    }
}

/// A follower in a Raft group, as the group's leader reports it.
struct Replica {
    name: String,
    current: bool,
}

/// A stream or consumer Raft group that a node leads.
struct Group {
    /// E.g. `stream orders` or `consumer orders > worker`.
    what: String,
    replicas: Vec<Replica>,
}

/// One node's `/jsz`: its view of the meta group and the groups it leads.
struct Jsz {
    meta_leader: Option<String>,
    /// The meta group's followers; only meaningful on the meta leader.
    meta_replicas: Vec<Replica>,
    led: Vec<Group>,
}

fn jsz(node: &Process, name: &str) -> Result<Jsz, String> {
    let path = "/jsz?accounts=true&streams=true&consumers=true";
    let url = format!("{}{path}", node.monitor_url());
    let response =
        probe::get(node.config().http_port, path).map_err(|error| format!("GET {url}: {error}"))?;
    let json: serde_json::Value = serde_json::from_str(&response.body)
        .map_err(|error| format!("GET {url}: {} and not JSON ({error})", response.status))?;
    let meta = &json["meta_cluster"];
    let leads = |cluster: &serde_json::Value| cluster["leader"].as_str() == Some(name);
    let mut led = Vec::new();
    for account in json["account_details"].as_array().into_iter().flatten() {
        for stream in account["stream_detail"].as_array().into_iter().flatten() {
            let stream_name = stream["name"].as_str().unwrap_or_default();
            if leads(&stream["cluster"]) {
                led.push(Group {
                    what: format!("stream {stream_name}"),
                    replicas: replicas(&stream["cluster"]),
                });
            }
            for consumer in stream["consumer_detail"].as_array().into_iter().flatten() {
                if leads(&consumer["cluster"]) {
                    led.push(Group {
                        what: format!(
                            "consumer {stream_name} > {}",
                            consumer["name"].as_str().unwrap_or_default()
                        ),
                        replicas: replicas(&consumer["cluster"]),
                    });
                }
            }
        }
    }
    Ok(Jsz {
        meta_leader: meta["leader"]
            .as_str()
            .filter(|leader| !leader.is_empty())
            .map(str::to_owned),
        meta_replicas: replicas(meta),
        led,
    })
}

fn replicas(cluster: &serde_json::Value) -> Vec<Replica> {
    cluster["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|replica| Replica {
            name: replica["name"].as_str().unwrap_or_default().to_owned(),
            current: replica["current"].as_bool().unwrap_or(false),
        })
        .collect()
}

/// `Ok` when every live node names the same meta leader, that leader sees every other live
/// node as a current peer, and every stream and consumer led by a live node sees its live
/// followers as current (caught up). Otherwise the node to blame and what was seen.
fn check_jetstream(
    nodes: &[Process],
    names: &[String],
    live: &[usize],
) -> Result<(), (usize, String)> {
    let mut views = Vec::with_capacity(live.len());
    for &i in live {
        views.push((i, jsz(&nodes[i], &names[i]).map_err(|why| (i, why))?));
    }
    let is_live = |name: &str| live.iter().find(|&&i| names[i] == name).copied();

    let mut agreed: Option<(usize, &str)> = None;
    for (i, view) in &views {
        match (view.meta_leader.as_deref(), agreed) {
            (None, _) => return Err((*i, format!("{}: no JetStream meta leader yet", names[*i]))),
            (Some(seen), Some((first, leader))) if seen != leader => {
                return Err((
                    *i,
                    format!(
                        "{} sees meta leader {seen}, {} sees {leader}",
                        names[*i], names[first]
                    ),
                ));
            }
            (Some(seen), _) => agreed = Some((*i, seen)),
        }
    }
    let Some((_, meta_leader)) = agreed else {
        return Ok(());
    };
    let Some((_, leader_view)) = views.iter().find(|(i, _)| names[*i] == meta_leader) else {
        return Err((
            0,
            format!("meta leader {meta_leader} is not a running node"),
        ));
    };
    let lagging = |replicas: &[Replica]| {
        replicas
            .iter()
            .filter(|replica| !replica.current)
            .find_map(|replica| is_live(&replica.name))
    };
    for &i in live {
        let peer = leader_view
            .meta_replicas
            .iter()
            .any(|replica| replica.name == names[i]);
        if names[i] != meta_leader && !peer {
            return Err((
                i,
                format!("meta leader {meta_leader} does not list {} yet", names[i]),
            ));
        }
    }
    if let Some(i) = lagging(&leader_view.meta_replicas) {
        return Err((
            i,
            format!(
                "meta leader {meta_leader} does not see {} as current yet",
                names[i]
            ),
        ));
    }
    for (leader, view) in &views {
        for group in &view.led {
            if let Some(i) = lagging(&group.replicas) {
                return Err((
                    i,
                    format!(
                        "{} has not caught up with {} (led by {}) yet",
                        names[i], group.what, names[*leader]
                    ),
                ));
            }
        }
    }
    Ok(())
}
