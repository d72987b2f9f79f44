//! A local Redis Cluster from `redis-server` processes on free loopback
//! ports, created with `redis-cli --cluster create`, torn down on drop.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use super::{free_port, wait_until, DaemonProcess, RedisServer};

/// A cluster owned by one test.
pub struct RedisCluster {
    /// Every node, primaries and replicas, in creation order.
    pub nodes: Vec<RedisServer>,
}

/// One line of `CLUSTER NODES`, as the tests need it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: String,
    /// `127.0.0.1:port`
    pub address: String,
    pub primary: bool,
    pub failed: bool,
    /// Slot ranges, e.g. `["0-5460"]`.
    pub slots: Vec<String>,
}

impl RedisCluster {
    /// `primaries` primaries with `replicas` replicas each. Node timeout 1 s,
    /// so a killed primary's replica takes over within a few seconds.
    pub fn start(primaries: usize, replicas: usize) -> Self {
        Self::start_with(primaries, replicas, &[])
    }

    /// [`RedisCluster::start`] with extra `redis-server` arguments for every node.
    pub fn start_with(primaries: usize, replicas: usize, extra: &[&str]) -> Self {
        let nodes: Vec<RedisServer> = (0..primaries * (1 + replicas))
            .map(|_| {
                // The cluster bus needs a port of its own; the default
                // (port + 10000) may be past 65535 for an ephemeral port.
                let bus = free_port().to_string();
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-port",
                    &bus,
                    // A replica that never finished its first sync cannot
                    // take over; the default waits 5 s before syncing.
                    "--repl-diskless-sync-delay",
                    "0",
                ];
                args.extend_from_slice(extra);
                RedisServer::start_with(&args)
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli (apt-get install redis-tools) must be installed");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_healthy(primaries);
        cluster
    }

    /// Waits until every live node says the cluster is ok and sees
    /// `primaries` serving primaries, and every replica is in sync.
    pub fn wait_healthy(&self, primaries: usize) {
        wait_until(Duration::from_secs(30), "the cluster to be ok", || {
            self.live_nodes().all(|node| {
                let mut conn = node.conn();
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut conn)
                    .unwrap_or_default();
                let replication: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut conn)
                    .unwrap_or_default();
                let in_sync = replication.contains("role:master")
                    || replication.contains("master_link_status:up");
                info.contains("cluster_state:ok")
                    && in_sync
                    && parse_nodes(&cluster_nodes(node))
                        .iter()
                        .filter(|n| n.primary && !n.failed && !n.slots.is_empty())
                        .count()
                        == primaries
            })
        });
    }

    fn live_nodes(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|n| n.is_running())
    }

    /// The cluster as one live node sees it.
    pub fn topology(&self) -> Vec<NodeInfo> {
        let node = self.live_nodes().next().expect("a live node");
        parse_nodes(&cluster_nodes(node))
    }

    /// Serving primaries, by address.
    pub fn primaries(&self) -> Vec<NodeInfo> {
        let mut primaries: Vec<NodeInfo> = self
            .topology()
            .into_iter()
            .filter(|n| n.primary && !n.failed && !n.slots.is_empty())
            .collect();
        primaries.sort_by(|a, b| a.address.cmp(&b.address));
        primaries
    }

    /// The process listening on `address`.
    pub fn node(&mut self, address: &str) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| format!("127.0.0.1:{}", n.port) == address)
            .expect("a node of this cluster")
    }

    /// `redis://` URL of every node, comma-separated (`redis.nodes`).
    pub fn node_urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Environment that points the sweeper at this cluster.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TOKEN_SWEEPER__REDIS__MODE", "cluster".to_owned()),
            ("TOKEN_SWEEPER__REDIS__URL", self.nodes[0].url()),
            ("TOKEN_SWEEPER__REDIS__NODES", self.node_urls()),
        ]
    }

    /// `token-sweeper run` against this cluster, with `extra` environment.
    pub fn daemon(&self, extra: &[(&str, &str)]) -> DaemonProcess {
        let env = self.env();
        let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        DaemonProcess::start(&self.nodes[0].url(), &all, None)
    }

    /// Settings for the library, pointing at this cluster.
    pub fn settings(&self) -> token_sweeper::config::Settings {
        let mut settings = super::settings_for(&self.nodes[0]);
        settings.redis.mode = token_sweeper::config::RedisMode::Cluster;
        settings.redis.nodes = self
            .nodes
            .iter()
            .map(|n| n.url().parse().unwrap())
            .collect();
        settings
    }

    /// A redis-rs cluster connection for setting up and inspecting data: it
    /// routes each key to its node, and splits pipelines by node.
    pub fn conn(&self) -> redis::cluster::ClusterConnection {
        let urls: Vec<String> = self.live_nodes().map(RedisServer::url).collect();
        redis::cluster::ClusterClient::new(urls)
            .expect("cluster client")
            .get_connection()
            .expect("cluster connection")
    }

    /// Keys on the node at `address` matching `pattern` (SCAN on that node only).
    pub fn keys_on(&mut self, address: &str, pattern: &str) -> Vec<String> {
        let mut conn = self.node(address).conn();
        let mut keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut conn).unwrap();
        keys.sort();
        keys
    }
}

/// `CLUSTER NODES` of one node.
pub fn cluster_nodes(node: &RedisServer) -> String {
    let mut conn = node.conn();
    redis::cmd("CLUSTER")
        .arg("NODES")
        .query(&mut conn)
        .unwrap_or_default()
}

/// Parses `CLUSTER NODES`.
pub fn parse_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            Some(NodeInfo {
                id: fields.first()?.to_string(),
                address: fields.get(1)?.split('@').next()?.to_owned(),
                primary: flags.contains("master"),
                failed: flags.split(',').any(|f| f == "fail" || f == "fail?"),
                slots: fields
                    .get(8..)
                    .unwrap_or_default()
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .map(|s| s.to_string())
                    .collect(),
            })
        })
        .collect()
}

/// `CLUSTER KEYSLOT key`.
pub fn slot_of(conn: &mut redis::Connection, key: &str) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(conn)
        .unwrap()
}

/// Marks `slot` as migrating from the primary `from` to the primary `to`
/// (`CLUSTER SETSLOT ... IMPORTING` on `to`, `MIGRATING` on `from`);
/// returns the node ids by address.
pub fn begin_migration(
    cluster: &mut RedisCluster,
    slot: u16,
    from: &str,
    to: &str,
) -> BTreeMap<String, String> {
    let ids: BTreeMap<String, String> = cluster
        .topology()
        .into_iter()
        .map(|n| (n.address, n.id))
        .collect();
    for (node, state, other) in [(to, "IMPORTING", from), (from, "MIGRATING", to)] {
        let () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(state)
            .arg(&ids[other])
            .query(&mut cluster.node(node).conn())
            .unwrap();
    }
    ids
}

/// `MIGRATE`s `keys` from the primary `from` to the primary `to`.
pub fn migrate_keys(cluster: &mut RedisCluster, from: &str, to: &str, keys: &[String]) {
    let to_port: u16 = to.rsplit_once(':').unwrap().1.parse().unwrap();
    let () = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(to_port)
        .arg("")
        .arg(0)
        .arg(5000)
        .arg("KEYS")
        .arg(keys)
        .query(&mut cluster.node(from).conn())
        .unwrap();
}

/// Moves every key of `slot` from the primary `from` to the primary `to`,
/// the way `redis-cli --cluster reshard` does.
pub fn migrate_slot(cluster: &mut RedisCluster, slot: u16, from: &str, to: &str) {
    let ids = begin_migration(cluster, slot, from, to);
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(50)
            .query(&mut cluster.node(from).conn())
            .unwrap();
        if keys.is_empty() {
            break;
        }
        migrate_keys(cluster, from, to, &keys);
        // Slowly, so the migration spans a good part of the sweep.
        std::thread::sleep(Duration::from_millis(20));
    }
    // The target first, then the source, then the others.
    for node in [to, from] {
        let () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&ids[to])
            .query(&mut cluster.node(node).conn())
            .unwrap();
    }
    for node in cluster.primaries() {
        let mut conn = cluster.node(&node.address).conn();
        let _: redis::RedisResult<()> = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&ids[to])
            .query(&mut conn);
    }
}
