//! A data core's audit handle: its ring producer, a reused encode buffer,
//! and the admission check. Lives on the core's thread (not `Send`); made
//! from a [`CoreInit`], which is.

use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use proto::AuditRecord;

use super::pump::CoreAuditStats;
use super::record::{encode_record, encode_statement, Origin, StatementView};
use super::ring::{AuditGate, RingFull, RingProducer, WhenFull, FRAME_HEADER_BYTES};
use super::tracker::Tracker;
use crate::metrics::bump;

/// Seconds' worth of authentication-failure records a core may write at
/// once (see [`CoreAudit::admit_failure`]).
pub const FAILURE_BURST_S: f64 = 10.0;

/// What a worker needs to build its [`CoreAudit`] (moved to its thread).
pub struct CoreInit {
    pub core: u32,
    pub producer: RingProducer,
    pub gate: Arc<AuditGate>,
    pub stats: Arc<CoreAuditStats>,
    pub when_full: WhenFull,
    pub max_sql_bytes: usize,
    /// Random per process start; part of session ids.
    pub boot: u32,
    /// Authentication-failure records per second (0: no limit).
    pub auth_failures_per_second: u32,
}

/// See the module docs.
pub struct CoreAudit {
    core: u32,
    ring: RefCell<RingProducer>,
    buf: RefCell<Vec<u8>>,
    gate: Arc<AuditGate>,
    stats: Arc<CoreAuditStats>,
    when_full: WhenFull,
    max_sql_bytes: usize,
    /// Free ring bytes kept for the records of statements already running:
    /// below this, new statements are refused (fail closed).
    headroom: u64,
    boot: u32,
    sessions: Cell<u64>,
    /// Unix seconds of the last "refused"/"unaudited" log line.
    last_log: Cell<u64>,
    /// Authentication-failure records: the rate (per second; 0: no limit),
    /// and the bucket (records it holds now, when it was last filled).
    failure_rate: u32,
    failure_tokens: Cell<f64>,
    failure_filled: Cell<Option<std::time::Instant>>,
}

impl CoreAudit {
    pub fn new(init: CoreInit) -> CoreAudit {
        let headroom = init.producer.capacity() / 8;
        CoreAudit {
            core: init.core,
            ring: RefCell::new(init.producer),
            buf: RefCell::new(Vec::with_capacity(8192)),
            gate: init.gate,
            stats: init.stats,
            when_full: init.when_full,
            max_sql_bytes: init.max_sql_bytes,
            headroom,
            boot: init.boot,
            sessions: Cell::new(0),
            last_log: Cell::new(0),
            failure_rate: init.auth_failures_per_second,
            failure_tokens: Cell::new(f64::from(init.auth_failures_per_second) * FAILURE_BURST_S),
            failure_filled: Cell::new(None),
        }
    }

    pub fn core(&self) -> u32 {
        self.core
    }

    pub fn when_full(&self) -> WhenFull {
        self.when_full
    }

    /// A tracker for a new session.
    pub fn tracker(&self) -> Tracker {
        Tracker::new(self.max_sql_bytes)
    }

    /// A new session id, unique per node: `<boot>-<core>-<n>`.
    pub fn session_id(&self) -> String {
        let n = self.sessions.get() + 1;
        self.sessions.set(n);
        format!("{:08x}-{}-{n}", self.boot, self.core)
    }

    /// Whether an authentication-failure record may be written now (within
    /// `auth_failures_per_second`, bursts of [`FAILURE_BURST_S`] seconds'
    /// worth); if not it is counted, to be reported by number.
    pub fn admit_failure(&self, now: std::time::Instant) -> bool {
        if self.failure_rate == 0 {
            return true;
        }
        let rate = f64::from(self.failure_rate);
        let mut tokens = self.failure_tokens.get();
        if let Some(t) = self.failure_filled.get() {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            tokens = (tokens + dt * rate).min(rate * FAILURE_BURST_S);
        }
        self.failure_filled.set(Some(now));
        if tokens >= 1.0 {
            self.failure_tokens.set(tokens - 1.0);
            true
        } else {
            self.failure_tokens.set(tokens);
            bump(&self.stats.rate_limited, 1);
            self.log_limited(|| {
                tracing::warn!(core = self.core, limited = self.stats.rate_limited.load(Relaxed), per_second = self.failure_rate, "audit: authentication failures past audit.auth_failures_per_second are counted, not recorded one by one (a flood of failed logins?)");
            });
            false
        }
    }

    /// Whether a new statement (or session) must be refused now: fail
    /// closed, and the spool refuses records or this core's ring is down to
    /// its headroom. Two loads, no syscall.
    pub fn should_refuse(&self) -> bool {
        self.when_full == WhenFull::FailClosed
            && (self.gate.closed() || self.ring.borrow_mut().free() < self.headroom)
    }

    /// Write one statement record into the ring.
    pub fn push_statement(
        &self,
        session: &[u8],
        snapshot_version: i64,
        v: &StatementView<'_>,
    ) -> Result<(), RingFull> {
        let mut ring = self.ring.borrow_mut();
        let mut buf = self.buf.borrow_mut();
        buf.clear();
        buf.resize(FRAME_HEADER_BYTES, 0);
        let origin = Origin {
            core: self.core,
            core_seq: ring.next_seq(),
            snapshot_version,
        };
        encode_statement(&mut buf, origin, session, v);
        ring.push_framed(&mut buf)?;
        bump(&self.stats.produced, 1);
        Ok(())
    }

    /// Write any record (session start/end, auth failure) into the ring,
    /// followed by `session` (from
    /// [`session_fields`](super::record::session_fields); empty when the
    /// record carries its own identity, session and connection).
    pub fn push_record(
        &self,
        rec: &mut AuditRecord,
        session: &[u8],
        snapshot_version: i64,
    ) -> Result<(), RingFull> {
        let mut ring = self.ring.borrow_mut();
        let mut buf = self.buf.borrow_mut();
        buf.clear();
        buf.resize(FRAME_HEADER_BYTES, 0);
        let origin = Origin {
            core: self.core,
            core_seq: ring.next_seq(),
            snapshot_version,
        };
        encode_record(&mut buf, origin, rec);
        buf.extend_from_slice(session);
        ring.push_framed(&mut buf)?;
        bump(&self.stats.produced, 1);
        Ok(())
    }

    /// Move the tracker's finished records into the ring. Returns false
    /// when the ring filled up before all of them fit (they stay in the
    /// tracker).
    pub fn drain_tracker(&self, t: &mut Tracker, session: &[u8], snapshot_version: i64) -> bool {
        loop {
            let stored = match t.peek_record() {
                None => return true,
                Some(v) => self.push_statement(session, snapshot_version, &v).is_ok(),
            };
            if !stored {
                return false;
            }
            t.pop_record();
        }
    }

    /// Fail open: drop the tracker's records that do not fit, counting them.
    pub fn drop_tracker_records(&self, t: &mut Tracker) {
        let mut n = 0;
        while t.peek_record().is_some() {
            t.pop_record();
            n += 1;
        }
        self.count_unaudited(n);
    }

    /// A statement or session refused (fail closed).
    pub fn count_refused(&self) {
        bump(&self.stats.refused, 1);
        self.log_limited(|| {
            tracing::warn!(core = self.core, refused = self.stats.refused.load(Relaxed), "audit: statements refused because audit records cannot be stored (spool at its quota, unwritable, or this core's ring full)");
        });
    }

    /// Records lost (fail open, or an auth failure with a full ring).
    pub fn count_unaudited(&self, n: u64) {
        if n == 0 {
            return;
        }
        bump(&self.stats.unaudited, n);
        self.log_limited(|| {
            tracing::warn!(core = self.core, unaudited = self.stats.unaudited.load(Relaxed), "audit: records could not be stored and were dropped (when_full: fail_open); statements ran unaudited");
        });
    }

    /// At most one line per 10 s per core.
    fn log_limited(&self, f: impl FnOnce()) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now >= self.last_log.get() + 10 {
            self.last_log.set(now);
            f();
        }
    }
}
