//! Client authentication: API keys (SCRAM-SHA-256 verifiers) and OIDC JWTs.

pub mod cert;
pub mod jwt;
pub mod scram;
