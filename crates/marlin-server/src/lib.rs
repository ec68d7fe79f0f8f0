//! marlin's OpenAI-compatible HTTP server.
//!
//! - [`request`]: parsing and validation of request bodies (every rejection
//!   is a 4xx naming the parameter, in OpenAI's error shape: [`error`]).
//! - [`routes`]: the axum app: `/v1/models`, `/v1/chat/completions`,
//!   `/v1/completions` (JSON or SSE), `/health`, `/metrics`.
//! - [`backend`]: the trait the HTTP layer needs from an engine;
//!   `marlin serve` (marlin-cli) implements it over `marlin_engine::serve`.
//! - [`metrics`]: Prometheus text format, `marlin:` names after vLLM's.

pub mod backend;
pub mod error;
pub mod metrics;
pub mod request;
pub mod response;
pub mod routes;

pub use backend::{
    Backend, BackendEvent, BackendRequest, BackendStats, EventStream, FinishReason, SubmitError,
};
pub use error::ApiError;
pub use routes::{app, metrics_app, AppState};

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Serves `state` on `addr` (and `/metrics` alone on `metrics_addr`) until
/// SIGINT/SIGTERM, then stops accepting, lets in-flight requests finish
/// (new ones get 503) and returns.
pub async fn serve(
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    state: Arc<AppState>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, model = %state.served_model_name, "listening");
    if let Some(maddr) = metrics_addr {
        let mlistener = tokio::net::TcpListener::bind(maddr).await?;
        let mstate = Arc::clone(&state);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(mlistener, metrics_app(mstate)).await {
                tracing::warn!(error = %e, "metrics listener stopped");
            }
        });
    }
    let drain_state = Arc::clone(&state);
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            drain_state.draining.store(true, Ordering::Release);
            tracing::info!("shutdown requested: finishing in-flight requests");
        })
        .await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
