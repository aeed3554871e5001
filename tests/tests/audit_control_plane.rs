//! The control plane's audit half end to end: a real `sluice-cp` with the
//! file sink (its default directory under the embedded store) or the
//! PostgreSQL sink (a database of the harness's PostgreSQL per test),
//! records shipped over the real `AuditIngest.Ship` gRPC stream by a test
//! client acting as a data-plane node, and the real `sluicectl` reading
//! them back (`audit search`, `audit verify`, `session replay --evaluate`,
//! `evidence`).
//!
//! Scenarios that make sense for both sinks are written once, taking a
//! [`Sink`], and run twice (`<scenario>::files`, `<scenario>::postgres`).
//! Every wait is a poll or a read with a deadline.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proto::audit_ingest_client::AuditIngestClient;
use proto::audit_query_client::AuditQueryClient;
use proto::{
    AuditAck, AuditBatch, AuditConnection, AuditIdentity, AuditKind, AuditMetadata, AuditOutcome,
    AuditRecord, AuditSession, AuditStatement, Decision, MaskedCount, SearchRequest,
};
use serde_json::Value;
use sluice_tests::cp::{Admin, Backend, ControlPlane, StoreKind};
use sluice_tests::{process, Pg};
use tokio::sync::mpsc;

/// Bound for any one step (an ack, a restart, a config change to show).
const LIMIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sink {
    /// The default file sink, `<data-dir>/audit`.
    Files,
    /// `--audit-postgres`, a fresh database.
    Postgres,
}

macro_rules! on_both_sinks {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn files() {
                super::$name(Sink::Files).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(Sink::Postgres).await
            }
        }
    )*};
}

on_both_sinks!(
    redelivery_is_stored_exactly_once_and_gaps_ask_for_a_resend,
    nothing_is_lost_or_doubled_across_a_control_plane_restart,
    verify_names_edited_and_deleted_records,
    verify_holds_chains_to_the_stores_witness,
    search_filters,
    replay_evaluate_shows_what_today_refuses,
    evidence_reports_seven_controls,
);

// ---------------------------------------------------------------- setup

/// A fresh database owned by app_owner; the sink's connection string.
fn fresh_db(tag: &str) -> String {
    let pg = Pg::shared();
    let db = format!("audit_cp_{tag}");
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

struct Setup {
    cp: ControlPlane,
    /// The PostgreSQL sink's connection string.
    dsn: Option<String>,
}

impl Setup {
    fn start(sink: Sink, tag: &str) -> Setup {
        match sink {
            Sink::Files => Setup {
                cp: ControlPlane::on(Backend::Embedded, vec![]),
                dsn: None,
            },
            Sink::Postgres => {
                let dsn = fresh_db(tag);
                Setup {
                    cp: ControlPlane::on(
                        Backend::Embedded,
                        vec!["--audit-postgres".into(), dsn.clone()],
                    ),
                    dsn: Some(dsn),
                }
            }
        }
    }

    /// The file sink's directory (the default under the embedded store).
    fn audit_dir(&self) -> PathBuf {
        match &self.cp.store {
            StoreKind::Embedded(d) => d.join("audit"),
            StoreKind::Etcd(..) => unreachable!("these tests use the embedded store"),
        }
    }

    async fn db(&self) -> tokio_postgres::Client {
        let dsn = self.dsn.as_deref().expect("a PostgreSQL sink");
        let (c, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c
    }

    /// `sluicectl ARGS`, expecting exit `code`.
    #[track_caller]
    fn ctl(&self, args: &[&str], code: i32) -> process::Output {
        let out = self.cp.ctl(args, None);
        assert_eq!(
            out.status.code(),
            Some(code),
            "sluicectl {args:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.stdout,
            out.stderr
        );
        out
    }

    #[track_caller]
    fn ctl_json(&self, args: &[&str], code: i32) -> Value {
        let out = self.ctl(args, code);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("sluicectl {args:?}: not JSON ({e}):\n{}", out.stdout))
    }
}

// ---------------------------------------------------------------- a node

/// The data-plane end of one `AuditIngest.Ship` stream.
struct Shipper {
    tx: mpsc::Sender<AuditBatch>,
    acks: tonic::Streaming<AuditAck>,
    node: String,
}

impl Shipper {
    /// Opens a stream with a hello; returns it and the hello's ack.
    async fn open(url: &str, node: &str) -> Result<(Shipper, AuditAck), tonic::Status> {
        let ch = tonic::transport::Endpoint::from_shared(url.to_string())
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let (tx, rx) = mpsc::channel::<AuditBatch>(16);
        tx.send(AuditBatch {
            node_id: node.into(),
            records: vec![],
        })
        .await
        .unwrap();
        let outbound =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let acks = tokio::time::timeout(LIMIT, AuditIngestClient::new(ch).ship(outbound))
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("no answer to the hello"))??
            .into_inner();
        let mut s = Shipper {
            tx,
            acks,
            node: node.into(),
        };
        let hello = s.ack().await?;
        assert_eq!(hello.node_id, node);
        assert!(!hello.resend);
        Ok((s, hello))
    }

    /// [`Shipper::open`], reconnecting as a node's shipper does when the
    /// connection itself fails (up to three tries, each failure printed):
    /// once in a full run, a fresh connection to a control plane that had
    /// logged it was listening was reset before the hello's answer, with
    /// nothing in the control plane's log. Any answer from the control
    /// plane counts; only transport errors are tried again.
    async fn must_open(url: &str, node: &str) -> (Shipper, u64) {
        let mut tries = 0;
        loop {
            tries += 1;
            match Shipper::open(url, node).await {
                Ok((s, a)) => return (s, a.durable_through),
                Err(e) if tries < 3 && e.message() == "transport error" => {
                    eprintln!("open Ship for {node} (try {tries}): {e}; reconnecting");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("open Ship for {node}: {e}"),
            }
        }
    }

    /// [`Shipper::open`] once the node's last stream on that control plane
    /// has ended there (a second stream of a node id is refused while one
    /// is open).
    async fn reopen(url: &str, node: &str) -> (Shipper, u64) {
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            match Shipper::open(url, node).await {
                Ok((s, a)) => return (s, a.durable_through),
                Err(e)
                    if e.code() == tonic::Code::AlreadyExists
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("reopen Ship for {node}: {e}"),
            }
        }
    }

    async fn send(&self, records: Vec<AuditRecord>) {
        self.tx
            .send(AuditBatch {
                node_id: self.node.clone(),
                records,
            })
            .await
            .expect("stream open");
    }

    /// The next ack (or the status that ended the stream).
    async fn ack(&mut self) -> Result<AuditAck, tonic::Status> {
        match tokio::time::timeout(LIMIT, self.acks.message()).await {
            Err(_) => panic!("no ack within {LIMIT:?}"),
            Ok(Ok(Some(a))) => Ok(a),
            Ok(Ok(None)) => Err(tonic::Status::cancelled("stream ended")),
            Ok(Err(s)) => Err(s),
        }
    }

    /// Sends a batch and waits for its ack.
    async fn ship(&mut self, records: Vec<AuditRecord>) -> AuditAck {
        self.send(records).await;
        self.ack().await.unwrap_or_else(|e| panic!("ack: {e}"))
    }
}

// ---------------------------------------------------------------- records

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// A statement record: `select <seq>` by alice on `app`, allowed, a few
/// milliseconds after `t0`.
fn stmt(node: &str, seq: u64, t0: i64) -> AuditRecord {
    AuditRecord {
        metadata: Some(AuditMetadata {
            node_id: node.into(),
            sequence: seq,
            kind: AuditKind::Query as i32,
            time_unix_nanos: t0 + seq as i64 * 1_000_000 + 7,
            core: (seq % 2) as u32,
            snapshot_version: 1,
            ..Default::default()
        }),
        identity: Some(AuditIdentity {
            name: "alice".into(),
            ..Default::default()
        }),
        session: Some(AuditSession {
            id: format!("{node}-s1"),
            client_address: "127.0.0.1:40000".into(),
            ..Default::default()
        }),
        connection: Some(AuditConnection {
            name: "app".into(),
            target: "127.0.0.1:5432".into(),
            database: "appdb".into(),
            role: "app_owner".into(),
        }),
        statement: Some(AuditStatement {
            sql: format!("select {seq}"),
            sql_bytes: 8,
            statement_kind: "select".into(),
            ..Default::default()
        }),
        outcome: Some(AuditOutcome {
            decision: Decision::Allow as i32,
            rows: 1,
            duration_nanos: 250_000,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn stmts(node: &str, r: std::ops::RangeInclusive<u64>, t0: i64) -> Vec<AuditRecord> {
    r.map(|s| stmt(node, s, t0)).collect()
}

/// A record of `kind` in `session` by `identity` on `connection`.
#[allow(clippy::too_many_arguments)]
fn event(
    node: &str,
    seq: u64,
    t: i64,
    kind: AuditKind,
    identity: &str,
    session: &str,
    connection: &str,
    decision: Decision,
    sql: &str,
) -> AuditRecord {
    let mut r = stmt(node, seq, 0);
    let md = r.metadata.as_mut().unwrap();
    md.kind = kind as i32;
    md.time_unix_nanos = t;
    r.identity.as_mut().unwrap().name = identity.into();
    r.session.as_mut().unwrap().id = session.into();
    r.connection.as_mut().unwrap().name = connection.into();
    r.statement.as_mut().unwrap().sql = sql.into();
    r.outcome.as_mut().unwrap().decision = decision as i32;
    r
}

async fn query_client(url: &str) -> AuditQueryClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    AuditQueryClient::new(ch)
}

/// (node, sequence) of every stored record of `node`, in order.
async fn stored(url: &str, node: &str) -> Vec<u64> {
    let resp = query_client(url)
        .await
        .search(SearchRequest {
            node_id: node.into(),
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!resp.truncated);
    resp.records
        .iter()
        .map(|r| r.metadata.as_ref().unwrap().sequence)
        .collect()
}

fn seqs_of(v: &Value) -> Vec<u64> {
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sequence"].as_u64().unwrap())
        .collect()
}

// ---------------------------------------------------------------- scenarios

/// Issue 5: idempotent ingest keyed on node id and sequence; a batch that
/// skips sequences is refused with a resend ack and nothing stored; a
/// misbehaving stream is ended with INVALID_ARGUMENT.
async fn redelivery_is_stored_exactly_once_and_gaps_ask_for_a_resend(sink: Sink) {
    let s = Setup::start(sink, &format!("redeliver_{sink:?}").to_lowercase());
    let url = s.cp.url();
    let t0 = now_nanos();
    let (mut n, hello) = Shipper::must_open(&url, "dp-1").await;
    assert_eq!(hello, 0, "a new node starts at 0");
    let a = n.ship(stmts("dp-1", 1..=5, t0)).await;
    assert_eq!((a.durable_through, a.resend), (5, false));
    // Overlapping and whole redelivery.
    assert_eq!(n.ship(stmts("dp-1", 3..=8, t0)).await.durable_through, 8);
    assert_eq!(n.ship(stmts("dp-1", 1..=8, t0)).await.durable_through, 8);
    // An empty batch asks where things stand.
    assert_eq!(n.ship(vec![]).await.durable_through, 8);
    // Pipelined: two batches in flight, acks in order.
    n.send(stmts("dp-1", 9..=10, t0)).await;
    n.send(stmts("dp-1", 11..=12, t0)).await;
    assert_eq!(n.ack().await.unwrap().durable_through, 10);
    assert_eq!(n.ack().await.unwrap().durable_through, 12);
    // A gap: nothing of the batch is stored; resend from 13.
    let a = n.ship(stmts("dp-1", 15..=16, t0)).await;
    assert_eq!((a.durable_through, a.resend), (12, true));
    assert_eq!(stored(&url, "dp-1").await, (1..=12).collect::<Vec<_>>());
    let a = n.ship(stmts("dp-1", 13..=16, t0)).await;
    assert_eq!((a.durable_through, a.resend), (16, false));

    // A second stream under a node id whose stream is open is refused (two
    // nodes given one name took each other's records for stored, and
    // dropped them); a reconnect once the stream ended resumes from the
    // sink.
    let e = Shipper::open(&url, "dp-1")
        .await
        .err()
        .expect("a second stream of dp-1");
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e}");
    drop(n);
    let (mut again, hello) = Shipper::reopen(&url, "dp-1").await;
    assert_eq!(hello, 16);
    assert_eq!(
        again.ship(stmts("dp-1", 14..=17, t0)).await.durable_through,
        17
    );
    // Nodes have separate streams and chains.
    let (mut other, hello) = Shipper::must_open(&url, "dp-2").await;
    assert_eq!(hello, 0);
    assert_eq!(
        other.ship(stmts("dp-2", 1..=3, t0)).await.durable_through,
        3
    );

    assert_eq!(stored(&url, "dp-1").await, (1..=17).collect::<Vec<_>>());
    assert_eq!(stored(&url, "dp-2").await, [1, 2, 3]);
    let v = s.ctl_json(&["audit", "verify", "-o", "json"], 0);
    assert_eq!(v["clean"], true, "{v}");
    assert_eq!(v["recordsChecked"], 20);
    // Record ids are filled in as <node>-<sequence>.
    let r = s.ctl_json(&["audit", "search", "--node", "dp-2", "-o", "json"], 0);
    assert_eq!(r["records"][2]["id"], "dp-2-3");

    // Streams that break the protocol end with INVALID_ARGUMENT.
    let e = Shipper::open(&url, "../etc")
        .await
        .err()
        .expect("bad node id");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = Shipper::open(&url, "").await.err().expect("no node id");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let (mut bad, _) = Shipper::must_open(&url, "dp-3").await;
    bad.send(stmts("dp-2", 4..=4, t0)).await;
    let e = bad.ack().await.expect_err("another node's records");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let (mut bad, _) = Shipper::must_open(&url, "dp-3").await;
    let mut odd = stmts("dp-3", 1..=2, t0);
    odd.push(stmt("dp-3", 5, t0));
    bad.send(odd).await;
    let e = bad.ack().await.expect_err("sequences not consecutive");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(stored(&url, "dp-3").await.is_empty());
}

/// Issue 5: a node resends what was never acknowledged after the control
/// plane is SIGKILLed mid-batch and restarted: nothing lost, nothing twice,
/// the chain intact.
async fn nothing_is_lost_or_doubled_across_a_control_plane_restart(sink: Sink) {
    let s = Setup::start(sink, &format!("restart_{sink:?}").to_lowercase());
    let url = s.cp.url();
    let t0 = now_nanos();
    let (mut n, _) = Shipper::must_open(&url, "dp-1").await;
    let mut acked = 0;
    for b in 0..5u64 {
        acked = n
            .ship(stmts("dp-1", b * 10 + 1..=b * 10 + 10, t0))
            .await
            .durable_through;
    }
    assert_eq!(acked, 50);
    // A batch in flight when the control plane dies: stored or not, the
    // node cannot know.
    n.send(stmts("dp-1", 51..=60, t0)).await;
    s.cp.kill();
    drop(n);
    s.cp.spawn();

    let (mut n, hello) = Shipper::must_open(&url, "dp-1").await;
    assert!(hello == 50 || hello == 60, "durable through {hello}");
    // The node resends everything after its last ack, then goes on.
    let a = n.ship(stmts("dp-1", acked + 1..=70, t0)).await;
    assert_eq!((a.durable_through, a.resend), (70, false));
    assert_eq!(stored(&url, "dp-1").await, (1..=70).collect::<Vec<_>>());
    let v = s.ctl_json(&["audit", "verify", "-o", "json"], 0);
    assert_eq!(v["clean"], true, "{v}");
    assert_eq!(v["recordsChecked"], 70);
}

/// Nodes dp-1 (records 1 to 6) and dp-2 (1 to 3), each stored and acked;
/// their streams, still open.
async fn ship_two_chains(s: &Setup) -> (Shipper, Shipper) {
    let url = s.cp.url();
    let t0 = now_nanos();
    let (mut n, _) = Shipper::must_open(&url, "dp-1").await;
    assert_eq!(n.ship(stmts("dp-1", 1..=6, t0)).await.durable_through, 6);
    let (mut m, _) = Shipper::must_open(&url, "dp-2").await;
    assert_eq!(m.ship(stmts("dp-2", 1..=3, t0)).await.durable_through, 3);
    (n, m)
}

/// Issue 5 "done when": a record edited or deleted in either sink is named
/// by `sluicectl audit verify`, with its node and position.
async fn verify_names_edited_and_deleted_records(sink: Sink) {
    let s = Setup::start(sink, &format!("verify_{sink:?}").to_lowercase());
    let _streams = ship_two_chains(&s).await;
    let out = s.ctl(&["audit", "verify"], 0);
    assert_eq!(
        out.stdout,
        "audit chain verified: 2 nodes (2 witnessed in the store), 9 records checked, \
         no findings\n"
    );

    // Record 2's SQL edited, record 4 deleted, the last record (6) deleted.
    match sink {
        Sink::Files => {
            let seg = s.audit_dir().join("nodes/dp-1/00000000000000000001.log");
            tamper_segment(&seg);
        }
        Sink::Postgres => {
            let db = s.db().await;
            for sql in [
                "UPDATE sluice_audit.records SET statement = 'select 99' \
                 WHERE node_id = 'dp-1' AND sequence = 2",
                "DELETE FROM sluice_audit.records WHERE node_id = 'dp-1' AND sequence = 4",
                "DELETE FROM sluice_audit.records WHERE node_id = 'dp-1' AND sequence = 6",
            ] {
                assert_eq!(db.execute(sql, &[]).await.unwrap(), 1, "{sql}");
            }
        }
    }

    let v = s.ctl_json(&["audit", "verify", "-o", "json"], 1);
    assert_eq!(v["clean"], false);
    let found = findings_of(&v);
    let want = |k: &str, a: u64, b: u64| ("dp-1".to_string(), k.to_string(), a, b);
    assert_eq!(
        found,
        [
            want("edited", 2, 2),
            want("gap", 4, 4),
            want("deleted", 6, 6)
        ],
        "{v:#}"
    );
    let out = s.ctl(&["audit", "verify"], 1);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("NODE   FINDING   SEQUENCE   DETAIL"),
        "{}",
        out.stdout
    );
    assert!(
        lines[1].starts_with("dp-1   edited    2          record 2"),
        "{}",
        out.stdout
    );
    assert!(
        lines[2].starts_with("dp-1   gap       4          records 4 to 4"),
        "{}",
        out.stdout
    );
    assert!(
        lines[3].starts_with("dp-1   deleted   6          the chain head"),
        "{}",
        out.stdout
    );
    assert_eq!(
        lines[4],
        "3 findings: 2 nodes (2 witnessed in the store), 7 records checked"
    );
    assert!(
        out.stderr.contains("error: the audit chain has 3 findings"),
        "{}",
        out.stderr
    );
    // The other node is clean on its own; an unknown node is not found.
    s.ctl(&["audit", "verify", "--node", "dp-2"], 0);
    let out = s.ctl(&["audit", "verify", "--node", "dp-9"], 1);
    assert!(
        out.stderr.contains("no audit records of node"),
        "{}",
        out.stderr
    );
}

/// Whoever can write the sink can delete a node's records together with
/// its chain head, or cut a chain's tail and lower the head to match:
/// consistent in themselves, and clean to a check of the sink alone. The
/// control plane's store witnessed both chains when their batches were
/// acknowledged, and `audit verify` reports both.
async fn verify_holds_chains_to_the_stores_witness(sink: Sink) {
    let s = Setup::start(sink, &format!("witness_{sink:?}").to_lowercase());
    let (n, m) = ship_two_chains(&s).await;
    let v = s.ctl_json(&["audit", "verify", "-o", "json"], 0);
    assert_eq!(v["nodesWitnessed"], 2, "{v:#}");
    let out = s.ctl(&["audit", "verify"], 0);
    assert_eq!(
        out.stdout,
        "audit chain verified: 2 nodes (2 witnessed in the store), 9 records checked, \
         no findings\n"
    );
    drop((n, m));

    let found = s.ctl_json(&["audit", "search", "--node", "dp-1", "-o", "json"], 0);
    let hash4 = found["records"][3]["hash"].as_str().unwrap().to_string();
    // dp-1: records 5 and 6 deleted, its head lowered to record 4; dp-2:
    // records and head deleted.
    match sink {
        Sink::Files => {
            let nodes = s.audit_dir().join("nodes");
            let seg = nodes.join("dp-1/00000000000000000001.log");
            keep_frames(&seg, 4);
            std::fs::write(nodes.join("dp-1/HEAD"), format!("4 {hash4}\n")).unwrap();
            std::fs::remove_dir_all(nodes.join("dp-2")).unwrap();
        }
        Sink::Postgres => {
            let db = s.db().await;
            for (sql, rows) in [
                (
                    "DELETE FROM sluice_audit.records WHERE node_id = 'dp-1' AND sequence > 4",
                    2,
                ),
                (
                    "UPDATE sluice_audit.heads SET sequence = 4, hash = \
                     (SELECT hash FROM sluice_audit.records \
                      WHERE node_id = 'dp-1' AND sequence = 4) WHERE node_id = 'dp-1'",
                    1,
                ),
                ("DELETE FROM sluice_audit.records WHERE node_id = 'dp-2'", 3),
                ("DELETE FROM sluice_audit.heads WHERE node_id = 'dp-2'", 1),
            ] {
                assert_eq!(db.execute(sql, &[]).await.unwrap(), rows, "{sql}");
            }
        }
    }

    let v = s.ctl_json(&["audit", "verify", "-o", "json"], 1);
    let found = findings_of(&v);
    let want = |n: &str, a: u64, b: u64| (n.to_string(), "deleted".to_string(), a, b);
    assert_eq!(found, [want("dp-1", 5, 6), want("dp-2", 1, 3)], "{v:#}");
    assert!(
        v["findings"][1]["detail"]
            .as_str()
            .unwrap()
            .contains("the control plane's store witnessed record 3"),
        "{v:#}"
    );
    // Asked for by name, the deleted node is reported, not "not found".
    let v = s.ctl_json(&["audit", "verify", "--node", "dp-2", "-o", "json"], 1);
    assert_eq!(v["findings"][0]["kind"], "deleted", "{v:#}");
}

/// `audit verify -o json`'s findings: (node, kind, first, last sequence).
fn findings_of(v: &Value) -> Vec<(String, String, u64, u64)> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["node"].as_str().unwrap().to_string(),
                f["kind"].as_str().unwrap().to_string(),
                f["firstSequence"].as_u64().unwrap(),
                f["lastSequence"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Keeps the first `keep` record frames of a file-sink segment.
fn keep_frames(seg: &Path, keep: usize) {
    let buf = std::fs::read(seg).unwrap();
    const HEADER: usize = 8;
    let mut pos = HEADER;
    for _ in 0..keep {
        let len = u32::from_le_bytes(buf[pos..pos + 4].try_into().unwrap()) as usize;
        pos += HEADER + len;
    }
    std::fs::write(seg, &buf[..pos]).unwrap();
}

/// Rewrites a file-sink segment: record 2's SQL edited in place (its
/// checksum left as it was), record 4's frame and the last frame removed.
fn tamper_segment(seg: &Path) {
    let buf = std::fs::read(seg).unwrap();
    const HEADER: usize = 8;
    let mut frames = Vec::new();
    let mut pos = HEADER;
    while pos < buf.len() {
        let len = u32::from_le_bytes(buf[pos..pos + 4].try_into().unwrap()) as usize;
        frames.push(buf[pos..pos + HEADER + len].to_vec());
        pos += HEADER + len;
    }
    assert_eq!(frames.len(), 6, "one frame per record");
    let at = frames[1]
        .windows(8)
        .position(|w| w == b"select 2")
        .expect("record 2's SQL in its frame");
    frames[1][at + 7] = b'9';
    frames.remove(5);
    frames.remove(3);
    let mut out = buf[..HEADER].to_vec();
    for f in frames {
        out.extend_from_slice(&f);
    }
    std::fs::write(seg, out).unwrap();
}

/// Issue 5: `sluicectl audit search` filters by identity, connection,
/// session, kind, decision, node and time, limits, and prints tables.
async fn search_filters(sink: Sink) {
    let s = Setup::start(sink, &format!("search_{sink:?}").to_lowercase());
    let url = s.cp.url();
    let now = now_nanos();
    let (h2, m10) = (now - 7_200_000_000_000, now - 600_000_000_000);
    const SEC: i64 = 1_000_000_000;
    use AuditKind::*;
    use Decision::*;
    let recs = vec![
        event(
            "dp-1",
            1,
            h2,
            SessionStart,
            "alice",
            "s-a",
            "app",
            Allow,
            "",
        ),
        event(
            "dp-1",
            2,
            h2 + SEC,
            Query,
            "alice",
            "s-a",
            "app",
            Allow,
            "select 1",
        ),
        event(
            "dp-1",
            3,
            h2 + 2 * SEC,
            Query,
            "alice",
            "s-a",
            "app",
            Deny,
            "drop table x",
        ),
        event(
            "dp-1",
            4,
            m10,
            SessionStart,
            "bob",
            "s-b",
            "billing",
            Allow,
            "",
        ),
        event(
            "dp-1",
            5,
            m10 + SEC,
            Query,
            "bob",
            "s-b",
            "billing",
            Allow,
            "select 2",
        ),
        event(
            "dp-1",
            6,
            m10 + 2 * SEC,
            AuthFailure,
            "bob",
            "",
            "billing",
            Deny,
            "",
        ),
    ];
    let (mut n, _) = Shipper::must_open(&url, "dp-1").await;
    assert_eq!(n.ship(recs).await.durable_through, 6);
    let (mut m, _) = Shipper::must_open(&url, "dp-2").await;
    m.ship(vec![event(
        "dp-2", 1, m10, Query, "carol", "s-c", "app", Allow, "select 3",
    )])
    .await;

    let q = |args: &[&str]| {
        let mut a = vec!["audit", "search", "-o", "json"];
        a.extend_from_slice(args);
        s.ctl_json(&a, 0)
    };
    assert_eq!(seqs_of(&q(&["--node", "dp-1"])), [1, 2, 3, 4, 5, 6]);
    assert_eq!(seqs_of(&q(&["--identity", "alice"])), [1, 2, 3]);
    assert_eq!(seqs_of(&q(&["--connection", "billing"])), [4, 5, 6]);
    assert_eq!(seqs_of(&q(&["--session", "s-b"])), [4, 5]);
    assert_eq!(
        seqs_of(&q(&["--kind", "query", "--node", "dp-1"])),
        [2, 3, 5]
    );
    assert_eq!(seqs_of(&q(&["--kind", "auth-failure"])), [6]);
    assert_eq!(seqs_of(&q(&["--decision", "deny"])), [3, 6]);
    assert_eq!(seqs_of(&q(&["--since", "1h", "--node", "dp-1"])), [4, 5, 6]);
    assert_eq!(seqs_of(&q(&["--until", "1h"])), [1, 2, 3]);
    // Printed times are cut to milliseconds: still between the records.
    let from = sluice_tests_time(h2 + SEC);
    let to = sluice_tests_time(h2 + 2 * SEC);
    assert_eq!(seqs_of(&q(&["--since", &from, "--until", &to])), [2]);
    assert_eq!(
        seqs_of(&q(&[
            "--identity",
            "alice",
            "--kind",
            "query",
            "--decision",
            "allow"
        ])),
        [2]
    );
    let v = q(&["--identity", "alice", "--decision", "deny"]);
    let r = &v["records"][0];
    assert_eq!(r["statement"]["sql"], "drop table x");
    assert_eq!(r["outcome"]["decision"], "deny");
    assert_eq!(r["session"]["id"], "s-a");
    assert_eq!(r["id"], "dp-1-3");
    assert_eq!(r["hash"].as_str().unwrap().len(), 64);

    // A limit: the oldest first, and a note on stderr.
    let out = s.ctl(&["audit", "search", "--limit", "2", "-o", "json"], 0);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(seqs_of(&v), [1, 2]);
    assert_eq!(v["truncated"], true);
    assert!(out.stderr.contains("raise --limit"), "{}", out.stderr);

    // The table.
    let out = s.ctl(&["audit", "search", "--session", "s-a"], 0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(
        lines[0].starts_with("TIME") && lines[0].ends_with("SQL"),
        "{}",
        out.stdout
    );
    assert!(lines[3].contains("dp-1-3   query"), "{}", out.stdout);
    assert!(lines[3].contains("deny"), "{}", out.stdout);
    assert!(lines[3].ends_with("drop table x"), "{}", out.stdout);
    let out = s.ctl(&["audit", "search", "--identity", "nobody"], 0);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("no audit records match"));

    // Bad flags are usage errors.
    let out = s.ctl(&["audit", "search", "--kind", "select"], 2);
    assert!(out.stderr.contains("session_start"), "{}", out.stderr);
    let out = s.ctl(&["audit", "search", "--since", "yesterday"], 2);
    assert!(out.stderr.contains("--since"), "{}", out.stderr);
}

/// RFC 3339 of Unix nanoseconds, as sluicectl prints it.
fn sluice_tests_time(nanos: i64) -> String {
    controlplane::ctl::audit::format_time(nanos)
}

/// Issue 5 "done when": `session replay --evaluate` shows a statement that
/// was allowed then and would be refused now, after its Policy is deleted
/// through the admin API.
async fn replay_evaluate_shows_what_today_refuses(sink: Sink) {
    let s = Setup::start(sink, &format!("replay_{sink:?}").to_lowercase());
    let url = s.cp.url();
    let mut admin = Admin::connect(&url).await;
    admin
        .apply(
            "apiVersion: sluice.dev/v1\nkind: Connection\nmetadata: {name: app}\n\
             spec: {host: 127.0.0.1, port: 5432, database: appdb, user: app_owner}\n---\n\
             apiVersion: sluice.dev/v1\nkind: ApiKey\nmetadata: {name: alice-key}\n\
             spec: {identity: alice}\n---\n\
             apiVersion: sluice.dev/v1\nkind: Policy\nmetadata: {name: alice-app}\n\
             spec: {connections: [app], identities: [alice]}\n",
        )
        .await;
    let t = now_nanos() - 60_000_000_000;
    use AuditKind::*;
    use Decision::*;
    let mut read = event(
        "dp-1",
        2,
        t + 1_000_000,
        Query,
        "alice",
        "sess-9",
        "app",
        Allow,
        "select * from orders",
    );
    {
        let o = read.outcome.as_mut().unwrap();
        o.rows = 3;
        o.duration_nanos = 1_500_000;
        o.masked = vec![MaskedCount {
            rule: "email".into(),
            column: "email".into(),
            count: 3,
        }];
    }
    let mut drop = event(
        "dp-1",
        3,
        t + 2_000_000,
        Query,
        "alice",
        "sess-9",
        "app",
        Deny,
        "drop table orders",
    );
    drop.outcome.as_mut().unwrap().rule = "no-ddl".into();
    drop.outcome.as_mut().unwrap().sqlstate = "42501".into();
    let recs = vec![
        event(
            "dp-1",
            1,
            t,
            SessionStart,
            "alice",
            "sess-9",
            "app",
            Allow,
            "",
        ),
        read,
        drop,
        event(
            "dp-1",
            4,
            t + 3_000_000,
            Query,
            "bob",
            "other",
            "app",
            Allow,
            "select 1",
        ),
        event(
            "dp-1",
            5,
            t + 4_000_000,
            SessionEnd,
            "alice",
            "sess-9",
            "app",
            Decision::Unspecified,
            "",
        ),
    ];
    let (mut n, _) = Shipper::must_open(&url, "dp-1").await;
    assert_eq!(n.ship(recs).await.durable_through, 5);

    // Today's configuration still grants it: nothing differs.
    let out = s.ctl(&["session", "replay", "sess-9", "--evaluate"], 0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "session sess-9: identity alice, connection app, node dp-1, client 127.0.0.1:40000, 4 records"
    );
    assert!(lines[1].ends_with("NOW"), "{}", out.stdout);
    assert!(
        lines[3].contains(
            "query           allow      3      1.5ms      email=3   select * from orders   -"
        ),
        "{}",
        out.stdout
    );
    assert!(
        lines[6].ends_with("every decision is the same today"),
        "{}",
        out.stdout
    );

    admin.delete("Policy", "alice-app").await.unwrap();
    // The control plane follows its store; poll until the change shows.
    let deadline = Instant::now() + LIMIT;
    let v = loop {
        let v = s.ctl_json(
            &["session", "replay", "sess-9", "--evaluate", "-o", "json"],
            0,
        );
        if v["differences"] != 0 {
            break v;
        }
        assert!(Instant::now() < deadline, "policy deletion not seen: {v:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(v["differences"], 2, "{v:#}");
    let recs = v["records"].as_array().unwrap();
    let sql = |r: &Value| r["statement"]["sql"].as_str().unwrap_or("").to_string();
    let then_now: Vec<(String, String, Value, Value)> = recs
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                sql(r),
                r["outcome"]["decision"].clone(),
                r["now"].clone(),
            )
        })
        .collect();
    assert_eq!(then_now[1].1, "select * from orders");
    assert_eq!(then_now[1].2, "allow");
    assert_eq!(then_now[1].3["decision"], "deny");
    assert_eq!(then_now[1].3["differs"], true);
    assert_eq!(
        then_now[1].3["reason"],
        "no Policy grants connection `app` to identity `alice`"
    );
    // Refused then by a rule, refused now: the same.
    assert_eq!(then_now[2].3["differs"], false);
    // The session end has no decision to evaluate.
    assert_eq!(then_now[3].3, Value::Null);
    assert!(v["evaluatedVersion"].as_i64().unwrap() > 0);

    let out = s.ctl(&["session", "replay", "sess-9", "--evaluate"], 0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[3].ends_with(
            "select * from orders   now: deny (no Policy grants connection `app` to identity `alice`)"
        ),
        "{}",
        out.stdout
    );
    assert!(
        lines[4].ends_with("drop table orders      -"),
        "{}",
        out.stdout
    );
    assert!(
        lines[6].ends_with("2 records would be decided differently today"),
        "{}",
        out.stdout
    );
    // Without --evaluate: what happened, nothing else.
    let out = s.ctl(&["session", "replay", "sess-9"], 0);
    assert!(!out.stdout.contains("NOW"), "{}", out.stdout);
    let out = s.ctl(&["session", "replay", "no-such-session"], 1);
    assert!(
        out.stderr.contains("no audit records for session"),
        "{}",
        out.stderr
    );
}

/// Issue 5: `sluicectl evidence` writes evidence.md and evidence.json with
/// the seven controls, their counts and sample record ids.
async fn evidence_reports_seven_controls(sink: Sink) {
    let s = Setup::start(sink, &format!("evidence_{sink:?}").to_lowercase());
    let url = s.cp.url();
    let t = now_nanos() - 3_600_000_000_000;
    use AuditKind::*;
    use Decision::*;
    let mut tls_start = event("dp-1", 1, t, SessionStart, "alice", "s1", "app", Allow, "");
    tls_start.session.as_mut().unwrap().tls = true;
    let mut masked = event(
        "dp-1",
        3,
        t + 2_000,
        Query,
        "alice",
        "s1",
        "app",
        Allow,
        "select email from users",
    );
    masked.outcome.as_mut().unwrap().masked = vec![
        MaskedCount {
            rule: "email".into(),
            column: "email".into(),
            count: 4,
        },
        MaskedCount {
            rule: "card".into(),
            column: "card".into(),
            count: 1,
        },
    ];
    let mut snap = event(
        "dp-1",
        8,
        t + 7_000,
        SnapshotApplied,
        "",
        "",
        "",
        Decision::Unspecified,
        "",
    );
    snap.metadata.as_mut().unwrap().snapshot_version = 42;
    snap.identity = None;
    snap.session = None;
    snap.connection = None;
    let recs = vec![
        tls_start,
        event(
            "dp-1",
            2,
            t + 1_000,
            Query,
            "alice",
            "s1",
            "app",
            Allow,
            "select 1",
        ),
        masked,
        event(
            "dp-1",
            4,
            t + 3_000,
            Query,
            "alice",
            "s1",
            "app",
            Deny,
            "drop table users",
        ),
        event(
            "dp-1",
            5,
            t + 4_000,
            SessionEnd,
            "alice",
            "s1",
            "app",
            Decision::Unspecified,
            "",
        ),
        event(
            "dp-1",
            6,
            t + 5_000,
            SessionStart,
            "bob",
            "s2",
            "app",
            Allow,
            "",
        ),
        event(
            "dp-1",
            7,
            t + 6_000,
            AuthFailure,
            "mallory",
            "s3",
            "app",
            Deny,
            "",
        ),
        snap,
    ];
    let (mut n, _) = Shipper::must_open(&url, "dp-1").await;
    assert_eq!(n.ship(recs).await.durable_through, 8);
    // A record outside the period.
    let (mut m, _) = Shipper::must_open(&url, "dp-2").await;
    m.ship(vec![event(
        "dp-2",
        1,
        t - 86_400_000_000_000,
        Query,
        "old",
        "s0",
        "app",
        Allow,
        "select 0",
    )])
    .await;

    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("report");
    let out = s.ctl(
        &[
            "evidence",
            "--from",
            "2h",
            "--to",
            "now",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        0,
    );
    assert!(
        out.stdout
            .contains("8 records, audit chain verified, no findings"),
        "{}",
        out.stdout
    );
    let md = std::fs::read_to_string(out_dir.join("evidence.md")).unwrap();
    for (id, title) in [
        ("AU-2", "Event Logging"),
        ("AU-6", "Audit Record Review, Analysis, and Reporting"),
        ("AU-9", "Protection of Audit Information"),
        ("AC-2", "Account Management"),
        ("AC-6", "Least Privilege"),
        ("SC-8", "Transmission Confidentiality and Integrity"),
        ("IR-4", "Incident Handling"),
    ] {
        assert!(md.contains(&format!("\n## {id} {title}\n")), "{id}\n{md}");
    }
    assert!(md.contains("| records | 8 |"), "{md}");
    assert!(
        md.contains("| masked values per rule | card: 1, email: 4 |"),
        "{md}"
    );
    assert!(md.contains("| sessions over TLS | 1 |"), "{md}");
    assert!(md.contains("- denied: `dp-1-4`, `dp-1-7`"), "{md}");

    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("evidence.json")).unwrap())
            .unwrap();
    let controls = v["controls"].as_array().unwrap();
    let ids: Vec<&str> = controls.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["AU-2", "AU-6", "AU-9", "AC-2", "AC-6", "SC-8", "IR-4"]
    );
    let c = |id: &str| controls.iter().find(|c| c["id"] == id).unwrap().clone();
    assert_eq!(c("AU-2")["facts"]["records"], 8);
    assert_eq!(c("AU-2")["facts"]["sessions"], 3);
    assert_eq!(c("AU-2")["facts"]["statements"], 3);
    assert_eq!(c("AU-2")["facts"]["snapshot changes"], 1);
    assert_eq!(c("AU-6")["facts"]["denied"], 2);
    assert_eq!(c("AU-6")["facts"]["authentication failures"], 1);
    assert_eq!(
        c("AU-9")["facts"]["chain verification"],
        "verified, no findings"
    );
    assert_eq!(c("AU-9")["facts"]["records checked"], 9, "the whole chain");
    assert_eq!(c("AC-2")["facts"]["identities seen"], 3);
    assert_eq!(c("AC-2")["facts"]["API keys configured"], 0);
    assert_eq!(c("AC-6")["facts"]["masked values"], 5);
    assert_eq!(c("AC-6")["samples"]["masked"][0], "dp-1-3");
    assert_eq!(c("SC-8")["facts"]["sessions without TLS"], 1);
    assert_eq!(c("IR-4")["facts"]["snapshot versions applied"][0], 42);
    for ctl in controls {
        assert!(!ctl["requires"].as_str().unwrap().is_empty());
    }
    assert_eq!(v["chain"]["clean"], true);

    // An empty period is a usage error.
    s.ctl(&["evidence", "--from", "now", "--to", "1h"], 2);
}

// ---------------------------------------------------------------- PostgreSQL only

/// Issue 5: with PostgreSQL unavailable the stream stays open, nothing is
/// acknowledged, and the held batch is stored and acknowledged once the
/// database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_holds_acks_until_the_batch_is_stored() {
    let s = Setup::start(Sink::Postgres, "outage");
    let url = s.cp.url();
    let t0 = now_nanos();
    let (mut n, _) = Shipper::must_open(&url, "dp-1").await;
    assert_eq!(n.ship(stmts("dp-1", 1..=3, t0)).await.durable_through, 3);

    let pg = Pg::shared();
    pg.psql_super(
        "postgres",
        &[
            "ALTER DATABASE audit_cp_outage ALLOW_CONNECTIONS false",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = 'audit_cp_outage'",
        ],
    )
    .assert_success("take the audit database away");
    n.send(stmts("dp-1", 4..=6, t0)).await;
    // No ack while the batch cannot be stored; the stream stays open.
    let early = tokio::time::timeout(Duration::from_secs(3), n.acks.message()).await;
    assert!(
        early.is_err(),
        "acknowledged while PostgreSQL was away: {early:?}"
    );
    // Queries say so (exit 3: unavailable).
    let out = s.cp.ctl(&["audit", "verify"], None);
    assert_eq!(out.status.code(), Some(3), "{}{}", out.stdout, out.stderr);

    pg.psql_super(
        "postgres",
        &["ALTER DATABASE audit_cp_outage ALLOW_CONNECTIONS true"],
    )
    .assert_success("bring the audit database back");
    let a = n.ack().await.unwrap();
    assert_eq!((a.durable_through, a.resend), (6, false));
    assert_eq!(n.ship(stmts("dp-1", 7..=7, t0)).await.durable_through, 7);
    assert_eq!(stored(&url, "dp-1").await, (1..=7).collect::<Vec<_>>());
    s.ctl(&["audit", "verify"], 0);
    assert!(
        s.cp.log()
            .contains("audit sink unavailable, holding the batch"),
        "{}",
        s.cp.log()
    );
}

/// Issue 5: several control-plane replicas write one node's stream to one
/// PostgreSQL sink (a node failing over between them): one chain, each
/// record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_postgres_sink() {
    let dsn = fresh_db("replicas");
    let a = ControlPlane::on(
        Backend::Embedded,
        vec!["--audit-postgres".into(), dsn.clone()],
    );
    let b = ControlPlane::on(
        Backend::Embedded,
        vec!["--audit-postgres".into(), dsn.clone()],
    );
    let t0 = now_nanos();
    let (mut na, _) = Shipper::must_open(&a.url(), "dp-1").await;
    let (mut nb, hello) = Shipper::must_open(&b.url(), "dp-1").await;
    assert_eq!(hello, 0);
    // Both streams at once, overlapping.
    na.send(stmts("dp-1", 1..=20, t0)).await;
    nb.send(stmts("dp-1", 1..=20, t0)).await;
    assert_eq!(na.ack().await.unwrap().durable_through, 20);
    assert_eq!(nb.ack().await.unwrap().durable_through, 20);
    assert_eq!(
        na.ship(stmts("dp-1", 15..=25, t0)).await.durable_through,
        25
    );
    assert_eq!(
        nb.ship(stmts("dp-1", 21..=30, t0)).await.durable_through,
        30
    );
    drop(na);
    let (_, hello) = Shipper::reopen(&a.url(), "dp-1").await;
    assert_eq!(hello, 30);
    assert_eq!(stored(&a.url(), "dp-1").await, (1..=30).collect::<Vec<_>>());
    let out = b.ctl(&["audit", "verify"], None);
    assert!(out.success(), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("1 node (1 witnessed in the store), 30 records checked, no findings"),
        "{}",
        out.stdout
    );
}

/// `sluice-cp` refuses bad audit flags, naming them.
#[test]
fn sluice_cp_names_bad_audit_flags() {
    let run = |args: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(sluice_tests::cp::bin("sluice-cp"));
        cmd.args(["--plaintext", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args);
        process::run(&mut cmd, None, LIMIT)
    };
    let out = run(&["--audit-postgres", "host=x port=notaport"]);
    assert!(!out.success());
    assert!(out.stderr.contains("--audit-postgres"), "{}", out.stderr);
    let out = run(&["--audit-dir", "/proc/sluice-audit"]);
    assert!(!out.success());
    assert!(out.stderr.contains("--audit-dir"), "{}", out.stderr);
    let out = run(&["--audit-dir", "x", "--audit-postgres", "host=x"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
}
