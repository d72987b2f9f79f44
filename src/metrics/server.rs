//! The HTTP server under the router, on hyper directly: axum's own `serve`
//! sets no header-read timeout and no limit on connections, and a metrics
//! port must survive whatever a network scanner or a flood sends it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;

use super::connections::{Admission, Admitted, Answering, Connections, Slot};
use super::kinds::HttpClosed;
use super::readiness::router;
use super::{Metrics, Readiness};

/// Most HTTP connections open at once. Prometheus, a probe or two and the
/// `healthcheck` command need a handful; whatever a flood of clients does,
/// the rest of the process's descriptors stay for Redis (the sweep, the
/// cluster client, reconnecting).
pub const MAX_HTTP_CONNECTIONS: usize = 64;

/// How long a client has to send the head of a request (request line and
/// headers): from when its connection opens, and again from each response
/// on a kept-alive connection, so it is the idle timeout too.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest request head accepted; a larger one is answered 431. The
/// endpoints need a few hundred bytes.
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// A connection's read buffer at most (hyper's minimum is 8 KiB): with the
/// connection cap, bounds what clients can make the server hold.
const MAX_READ_BUFFER_BYTES: usize = 16 * 1024;

/// How long open connections may finish their requests at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `stop` is
/// cancelled; connections then have two seconds to finish their requests.
///
/// Whatever clients do, the server holds at most [`MAX_HTTP_CONNECTIONS`]
/// connections, each with a bounded buffer, and closes one that has not sent
/// a complete request head within [`HEADER_READ_TIMEOUT`]. When a connection
/// arrives over the cap, the oldest connection not answering a request right
/// now is closed to make room (a slow or idle client has had the longest to
/// send its request); only when every one is answering a request is the new
/// one closed. So a flood of slow clients cannot keep a probe from getting
/// its answer. Accept errors (such as running out of descriptors) are
/// logged and waited out.
pub async fn serve<R: Readiness>(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    readiness: R,
    stop: CancellationToken,
) {
    let app = router(metrics.clone(), readiness);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_READ_BUFFER_BYTES);
    let connections = Arc::new(Connections::new(MAX_HTTP_CONNECTIONS));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            // Reaps ended connections so the set does not grow.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        let admitted = match connections.admit() {
            Admission::Admitted(admitted) => admitted,
            Admission::Evicted(admitted) => {
                metrics.count_http_closed(HttpClosed::Evicted);
                admitted
            }
            Admission::Refused => {
                metrics.count_http_closed(HttpClosed::Refused);
                // Dropping the stream closes it at once.
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = AnswerMarking {
            router: TowerToHyperService::new(app.clone()),
            slot: Arc::clone(&admitted.slot),
        };
        let connection = http.serve_connection(TokioIo::new(stream), service);
        tasks.spawn(serve_connection(
            connection,
            admitted,
            stop.clone(),
            metrics.clone(),
        ));
        // Lets the new connection read the request it may already have sent
        // before further arrivals could count it among the oldest idle ones.
        tokio::task::yield_now().await;
    }
    // The token is cancelled: every connection is finishing its request.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    // Dropping `tasks` closes whatever is still open.
}

/// Runs one connection until it ends, is evicted (dropping it closes the
/// socket), or the server stops (it may then finish its request).
async fn serve_connection(
    connection: hyper::server::conn::http1::Connection<
        TokioIo<tokio::net::TcpStream>,
        AnswerMarking,
    >,
    admitted: Admitted,
    stop: CancellationToken,
    metrics: Metrics,
) {
    let mut connection = std::pin::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = admitted.slot.evict.notified() => return,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if ended.is_err_and(|e| e.is_timeout()) {
        metrics.count_http_closed(HttpClosed::Timeout);
    }
}

/// An accept that failed. Running out of descriptors (EMFILE) is the likely
/// cause and passes as connections close: wait a moment rather than spin.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    // The client gave up before it was accepted: nothing to do.
    if matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(error = %e, "metrics: cannot accept an HTTP connection; retrying in 500ms");
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The router, marking its connection's slot as answering while a request
/// is handled, so that it is not the one evicted meanwhile.
#[derive(Clone)]
struct AnswerMarking {
    router: TowerToHyperService<axum::Router>,
    slot: Arc<Slot>,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for AnswerMarking {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let answering = Answering::mark(&self.slot);
        let answer = self.router.call(request);
        Box::pin(async move {
            let response = answer.await;
            drop(answering);
            response
        })
    }
}
