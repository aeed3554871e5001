//! SQLSTATE codes Sluice answers with.

pub const PROTOCOL_VIOLATION: &str = "08P01";
pub const CONNECTION_FAILURE: &str = "08006";
pub const UNABLE_TO_CONNECT: &str = "08001";
pub const SERVER_REJECTED_CONNECTION: &str = "08004";
pub const INVALID_AUTHORIZATION: &str = "28000";
pub const INVALID_PASSWORD: &str = "28P01";
pub const INVALID_CATALOG_NAME: &str = "3D000";
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
pub const ADMIN_SHUTDOWN: &str = "57P01";
pub const CANNOT_CONNECT_NOW: &str = "57P03";
pub const INTERNAL_ERROR: &str = "XX000";
