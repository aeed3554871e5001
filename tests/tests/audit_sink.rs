//! `controlplane::audit::PgSink` against a real PostgreSQL 15 (the harness's
//! throwaway cluster; each test gets its own database): appends are
//! idempotent and refuse gaps, partitions appear per day, search filters,
//! and `verify` names rows changed with UPDATE and removed with DELETE.

use controlplane::audit::{AuditSink, PgSink, SinkError};
use proto::{
    AuditConnection, AuditIdentity, AuditKind, AuditMetadata, AuditOutcome, AuditRecord,
    AuditSession, AuditStatement, Decision, FindingKind, MaskedCount, SearchRequest, VerifyFinding,
};
use sluice_tests::Pg;

const DAY_NANOS: i64 = 86_400 * 1_000_000_000;
/// 2024-05-01 23:59:59 UTC: records straddle midnight.
const T0: i64 = 1_714_607_999 * 1_000_000_000;

/// A new database owned by app_owner; the sink's connection string.
fn fresh_db(name: &str) -> String {
    let pg = Pg::shared();
    let db = format!("audit_{name}");
    pg.psql_super(
        "postgres",
        &[&format!("CREATE DATABASE {db} OWNER {}", pg.app_user)],
    )
    .assert_success("create database");
    format!(
        "host=127.0.0.1 port={} user={} password={} dbname={db} connect_timeout=10",
        pg.port, pg.app_user, pg.app_password
    )
}

async fn db_client(conn: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

fn rec(node: &str, seq: u64) -> AuditRecord {
    AuditRecord {
        metadata: Some(AuditMetadata {
            node_id: node.into(),
            sequence: seq,
            kind: AuditKind::Query as i32,
            // One second apart: seq 1 is before midnight, the rest after.
            time_unix_nanos: T0 + (seq as i64 - 1) * 1_000_000_000 + 123,
            core: 1,
            ..Default::default()
        }),
        identity: Some(AuditIdentity {
            name: if seq.is_multiple_of(2) {
                "alice"
            } else {
                "bob"
            }
            .into(),
            ..Default::default()
        }),
        session: Some(AuditSession {
            id: format!("sess-{}", seq % 3),
            ..Default::default()
        }),
        connection: Some(AuditConnection {
            name: "orders".into(),
            ..Default::default()
        }),
        statement: Some(AuditStatement {
            sql: format!("select {seq}"),
            ..Default::default()
        }),
        outcome: Some(AuditOutcome {
            decision: if seq == 5 {
                Decision::Deny
            } else {
                Decision::Allow
            } as i32,
            rows: seq,
            masked: vec![MaskedCount {
                rule: "email".into(),
                column: "users.email".into(),
                count: seq,
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn recs(node: &str, r: std::ops::RangeInclusive<u64>) -> Vec<AuditRecord> {
    r.map(|s| rec(node, s)).collect()
}

fn seqs(v: &[AuditRecord]) -> Vec<u64> {
    v.iter()
        .map(|r| r.metadata.as_ref().unwrap().sequence)
        .collect()
}

fn kinds(f: &[VerifyFinding]) -> Vec<(FindingKind, u64, u64)> {
    f.iter()
        .map(|f| (f.kind(), f.first_sequence, f.last_sequence))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_is_idempotent_refuses_gaps_and_partitions_by_day() {
    let conn = fresh_db("append");
    let sink = PgSink::connect(&conn).await.unwrap();
    assert_eq!(sink.durable_through("n1").await.unwrap(), 0);
    assert_eq!(sink.append("n1", recs("n1", 1..=3)).await.unwrap(), 3);
    assert_eq!(sink.append("n1", recs("n1", 1..=3)).await.unwrap(), 3);
    assert_eq!(sink.append("n1", recs("n1", 2..=6)).await.unwrap(), 6);
    let err = sink.append("n1", recs("n1", 8..=9)).await.unwrap_err();
    assert!(
        matches!(
            err,
            SinkError::Gap {
                expected: 7,
                got: 8,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(sink.append("n2", recs("n2", 1..=2)).await.unwrap(), 2);

    // A second control plane (or a restart) sees the same state.
    let again = PgSink::connect(&conn).await.unwrap();
    assert_eq!(again.durable_through("n1").await.unwrap(), 6);
    assert_eq!(again.append("n1", recs("n1", 5..=7)).await.unwrap(), 7);

    let c = db_client(&conn).await;
    let parts: Vec<String> = c
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'sluice_audit.records'::regclass ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(parts, ["records_20240501", "records_20240502"]);
    let n: i64 = c
        .query_one("SELECT count(*) FROM sluice_audit.records", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 9, "redelivered records are stored once");
    // The indexed columns hold the record's fields.
    let r = c
        .query_one(
            "SELECT identity, session_id, connection, statement, decision, rows, masked::text, \
             ts = '2024-05-02 00:00:00.000000+00'::timestamptz \
             FROM sluice_audit.records WHERE node_id = 'n1' AND sequence = 2",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "alice");
    assert_eq!(r.get::<_, String>(1), "sess-2");
    assert_eq!(r.get::<_, String>(2), "orders");
    assert_eq!(r.get::<_, String>(3), "select 2");
    assert_eq!(r.get::<_, String>(4), "DECISION_ALLOW");
    assert_eq!(r.get::<_, i64>(5), 2);
    assert!(r.get::<_, String>(6).contains("users.email"));
    assert!(r.get::<_, bool>(7));

    // Chain: genesis, then each prev_hash is the previous hash.
    let all = again
        .search(&SearchRequest {
            node_id: "n1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .records;
    assert_eq!(seqs(&all), (1..=7).collect::<Vec<_>>());
    assert_eq!(all[0].prev_hash, [0u8; 32]);
    for w in all.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
    }
    let v = again.verify(None).await.unwrap();
    assert!(v.findings.is_empty(), "{:?}", v.findings);
    assert_eq!((v.nodes_checked, v.records_checked), (2, 9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_filters_and_session_replay() {
    let conn = fresh_db("search");
    let sink = PgSink::connect(&conn).await.unwrap();
    sink.append("n1", recs("n1", 1..=9)).await.unwrap();
    let s = |f: SearchRequest| {
        let sink = &sink;
        async move { sink.search(&f).await.unwrap() }
    };
    let r = s(SearchRequest {
        identity: "alice".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(seqs(&r.records), [2, 4, 6, 8]);
    let r = s(SearchRequest {
        decision: Decision::Deny as i32,
        ..Default::default()
    })
    .await;
    assert_eq!(seqs(&r.records), [5]);
    let r = s(SearchRequest {
        from_unix_nanos: T0 + 1_000_000_000,
        to_unix_nanos: T0 + 3_000_000_000,
        ..Default::default()
    })
    .await;
    assert_eq!(seqs(&r.records), [2, 3]);
    let r = s(SearchRequest {
        connection: "orders".into(),
        kind: AuditKind::Query as i32,
        limit: 4,
        ..Default::default()
    })
    .await;
    assert_eq!((seqs(&r.records), r.truncated), (vec![1, 2, 3, 4], true));
    let r = s(SearchRequest {
        to_unix_nanos: T0 - DAY_NANOS,
        ..Default::default()
    })
    .await;
    assert!(r.records.is_empty());
    assert_eq!(
        seqs(&sink.records_for_session("sess-1").await.unwrap()),
        [1, 4, 7]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_updated_and_deleted_rows() {
    let conn = fresh_db("verify");
    let sink = PgSink::connect(&conn).await.unwrap();
    sink.append("n1", recs("n1", 1..=8)).await.unwrap();
    sink.append("n2", recs("n2", 1..=3)).await.unwrap();
    let c = db_client(&conn).await;
    let exec = |sql: &'static str| {
        let c = &c;
        async move { c.execute(sql, &[]).await.unwrap() }
    };
    // A searchable column changed.
    assert_eq!(
        exec("UPDATE sluice_audit.records SET identity = 'mallory' WHERE node_id = 'n1' AND sequence = 2").await,
        1
    );
    // One byte of the full record changed (inside its SQL text).
    assert_eq!(
        exec(
            "UPDATE sluice_audit.records SET record = overlay(record placing '9'::bytea \
             from position('select 4'::bytea in record) + 7 for 1) \
             WHERE node_id = 'n1' AND sequence = 4"
        )
        .await,
        1
    );
    // A record in the middle and the last one deleted.
    assert_eq!(
        exec("DELETE FROM sluice_audit.records WHERE node_id = 'n1' AND sequence = 6").await,
        1
    );
    assert_eq!(
        exec("DELETE FROM sluice_audit.records WHERE node_id = 'n1' AND sequence = 8").await,
        1
    );
    let v = sink.verify(None).await.unwrap();
    assert_eq!(
        kinds(&v.findings),
        [
            (FindingKind::Edited, 2, 2),
            (FindingKind::Edited, 4, 4),
            (FindingKind::Gap, 6, 6),
            (FindingKind::Deleted, 8, 8),
        ],
        "{:#?}",
        v.findings
    );
    assert!(v.findings.iter().all(|f| f.node_id == "n1"));
    assert!(
        v.findings[0].detail.contains("column identity"),
        "{}",
        v.findings[0].detail
    );
    assert_eq!((v.nodes_checked, v.records_checked), (2, 9));
    // One node only.
    let v = sink.verify(Some("n2")).await.unwrap();
    assert!(v.findings.is_empty());

    // A record replaced wholesale by a forged one with a recomputed hash
    // breaks the link to its successor.
    let forged = {
        let mut r = rec("n1", 3);
        r.statement.as_mut().unwrap().sql = "select 'forged'".into();
        let prev: [u8; 32] = c
            .query_one(
                "SELECT prev_hash FROM sluice_audit.records WHERE node_id = 'n1' AND sequence = 3",
                &[],
            )
            .await
            .unwrap()
            .get::<_, Vec<u8>>(0)
            .try_into()
            .unwrap();
        controlplane::audit::chain::link(&prev, &mut r);
        r
    };
    let bytes = prost::Message::encode_to_vec(&forged);
    c.execute(
        "UPDATE sluice_audit.records SET record = $1, statement = $2, hash = $3 \
         WHERE node_id = 'n1' AND sequence = 3",
        &[&bytes, &"select 'forged'", &forged.hash],
    )
    .await
    .unwrap();
    let v = sink.verify(Some("n1")).await.unwrap();
    assert!(
        kinds(&v.findings).contains(&(FindingKind::BrokenLink, 4, 4)),
        "{:#?}",
        v.findings
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_redelivering_at_once_store_each_record_once() {
    let conn = fresh_db("race");
    let a = std::sync::Arc::new(PgSink::connect(&conn).await.unwrap());
    let b = std::sync::Arc::new(PgSink::connect(&conn).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            // Every task delivers 1..=end, so every batch is contiguous
            // with whatever is stored.
            s.append("n1", recs("n1", 1..=(5 + i * 5))).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(a.durable_through("n1").await.unwrap(), 40);
    let v = a.verify(None).await.unwrap();
    assert!(v.findings.is_empty(), "{:?}", v.findings);
    assert_eq!(v.records_checked, 40);
}
