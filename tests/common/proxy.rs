//! A TCP proxy on loopback, between the processes under test and Redis, that
//! can delay, stall, refuse and cut their connections: the network faults of
//! the fault suite, without root, `tc` or iptables.
//!
//! Each connection gets a reader and a writer thread per direction; the
//! reader stamps every chunk, the writer forwards it once its delay has
//! passed and the proxy is not stalled. A delay is therefore latency, not a
//! throughput cap: pipelined requests are not delayed one after the other.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A proxy from `127.0.0.1:port` to `127.0.0.1:upstream`; stops on drop.
pub struct Proxy {
    /// The port clients connect to.
    pub port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: u16,
    delay_us: AtomicU64,
    stalled: AtomicBool,
    refusing: AtomicBool,
    stopping: AtomicBool,
    next_id: AtomicU64,
    /// Both sockets of every open connection, so that `cut_all` can close them.
    links: Mutex<Vec<Link>>,
    accepted: AtomicU64,
    refused: AtomicU64,
    cut: AtomicU64,
}

struct Link {
    id: u64,
    client: TcpStream,
    server: TcpStream,
    closed: Arc<AtomicBool>,
}

impl Link {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

/// What the proxy has done so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProxyStats {
    /// Connections accepted and forwarded.
    pub accepted: u64,
    /// Connections closed at once while refusing.
    pub refused: u64,
    /// Open connections closed by `cut_all`.
    pub cut: u64,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` on loopback.
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            delay_us: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            links: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            cut: AtomicU64::new(0),
        });
        let accepting = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || accept_loop(&listener, &accepting))
            .unwrap();
        Self {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Adds `delay` to every chunk in both directions (zero: none).
    pub fn set_delay(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.shared.delay_us.store(us, Ordering::SeqCst);
    }

    /// Stops forwarding: connections stay open, nothing reaches the other side
    /// (new connections too), as on a network that drops every packet.
    pub fn stall(&self) {
        self.shared.stalled.store(true, Ordering::SeqCst);
    }

    /// Forwards again, starting with what was held back.
    pub fn resume(&self) {
        self.shared.stalled.store(false, Ordering::SeqCst);
    }

    /// While set, new connections are closed as soon as they are accepted.
    pub fn set_refusing(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Closes every open connection (both sides); returns how many.
    pub fn cut_all(&self) -> usize {
        let links = std::mem::take(&mut *self.shared.links.lock().unwrap());
        for link in &links {
            link.close();
        }
        self.shared
            .cut
            .fetch_add(links.len() as u64, Ordering::SeqCst);
        links.len()
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.shared.links.lock().unwrap().len()
    }

    /// Counts so far.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            accepted: self.shared.accepted.load(Ordering::SeqCst),
            refused: self.shared.refused.load(Ordering::SeqCst),
            cut: self.shared.cut.load(Ordering::SeqCst),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.resume();
        self.cut_all();
        // Wakes the blocking accept so that the thread sees `stopping`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if shared.refusing.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], shared.upstream));
        let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(1)) else {
            // Redis is down: the client sees its connection closed, as it
            // would see a refusal without the proxy.
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let closed = Arc::new(AtomicBool::new(false));
        let link = Link {
            id,
            client: client.try_clone().unwrap(),
            server: server.try_clone().unwrap(),
            closed: Arc::clone(&closed),
        };
        shared.links.lock().unwrap().push(link);
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        for (from, to) in [
            (client.try_clone().unwrap(), server.try_clone().unwrap()),
            (server, client),
        ] {
            forward(Arc::clone(shared), id, Arc::clone(&closed), from, to);
        }
    }
}

/// One direction of one connection: a reader stamping chunks and a writer
/// sending each when it is due. Either side failing closes the whole link.
fn forward(
    shared: Arc<Shared>,
    id: u64,
    closed: Arc<AtomicBool>,
    mut from: TcpStream,
    mut to: TcpStream,
) {
    let (chunks, due) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_shared = Arc::clone(&shared);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if chunks.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        close_link(&reader_shared, id);
    });
    std::thread::spawn(move || {
        for (stamp, chunk) in due {
            loop {
                if closed.load(Ordering::SeqCst) {
                    return;
                }
                let delay = Duration::from_micros(shared.delay_us.load(Ordering::SeqCst));
                let wait = (stamp + delay).saturating_duration_since(Instant::now());
                if shared.stalled.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                } else if wait.is_zero() {
                    break;
                } else {
                    std::thread::sleep(wait.min(Duration::from_millis(5)));
                }
            }
            if to.write_all(&chunk).is_err() {
                close_link(&shared, id);
                return;
            }
        }
    });
}

fn close_link(shared: &Shared, id: u64) {
    let mut links = shared.links.lock().unwrap();
    if let Some(at) = links.iter().position(|l| l.id == id) {
        links.swap_remove(at).close();
    }
}
