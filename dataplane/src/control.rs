//! Subscription to the control plane (runs on the control thread, never on
//! a data core).
//!
//! One bidirectional gRPC stream (`sluice.v1.SnapshotService/Stream`) at a
//! time, after Envoy xDS: the node sends who it is and the version it runs;
//! the control plane answers with full, versioned snapshots, each with a
//! nonce; the node compiles each one off the data cores, publishes it to
//! every core with one atomic pointer swap, and answers with the version
//! applied (ACK) or the reason it could not (NACK, keeping the last good
//! snapshot). A heartbeat repeats the last answer every few seconds so the
//! control plane can report liveness and lag.
//!
//! When the stream breaks the node keeps serving on its last snapshot and
//! reconnects, moving through the configured URLs, with a backoff from
//! 10 ms doubling to 15 s (reset once a stream delivers a snapshot).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::ControlPlane;
use crate::net::Shared;
use crate::snapshot::Snapshot;

pub const BACKOFF_MIN: Duration = Duration::from_millis(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// Counters the admin endpoint exports.
#[derive(Default)]
pub struct ControlStats {
    /// 1 while a snapshot stream is open.
    pub connected: AtomicU64,
    pub applied: AtomicU64,
    pub rejected: AtomicU64,
    pub reconnects: AtomicU64,
    /// Unix time (µs) of the last snapshot applied.
    pub last_applied_unix_us: AtomicU64,
}

/// Who this node is, as the control plane lists it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub address: String,
    pub cores: u32,
}

/// `node` with its TLS facts as loaded now (see `proto::Node`).
fn with_tls(node: &proto::Node, shared: &Shared) -> proto::Node {
    let (not_after, next_update) = shared
        .tls
        .as_ref()
        .map(|t| {
            let f = t.stats.facts.lock().unwrap_or_else(|p| p.into_inner());
            (f.cert_not_after(), f.crl_next_update())
        })
        .unwrap_or_default();
    proto::Node {
        tls_cert_not_after: i64::try_from(not_after).unwrap_or(i64::MAX),
        crl_next_update: next_update.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)),
        ..node.clone()
    }
}

/// The next backoff after `cur` (doubling, capped).
pub fn next_backoff(cur: Duration) -> Duration {
    (cur * 2).min(BACKOFF_MAX)
}

/// Build a channel endpoint for one URL, with mTLS for https (the snapshot
/// subscription and the audit shipper use the same settings).
pub fn endpoint(url: &str, cfg: &ControlPlane) -> anyhow::Result<Endpoint> {
    let mut ep = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("bad control-plane URL `{url}`"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        let read = |p: &Option<std::path::PathBuf>, what: &str| -> anyhow::Result<Vec<u8>> {
            let p = p
                .as_ref()
                .with_context(|| format!("control_plane.{what} is required for https"))?;
            std::fs::read(p).with_context(|| format!("control_plane.{what}: {}", p.display()))
        };
        let ca = read(&cfg.ca_file, "ca_file")?;
        let cert = read(&cfg.cert_file, "cert_file")?;
        let key = read(&cfg.key_file, "key_file")?;
        ep = ep
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .identity(Identity::from_pem(cert, key)),
            )
            .context("control-plane TLS configuration")?;
    }
    Ok(ep)
}

/// Run forever: subscribe, apply, reconnect.
pub async fn run(
    cfg: ControlPlane,
    node: NodeInfo,
    shared: Arc<Shared>,
    stats: Arc<ControlStats>,
    audit: Option<Arc<crate::audit::Audit>>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut i = 0usize;
    loop {
        let url = &cfg.urls[i % cfg.urls.len()];
        i += 1;
        match subscribe(url, &cfg, &node, &shared, &stats, audit.as_ref()).await {
            Ok(got_snapshot) => {
                if got_snapshot {
                    backoff = BACKOFF_MIN;
                }
                tracing::warn!(%url, "control-plane stream ended; reconnecting");
            }
            Err((got_snapshot, e)) => {
                if got_snapshot {
                    backoff = BACKOFF_MIN;
                }
                tracing::warn!(%url, "control plane unavailable: {e:#}; serving on snapshot version {} and retrying in {backoff:?}", shared.snapshot.load().version);
            }
        }
        stats.connected.store(0, Relaxed);
        stats.reconnects.fetch_add(1, Relaxed);
        // Up to 25 % jitter so a fleet does not reconnect in lockstep.
        let jitter = backoff.as_micros() as u64 * (rand_u64() % 256) / 1024;
        tokio::time::sleep(backoff + Duration::from_micros(jitter)).await;
        backoff = next_backoff(backoff);
    }
}

fn rand_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}

pub(crate) fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One stream's life. Returns whether it delivered a snapshot.
async fn subscribe(
    url: &str,
    cfg: &ControlPlane,
    node: &NodeInfo,
    shared: &Arc<Shared>,
    stats: &ControlStats,
    audit: Option<&Arc<crate::audit::Audit>>,
) -> Result<bool, (bool, anyhow::Error)> {
    let ep = endpoint(url, cfg).map_err(|e| (false, e))?;
    let channel: Channel = ep
        .connect()
        .await
        .map_err(|e| (false, anyhow::Error::new(e).context("connect")))?;
    // Snapshots are whole configurations: gRPC's default 4 MiB is too small.
    let mut client = proto::snapshot_service_client::SnapshotServiceClient::new(channel)
        .max_decoding_message_size(proto::MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel::<proto::SnapshotRequest>(8);
    let node_msg = proto::Node {
        id: node.id.clone(),
        address: node.address.clone(),
        cores: node.cores,
        build: env!("CARGO_PKG_VERSION").to_string(),
        ..Default::default()
    };
    let applied = |shared: &Shared| shared.snapshot.load().version as i64;
    let request = |version: i64, nonce: &str, error: Option<String>| proto::SnapshotRequest {
        node: Some(with_tls(&node_msg, shared)),
        applied_version: version,
        response_nonce: nonce.to_string(),
        error_detail: error.map(|message| proto::ErrorDetail { message }),
    };
    let _ = tx.send(request(applied(shared), "", None)).await;
    let mut responses = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| (false, anyhow::Error::new(e).context("open snapshot stream")))?
        .into_inner();
    stats.connected.store(1, Relaxed);
    tracing::info!(%url, node = %node.id, "subscribed to the control plane");
    let mut got = false;
    let mut last_nonce = String::new();
    let mut last_error: Option<String> = None;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(cfg.heartbeat_seconds));
    heartbeat.tick().await;
    loop {
        tokio::select! {
            msg = responses.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return Ok(got),
                    Err(e) => return Err((got, anyhow::Error::new(e).context("snapshot stream"))),
                };
                got = true;
                last_nonce = resp.nonce.clone();
                let current = applied(shared);
                if resp.version == current && shared.snapshot_ready.load(Relaxed) {
                    // Same version again (a reconnect): nothing to apply.
                    last_error = None;
                    let _ = tx.send(request(current, &resp.nonce, None)).await;
                    continue;
                }
                let started = std::time::Instant::now();
                let snap = resp.snapshot.unwrap_or_default();
                // Compiling resolves target host names: off the runtime thread.
                let built = tokio::task::spawn_blocking(move || Snapshot::from_proto(&snap))
                    .await
                    .unwrap_or_else(|e| Err(format!("snapshot compile task failed: {e}")));
                match built {
                    Ok(s) if s.version as i64 != resp.version => {
                        let why = format!("response version {} carries snapshot version {}", resp.version, s.version);
                        stats.rejected.fetch_add(1, Relaxed);
                        tracing::error!("snapshot NACKed: {why}");
                        last_error = Some(why.clone());
                        let _ = tx.send(request(current, &resp.nonce, Some(why))).await;
                    }
                    Ok(s) => {
                        let certs = s.identities.values().filter(|i| i.client_cert.is_some()).count();
                        if certs > 0 && !shared.tls.as_ref().is_some_and(|t| t.client_certificates()) {
                            tracing::warn!(identities = certs, "identities with a ClientCertificate cannot log in with it on this node: it has no tls.client_ca_file");
                        }
                        shared.snapshot.store(Arc::new(s));
                        shared.snapshot_ready.store(true, Relaxed);
                        if let Some(a) = audit {
                            a.push_side(crate::server::snapshot_applied(resp.version as u64));
                        }
                        stats.applied.fetch_add(1, Relaxed);
                        stats.last_applied_unix_us.store(unix_us(), Relaxed);
                        last_error = None;
                        tracing::info!(version = resp.version, took_us = started.elapsed().as_micros() as u64, "snapshot applied");
                        let _ = tx.send(request(resp.version, &resp.nonce, None)).await;
                    }
                    Err(why) => {
                        stats.rejected.fetch_add(1, Relaxed);
                        tracing::error!(version = resp.version, "snapshot NACKed, keeping version {current}: {why}");
                        last_error = Some(why.clone());
                        let _ = tx.send(request(current, &resp.nonce, Some(why))).await;
                    }
                }
            }
            _ = heartbeat.tick() => {
                let _ = tx.send(request(applied(shared), &last_nonce, last_error.clone())).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_10ms_to_15s() {
        let mut b = BACKOFF_MIN;
        let mut seen = vec![b];
        while b < BACKOFF_MAX {
            b = next_backoff(b);
            seen.push(b);
        }
        assert_eq!(seen[1], Duration::from_millis(20));
        assert_eq!(*seen.last().unwrap(), BACKOFF_MAX);
        assert_eq!(next_backoff(BACKOFF_MAX), BACKOFF_MAX);
        assert_eq!(seen.len(), 12); // 10 ms · 2^10 = 10.24 s, then 15 s
    }
}
