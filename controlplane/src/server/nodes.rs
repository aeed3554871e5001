//! Node membership: `nodes/<id>` holds a `NodeStatus`, attached to a lease
//! the control plane serving that node's stream keeps alive. A node whose
//! stream ends is removed at once; one whose control plane dies disappears
//! when the lease runs out (the TTL), unless it re-registers through
//! another replica first.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::watch;

use crate::store::{LeaseId, Result, Store, StoreError};

pub const NODES_PREFIX: &str = "nodes/";

pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Every registered node, sorted by id.
pub async fn list(store: &dyn Store) -> Result<Vec<proto::NodeStatus>> {
    let (kvs, _) = store.get_prefix(NODES_PREFIX).await?;
    let mut out: Vec<proto::NodeStatus> = kvs
        .iter()
        .filter_map(|kv| proto::NodeStatus::decode(kv.value.as_slice()).ok())
        .collect();
    out.sort_by(|a, b| {
        let id = |n: &proto::NodeStatus| n.node.as_ref().map(|n| n.id.clone());
        id(a).cmp(&id(b))
    });
    Ok(out)
}

/// Keeps one node's record in the store while its stream lives: writes each
/// status change, keeps the lease alive, re-registers after store outages.
/// Runs as its own task so a slow store never stalls the snapshot stream.
pub async fn keep_registered(
    store: Arc<dyn Store>,
    id: String,
    ttl: Duration,
    mut status: watch::Receiver<proto::NodeStatus>,
) {
    let key = format!("{NODES_PREFIX}{id}");
    let mut lease: Option<LeaseId> = None;
    let mut dirty = true;
    let mut tick = tokio::time::interval(ttl / 3);
    loop {
        if dirty || lease.is_none() {
            let value = status.borrow_and_update().encode_to_vec();
            match write(&*store, &key, value, &mut lease, ttl).await {
                Ok(()) => dirty = false,
                Err(e) => tracing::warn!(node = %id, "cannot record node status: {e}"),
            }
        }
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() {
                    break; // the stream ended
                }
                dirty = true;
            }
            _ = tick.tick() => {
                if let Some(l) = lease {
                    match store.keep_alive(l).await {
                        Ok(_) => {}
                        Err(StoreError::LeaseNotFound(_)) => lease = None,
                        Err(e) => tracing::warn!(node = %id, "lease keep-alive failed: {e}"),
                    }
                }
            }
        }
    }
    if let Some(l) = lease {
        if let Err(e) = store.revoke_lease(l).await {
            tracing::debug!(node = %id, "lease revoke failed (it will expire): {e}");
        }
    }
}

async fn write(
    store: &dyn Store,
    key: &str,
    value: Vec<u8>,
    lease: &mut Option<LeaseId>,
    ttl: Duration,
) -> Result<()> {
    let l = match *lease {
        Some(l) => l,
        None => {
            let l = store.grant_lease(ttl).await?;
            *lease = Some(l);
            l
        }
    };
    match store.put(key, value.clone(), Some(l)).await {
        Ok(_) => Ok(()),
        Err(StoreError::LeaseNotFound(_)) => {
            let l = store.grant_lease(ttl).await?;
            *lease = Some(l);
            store.put(key, value, Some(l)).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}
