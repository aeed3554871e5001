//! # Sluice control plane
//!
//! State lives in a [`store::Store`]: etcd in production, an embedded
//! directory store with the same semantics (revisions, prefix watch, leases)
//! for one machine. The snapshot server, node membership and `sluicectl`
//! ([`ctl`], the operator CLI) are built on top of it.
//!
//! Audit records from the data planes are chained and stored by an
//! [`audit::AuditSink`]: append-only files by default, PostgreSQL in
//! production.

pub mod audit;
pub mod ctl;
pub mod grants;
pub mod resources;
pub mod server;
pub mod store;
