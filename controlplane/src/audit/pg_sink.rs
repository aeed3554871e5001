//! The production audit sink: PostgreSQL.
//!
//! ```text
//! sluice_audit.records   partitioned by range on ts, one partition per UTC
//!                        day (records_YYYYMMDD, created on demand);
//!                        PRIMARY KEY (node_id, sequence, ts); indexes on ts,
//!                        (identity, ts), (session_id, ts), (connection, ts).
//!                        `record` is the full prost encoding (with
//!                        prev_hash and hash); the other columns are copies
//!                        for searching, checked against it by verify.
//! sluice_audit.heads     one row per node: last sequence and hash, updated
//!                        in the same transaction as the records.
//! ```
//!
//! An append is one transaction: lock the node's head row (`FOR UPDATE`, so
//! two control-plane replicas serialise per node), drop what is already
//! stored, chain the rest to the head, insert them with one `INSERT …
//! SELECT FROM unnest(…) ON CONFLICT DO NOTHING`, move the head, commit.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex as StdMutex;

use proto::{AuditKind, AuditRecord, Decision, SearchRequest, SearchResponse, VerifyResponse};
use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

use super::chain::{self, GENESIS, HASH_LEN};
use super::sink::{limit_of, new_records, validate_node_id, AuditSink, Result, SinkError};
use super::verify::{verify_node_witnessed, verify_unseen, Head, StoredRecord};
use super::witness::Witness;
use crate::store::BoxFuture;

/// Advisory lock key taken while creating tables and partitions.
const DDL_LOCK: i64 = 0x0053_4C41_5544_4954; // "SLAUDIT"
const MICROS_PER_DAY: i64 = 86_400_000_000;

const SCHEMA: &str = "
CREATE SCHEMA IF NOT EXISTS sluice_audit;
CREATE TABLE IF NOT EXISTS sluice_audit.records (
    ts          timestamptz NOT NULL,
    node_id     text        NOT NULL,
    sequence    bigint      NOT NULL,
    kind        text        NOT NULL,
    identity    text        NOT NULL,
    session_id  text        NOT NULL,
    connection  text        NOT NULL,
    statement   text        NOT NULL,
    decision    text        NOT NULL,
    sqlstate    text        NOT NULL,
    rows        bigint      NOT NULL,
    bytes       bigint      NOT NULL,
    duration_ns bigint      NOT NULL,
    masked      jsonb       NOT NULL,
    record      bytea       NOT NULL,
    prev_hash   bytea       NOT NULL,
    hash        bytea       NOT NULL,
    PRIMARY KEY (node_id, sequence, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX IF NOT EXISTS records_ts ON sluice_audit.records (ts);
CREATE INDEX IF NOT EXISTS records_identity ON sluice_audit.records (identity, ts);
CREATE INDEX IF NOT EXISTS records_session ON sluice_audit.records (session_id, ts);
CREATE INDEX IF NOT EXISTS records_connection ON sluice_audit.records (connection, ts);
CREATE TABLE IF NOT EXISTS sluice_audit.heads (
    node_id    text        PRIMARY KEY,
    sequence   bigint      NOT NULL,
    hash       bytea       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
";

/// Microseconds since the epoch as a timestamptz (exact below 2^53 µs).
const TS_FROM_MICROS: &str = "(to_timestamp(0) + u.ts * interval '1 microsecond')";
const TS_TO_MICROS: &str = "(extract(epoch from ts) * 1000000)::bigint";

/// The PostgreSQL sink.
pub struct PgSink {
    conn_str: String,
    client: Mutex<Option<Client>>,
    /// Days whose partition is known to exist.
    partitions: StdMutex<HashSet<i64>>,
}

fn pg_err(context: &str, e: tokio_postgres::Error) -> SinkError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(&e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    };
    SinkError::Unavailable(format!("{context}: {detail}"))
}

/// The searchable copies of a record's fields, as stored in columns.
#[derive(Debug, Clone, PartialEq)]
struct Columns {
    ts_micros: i64,
    kind: String,
    identity: String,
    session_id: String,
    connection: String,
    statement: String,
    decision: String,
    sqlstate: String,
    rows: i64,
    bytes: i64,
    duration_ns: i64,
    masked: serde_json::Value,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl Columns {
    fn of(r: &AuditRecord) -> Columns {
        let md = r.metadata.clone().unwrap_or_default();
        let out = r.outcome.clone().unwrap_or_default();
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Columns {
            ts_micros: md.time_unix_nanos.div_euclid(1000),
            kind: AuditKind::try_from(md.kind)
                .map(|k| k.as_str_name().to_string())
                .unwrap_or_else(|_| md.kind.to_string()),
            identity: r.identity.as_ref().map(|i| i.name.clone()).unwrap_or_default(),
            session_id: r.session.as_ref().map(|s| s.id.clone()).unwrap_or_default(),
            connection: r
                .connection
                .as_ref()
                .map(|c| c.name.clone())
                .unwrap_or_default(),
            statement: r.statement.as_ref().map(|s| s.sql.clone()).unwrap_or_default(),
            decision: decision_name(out.decision),
            sqlstate: out.sqlstate.clone(),
            rows: clamp(out.rows),
            bytes: clamp(out.bytes),
            duration_ns: clamp(out.duration_nanos),
            masked: serde_json::Value::Array(
                out.masked
                    .iter()
                    .map(|m| {
                        serde_json::json!({"rule": m.rule, "column": m.column, "count": m.count})
                    })
                    .collect(),
            ),
            prev_hash: r.prev_hash.clone(),
            hash: r.hash.clone(),
        }
    }
}

fn decision_name(d: i32) -> String {
    Decision::try_from(d)
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| d.to_string())
}

/// `records_YYYYMMDD` and the day's bounds as timestamptz literals.
fn partition_of(day: i64) -> (String, String, String) {
    let date = |d: i64| {
        let jd = i32::try_from(2_440_588 + d).unwrap_or(2_440_588);
        time::Date::from_julian_day(jd).unwrap_or(time::Date::MIN)
    };
    let (a, b) = (date(day), date(day + 1));
    let lit = |d: time::Date| {
        format!(
            "{:04}-{:02}-{:02} 00:00:00+00",
            d.year(),
            u8::from(d.month()),
            d.day()
        )
    };
    (
        format!(
            "records_{:04}{:02}{:02}",
            a.year(),
            u8::from(a.month()),
            a.day()
        ),
        lit(a),
        lit(b),
    )
}

impl PgSink {
    /// Connects with a libpq-style connection string (`host=… port=… user=…
    /// password=… dbname=…`, no TLS) and creates the schema if missing.
    pub async fn connect(conn_str: &str) -> Result<PgSink> {
        let sink = PgSink {
            conn_str: conn_str.to_string(),
            client: Mutex::new(None),
            partitions: StdMutex::new(HashSet::new()),
        };
        {
            let mut guard = sink.client().await?;
            let client = guard.as_mut().expect("connected");
            let tx = client.transaction().await.map_err(|e| pg_err("begin", e))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
                .await
                .map_err(|e| pg_err("lock", e))?;
            tx.batch_execute(SCHEMA)
                .await
                .map_err(|e| pg_err("create audit schema", e))?;
            tx.commit().await.map_err(|e| pg_err("commit", e))?;
        }
        Ok(sink)
    }

    /// The client, (re)connected when there is none or it has closed.
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            let (client, conn) = tokio_postgres::connect(&self.conn_str, NoTls)
                .await
                .map_err(|e| pg_err("connect to the audit database", e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(error = %e, "audit database connection ended");
                }
            });
            *guard = Some(client);
        }
        Ok(guard)
    }

    async fn ensure_partitions(&self, client: &mut Client, days: &[i64]) -> Result<()> {
        let missing: Vec<i64> = {
            let known = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
            days.iter()
                .copied()
                .filter(|d| !known.contains(d))
                .collect()
        };
        for day in missing {
            let (name, from, to) = partition_of(day);
            let tx = client.transaction().await.map_err(|e| pg_err("begin", e))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
                .await
                .map_err(|e| pg_err("lock", e))?;
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS sluice_audit.{name} PARTITION OF sluice_audit.records \
                 FOR VALUES FROM ('{from}') TO ('{to}')"
            ))
            .await
            .map_err(|e| pg_err(&format!("create partition {name}"), e))?;
            tx.commit().await.map_err(|e| pg_err("commit", e))?;
            self.partitions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(day);
        }
        Ok(())
    }

    async fn do_append(&self, node_id: &str, records: Vec<AuditRecord>) -> Result<u64> {
        validate_node_id(node_id)?;
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected");
        let mut days: Vec<i64> = records
            .iter()
            .map(|r| {
                let nanos = r.metadata.as_ref().map_or(0, |m| m.time_unix_nanos);
                nanos.div_euclid(1000).div_euclid(MICROS_PER_DAY)
            })
            .collect();
        days.sort_unstable();
        days.dedup();
        self.ensure_partitions(client, &days).await?;

        let tx = client.transaction().await.map_err(|e| pg_err("begin", e))?;
        tx.execute(
            "INSERT INTO sluice_audit.heads (node_id, sequence, hash) VALUES ($1, 0, $2) \
             ON CONFLICT (node_id) DO NOTHING",
            &[&node_id, &GENESIS.as_slice()],
        )
        .await
        .map_err(|e| pg_err("insert chain head", e))?;
        let row = tx
            .query_one(
                "SELECT sequence, hash FROM sluice_audit.heads WHERE node_id = $1 FOR UPDATE",
                &[&node_id],
            )
            .await
            .map_err(|e| pg_err("lock chain head", e))?;
        let last = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        let head_hash: Vec<u8> = row.get(1);
        let mut fresh = new_records(node_id, last, records)?;
        if fresh.is_empty() {
            return Ok(last);
        }
        let mut hash: [u8; HASH_LEN] = head_hash.try_into().map_err(|_| {
            SinkError::Unavailable(format!("chain head of node {node_id} has a malformed hash"))
        })?;
        let n = fresh.len();
        let mut ts = Vec::with_capacity(n);
        let mut seq = Vec::with_capacity(n);
        let mut kind = Vec::with_capacity(n);
        let mut identity = Vec::with_capacity(n);
        let mut session = Vec::with_capacity(n);
        let mut connection = Vec::with_capacity(n);
        let mut statement = Vec::with_capacity(n);
        let mut decision = Vec::with_capacity(n);
        let mut sqlstate = Vec::with_capacity(n);
        let mut rows = Vec::with_capacity(n);
        let mut bytes = Vec::with_capacity(n);
        let mut duration = Vec::with_capacity(n);
        let mut masked = Vec::with_capacity(n);
        let mut encoded = Vec::with_capacity(n);
        let mut prev_hashes = Vec::with_capacity(n);
        let mut hashes = Vec::with_capacity(n);
        for rec in &mut fresh {
            hash = chain::link(&hash, rec);
            let c = Columns::of(rec);
            ts.push(c.ts_micros);
            seq.push(
                i64::try_from(rec.metadata.as_ref().map_or(0, |m| m.sequence)).unwrap_or(i64::MAX),
            );
            kind.push(c.kind);
            identity.push(c.identity);
            session.push(c.session_id);
            connection.push(c.connection);
            statement.push(c.statement);
            decision.push(c.decision);
            sqlstate.push(c.sqlstate);
            rows.push(c.rows);
            bytes.push(c.bytes);
            duration.push(c.duration_ns);
            masked.push(c.masked.to_string());
            encoded.push(prost::Message::encode_to_vec(&*rec));
            prev_hashes.push(c.prev_hash);
            hashes.push(c.hash);
        }
        let node = vec![node_id.to_string(); n];
        let sql = format!(
            "INSERT INTO sluice_audit.records (ts, node_id, sequence, kind, identity, session_id, \
             connection, statement, decision, sqlstate, rows, bytes, duration_ns, masked, record, \
             prev_hash, hash) \
             SELECT {TS_FROM_MICROS}, u.node_id, u.seq, u.kind, u.identity, u.session_id, \
             u.connection, u.statement, u.decision, u.sqlstate, u.rows, u.bytes, u.duration_ns, \
             u.masked::jsonb, u.record, u.prev_hash, u.hash \
             FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], \
             $12::bigint[], $13::bigint[], $14::text[], $15::bytea[], $16::bytea[], $17::bytea[]) \
             AS u(ts, node_id, seq, kind, identity, session_id, connection, statement, decision, \
             sqlstate, rows, bytes, duration_ns, masked, record, prev_hash, hash) \
             ON CONFLICT DO NOTHING"
        );
        let params: [&(dyn ToSql + Sync); 17] = [
            &ts,
            &node,
            &seq,
            &kind,
            &identity,
            &session,
            &connection,
            &statement,
            &decision,
            &sqlstate,
            &rows,
            &bytes,
            &duration,
            &masked,
            &encoded,
            &prev_hashes,
            &hashes,
        ];
        tx.execute(sql.as_str(), &params)
            .await
            .map_err(|e| pg_err("insert audit records", e))?;
        let new_last = last + n as u64;
        tx.execute(
            "UPDATE sluice_audit.heads SET sequence = $2, hash = $3, updated_at = now() \
             WHERE node_id = $1",
            &[&node_id, &(new_last as i64), &hash.as_slice()],
        )
        .await
        .map_err(|e| pg_err("move chain head", e))?;
        tx.commit()
            .await
            .map_err(|e| pg_err("commit audit records", e))?;
        Ok(new_last)
    }

    async fn do_durable_through(&self, node_id: &str) -> Result<u64> {
        Ok(self.do_head(node_id).await?.map_or(0, |h| h.sequence))
    }

    async fn do_search(&self, f: &SearchRequest, limit: usize) -> Result<SearchResponse> {
        let mut conds: Vec<String> = Vec::new();
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut add = |cond: &str, p: Box<dyn ToSql + Sync + Send>| {
            params.push(p);
            conds.push(cond.replace('?', &format!("${}", params.len())));
        };
        if !f.identity.is_empty() {
            add("identity = ?", Box::new(f.identity.clone()));
        }
        if !f.connection.is_empty() {
            add("connection = ?", Box::new(f.connection.clone()));
        }
        if !f.session_id.is_empty() {
            add("session_id = ?", Box::new(f.session_id.clone()));
        }
        if !f.node_id.is_empty() {
            add("node_id = ?", Box::new(f.node_id.clone()));
        }
        if f.kind != 0 {
            let k = AuditKind::try_from(f.kind)
                .map(|k| k.as_str_name().to_string())
                .unwrap_or_else(|_| f.kind.to_string());
            add("kind = ?", Box::new(k));
        }
        if f.decision != 0 {
            add("decision = ?", Box::new(decision_name(f.decision)));
        }
        if f.from_unix_nanos != 0 {
            add(
                "ts >= to_timestamp(0) + ?::bigint * interval '1 microsecond'",
                Box::new(f.from_unix_nanos.div_euclid(1000)),
            );
        }
        if f.to_unix_nanos != 0 {
            add(
                "ts < to_timestamp(0) + ?::bigint * interval '1 microsecond'",
                Box::new(f.to_unix_nanos.div_euclid(1000)),
            );
        }
        let where_ = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        params.push(Box::new(fetch));
        let sql = format!(
            "SELECT record FROM sluice_audit.records {where_} \
             ORDER BY ts, node_id, sequence LIMIT ${}",
            params.len()
        );
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected");
        let rows = client
            .query(sql.as_str(), &refs)
            .await
            .map_err(|e| pg_err("search audit records", e))?;
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            let bytes: Vec<u8> = row.get(0);
            match <AuditRecord as prost::Message>::decode(bytes.as_slice()) {
                Ok(r) => records.push(r),
                Err(e) => {
                    tracing::warn!(error = %e, "audit search: skipping an undecodable record (run audit verify)")
                }
            }
        }
        let truncated = records.len() > limit;
        records.truncate(limit);
        Ok(SearchResponse { records, truncated })
    }

    async fn do_head(&self, node_id: &str) -> Result<Option<Head>> {
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected");
        let row = client
            .query_opt(
                "SELECT sequence, hash FROM sluice_audit.heads WHERE node_id = $1",
                &[&node_id],
            )
            .await
            .map_err(|e| pg_err("read chain head", e))?;
        Ok(row
            .map(|r| Head {
                sequence: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
                hash: r.get(1),
            })
            .filter(|h| h.sequence > 0))
    }

    async fn do_verify(
        &self,
        only: Option<&str>,
        witnesses: &BTreeMap<String, Witness>,
    ) -> Result<VerifyResponse> {
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("connected");
        let nodes: Vec<String> = client
            .query(
                "SELECT node_id FROM sluice_audit.heads UNION \
                 SELECT DISTINCT node_id FROM sluice_audit.records ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| pg_err("list audit nodes", e))?
            .into_iter()
            .map(|r| r.get(0))
            .filter(|n: &String| only.is_none_or(|o| o == n))
            .collect();
        let mut resp = VerifyResponse::default();
        for node in &nodes {
            let node = node.clone();
            let head = client
                .query_opt(
                    "SELECT sequence, hash FROM sluice_audit.heads WHERE node_id = $1",
                    &[&node],
                )
                .await
                .map_err(|e| pg_err("read chain head", e))?
                .map(|r| Head {
                    sequence: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
                    hash: r.get(1),
                });
            let rows = client
                .query(
                    &format!(
                        "SELECT sequence, {TS_TO_MICROS}, kind, identity, session_id, connection, \
                         statement, decision, sqlstate, rows, bytes, duration_ns, masked::text, \
                         record, prev_hash, hash \
                         FROM sluice_audit.records WHERE node_id = $1 ORDER BY sequence"
                    ),
                    &[&node],
                )
                .await
                .map_err(|e| pg_err("read audit records", e))?;
            let stored: Vec<StoredRecord> = rows.iter().map(stored_from_row).collect();
            let (findings, checked) =
                verify_node_witnessed(&node, stored, head.as_ref(), witnesses.get(&node));
            resp.findings.extend(findings);
            resp.records_checked += checked;
            resp.nodes_checked += 1;
        }
        verify_unseen(witnesses, &nodes, only, &mut resp);
        Ok(resp)
    }
}

/// One row as verify sees it: the decoded record, plus every column that
/// disagrees with it.
fn stored_from_row(row: &tokio_postgres::Row) -> StoredRecord {
    let seq: i64 = row.get(0);
    let location = format!("sluice_audit.records row sequence {seq}");
    let bytes: Vec<u8> = row.get(13);
    let record =
        <AuditRecord as prost::Message>::decode(bytes.as_slice()).map_err(|e| e.to_string());
    let mut damage = Vec::new();
    if let Ok(rec) = &record {
        let want = Columns::of(rec);
        let masked_text: String = row.get(12);
        let have = Columns {
            ts_micros: row.get(1),
            kind: row.get(2),
            identity: row.get(3),
            session_id: row.get(4),
            connection: row.get(5),
            statement: row.get(6),
            decision: row.get(7),
            sqlstate: row.get(8),
            rows: row.get(9),
            bytes: row.get(10),
            duration_ns: row.get(11),
            masked: serde_json::from_str(&masked_text).unwrap_or(serde_json::Value::Null),
            prev_hash: row.get(14),
            hash: row.get(15),
        };
        let mut diff = |name: &str, same: bool, have: String, want: String| {
            if !same {
                damage.push(format!(
                    "column {name} is {have} but the record says {want}"
                ));
            }
        };
        macro_rules! col {
            ($f:ident) => {
                diff(
                    stringify!($f),
                    have.$f == want.$f,
                    format!("{:?}", have.$f),
                    format!("{:?}", want.$f),
                )
            };
        }
        col!(ts_micros);
        col!(kind);
        col!(identity);
        col!(session_id);
        col!(connection);
        col!(statement);
        col!(decision);
        col!(sqlstate);
        col!(rows);
        col!(bytes);
        col!(duration_ns);
        col!(masked);
        diff(
            "prev_hash",
            have.prev_hash == want.prev_hash,
            chain::hex(&have.prev_hash),
            chain::hex(&want.prev_hash),
        );
        diff(
            "hash",
            have.hash == want.hash,
            chain::hex(&have.hash),
            chain::hex(&want.hash),
        );
    }
    StoredRecord {
        sequence: u64::try_from(seq).ok(),
        record,
        damage,
        location,
    }
}

impl AuditSink for PgSink {
    fn append<'a>(
        &'a self,
        node_id: &'a str,
        records: Vec<AuditRecord>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(self.do_append(node_id, records))
    }

    fn durable_through<'a>(&'a self, node_id: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(self.do_durable_through(node_id))
    }

    fn search<'a>(&'a self, filter: &'a SearchRequest) -> BoxFuture<'a, Result<SearchResponse>> {
        Box::pin(self.do_search(filter, limit_of(filter)))
    }

    fn head<'a>(&'a self, node_id: &'a str) -> BoxFuture<'a, Result<Option<Head>>> {
        Box::pin(self.do_head(node_id))
    }

    fn verify_witnessed<'a>(
        &'a self,
        node_id: Option<&'a str>,
        witnesses: &'a BTreeMap<String, Witness>,
    ) -> BoxFuture<'a, Result<VerifyResponse>> {
        Box::pin(self.do_verify(node_id, witnesses))
    }

    fn records_for_session<'a>(
        &'a self,
        session_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<AuditRecord>>> {
        Box::pin(async move {
            let f = SearchRequest {
                session_id: session_id.to_string(),
                ..Default::default()
            };
            Ok(self.do_search(&f, usize::MAX - 1).await?.records)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_utc_days() {
        assert_eq!(
            partition_of(0),
            (
                "records_19700101".into(),
                "1970-01-01 00:00:00+00".into(),
                "1970-01-02 00:00:00+00".into()
            )
        );
        // 2024-02-29 is day 19782.
        let (name, from, to) = partition_of(19_782);
        assert_eq!(name, "records_20240229");
        assert_eq!(from, "2024-02-29 00:00:00+00");
        assert_eq!(to, "2024-03-01 00:00:00+00");
    }
}
