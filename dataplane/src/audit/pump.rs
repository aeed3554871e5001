//! The control thread's audit loop step: drain the core rings into the
//! spool and keep the [`AuditGate`](super::AuditGate) in step with whether
//! the spool accepts records.
//!
//! Nothing is dropped: a batch the spool refuses (quota, I/O error) stays
//! pending and is retried first on the next step; while it is pending the
//! rings are not drained, so they fill and cores see
//! [`AuditProducer::audit_unavailable`](super::AuditProducer::audit_unavailable)
//! and refuse new statements (fail closed) or count them (fail open).

use proto::AuditRecord;

use super::ring::AuditRings;
use super::spool::{Spool, SpoolError};

/// Rings + spool + the batch in between. Owned by the control thread.
pub struct AuditPump {
    rings: AuditRings,
    spool: Spool,
    pending: Vec<AuditRecord>,
    max_batch: usize,
}

impl AuditPump {
    /// `max_batch`: most records appended (and synced) per step.
    pub fn new(rings: AuditRings, spool: Spool, max_batch: usize) -> AuditPump {
        AuditPump {
            rings,
            spool,
            pending: Vec::new(),
            max_batch: max_batch.max(1),
        }
    }

    /// One step: drain the rings (unless a refused batch is pending),
    /// append to the spool, open or close the gate. Returns the records
    /// just made durable in the spool, numbered, ready to ship (empty when
    /// there was nothing). On an error the batch stays pending and the gate
    /// is closed.
    pub fn step(&mut self) -> Result<Vec<AuditRecord>, SpoolError> {
        if self.pending.is_empty() {
            self.rings.drain_into(&mut self.pending, self.max_batch);
        }
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        match self.spool.append_batch(&mut self.pending) {
            Ok(_) => {
                self.rings.gate().set_closed(false);
                Ok(std::mem::take(&mut self.pending))
            }
            Err(e) => {
                if self.rings.gate().closed() {
                    tracing::debug!(error = %e, "audit spool still refuses records");
                } else {
                    tracing::error!(error = %e, "audit spool refuses records; new statements are refused");
                }
                self.rings.gate().set_closed(true);
                Err(e)
            }
        }
    }

    /// The control plane made everything up to `durable_through` durable:
    /// free the spool (which may let a pending batch in on the next step).
    pub fn ack(&mut self, durable_through: u64) -> Result<(), SpoolError> {
        self.spool.ack(durable_through)
    }

    /// Records drained from the rings but not yet in the spool.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    pub fn rings(&self) -> &AuditRings {
        &self.rings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{SpoolConfig, WhenFull};
    use proto::{AuditMetadata, AuditStatement};

    fn rec(n: u64) -> AuditRecord {
        AuditRecord {
            metadata: Some(AuditMetadata {
                time_unix_nanos: n as i64,
                ..Default::default()
            }),
            statement: Some(AuditStatement {
                sql: format!("select {n}"),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A core's view: refuse the statement when audit is unavailable (fail
    /// closed), otherwise push its record.
    fn run_statement(p: &crate::audit::AuditProducer, n: u64, policy: WhenFull) -> bool {
        if p.audit_unavailable() && policy == WhenFull::FailClosed {
            return false;
        }
        match p.push(rec(n)) {
            Ok(()) => true,
            Err(_) if policy == WhenFull::FailOpen => {
                p.gate().count_unaudited();
                true
            }
            Err(_) => false,
        }
    }

    #[test]
    fn at_the_quota_statements_are_refused_and_nothing_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = SpoolConfig::new(d.path(), "n1");
        cfg.segment_bytes = 256;
        cfg.quota_bytes = 1024;
        let rings = AuditRings::new(1, 8);
        let p = rings.producer(0);
        let mut pump = AuditPump::new(rings, Spool::open(cfg).unwrap(), 4);

        let mut ran = 0u64;
        let mut refused = 0;
        let mut shipped = Vec::new();
        for n in 0..200 {
            if run_statement(&p, n, WhenFull::FailClosed) {
                ran += 1;
            } else {
                refused += 1;
            }
            if let Ok(recs) = pump.step() {
                shipped.extend(recs);
            }
        }
        assert!(refused > 0, "the quota was reached");
        assert!(pump.rings().gate().closed());
        let err = pump.step().unwrap_err();
        assert!(matches!(err, SpoolError::QuotaExceeded { .. }), "{err}");

        // The control plane comes back and acknowledges: the backlog drains,
        // the gate opens, and every statement that ran has its record.
        loop {
            let last = pump.spool().last_seq();
            pump.ack(last).unwrap();
            match pump.step() {
                Ok(recs) if recs.is_empty() && pump.rings().depth() == 0 => break,
                Ok(recs) => shipped.extend(recs),
                Err(e) => panic!("{e}"),
            }
        }
        assert!(!pump.rings().gate().closed());
        assert!(run_statement(&p, 1000, WhenFull::FailClosed));
        shipped.extend(pump.step().unwrap());
        let sqls: Vec<String> = shipped
            .iter()
            .map(|r| r.statement.as_ref().unwrap().sql.clone())
            .collect();
        assert_eq!(sqls.len() as u64, ran + 1);
        let seqs: Vec<u64> = shipped
            .iter()
            .map(|r| r.metadata.as_ref().unwrap().sequence)
            .collect();
        assert_eq!(seqs, (1..=ran + 1).collect::<Vec<_>>());
    }

    #[test]
    fn fail_open_counts_what_ran_unaudited() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = SpoolConfig::new(d.path(), "n1");
        cfg.quota_bytes = 300;
        let rings = AuditRings::new(1, 2);
        let p = rings.producer(0);
        let mut pump = AuditPump::new(rings, Spool::open(cfg).unwrap(), 2);
        for n in 0..50 {
            assert!(run_statement(&p, n, WhenFull::FailOpen));
            let _ = pump.step();
        }
        let gate = pump.rings().gate().clone();
        assert!(gate.closed());
        assert!(gate.unaudited() > 0);
        let stored = pump.spool().last_seq();
        let waiting = (pump.pending() + pump.rings().depth()) as u64;
        assert_eq!(stored + waiting + gate.unaudited(), 50);
    }
}
