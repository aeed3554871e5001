//! The control plane's half of the audit pipeline: the per-node hash chain
//! ([`chain`]), the [`AuditSink`] interface ([`sink`]) with its embedded
//! file implementation ([`FileSink`]) and its PostgreSQL implementation
//! ([`PgSink`]), and chain verification ([`verify`]) both sinks use,
//! against the chain heads the configuration store witnesses
//! ([`witness`]);
//! replaying a session against today's grants ([`replay`]) and counting
//! the facts of an evidence report ([`evidence`]).

pub mod chain;
pub mod evidence;
pub mod file_sink;
pub mod pg_sink;
pub mod replay;
pub mod sink;
pub mod verify;
pub mod witness;

pub use file_sink::FileSink;
pub use pg_sink::PgSink;
pub use sink::{AuditSink, SinkError};
