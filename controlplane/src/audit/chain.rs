//! The per-node hash chain over audit records.
//!
//! `hash(n) = SHA-256(prev_hash || encode(record n with prev_hash and hash
//! empty))`, where `prev_hash` is `hash(n-1)` of the same node and 32 zero
//! bytes for sequence 1. The encoding is prost's, which writes fields in
//! field-number order and is therefore the same for equal records.

use prost::Message;
use proto::AuditRecord;
use ring::digest;

/// Length of a chain hash.
pub const HASH_LEN: usize = 32;
/// `prev_hash` of a node's first record.
pub const GENESIS: [u8; HASH_LEN] = [0; HASH_LEN];

/// The bytes the hash covers after `prev_hash`: the record with both hash
/// fields cleared.
pub fn canonical_bytes(record: &AuditRecord) -> Vec<u8> {
    let mut r = record.clone();
    r.prev_hash.clear();
    r.hash.clear();
    r.encode_to_vec()
}

/// The hash of `record` when it follows a record hashed `prev_hash`.
pub fn compute_hash(prev_hash: &[u8], record: &AuditRecord) -> [u8; HASH_LEN] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prev_hash);
    ctx.update(&canonical_bytes(record));
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// Sets `record.prev_hash` and `record.hash` to extend a chain whose last
/// hash is `prev_hash`; returns the new hash.
pub fn link(prev_hash: &[u8; HASH_LEN], record: &mut AuditRecord) -> [u8; HASH_LEN] {
    let h = compute_hash(prev_hash, record);
    record.prev_hash = prev_hash.to_vec();
    record.hash = h.to_vec();
    h
}

/// Lower-case hex, for messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// [`hex`]'s bytes back (either case); `None` for anything else.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{AuditMetadata, AuditStatement};

    fn rec(seq: u64, sql: &str) -> AuditRecord {
        AuditRecord {
            metadata: Some(AuditMetadata {
                node_id: "n".into(),
                sequence: seq,
                ..Default::default()
            }),
            statement: Some(AuditStatement {
                sql: sql.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn hash_ignores_the_hash_fields_and_covers_everything_else() {
        let mut a = rec(1, "select 1");
        let h = link(&GENESIS, &mut a);
        assert_eq!(a.prev_hash, GENESIS);
        assert_eq!(a.hash, h);
        // Recomputing over the stored record (hash fields set) agrees.
        assert_eq!(compute_hash(&a.prev_hash, &a), h);
        let mut b = a.clone();
        b.statement.as_mut().unwrap().sql = "select 2".into();
        assert_ne!(compute_hash(&GENESIS, &b), h);
        // The predecessor is covered too.
        assert_ne!(compute_hash(&[1; 32], &a), h);
    }

    #[test]
    fn known_answer() {
        // SHA-256 of 32 zero bytes followed by the empty record's encoding
        // (nothing): SHA-256 of 32 zero bytes.
        let h = compute_hash(&GENESIS, &AuditRecord::default());
        assert_eq!(
            hex(&h),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
    }
}
