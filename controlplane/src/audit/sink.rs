//! The audit sink interface both sinks implement, and the rules they share:
//! which records of a batch are new, how a search filter matches, how
//! results are ordered.

use std::collections::BTreeMap;

use proto::{AuditRecord, SearchRequest, SearchResponse, VerifyResponse};

use super::verify::Head;
use super::witness::Witness;
use crate::store::BoxFuture;

/// Records a search returns when the request gives no limit.
pub const DEFAULT_SEARCH_LIMIT: usize = 1000;
/// Longest node id accepted (it names a directory in the file sink).
pub const MAX_NODE_ID_LEN: usize = 128;

/// Result type of every sink operation.
pub type Result<T, E = SinkError> = std::result::Result<T, E>;

/// What went wrong in a sink operation.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The batch skips sequences the sink has not stored; nothing of the
    /// batch past `expected - 1` was stored. The node resends from
    /// `expected`.
    #[error("audit records from node {node_id} skip sequences: expected {expected}, got {got}")]
    Gap {
        node_id: String,
        expected: u64,
        got: u64,
    },
    /// A malformed batch (bad node id, a record of another node, sequence
    /// 0, sequences out of order).
    #[error("invalid audit batch: {0}")]
    InvalidArgument(String),
    /// The sink's database cannot be reached or failed; retryable.
    #[error("audit sink unavailable: {0}")]
    Unavailable(String),
    /// The sink's files could not be read or written.
    #[error("audit sink I/O error: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the file sink's directory.
    #[error("audit directory {0} is in use by another process")]
    Locked(String),
    /// An earlier write failed half-way and could not be undone.
    #[error("audit sink is unusable after a failed write; reopen it")]
    Poisoned,
}

impl SinkError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Unavailable(_) | SinkError::Io { .. })
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SinkError {
        let context = context.into();
        move |source| SinkError::Io { context, source }
    }
}

/// Where the control plane keeps audit records. Object safe: hold it as
/// `Arc<dyn AuditSink>`.
pub trait AuditSink: Send + Sync + 'static {
    /// Stores `records` (node `node_id`'s, in sequence order), chaining each
    /// to its predecessor, and makes them durable before returning the
    /// node's `durable_through`: every sequence from 1 to it is stored.
    ///
    /// Idempotent: records at or below what is stored are skipped. A batch
    /// whose first new record is not the next sequence is refused with
    /// [`SinkError::Gap`].
    fn append<'a>(
        &'a self,
        node_id: &'a str,
        records: Vec<AuditRecord>,
    ) -> BoxFuture<'a, Result<u64>>;

    /// The node's `durable_through` (0 for a node never seen): what to
    /// acknowledge when its stream opens.
    fn durable_through<'a>(&'a self, node_id: &'a str) -> BoxFuture<'a, Result<u64>>;

    /// Records matching every non-empty filter, oldest first, at most
    /// `limit` ([`DEFAULT_SEARCH_LIMIT`] when 0).
    fn search<'a>(&'a self, filter: &'a SearchRequest) -> BoxFuture<'a, Result<SearchResponse>>;

    /// The node's chain head: the sequence and hash of its last stored
    /// record (`None` for a node with none).
    fn head<'a>(&'a self, node_id: &'a str) -> BoxFuture<'a, Result<Option<Head>>>;

    /// Walks every node's chain (or `node_id`'s) and reports gaps, edits,
    /// deletions, broken links; each also against its witness in
    /// `witnesses`, and a node witnessed there that the sink holds nothing
    /// of is checked as one with no records (see
    /// [`verify_unseen`](super::verify::verify_unseen)).
    fn verify_witnessed<'a>(
        &'a self,
        node_id: Option<&'a str>,
        witnesses: &'a BTreeMap<String, Witness>,
    ) -> BoxFuture<'a, Result<VerifyResponse>>;

    /// [`AuditSink::verify_witnessed`] without witnesses.
    fn verify<'a>(&'a self, node_id: Option<&'a str>) -> BoxFuture<'a, Result<VerifyResponse>> {
        static NONE: BTreeMap<String, Witness> = BTreeMap::new();
        self.verify_witnessed(node_id, &NONE)
    }

    /// A session's records, oldest first.
    fn records_for_session<'a>(
        &'a self,
        session_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<AuditRecord>>>;
}

/// Refuses node ids that are empty, too long, or not `[A-Za-z0-9._-]`
/// (or `.`/`..`).
pub fn validate_node_id(node_id: &str) -> Result<()> {
    let ok = !node_id.is_empty()
        && node_id.len() <= MAX_NODE_ID_LEN
        && node_id != "."
        && node_id != ".."
        && node_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SinkError::InvalidArgument(format!(
            "node id {node_id:?} must be 1 to {MAX_NODE_ID_LEN} characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// The records of a batch that are new for a node whose last stored
/// sequence is `last`: checks the batch and drops what is already stored.
pub fn new_records(
    node_id: &str,
    last: u64,
    records: Vec<AuditRecord>,
) -> Result<Vec<AuditRecord>> {
    validate_node_id(node_id)?;
    let mut prev = None;
    let mut out = Vec::new();
    for mut rec in records {
        let md = rec
            .metadata
            .as_mut()
            .ok_or_else(|| SinkError::InvalidArgument("an audit record has no metadata".into()))?;
        if md.node_id.is_empty() {
            md.node_id = node_id.to_string();
        } else if md.node_id != node_id {
            return Err(SinkError::InvalidArgument(format!(
                "record of node {:?} in a batch of node {node_id:?}",
                md.node_id
            )));
        }
        let seq = md.sequence;
        if seq == 0 {
            return Err(SinkError::InvalidArgument(
                "audit record with sequence 0".into(),
            ));
        }
        if let Some(p) = prev {
            if seq != p + 1 {
                return Err(SinkError::InvalidArgument(format!(
                    "batch sequences are not consecutive: {seq} after {p}"
                )));
            }
        }
        prev = Some(seq);
        if seq <= last {
            continue;
        }
        let expected = last + 1 + out.len() as u64;
        if seq != expected {
            return Err(SinkError::Gap {
                node_id: node_id.to_string(),
                expected,
                got: seq,
            });
        }
        out.push(rec);
    }
    Ok(out)
}

/// Whether `rec` passes every non-empty filter of `f`.
pub fn matches(f: &SearchRequest, rec: &AuditRecord) -> bool {
    let md = rec.metadata.clone().unwrap_or_default();
    let eq = |want: &str, have: Option<&str>| want.is_empty() || have == Some(want);
    eq(&f.identity, rec.identity.as_ref().map(|i| i.name.as_str()))
        && eq(
            &f.connection,
            rec.connection.as_ref().map(|c| c.name.as_str()),
        )
        && eq(&f.session_id, rec.session.as_ref().map(|s| s.id.as_str()))
        && eq(&f.node_id, Some(md.node_id.as_str()))
        && (f.kind == 0 || f.kind == md.kind)
        && (f.decision == 0 || Some(f.decision) == rec.outcome.as_ref().map(|o| o.decision))
        && (f.from_unix_nanos == 0 || md.time_unix_nanos >= f.from_unix_nanos)
        && (f.to_unix_nanos == 0 || md.time_unix_nanos < f.to_unix_nanos)
}

/// The order results are returned in: time, then node, then sequence.
pub fn sort_key(rec: &AuditRecord) -> (i64, String, u64) {
    let md = rec.metadata.clone().unwrap_or_default();
    (md.time_unix_nanos, md.node_id, md.sequence)
}

/// The effective limit of a search.
pub fn limit_of(f: &SearchRequest) -> usize {
    if f.limit == 0 {
        DEFAULT_SEARCH_LIMIT
    } else {
        f.limit as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{AuditIdentity, AuditMetadata, AuditOutcome, Decision};

    fn rec(node: &str, seq: u64) -> AuditRecord {
        AuditRecord {
            metadata: Some(AuditMetadata {
                node_id: node.into(),
                sequence: seq,
                time_unix_nanos: seq as i64 * 10,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn seqs(v: &[AuditRecord]) -> Vec<u64> {
        v.iter()
            .map(|r| r.metadata.as_ref().unwrap().sequence)
            .collect()
    }

    #[test]
    fn new_records_skips_stored_and_refuses_gaps() {
        let b = |r: std::ops::RangeInclusive<u64>| r.map(|s| rec("n", s)).collect::<Vec<_>>();
        assert_eq!(seqs(&new_records("n", 0, b(1..=3)).unwrap()), [1, 2, 3]);
        assert_eq!(seqs(&new_records("n", 3, b(2..=5)).unwrap()), [4, 5]);
        assert!(new_records("n", 5, b(1..=5)).unwrap().is_empty());
        assert!(matches!(
            new_records("n", 3, b(5..=6)),
            Err(SinkError::Gap {
                expected: 4,
                got: 5,
                ..
            })
        ));
        let mut odd = b(1..=2);
        odd.push(rec("n", 4));
        assert!(matches!(
            new_records("n", 0, odd),
            Err(SinkError::InvalidArgument(_))
        ));
        assert!(matches!(
            new_records("n", 0, vec![rec("m", 1)]),
            Err(SinkError::InvalidArgument(_))
        ));
        assert!(matches!(
            new_records("n", 0, vec![rec("n", 0)]),
            Err(SinkError::InvalidArgument(_))
        ));
        // An empty node id inside the record is filled in.
        let filled = new_records("n", 0, vec![rec("", 1)]).unwrap();
        assert_eq!(filled[0].metadata.as_ref().unwrap().node_id, "n");
    }

    #[test]
    fn node_ids() {
        for ok in ["n1", "node-a.b_c", &"x".repeat(128)] {
            validate_node_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_node_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn filters() {
        let mut r = rec("n", 5);
        r.identity = Some(AuditIdentity {
            name: "alice".into(),
            ..Default::default()
        });
        r.outcome = Some(AuditOutcome {
            decision: Decision::Deny as i32,
            ..Default::default()
        });
        let f = |f: SearchRequest| matches(&f, &r);
        assert!(f(SearchRequest::default()));
        assert!(f(SearchRequest {
            identity: "alice".into(),
            decision: Decision::Deny as i32,
            from_unix_nanos: 50,
            to_unix_nanos: 51,
            ..Default::default()
        }));
        assert!(!f(SearchRequest {
            identity: "bob".into(),
            ..Default::default()
        }));
        assert!(!f(SearchRequest {
            to_unix_nanos: 50,
            ..Default::default()
        }));
        assert!(!f(SearchRequest {
            session_id: "s".into(),
            ..Default::default()
        }));
    }
}
