//! The control thread's admin HTTP server: `/metrics`, `/healthz`, `/readyz`.
//! Runs on its own tokio runtime, never on a data core, so a scrape cannot
//! add latency to the data path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Registry;
use crate::net::Shared;

pub struct AdminState {
    pub registry: Registry,
    pub shared: Arc<Shared>,
    pub started: AtomicBool,
}

impl AdminState {
    pub fn ready(&self) -> bool {
        self.started.load(Relaxed) && !self.shared.draining.load(Relaxed)
    }
}

async fn metrics(State(st): State<Arc<AdminState>>) -> impl IntoResponse {
    let version = st.shared.snapshot.load().version;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.registry.render(st.ready(), version),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<Arc<AdminState>>) -> (StatusCode, &'static str) {
    if st.ready() {
        (StatusCode::OK, "ready\n")
    } else if st.shared.draining.load(Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

/// Bind the admin listener (so bind errors surface at startup).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serve until the process exits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(listener, app).await
}
