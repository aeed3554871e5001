//! Reading the target's catalog for column origins (`mask::origins`): on a
//! fresh target connection, after its login and before the client's first
//! statement, when this worker holds no recent read for the target database
//! and profile.
//!
//! One read per worker, target database and name-rule set, kept for
//! `limits.column_origins_max_age_ms` (0: read at every login), and read
//! again sooner (on every core) once a session sees a result from a
//! relation newer than its read. A read the server refuses (an error) leaves the session with rule
//! matching by result names, logged and counted, and is not tried again
//! until the period is over; a read that does not finish in
//! `connect_timeout_ms` ends the session (the connection is mid-answer).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::mask::{ColumnOrigins, Engine};
use crate::metrics::bump;
use crate::net::io::{write_all, PacketReader, ReadError, TargetIo};
use crate::protocol::backend;
use crate::session::target::TargetError;
use crate::snapshot::ConnectionEntry;

use super::Worker;

/// Bumped whenever a session on any core sees a result from a relation
/// newer than its read: every core's reads older than that are read again.
static NEWER_SEEN: AtomicU64 = AtomicU64::new(0);

/// A worker's catalog reads, by target database.
#[derive(Default)]
pub struct OriginsCache {
    entries: RefCell<HashMap<String, Entry>>,
}

struct Entry {
    /// The query (it spells the name rules it was read for).
    query: String,
    at: Instant,
    /// [`NEWER_SEEN`] before the read.
    epoch: u64,
    /// `None`: the server refused the query.
    origins: Option<Arc<ColumnOrigins>>,
}

impl OriginsCache {
    fn fresh(
        &self,
        key: &str,
        query: &str,
        max_age: Duration,
    ) -> Option<Option<Arc<ColumnOrigins>>> {
        let e = self.entries.borrow();
        let e = e.get(key)?;
        let stale = e.epoch != NEWER_SEEN.load(Relaxed);
        (e.query == query && e.at.elapsed() < max_age && !stale).then(|| e.origins.clone())
    }

    fn store(&self, key: String, query: &str, epoch: u64, origins: Option<Arc<ColumnOrigins>>) {
        self.entries.borrow_mut().insert(
            key,
            Entry {
                query: query.to_string(),
                at: Instant::now(),
                epoch,
                origins,
            },
        );
    }
}

/// The column origins for a session of `conn` masked by `engine`, from
/// this worker's cache or read now over `io` (idle, right after the
/// target's ReadyForQuery). `Ok(None)`: names only (no name rule, or the
/// server refused the query). Bytes the target sent past the answer's
/// ReadyForQuery are appended to `after`.
pub async fn origins(
    worker: &Worker,
    conn: &ConnectionEntry,
    engine: &Engine,
    io: &mut TargetIo,
    after: &mut Vec<u8>,
) -> Result<Option<Arc<ColumnOrigins>>, TargetError> {
    let limits = &worker.shared.limits;
    let Some(query) = engine.origins_query() else {
        return Ok(None);
    };
    if !limits.column_origins {
        return Ok(None);
    }
    let key = format!(
        "{}\0{}\0{}\0{}",
        conn.name, conn.host, conn.port, conn.database
    );
    let max_age = Duration::from_millis(limits.column_origins_max_age_ms);
    if let Some(o) = worker.origins.fresh(&key, query, max_age) {
        return Ok(o);
    }
    let epoch = NEWER_SEEN.load(Relaxed);
    let limit = Duration::from_millis(limits.connect_timeout_ms);
    let read = monoio::time::timeout(
        limit,
        read(engine, query, io, limits.max_frame_bytes, after),
    );
    let failed = |message: String| TargetError {
        code: crate::protocol::sqlstate::CONNECTION_FAILURE.into(),
        message: format!(
            "reading the column catalog of the target for connection \"{}\" failed: {message}",
            conn.name
        ),
    };
    let outcome = match read.await {
        Err(_) => Err(failed(format!("no answer in {} ms", limit.as_millis()))),
        Ok(Err(e)) => Err(failed(e)),
        Ok(Ok(r)) => Ok(r),
    };
    let origins = match outcome {
        Err(e) => {
            bump(&worker.metrics.origin_reads_failed, 1);
            return Err(e);
        }
        Ok(Err(refused)) => {
            bump(&worker.metrics.origin_reads_failed, 1);
            tracing::warn!(
                connection = %conn.name,
                "the target refused the column catalog query ({refused}); column rules match result names only until the next read"
            );
            None
        }
        Ok(Ok(mut o)) => {
            o.notify_stale(&NEWER_SEEN);
            bump(&worker.metrics.origin_reads, 1);
            if o.dropped() > 0 {
                tracing::warn!(
                    connection = %conn.name,
                    kept = o.len(),
                    dropped = o.dropped(),
                    "more catalog columns match name rules than are kept; the rest match by result name only"
                );
            }
            tracing::debug!(connection = %conn.name, columns = o.len(), newest = o.newest_relation(), "column catalog read");
            Some(Arc::new(o))
        }
    };
    worker.origins.store(key, query, epoch, origins.clone());
    Ok(origins)
}

/// Run the query and take its rows. Outer `Err`: the connection failed or
/// the answer did not parse (the session cannot go on); inner `Err`: the
/// server's error message.
async fn read(
    engine: &Engine,
    query: &str,
    io: &mut TargetIo,
    max_frame: u32,
    after: &mut Vec<u8>,
) -> Result<Result<ColumnOrigins, String>, String> {
    let mut q = Vec::with_capacity(query.len() + 6);
    let mut body = query.as_bytes().to_vec();
    body.push(0);
    backend::message(&mut q, b'Q', &body);
    write_all(io, q).await.map_err(|e| e.to_string())?;
    let mut reader = PacketReader::new();
    let mut origins = ColumnOrigins::new();
    let mut refused = None;
    let keep = |name: &[u8]| engine.column_rule_by_name(name).is_some();
    loop {
        let (tag, body) = match reader.read_tagged(io, max_frame).await {
            Ok(m) => m,
            Err(ReadError::Eof) => return Err("the target closed the connection".into()),
            Err(ReadError::Io(e)) => return Err(e.to_string()),
            Err(ReadError::BadLength(l)) => return Err(format!("invalid message length {l}")),
        };
        match tag {
            b'D' => {
                refused = refused.or_else(|| {
                    let bad = origins.add_row(&body, keep).is_err();
                    bad.then(|| "a row of the answer does not parse".to_string())
                });
            }
            b'E' => {
                let f = backend::parse_error_fields(&body);
                refused = Some(format!("{}: {}", f.code, f.message));
            }
            b'Z' => break,
            // RowDescription, CommandComplete, notices.
            _ => {}
        }
    }
    after.extend_from_slice(reader.leftover());
    Ok(match refused {
        Some(m) => Err(m),
        None => Ok(origins),
    })
}
