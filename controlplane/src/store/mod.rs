//! The control plane's state store: revisioned keys, prefix watches and
//! leases, behind one object-safe trait ([`Store`]) with two implementations
//! that share the same semantics:
//!
//! * [`EtcdStore`]: etcd v3 (production, HA). Every key is namespaced under a
//!   configurable prefix that callers never see.
//! * [`EmbeddedStore`]: a directory-backed store for a single machine
//!   (append-only checksummed log, in-memory index and history).
//!
//! # Semantics shared by both implementations
//!
//! * The store has one revision counter. A fresh store is at revision 1 (as a
//!   fresh etcd is); every change bumps it by exactly one. A change may touch
//!   several keys ([`Store::delete_prefix`], a lease expiring), and then all of
//!   them carry the same revision. Operations that change nothing (deleting an
//!   absent key, a failed compare-and-swap) do not bump it.
//! * Keys are non-empty UTF-8 strings; `get_prefix`/`watch_prefix` with an
//!   empty prefix cover every key.
//! * A watch delivers every change with `revision >= start_revision` in
//!   revision order, then live changes. `None` (or `Some(0)`) means "changes
//!   after now". When the call returns, the watch is established: any change
//!   committed afterwards is delivered. After an `Err` item the stream ends;
//!   re-watch from the last seen revision + 1. Dropping the stream cancels it.
//! * Lease TTLs are whole seconds (rounded up, at least 1 s; etcd may raise
//!   small TTLs to its own minimum, 2 s with default settings). When a lease
//!   expires or is revoked, all keys attached to it are deleted in one
//!   revision, with a delete event each. `keep_alive` resets the lease to its
//!   full TTL and returns it.

mod embedded;
mod etcd;
mod wal;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;

pub use embedded::{EmbeddedStore, LOCK_FILE_NAME, LOG_FILE_NAME};
pub use etcd::{EtcdStore, DEFAULT_OP_TIMEOUT};

/// A store revision (etcd's `mod_revision`/header revision).
pub type Revision = i64;
/// A lease identifier.
pub type LeaseId = i64;
/// Result type of every store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
/// The boxed, `Send` future every [`Store`] method returns (keeps the trait
/// usable as `Arc<dyn Store>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A stream of watch events; ends after an `Err` item, and dropping it
/// cancels the watch.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent>> + Send + 'static>>;

/// One key with its value and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, without the store's namespace prefix.
    pub key: String,
    /// The value (empty for a delete event).
    pub value: Vec<u8>,
    /// Revision at which the key was (last) created.
    pub create_revision: Revision,
    /// Revision of the last change to the key (for a delete event: the
    /// revision of the delete).
    pub mod_revision: Revision,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted (explicitly or because its lease ended).
    Delete,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: WatchEventKind,
    /// For a put: the new key-value. For a delete: the key, an empty value,
    /// `mod_revision` = the delete's revision, `create_revision` 0, no lease.
    pub kv: KeyValue,
    /// The revision of the change.
    pub revision: Revision,
}

/// What went wrong in a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time (etcd down, no
    /// leader, connection reset, watch stream broken). Retryable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The request was refused as malformed (empty key, negative revision, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A watch asked for history that has been compacted away.
    #[error("revision {requested} has been compacted (oldest available is {oldest})")]
    Compacted {
        /// The start revision that was asked for.
        requested: Revision,
        /// The compaction revision reported by the store.
        oldest: Revision,
    },
    /// The lease does not exist (never granted, expired or revoked).
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
    /// Another process holds the embedded store's directory lock.
    #[error("store directory {} is in use by another process (lock file {} is held)", .dir.display(), .lock_file.display())]
    Locked {
        /// The store directory.
        dir: PathBuf,
        /// The lock file that is held.
        lock_file: PathBuf,
    },
    /// The embedded store's files could not be read or written.
    #[error("store I/O error: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Stored data is damaged beyond the torn last record the embedded store
    /// repairs itself, or etcd returned data this crate cannot represent.
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// Any other error reported by the store.
    #[error("store error: {0}")]
    Other(String),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The control plane's view of its store. Object safe: hold it as
/// `Arc<dyn Store>`.
pub trait Store: Send + Sync + 'static {
    /// The key-value stored under `key`, if any.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>>;

    /// Every key starting with `prefix`, sorted by key, and the store
    /// revision the read was served at.
    fn get_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<(Vec<KeyValue>, Revision)>>;

    /// Stores `value` under `key`, attached to `lease` when given (a put
    /// without a lease detaches the key from any earlier lease). Returns the
    /// revision of the change.
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<Revision>>;

    /// Deletes `key`; the revision of the delete, or `None` when it was absent.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Revision>>>;

    /// Deletes every key starting with `prefix` (in one revision); how many.
    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<usize>>;

    /// Compare-and-swap: stores `value` (without a lease) only if the key's
    /// `mod_revision` is `expected_mod_revision` (0: the key must not exist).
    /// `Some(revision)` of the put, or `None` when the compare failed.
    fn txn_put_if_mod_revision<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected_mod_revision: Revision,
    ) -> BoxFuture<'a, Result<Option<Revision>>>;

    /// Watches every key starting with `prefix`, from `start_revision`
    /// (inclusive) or from now (`None`/`Some(0)`).
    fn watch_prefix<'a>(
        &'a self,
        prefix: &'a str,
        start_revision: Option<Revision>,
    ) -> BoxFuture<'a, Result<WatchStream>>;

    /// Grants a lease of `ttl` (whole seconds, rounded up).
    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId>>;

    /// Refreshes `lease` to its full TTL and returns that TTL.
    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<Duration>>;

    /// Revokes `lease`, deleting its keys now.
    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<()>>;

    /// The current store revision.
    fn revision(&self) -> BoxFuture<'_, Result<Revision>>;
}

/// Lease TTL in whole seconds, rounded up, at least 1.
pub(crate) fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(StoreError::InvalidArgument("key must not be empty".into()));
    }
    Ok(())
}

/// Arguments of a compare-and-swap: a non-empty key and a revision that is
/// not negative (0 means "must not exist").
pub(crate) fn check_cas(key: &str, expected_mod_revision: Revision) -> Result<()> {
    check_key(key)?;
    if expected_mod_revision < 0 {
        return Err(StoreError::InvalidArgument(format!(
            "expected mod revision {expected_mod_revision} is negative"
        )));
    }
    Ok(())
}

/// `None`/`Some(0)` mean "from now"; negative revisions are refused.
pub(crate) fn check_start_revision(start: Option<Revision>) -> Result<Option<Revision>> {
    match start {
        None | Some(0) => Ok(None),
        Some(r) if r < 0 => Err(StoreError::InvalidArgument(format!(
            "watch start revision {r} is negative"
        ))),
        Some(r) => Ok(Some(r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(ttl_secs(Duration::ZERO), 1);
        assert_eq!(ttl_secs(Duration::from_secs(2)), 2);
        assert_eq!(ttl_secs(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn start_revision_validation() {
        assert_eq!(check_start_revision(None).unwrap(), None);
        assert_eq!(check_start_revision(Some(0)).unwrap(), None);
        assert_eq!(check_start_revision(Some(5)).unwrap(), Some(5));
        assert!(matches!(
            check_start_revision(Some(-1)),
            Err(StoreError::InvalidArgument(_))
        ));
    }
}
