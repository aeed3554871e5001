//! Per-connection session logic, sans-IO: the client handshake, the target
//! handshake, and the relay bookkeeping.

pub mod handshake;
pub mod masker;
pub mod schema;
pub mod target;
