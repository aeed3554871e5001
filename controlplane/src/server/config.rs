//! The configuration as stored, and the snapshot built from it.
//!
//! All resources live in one key, `config/current` (a `sluice.v1.Snapshot`
//! message with version 0), so an apply of several documents is one atomic
//! compare-and-swap and every replica reads the same set. JWKS documents the
//! control plane fetched for `IdentityProvider`s with a `jwksUrl` live in
//! `config/jwks/<provider>`. The snapshot version is the highest store
//! revision among those keys (for providers still configured): the revision
//! of the last change, identical on every replica reading one etcd.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use prost::Message;
use proto::resource::Spec;
use proto::Resource;
use tokio::sync::watch;

use crate::store::{KeyValue, Revision, Store, WatchEventKind};

pub const CONFIG_PREFIX: &str = "config/";
pub const CONFIG_KEY: &str = "config/current";
pub const JWKS_PREFIX: &str = "config/jwks/";

/// The snapshot every node should run.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    pub version: i64,
    pub snapshot: Arc<proto::Snapshot>,
}

/// Decode the stored resource list (empty when the key does not exist).
pub fn decode_config(kv: Option<&KeyValue>) -> Result<Vec<Resource>, String> {
    match kv {
        None => Ok(Vec::new()),
        Some(kv) => proto::Snapshot::decode(kv.value.as_slice())
            .map(|s| s.resources)
            .map_err(|e| format!("stored configuration is not decodable: {e}")),
    }
}

pub fn encode_config(resources: &[Resource]) -> Vec<u8> {
    proto::Snapshot {
        version: 0,
        resources: resources.to_vec(),
    }
    .encode_to_vec()
}

/// Kind order first (referenced kinds before referencing ones), then name.
pub fn sort_resources(rs: &mut [Resource]) {
    let rank = |k: &str| proto::KINDS.iter().position(|x| *x == k).unwrap_or(99);
    rs.sort_by(|a, b| {
        rank(&a.kind)
            .cmp(&rank(&b.kind))
            .then_with(|| a.name.cmp(&b.name))
    });
}

/// Build the snapshot from the keys under `config/`.
pub fn build(keys: &BTreeMap<String, KeyValue>) -> Result<Current, String> {
    let cfg = keys.get(CONFIG_KEY);
    let mut resources = decode_config(cfg)?;
    let mut version = cfg.map_or(0, |kv| kv.mod_revision);
    for r in &mut resources {
        r.revision = 0;
        if let Some(Spec::IdentityProvider(p)) = &mut r.spec {
            if !p.jwks_url.is_empty() {
                if let Some(kv) = keys.get(&format!("{JWKS_PREFIX}{}", r.name)) {
                    version = version.max(kv.mod_revision);
                    p.jwks_json = String::from_utf8_lossy(&kv.value).into_owned();
                }
            }
        }
    }
    sort_resources(&mut resources);
    Ok(Current {
        version,
        snapshot: Arc::new(proto::Snapshot { version, resources }),
    })
}

/// Follow the store: keep `tx` at the latest snapshot, sending only when
/// the version changes. Survives store outages (etcd restarts): on any
/// watch error it reloads and re-watches with a backoff.
pub async fn follow(store: Arc<dyn Store>, tx: watch::Sender<Option<Current>>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match follow_once(&store, &tx).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!("configuration watch failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        }
        backoff = Duration::from_millis(50);
    }
}

fn publish(tx: &watch::Sender<Option<Current>>, keys: &BTreeMap<String, KeyValue>) {
    match build(keys) {
        Ok(cur) => {
            tx.send_if_modified(|old| {
                if old.as_ref().map(|o| o.version) == Some(cur.version) {
                    return false;
                }
                tracing::info!(
                    version = cur.version,
                    resources = cur.snapshot.resources.len(),
                    "new snapshot"
                );
                *old = Some(cur);
                true
            });
        }
        Err(e) => tracing::error!("cannot build a snapshot, keeping the previous one: {e}"),
    }
}

async fn follow_once(
    store: &Arc<dyn Store>,
    tx: &watch::Sender<Option<Current>>,
) -> Result<(), crate::store::StoreError> {
    let (kvs, rev): (Vec<KeyValue>, Revision) = store.get_prefix(CONFIG_PREFIX).await?;
    let mut keys: BTreeMap<String, KeyValue> =
        kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
    publish(tx, &keys);
    let mut events = store.watch_prefix(CONFIG_PREFIX, Some(rev + 1)).await?;
    while let Some(ev) = events.next().await {
        let ev = ev?;
        match ev.kind {
            WatchEventKind::Put => {
                keys.insert(ev.kv.key.clone(), ev.kv);
            }
            WatchEventKind::Delete => {
                keys.remove(&ev.kv.key);
            }
        }
        publish(tx, &keys);
    }
    Err(crate::store::StoreError::Unavailable(
        "watch stream ended".into(),
    ))
}
