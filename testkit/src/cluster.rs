//! A real Redis Cluster on loopback: three masters and three replicas, each a
//! `redis-server --cluster-enabled yes` on free ports (the cluster bus on a free port of its
//! own), joined by `redis-cli --cluster create --cluster-replicas 1`. A short
//! `cluster-node-timeout` makes a failover take about a second; `cluster-require-full-coverage
//! no` keeps the other masters' slots served while one is down (docs/DESIGN.md §Redis Cluster).

use crate::{free_port, listening, signal_pid};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node may go silent before the others mark it failed (ms).
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// How long the cluster gets to form, or to recover from a failover.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(60);

struct Node {
    port: u16,
    child: Option<Child>,
}

/// Six `redis-server`s forming one cluster, killed on drop.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = crate::temp_dir("tollgate-cluster");
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..6 {
            let node = cluster.spawn_node();
            cluster.nodes.push(node);
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli on PATH (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_formed();
        cluster
    }

    /// One node on a free port, retried on another when the port was taken first.
    fn spawn_node(&self) -> Node {
        for attempt in 1.. {
            let port = free_port();
            let bus = free_port();
            let mut child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--cluster-port",
                    &bus.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{port}.conf"),
                    "--cluster-node-timeout",
                    &NODE_TIMEOUT_MS.to_string(),
                    "--cluster-require-full-coverage",
                    "no",
                    "--dir",
                    &self.dir.display().to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server on PATH (apt-get install redis-server)");
            match listening("redis-server (cluster node)", port, &mut child) {
                Ok(()) => {
                    return Node {
                        port,
                        child: Some(child),
                    }
                }
                Err(status) if attempt < 5 => {
                    eprintln!("cluster node exited ({status}); retrying")
                }
                Err(status) => panic!("cluster node exited before listening: {status}"),
            }
        }
        unreachable!()
    }

    /// Polls until every live node says the cluster is ok, sees three masters each with a
    /// connected replica, and agrees on who serves every slot.
    fn wait_formed(&self) {
        let start = Instant::now();
        loop {
            if self.formed() {
                return;
            }
            assert!(
                start.elapsed() < CLUSTER_DEADLINE,
                "the cluster did not form: {}",
                self.cli(self.live_port(), &["cluster", "nodes"])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn formed(&self) -> bool {
        let live: Vec<u16> = self.live_ports();
        live.iter().all(|port| {
            let info = self.cli(*port, &["cluster", "info"]);
            info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
        }) && self.masters().len() == 3
            && live.iter().all(|port| {
                let info = self.cli(*port, &["info", "replication"]);
                info.contains("role:master") && info.contains("connected_slaves:1")
                    || info.contains("master_link_status:up")
            })
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    fn live_port(&self) -> u16 {
        self.live_ports()[0]
    }

    /// The seed list for `TOLLGATE_REDIS_CLUSTER_NODES` (every node, comma-separated).
    pub fn nodes_env(&self) -> String {
        self.urls().join(",")
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect()
    }

    /// The ports of the live masters that serve slots, as a live node sees them.
    pub fn masters(&self) -> Vec<u16> {
        let nodes = self.cli(self.live_port(), &["cluster", "nodes"]);
        let mut masters: Vec<u16> = nodes
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 8 && f[2].contains("master") && !f[2].contains("fail")
            })
            .filter_map(|l| node_port(l.split_whitespace().nth(1)?))
            .collect();
        masters.sort_unstable();
        masters
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        let slot: u16 = self
            .cli(self.live_port(), &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number");
        let nodes = self.cli(self.live_port(), &["cluster", "nodes"]);
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            for range in &f[8..] {
                let (lo, hi) = match range.split_once('-') {
                    Some((lo, hi)) => (lo.parse().unwrap_or(1), hi.parse().unwrap_or(0)),
                    None => {
                        let s = range.parse().unwrap_or(u16::MAX);
                        (s, s)
                    }
                };
                if (lo..=hi).contains(&slot) {
                    return node_port(f[1]).expect("a node address");
                }
            }
        }
        panic!("no master serves slot {slot}: {nodes}");
    }

    /// The master serving `tenant`'s keys.
    pub fn master_of_tenant(&self, tenant: &str) -> u16 {
        self.master_of(&format!("tg:{{{tenant}}}:bal"))
    }

    /// A tenant id starting with `prefix` whose keys live on `master`.
    pub fn tenant_on(&self, master: u16, prefix: &str) -> String {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|t| self.master_of_tenant(t) == master)
            .expect("some id hashes onto every master")
    }

    /// SIGKILL one node (no goodbye to its peers: they must notice it is gone).
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        if let Some(mut child) = node.child.take() {
            signal_pid(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Waits until the slots of a killed master are served again (its replica promoted).
    pub fn wait_failed_over(&self) {
        let start = Instant::now();
        loop {
            let ok = self.live_ports().iter().all(|port| {
                let info = self.cli(*port, &["cluster", "info"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            });
            if ok && self.masters().len() == 3 {
                return;
            }
            assert!(
                start.elapsed() < CLUSTER_DEADLINE,
                "no failover: {}",
                self.cli(self.live_port(), &["cluster", "nodes"])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Deletes every key on one master (and so, by replication, on its replica).
    pub fn flush(&self, port: u16) {
        let out = self.cli(port, &["flushall"]);
        assert_eq!(out.trim(), "OK", "FLUSHALL on {port}");
    }

    pub async fn connection(&self) -> ClusterConnection {
        let client = ClusterClient::new(self.urls()).expect("cluster seed urls");
        client
            .get_async_connection()
            .await
            .expect("a cluster connection")
    }

    pub async fn balance(&self, tenant: &str) -> Option<i64> {
        let mut conn = self.connection().await;
        redis::cmd("GET")
            .arg(format!("tg:{{{tenant}}}:bal"))
            .query_async(&mut conn)
            .await
            .expect("GET a balance")
    }

    /// How many EVALSHA calls a node has served (INFO commandstats).
    pub fn evalsha_calls(&self, port: u16) -> u64 {
        crate::evalsha_calls_in(&self.cli(port, &["info", "commandstats"]))
    }
}

/// `127.0.0.1:7000@17000` → 7000.
fn node_port(addr: &str) -> Option<u16> {
    addr.split('@').next()?.rsplit(':').next()?.parse().ok()
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
