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
use crate::protocol::frame::FrameError;
use crate::session::schema::{Change, SchemaWatch};
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

    /// Whether the worker's read of `key` is `base` (or there is none to
    /// keep over).
    fn holds(&self, key: &str, base: Option<&Arc<ColumnOrigins>>) -> bool {
        match (self.entries.borrow().get(key), base) {
            (None, _) => true,
            (Some(e), Some(b)) => e.origins.as_ref().is_some_and(|o| Arc::ptr_eq(o, b)),
            (Some(_), None) => false,
        }
    }

    /// When the read of `key` in use was whole.
    fn whole_at(&self, key: &str) -> Option<Instant> {
        self.entries.borrow().get(key).map(|e| e.whole_at)
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
    let key = cache_key(conn);
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
    let read = match outcome {
        Err(e) => {
            bump(&worker.metrics.origin_reads_failed, 1);
            return Err(e);
        }
        Ok(r) => r,
    };
    let origins = settle(worker, &conn.name, whole, prev, read);
    drop(reading);
    worker
        .origins
        .store(key, engine, epoch, whole, origins.clone(), Instant::now());
    Ok(origins)
}

/// The cache's key for `conn`'s target database.
fn cache_key(conn: &ConnectionEntry) -> String {
    format!(
        "{}\0{}\0{}\0{}",
        conn.name, conn.host, conn.port, conn.database
    )
}

/// What a read (at login or a session's own) leaves in use, counted and
/// logged: the read; the server's error for the column query (the last
/// read, `prev`, stays); or the columns without views (the server refused
/// the view read).
fn settle(
    worker: &Worker,
    conn: &str,
    whole: bool,
    prev: Option<Arc<ColumnOrigins>>,
    read: Result<(ColumnOrigins, Option<String>), String>,
) -> Option<Arc<ColumnOrigins>> {
    match read {
        Err(refused) => {
            bump(&worker.metrics.origin_reads_failed, 1);
            let then = if prev.is_some() {
                "the last read stays in use"
            } else {
                "column rules match result names only"
            };
            tracing::warn!(
                connection = %conn,
                "the target refused the column catalog query ({refused}); {then} until the next read"
            );
            prev
        }
        Ok((mut o, views_refused)) => {
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
                    connection = %conn,
                    "the target refused the view read ({refused}); view columns match by their own names until the next read"
                );
            }
            if o.dropped() > 0 {
                tracing::warn!(
                    connection = %conn,
                    kept = o.len(),
                    dropped = o.dropped(),
                    "more catalog columns match name rules than are kept; the rest match by result name only"
                );
            }
            tracing::debug!(connection = %conn, whole, columns = o.len(), newest = o.newest_relation(), "column catalog read");
            Some(Arc::new(o))
        }
    }
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
    let sql = format!(
        "{CATALOG_PATH}{}",
        catalog_query(origins.newest_relation(), generated)
    );
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
    let sql = format!(
        "{CATALOG_PATH}{}",
        view_query(&origins.ruled_relations(), cap as usize)
    );
    let viewed = run(io, &mut reader, &sql, max_frame, after, |row| {
        origins.add_view_row(row).is_ok()
    })
    .await?;
    origins.resolve_views(engine);
    after.extend_from_slice(reader.leftover());
    Ok(Ok((origins, viewed.err())))
}

/// A session's own catalog read, between its statements: after the
/// session changed the schema (a `CREATE VIEW`, `CREATE FUNCTION`, `ALTER
/// TABLE`, `DO`, a `CREATE TABLE … AS` …), when its read is older than
/// `limits.column_origins_max_age_ms`, when a result came from a relation
/// newer than its read, or when its profile changed. Another session's
/// read on this core that is recent enough is taken instead, except after
/// the session's own schema change.
///
/// The read goes to the target on the session's own connection, just
/// before a client request, only when nothing is in flight: no answer
/// outstanding, both streams at a frame boundary, no extended-protocol
/// batch open. It is the login's read in two steps (the view query is
/// built from the column rows): the column query is sent and answered
/// while the client's request waits, then the view query goes in front of
/// it. Both are simple Queries with `search_path` set to `pg_catalog` for
/// their own transaction, so only before a client's simple Query, or
/// before an extended-protocol request when the client keeps no unnamed
/// statement (or a Parse replaces it first) nor unnamed portal. In a
/// transaction block (`T`) only after the session's own schema change
/// (before it, a read would take the block's snapshot, and `SET
/// TRANSACTION` would then fail), inside a savepoint rolled back after it,
/// so a refused read cannot abort the block. Its answers are taken off
/// the stream ([`SessionCatalog::take_answers`]); the client's requests
/// follow unchanged.
pub struct SessionCatalog {
    /// (None in unit tests.)
    worker: Option<std::rc::Rc<Worker>>,
    key: String,
    conn: String,
    generated: bool,
    /// Longest field of the view read.
    cap: usize,
    /// When the read in use was whole, and the engine it was read for.
    whole_at: Instant,
    engine: std::sync::Weak<Engine>,
    /// What a statement since the last read may have changed.
    changed: Option<Change>,
    /// What the read in progress was sent for: put back in `changed` when
    /// the server refuses it (the masker fails closed until a read knows
    /// the change, so it is tried again, after [`MIN_REREAD`]).
    reading_change: Option<Change>,
    /// A change was told since the last refused read (a new change reads
    /// at once, refused or not).
    change_told: bool,
    /// A change was told and its ReadyForQuery not yet seen.
    change_unseen: bool,
    /// The transaction block in progress changed the schema itself (only
    /// then may a read go inside it: its snapshot is taken).
    block_changed: bool,
    /// The server refused the last own read: not tried again until then
    /// (unless the schema changes).
    refused_until: Option<Instant>,
    /// The reads' statement and lock timeout.
    limit_ms: u64,
    own: Option<OwnRead>,
    /// Frames for the client that came during the own read (notifications,
    /// settings), forwarded after its answers.
    pass: Vec<u8>,
    watch: SchemaWatch,
}

/// What a session does before a client request.
pub enum Begin {
    Nothing,
    /// Take this read (another session's on this core).
    Adopt(Option<Arc<ColumnOrigins>>),
    /// Send this column query, wait for its answers
    /// ([`Taken::Columns`]), then send [`SessionCatalog::views`].
    Send(Vec<u8>),
}

/// What [`SessionCatalog::take_answers`] took.
pub enum Taken {
    /// The answers go on (`buf` keeps at most the start of a frame).
    Pending,
    /// The column query is answered: the views go next.
    Columns,
    /// All answers are taken; `buf` is what follows them, for the client.
    /// `waiting`: it ended before the view query was sent.
    Done { own: Box<OwnRead>, waiting: bool },
    /// What came is not the answer to the read (its marker is not first):
    /// the server answers something else, which the session cannot tell
    /// apart any more. It ends.
    Misaligned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Columns,
    Between,
    Views,
}

/// A session's read whose answers are outstanding.
pub struct OwnRead {
    engine: Arc<Engine>,
    origins: ColumnOrigins,
    /// The read in use, kept if the server refuses this one.
    prev: Option<Arc<ColumnOrigins>>,
    /// The read this one continues (for the cache: stored only over it).
    base: Option<Arc<ColumnOrigins>>,
    whole: bool,
    /// Sent in a transaction block: what it sees may not be committed,
    /// so it is not the worker's to keep.
    in_block: bool,
    epoch: u64,
    stage: Stage,
    /// ReadyForQuery answers still to come in this stage, and which of
    /// its Queries is answered.
    left: u8,
    query: u8,
    refused: Option<String>,
    views_refused: Option<String>,
    /// Where the answer to this stage's first Query is with its marker.
    marker: Marker,
}

/// The marker that opens the answer of each of a read's queries (a one-row
/// result whose column has [`own_savepoint`]'s name): the read takes
/// nothing as its own before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    /// Not seen yet: only CommandCompletes (SAVEPOINT, SET) may come first.
    Awaiting,
    /// Its row description came: its row and CommandComplete follow.
    In,
    Seen,
    /// Not asked for (the Query that ends the savepoint).
    None,
}

/// The marker's query ([`Marker`]).
fn marker_sql() -> String {
    format!("SELECT 1 AS {}; ", own_savepoint())
}

/// The savepoint an own read inside a transaction block runs in. With a
/// random part drawn once per process: no client's savepoint has it.
fn own_savepoint() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let mut r = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r);
        let mut n = b"sluice_catalog_".to_vec();
        crate::protocol::hex_into(&mut n, &r);
        String::from_utf8(n).expect("ascii")
    })
}

/// Before each query of a read: names resolve in `pg_catalog` alone for the
/// rest of its transaction (a client's `search_path` cannot put its own
/// operators in front).
const CATALOG_PATH: &str = "SET LOCAL search_path = pg_catalog; ";

/// Before each query of a session's own read, with [`CATALOG_PATH`]: its
/// own time limits, whatever the client set (`limit_ms`: the gateway's
/// `connect_timeout_ms`).
fn session_settings(limit_ms: u64) -> String {
    // (PostgreSQL takes at most i32::MAX ms; 0 would be no limit.)
    let ms = limit_ms.clamp(1, i32::MAX as u64);
    format!("{CATALOG_PATH}SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms}; ")
}

fn query(out: &mut Vec<u8>, sql: &str) {
    let mut body = Vec::with_capacity(sql.len() + 1);
    body.extend_from_slice(sql.as_bytes());
    body.push(0);
    backend::message(out, b'Q', &body);
}

impl SessionCatalog {
    /// For a session of `conn` whose login read (if any) was made for
    /// `engine`.
    pub fn new(
        worker: &std::rc::Rc<Worker>,
        conn: &ConnectionEntry,
        engine: Option<&Arc<Engine>>,
        server_major: Option<u32>,
    ) -> SessionCatalog {
        let key = cache_key(conn);
        let limits = &worker.shared.limits;
        let whole_at = worker.origins.whole_at(&key).unwrap_or_else(Instant::now);
        // (`Drop` rules out a struct update from `idle`.)
        let mut c = SessionCatalog::idle(key, conn.name.clone(), whole_at);
        c.worker = Some(worker.clone());
        c.generated = server_major.is_some_and(|m| m >= 12);
        c.cap = (limits.max_frame_bytes.saturating_sub(512) / 2).min(VIEW_FIELD_CAP) as usize;
        c.engine = engine.map(Arc::downgrade).unwrap_or_default();
        c.limit_ms = limits.connect_timeout_ms;
        c
    }

    /// Nothing read, changed or sent yet, and no worker (the parts `new`
    /// sets, at their zero).
    fn idle(key: String, conn: String, whole_at: Instant) -> SessionCatalog {
        SessionCatalog {
            worker: None,
            key,
            conn,
            generated: false,
            cap: 0,
            whole_at,
            engine: std::sync::Weak::new(),
            changed: None,
            reading_change: None,
            change_told: false,
            change_unseen: false,
            block_changed: false,
            refused_until: None,
            limit_ms: 0,
            own: None,
            pass: Vec::new(),
            watch: SchemaWatch::default(),
        }
    }

    /// An own read's answers are outstanding.
    pub fn reading(&self) -> bool {
        self.own.is_some()
    }

    /// A complete frame the client is sent (CommandComplete tags tell
    /// schema changes).
    pub fn client_frame(&mut self, t: u8, body: &[u8]) {
        if let Some(c) = self.watch.frame(t, body) {
            self.changed = self.changed.max(Some(c));
            self.change_unseen = true;
            self.change_told = true;
        }
        if t == b'Z' {
            match body.first() {
                Some(b'I') => self.block_changed = false,
                Some(_) if self.change_unseen => self.block_changed = true,
                _ => {}
            }
            self.change_unseen = false;
        }
    }

    /// Before a client request that may be preceded by an own read
    /// (see [`SessionCatalog`]), with the connection in transaction status
    /// `status` and `current` the read in use, for `engine`.
    pub fn begin(
        &mut self,
        worker: &Worker,
        engine: &Arc<Engine>,
        current: Option<&Arc<ColumnOrigins>>,
        status: u8,
        now: Instant,
    ) -> Begin {
        let limits = &worker.shared.limits;
        if self.own.is_some()
            || !limits.column_origins
            || !engine.enabled()
            || !engine.has_name_rules()
        {
            return Begin::Nothing;
        }
        let in_block = match status {
            b'I' => false,
            // (Only what the block itself changed: its snapshot is taken.)
            b'T' if self.block_changed && self.changed.is_some() => true,
            _ => return Begin::Nothing,
        };
        let max_age = Duration::from_millis(limits.column_origins_max_age_ms);
        let other_engine = !std::ptr::eq(self.engine.as_ptr(), Arc::as_ptr(engine));
        let aged = !max_age.is_zero() && now.saturating_duration_since(self.whole_at) >= max_age;
        let stale = current.is_some_and(|o| o.is_stale());
        if !(self.changed.is_some() || other_engine || aged || stale)
            || self.refused_until.is_some_and(|t| now < t) && !self.change_told
        {
            return Begin::Nothing;
        }
        let (start, whole, base) = match self.changed {
            // Only this session knows: read now.
            Some(c) if !other_engine => match current {
                Some(o) if c == Change::Added => (o.continued(), false, Some(o.clone())),
                _ => (ColumnOrigins::new(), true, None),
            },
            _ => match worker.origins.need(&self.key, engine, max_age, now) {
                Need::Use(o) => {
                    let same = match (&o, current) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    };
                    if same && !other_engine {
                        return Begin::Nothing;
                    }
                    self.engine = Arc::downgrade(engine);
                    self.whole_at = worker.origins.whole_at(&self.key).unwrap_or(now);
                    return Begin::Adopt(o);
                }
                Need::Continue(o) => (o.continued(), false, Some(o)),
                Need::Whole(_) => (ColumnOrigins::new(), true, None),
            },
        };
        self.reading_change = self.changed.take();
        let columns = catalog_query(start.newest_relation(), self.generated);
        self.limit_ms = limits.connect_timeout_ms;
        let set = session_settings(self.limit_ms);
        let mut out = Vec::with_capacity(columns.len() + 200);
        if in_block {
            query(
                &mut out,
                &format!(
                    "SAVEPOINT {}; {set}{}{columns}",
                    own_savepoint(),
                    marker_sql()
                ),
            );
            // (A later read outside the block reads what it left, whole.)
            self.block_changed = false;
        } else {
            query(&mut out, &format!("{set}{}{columns}", marker_sql()));
            worker.origins.set_reading(&self.key, true);
        }
        self.own = Some(OwnRead::new(
            engine.clone(),
            start,
            (current.cloned(), base),
            whole,
            in_block,
            worker.origins.epoch.load(Relaxed),
        ));
        Begin::Send(out)
    }

    /// The second step of the own read, once its column query is answered
    /// ([`Taken::Columns`]): the view query over the relations with ruled
    /// columns found (as at login), and in a transaction block the end of
    /// the savepoint. None when the read is over.
    pub fn views(&mut self) -> Option<Vec<u8>> {
        let own = self.own.as_mut().filter(|o| o.stage == Stage::Between)?;
        let mut out = Vec::new();
        own.left = 0;
        own.query = 0;
        if own.refused.is_none() {
            let sql = view_query(&own.origins.ruled_relations(), self.cap);
            query(
                &mut out,
                &format!("{}{}{sql}", session_settings(self.limit_ms), marker_sql()),
            );
            own.left += 1;
            own.marker = Marker::Awaiting;
        } else {
            // (Only the savepoint to end: no view rows to read.)
            own.query = 1;
            own.marker = Marker::None;
        }
        if own.in_block {
            let sp = own_savepoint();
            query(
                &mut out,
                &format!("ROLLBACK TO SAVEPOINT {sp}; RELEASE SAVEPOINT {sp}"),
            );
            own.left += 1;
        }
        own.stage = Stage::Views;
        Some(out)
    }

    /// Take the answers to the own read from the front of `buf` (bytes from
    /// the target). Frames for the client that came meanwhile are kept and
    /// put back before what follows the answers.
    pub fn take_answers(&mut self, buf: &mut Vec<u8>, max_frame: u32) -> Result<Taken, FrameError> {
        let Some(own) = self.own.as_mut() else {
            return Ok(Taken::Pending);
        };
        let mut at = 0;
        let mut step = false;
        let mut fatal = false;
        while !step && !fatal && buf.len() - at >= 5 {
            let t = buf[at];
            let len = u32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]);
            if len < 4 {
                return Err(FrameError::BadLength {
                    tag: t as char,
                    len,
                });
            }
            if len - 4 > max_frame {
                return Err(FrameError::TooLarge {
                    tag: t as char,
                    len,
                    limit: max_frame,
                });
            }
            let end = at + 1 + len as usize;
            if end > buf.len() {
                break;
            }
            let body = &buf[at + 5..end];
            match own.answer(t, body) {
                Answer::Misaligned => return Ok(Taken::Misaligned),
                Answer::Taken => {}
                Answer::Client => self.pass.extend_from_slice(&buf[at..end]),
                Answer::Fatal => {
                    // The session ends: the client gets the error.
                    self.pass.extend_from_slice(&buf[at..end]);
                    fatal = true;
                }
            }
            step = own.left == 0 && own.stage != Stage::Between;
            at = end;
        }
        let waiting = own.stage == Stage::Columns;
        if !fatal && step && own.stage == Stage::Columns && (own.in_block || own.refused.is_none())
        {
            // The views (or the savepoint's end) go next.
            own.stage = Stage::Between;
            buf.drain(..at);
            return Ok(Taken::Columns);
        }
        if !fatal && !step {
            buf.drain(..at);
            return Ok(Taken::Pending);
        }
        if fatal && own.refused.is_none() {
            own.refused = Some("the target ended the session".into());
        }
        let mut rest = std::mem::take(&mut self.pass);
        rest.extend_from_slice(&buf[at..]);
        buf.clear();
        buf.extend_from_slice(&rest);
        rest.clear();
        self.pass = rest;
        let own = Box::new(self.own.take().expect("reading"));
        Ok(Taken::Done { own, waiting })
    }

    /// The read in use after `own`, its answers all taken: counted,
    /// logged, and kept by the worker for other sessions when it was read
    /// outside a transaction block (over the read it continues, if that
    /// is still the worker's); and whether it was read (not refused).
    pub fn settle(
        &mut self,
        worker: &Worker,
        own: Box<OwnRead>,
    ) -> (Option<Arc<ColumnOrigins>>, bool) {
        let OwnRead {
            engine,
            mut origins,
            prev,
            base,
            whole,
            in_block,
            epoch,
            refused,
            views_refused,
            ..
        } = *own;
        let read = match refused {
            Some(m) => Err(m),
            None => {
                origins.resolve_views(&engine);
                Ok((origins, views_refused))
            }
        };
        let failed = read.is_err();
        let now = Instant::now();
        let kept = settle(worker, &self.conn, whole, prev, read);
        let max_age = Duration::from_millis(worker.shared.limits.column_origins_max_age_ms);
        if failed {
            self.change_told = false;
            self.refused_until = Some(match self.reading_change.take() {
                Some(c) => {
                    self.changed = self.changed.max(Some(c));
                    now + MIN_REREAD
                }
                None => now + max_age.max(MIN_REREAD),
            });
        } else {
            self.reading_change = None;
            self.refused_until = None;
            if whole && !in_block {
                self.whole_at = now;
            }
        }
        self.engine = Arc::downgrade(&engine);
        if in_block {
            // What the block did may be rolled back: read again, whole,
            // once outside it.
            self.changed = Some(Change::Altered);
        } else if !failed && (whole || worker.origins.holds(&self.key, base.as_ref())) {
            worker
                .origins
                .store(self.key.clone(), &engine, epoch, whole, kept.clone(), now);
        } else {
            // (A refused read leaves the worker's read as it is.)
            worker.origins.set_reading(&self.key, false);
        }
        (kept, !failed)
    }
}

impl Drop for SessionCatalog {
    /// The session ends: an own read still outstanding no longer holds
    /// back the other sessions' reads.
    fn drop(&mut self) {
        if let (Some(own), Some(w)) = (self.own.take(), &self.worker) {
            if !own.in_block {
                w.origins.set_reading(&self.key, false);
            }
        }
    }
}

/// Whose a frame of an own read's answers is.
enum Answer {
    Taken,
    /// Not the read's answer ([`Taken::Misaligned`]).
    Misaligned,
    /// The client's (a notification, a setting).
    Client,
    /// A FATAL or PANIC error: the client's, and the session's end.
    Fatal,
}

impl OwnRead {
    /// A read of `origins` (new, or continuing `base`) for `engine`, its
    /// column query sent; `prev` is kept if the server refuses it.
    fn new(
        engine: Arc<Engine>,
        origins: ColumnOrigins,
        (prev, base): (Option<Arc<ColumnOrigins>>, Option<Arc<ColumnOrigins>>),
        whole: bool,
        in_block: bool,
        epoch: u64,
    ) -> OwnRead {
        OwnRead {
            engine,
            origins,
            prev,
            base,
            whole,
            in_block,
            epoch,
            stage: Stage::Columns,
            left: 1,
            query: 0,
            refused: None,
            views_refused: None,
            marker: Marker::Awaiting,
        }
    }

    /// A row of the column query or of the view query.
    fn row(&mut self, body: &[u8]) {
        if self.refused.is_some() {
            return;
        }
        match self.stage {
            Stage::Columns => {
                let keep = |name: &[u8]| self.engine.name_ruled(name);
                if self.origins.add_row(body, keep).is_err() {
                    self.refused = Some("a row of the answer does not parse".into());
                }
            }
            Stage::Views
                if self.query == 0
                    && self.views_refused.is_none()
                    && self.origins.add_view_row(body).is_err() =>
            {
                self.views_refused = Some("a row of the answer does not parse".into());
            }
            _ => {}
        }
    }

    /// One whole frame of the answers.
    fn answer(&mut self, t: u8, body: &[u8]) -> Answer {
        // The marker first, in the first Query of each stage (after the
        // CommandCompletes of SAVEPOINT and SET).
        match (self.marker, t) {
            (Marker::Awaiting, b'T') if marker_field(body) => {
                self.marker = Marker::In;
                return Answer::Taken;
            }
            (Marker::Awaiting, b'C' | b'S' | b'A' | b'N') => {}
            (Marker::Awaiting, b'E') if error_is_fatal(body) => {}
            (Marker::Awaiting, _) => return Answer::Misaligned,
            (Marker::In, b'D') => return Answer::Taken,
            (Marker::In, b'C') => {
                self.marker = Marker::Seen;
                return Answer::Taken;
            }
            (Marker::In, b'S' | b'A' | b'N') => {}
            (Marker::In, _) => return Answer::Misaligned,
            _ => {}
        }
        match t {
            b'D' => self.row(body),
            b'E' => {
                let f = backend::parse_error_fields(body);
                if error_is_fatal(body) {
                    return Answer::Fatal;
                }
                let m = format!("{}: {}", f.code, f.message);
                match (self.stage, self.query) {
                    (Stage::Columns, _) => self.refused = Some(m),
                    (Stage::Views, 0) => self.views_refused = Some(m),
                    // The savepoint could not be rolled back to: the
                    // client's transaction block shows it.
                    _ => tracing::warn!("ending the catalog read's savepoint failed ({m})"),
                }
            }
            b'Z' => {
                self.query += 1;
                self.left = self.left.saturating_sub(1);
                // (Only the first Query of a stage has one.)
                self.marker = Marker::None;
            }
            b'S' | b'A' => return Answer::Client,
            // RowDescription, CommandComplete, this read's notices.
            _ => {}
        }
        Answer::Taken
    }
}

/// Whether a RowDescription body is the marker's ([`Marker`]): one column
/// of that name.
fn marker_field(body: &[u8]) -> bool {
    body.get(..2) == Some(&[0, 1][..])
        && crate::protocol::cstr(&body[2..]).is_some_and(|(n, _)| n == own_savepoint().as_bytes())
}

/// Whether an ErrorResponse body is FATAL or PANIC (by its unlocalized
/// severity `V` where the server sends one, else `S`).
fn error_is_fatal(body: &[u8]) -> bool {
    let mut severity: &[u8] = b"";
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        let Some((v, tail)) = crate::protocol::cstr(tail) else {
            break;
        };
        match kind {
            0 => break,
            b'V' => {
                severity = v;
                break;
            }
            b'S' => severity = v,
            _ => {}
        }
        rest = tail;
    }
    matches!(severity, b"FATAL" | b"PANIC")
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

    fn frame(t: u8, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        backend::message(&mut v, t, body);
        v
    }

    /// A DataRow of text fields.
    fn data_row(fields: &[&str]) -> Vec<u8> {
        let fields: Vec<_> = fields.iter().map(|f| Some(f.to_string())).collect();
        frame(b'D', &crate::mask::corpus::data_row(&fields))
    }

    fn own_read(in_block: bool) -> SessionCatalog {
        let mut c = SessionCatalog::idle("db".into(), "c".into(), Instant::now());
        (c.generated, c.cap, c.limit_ms) = (true, 1 << 20, 1000);
        c.own = Some(OwnRead::new(
            engine(),
            ColumnOrigins::new(),
            (None, None),
            true,
            in_block,
            0,
        ));
        c
    }

    /// The answer to the marker query that opens each stage.
    fn marker() -> Vec<u8> {
        let mut t = vec![0, 1];
        t.extend_from_slice(own_savepoint().as_bytes());
        t.extend_from_slice(&[0; 19]);
        [
            frame(b'T', &t),
            data_row(&["1"]),
            frame(b'C', b"SELECT 1\0"),
        ]
        .concat()
    }

    /// Feed `all` cut at `cut` (then the rest) until something else than
    /// Pending comes.
    fn take_cut(c: &mut SessionCatalog, all: &[u8], cut: usize, buf: &mut Vec<u8>) -> Taken {
        buf.extend_from_slice(&all[..cut]);
        let got = c.take_answers(buf, 1 << 20).unwrap();
        buf.extend_from_slice(&all[cut..]);
        match got {
            Taken::Pending => c.take_answers(buf, 1 << 20).unwrap(),
            t => t,
        }
    }

    #[test]
    fn own_answers_are_taken_off_the_stream_in_any_cut() {
        let mut columns = Vec::new();
        columns.extend(frame(b'C', b"SET\0"));
        columns.extend(marker());
        columns.extend(frame(b'T', b"\0\0"));
        columns.extend(data_row(&["16400", "2", "ssn"]));
        columns.extend(data_row(&["0", "0", "16400"]));
        columns.extend(frame(b'C', b"SELECT 2\0"));
        columns.extend(frame(b'Z', b"I"));
        // A notification meanwhile is the client's.
        let notify = frame(b'A', b"\0\0\0\x01chan\0hi\0");
        let mut views = notify.clone();
        views.extend(frame(b'N', b"SNOTICE\0Mhello\0\0"));
        views.extend(marker());
        views.extend(frame(b'T', b"\0\0"));
        views.extend(frame(b'C', b"SELECT 0\0"));
        views.extend(frame(b'Z', b"I"));
        let client = [frame(b'T', b"\0\0"), frame(b'Z', b"I")].concat();
        let second = [views.clone(), client.clone()].concat();
        for cut in 0..=columns.len() {
            let mut c = own_read(false);
            let mut buf = Vec::new();
            assert!(
                matches!(take_cut(&mut c, &columns, cut, &mut buf), Taken::Columns),
                "cut {cut}"
            );
            assert!(buf.is_empty(), "cut {cut}");
            let sent = c.views().expect("views next");
            assert_eq!(sent.iter().filter(|&&b| b == b'Q').count(), 1);
            assert!(c.views().is_none());
            for cut2 in [0, 3, second.len() / 2, second.len()] {
                // (The same columns again, whole, then the views cut.)
                let mut c2 = own_read(false);
                let mut buf = Vec::new();
                assert!(matches!(
                    take_cut(&mut c2, &columns, columns.len(), &mut buf),
                    Taken::Columns
                ));
                c2.views().expect("views next");
                let mut buf = Vec::new();
                let Taken::Done { own, waiting } = take_cut(&mut c2, &second, cut2, &mut buf)
                else {
                    panic!("cut {cut}/{cut2}: not done");
                };
                assert!(!waiting);
                assert_eq!(
                    buf,
                    [notify.clone(), client.clone()].concat(),
                    "cut {cut}/{cut2}"
                );
                assert!(own.refused.is_none() && own.views_refused.is_none());
                assert_eq!(own.origins.name(16400, 2), Some(&b"ssn"[..]));
                assert_eq!(own.origins.newest_relation(), 16400);
                assert!(!c2.reading());
            }
        }
    }

    #[test]
    fn own_errors_refuse_the_read_or_its_views() {
        let err = |code: &str| frame(b'E', format!("SERROR\0VERROR\0C{code}\0Mno\0\0").as_bytes());
        // Outside a block, a refused column query ends the read at once.
        let mut c = own_read(false);
        let mut buf = [marker(), err("42501"), frame(b'Z', b"I")].concat();
        let Ok(Taken::Done { own, waiting }) = c.take_answers(&mut buf, 1 << 20) else {
            panic!("not done");
        };
        assert!(waiting && buf.is_empty());
        assert_eq!(own.refused.as_deref(), Some("42501: no"));
        // In a block: the savepoint is rolled back to, without views.
        let mut c = own_read(true);
        let mut buf = [
            frame(b'C', b"SAVEPOINT\0"),
            marker(),
            err("42501"),
            frame(b'Z', b"E"),
        ]
        .concat();
        assert!(matches!(
            c.take_answers(&mut buf, 1 << 20),
            Ok(Taken::Columns)
        ));
        let sent = c.views().unwrap();
        assert!(String::from_utf8_lossy(&sent).contains("ROLLBACK TO SAVEPOINT"));
        assert!(!String::from_utf8_lossy(&sent).contains("pg_rewrite"));
        let mut buf = [
            frame(b'C', b"ROLLBACK\0"),
            frame(b'C', b"RELEASE\0"),
            frame(b'Z', b"T"),
        ]
        .concat();
        let Ok(Taken::Done { own, .. }) = c.take_answers(&mut buf, 1 << 20) else {
            panic!("not done");
        };
        assert_eq!(own.refused.as_deref(), Some("42501: no"));
        // The view query alone refused, in a block: views refused, the
        // savepoint ended.
        let mut c = own_read(true);
        let mut buf = [marker(), frame(b'C', b"SELECT 0\0"), frame(b'Z', b"T")].concat();
        assert!(matches!(
            c.take_answers(&mut buf, 1 << 20),
            Ok(Taken::Columns)
        ));
        let sent = c.views().unwrap();
        assert_eq!(sent.iter().filter(|&&b| b == b'Q').count(), 2);
        let mut buf = [marker(), err("42501"), frame(b'Z', b"E"), frame(b'Z', b"T")].concat();
        let Ok(Taken::Done { own, waiting }) = c.take_answers(&mut buf, 1 << 20) else {
            panic!("not done");
        };
        assert!(!waiting && own.refused.is_none());
        assert_eq!(own.views_refused.as_deref(), Some("42501: no"));
        // A fatal error goes to the client at once and ends the read.
        let mut c = own_read(false);
        let fatal = frame(b'E', b"SFATAL\0VFATAL\0C57P01\0Mbye\0\0");
        let mut buf = [fatal.clone(), frame(b'Z', b"I")].concat();
        let Ok(Taken::Done { own, waiting }) = c.take_answers(&mut buf, 1 << 20) else {
            panic!("not done");
        };
        assert!(waiting && own.refused.is_some());
        assert_eq!(buf, [fatal, frame(b'Z', b"I")].concat());
        // A localized severity: `V` decides.
        assert!(error_is_fatal(b"SFATALE\0VFATAL\0\0"));
        assert!(!error_is_fatal(b"SFATAL\0VERROR\0\0"));
        assert!(!error_is_fatal(b"SERROR\0\0"));
        // Anything but the marker first (a client's rows, its error): the
        // answers are not the read's.
        for first in [
            frame(b'T', b"\0\0"),
            data_row(&["16400", "2", "ssn"]),
            err("42P01"),
            frame(b'Z', b"I"),
        ] {
            let mut c = own_read(false);
            let mut buf = [frame(b'C', b"SET\0"), first].concat();
            assert!(matches!(
                c.take_answers(&mut buf, 1 << 20),
                Ok(Taken::Misaligned)
            ));
        }
        // A bad length or an oversize frame ends the session.
        let mut c = own_read(false);
        let mut buf = vec![b'D', 0, 0, 0, 2];
        assert!(c.take_answers(&mut buf, 1 << 20).is_err());
        let mut buf = vec![b'D', 0, 1, 0, 0];
        assert!(c.take_answers(&mut buf, 100).is_err());
    }

    #[test]
    fn session_settings_stay_in_postgresql_range() {
        assert!(session_settings(5_000).contains("statement_timeout = 5000;"));
        assert!(session_settings(u64::MAX).contains("lock_timeout = 2147483647;"));
        assert!(session_settings(0).contains("statement_timeout = 1;"));
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
