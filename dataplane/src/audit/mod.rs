//! The data plane's half of the audit pipeline.
//!
//! * [`ring`]: one bounded lock-free queue per data core. Cores push
//!   [`proto::AuditRecord`]s and never block; a full ring hands the record
//!   back. [`AuditGate`] tells cores whether records can be kept at all.
//! * [`spool`]: the control thread drains the rings into a local spool of
//!   checksummed segment files, which numbers records per node, syncs them,
//!   hands out what the control plane has not acknowledged, and deletes what
//!   it has.
//! * [`pump`]: one control-thread step tying them together: drain, append,
//!   open or close the gate; a refused batch stays pending (nothing is
//!   dropped) and the rings fill behind it.
//!
//! Who runs what: data cores hold an [`AuditProducer`] each; the control
//! thread owns the [`AuditPump`] (the [`AuditRings`] and the [`Spool`]).

pub mod pump;
pub mod ring;
pub mod spool;

pub use pump::AuditPump;
pub use ring::{
    AuditGate, AuditProducer, AuditRings, RingStats, WhenFull, AUDIT_UNAVAILABLE_SQLSTATE,
};
pub use spool::{FsyncPolicy, Recovery, Spool, SpoolConfig, SpoolError};
