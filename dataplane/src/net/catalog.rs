//! Reading the target's catalog for column origins (`mask::origins`): on a
//! fresh target connection, after its login and before the client's first
//! statement, when this worker holds no recent read for the target database
//! and profile.
//!
//! One whole read per worker, target database and profile, kept for
//! `limits.column_origins_max_age_ms` (0: read at every login). Once a
//! session on any core sees a result from a relation newer than a read,
//! the next login on each core continues that core's read with the
//! relations created since (a small query; not within [`MIN_REREAD`] of
//! the last read). While one login reads again, the others on that core
//! use the previous read (unless every login must read), so an expiry does
//! not send every login of the moment to the catalog.
//!
//! Each read is two queries: the columns ([`catalog_query`]), then the
//! views, relation names and functions that lead to them ([`view_query`]).
//!
//! A read the server refuses (an error) is logged and counted, leaves the
//! last read in use if there is one (else rules by result names), and is
//! not tried again until the period is over; a read that does not finish in
//! `connect_timeout_ms` ends the session (the connection is mid-answer).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::mask::origins::{catalog_query, view_query};
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

/// A read younger than this is kept even when a newer relation has been
/// seen (a session per login creating a temporary table would otherwise
/// cost a read per login).
pub const MIN_REREAD: Duration = Duration::from_secs(1);

/// A worker's catalog reads, by target database.
pub struct OriginsCache {
    entries: RefCell<HashMap<String, Entry>>,
    /// Bumped when a read goes stale ([`NEWER_SEEN`]; tests give their own).
    epoch: &'static AtomicU64,
}

impl Default for OriginsCache {
    fn default() -> Self {
        OriginsCache {
            entries: RefCell::default(),
            epoch: &NEWER_SEEN,
        }
    }
}

struct Entry {
    /// The engine whose name rules chose the columns kept.
    engine: std::sync::Weak<Engine>,
    /// When the whole catalog was last read, and when the last read (whole
    /// or continued) was.
    whole_at: Instant,
    read_at: Instant,
    /// The cache's epoch ([`NEWER_SEEN`]) before the last read.
    epoch: u64,
    /// `None`: the server refused the query.
    origins: Option<Arc<ColumnOrigins>>,
    /// A login is reading it again now: other logins use this one
    /// meanwhile, rather than all reading at once when it expires.
    reading: bool,
}

/// What a login needs from the cache.
enum Need {
    /// A read this recent: use it.
    Use(Option<Arc<ColumnOrigins>>),
    /// The relations created since this read, added to it.
    Continue(Arc<ColumnOrigins>),
    /// The whole catalog (with the last read for this engine, expired, to
    /// keep if the server refuses the new one).
    Whole(Option<Arc<ColumnOrigins>>),
}

impl OriginsCache {
    fn need(&self, key: &str, engine: &Arc<Engine>, max_age: Duration, now: Instant) -> Need {
        let e = self.entries.borrow();
        let Some(e) = e.get(key) else {
            return Need::Whole(None);
        };
        let same = std::ptr::eq(e.engine.as_ptr(), Arc::as_ptr(engine));
        if !same {
            return Need::Whole(None);
        }
        if e.reading && !max_age.is_zero() {
            return Need::Use(e.origins.clone());
        }
        if now.saturating_duration_since(e.whole_at) >= max_age {
            return Need::Whole(e.origins.clone());
        }
        let newer = e.epoch != self.epoch.load(Relaxed);
        match &e.origins {
            Some(o) if newer && now.saturating_duration_since(e.read_at) >= MIN_REREAD => {
                Need::Continue(o.clone())
            }
            o => Need::Use(o.clone()),
        }
    }

    fn store(
        &self,
        key: String,
        engine: &Arc<Engine>,
        epoch: u64,
        whole: bool,
        origins: Option<Arc<ColumnOrigins>>,
        now: Instant,
    ) {
        let mut entries = self.entries.borrow_mut();
        let whole_at = match entries.get(&key) {
            Some(e) if !whole => e.whole_at,
            _ => now,
        };
        entries.insert(
            key,
            Entry {
                engine: Arc::downgrade(engine),
                whole_at,
                read_at: now,
                epoch,
                origins,
                reading: false,
            },
        );
    }

    /// A login reads `key` again now (or stopped without a result).
    fn set_reading(&self, key: &str, reading: bool) {
        if let Some(e) = self.entries.borrow_mut().get_mut(key) {
            e.reading = reading;
        }
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
    engine: &Arc<Engine>,
    io: &mut TargetIo,
    after: &mut Vec<u8>,
    server_major: Option<u32>,
) -> Result<Option<Arc<ColumnOrigins>>, TargetError> {
    let limits = &worker.shared.limits;
    if !limits.column_origins || !engine.enabled() || !engine.has_name_rules() {
        return Ok(None);
    }
    let key = format!(
        "{}\0{}\0{}\0{}",
        conn.name, conn.host, conn.port, conn.database
    );
    let max_age = Duration::from_millis(limits.column_origins_max_age_ms);
    // `prev`: the last read, kept if the server refuses this one (an older
    // read masks more than none).
    let (start, whole, prev) = match worker.origins.need(&key, engine, max_age, Instant::now()) {
        Need::Use(o) => return Ok(o),
        Need::Continue(o) => (o.continued(), false, Some(o)),
        Need::Whole(prev) => (ColumnOrigins::new(), true, prev),
    };
    // (Cleared however this ends: a result, an error, or the session's
    // future dropped mid-read.)
    struct Reading<'a>(&'a OriginsCache, &'a str);
    impl Drop for Reading<'_> {
        fn drop(&mut self) {
            self.0.set_reading(self.1, false);
        }
    }
    worker.origins.set_reading(&key, true);
    let reading = Reading(&worker.origins, &key);
    let epoch = worker.origins.epoch.load(Relaxed);
    let limit = Duration::from_millis(limits.connect_timeout_ms);
    let read = monoio::time::timeout(
        limit,
        read(
            engine,
            start,
            io,
            limits.max_frame_bytes,
            after,
            // (`attgenerated` is there from PostgreSQL 12 on.)
            server_major.is_some_and(|m| m >= 12),
        ),
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
            let then = if prev.is_some() {
                "the last read stays in use"
            } else {
                "column rules match result names only"
            };
            tracing::warn!(
                connection = %conn.name,
                "the target refused the column catalog query ({refused}); {then} until the next read"
            );
            prev
        }
        Ok(Ok((mut o, views_refused))) => {
            o.notify_stale(worker.origins.epoch);
            let n = if views_refused.is_some() {
                &worker.metrics.origin_reads_failed
            } else if whole {
                &worker.metrics.origin_reads
            } else {
                &worker.metrics.origin_reads_continued
            };
            bump(n, 1);
            if let Some(refused) = views_refused {
                // (The new columns, which still follow aliases: a last read
                // kept instead would hide the relations created since.)
                tracing::warn!(
                    connection = %conn.name,
                    "the target refused the view read ({refused}); view columns match by their own names until the next read"
                );
            }
            if o.dropped() > 0 {
                tracing::warn!(
                    connection = %conn.name,
                    kept = o.len(),
                    dropped = o.dropped(),
                    "more catalog columns match name rules than are kept; the rest match by result name only"
                );
            }
            tracing::debug!(connection = %conn.name, whole, columns = o.len(), newest = o.newest_relation(), "column catalog read");
            Some(Arc::new(o))
        }
    };
    drop(reading);
    worker
        .origins
        .store(key, engine, epoch, whole, origins.clone(), Instant::now());
    Ok(origins)
}

/// Run the query for the relations newer than `origins`' (all of them for a
/// new one) and add its rows, then the view read ([`view_query`]: views
/// over the relations with ruled columns or JSON and composite ones,
/// those relations' names, functions), and resolve the views. Outer `Err`: the
/// connection failed or the answer did not parse (the session cannot go
/// on); inner `Err`: the server's error message for the column query.
/// With the read, the server's error for the view read, if it refused it
/// (the columns are kept; views are then followed by their own names
/// only).
async fn read(
    engine: &Engine,
    mut origins: ColumnOrigins,
    io: &mut TargetIo,
    max_frame: u32,
    after: &mut Vec<u8>,
    generated: bool,
) -> Result<Result<(ColumnOrigins, Option<String>), String>, String> {
    let keep = |name: &[u8]| engine.name_ruled(name);
    let sql = catalog_query(origins.newest_relation(), generated);
    let mut reader = PacketReader::new();
    let columns = run(io, &mut reader, &sql, max_frame, after, |row| {
        origins.add_row(row, keep).is_ok()
    })
    .await?;
    if let Err(m) = columns {
        after.extend_from_slice(reader.leftover());
        return Ok(Err(m));
    }
    // (Two long fields in a row under the frame limit.)
    let cap = (max_frame.saturating_sub(512) / 2).min(VIEW_FIELD_CAP);
    let sql = view_query(&origins.ruled_relations(), cap as usize);
    let viewed = run(io, &mut reader, &sql, max_frame, after, |row| {
        origins.add_view_row(row).is_ok()
    })
    .await?;
    origins.resolve_views(engine);
    after.extend_from_slice(reader.leftover());
    Ok(Ok((origins, viewed.err())))
}

/// Longest field of a view read row: longer ones come as NULL (the view
/// then masks more).
const VIEW_FIELD_CAP: u32 = 4 << 20;

/// Send simple Query `sql` and hand each DataRow body to `row` (false: the
/// row does not parse) until ReadyForQuery (`reader` keeps what came
/// after it). Outer `Err`: the connection
/// failed or the answer did not parse; inner `Err`: the server's error.
async fn run(
    io: &mut TargetIo,
    reader: &mut PacketReader,
    sql: &str,
    max_frame: u32,
    after: &mut Vec<u8>,
    mut row: impl FnMut(&[u8]) -> bool,
) -> Result<Result<(), String>, String> {
    let mut body = Vec::with_capacity(sql.len() + 1);
    body.extend_from_slice(sql.as_bytes());
    body.push(0);
    let mut q = Vec::with_capacity(body.len() + 5);
    backend::message(&mut q, b'Q', &body);
    write_all(io, q).await.map_err(|e| e.to_string())?;
    let mut refused = None;
    loop {
        let (tag, body) = match reader.read_tagged(io, max_frame).await {
            Ok(m) => m,
            Err(ReadError::Eof) => return Err("the target closed the connection".into()),
            Err(ReadError::Io(e)) => return Err(e.to_string()),
            Err(ReadError::BadLength(l)) => return Err(format!("invalid message length {l}")),
        };
        match tag {
            b'D' if refused.is_none() && !row(&body) => {
                refused = Some("a row of the answer does not parse".to_string());
            }
            b'D' => {}
            b'E' => {
                let f = backend::parse_error_fields(&body);
                refused = Some(format!("{}: {}", f.code, f.message));
            }
            b'Z' => break,
            // A setting the server reports meanwhile is the client's to
            // know (after the login's ReadyForQuery, as PostgreSQL may).
            b'S' => backend::message(after, b'S', &body),
            // RowDescription, CommandComplete, this query's notices.
            _ => {}
        }
    }
    Ok(match refused {
        Some(m) => Err(m),
        None => Ok(()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::MaskingProfile;

    fn engine() -> Arc<Engine> {
        Engine::compile_shared(&MaskingProfile::default()).unwrap()
    }

    fn kind(n: &Need) -> &'static str {
        match n {
            Need::Use(Some(_)) => "use",
            Need::Use(None) => "use-refused",
            Need::Continue(_) => "continue",
            Need::Whole(None) => "whole",
            Need::Whole(Some(_)) => "whole-again",
        }
    }

    /// A cache with an epoch of its own (tests run at once).
    fn cache() -> OriginsCache {
        OriginsCache {
            entries: RefCell::default(),
            epoch: Box::leak(Box::new(AtomicU64::new(0))),
        }
    }

    /// Store a successful read (no columns) of `db` made at `at`.
    fn read_at(c: &OriginsCache, e: &Arc<Engine>, whole: bool, o: ColumnOrigins, at: Instant) {
        let epoch = c.epoch.load(Relaxed);
        c.store("db".into(), e, epoch, whole, Some(Arc::new(o)), at);
    }

    #[test]
    fn a_read_is_used_until_it_is_old_or_the_engine_changes() {
        let c = cache();
        let (e, other) = (engine(), engine());
        let t0 = Instant::now();
        let max = Duration::from_secs(60);
        assert_eq!(kind(&c.need("db", &e, max, t0)), "whole");
        read_at(&c, &e, true, ColumnOrigins::new(), t0);
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(kind(&c.need("db", &e, max, at(59))), "use");
        assert_eq!(kind(&c.need("db", &e, max, at(60))), "whole-again");
        assert_eq!(kind(&c.need("db", &other, max, at(1))), "whole");
        assert_eq!(kind(&c.need("other db", &e, max, at(1))), "whole");
        assert_eq!(kind(&c.need("db", &e, Duration::ZERO, t0)), "whole-again");
    }

    #[test]
    fn a_newer_relation_continues_the_read_after_a_second() {
        let c = cache();
        let e = engine();
        let t0 = Instant::now();
        let max = Duration::from_secs(60);
        let epoch = c.epoch.load(Relaxed);
        let mut o = ColumnOrigins::new();
        o.notify_stale(c.epoch);
        let o = Arc::new(o);
        c.store("db".into(), &e, epoch, true, Some(o.clone()), t0);
        // A result from relation 1 is newer than this empty read's newest (0).
        o.saw_relation(1);
        assert!(c.epoch.load(Relaxed) > epoch);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(kind(&c.need("db", &e, max, at(999))), "use");
        assert_eq!(kind(&c.need("db", &e, max, at(1000))), "continue");
        // A continued read keeps the whole read's time: the next whole read
        // is still due 60 s after the first.
        read_at(&c, &e, false, o.continued(), at(1000));
        assert_eq!(kind(&c.need("db", &e, max, at(59_999))), "use");
        assert_eq!(kind(&c.need("db", &e, max, at(60_000))), "whole-again");
    }

    #[test]
    fn while_one_login_reads_again_the_others_use_the_last_read() {
        let c = cache();
        let (e, other) = (engine(), engine());
        let t0 = Instant::now();
        let max = Duration::from_secs(60);
        read_at(&c, &e, true, ColumnOrigins::new(), t0);
        let late = t0 + Duration::from_secs(61);
        assert_eq!(kind(&c.need("db", &e, max, late)), "whole-again");
        c.set_reading("db", true);
        assert_eq!(kind(&c.need("db", &e, max, late)), "use");
        // Not for another profile, nor when every login must read.
        assert_eq!(kind(&c.need("db", &other, max, late)), "whole");
        assert_eq!(kind(&c.need("db", &e, Duration::ZERO, late)), "whole-again");
        // The read failed: the next login reads.
        c.set_reading("db", false);
        assert_eq!(kind(&c.need("db", &e, max, late)), "whole-again");
        c.set_reading("db", true);
        read_at(&c, &e, true, ColumnOrigins::new(), late);
        assert_eq!(kind(&c.need("db", &e, max, late)), "use");
    }

    #[test]
    fn a_refused_read_is_not_tried_again_until_it_is_old() {
        let c = cache();
        let e = engine();
        let t0 = Instant::now();
        let max = Duration::from_secs(60);
        c.store("db".into(), &e, 0, true, None, t0);
        // A newer relation seen since.
        c.epoch.fetch_add(1, Relaxed);
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(kind(&c.need("db", &e, max, at(5))), "use-refused");
        assert_eq!(kind(&c.need("db", &e, max, at(60))), "whole");
    }
}
