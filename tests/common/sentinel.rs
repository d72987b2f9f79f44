//! A real Redis Sentinel (`redis-server --sentinel`) on a free loopback port,
//! monitoring one primary as `mymaster`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, redis_server_bin, wait_until};

/// The master name the sentinel monitors.
pub const MASTER_NAME: &str = "mymaster";

/// A sentinel monitoring [`MASTER_NAME`] with quorum 1 and a 1 s
/// down-after; killed on drop.
pub struct Sentinel {
    child: Child,
    /// The loopback port it listens on.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    /// Starts it and waits until it names the primary at `master_port`.
    pub fn start(master_port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 10000\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new(redis_server_bin())
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let sentinel = Self {
            child,
            port,
            _dir: dir,
        };
        wait_until(Duration::from_secs(10), "the sentinel", || {
            sentinel.master().is_some()
        });
        sentinel
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection to the sentinel, if it answers.
    pub fn conn(&self) -> Option<redis::Connection> {
        redis::Client::open(self.url()).ok()?.get_connection().ok()
    }

    /// (host, port) the sentinel names as primary.
    pub fn master(&self) -> Option<(String, u16)> {
        redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER_NAME)
            .query(&mut self.conn()?)
            .ok()?
    }

    /// How many replicas the sentinel knows of.
    pub fn replicas(&self) -> usize {
        self.conn()
            .and_then(|mut c| {
                redis::cmd("SENTINEL")
                    .arg("REPLICAS")
                    .arg(MASTER_NAME)
                    .query::<Vec<redis::Value>>(&mut c)
                    .ok()
            })
            .map_or(0, |r| r.len())
    }

    /// `SENTINEL FAILOVER`: promotes a replica without waiting for the
    /// primary to fail.
    pub fn failover(&self) {
        let _: () = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER_NAME)
            .query(&mut self.conn().expect("the sentinel answers"))
            .unwrap();
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
