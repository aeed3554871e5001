//! Sluice's gRPC API, package `sluice.v1`: configuration resources, the
//! snapshot stream between control plane and data planes, node status and
//! the admin service `sluicectl` calls, and the audit records with their
//! ingest and query services. Generated from `proto/sluice/v1/sluice.proto`
//! and `proto/sluice/v1/audit.proto` by `build.rs`.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("sluice.v1");
}

pub use v1::*;

/// The `apiVersion` every resource document carries.
pub const API_VERSION: &str = "sluice.dev/v1";

/// Largest configuration (its resources, encoded) a control plane stores:
/// an apply that would make it larger is refused.
pub const MAX_CONFIG_BYTES: usize = 32 << 20;

/// Largest gRPC message that carries a configuration: an apply, a `get`
/// answer, a snapshot (the configuration plus the JWKS documents fetched
/// for identity providers given by URL, 1 MiB at most each). The admin
/// service, `sluicectl` and nodes accept messages up to this size (gRPC's
/// default limit is 4 MiB, far below [`MAX_CONFIG_BYTES`]).
pub const MAX_MESSAGE_BYTES: usize = 128 << 20;

/// Largest `AuditBatch` a control plane accepts from a node; a node's
/// batches stay under it (its spool reads at most half of it at once, and
/// one record is at most 1 MiB).
pub const MAX_AUDIT_BATCH_BYTES: usize = 32 << 20;

/// Resource kinds, in the order they are applied (referenced kinds first).
pub const KINDS: [&str; 7] = [
    "MaskingProfile",
    "Connection",
    "IdentityProvider",
    "ApiKey",
    "ClientCertificate",
    "Group",
    "Policy",
];

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn snapshot_round_trips() {
        let r = Resource {
            api_version: API_VERSION.into(),
            kind: "Connection".into(),
            name: "orders".into(),
            spec: Some(resource::Spec::Connection(ConnectionSpec {
                host: "db".into(),
                port: 5432,
                database: "orders".into(),
                user: "gw".into(),
                password: "pw".into(),
                auth: "scram-sha-256".into(),
                masking_profile: String::new(),
                tls: None,
            })),
            revision: 7,
        };
        let resp = SnapshotResponse {
            version: 7,
            nonce: "n1".into(),
            snapshot: Some(Snapshot {
                version: 7,
                resources: vec![r],
            }),
        };
        let bytes = resp.encode_to_vec();
        assert_eq!(SnapshotResponse::decode(bytes.as_slice()).unwrap(), resp);
    }

    #[test]
    fn audit_record_round_trips() {
        let rec = AuditRecord {
            metadata: Some(AuditMetadata {
                id: "n1-7".into(),
                kind: AuditKind::Execute as i32,
                time_unix_nanos: 1_700_000_000_000_000_000,
                node_id: "n1".into(),
                core: 3,
                sequence: 7,
                snapshot_version: 12,
                core_seq: 41,
            }),
            outcome: Some(AuditOutcome {
                decision: Decision::Deny as i32,
                masked: vec![MaskedCount {
                    rule: "email".into(),
                    column: "users.email".into(),
                    count: 2,
                }],
                ..Default::default()
            }),
            prev_hash: vec![0; 32],
            ..Default::default()
        };
        let bytes = rec.encode_to_vec();
        let back = AuditRecord::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.metadata.unwrap().kind(), AuditKind::Execute);
    }
}
