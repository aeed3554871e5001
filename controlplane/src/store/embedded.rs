//! [`EmbeddedStore`]: the single-machine store, with etcd's semantics.
//!
//! * **Durability.** Every change is one record appended to `store.log` in
//!   the store directory (length, CRC-32, payload; see `wal.rs`) and
//!   `fdatasync`ed before the call returns. On open the log is replayed; a
//!   torn last record (a crash mid-write) is cut off, damage followed by more
//!   records is refused as [`StoreError::Corrupt`].
//! * **History.** The whole log is replayed into memory on open, so watches
//!   can start at any revision since the store was created and
//!   [`StoreError::Compacted`] never happens. The log is not compacted:
//!   memory and disk grow with the number of changes, which suits
//!   configuration-sized data (the control plane's use).
//! * **Leases** live in memory only and do not survive a restart: on open,
//!   every key that was attached to a lease is deleted in one new revision
//!   (with delete events for watchers starting before it), just as if the
//!   lease had expired while the store was down. A background task checks
//!   lease deadlines every 100 ms.
//! * **Exclusivity.** `open` takes an exclusive `flock` on `LOCK` in the
//!   directory; a second open (from any process) fails with
//!   [`StoreError::Locked`] once the lock has stayed taken for a second. The
//!   lock is released when the last clone of the store is dropped (which may
//!   happen a moment later on another thread: hence the second).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::wal::{self, Op, Record};
use super::{
    check_cas, check_key, check_start_revision, ttl_secs, BoxFuture, KeyValue, LeaseId, Result,
    Revision, Store, StoreError, WatchEvent, WatchEventKind, WatchStream,
};

/// How long `open` waits for a taken lock before reporting
/// [`StoreError::Locked`].
const LOCK_GRACE: Duration = Duration::from_secs(1);

/// Name of the log file inside the store directory.
pub const LOG_FILE_NAME: &str = "store.log";
/// Name of the lock file inside the store directory.
pub const LOCK_FILE_NAME: &str = "LOCK";
/// How often lease deadlines are checked.
const LEASE_TICK: Duration = Duration::from_millis(100);

/// A directory-backed store for one machine. Cheap to clone (all clones
/// share one state).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

struct Inner {
    dir: PathBuf,
    state: Mutex<State>,
    /// Holds the directory's `flock` for as long as the store is open.
    _lock: File,
}

struct Watcher {
    prefix: String,
    tx: mpsc::UnboundedSender<Result<WatchEvent>>,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

struct State {
    revision: Revision,
    kvs: BTreeMap<String, KeyValue>,
    /// Every event since the log began, in revision order.
    history: Vec<WatchEvent>,
    watchers: Vec<Watcher>,
    leases: HashMap<LeaseId, Lease>,
    next_lease: LeaseId,
    log: File,
    log_len: u64,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`. Must be called inside a
    /// tokio runtime (it starts the lease expiry task).
    pub async fn open(dir: &Path) -> Result<Self> {
        let dir = dir.to_path_buf();
        let inner = tokio::task::spawn_blocking(move || Inner::open(dir))
            .await
            .map_err(|e| StoreError::Other(format!("opening the store failed: {e}")))??;
        let inner = Arc::new(inner);
        tokio::spawn(expire_leases(Arc::downgrade(&inner)));
        Ok(EmbeddedStore { inner })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.lock()
    }

    /// Runs `f` on the state in a blocking thread (writes `fsync`).
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut State) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut inner.lock()))
            .await
            .map_err(|e| StoreError::Other(format!("store write task failed: {e}")))?
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied change:
        // `commit` writes the log before touching memory.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(dir: PathBuf) -> Result<Inner> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| StoreError::io(format!("opening {}", lock_path.display()), e))?;
        // The last clone of a store closed a moment ago may still be on its
        // way out on another thread (the lease task holds one for a few
        // microseconds every tick): a lock that stays taken for
        // `LOCK_GRACE` is another owner's.
        let since = Instant::now();
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(StoreError::io(
                    format!("locking {}", lock_path.display()),
                    err,
                ));
            }
            if since.elapsed() >= LOCK_GRACE {
                return Err(StoreError::Locked {
                    dir,
                    lock_file: lock_path,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }

        let log_path = dir.join(LOG_FILE_NAME);
        let mut log = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log_path)
            .map_err(|e| StoreError::io(format!("opening {}", log_path.display()), e))?;
        let mut buf = Vec::new();
        log.read_to_end(&mut buf)
            .map_err(|e| StoreError::io(format!("reading {}", log_path.display()), e))?;
        let replay = wal::decode_all(&buf).map_err(|e| match e {
            // Name the damaged file: the operator has to act on it.
            StoreError::Corrupt(m) => StoreError::Corrupt(format!("{}: {m}", log_path.display())),
            e => e,
        })?;
        let io = |what: &str, e| StoreError::io(format!("{what} {}", log_path.display()), e);
        if replay.torn {
            tracing::warn!(
                log = %log_path.display(),
                valid_len = replay.valid_len,
                file_len = buf.len(),
                "store log ends in a torn record (crash during a write?); truncating it"
            );
            log.set_len(replay.valid_len)
                .and_then(|()| log.sync_all())
                .map_err(|e| io("truncating", e))?;
        }
        let mut log_len = replay.valid_len;
        if log_len == 0 {
            log.write_all(wal::MAGIC)
                .and_then(|()| log.sync_all())
                .map_err(|e| io("initialising", e))?;
            log_len = wal::MAGIC.len() as u64;
            // Make the new file's directory entry durable too.
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io(format!("syncing {}", dir.display()), e))?;
        }

        let mut state = State {
            revision: 1,
            kvs: BTreeMap::new(),
            history: Vec::new(),
            watchers: Vec::new(),
            leases: HashMap::new(),
            next_lease: initial_lease_id(),
            log,
            log_len,
        };
        for rec in replay.records {
            if rec.revision <= state.revision {
                return Err(StoreError::Corrupt(format!(
                    "{}: log revision {} does not follow {}",
                    log_path.display(),
                    rec.revision,
                    state.revision
                )));
            }
            state.apply(rec);
        }
        // Leases are not durable: whatever was attached to one is gone.
        let orphans: Vec<Op> = state
            .kvs
            .values()
            .filter(|kv| kv.lease.is_some())
            .map(|kv| Op::Delete {
                key: kv.key.clone(),
            })
            .collect();
        if !orphans.is_empty() {
            tracing::info!(
                keys = orphans.len(),
                "deleting keys whose leases ended with the previous run"
            );
            state.commit(orphans)?;
        }
        Ok(Inner {
            dir,
            state: Mutex::new(state),
            _lock: lock,
        })
    }
}

/// Lease ids are not reused across restarts (a client holding an old id
/// must get "not found", not someone else's lease): start from the clock.
fn initial_lease_id() -> LeaseId {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(1);
    LeaseId::try_from(micros).unwrap_or(1).max(1)
}

async fn expire_leases(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(LEASE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let now = Instant::now();
        let due = strong.lock().leases.values().any(|l| l.deadline <= now);
        if due {
            let _ = tokio::task::spawn_blocking(move || {
                let mut st = strong.lock();
                let expired: Vec<LeaseId> = st
                    .leases
                    .iter()
                    .filter(|(_, l)| l.deadline <= now)
                    .map(|(id, _)| *id)
                    .collect();
                for id in expired {
                    if let Err(e) = st.revoke(id) {
                        tracing::warn!(lease = id, error = %e, "expiring lease failed; will retry");
                    }
                }
            })
            .await;
        } else {
            drop(strong);
        }
    }
}

impl State {
    /// Appends `ops` as the next revision (durably), then applies them.
    fn commit(&mut self, ops: Vec<Op>) -> Result<Revision> {
        let rec = Record {
            revision: self.revision + 1,
            ops,
        };
        let bytes = wal::encode(&rec);
        let written = self
            .log
            .write_all(&bytes)
            .and_then(|()| self.log.sync_data());
        if let Err(e) = written {
            // Don't leave a partial record for the next append to follow.
            let _ = self.log.set_len(self.log_len);
            return Err(StoreError::io("appending to the store log", e));
        }
        self.log_len += bytes.len() as u64;
        let revision = rec.revision;
        self.apply(rec);
        Ok(revision)
    }

    /// Applies a record (already durable) to the index, history, leases and
    /// watchers.
    fn apply(&mut self, rec: Record) {
        let revision = rec.revision;
        self.revision = revision;
        for op in rec.ops {
            let event = match op {
                Op::Put { key, value, lease } => {
                    let create_revision = match self.kvs.get(&key) {
                        Some(old) => {
                            let (old_lease, created) = (old.lease, old.create_revision);
                            self.detach(old_lease, &key);
                            created
                        }
                        None => revision,
                    };
                    if let Some(l) = lease.and_then(|id| self.leases.get_mut(&id)) {
                        l.keys.insert(key.clone());
                    }
                    let kv = KeyValue {
                        key: key.clone(),
                        value,
                        create_revision,
                        mod_revision: revision,
                        lease,
                    };
                    self.kvs.insert(key, kv.clone());
                    WatchEvent {
                        kind: WatchEventKind::Put,
                        kv,
                        revision,
                    }
                }
                Op::Delete { key } => {
                    let Some(old) = self.kvs.remove(&key) else {
                        continue;
                    };
                    self.detach(old.lease, &key);
                    WatchEvent {
                        kind: WatchEventKind::Delete,
                        kv: KeyValue {
                            key,
                            value: Vec::new(),
                            create_revision: 0,
                            mod_revision: revision,
                            lease: None,
                        },
                        revision,
                    }
                }
            };
            self.watchers.retain(|w| {
                !event.kv.key.starts_with(&w.prefix) || w.tx.send(Ok(event.clone())).is_ok()
            });
            self.history.push(event);
        }
    }

    fn detach(&mut self, lease: Option<LeaseId>, key: &str) {
        if let Some(l) = lease.and_then(|id| self.leases.get_mut(&id)) {
            l.keys.remove(key);
        }
    }

    fn live_lease(&mut self, id: LeaseId) -> Result<&mut Lease> {
        match self.leases.get_mut(&id) {
            Some(l) if l.deadline > Instant::now() => Ok(l),
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    fn put(&mut self, key: String, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        if let Some(id) = lease {
            self.live_lease(id)?;
        }
        self.commit(vec![Op::Put { key, value, lease }])
    }

    fn delete(&mut self, key: String) -> Result<Option<Revision>> {
        if !self.kvs.contains_key(&key) {
            return Ok(None);
        }
        self.commit(vec![Op::Delete { key }]).map(Some)
    }

    fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a KeyValue> + 'a {
        self.kvs
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .map(|(_, kv)| kv)
            .take_while(move |kv| kv.key.starts_with(prefix))
    }

    fn delete_prefix(&mut self, prefix: &str) -> Result<usize> {
        let ops: Vec<Op> = self
            .keys_with_prefix(prefix)
            .map(|kv| Op::Delete {
                key: kv.key.clone(),
            })
            .collect();
        let n = ops.len();
        if n > 0 {
            self.commit(ops)?;
        }
        Ok(n)
    }

    fn put_if_mod_revision(
        &mut self,
        key: String,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<Option<Revision>> {
        let current = self.kvs.get(&key).map_or(0, |kv| kv.mod_revision);
        if current != expected {
            return Ok(None);
        }
        self.commit(vec![Op::Put {
            key,
            value,
            lease: None,
        }])
        .map(Some)
    }

    fn watch(&mut self, prefix: String, start: Option<Revision>) -> WatchStream {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(start) = start {
            let from = self.history.partition_point(|e| e.revision < start);
            for e in &self.history[from..] {
                if e.kv.key.starts_with(&prefix) {
                    // The receiver is still held here; this cannot fail.
                    let _ = tx.send(Ok(e.clone()));
                }
            }
        }
        self.watchers.push(Watcher { prefix, tx });
        Box::pin(UnboundedReceiverStream::new(rx))
    }

    fn grant(&mut self, ttl: Duration) -> LeaseId {
        let id = self.next_lease;
        self.next_lease += 1;
        self.leases.insert(
            id,
            Lease {
                ttl,
                deadline: Instant::now() + ttl,
                keys: BTreeSet::new(),
            },
        );
        id
    }

    fn keep_alive(&mut self, id: LeaseId) -> Result<Duration> {
        let lease = self.live_lease(id)?;
        lease.deadline = Instant::now() + lease.ttl;
        Ok(lease.ttl)
    }

    /// Deletes the lease's keys (one revision) and forgets the lease. If the
    /// delete cannot be written, the lease stays (and is retried on expiry).
    fn revoke(&mut self, id: LeaseId) -> Result<()> {
        let lease = self.leases.get(&id).ok_or(StoreError::LeaseNotFound(id))?;
        let ops: Vec<Op> = lease
            .keys
            .iter()
            .map(|k| Op::Delete { key: k.clone() })
            .collect();
        if !ops.is_empty() {
            self.commit(ops)?;
        }
        self.leases.remove(&id);
        Ok(())
    }
}

impl Store for EmbeddedStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        Box::pin(async move { Ok(self.state().kvs.get(key).cloned()) })
    }

    fn get_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<(Vec<KeyValue>, Revision)>> {
        Box::pin(async move {
            let st = self.state();
            let kvs = st.keys_with_prefix(prefix).cloned().collect();
            Ok((kvs, st.revision))
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'a, Result<Revision>> {
        Box::pin(async move {
            check_key(key)?;
            let key = key.to_owned();
            self.write(move |st| st.put(key, value, lease)).await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Revision>>> {
        Box::pin(async move {
            check_key(key)?;
            let key = key.to_owned();
            self.write(move |st| st.delete(key)).await
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<usize>> {
        Box::pin(async move {
            let prefix = prefix.to_owned();
            self.write(move |st| st.delete_prefix(&prefix)).await
        })
    }

    fn txn_put_if_mod_revision<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected_mod_revision: Revision,
    ) -> BoxFuture<'a, Result<Option<Revision>>> {
        Box::pin(async move {
            check_cas(key, expected_mod_revision)?;
            let key = key.to_owned();
            self.write(move |st| st.put_if_mod_revision(key, value, expected_mod_revision))
                .await
        })
    }

    fn watch_prefix<'a>(
        &'a self,
        prefix: &'a str,
        start_revision: Option<Revision>,
    ) -> BoxFuture<'a, Result<WatchStream>> {
        Box::pin(async move {
            let start = check_start_revision(start_revision)?;
            Ok(self.state().watch(prefix.to_owned(), start))
        })
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId>> {
        Box::pin(async move {
            let ttl = Duration::from_secs(ttl_secs(ttl).unsigned_abs());
            Ok(self.state().grant(ttl))
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<Duration>> {
        Box::pin(async move { self.state().keep_alive(lease) })
    }

    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.write(move |st| st.revoke(lease)).await })
    }

    fn revision(&self) -> BoxFuture<'_, Result<Revision>> {
        Box::pin(async move { Ok(self.state().revision) })
    }
}
