//! The nats-server configuration file, rendered from a typed description.

use std::path::{Path, PathBuf};

/// Everything that goes into one server's configuration file.
#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    pub(crate) server_name: Option<String>,
    pub(crate) port: u16,
    pub(crate) http_port: u16,
    pub(crate) store_dir: PathBuf,
    pub(crate) max_file_store: u64,
    pub(crate) max_memory_store: u64,
    pub(crate) max_payload: Option<u32>,
    pub(crate) cluster: Option<ClusterConfig>,
    pub(crate) extra: Vec<String>,
}

/// The `cluster { }` block: this node's route port and every node's route port.
#[derive(Debug, Clone)]
pub(crate) struct ClusterConfig {
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) routes: Vec<u16>,
}

impl ServerConfig {
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        if let Some(name) = &self.server_name {
            line(format!("server_name: {}", quote(name)));
        }
        line(format!("listen: 127.0.0.1:{}", self.port));
        line(format!("http: 127.0.0.1:{}", self.http_port));
        if let Some(max_payload) = self.max_payload {
            line(format!("max_payload: {max_payload}"));
        }
        line(format!(
            "jetstream {{ store_dir: {}, max_file_store: {}, max_memory_store: {} }}",
            quote_path(&self.store_dir),
            self.max_file_store,
            self.max_memory_store
        ));
        if let Some(cluster) = &self.cluster {
            let routes: Vec<String> = cluster
                .routes
                .iter()
                .map(|port| format!("nats-route://127.0.0.1:{port}"))
                .collect();
            line(format!(
                "cluster {{ name: {}, listen: 127.0.0.1:{}, routes: [{}] }}",
                quote(&cluster.name),
                cluster.port,
                routes.join(", ")
            ));
        }
        for extra in &self.extra {
            line(extra.clone());
        }
        out
    }
}

/// The configuration format takes JSON string literals.
fn quote(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

fn quote_path(path: &Path) -> String {
    quote(&path.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_cluster_node() {
        let config = ServerConfig {
            server_name: Some("n2".to_owned()),
            port: 4232,
            http_port: 8232,
            store_dir: PathBuf::from("/tmp/x/n2 \"store\""),
            max_file_store: 1024,
            max_memory_store: 512,
            max_payload: Some(8 << 20),
            cluster: Some(ClusterConfig {
                name: "runlog".to_owned(),
                port: 6232,
                routes: vec![6231, 6232],
            }),
            extra: vec!["debug: true".to_owned()],
        };
        assert_eq!(
            config.render(),
            "server_name: \"n2\"\n\
             listen: 127.0.0.1:4232\n\
             http: 127.0.0.1:8232\n\
             max_payload: 8388608\n\
             jetstream { store_dir: \"/tmp/x/n2 \\\"store\\\"\", max_file_store: 1024, max_memory_store: 512 }\n\
             cluster { name: \"runlog\", listen: 127.0.0.1:6232, routes: [nats-route://127.0.0.1:6231, nats-route://127.0.0.1:6232] }\n\
             debug: true\n"
        );
    }
}
