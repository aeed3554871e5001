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
    /// The audit pipeline, when audit is on.
    pub audit: Option<Arc<crate::audit::Audit>>,
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
            render_audit(&mut out, st.audit.as_deref());
            if let Some(t) = &st.shared.tls {
                render_tls(&mut out, &t.stats);
            }
            render_reloads(&mut out, &st.shared);
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

fn render_reloads(s: &mut String, sh: &crate::net::Shared) {
    use std::fmt::Write;
    let _ = writeln!(s, "# HELP sluice_config_reloads_total SIGHUP reloads of the configuration file that applied (static mode; sluice_snapshot_version is the version now).\n# TYPE sluice_config_reloads_total counter\nsluice_config_reloads_total {}", sh.config_reloads.load(Relaxed));
    let _ = writeln!(s, "# HELP sluice_config_reload_failures_total SIGHUP reloads of the configuration file refused (the file did not load or check; the version in use stays).\n# TYPE sluice_config_reload_failures_total counter\nsluice_config_reload_failures_total {}", sh.config_reload_failures.load(Relaxed));
}

fn render_tls(s: &mut String, t: &crate::tls::TlsStats) {
    use std::fmt::Write;
    let f = t.facts();
    let _ = writeln!(s, "# HELP sluice_tls_reloads_total Times the TLS files (tls.*) were found changed and loaded (SIGHUP or tls.reload_interval_s).\n# TYPE sluice_tls_reloads_total counter\nsluice_tls_reloads_total {}", t.reloads.load(Relaxed));
    let _ = writeln!(s, "# HELP sluice_tls_reload_failures_total Checks that found TLS files which could not be read or loaded (the last good ones stay in use).\n# TYPE sluice_tls_reload_failures_total counter\nsluice_tls_reload_failures_total {}", t.reload_failures.load(Relaxed));
    let _ = writeln!(s, "# HELP sluice_tls_loaded_timestamp_seconds When the TLS files in use were loaded (unix seconds).\n# TYPE sluice_tls_loaded_timestamp_seconds gauge\nsluice_tls_loaded_timestamp_seconds {}", t.loaded_at.load(Relaxed));
    let _ = writeln!(s, "# HELP sluice_tls_certificate_expiry_timestamp_seconds notAfter of the server certificate in use (unix seconds).\n# TYPE sluice_tls_certificate_expiry_timestamp_seconds gauge\nsluice_tls_certificate_expiry_timestamp_seconds {}", f.cert_not_after());
    let _ = writeln!(s, "# HELP sluice_tls_revoked_certificates Client certificates the revocation lists in use revoke.\n# TYPE sluice_tls_revoked_certificates gauge\nsluice_tls_revoked_certificates {}", f.revoked());
    if let Some(n) = f.crl_next_update() {
        let _ = writeln!(s, "# HELP sluice_tls_crl_next_update_timestamp_seconds The earliest nextUpdate of the revocation lists in use (unix seconds): past it, a list is stale.\n# TYPE sluice_tls_crl_next_update_timestamp_seconds gauge\nsluice_tls_crl_next_update_timestamp_seconds {n}");
    }
}

fn render_audit(s: &mut String, audit: Option<&crate::audit::Audit>) {
    use std::fmt::Write;
    let _ = writeln!(s, "# HELP sluice_audit_enabled 1 when audit records are kept.\n# TYPE sluice_audit_enabled gauge\nsluice_audit_enabled {}", u8::from(audit.is_some()));
    let Some(a) = audit else {
        return;
    };
    let st = a.stats();
    let produced: u64 = st.cores.iter().map(|c| c.produced.load(Relaxed)).sum();
    let refused: u64 = st.cores.iter().map(|c| c.refused.load(Relaxed)).sum();
    let unaudited: u64 = st.cores.iter().map(|c| c.unaudited.load(Relaxed)).sum();
    let _ = writeln!(s, "# HELP sluice_audit_records_total Audit records by stage: produced (written to a core ring), spooled (appended to the local spool), shipped (sent to the control plane, resends included), acknowledged (made durable by the control plane).\n# TYPE sluice_audit_records_total counter");
    for (stage, v) in [
        ("produced", produced),
        ("spooled", st.spooled.load(Relaxed)),
        ("shipped", st.shipped.load(Relaxed)),
        ("acknowledged", st.acknowledged.load(Relaxed)),
    ] {
        let _ = writeln!(s, "sluice_audit_records_total{{stage=\"{stage}\"}} {v}");
    }
    let last = st.spool_last_seq.load(Relaxed);
    let acked = st.spool_acked.load(Relaxed);
    let oldest = st.oldest_unacked_unix_ms.load(Relaxed);
    let lag_s = if oldest == 0 || last <= acked {
        0.0
    } else {
        crate::audit::pump::unix_ms().saturating_sub(oldest) as f64 / 1e3
    };
    let _ = writeln!(s, "# HELP sluice_audit_spool_bytes Bytes of the local audit spool's segment files.\n# TYPE sluice_audit_spool_bytes gauge\nsluice_audit_spool_bytes {}", st.spool_bytes.load(Relaxed));
    let _ = writeln!(s, "# HELP sluice_audit_ship_lag_records Records spooled and not yet acknowledged by the control plane.\n# TYPE sluice_audit_ship_lag_records gauge\nsluice_audit_ship_lag_records {}", last.saturating_sub(acked));
    let _ = writeln!(s, "# HELP sluice_audit_ship_lag_seconds Age of the oldest record not yet acknowledged by the control plane (0 when none).\n# TYPE sluice_audit_ship_lag_seconds gauge\nsluice_audit_ship_lag_seconds {lag_s:.3}");
    let _ = writeln!(s, "# HELP sluice_audit_spool_last_sequence Highest sequence number the spool has assigned.\n# TYPE sluice_audit_spool_last_sequence gauge\nsluice_audit_spool_last_sequence {last}");
    let _ = writeln!(s, "# HELP sluice_audit_refused_total Statements and sessions refused because audit records could not be stored (when_full: fail_closed).\n# TYPE sluice_audit_refused_total counter\nsluice_audit_refused_total {refused}");
    let _ = writeln!(s, "# HELP sluice_audit_unaudited_total Records dropped because they could not be stored: under when_full: fail_open, statements that ran unaudited; under fail_closed, auth-failure and session start/end records with no room (each reported in the trail as RECORDS_LOST).\n# TYPE sluice_audit_unaudited_total counter\nsluice_audit_unaudited_total {unaudited}");
    let limited: u64 = st.cores.iter().map(|c| c.rate_limited.load(Relaxed)).sum();
    let _ = writeln!(s, "# HELP sluice_audit_auth_failures_rate_limited_total Authentication-failure records not written, past audit.auth_failures_per_second (reported in the trail by number, RECORDS_LOST auth_failures_rate_limited).\n# TYPE sluice_audit_auth_failures_rate_limited_total counter\nsluice_audit_auth_failures_rate_limited_total {limited}");
    let _ = writeln!(s, "# HELP sluice_audit_spool_errors_total Spool appends or acknowledgements that failed (quota reached, I/O errors).\n# TYPE sluice_audit_spool_errors_total counter\nsluice_audit_spool_errors_total {}", st.spool_errors.load(Relaxed));
    let _ = writeln!(s, "# HELP sluice_audit_spool_accepting 0 while the spool refuses records (quota or I/O error).\n# TYPE sluice_audit_spool_accepting gauge\nsluice_audit_spool_accepting {}", u8::from(!a.gate().closed()));
    let _ = writeln!(s, "# HELP sluice_audit_ship_connected 1 while an audit stream to the control plane is open.\n# TYPE sluice_audit_ship_connected gauge\nsluice_audit_ship_connected {}", st.ship_connected.load(Relaxed));
    let _ = writeln!(s, "# HELP sluice_audit_ship_reconnects_total Audit streams that ended or failed to open.\n# TYPE sluice_audit_ship_reconnects_total counter\nsluice_audit_ship_reconnects_total {}", st.ship_reconnects.load(Relaxed));
    let _ = writeln!(s, "# HELP sluice_audit_ring_damaged_total Core ring files found damaged (their unread records are lost).\n# TYPE sluice_audit_ring_damaged_total counter\nsluice_audit_ring_damaged_total {}", st.ring_damaged.load(Relaxed));
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
