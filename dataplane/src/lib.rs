//! # Sluice data plane (`sluice-dp`)
//!
//! A thread-per-core PostgreSQL gateway: clients authenticate to Sluice with
//! an API key (SCRAM-SHA-256) or an OIDC JWT, Sluice logs in to the target
//! with credentials the client never sees, then relays the session frame by
//! frame from the buffers the bytes arrived in.
//!
//! Layout:
//! - [`protocol`], [`auth`], [`session`]: sans-IO code over byte slices
//!   (frame splitting, startup parsing, SCRAM, JWT, handshakes). No sockets,
//!   no clock; unit-tested and fuzzable.
//! - [`net`]: the monoio drivers (workers, listeners, the per-connection
//!   relay).
//! - [`mask`]: sans-IO masking of sensitive values in DataRow, CopyData and
//!   error messages (SIMD candidate scan, validators, column rules).
//! - [`snapshot`]: the immutable policy snapshot cores read.
//! - [`admin`], [`metrics`]: the control thread's HTTP server and the
//!   per-core counters it merges at scrape time.
//! - [`audit`]: per-core audit rings and the control thread's spool.
//!
//! What this crate must never do: block a data core, allocate per message on
//! the relay path, lock across cores on the hot path, or log a secret.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod cancel;
pub mod config;
pub mod control;
pub mod devcerts;
pub mod mask;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod tls;
