//! Witnesses: each node's chain head as the control plane last saw it,
//! kept in the configuration store (etcd, or the embedded store) under
//! `audit/witness/<node>`, apart from the sink.
//!
//! A sink keeps its own chain head beside the records (a file, a table),
//! so whoever can rewrite the records can rewrite the head to match: cut a
//! node's tail and lower its head, or delete the node's records and head
//! together. `audit verify` then had nothing to compare against. The
//! witness is that second copy, in a system with its own credentials: the
//! ingest service writes it after storing a stream's first batch (before
//! acknowledging it), then at most once per [`WITNESS_INTERVAL`] while the
//! stream lasts, and once more when it ends. Verify reports a chain that
//! ends before its witness, or whose witnessed record has another hash
//! (see `verify::verify_node_witnessed`).
//!
//! A witness only moves forward (compare-and-swap on the store's revision),
//! so replicas and late writes never lower it. Records stored since the
//! last witness are covered by the sink's own head only. Writes are
//! sparse (the embedded store keeps every revision), and never hold up
//! audit ingest for longer than [`WRITE_TIMEOUT`]: a store that is down
//! leaves the witness behind, logged, not the records.
//!
//! The value is JSON, readable with `etcdctl get`:
//! `{"sequence":6,"hash":"<64 hex digits>","atUnixNanos":…}`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use super::chain::{hex, unhex, HASH_LEN};
use super::verify::Head;
use crate::ctl::audit::{format_time, now_nanos};
use crate::store::{Store, StoreError};

/// Store prefix of the witnesses (one key per node id).
pub const WITNESS_PREFIX: &str = "audit/witness/";
/// How often a stream's witness moves forward at most (besides its first
/// batch and its end).
pub const WITNESS_INTERVAL: Duration = Duration::from_secs(600);
/// Longest a witness write may hold up a stream.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// One node's chain head as the store witnessed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    pub head: Head,
    /// When it was written (Unix nanoseconds).
    pub at_unix_nanos: i64,
}

impl Witness {
    /// When it was written, RFC 3339, for messages.
    pub fn at(&self) -> String {
        format!("at {}", format_time(self.at_unix_nanos))
    }

    pub fn encode(&self) -> Vec<u8> {
        json!({
            "sequence": self.head.sequence,
            "hash": hex(&self.head.hash),
            "atUnixNanos": self.at_unix_nanos,
        })
        .to_string()
        .into_bytes()
    }

    /// Reads [`Witness::encode`]'s form; why not, otherwise.
    pub fn decode(value: &[u8]) -> Result<Witness, String> {
        let v: serde_json::Value =
            serde_json::from_slice(value).map_err(|e| format!("not JSON: {e}"))?;
        let sequence = v["sequence"]
            .as_u64()
            .ok_or("no \"sequence\" (a whole number)")?;
        let hash = v["hash"]
            .as_str()
            .and_then(unhex)
            .filter(|h| h.len() == HASH_LEN)
            .ok_or(format!("no \"hash\" ({} hex digits)", HASH_LEN * 2))?;
        let at_unix_nanos = v["atUnixNanos"].as_i64().unwrap_or(0);
        Ok(Witness {
            head: Head { sequence, hash },
            at_unix_nanos,
        })
    }
}

/// Every node's witness, and the keys under [`WITNESS_PREFIX`] that could
/// not be read (node, why).
#[derive(Debug, Default, Clone)]
pub struct Witnesses {
    pub nodes: BTreeMap<String, Witness>,
    pub unreadable: Vec<(String, String)>,
}

impl Witnesses {
    /// Reads them from the store.
    pub async fn load(store: &dyn Store) -> Result<Witnesses, StoreError> {
        let (kvs, _) = store.get_prefix(WITNESS_PREFIX).await?;
        let mut out = Witnesses::default();
        for kv in kvs {
            let node = kv
                .key
                .strip_prefix(WITNESS_PREFIX)
                .unwrap_or(&kv.key)
                .to_string();
            match Witness::decode(&kv.value) {
                Ok(w) => {
                    out.nodes.insert(node, w);
                }
                Err(why) => out.unreadable.push((node, why)),
            }
        }
        Ok(out)
    }
}

/// Moves node `node`'s witness forward to `head` (nothing when it is
/// already there or past it); whether it moved.
pub async fn advance(store: &dyn Store, node: &str, head: &Head) -> Result<bool, StoreError> {
    let key = format!("{WITNESS_PREFIX}{node}");
    loop {
        let (rev, at) = match store.get(&key).await? {
            None => (0, 0),
            // (One that cannot be read is replaced: verify has nothing
            // to compare against either way.)
            Some(kv) => (
                kv.mod_revision,
                Witness::decode(&kv.value).map_or(0, |w| w.head.sequence),
            ),
        };
        if at >= head.sequence {
            return Ok(false);
        }
        let w = Witness {
            head: head.clone(),
            at_unix_nanos: now_nanos(),
        };
        if store
            .txn_put_if_mod_revision(&key, w.encode(), rev)
            .await?
            .is_some()
        {
            return Ok(true);
        }
        // Another writer (a replica, a late write) got there first: read
        // again.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    fn head(seq: u64, b: u8) -> Head {
        Head {
            sequence: seq,
            hash: vec![b; HASH_LEN],
        }
    }

    #[test]
    fn encodes_and_decodes() {
        let w = Witness {
            head: head(6, 0xab),
            at_unix_nanos: 1_700_000_000_123_456_789,
        };
        assert_eq!(Witness::decode(&w.encode()), Ok(w.clone()));
        assert!(
            w.at().starts_with("at 2023-11-14T22:13:20.123Z"),
            "{}",
            w.at()
        );
        for (bad, why) in [
            (&b"{"[..], "not JSON"),
            (br#"{"hash":"00"}"#, "sequence"),
            (br#"{"sequence":1,"hash":"zz"}"#, "hash"),
            (br#"{"sequence":-1}"#, "sequence"),
        ] {
            let e = Witness::decode(bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[tokio::test]
    async fn only_moves_forward() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).await.unwrap();
        assert!(advance(&store, "dp-1", &head(5, 1)).await.unwrap());
        assert!(!advance(&store, "dp-1", &head(3, 2)).await.unwrap());
        assert!(!advance(&store, "dp-1", &head(5, 3)).await.unwrap());
        assert!(advance(&store, "dp-2", &head(1, 4)).await.unwrap());
        assert!(advance(&store, "dp-1", &head(9, 5)).await.unwrap());
        store
            .put(&format!("{WITNESS_PREFIX}dp-3"), b"junk".to_vec(), None)
            .await
            .unwrap();
        let w = Witnesses::load(&store).await.unwrap();
        assert_eq!(w.nodes.len(), 2);
        assert_eq!(w.nodes["dp-1"].head, head(9, 5));
        assert_eq!(w.nodes["dp-2"].head, head(1, 4));
        assert_eq!(w.unreadable.len(), 1);
        assert_eq!(w.unreadable[0].0, "dp-3");
        // An unreadable one is replaced.
        assert!(advance(&store, "dp-3", &head(2, 6)).await.unwrap());
        assert!(Witnesses::load(&store).await.unwrap().unreadable.is_empty());
    }
}
