//! Streams the spool to the control plane: `sluice.v1.AuditIngest/Ship`
//! (runs on the control thread; spool reads and acks go to the blocking
//! pool, so the thread's other work never waits on the disk).
//!
//! One stream at a time, on the same URLs, TLS settings and backoff as the
//! snapshot subscription ([`crate::control`]):
//!
//! 1. The node opens the stream and sends a hello: an `AuditBatch` with its
//!    `node_id` and no records.
//! 2. It waits for an `AuditAck` to the hello: the control plane's
//!    `durable_through` for this node name (0 if it has nothing).
//!    * A spool with no place in this name's chain yet (a new spool, or the
//!      node was renamed while it kept its spool) waits for that answer as
//!      long as the stream lasts, sending nothing: the answer places its
//!      first unacknowledged record at `durable_through + 1`, recorded
//!      durably before anything is sent ([`Spool::take_base`]). Records it
//!      numbered before the control plane could be asked are therefore
//!      never taken for ones the control plane stores.
//!    * Any other spool waits up to [`HELLO_WAIT`]. The answer lets it skip
//!      what the control plane already stores, and notice a control plane
//!      that stores more than this spool ever numbered for the name
//!      (another node under this name): with nothing waiting it continues
//!      the numbering after that ([`Spool::skip_to`]), otherwise it stops
//!      shipping and says so. No answer is fine: it sends from its
//!      acknowledged position on.
//! 3. It sends batches of up to [`BATCH_RECORDS`] records in sequence
//!    order, starting after the acknowledged position (so after every
//!    reconnect, everything not acknowledged is sent again), keeping at most
//!    [`WINDOW_RECORDS`] sent and unacknowledged. Records leave the spool
//!    with their chain sequence ([`Spool::unacked_to_ship`]); acks name
//!    chain sequences, turned back into the spool's.
//! 4. For each `AuditAck{durable_through}` it records the position durably
//!    and deletes the segments it covers ([`Spool::ack`]).
//!
//! [`Spool::take_base`]: super::Spool::take_base
//! [`Spool::unacked_to_ship`]: super::Spool::unacked_to_ship
//! [`Spool::skip_to`]: super::Spool::skip_to
//! [`Spool::ack`]: super::Spool::ack

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::service::Audit;
use super::spool::{chain_pos, local_seq, BaseChange, ShipBase, SpoolError};
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

/// Apply one acknowledgement of chain sequence `durable_through`, for a
/// spool shipping at `offset`. Err stops the stream.
fn apply_ack(
    p: &mut super::pump::Pump,
    durable_through: u64,
    offset: i64,
) -> Result<(), SpoolError> {
    let last = p.spool().last_seq();
    // The chain position of the spool's last record (of what precedes its
    // first when it has none).
    let last_chain = chain_pos(last, offset);
    if durable_through > last_chain {
        if p.spool().pending() == 0 {
            tracing::warn!(durable_through, last = last_chain, "the control plane stores more of this node's records than the spool has numbered (another node under this name, or a spool directory restored from a copy?): numbering continues after {durable_through}");
            p.skip_to(local_seq(durable_through, offset))
        } else {
            Err(SpoolError::Conflict {
                stored: durable_through,
                last: last_chain,
                pending: p.spool().pending(),
            })
        }
    } else {
        p.ack(local_seq(durable_through, offset))
    }
}

/// Apply one acknowledgement on a stream shipping at `offset`.
async fn on_ack(audit: &Arc<Audit>, durable_through: u64, offset: i64) -> anyhow::Result<()> {
    blocking(audit, move |p| apply_ack(p, durable_through, offset))
        .await
        .map_err(|e| anyhow::anyhow!(e))
}

/// Apply the answer to the hello: place a spool that has no place in this
/// node name's chain yet right after `durable_through` (durably, before
/// anything is shipped), else take it as an acknowledgement. Returns the
/// offset to ship at.
async fn on_hello(audit: &Arc<Audit>, durable_through: u64) -> anyhow::Result<i64> {
    let node = audit.node_id().to_string();
    let r = blocking(audit, move |p| {
        let acked = p.spool().acked_through();
        let waiting = p.spool().pending();
        match p.take_base(durable_through)? {
            BaseChange::Kept { offset } => {
                apply_ack(p, durable_through, offset)?;
                Ok(offset)
            }
            BaseChange::Rebased {
                previous: ShipBase::Based { node: old, .. },
                offset,
            } => {
                tracing::warn!(old_name = %old, %node, waiting, "this node's name changed from {old} to {node} while it kept its audit spool: the records it shipped as {old} stay under {old}; the {waiting} waiting ship under {node} after the {durable_through} the control plane stores for it (spool sequence {} ships as {})", acked.saturating_add(1), durable_through.saturating_add(1));
                Ok(offset)
            }
            BaseChange::Rebased { offset, .. } => {
                tracing::info!(%node, waiting, durable_through, offset, "audit spool placed in this node's chain: its records ship after the {durable_through} the control plane stores for {node}");
                Ok(offset)
            }
        }
    })
    .await;
    r.map_err(|e: SpoolError| anyhow::anyhow!(e))
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
    // A spool with no place in this name's chain yet (new, or the node was
    // renamed) must hear where it goes before it sends anything: it waits
    // for the answer as long as the stream lasts. Any other spool may send
    // from its acknowledged position if no answer comes.
    let needs_base = blocking(audit, |p| p.spool().needs_base()).await;
    let mut told = false;
    let answer = loop {
        match tokio::time::timeout(HELLO_WAIT, acks.message()).await {
            Ok(r) => break Some(r),
            Err(_) if needs_base => {
                if !told {
                    tracing::info!(%url, node = %node_id, "waiting for the control plane's answer to the audit hello: this spool's records are shipped only once it says where this node's chain ends");
                    told = true;
                }
            }
            Err(_) => break None,
        }
    };
    let offset = match answer {
        Some(Ok(Some(ack))) => {
            progress = true;
            // (An answer the spool cannot act on, a conflict or a BASE it
            // cannot write, is no progress: the backoff keeps growing.)
            on_hello(audit, ack.durable_through)
                .await
                .map_err(|e| (false, e))?
        }
        Some(Ok(None)) => return Ok(false),
        Some(Err(e)) => return Err((false, anyhow::Error::new(e).context("audit stream"))),
        None => blocking(audit, |p| p.spool().offset())
            .await
            .ok_or_else(|| {
                (
                    false,
                    anyhow::anyhow!("the audit spool has no place in this node's chain"),
                )
            })?,
    };
    let (acked, last) = (
        stats.spool_acked.load(Relaxed),
        stats.spool_last_seq.load(Relaxed),
    );
    tracing::info!(%url, node = %node_id, acked, last, offset, "shipping audit records to the control plane");
    let mut sent_through = acked;
    loop {
        let acked = stats.spool_acked.load(Relaxed);
        sent_through = sent_through.max(acked);
        while sent_through - acked < WINDOW_RECORDS {
            let from = sent_through + 1;
            let records = blocking(audit, move |p| {
                p.spool().unacked_to_ship(from, BATCH_RECORDS)
            })
            .await
            .map_err(|e| (progress, anyhow::anyhow!(e)))?;
            if records.is_empty() {
                break;
            }
            // (Spool sequences are consecutive; the records carry chain
            // sequences.)
            let n = records.len() as u64;
            sent_through = from + n - 1;
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
                    let acked = chain_pos(stats.spool_acked.load(Relaxed), offset);
                    if ack.resend && ack.durable_through < acked {
                        return Err((
                            false,
                            anyhow::anyhow!(
                                "the control plane stores this node's records only through {}, \
                                 behind the {acked} it acknowledged: its audit store lost \
                                 records (restored from an older backup, or deleted?), or this \
                                 node's name changed while it kept a spool written before spools \
                                 recorded their node name (give it back its name, or a new spool \
                                 directory once this one is shipped); records {}..={acked} are no \
                                 longer in this node's spool",
                                ack.durable_through,
                                ack.durable_through + 1
                            ),
                        ));
                    }
                    progress = true;
                    on_ack(audit, ack.durable_through, offset).await.map_err(|e| (true, e))?;
                    if ack.resend {
                        // The control plane saw a gap: send again from its
                        // durable position (what is in flight is dropped).
                        sent_through = local_seq(ack.durable_through, offset);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditStats, Pump, Spool, SpoolConfig};
    use proto::{AuditMetadata, AuditRecord};

    fn records(n: usize) -> Vec<AuditRecord> {
        (0..n)
            .map(|_| AuditRecord {
                metadata: Some(AuditMetadata::default()),
                ..Default::default()
            })
            .collect()
    }

    fn shipped_seqs(p: &Pump) -> Vec<u64> {
        p.spool()
            .unacked_to_ship(0, 100)
            .unwrap()
            .iter()
            .map(|r| r.metadata.as_ref().unwrap().sequence)
            .collect()
    }

    /// Acks name chain sequences; the spool acknowledges its own.
    #[test]
    fn acks_are_applied_at_the_spools_offset() {
        let d = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(SpoolConfig::new(d.path(), "n1")).unwrap();
        spool.append_batch(&mut records(3)).unwrap();
        let stats = Arc::new(AuditStats::new(0));
        let mut p = Pump::new(spool, Vec::new(), Arc::default(), stats.clone());
        assert_eq!(
            p.take_base(40).unwrap(),
            BaseChange::Rebased {
                previous: ShipBase::Unbased,
                offset: 40
            }
        );
        assert_eq!(shipped_seqs(&p), [41, 42, 43]);
        apply_ack(&mut p, 42, 40).unwrap();
        assert_eq!(p.spool().acked_through(), 2);
        assert_eq!(stats.spool_acked.load(Relaxed), 2);
        // Behind what is acknowledged (the shipper stops on the resend
        // that follows): nothing changes.
        apply_ack(&mut p, 10, 40).unwrap();
        assert_eq!(p.spool().acked_through(), 2);
        // Beyond anything numbered with a record waiting: refused.
        let err = apply_ack(&mut p, 100, 40).unwrap_err();
        assert!(
            matches!(
                err,
                SpoolError::Conflict {
                    stored: 100,
                    last: 43,
                    pending: 1
                }
            ),
            "{err}"
        );
        // With nothing waiting, numbering continues after it.
        apply_ack(&mut p, 43, 40).unwrap();
        apply_ack(&mut p, 100, 40).unwrap();
        p.side_queue().lock().unwrap().extend(records(1));
        p.step().unwrap();
        assert_eq!(shipped_seqs(&p), [101]);
    }
}
