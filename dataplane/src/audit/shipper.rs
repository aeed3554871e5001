//! Streams the spool to the control plane: `sluice.v1.AuditIngest/Ship`
//! (runs on the control thread; spool reads and acks go to the blocking
//! pool, so the thread's other work never waits on the disk).
//!
//! One stream at a time, on the same URLs, TLS settings and backoff as the
//! snapshot subscription ([`crate::control`]):
//!
//! 1. The node opens the stream and sends a hello: an `AuditBatch` with its
//!    `node_id` and no records.
//! 2. It waits up to [`HELLO_WAIT`] for an `AuditAck` to the hello: the
//!    control plane's `durable_through` for this node (0 if it has
//!    nothing). That lets it skip what the control plane already stores,
//!    and notice a control plane that stores more than this spool ever
//!    numbered (the spool directory was replaced): with nothing waiting it
//!    continues the numbering after that ([`Spool::skip_to`]), otherwise it
//!    stops shipping and says so. No answer is fine: it sends from its
//!    acknowledged position on.
//! 3. It sends batches of up to [`BATCH_RECORDS`] records in sequence
//!    order, starting after the acknowledged position (so after every
//!    reconnect, everything not acknowledged is sent again), keeping at most
//!    [`WINDOW_RECORDS`] sent and unacknowledged.
//! 4. For each `AuditAck{durable_through}` it records the position durably
//!    and deletes the segments it covers ([`Spool::ack`]).
//!
//! [`Spool::skip_to`]: super::Spool::skip_to
//! [`Spool::ack`]: super::Spool::ack

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::service::Audit;
use super::spool::SpoolError;
use crate::config::ControlPlane;
use crate::control::{endpoint, next_backoff, BACKOFF_MIN};

/// How long the node waits for the control plane's answer to its hello.
pub const HELLO_WAIT: Duration = Duration::from_secs(2);
/// Records per `AuditBatch`.
pub const BATCH_RECORDS: usize = 512;
/// Records sent and not yet acknowledged, at most.
pub const WINDOW_RECORDS: u64 = 8 * BATCH_RECORDS as u64;

/// Run forever: ship, reconnect with backoff.
pub async fn run(cfg: ControlPlane, audit: Arc<Audit>) {
    let mut backoff = BACKOFF_MIN;
    let mut i = 0usize;
    let stats = audit.stats().clone();
    loop {
        let url = &cfg.urls[i % cfg.urls.len()];
        i += 1;
        let (progress, why) = match ship(url, &cfg, &audit).await {
            Ok(p) => (p, "stream ended".to_string()),
            Err((p, e)) => (p, format!("{e:#}")),
        };
        stats.ship_connected.store(0, Relaxed);
        stats.ship_reconnects.fetch_add(1, Relaxed);
        if progress {
            backoff = BACKOFF_MIN;
        }
        let waiting = pending(&audit);
        tracing::warn!(%url, waiting, "audit shipping to the control plane interrupted: {why}; retrying in {backoff:?}");
        let jitter = backoff.as_micros() as u64 * (jitter_byte() as u64) / 1024;
        tokio::time::sleep(backoff + Duration::from_micros(jitter)).await;
        backoff = next_backoff(backoff);
    }
}

/// Records spooled and not acknowledged (from the gauges: never waits for
/// the spool's lock).
fn pending(audit: &Audit) -> u64 {
    let s = audit.stats();
    s.spool_last_seq
        .load(Relaxed)
        .saturating_sub(s.spool_acked.load(Relaxed))
}

fn jitter_byte() -> u8 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 1];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b[0]
}

async fn blocking<T: Send + 'static>(
    audit: &Arc<Audit>,
    f: impl FnOnce(&mut super::pump::Pump) -> T + Send + 'static,
) -> T {
    let pump = audit.pump_arc();
    tokio::task::spawn_blocking(move || {
        let mut p = pump.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut p)
    })
    .await
    .expect("audit spool task panicked")
}

/// Apply one acknowledgement. Err stops the stream.
async fn on_ack(audit: &Arc<Audit>, durable_through: u64) -> anyhow::Result<()> {
    let r = blocking(audit, move |p| {
        let last = p.spool().last_seq();
        if durable_through > last {
            if p.spool().pending() == 0 {
                tracing::warn!(durable_through, last, "the control plane stores more of this node's records than the spool has numbered (a new or replaced spool directory?): numbering continues after {durable_through}");
                p.skip_to(durable_through)
            } else {
                Err(SpoolError::Conflict {
                    stored: durable_through,
                    last,
                    pending: p.spool().pending(),
                })
            }
        } else {
            p.ack(durable_through)
        }
    })
    .await;
    r.map_err(|e| anyhow::anyhow!(e))
}

/// One stream's life. Returns whether an acknowledgement came.
async fn ship(
    url: &str,
    cfg: &ControlPlane,
    audit: &Arc<Audit>,
) -> Result<bool, (bool, anyhow::Error)> {
    let stats = audit.stats().clone();
    let ep = endpoint(url, cfg).map_err(|e| (false, e))?;
    let channel = ep
        .connect()
        .await
        .map_err(|e| (false, anyhow::Error::new(e).context("connect")))?;
    let mut client = proto::audit_ingest_client::AuditIngestClient::new(channel);
    let (tx, rx) = mpsc::channel::<proto::AuditBatch>(4);
    let node_id = audit.node_id().to_string();
    let _ = tx
        .send(proto::AuditBatch {
            node_id: node_id.clone(),
            records: Vec::new(),
        })
        .await;
    let mut acks = client
        .ship(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| (false, anyhow::Error::new(e).context("open audit stream")))?
        .into_inner();
    stats.ship_connected.store(1, Relaxed);
    let mut progress = false;
    match tokio::time::timeout(HELLO_WAIT, acks.message()).await {
        Ok(Ok(Some(ack))) => {
            progress = true;
            on_ack(audit, ack.durable_through)
                .await
                .map_err(|e| (true, e))?;
        }
        Ok(Ok(None)) => return Ok(false),
        Ok(Err(e)) => return Err((false, anyhow::Error::new(e).context("audit stream"))),
        Err(_) => {}
    }
    let (acked, last) = (
        stats.spool_acked.load(Relaxed),
        stats.spool_last_seq.load(Relaxed),
    );
    tracing::info!(%url, node = %node_id, acked, last, "shipping audit records to the control plane");
    let mut sent_through = acked;
    loop {
        let acked = stats.spool_acked.load(Relaxed);
        sent_through = sent_through.max(acked);
        while sent_through - acked < WINDOW_RECORDS {
            let from = sent_through + 1;
            let records = blocking(audit, move |p| p.unacked(from, BATCH_RECORDS))
                .await
                .map_err(|e| (progress, anyhow::anyhow!(e)))?;
            let Some(last) = records.last() else {
                break;
            };
            sent_through = last.metadata.as_ref().map_or(sent_through, |m| m.sequence);
            let n = records.len() as u64;
            if tx
                .send(proto::AuditBatch {
                    node_id: node_id.clone(),
                    records,
                })
                .await
                .is_err()
            {
                return Err((progress, anyhow::anyhow!("audit stream closed")));
            }
            stats.shipped.fetch_add(n, Relaxed);
        }
        tokio::select! {
            msg = acks.message() => match msg {
                Ok(Some(ack)) => {
                    // (A resend from behind what the control plane already
                    // acknowledged: its store lost records this spool has
                    // deleted. Nothing here can fill that gap; resending
                    // would spin. Stop, say so, and back off.)
                    let acked = stats.spool_acked.load(Relaxed);
                    if ack.resend && ack.durable_through < acked {
                        return Err((
                            false,
                            anyhow::anyhow!(
                                "the control plane stores this node's records only through {}, \
                                 behind the {acked} it acknowledged: its audit store lost \
                                 records (restored from an older backup, or deleted?), or this \
                                 node's name changed while it kept its spool (give it back its \
                                 name, or a new spool directory once this one is shipped); \
                                 records {}..={acked} are no longer in this node's spool",
                                ack.durable_through,
                                ack.durable_through + 1
                            ),
                        ));
                    }
                    progress = true;
                    on_ack(audit, ack.durable_through).await.map_err(|e| (true, e))?;
                    if ack.resend {
                        // The control plane saw a gap: send again from its
                        // durable position (what is in flight is dropped).
                        sent_through = ack.durable_through;
                    }
                }
                Ok(None) => return Ok(progress),
                Err(e) => return Err((progress, anyhow::Error::new(e).context("audit stream"))),
            },
            _ = audit.notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// At shutdown: give the shipper up to `limit` to get everything spooled
/// acknowledged.
pub async fn wait_acknowledged(audit: &Arc<Audit>, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let pending = pending(audit);
        if pending == 0 {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::info!(
                waiting = pending,
                "audit records not yet acknowledged stay in the spool for the next start"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
