//! The data plane's half of the audit pipeline.
//!
//! * [`tracker`] (sans-IO): follows a session's requests and responses and
//!   turns them into statement records (QUERY, PARSE, BIND, EXECUTE) with
//!   their outcome.
//! * [`binval`] (sans-IO): binary-format bind values as text, by type
//!   (numbers, dates and times, arrays, ...), for the tracker to mask.
//! * [`kind`] (sans-IO): the statement kind of a SQL text, lexically.
//! * [`record`]: writes records as protobuf into a reused buffer, without
//!   building an [`proto::AuditRecord`] on the data path.
//! * [`ring`]: one memory-mapped ring file per data core. A core appends a
//!   statement's record there, with memory copies and one release store,
//!   before the client sees the statement complete; the page cache keeps it
//!   if the process is killed.
//! * [`core`]: a core's handle on its ring (encode buffer, admission check,
//!   counters).
//! * [`spool`]: checksummed segment files that number records per node,
//!   sync them, hand out what the control plane has not acknowledged, and
//!   delete what it has.
//! * [`pump`]: the drain step, ring → spool, that never loses or
//!   duplicates a record across crashes.
//! * [`service`]: assembly and recovery at startup, the drain thread.
//! * [`shipper`]: the gRPC stream to the control plane.

pub mod binval;
pub mod core;
pub mod kind;
pub mod pump;
pub mod record;
pub mod ring;
pub mod service;
pub mod shipper;
pub mod spool;
pub mod tracker;

pub use self::core::{CoreAudit, CoreInit};
pub use pump::{AuditStats, CoreAuditStats, Pump};
pub use ring::{AuditGate, WhenFull, AUDIT_UNAVAILABLE_SQLSTATE};
pub use service::{Audit, AuditSettings};
pub use spool::{BaseChange, FsyncPolicy, Recovery, ShipBase, Spool, SpoolConfig, SpoolError};
pub use tracker::{Clock, Tracker};
