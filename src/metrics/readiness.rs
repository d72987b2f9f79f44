//! The endpoints: `/metrics`, `/healthz` (alive) and `/readyz` (what the
//! daemon's [`Readiness`] says), as one axum router.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;

use super::Metrics;

/// What `/readyz` and the `redis_up` gauge ask of the daemon.
pub trait Readiness: Send + Sync + 'static {
    /// `Ok(())` when ready, else a one-line reason. Called per request.
    fn check(&self) -> impl Future<Output = Result<(), String>> + Send;
}

/// What the handlers share.
struct Endpoints<R> {
    metrics: Metrics,
    readiness: R,
}

/// The router of the three endpoints.
pub(super) fn router<R: Readiness>(metrics: Metrics, readiness: R) -> axum::Router {
    let state = Arc::new(Endpoints { metrics, readiness });
    axum::Router::new()
        .route("/metrics", get(metrics_page::<R>))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready::<R>))
        .with_state(state)
}

async fn metrics_page<R: Readiness>(State(state): State<Arc<Endpoints<R>>>) -> impl IntoResponse {
    // Probe at scrape time: an idle daemon does no work when nobody asks.
    let _ = state.readiness.check().await;
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        state.metrics.render(),
    )
}

async fn ready<R: Readiness>(State(state): State<Arc<Endpoints<R>>>) -> impl IntoResponse {
    match state.readiness.check().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}
