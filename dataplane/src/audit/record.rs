//! Encoding audit records on the data path without building a
//! [`proto::AuditRecord`].
//!
//! A statement record is written straight into a reused buffer as protobuf
//! (the same bytes prost would accept), from borrowed fields: no `String`s,
//! no allocation. The fields that stay the same for a whole session
//! (identity, session, connection) are encoded once per session
//! ([`session_fields`]) and appended to every record as they are; protobuf
//! allows fields in any order.
//!
//! The spool adds the node's numbering to a record it got as bytes by
//! appending a second `metadata` field ([`metadata_overlay`]): a protobuf
//! decoder merges repeated occurrences of a message field, and the
//! overlay's scalars win. The control plane decodes records, so what it
//! hashes is the canonical encoding of the merged record.

use prost::Message;
use proto::{AuditConnection, AuditIdentity, AuditKind, AuditRecord, AuditSession, Decision};

const VARINT: u32 = 0;
const LEN: u32 = 2;

#[inline]
pub(crate) fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[inline]
fn key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(buf, u64::from((field << 3) | wire));
}

/// Non-zero varint field (proto3 leaves defaults out).
#[inline]
fn uint(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, VARINT);
        put_varint(buf, v);
    }
}

#[inline]
fn int64(buf: &mut Vec<u8>, field: u32, v: i64) {
    uint(buf, field, v as u64);
}

#[inline]
fn boolean(buf: &mut Vec<u8>, field: u32, v: bool) {
    uint(buf, field, u64::from(v));
}

/// Non-empty string field.
#[inline]
fn string(buf: &mut Vec<u8>, field: u32, v: &str) {
    if !v.is_empty() {
        key(buf, field, LEN);
        put_varint(buf, v.len() as u64);
        buf.extend_from_slice(v.as_bytes());
    }
}

/// A length-delimited field whose contents `f` appends. One byte is kept
/// for the length, which is all a record's parts need up to 127 bytes;
/// longer contents move up to make room for the longer varint.
#[inline]
fn nested(buf: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.push(0);
    f(buf);
    let len = buf.len() - at - 1;
    if len < 0x80 {
        buf[at] = len as u8;
        return;
    }
    let mut tmp = [0u8; 10];
    let mut n = 0;
    let mut v = len as u64;
    while v >= 0x80 {
        tmp[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    tmp[n] = v as u8;
    n += 1;
    // Room for n - 1 more bytes, then the contents move up behind them.
    buf.resize(buf.len() + n - 1, 0);
    buf.copy_within(at + 1..at + 1 + len, at + n);
    buf[at..at + n].copy_from_slice(&tmp[..n]);
}

#[inline]
fn zigzag32(v: i32) -> u64 {
    u64::from(((v << 1) ^ (v >> 31)) as u32)
}

/// Values masked in a statement's results under one rule in one column
/// (column empty: not in a result column — an error message, COPY data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedEntry {
    pub rule: Box<str>,
    pub column: Box<str>,
    pub count: u64,
}

/// A statement-level record (QUERY, PARSE, BIND, EXECUTE), borrowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatementView<'a> {
    pub kind: i32,
    /// `Decision` (0 is taken as ALLOW).
    pub decision: i32,
    /// When the request was forwarded to the target.
    pub time_unix_nanos: i64,
    pub sql: &'a str,
    pub sql_truncated: bool,
    pub sql_bytes: u64,
    pub statement_kind: &'a str,
    pub statement_name: &'a str,
    pub portal_name: &'a str,
    pub parameter_count: u32,
    pub parameter_lengths: &'a [i32],
    /// Bind parameter values, masked (`None`: NULL).
    pub parameters: &'a [Option<Box<str>>],
    pub rows: u64,
    pub bytes: u64,
    pub duration_nanos: u64,
    pub sqlstate: &'a str,
    pub error_message: &'a str,
    pub skipped: bool,
    pub incomplete: bool,
    pub masked: &'a [MaskedEntry],
}

/// Where and under which snapshot a record was made.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub core: u32,
    pub core_seq: u64,
    pub snapshot_version: i64,
}

/// Encode fields 2–4 (identity, session, connection) of a session's
/// records, once per session.
pub fn session_fields(
    identity: &AuditIdentity,
    session: &AuditSession,
    connection: &AuditConnection,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    prost::encoding::message::encode(2, identity, &mut out);
    prost::encoding::message::encode(3, session, &mut out);
    prost::encoding::message::encode(4, connection, &mut out);
    out
}

/// Append one statement record to `buf`: metadata, `session` (from
/// [`session_fields`]), statement, outcome.
pub fn encode_statement(buf: &mut Vec<u8>, origin: Origin, session: &[u8], v: &StatementView) {
    nested(buf, 1, |b| {
        uint(b, 2, v.kind as u64);
        int64(b, 3, v.time_unix_nanos);
        uint(b, 5, u64::from(origin.core));
        int64(b, 7, origin.snapshot_version);
        uint(b, 8, origin.core_seq);
    });
    buf.extend_from_slice(session);
    nested(buf, 5, |b| {
        string(b, 1, v.sql);
        boolean(b, 2, v.sql_truncated);
        uint(b, 3, v.sql_bytes);
        string(b, 4, v.statement_kind);
        for p in v.parameters {
            // Always present (an empty string is a value too).
            let s = p.as_deref().unwrap_or("");
            key(b, 5, LEN);
            put_varint(b, s.len() as u64);
            b.extend_from_slice(s.as_bytes());
        }
        if v.parameters.iter().any(Option::is_none) {
            // Packed repeated bool, one per parameter.
            nested(b, 6, |p| {
                for x in v.parameters {
                    p.push(u8::from(x.is_none()));
                }
            });
        }
        string(b, 7, v.statement_name);
        string(b, 8, v.portal_name);
        uint(b, 9, u64::from(v.parameter_count));
        if !v.parameter_lengths.is_empty() {
            // Packed repeated sint32.
            nested(b, 10, |p| {
                for &l in v.parameter_lengths {
                    put_varint(p, zigzag32(l));
                }
            });
        }
    });
    nested(buf, 6, |b| {
        let d = if v.decision == 0 {
            Decision::Allow as i32
        } else {
            v.decision
        };
        uint(b, 1, d as u64);
        uint(b, 4, v.rows);
        uint(b, 5, v.bytes);
        uint(b, 6, v.duration_nanos);
        for m in v.masked {
            nested(b, 7, |e| {
                string(e, 1, &m.rule);
                string(e, 2, &m.column);
                uint(e, 3, m.count);
            });
        }
        string(b, 8, v.sqlstate);
        string(b, 9, v.error_message);
        boolean(b, 10, v.skipped);
        boolean(b, 11, v.incomplete);
    });
}

/// Append any record, stamped with `origin`, via prost (session start/end,
/// auth failures: rare, allocation is fine there).
pub fn encode_record(buf: &mut Vec<u8>, origin: Origin, rec: &mut AuditRecord) {
    let md = rec.metadata.get_or_insert_with(Default::default);
    md.core = origin.core;
    md.core_seq = origin.core_seq;
    if md.snapshot_version == 0 {
        md.snapshot_version = origin.snapshot_version;
    }
    rec.encode(buf).expect("Vec grows");
}

/// The metadata field the spool appends to a record it stores as bytes:
/// node id, sequence and record id (`<node>-<sequence>`).
pub fn metadata_overlay(buf: &mut Vec<u8>, node_id: &str, sequence: u64) {
    nested(buf, 1, |b| {
        let digits = Digits::of(sequence);
        key(b, 1, LEN);
        put_varint(b, (node_id.len() + 1 + digits.as_bytes().len()) as u64);
        b.extend_from_slice(node_id.as_bytes());
        b.push(b'-');
        b.extend_from_slice(digits.as_bytes());
        string(b, 4, node_id);
        uint(b, 6, sequence);
    });
}

/// Decimal digits of a u64, without allocating.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn of(mut v: u64) -> Digits {
        let mut buf = [0u8; 20];
        let mut i = 20;
        loop {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        Digits { buf, start: i }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Kinds that count as statements (one per Query or Execute message).
pub fn is_statement_kind(kind: i32) -> bool {
    kind == AuditKind::Query as i32 || kind == AuditKind::Execute as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{AuditMetadata, AuditOutcome, AuditStatement, AuthMethod};

    fn session() -> (AuditIdentity, AuditSession, AuditConnection) {
        (
            AuditIdentity {
                name: "agent1".into(),
                groups: vec!["bots".into(), "ops".into()],
                auth_method: AuthMethod::ScramApiKey as i32,
                issuer: String::new(),
            },
            AuditSession {
                id: "s-1".into(),
                client_address: "127.0.0.1:5555".into(),
                application_name: "psql".into(),
                tls: true,
            },
            AuditConnection {
                name: "app".into(),
                target: "db:5432".into(),
                database: "appdb".into(),
                role: "app_owner".into(),
            },
        )
    }

    #[test]
    fn statement_encoding_decodes_as_the_record_prost_would_build() {
        let (i, s, c) = session();
        let prefix = session_fields(&i, &s, &c);
        let long = "é".repeat(200); // multi-byte, > 127 bytes: 2-byte lengths
        let lengths = [4, -1, 0, 70000, -1];
        let params: Vec<Option<Box<str>>> = vec![
            Some("4242".into()),
            None,
            Some("".into()),
            Some("x".repeat(200).into()),
            None,
        ];
        let masked = [
            MaskedEntry {
                rule: "email".into(),
                column: "contact".into(),
                count: 3,
            },
            MaskedEntry {
                rule: "payment_card".into(),
                column: "".into(),
                count: 1,
            },
        ];
        let view = StatementView {
            kind: AuditKind::Execute as i32,
            decision: Decision::Allow as i32,
            time_unix_nanos: 1_700_000_000_123_456_789,
            sql: &long,
            sql_truncated: true,
            sql_bytes: 123_456,
            statement_kind: "insert",
            statement_name: "s1",
            portal_name: "",
            parameter_count: 5,
            parameter_lengths: &lengths,
            parameters: &params,
            masked: &masked,
            rows: 42,
            bytes: 9000,
            duration_nanos: 1234,
            sqlstate: "23505",
            error_message: "duplicate key",
            skipped: false,
            incomplete: true,
        };
        let mut buf = vec![0xAA]; // appends after what is there
        let origin = Origin {
            core: 3,
            core_seq: 77,
            snapshot_version: 9,
        };
        encode_statement(&mut buf, origin, &prefix, &view);
        let got = AuditRecord::decode(&buf[1..]).unwrap();
        let want = AuditRecord {
            metadata: Some(AuditMetadata {
                kind: AuditKind::Execute as i32,
                time_unix_nanos: view.time_unix_nanos,
                core: 3,
                snapshot_version: 9,
                core_seq: 77,
                ..Default::default()
            }),
            identity: Some(i),
            session: Some(s),
            connection: Some(c),
            statement: Some(AuditStatement {
                sql: long.clone(),
                sql_truncated: true,
                sql_bytes: 123_456,
                statement_kind: "insert".into(),
                statement_name: "s1".into(),
                parameter_count: 5,
                parameter_lengths: lengths.to_vec(),
                parameters: vec![
                    "4242".into(),
                    "".into(),
                    "".into(),
                    "x".repeat(200),
                    "".into(),
                ],
                parameter_nulls: vec![false, true, false, false, true],
                ..Default::default()
            }),
            outcome: Some(AuditOutcome {
                decision: Decision::Allow as i32,
                masked: vec![
                    proto::MaskedCount {
                        rule: "email".into(),
                        column: "contact".into(),
                        count: 3,
                    },
                    proto::MaskedCount {
                        rule: "payment_card".into(),
                        column: "".into(),
                        count: 1,
                    },
                ],
                rows: 42,
                bytes: 9000,
                duration_nanos: 1234,
                sqlstate: "23505".into(),
                error_message: "duplicate key".into(),
                incomplete: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(got, want);
        // And byte-for-byte what prost writes for the same record, apart
        // from field order (session fields come after metadata here too).
        assert_eq!(buf.len() - 1, want.encoded_len());
    }

    #[test]
    fn empty_statement_record_decodes() {
        let mut buf = Vec::new();
        let origin = Origin {
            core: 0,
            core_seq: 1,
            snapshot_version: 0,
        };
        encode_statement(
            &mut buf,
            origin,
            &[],
            &StatementView {
                kind: AuditKind::Query as i32,
                ..Default::default()
            },
        );
        let got = AuditRecord::decode(buf.as_slice()).unwrap();
        assert_eq!(got.metadata.unwrap().core_seq, 1);
        assert_eq!(got.statement.unwrap(), AuditStatement::default());
    }

    #[test]
    fn overlay_sets_the_numbering_and_keeps_the_rest() {
        let (i, s, c) = session();
        let prefix = session_fields(&i, &s, &c);
        let mut buf = Vec::new();
        encode_statement(
            &mut buf,
            Origin {
                core: 1,
                core_seq: 5,
                snapshot_version: 2,
            },
            &prefix,
            &StatementView {
                kind: AuditKind::Query as i32,
                sql: "select 1",
                sql_bytes: 8,
                ..Default::default()
            },
        );
        for (node, seq) in [
            ("n1", 1u64),
            ("node-with-a-long-name".repeat(8).as_str(), u64::MAX),
        ] {
            let mut b = buf.clone();
            metadata_overlay(&mut b, node, seq);
            let r = AuditRecord::decode(b.as_slice()).unwrap();
            let md = r.metadata.unwrap();
            assert_eq!(md.node_id, node);
            assert_eq!(md.sequence, seq);
            assert_eq!(md.id, format!("{node}-{seq}"));
            assert_eq!((md.core, md.core_seq, md.snapshot_version), (1, 5, 2));
            assert_eq!(md.kind, AuditKind::Query as i32);
            assert_eq!(r.statement.unwrap().sql, "select 1");
            assert_eq!(r.identity.unwrap().name, "agent1");
        }
    }
}
