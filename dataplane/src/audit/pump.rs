//! The control side's drain step: core rings → spool.
//!
//! [`Pump::step`] copies what the cores have published in their rings
//! (and the records the control thread made itself, such as snapshot
//! applications) into one batch, appends it to the spool as encoded bytes
//! (numbered, checksummed, synced per the fsync policy), and only then
//! hands the ring space back to the cores. So a record is always in a ring
//! or in the spool, whatever moment the process dies at:
//!
//! * killed before the append: the frames are still in the ring, found
//!   again at the next start;
//! * killed after the append but before the ring was told: the frames are
//!   in both; the next start skips ring frames whose `core_seq` the spool
//!   already holds ([`Spool::core_high_water`]).
//!
//! A batch the spool refuses (disk quota, I/O error) stays staged and is
//! retried first, unchanged; meanwhile the [`AuditGate`] is closed so cores
//! refuse new statements (fail closed) and the rings stop being drained.
//!
//! Records lost all the same (dropped under `when_full: fail_open`, or
//! unreadable in a damaged ring) are reported in the trail itself, as
//! `RECORDS_LOST` records per core and reason. Drops and rings set aside
//! at start are written at most once per [`LOSS_REPORT_INTERVAL`] into the
//! spool's reserve past its quota ([`Spool::append_reserved`]); damage
//! found in a ring goes into the batch that hands the ring back past it,
//! so a restart neither loses nor repeats its report.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use proto::{AuditKind, AuditLoss, AuditMetadata, AuditRecord};

use super::ring::{AuditGate, RawFrame, RingConsumer, WhenFull, FRAME_HEADER_BYTES};
use super::spool::{BaseChange, Spool, SpoolError};

/// Counters one data core keeps (only that core writes them).
#[derive(Debug, Default)]
pub struct CoreAuditStats {
    /// Records written to the ring.
    pub produced: AtomicU64,
    /// Statements (or sessions) refused because records could not be kept.
    pub refused: AtomicU64,
    /// Records dropped for want of room: under `when_full: fail_open` the
    /// statements' (which ran); under `fail_closed` only auth-failure and
    /// session start/end records (reported as `ring_full`).
    pub unaudited: AtomicU64,
    /// Authentication-failure records not written: past the core's rate
    /// (`auth_failures_per_second`; reported as `auth_failures_rate_limited`).
    pub rate_limited: AtomicU64,
}

/// Audit counters and gauges for `/metrics`.
#[derive(Debug, Default)]
pub struct AuditStats {
    pub cores: Vec<Arc<CoreAuditStats>>,
    /// Records appended to the spool by this process.
    pub spooled: AtomicU64,
    /// Records sent to the control plane (resends included).
    pub shipped: AtomicU64,
    /// Records the control plane acknowledged as durable.
    pub acknowledged: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub spool_last_seq: AtomicU64,
    pub spool_acked: AtomicU64,
    /// When the oldest unacknowledged record was spooled (Unix ms; 0: none).
    pub oldest_unacked_unix_ms: AtomicU64,
    /// Failed spool appends or acks.
    pub spool_errors: AtomicU64,
    /// Ring frames lost to damage (never expected; logged).
    pub ring_damaged: AtomicU64,
    /// Ring frames skipped at recovery because the spool had them.
    pub recovered_duplicates: AtomicU64,
    /// 1 while a Ship stream is open.
    pub ship_connected: AtomicU64,
    pub ship_reconnects: AtomicU64,
}

impl AuditStats {
    pub fn new(cores: usize) -> AuditStats {
        AuditStats {
            cores: (0..cores).map(|_| Arc::default()).collect(),
            ..Default::default()
        }
    }
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn unix_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Records made off the data cores, waiting for the next step.
pub type SideQueue = Arc<Mutex<Vec<AuditRecord>>>;

/// How often, at most, lost records are reported (per step that finds
/// new losses, the report waits until this long after the last one).
pub const LOSS_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Why records were lost (`AuditLoss.reason`).
pub mod loss {
    /// Dropped because they could not be stored (`when_full: fail_open`).
    pub const FAIL_OPEN: &str = "fail_open";
    /// Under `when_full: fail_closed`, records that found the core's ring
    /// full longer than they could wait (a session's start or end, an
    /// authentication failure); statements are refused instead.
    pub const RING_FULL: &str = "ring_full";
    /// Unreadable in a core's ring.
    pub const RING_DAMAGED: &str = "ring_damaged";
    /// A damaged ring file moved aside at start, unread.
    pub const RING_SET_ASIDE: &str = "ring_set_aside";
    /// Authentication-failure records past a core's rate, not written
    /// (`audit.auth_failures_per_second`).
    pub const AUTH_FAILURES_RATE_LIMITED: &str = "auth_failures_rate_limited";
}

/// Losses of one core and reason not yet in the spool.
#[derive(Debug, Clone, Copy)]
struct Loss {
    records: u64,
    bytes: u64,
    since: i64,
    until: i64,
}

/// The `RECORDS_LOST` record of `l`.
fn loss_record(core: u32, reason: &str, l: &Loss) -> AuditRecord {
    AuditRecord {
        metadata: Some(AuditMetadata {
            kind: AuditKind::RecordsLost as i32,
            time_unix_nanos: l.until,
            core,
            ..Default::default()
        }),
        loss: Some(AuditLoss {
            reason: reason.to_string(),
            records: l.records,
            bytes: l.bytes,
            since_unix_nanos: l.since,
            until_unix_nanos: l.until,
        }),
        ..Default::default()
    }
}

/// Rings + spool + the batch in between. Owned by the control side, used
/// under one mutex by the drain thread and the shipper.
pub struct Pump {
    spool: Spool,
    rings: Vec<RingConsumer>,
    side: SideQueue,
    /// The staged batch: payloads back to back, and where each is.
    staged: Vec<u8>,
    frames: Vec<RawFrame>,
    /// Per ring: where its read position goes once the batch is stored.
    ends: Vec<u64>,
    /// Highest core_seq stored, per core (duplicate filter; indexed by core).
    high: Vec<u64>,
    /// (last sequence of a batch, Unix ms it was spooled), oldest first,
    /// for batches not yet acknowledged.
    marks: VecDeque<(u64, u64)>,
    gate: Arc<AuditGate>,
    stats: Arc<AuditStats>,
    max_batch_bytes: usize,
    refusing: bool,
    /// Losses not yet reported, per (core, reason), merged.
    losses: BTreeMap<(u32, &'static str), Loss>,
    /// Per core: its `unaudited` and `rate_limited` counts already noted
    /// as lost.
    unaudited_seen: Vec<u64>,
    limited_seen: Vec<u64>,
    /// When the `unaudited` counts were last read (Unix ns).
    checked_at: i64,
    /// When losses were last written (or tried).
    reported_at: Option<Instant>,
    /// Why the cores' `unaudited` records were lost ([`loss::FAIL_OPEN`]
    /// or [`loss::RING_FULL`], by the node's `when_full`).
    unaudited_reason: &'static str,
}

impl Pump {
    pub fn new(
        spool: Spool,
        rings: Vec<RingConsumer>,
        gate: Arc<AuditGate>,
        stats: Arc<AuditStats>,
    ) -> Pump {
        let mut high = Vec::new();
        for (&core, &seq) in spool.core_high_water() {
            let i = core as usize;
            if high.len() <= i {
                high.resize(i + 1, 0);
            }
            high[i] = seq;
        }
        let mut marks = VecDeque::new();
        if spool.pending() > 0 {
            marks.push_back((spool.last_seq(), unix_ms()));
        }
        let ends = rings.iter().map(RingConsumer::committed).collect();
        let unaudited_seen = stats
            .cores
            .iter()
            .map(|c| c.unaudited.load(Relaxed))
            .collect();
        let limited_seen = stats
            .cores
            .iter()
            .map(|c| c.rate_limited.load(Relaxed))
            .collect();
        let p = Pump {
            spool,
            rings,
            side: Arc::default(),
            staged: Vec::new(),
            frames: Vec::new(),
            ends,
            high,
            marks,
            gate,
            stats,
            max_batch_bytes: 4 << 20,
            refusing: false,
            losses: BTreeMap::new(),
            unaudited_seen,
            limited_seen,
            checked_at: unix_nanos(),
            reported_at: None,
            unaudited_reason: loss::FAIL_OPEN,
        };
        p.publish_gauges();
        p
    }

    /// The node's `when_full`, which says why the records the cores count
    /// as unaudited were lost (default: `fail_open`).
    pub fn set_when_full(&mut self, when_full: WhenFull) {
        self.unaudited_reason = match when_full {
            WhenFull::FailOpen => loss::FAIL_OPEN,
            WhenFull::FailClosed => loss::RING_FULL,
        };
    }

    /// Where the control thread puts records it makes itself.
    pub fn side_queue(&self) -> SideQueue {
        self.side.clone()
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    pub fn gate(&self) -> &Arc<AuditGate> {
        &self.gate
    }

    /// Bytes published in the rings and not yet stored.
    pub fn ring_depth(&self) -> u64 {
        self.rings.iter().map(RingConsumer::depth).sum()
    }

    /// The ring files drained.
    pub fn ring_paths(&self) -> Vec<std::path::PathBuf> {
        self.rings.iter().map(|r| r.path().to_path_buf()).collect()
    }

    /// Records staged but refused by the spool so far.
    pub fn staged(&self) -> usize {
        self.frames.len()
    }

    fn stage(&mut self) {
        self.staged.clear();
        self.frames.clear();
        let per_ring = (self.max_batch_bytes / self.rings.len().max(1)).max(64 * 1024);
        let mut lost = Vec::new();
        for (i, ring) in self.rings.iter().enumerate() {
            let mut pos = ring.committed();
            self.ends[i] = loop {
                let mark = self.frames.len();
                match ring.read_from(pos, per_ring, &mut self.staged, &mut self.frames) {
                    Ok(end) => break end,
                    Err(e) => {
                        // Cannot happen short of memory corruption or a file
                        // changed under us. The frames read before the
                        // damaged one are good and kept; when its length is
                        // one a frame can have, reading goes on after it
                        // (a frame there has to pass its checksum), else the
                        // rest of the ring is lost. Either way, said in the
                        // log and in the trail.
                        let good: u64 = self.frames[mark..]
                            .iter()
                            .map(|f| (FRAME_HEADER_BYTES + f.end - f.start) as u64)
                            .sum();
                        let at = pos + good;
                        let (next, what) = match ring.frame_end(at) {
                            Some(next) => (next, "the frame is skipped"),
                            None => (ring.published(), "the rest of the ring is lost"),
                        };
                        tracing::error!(ring = %ring.path().display(), at, lost_bytes = next - at, "audit ring damaged, {what}: {e}");
                        self.stats.ring_damaged.fetch_add(1, Relaxed);
                        lost.push((ring.core(), next - at, unix_nanos()));
                        if next >= ring.published() {
                            break next;
                        }
                        pos = next;
                    }
                }
            };
        }
        // Frames the spool already has (a crash between the append and the
        // ring being told).
        let before = self.frames.len();
        let high = &self.high;
        self.frames.retain(|f| {
            f.core_seq == 0 || f.core_seq > high.get(f.core as usize).copied().unwrap_or(0)
        });
        let dupes = before - self.frames.len();
        if dupes > 0 {
            tracing::info!(
                records = dupes,
                "audit: ring records already in the spool skipped"
            );
            self.stats
                .recovered_duplicates
                .fetch_add(dupes as u64, Relaxed);
        }
        // The damage is reported in this batch, one record per ring: stored
        // exactly when the ring is handed back past it (killed before, the
        // next start finds the damage again; after, the report is stored),
        // whatever the report interval, and only once while the spool
        // refuses the batch.
        let mut damaged: BTreeMap<u32, Loss> = BTreeMap::new();
        for (core, bytes, at) in lost {
            let l = damaged.entry(core).or_insert(Loss {
                records: 0,
                bytes: 0,
                since: at,
                until: at,
            });
            l.bytes += bytes;
            l.since = l.since.min(at);
            l.until = l.until.max(at);
        }
        for (core, l) in damaged {
            let start = self.staged.len();
            loss_record(core, loss::RING_DAMAGED, &l)
                .encode(&mut self.staged)
                .expect("Vec grows");
            self.frames.push(RawFrame {
                core,
                core_seq: 0,
                start,
                end: self.staged.len(),
            });
        }
        let side = std::mem::take(&mut *self.side.lock().unwrap_or_else(|p| p.into_inner()));
        for rec in side {
            let start = self.staged.len();
            rec.encode(&mut self.staged).expect("Vec grows");
            self.frames.push(RawFrame {
                core: 0,
                core_seq: 0,
                start,
                end: self.staged.len(),
            });
        }
    }

    /// One step: stage (unless a refused batch is waiting), append, hand
    /// ring space back. Returns how many records were stored.
    pub fn step(&mut self) -> Result<usize, SpoolError> {
        self.note_unaudited();
        if self.frames.is_empty() {
            self.stage();
        }
        let reported = self.store_losses(false);
        if self.frames.is_empty() {
            self.commit_rings();
            return Ok(reported);
        }
        match self.spool.append_raw(&self.staged, &self.frames) {
            Ok(last) => {
                for f in &self.frames {
                    if f.core_seq > 0 {
                        let i = f.core as usize;
                        if self.high.len() <= i {
                            self.high.resize(i + 1, 0);
                        }
                        self.high[i] = self.high[i].max(f.core_seq);
                    }
                }
                self.commit_rings();
                let n = self.frames.len();
                self.frames.clear();
                self.staged.clear();
                self.marks.push_back((last, unix_ms()));
                self.stats.spooled.fetch_add(n as u64, Relaxed);
                if self.refusing {
                    tracing::info!("audit spool accepts records again; statements are allowed");
                    self.refusing = false;
                }
                self.gate.set_closed(false);
                self.publish_gauges();
                Ok(n + reported)
            }
            Err(e) => {
                self.stats.spool_errors.fetch_add(1, Relaxed);
                if !self.refusing {
                    tracing::error!(waiting = self.frames.len(), "audit spool refuses records; new statements are refused (or run unaudited with when_full: fail_open) until it accepts them: {e}");
                    self.refusing = true;
                }
                self.gate.set_closed(true);
                self.publish_gauges();
                Err(e)
            }
        }
    }

    /// Note records lost on `core` for `reason` between `since` and
    /// `until` (Unix ns), merged with what is not yet reported for them.
    pub fn note_loss(
        &mut self,
        core: u32,
        reason: &'static str,
        records: u64,
        bytes: u64,
        since: i64,
        until: i64,
    ) {
        let l = self.losses.entry((core, reason)).or_insert(Loss {
            records: 0,
            bytes: 0,
            since,
            until,
        });
        l.records += records;
        l.bytes += bytes;
        l.since = l.since.min(since);
        l.until = l.until.max(until);
    }

    /// Records the cores dropped (`unaudited`) since the last look.
    fn note_unaudited(&mut self) {
        let now = unix_nanos();
        let stats = self.stats.clone();
        for (core, c) in stats.cores.iter().enumerate() {
            let n = c.unaudited.load(Relaxed);
            let seen = self.unaudited_seen.get(core).copied().unwrap_or(0);
            if n > seen {
                // (`min`: the wall clock may have been set back since.)
                self.note_loss(
                    core as u32,
                    self.unaudited_reason,
                    n - seen,
                    0,
                    self.checked_at.min(now),
                    now,
                );
                self.unaudited_seen[core] = n;
            }
            let n = c.rate_limited.load(Relaxed);
            let seen = self.limited_seen.get(core).copied().unwrap_or(0);
            if n > seen {
                self.note_loss(
                    core as u32,
                    loss::AUTH_FAILURES_RATE_LIMITED,
                    n - seen,
                    0,
                    self.checked_at.min(now),
                    now,
                );
                self.limited_seen[core] = n;
            }
        }
        self.checked_at = now;
    }

    /// Write the losses noted, one `RECORDS_LOST` record per core and
    /// reason, within the spool's reserve past its quota; unless `now`, at
    /// most once per [`LOSS_REPORT_INTERVAL`]. Returns the records written.
    pub fn store_losses(&mut self, now: bool) -> usize {
        if self.losses.is_empty()
            || (!now
                && self
                    .reported_at
                    .is_some_and(|t| t.elapsed() < LOSS_REPORT_INTERVAL))
        {
            return 0;
        }
        self.reported_at = Some(Instant::now());
        let mut recs: Vec<AuditRecord> = self
            .losses
            .iter()
            .map(|(&(core, reason), l)| loss_record(core, reason, l))
            .collect();
        match self.spool.append_reserved(&mut recs) {
            Ok(last) => {
                let n = recs.len();
                for r in &recs {
                    let l = r.loss.as_ref().expect("a loss record");
                    tracing::warn!(core = r.metadata.as_ref().map_or(0, |m| m.core), reason = %l.reason, records = l.records, bytes = l.bytes, "audit: records lost, reported in the trail");
                }
                self.losses.clear();
                self.marks.push_back((last, unix_ms()));
                self.stats.spooled.fetch_add(n as u64, Relaxed);
                self.publish_gauges();
                n
            }
            Err(e) => {
                self.stats.spool_errors.fetch_add(1, Relaxed);
                tracing::error!(reports = recs.len(), "audit: the record of lost records cannot be stored yet ({e}); it is kept and tried again");
                0
            }
        }
    }

    /// Log each loss noted and not yet in the spool, with its counts: at
    /// shutdown, after [`Pump::store_losses`] could not write them (spool
    /// unwritable, or past its reserve), the log is the only place left
    /// to tell them. Returns the records among them.
    pub fn log_unreported_losses(&self) -> u64 {
        for (&(core, reason), l) in &self.losses {
            tracing::error!(core, reason, records = l.records, bytes = l.bytes, since_unix_nanos = l.since, until_unix_nanos = l.until, "audit: records lost and NOT reported in the trail (the spool does not take the report)");
        }
        self.losses.values().map(|l| l.records).sum()
    }

    fn commit_rings(&mut self) {
        for (ring, &end) in self.rings.iter_mut().zip(&self.ends) {
            if end > ring.committed() {
                ring.commit(end);
            }
        }
    }

    /// The control plane made everything up to `durable_through` durable.
    pub fn ack(&mut self, durable_through: u64) -> Result<(), SpoolError> {
        let before = self.spool.acked_through();
        let r = self.spool.ack(durable_through);
        let after = self.spool.acked_through();
        if after > before {
            self.stats.acknowledged.fetch_add(after - before, Relaxed);
        }
        if r.is_err() {
            self.stats.spool_errors.fetch_add(1, Relaxed);
        }
        self.trim_marks();
        r
    }

    /// See [`Spool::take_base`].
    pub fn take_base(&mut self, durable_through: u64) -> Result<BaseChange, SpoolError> {
        let r = self.spool.take_base(durable_through);
        if r.is_err() {
            self.stats.spool_errors.fetch_add(1, Relaxed);
        }
        r
    }

    /// See [`Spool::skip_to`].
    pub fn skip_to(&mut self, seq: u64) -> Result<(), SpoolError> {
        let r = self.spool.skip_to(seq);
        self.publish_gauges();
        r
    }

    /// Records from `from` on, for shipping.
    pub fn unacked(&self, from: u64, max: usize) -> Result<Vec<AuditRecord>, SpoolError> {
        self.spool.unacked(from, max)
    }

    fn publish_gauges(&self) {
        let s = &self.stats;
        let acked = self.spool.acked_through();
        s.spool_bytes.store(self.spool.bytes(), Relaxed);
        s.spool_last_seq.store(self.spool.last_seq(), Relaxed);
        s.spool_acked.store(acked, Relaxed);
        let oldest = self
            .marks
            .iter()
            .find(|(last, _)| *last > acked)
            .map_or(0, |m| m.1);
        s.oldest_unacked_unix_ms.store(oldest, Relaxed);
    }

    /// Forget marks of acknowledged batches.
    fn trim_marks(&mut self) {
        let acked = self.spool.acked_through();
        while self.marks.front().is_some_and(|(last, _)| *last <= acked) {
            self.marks.pop_front();
        }
        self.publish_gauges();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::ring::{ring_path, RingFile, MIN_RING_BYTES};
    use crate::audit::SpoolConfig;
    use proto::{AuditKind, AuditMetadata, AuditStatement};

    fn record(core: u32, core_seq: u64) -> Vec<u8> {
        AuditRecord {
            metadata: Some(AuditMetadata {
                kind: AuditKind::Query as i32,
                core,
                core_seq,
                ..Default::default()
            }),
            statement: Some(AuditStatement {
                sql: format!("select {core}, {core_seq}"),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn sqls(p: &Pump) -> Vec<String> {
        p.unacked(0, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|r| r.statement.map(|s| s.sql).unwrap_or_default())
            .collect()
    }

    #[test]
    fn drains_every_core_and_side_records_with_nothing_lost() {
        let d = tempfile::tempdir().unwrap();
        let mut producers = Vec::new();
        let mut consumers = Vec::new();
        for core in 0..2 {
            let (p, c) = RingFile::open_or_create(&ring_path(d.path(), core), core, MIN_RING_BYTES)
                .unwrap()
                .split();
            producers.push(p);
            consumers.push(c);
        }
        let stats = Arc::new(AuditStats::new(2));
        let spool = Spool::open(SpoolConfig::new(d.path(), "n1")).unwrap();
        let mut pump = Pump::new(spool, consumers, Arc::default(), stats.clone());
        for i in 1..=3 {
            for (core, p) in producers.iter_mut().enumerate() {
                p.push(&record(core as u32, i)).unwrap();
            }
        }
        pump.side_queue().lock().unwrap().push(AuditRecord {
            metadata: Some(AuditMetadata {
                kind: AuditKind::SnapshotApplied as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(pump.step().unwrap(), 7);
        assert_eq!(pump.ring_depth(), 0);
        assert_eq!(pump.step().unwrap(), 0);
        let got = sqls(&pump);
        assert_eq!(got.len(), 7);
        assert_eq!(
            &got[..6],
            [
                "select 0, 1",
                "select 0, 2",
                "select 0, 3",
                "select 1, 1",
                "select 1, 2",
                "select 1, 3"
            ]
        );
        assert_eq!(got[6], "", "the snapshot record comes last");
        assert_eq!(stats.spooled.load(Relaxed), 7);
        assert_eq!(stats.spool_last_seq.load(Relaxed), 7);
        assert!(stats.oldest_unacked_unix_ms.load(Relaxed) > 0);
        pump.ack(7).unwrap();
        assert_eq!(stats.acknowledged.load(Relaxed), 7);
        assert_eq!(stats.oldest_unacked_unix_ms.load(Relaxed), 0);
    }

    #[test]
    fn at_the_quota_the_batch_waits_the_gate_closes_and_nothing_is_lost() {
        let d = tempfile::tempdir().unwrap();
        let (mut prod, cons) = RingFile::open_or_create(&ring_path(d.path(), 0), 0, MIN_RING_BYTES)
            .unwrap()
            .split();
        let mut cfg = SpoolConfig::new(d.path(), "n1");
        cfg.quota_bytes = 1000;
        let gate = Arc::new(AuditGate::default());
        let mut pump = Pump::new(
            Spool::open(cfg).unwrap(),
            vec![cons],
            gate.clone(),
            Arc::new(AuditStats::new(1)),
        );
        let mut pushed = 0u64;
        let mut stored = 0;
        while !gate.closed() {
            pushed += 1;
            prod.push(&record(0, pushed)).unwrap();
            if let Ok(n) = pump.step() {
                stored += n;
            }
        }
        assert!(pump.staged() > 0);
        // Cores keep writing into the ring meanwhile.
        for _ in 0..10 {
            pushed += 1;
            prod.push(&record(0, pushed)).unwrap();
        }
        assert!(pump.step().is_err());
        // The control plane acknowledges: room again, and all of it lands.
        while stored < pushed as usize {
            let last = pump.spool().last_seq();
            pump.ack(last).unwrap();
            stored += pump.step().unwrap();
        }
        assert!(!gate.closed());
        assert_eq!(pump.spool().last_seq(), pushed);
        assert_eq!(pump.ring_depth(), 0);
    }

    /// The `RECORDS_LOST` records in the spool: (core, reason, records,
    /// bytes).
    fn losses(p: &Pump) -> Vec<(u32, String, u64, u64)> {
        p.unacked(0, usize::MAX)
            .unwrap()
            .into_iter()
            .filter(|r| r.metadata.as_ref().unwrap().kind == AuditKind::RecordsLost as i32)
            .map(|r| {
                let l = r.loss.unwrap();
                assert!(l.since_unix_nanos <= l.until_unix_nanos, "{l:?}");
                (r.metadata.unwrap().core, l.reason, l.records, l.bytes)
            })
            .collect()
    }

    /// Records a core drops under `fail_open` are reported in the spool
    /// (at most once per interval, merged meanwhile), even with the spool
    /// at its quota, which is why they were dropped.
    #[test]
    fn records_dropped_under_fail_open_are_reported_in_the_trail_even_at_the_quota() {
        let d = tempfile::tempdir().unwrap();
        let (mut prod, cons) = RingFile::open_or_create(&ring_path(d.path(), 1), 1, MIN_RING_BYTES)
            .unwrap()
            .split();
        let mut cfg = SpoolConfig::new(d.path(), "n1");
        cfg.quota_bytes = 1000;
        let gate = Arc::new(AuditGate::default());
        let stats = Arc::new(AuditStats::new(2));
        let mut pump = Pump::new(
            Spool::open(cfg).unwrap(),
            vec![cons],
            gate.clone(),
            stats.clone(),
        );
        let mut pushed = 0;
        while !gate.closed() {
            pushed += 1;
            prod.push(&record(1, pushed)).unwrap();
            let _ = pump.step();
        }
        // The core drops what it cannot store (`CoreAudit::count_unaudited`).
        stats.cores[1].unaudited.fetch_add(7, Relaxed);
        assert!(pump.step().is_err(), "the staged batch still waits");
        assert_eq!(losses(&pump), [(1, "fail_open".to_string(), 7, 0)]);
        assert!(
            pump.spool().bytes() > 1000,
            "past the quota, in the reserve"
        );
        // More drops within the interval are merged and wait for it (or
        // for a flush).
        stats.cores[1].unaudited.fetch_add(2, Relaxed);
        stats.cores[0].unaudited.fetch_add(1, Relaxed);
        assert!(pump.step().is_err());
        assert_eq!(losses(&pump).len(), 1);
        assert_eq!(pump.store_losses(true), 2);
        assert_eq!(
            losses(&pump),
            [
                (1, "fail_open".to_string(), 7, 0),
                (0, "fail_open".to_string(), 1, 0),
                (1, "fail_open".to_string(), 2, 0),
            ]
        );
        assert_eq!(pump.store_losses(true), 0, "nothing new");
    }

    /// A damaged frame in a ring loses that frame only (those before and
    /// after it are stored), and the trail says so: a `ring_damaged`
    /// record with the bytes lost. A damaged length loses the rest.
    #[test]
    fn a_damaged_ring_is_reported_in_the_trail() {
        let d = tempfile::tempdir().unwrap();
        let path = ring_path(d.path(), 0);
        let (mut prod, cons) = RingFile::open_or_create(&path, 0, MIN_RING_BYTES)
            .unwrap()
            .split();
        for i in 1..=3 {
            prod.push(&record(0, i)).unwrap();
        }
        // A byte of the second frame's payload flipped under the pump.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let first = (crate::audit::ring::FRAME_HEADER_BYTES + record(0, 1).len()) as u64;
        let at = crate::audit::ring::RING_HEADER_BYTES as u64 + first + 20;
        std::os::unix::fs::FileExt::write_at(&f, &[0xee], at).unwrap();
        let mut pump = Pump::new(
            Spool::open(SpoolConfig::new(d.path(), "n1")).unwrap(),
            vec![cons],
            Arc::default(),
            Arc::new(AuditStats::new(1)),
        );
        pump.step().unwrap();
        let frame = (crate::audit::ring::FRAME_HEADER_BYTES + record(0, 2).len()) as u64;
        assert_eq!(losses(&pump), [(0, "ring_damaged".to_string(), 0, frame)]);
        let statements =
            |p: &Pump| -> Vec<String> { sqls(p).into_iter().filter(|s| !s.is_empty()).collect() };
        assert_eq!(statements(&pump), ["select 0, 1", "select 0, 3"]);
        assert_eq!(pump.ring_depth(), 0);

        // A length no frame can have: the frames from there on are lost.
        for i in 4..=6 {
            prod.push(&record(0, i)).unwrap();
        }
        let at = crate::audit::ring::RING_HEADER_BYTES as u64 + 3 * first + first;
        std::os::unix::fs::FileExt::write_at(&f, &[0xff, 0xff, 0xff, 0x7f], at).unwrap();
        pump.step().unwrap();
        // (Within a second of the last report too: with the batch.)
        let lost = losses(&pump);
        assert_eq!(
            lost[1],
            (0, "ring_damaged".to_string(), 0, 2 * frame),
            "{lost:?}"
        );
        assert_eq!(statements(&pump)[2..], ["select 0, 4"]);
        assert_eq!(pump.ring_depth(), 0);
    }

    /// Flip a payload byte of the `n`th frame (from 1) of `record(0, i)`
    /// frames written from the start of the ring at `path`.
    fn damage_frame(path: &std::path::Path, n: u64) {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        let frame = (crate::audit::ring::FRAME_HEADER_BYTES + record(0, 1).len()) as u64;
        let at = crate::audit::ring::RING_HEADER_BYTES as u64 + (n - 1) * frame + 20;
        std::os::unix::fs::FileExt::write_at(&f, &[0xee], at).unwrap();
    }

    /// A damaged frame found within a second of an earlier report is in
    /// the trail even when the process dies right after the ring was
    /// handed back past it (the next start cannot find it again).
    #[test]
    fn a_ring_damage_report_survives_a_crash_after_the_ring_moved_on() {
        let d = tempfile::tempdir().unwrap();
        let path = ring_path(d.path(), 0);
        {
            let (mut prod, cons) = RingFile::open_or_create(&path, 0, MIN_RING_BYTES)
                .unwrap()
                .split();
            let stats = Arc::new(AuditStats::new(1));
            let mut pump = Pump::new(
                Spool::open(SpoolConfig::new(d.path(), "n1")).unwrap(),
                vec![cons],
                Arc::default(),
                stats.clone(),
            );
            // A report a moment ago.
            stats.cores[0].unaudited.fetch_add(1, Relaxed);
            pump.step().unwrap();
            assert_eq!(losses(&pump).len(), 1);
            for i in 1..=3 {
                prod.push(&record(0, i)).unwrap();
            }
            damage_frame(&path, 2);
            pump.step().unwrap();
            assert_eq!(pump.ring_depth(), 0, "the ring moved past the damage");
            // Killed here: nothing else runs.
        }
        let f = RingFile::open_or_create(&path, 0, MIN_RING_BYTES).unwrap();
        let mut pump = Pump::new(
            Spool::open(SpoolConfig::new(d.path(), "n1")).unwrap(),
            vec![f.into_consumer()],
            Arc::default(),
            Arc::new(AuditStats::new(1)),
        );
        pump.step().unwrap();
        pump.store_losses(true);
        let frame = (crate::audit::ring::FRAME_HEADER_BYTES + record(0, 2).len()) as u64;
        assert_eq!(
            losses(&pump),
            [
                (0, "fail_open".to_string(), 1, 0),
                (0, "ring_damaged".to_string(), 0, frame)
            ]
        );
    }

    /// A damaged frame in a batch the spool refuses is reported once,
    /// however often the node restarts before the batch is stored: the
    /// damage is still in the ring, found again by each start.
    #[test]
    fn a_ring_damage_is_reported_once_across_restarts_while_the_spool_refuses() {
        let d = tempfile::tempdir().unwrap();
        let path = ring_path(d.path(), 0);
        let open = |quota: u64| {
            let f = RingFile::open_or_create(&path, 0, MIN_RING_BYTES).unwrap();
            let mut cfg = SpoolConfig::new(d.path(), "n1");
            cfg.quota_bytes = quota;
            Pump::new(
                Spool::open(cfg).unwrap(),
                vec![f.into_consumer()],
                Arc::default(),
                Arc::new(AuditStats::new(1)),
            )
        };
        {
            let (mut prod, _) = RingFile::open_or_create(&path, 0, MIN_RING_BYTES)
                .unwrap()
                .split();
            for i in 1..=40 {
                prod.push(&record(0, i)).unwrap();
            }
        }
        damage_frame(&path, 2);
        // Two runs, each killed while the spool refuses the batch.
        for _ in 0..2 {
            let mut pump = open(1000);
            assert!(pump.step().is_err(), "over the quota");
            assert!(pump.ring_depth() > 0);
        }
        // Room at last.
        let mut pump = open(1 << 20);
        pump.step().unwrap();
        pump.store_losses(true);
        let frame = (crate::audit::ring::FRAME_HEADER_BYTES + record(0, 2).len()) as u64;
        assert_eq!(losses(&pump), [(0, "ring_damaged".to_string(), 0, frame)]);
        let statements: Vec<String> = sqls(&pump).into_iter().filter(|s| !s.is_empty()).collect();
        assert_eq!(statements.len(), 39);
        assert_eq!(pump.ring_depth(), 0);
    }

    /// A report the spool cannot take, even in its reserve, waits (merged)
    /// until it can; at shutdown, what still waits is told in the log, the
    /// only place left for it.
    #[test]
    fn a_report_past_the_reserve_waits_and_is_logged_at_shutdown() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut spool = Spool::open(SpoolConfig::new(d.path(), "n1")).unwrap();
            let big = AuditRecord {
                statement: Some(AuditStatement {
                    sql: "x".repeat(600_000),
                    ..Default::default()
                }),
                ..Default::default()
            };
            spool.append_batch(&mut [big.clone(), big]).unwrap();
        }
        let mut cfg = SpoolConfig::new(d.path(), "n1");
        cfg.quota_bytes = 4096;
        let mut pump = Pump::new(
            Spool::open(cfg).unwrap(),
            vec![],
            Arc::default(),
            Arc::new(AuditStats::new(1)),
        );
        assert!(pump.spool().bytes() > 4096 + crate::audit::spool::LOSS_RESERVE_BYTES);
        pump.note_loss(0, loss::FAIL_OPEN, 5, 0, 1, 2);
        assert_eq!(pump.store_losses(true), 0);
        pump.note_loss(0, loss::FAIL_OPEN, 2, 0, 3, 4);
        assert_eq!(pump.store_losses(true), 0);
        assert_eq!(pump.log_unreported_losses(), 7, "merged, logged");
        // Room again: the merged report is stored.
        pump.ack(2).unwrap();
        assert_eq!(pump.store_losses(true), 1);
        assert_eq!(losses(&pump), [(0, "fail_open".to_string(), 7, 0)]);
        assert_eq!(pump.log_unreported_losses(), 0);
    }

    /// A loss's time span never ends before it starts, even when the wall
    /// clock was set back between two looks at the cores' counts.
    #[test]
    fn a_loss_span_is_ordered_when_the_clock_goes_back() {
        let d = tempfile::tempdir().unwrap();
        let stats = Arc::new(AuditStats::new(1));
        let mut pump = Pump::new(
            Spool::open(SpoolConfig::new(d.path(), "n1")).unwrap(),
            vec![],
            Arc::default(),
            stats.clone(),
        );
        // The last look, as the clock read then: an hour ahead of now.
        pump.checked_at = unix_nanos() + 3_600_000_000_000;
        stats.cores[0].unaudited.fetch_add(3, Relaxed);
        pump.step().unwrap();
        // (`losses` checks since <= until.)
        assert_eq!(losses(&pump), [(0, "fail_open".to_string(), 3, 0)]);
    }

    #[test]
    fn restart_after_a_crash_between_append_and_ring_commit_skips_duplicates() {
        let d = tempfile::tempdir().unwrap();
        {
            let (mut prod, cons) =
                RingFile::open_or_create(&ring_path(d.path(), 0), 0, MIN_RING_BYTES)
                    .unwrap()
                    .split();
            for i in 1..=5 {
                prod.push(&record(0, i)).unwrap();
            }
            // What step() does, stopped before the ring commit.
            let mut spool = Spool::open(SpoolConfig::new(d.path(), "n1")).unwrap();
            let mut bytes = Vec::new();
            let mut frames = Vec::new();
            cons.read_from(0, usize::MAX, &mut bytes, &mut frames)
                .unwrap();
            spool.append_raw(&bytes, &frames[..3]).unwrap();
            prod.push(&record(0, 6)).unwrap();
        }
        let f = RingFile::open_or_create(&ring_path(d.path(), 0), 0, MIN_RING_BYTES).unwrap();
        let spool = Spool::open(SpoolConfig::new(d.path(), "n1")).unwrap();
        let stats = Arc::new(AuditStats::new(1));
        let mut pump = Pump::new(
            spool,
            vec![f.into_consumer()],
            Arc::default(),
            stats.clone(),
        );
        assert_eq!(pump.step().unwrap(), 3);
        assert_eq!(stats.recovered_duplicates.load(Relaxed), 3);
        let got = sqls(&pump);
        assert_eq!(
            got,
            (1..=6)
                .map(|i| format!("select 0, {i}"))
                .collect::<Vec<_>>()
        );
    }
}
