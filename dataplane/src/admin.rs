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
    /// Control-plane subscription counters (zero in static mode).
    pub control: Arc<crate::control::ControlStats>,
}

impl AdminState {
    pub fn ready(&self) -> bool {
        self.started.load(Relaxed)
            && self.shared.snapshot_ready.load(Relaxed)
            && !self.shared.draining.load(Relaxed)
    }
}

async fn metrics(State(st): State<Arc<AdminState>>) -> impl IntoResponse {
    let version = st.shared.snapshot.load().version;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        {
            let mut out = st.registry.render(st.ready(), version);
            render_control(&mut out, &st.control);
            out
        },
    )
}

fn render_control(s: &mut String, c: &crate::control::ControlStats) {
    use std::fmt::Write;
    let _ = writeln!(s, "# HELP sluice_control_plane_connected 1 while a snapshot stream to the control plane is open.\n# TYPE sluice_control_plane_connected gauge\nsluice_control_plane_connected {}", c.connected.load(Relaxed));
    let _ = writeln!(s, "# HELP sluice_snapshots_applied_total Snapshots from the control plane applied (ACKed).\n# TYPE sluice_snapshots_applied_total counter\nsluice_snapshots_applied_total {}", c.applied.load(Relaxed));
    let _ = writeln!(s, "# HELP sluice_snapshots_rejected_total Snapshots from the control plane that could not be applied (NACKed).\n# TYPE sluice_snapshots_rejected_total counter\nsluice_snapshots_rejected_total {}", c.rejected.load(Relaxed));
    let _ = writeln!(s, "# HELP sluice_control_plane_reconnects_total Snapshot streams that ended or failed to open.\n# TYPE sluice_control_plane_reconnects_total counter\nsluice_control_plane_reconnects_total {}", c.reconnects.load(Relaxed));
}

/// Which snapshot this node runs: `{"version", "ready", "applied_unix_us",
/// "connections", "identities"}` (names only, never secrets).
async fn snapshot(State(st): State<Arc<AdminState>>) -> impl IntoResponse {
    let snap = st.shared.snapshot.load();
    let mut connections: Vec<&String> = snap.connections.keys().collect();
    connections.sort();
    let body = serde_json::json!({
        "version": snap.version,
        "ready": st.ready(),
        "applied_unix_us": st.control.last_applied_unix_us.load(Relaxed),
        "connections": connections,
        "identities": snap.identities.len(),
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
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
    } else if !st.shared.snapshot_ready.load(Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first snapshot from the control plane\n",
        )
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
        .route("/snapshot", get(snapshot))
        .with_state(state);
    axum::serve(listener, app).await
}
