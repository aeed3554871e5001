//! Per-core audit rings: each data core pushes records into its own bounded
//! queue; the control thread drains all of them into the spool.
//!
//! A push never blocks and never allocates beyond the record itself: the
//! queue is a fixed-capacity lock-free array (`crossbeam_queue::ArrayQueue`).
//! When a ring is full the record comes back to the caller, which decides
//! (fail closed: refuse the statement; fail open: count it and go on). The
//! control thread also publishes whether the spool is at its disk quota in
//! [`AuditGate`], which cores read with one relaxed load before each
//! statement.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use proto::AuditRecord;

/// SQLSTATE sent to a client whose statement is refused because audit
/// records cannot be kept (`53100` disk_full).
pub const AUDIT_UNAVAILABLE_SQLSTATE: &str = "53100";

/// What to do with a statement when its audit record cannot be kept (ring
/// full, spool at its quota or unwritable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Refuse the statement with [`AUDIT_UNAVAILABLE_SQLSTATE`] (default:
    /// nothing runs unaudited).
    #[default]
    FailClosed,
    /// Run it anyway; the lost record is counted and logged.
    FailOpen,
}

/// One core's ring. Created by [`AuditRings::new`].
struct Ring {
    queue: ArrayQueue<AuditRecord>,
    pushed: AtomicU64,
    full: AtomicU64,
}

/// The producer end a data core holds. Cheap to clone; `Send` so it can be
/// moved to its worker thread at start.
#[derive(Clone)]
pub struct AuditProducer {
    ring: Arc<Ring>,
    gate: Arc<AuditGate>,
    core: u32,
}

impl AuditProducer {
    /// Queues `record` for the control thread. When the ring is full the
    /// record is handed back and the ring's `full` counter goes up; the
    /// caller applies its [`WhenFull`] policy.
    #[allow(clippy::result_large_err)] // the record is handed back on purpose
    pub fn push(&self, record: AuditRecord) -> Result<(), AuditRecord> {
        match self.ring.queue.push(record) {
            Ok(()) => {
                self.ring.pushed.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(record) => {
                self.ring.full.fetch_add(1, Ordering::Relaxed);
                Err(record)
            }
        }
    }

    /// Whether new statements must be refused (or, fail open, run
    /// unaudited): the spool is at its quota or cannot be written, or this
    /// core's ring is full.
    pub fn audit_unavailable(&self) -> bool {
        self.gate.closed() || self.ring.queue.is_full()
    }

    /// The core this producer belongs to.
    pub fn core(&self) -> u32 {
        self.core
    }

    /// The shared gate (for the refusal message).
    pub fn gate(&self) -> &AuditGate {
        &self.gate
    }
}

/// Written by the control thread, read by every core: whether audit
/// records can be kept right now, and why not.
#[derive(Debug, Default)]
pub struct AuditGate {
    closed: AtomicBool,
    /// Counted by cores that ran a statement unaudited (fail open).
    unaudited: AtomicU64,
}

impl AuditGate {
    /// Whether the spool refuses records (at quota, or unwritable).
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Set by the control thread after each spool append or ack.
    pub fn set_closed(&self, closed: bool) {
        self.closed.store(closed, Ordering::Relaxed);
    }

    /// Counts a statement that ran without its record (fail open).
    pub fn count_unaudited(&self) {
        self.unaudited.fetch_add(1, Ordering::Relaxed);
    }

    /// Statements that ran without their record so far.
    pub fn unaudited(&self) -> u64 {
        self.unaudited.load(Ordering::Relaxed)
    }

    /// The message a refused client gets.
    pub fn refusal_message(&self) -> &'static str {
        "audit records cannot be stored right now (the audit spool is at its disk quota \
         or cannot be written); statements are refused until the backlog drains"
    }
}

/// Counters of one ring, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingStats {
    pub core: u32,
    /// Records queued since start.
    pub pushed: u64,
    /// Pushes refused because the ring was full.
    pub full: u64,
    /// Records waiting now.
    pub depth: usize,
    pub capacity: usize,
}

/// The consumer side, held by the control thread: every core's ring.
pub struct AuditRings {
    rings: Vec<Arc<Ring>>,
    gate: Arc<AuditGate>,
    /// Ring the next drain starts at, so no core starves the others.
    next: usize,
}

impl AuditRings {
    /// One ring of `capacity` records per core.
    pub fn new(cores: usize, capacity: usize) -> AuditRings {
        assert!(capacity > 0, "audit ring capacity must be positive");
        let rings = (0..cores)
            .map(|_| {
                Arc::new(Ring {
                    queue: ArrayQueue::new(capacity),
                    pushed: AtomicU64::new(0),
                    full: AtomicU64::new(0),
                })
            })
            .collect();
        AuditRings {
            rings,
            gate: Arc::new(AuditGate::default()),
            next: 0,
        }
    }

    /// The producer for `core` (give it to that worker).
    pub fn producer(&self, core: usize) -> AuditProducer {
        AuditProducer {
            ring: self.rings[core].clone(),
            gate: self.gate.clone(),
            core: u32::try_from(core).expect("core index fits u32"),
        }
    }

    /// The gate the control thread opens and closes.
    pub fn gate(&self) -> &Arc<AuditGate> {
        &self.gate
    }

    /// Moves up to `max` waiting records into `out`, taking from the rings
    /// in turn. Returns how many were moved.
    pub fn drain_into(&mut self, out: &mut Vec<AuditRecord>, max: usize) -> usize {
        let n = self.rings.len();
        let mut moved = 0;
        let mut empty_in_a_row = 0;
        while moved < max && empty_in_a_row < n && n > 0 {
            let ring = &self.rings[self.next];
            self.next = (self.next + 1) % n;
            match ring.queue.pop() {
                Some(r) => {
                    out.push(r);
                    moved += 1;
                    empty_in_a_row = 0;
                }
                None => empty_in_a_row += 1,
            }
        }
        moved
    }

    /// Records waiting in all rings.
    pub fn depth(&self) -> usize {
        self.rings.iter().map(|r| r.queue.len()).sum()
    }

    /// Per-ring counters.
    pub fn stats(&self) -> Vec<RingStats> {
        self.rings
            .iter()
            .enumerate()
            .map(|(i, r)| RingStats {
                core: i as u32,
                pushed: r.pushed.load(Ordering::Relaxed),
                full: r.full.load(Ordering::Relaxed),
                depth: r.queue.len(),
                capacity: r.queue.capacity(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::AuditMetadata;

    fn rec(core: u32, n: u64) -> AuditRecord {
        AuditRecord {
            metadata: Some(AuditMetadata {
                core,
                time_unix_nanos: n as i64,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn full_ring_hands_the_record_back_and_counts() {
        let rings = AuditRings::new(1, 2);
        let p = rings.producer(0);
        assert!(p.push(rec(0, 1)).is_ok());
        assert!(!p.audit_unavailable());
        assert!(p.push(rec(0, 2)).is_ok());
        assert!(p.audit_unavailable());
        let back = p.push(rec(0, 3)).unwrap_err();
        assert_eq!(back.metadata.unwrap().time_unix_nanos, 3);
        let s = rings.stats()[0];
        assert_eq!((s.pushed, s.full, s.depth, s.capacity), (2, 1, 2, 2));
    }

    #[test]
    fn drain_takes_from_every_core_in_turn_and_keeps_each_cores_order() {
        let mut rings = AuditRings::new(3, 16);
        for core in 0..3u32 {
            let p = rings.producer(core as usize);
            for n in 0..5 {
                p.push(rec(core, n)).unwrap();
            }
        }
        let mut out = Vec::new();
        assert_eq!(rings.drain_into(&mut out, 6), 6);
        let cores: Vec<u32> = out
            .iter()
            .map(|r| r.metadata.as_ref().unwrap().core)
            .collect();
        assert_eq!(cores, [0, 1, 2, 0, 1, 2]);
        assert_eq!(rings.drain_into(&mut out, 100), 9);
        assert_eq!(rings.depth(), 0);
        for core in 0..3 {
            let seen: Vec<i64> = out
                .iter()
                .map(|r| r.metadata.as_ref().unwrap())
                .filter(|m| m.core == core)
                .map(|m| m.time_unix_nanos)
                .collect();
            assert_eq!(seen, [0, 1, 2, 3, 4]);
        }
    }

    #[test]
    fn gate_is_seen_by_producers() {
        let rings = AuditRings::new(2, 4);
        let p = rings.producer(1);
        assert_eq!(p.core(), 1);
        rings.gate().set_closed(true);
        assert!(p.audit_unavailable());
        rings.gate().set_closed(false);
        assert!(!p.audit_unavailable());
        p.gate().count_unaudited();
        assert_eq!(rings.gate().unaudited(), 1);
    }

    #[test]
    fn producers_on_other_threads_lose_nothing() {
        let mut rings = AuditRings::new(2, 64);
        let total = 10_000u64;
        let handles: Vec<_> = (0..2)
            .map(|core| {
                let p = rings.producer(core);
                std::thread::spawn(move || {
                    let mut refused = 0u64;
                    for n in 0..total {
                        let mut r = rec(core as u32, n);
                        // Spin until the consumer makes room: the test wants
                        // every record, a data core would apply WhenFull.
                        loop {
                            match p.push(r) {
                                Ok(()) => break,
                                Err(back) => {
                                    refused += 1;
                                    r = back;
                                    std::thread::yield_now();
                                }
                            }
                        }
                    }
                    refused
                })
            })
            .collect();
        let mut out = Vec::new();
        while out.len() < 2 * total as usize {
            if rings.drain_into(&mut out, 128) == 0 {
                std::thread::yield_now();
            }
        }
        let refused: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let stats = rings.stats();
        assert_eq!(stats.iter().map(|s| s.full).sum::<u64>(), refused);
        for core in 0..2u32 {
            let seen: Vec<i64> = out
                .iter()
                .map(|r| r.metadata.as_ref().unwrap())
                .filter(|m| m.core == core)
                .map(|m| m.time_unix_nanos)
                .collect();
            assert_eq!(seen, (0..total as i64).collect::<Vec<_>>());
        }
    }
}
