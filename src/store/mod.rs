//! Connecting to Redis.
//!
//! One [`Connection`] is a multiplexed connection: cheap to clone, and every
//! clone pipelines its requests onto the same socket. That is what lets a sweep
//! keep several pipelines in flight without opening more connections.
//!
//! In cluster mode the [`Connection`] is redis-rs's cluster client, which
//! routes keyed commands (the auth path, the lock) by slot. A sweep cannot go
//! through it: SCAN is per node, and the client retries a whole pipeline on
//! the node named by its first MOVED reply. So the sweep asks for the
//! [`Connection::primaries`] and opens a [`Connection::node`] to each, and
//! only keys that answer MOVED/ASK go back through the cluster client.
//!
//! # Layout
//!
//! Each file imports only those listed above it, so it can be read knowing
//! only what comes before. The pure parts (slots, topology, backoff) come
//! first and carry most of the unit tests; the parts that need a live Redis
//! are covered by the integration tests in `tests/`.
//!
//! A long-running process holds a [`Reconnecting`] rather than a
//! [`Connection`]: it hands out the current connection and replaces it when
//! a caller reports it lost.

// The error every function here returns, its `kind` label and whether to reconnect.
mod error;
// A reply's shape for messages, and `TIME` decoded strictly.
mod time;
// Hash slots: `key_slot`, slot numbers and ranges, a `Primary` and its slots.
mod slots;
// Opening one server: ACL user and password, TLS files, the connect timeout.
mod server;
// Parsing `CLUSTER NODES`: the primaries to sweep, what a node serves itself.
mod topology;
// The cluster nodes last seen, kept across connections for when the seeds are down.
mod known_nodes;
// `Connection`: one API over a server, the cluster client and one cluster node.
mod connection;
// Sentinel mode: asking the sentinels for the primary and confirming it.
mod sentinel;
// Cluster mode: the cluster client, its primaries, one node, the ASK path.
mod cluster;
// `Connection::connect`: picks one of the three ways by `redis.mode`.
mod connect;
// The waits between reconnect attempts.
mod backoff;
// `Reconnecting`: a connection that replaces itself after Redis goes away.
mod reconnecting;

pub use backoff::MIN_RECONNECT_INTERVAL;
pub use connection::Connection;
pub use error::StoreError;
pub use reconnecting::{ConnectionId, Reconnecting};
pub use slots::{key_slot, Primary};
pub use time::{parse_time, shape};
pub use topology::{Migration, SlotAssignment};
